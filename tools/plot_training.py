#!/usr/bin/env python3
"""Learning curves of an `oa_reactdiff train` run, with the standard library only.

    python3 tools/plot_training.py RUN_DIR [-o RUN_DIR/learning_curve.png] [--window 200]
                                  [--rmsd STEPS.tsv]

Reads RUN_DIR/train.log (step, loss, ...: one line per step) and RUN_DIR/val.log
(step, val_loss, ...). Draws the training loss as a running mean over --window steps
(the per-step loss is noisy: each step draws its own noise levels t, and a
step whose batch holds t near 0 can be 100 times the typical loss); with
--window it is a running median and the validation
loss (fixed t and noise, so comparable across steps), and prints a table of both at
the validation steps. --rmsd adds a second panel: the median RMSD of generated TSs to the
reference on the validation split at a few checkpoints, against the R-P midpoint's, from a
tab-separated file of lines `step median mean midpoint_median midpoint_mean
fraction_closer` (as runs/session8_bridge/val_rmsd.tsv).
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import plotlib  # noqa: E402


def read_columns(path, ncols):
    rows = []
    with open(path) as f:
        for n, line in enumerate(f, 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            parts = line.split()
            try:
                rows.append([float(x) for x in parts[:ncols]])
            except ValueError:
                sys.exit("plot_training: %s:%d: not a number in '%s'" % (path, n, line))
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run")
    ap.add_argument("-o", "--output")
    ap.add_argument("--window", type=int, default=200)
    ap.add_argument("--rmsd", help="val-split RMSD at checkpoints (step, median, mean, midpoint median, ...)")
    a = ap.parse_args()
    for name in ("train.log", "val.log"):
        if not os.path.isfile(os.path.join(a.run, name)):
            sys.exit("plot_training: %s: no %s" % (a.run, name))
    train = read_columns(os.path.join(a.run, "train.log"), 2)
    val = read_columns(os.path.join(a.run, "val.log"), 2)
    if not train:
        sys.exit("plot_training: %s/train.log has no steps" % a.run)
    steps = [r[0] for r in train]
    loss = [r[1] for r in train]
    every = max(1, len(steps) // 400)
    smooth = {}
    for i in list(range(0, len(steps), every)) + [len(steps) - 1]:
        w = sorted(loss[max(0, i + 1 - a.window):i + 1])   # running median: a few steps
        smooth[steps[i]] = w[len(w) // 2]                   # at t ~ 0 have huge losses
    tpts = sorted(smooth.items())
    vpts = [(r[0], r[1]) for r in val]
    xmax = steps[-1]
    ymax = max([p[1] for p in tpts[len(tpts) // 20:]] + [p[1] for p in vpts] + [1e-9]) * 1.1
    def nice(v):
        for m in (1, 2, 2.5, 5, 10):
            step = m * 10 ** int(("%e" % v).split("e")[1])
            if v / step <= 5:
                return step
        return v
    xs, ys = nice(xmax), nice(ymax)
    rm = read_columns(a.rmsd, 4) if a.rmsd else []
    cv = plotlib.Canvas(900, 900 if rm else 480)
    if rm:
        ry = max([r[1] for r in rm] + [r[3] for r in rm]) * 1.15
        rys = nice(ry)
        plotlib.line_plot(cv, 110, 500, 740, 320,
                          [([(r[0], r[1]) for r in rm], plotlib.BLUE, "MODEL: MEDIAN RMSD (A), VAL", 3, 6),
                           ([(0, rm[0][3]), (xmax, rm[0][3])], plotlib.GREY, "R-P MIDPOINT", 3),
                           ([(0, 0.6 * rm[0][3]), (xmax, 0.6 * rm[0][3])], plotlib.ORANGE, "0.6 X MIDPOINT", 2)],
                          xmax, ry, [k * xs for k in range(int(xmax / xs) + 1)],
                          [k * rys for k in range(int(ry / rys) + 1)], xlabel="STEP", ylabel="RMSD")
    plotlib.line_plot(cv, 110, 60, 740, 340,
                      [(tpts, plotlib.BLUE, "TRAIN MEDIAN OF %d STEPS" % a.window),
                       (vpts, plotlib.ORANGE, "VALIDATION", 3, 6)],
                      xmax, ymax, [k * xs for k in range(int(xmax / xs) + 1)],
                      [k * ys for k in range(int(ymax / ys) + 1)], xlabel="STEP", ylabel="LOSS")
    out = a.output or os.path.join(a.run, "learning_curve.png")
    cv.save(out)
    print("step  train(median of %d)  val" % a.window)
    for s, v in vpts:
        i = steps.index(s) if s in steps else len(steps) - 1
        w = sorted(loss[max(0, i + 1 - a.window):i + 1])
        print("%6d  %10.4f  %10.4f" % (s, w[len(w) // 2], v))
    for r in rm:
        print("step %6d  val median RMSD %.3f A (midpoint %.3f)" % (r[0], r[1], r[3]))
    print("wrote %s" % out)


if __name__ == "__main__":
    main()
