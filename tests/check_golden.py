#!/usr/bin/env python3
"""Run every case of a golden-data directory through the C golden runners.

    python3 tests/check_golden.py DIR [--cross] [--filter SUBSTR] [-v]

DIR holds a manifest.json ({"cases": [{"name", "kind", "model", "dtype", ...}, ...]}) and
cases/<name>/*.npy; "model" is a checkpoint path relative to DIR. Each checkpoint is
converted once with tools/ckpt2bin.py --untrained into build/golden-weights/<hash of its
directory>/<stem>.bin (reused while newer than the checkpoint and the converter). Each case
runs in the runner of its dtype (f64 -> build/golden_runner64, f32 -> build/golden_runner);
--cross also runs the f64 cases in the float32 build, which reports INFO lines, no verdict.
Kinds the runner does not know (golden_ot's pretreat and runmodel, which tests/test_bridge.sh
covers through the command line) are skipped. Exit status 1 if any case failed.

Python standard library only. Build the runners first (make runners).
"""
import argparse
import hashlib
import json
import os
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUILD = os.path.join(REPO, "build")
CONVERTER = os.path.join(REPO, "tools", "ckpt2bin.py")
RUNNERS = {"f32": os.path.join(BUILD, "golden_runner"), "f64": os.path.join(BUILD, "golden_runner64")}
SUPPORTED_KINDS = ("forward", "inpaint", "sample", "confidence", "train_loss",  # OA-ReactDiff (golden/)
                   "schedule", "ot_forward", "ot_train_loss", "ot_sample")        # React-OT (golden_ot/)
# manifest fields handed to the runner as key=value (the runner rejects unknown keys)
SAMPLER_KEYS = ("timesteps", "schedule", "precision", "resamplings", "jump_length", "frag_fixed",
                "n_draws")
CLI_KINDS = ("pretreat", "runmodel")  # React-OT's run_model.py: ts on the case's xyz files
OT_KEYS = ("timesteps", "beta_max", "power", "inv_power", "solver", "nfe", "method", "order")


def say(line):
    print(line, flush=True)


def weights_for(ckpt, cache):
    """Path of the converted checkpoint, or (None, reason). Converts at most once per run."""
    if ckpt in cache:
        return cache[ckpt]
    if not os.path.isfile(ckpt):
        cache[ckpt] = (None, "checkpoint not found: %s" % ckpt)
        return cache[ckpt]
    tag = hashlib.sha1(os.path.dirname(ckpt).encode()).hexdigest()[:12]
    out_dir = os.path.join(BUILD, "golden-weights", tag)
    stem = os.path.splitext(os.path.basename(ckpt))[0]
    out = os.path.join(out_dir, stem + ".bin")
    newest_input = os.path.getmtime(ckpt)
    if os.path.isfile(CONVERTER):
        newest_input = max(newest_input, os.path.getmtime(CONVERTER))
    if os.path.isfile(out) and os.path.getmtime(out) >= newest_input:
        cache[ckpt] = (out, None)
        return cache[ckpt]
    if not os.path.isfile(CONVERTER):
        cache[ckpt] = (None, "converter not found: %s" % CONVERTER)
        return cache[ckpt]
    os.makedirs(out_dir, exist_ok=True)
    # convert into a temporary name and rename, so a failed run never leaves a .bin behind
    # that a later run would take for a good one
    tmp = os.path.join(out_dir, stem + ".tmp%d.bin" % os.getpid())
    cmd = [sys.executable, CONVERTER, ckpt, tmp, "--untrained", "--quiet"]
    t0 = time.time()
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          universal_newlines=True)
    if proc.returncode != 0 or not os.path.isfile(tmp):
        if os.path.exists(tmp):
            os.remove(tmp)
        msg = proc.stdout.strip().splitlines()
        cache[ckpt] = (None, "converting %s failed (exit %d): %s" %
                       (ckpt, proc.returncode, msg[-1] if msg else "no output"))
        for line in msg:
            say("  ckpt2bin: " + line)
        return cache[ckpt]
    os.replace(tmp, out)
    say("  converted %s -> %s (%.1fs)" % (ckpt, os.path.relpath(out, REPO), time.time() - t0))
    cache[ckpt] = (out, None)
    return cache[ckpt]


def sampler_args(case):
    args = []
    ot = case["kind"] == "schedule" or case["kind"].startswith("ot_")
    for key in OT_KEYS if ot else SAMPLER_KEYS:
        if key not in case:
            continue
        value = case[key]
        if isinstance(value, list):
            value = ",".join(str(v) for v in value)
        elif isinstance(value, float):
            value = repr(value)
        args.append("%s=%s" % (key, value))
    return args


def run_case(case, runner, case_dir, weights, verbose, name):
    """Runs one case; returns 'pass', 'fail' or 'info'. Prints the runner's lines as they come."""
    if not os.access(runner, os.X_OK):
        say("FAIL %s runner not built: %s (run make runners)" % (name, runner))
        return "fail"
    cmd = [runner] + (["-v"] if verbose else []) + [case["kind"], case_dir, weights, name]
    cmd += sampler_args(case) + ["ref_dtype=%s" % case["dtype"]]
    if verbose:
        say("  $ " + " ".join(cmd))
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            universal_newlines=True)
    verdict = None
    for line in proc.stdout:
        line = line.rstrip("\n")
        say(line)
        word = line.split(" ", 1)[0]
        if word in ("PASS", "FAIL", "INFO"):
            verdict = word
    rc = proc.wait()
    if rc < 0:
        say("FAIL %s runner killed by signal %d" % (name, -rc))
        return "fail"
    if rc != 0:
        if verdict != "FAIL":  # the runner died without saying why
            say("FAIL %s runner exited with status %d" % (name, rc))
        return "fail"
    if verdict == "PASS":
        return "pass"
    if verdict == "INFO":
        return "info"
    say("FAIL %s runner printed no result line" % name)
    return "fail"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("dir", help="directory with manifest.json and cases/")
    ap.add_argument("--cross", action="store_true",
                    help="also run the f64 cases in the float32 build (INFO lines)")
    ap.add_argument("--filter", default="", help="only cases whose name contains SUBSTR")
    ap.add_argument("-v", action="store_true", help="per-output and per-layer errors")
    opt = ap.parse_args()

    root = os.path.abspath(opt.dir)
    manifest_path = os.path.join(root, "manifest.json")
    try:
        with open(manifest_path) as f:
            manifest = json.load(f)
        cases = manifest["cases"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        say("FAIL manifest %s: %s" % (manifest_path, e))
        say("golden: 0 passed, 1 failed, 0 skipped")
        return 1

    say("golden: %s (%d cases)" % (root, len(cases)))
    counts = {"pass": 0, "fail": 0, "skip": 0, "info": 0}
    converted = {}
    t0 = time.time()
    for case in cases:
        name = case.get("name", "?")
        if opt.filter not in name:
            continue
        kind = case.get("kind", "?")
        if kind in CLI_KINDS:
            say("SKIP %s kind=%s: checked through the command line by tests/test_bridge.sh" % (name, kind))
            counts["skip"] += 1
            continue
        if kind not in SUPPORTED_KINDS:
            say("SKIP %s kind=%s not supported yet" % (name, kind))
            counts["skip"] += 1
            continue
        dtype = case.get("dtype")
        if dtype not in RUNNERS:
            say("FAIL %s unknown dtype %r (want f32 or f64)" % (name, dtype))
            counts["fail"] += 1
            continue
        case_dir = os.path.join(root, "cases", name)
        if not os.path.isdir(case_dir):
            say("FAIL %s case folder not found: %s" % (name, case_dir))
            counts["fail"] += 1
            continue
        if kind == "schedule":  # no model: the runner computes the schedule from the settings
            counts[run_case(case, RUNNERS[dtype], case_dir, "-", opt.v, name)] += 1
            continue
        if "model" not in case:
            say("FAIL %s manifest names no model" % name)
            counts["fail"] += 1
            continue
        ckpt = os.path.normpath(os.path.join(root, case["model"]))
        weights, why = weights_for(ckpt, converted)
        if weights is None:
            say("FAIL %s %s" % (name, why))
            counts["fail"] += 1
            continue
        counts[run_case(case, RUNNERS[dtype], case_dir, weights, opt.v, name)] += 1
        if opt.cross and dtype == "f64":
            counts[run_case(case, RUNNERS["f32"], case_dir, weights, opt.v, name)] += 1

    summary = "golden: %d passed, %d failed, %d skipped" % (counts["pass"], counts["fail"],
                                                             counts["skip"])
    if counts["info"]:
        summary += ", %d info" % counts["info"]
    say(summary + " (%.1fs)" % (time.time() - t0))
    return 1 if counts["fail"] else 0


if __name__ == "__main__":
    sys.exit(main())
