#!/usr/bin/env python3
"""The optimizer of oa_reactdiff.c against an independent Python (standard library) version
of what upstream's training step does: torch.optim.AdamW (torch 1.13 _single_tensor_adamw,
amsgrad or not, decoupled weight decay) after DDPMModule.configure_gradient_clipping
(utils.Queue(max_len=50) started with 3000, limit 1.5 * np.mean + 3 * np.std, torch's
clip_grad_norm_), then timm's ModelEmaV2 update.

    python3 tests/check_optim.py BUILD/test_train64 [--tol 1e-12] [--floor X]

Runs the C program on a vector of 37 values for 60 steps with the gradient
g = a_s (p - target) (a_s from grad_scale: a clipped spike at step 3, no gradient at step
20, a spike against a queue of small norms at step 55) for several option sets and
compares every step's norm, clip limit and parameters (and EMA). Exit status 1 on a
mismatch beyond --tol, relative to max(|a|, |b|, --floor) (the float32 build: --tol 1e-4
--floor 1, its arithmetic rounds to float32 as torch's on float32 tensors).
"""
import math
import subprocess
import sys

N, STEPS = 37, 60


def grad_scale(s):
    if s == 3:
        return 1e4
    if s == 20:
        return 0.0
    if s == 55:
        return 300.0
    return float(2 + s % 7)


def np_sum(a):
    """numpy's pairwise summation of a float64 array (np.add.reduce)"""
    n = len(a)
    if n < 8:
        r = 0.0
        for x in a:
            r += x
        return r
    if n <= 128:
        r = list(a[:8])
        i = 8
        while i < n - n % 8:
            for k in range(8):
                r[k] += a[i + k]
            i += 8
        res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]))
        while i < n:
            res += a[i]
            i += 1
        return res
    n2 = n // 2
    n2 -= n2 % 8
    return np_sum(a[:n2]) + np_sum(a[n2:])


def np_mean(a):
    return np_sum(a) / len(a)


def np_std(a):
    m = np_mean(a)
    d = [(x - m) * (x - m) for x in a]
    return math.sqrt(np_sum(d) / len(a))


def reference(lr, wd, ema_decay, amsgrad, clip):
    b1, b2, eps = 0.9, 0.999, 1e-8
    p = [0.1 * i - 0.3 for i in range(N)]
    m = [0.0] * N
    v = [0.0] * N
    vmax = [0.0] * N
    ema = list(p)
    queue = [3000]  # utils.Queue: newest first
    step_t = 0  # torch's state['step'] of this parameter
    out = []
    for s in range(1, STEPS + 1):
        a = grad_scale(s)
        g = [a * (p[i] - (0.25 * (i + 1) - 1)) for i in range(N)]
        ss = 0.0
        for x in g:
            ss += x * x
        norm = math.sqrt(ss)
        limit, clipped = 0.0, 0
        if clip:
            limit = 1.5 * np_mean(queue) + 3 * np_std(queue)
            coef = limit / (norm + 1e-6)
            if coef < 1:
                g = [x * coef for x in g]
                clipped = 1
            queue.insert(0, limit if norm > limit else norm)
            if len(queue) > 50:
                queue.pop()
        if any(x != 0 for x in g):  # a parameter whose grad is None is skipped by torch
            step_t += 1
            bc1 = 1 - b1 ** float(step_t)
            bc2 = 1 - b2 ** float(step_t)
            step_size = lr / bc1
            bc2_sqrt = math.sqrt(bc2)
            for i in range(N):
                p[i] = p[i] * (1 - lr * wd)
                m[i] = m[i] * b1 + (1 - b1) * g[i]
                v[i] = v[i] * b2 + (1 - b2) * g[i] * g[i]
                if amsgrad:
                    vmax[i] = max(vmax[i], v[i])
                    denom = math.sqrt(vmax[i]) / bc2_sqrt + eps
                else:
                    denom = math.sqrt(v[i]) / bc2_sqrt + eps
                p[i] = p[i] + -step_size * m[i] / denom
        if ema_decay > 0:
            ema = [e * ema_decay + (1 - ema_decay) * x for e, x in zip(ema, p)]
        out.append((norm, limit, clipped, list(p), list(ema) if ema_decay > 0 else None))
    return out


def rel(a, b, floor):
    return abs(a - b) / max(abs(a), abs(b), floor) if a != b else 0.0


def main():
    prog = sys.argv[1]
    tol = float(sys.argv[sys.argv.index("--tol") + 1]) if "--tol" in sys.argv else 1e-12
    floor = float(sys.argv[sys.argv.index("--floor") + 1]) if "--floor" in sys.argv else 1e-300
    cases = [
        ("upstream defaults (lr 2.5e-4, AMSGrad, clipping)", 2.5e-4, 0.0, 0.0, 1, 1),
        ("lr 0.05, weight decay 0.01, EMA 0.9", 0.05, 0.01, 0.9, 1, 1),
        ("lr 0.05, no AMSGrad, no clipping", 0.05, 0.0, 0.0, 0, 0),
    ]
    status = 0
    for name, lr, wd, ema, ams, clip in cases:
        cmd = [prog, "optim", str(N), str(STEPS), repr(lr), repr(wd), repr(ema), str(ams), str(clip)]
        lines = subprocess.run(cmd, stdout=subprocess.PIPE, universal_newlines=True, check=True).stdout.splitlines()
        got, k = [], 0
        while k < len(lines):
            f = lines[k].split()
            assert f[0] == "step", lines[k]
            p = [float(x) for x in lines[k + 1].split()[1:]]
            k += 2
            e = None
            if k < len(lines) and lines[k].startswith("ema"):
                e = [float(x) for x in lines[k].split()[1:]]
                k += 1
            got.append((float(f[2]), float(f[3]), int(f[4]), p, e))
        want = reference(lr, wd, ema, ams, clip)
        worst, n_clipped = 0.0, 0
        ok = len(got) == len(want)
        for (gn, gl, gc, gp, ge), (wn, wl, wc, wp, we) in zip(got, want):
            ok = ok and gc == wc and len(gp) == N
            n_clipped += wc
            vals = [(gn, wn), (gl, wl)] + list(zip(gp, wp)) + (list(zip(ge, we)) if we else [])
            worst = max([worst] + [rel(a, b, floor) for a, b in vals])
        ok = ok and worst <= tol
        print("  %s  %s: %d steps, %d clipped, largest relative difference %.3g (tolerance %g)"
              % ("ok   " if ok else "FAIL ", name, len(got), n_clipped, worst, tol))
        status |= not ok
    return status


if __name__ == "__main__":
    sys.exit(main())
