#!/usr/bin/env python3
"""Compares training runs of `srgpt train` through their metrics.jsonl files
(and, on request, the files of their newest checkpoints).

  compare_runs.py [options] REFERENCE RUN [RUN ...]

REFERENCE and each RUN are run directories (a config's out_dir). Each RUN is
compared with REFERENCE and gets one line, "PASS ..." or "FAIL ...", with the
largest differences found; the exit status is 1 when any comparison fails (a
missing or unreadable metrics file is a failure too).

What is compared (metrics.jsonl, docs/config.md; one JSON object per line):
  * the training steps: both runs must have logged the same steps, each with
    a finite loss;
  * per-step training loss: --exact (bit-identical doubles; srgpt writes
    them in round-trip form), or relative differences |run - ref| / |ref|
    within --loss-rtol, with --first-loss-rtol / --first-loss-atol for step 1
    (where both runs start from identical weights);
  * grad_norm: within --grad-norm-rtol when given, else bit-identical with
    --exact (and not compared without it);
  * validation losses at the steps both runs evaluated: bit-identical with
    --exact, else within --val-rtol and/or --val-atol;
  * --same-file NAME (repeatable; shell patterns such as 'optim_rank*.bin'
    allowed): these files of the newest checkpoint
    (OUT_DIR/checkpoints/step_N) must exist in both runs and be
    byte-identical.
--no-step-losses skips the per-step comparisons (runs with different seeds
or data order: only their validation losses are compared).

Standard library only, so it runs anywhere srgpt does.
"""
import argparse
import fnmatch
import hashlib
import json
import math
import os
import re
import sys


class RunError(Exception):
    pass


def read_metrics(run_dir):
    """Returns ({step: record} of training steps, {step: val_loss})."""
    path = os.path.join(run_dir, "metrics.jsonl")
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except OSError as e:
        raise RunError(f"cannot read {path}: {e.strerror}")
    except UnicodeDecodeError as e:
        raise RunError(f"{path}: not UTF-8 text (byte {e.start}: {e.reason})")
    steps, vals = {}, {}
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            step = int(record["step"])
            # srgpt writes a non-finite value as null (JSON has no NaN).
            for key in ("loss", "grad_norm", "val_loss"):
                if key in record:
                    record[key] = math.nan if record[key] is None else float(record[key])
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise RunError(f"{path}:{number}: not a metrics record ({e})")
        # A resumed run rewrites the steps after its checkpoint: the last
        # record of a step wins, as when reading the log.
        if "loss" in record:
            steps[step] = record
        if "val_loss" in record:
            vals[step] = record["val_loss"]
    if not steps:
        raise RunError(f"{path}: no training steps logged")
    return steps, vals


def newest_checkpoint(run_dir):
    root = os.path.join(run_dir, "checkpoints")
    try:
        names = [n for n in os.listdir(root) if re.fullmatch(r"step_\d+", n)]
    except OSError as e:
        raise RunError(f"cannot list {root}: {e.strerror}")
    if not names:
        raise RunError(f"{root}: no checkpoint")
    return os.path.join(root, max(names, key=lambda n: int(n[5:])))


def file_digest(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def matching_files(checkpoint, patterns):
    names = sorted(os.listdir(checkpoint))
    found = set()
    for pattern in patterns:
        hits = fnmatch.filter(names, pattern)
        if not hits:
            raise RunError(f"{checkpoint}: no file matches '{pattern}'")
        found.update(hits)
    return sorted(found)


def relative(a, b):
    if a == b:
        return 0.0
    return abs(a - b) / abs(b) if b != 0 else math.inf


class Comparison:
    def __init__(self, ref_name, run_name):
        self.label = f"{run_name} vs {ref_name}"
        self.failures, self.notes = [], []

    def fail(self, message):
        self.failures.append(message)

    def note(self, message):
        self.notes.append(message)


def compare_steps(c, ref_steps, run_steps, args):
    if sorted(ref_steps) != sorted(run_steps):
        c.fail(f"logged steps differ: reference {min(ref_steps)}..{max(ref_steps)} ({len(ref_steps)}), "
               f"run {min(run_steps)}..{max(run_steps)} ({len(run_steps)})")
        return
    for name, steps in (("reference", ref_steps), ("run", run_steps)):
        bad = [s for s, r in steps.items() if not math.isfinite(float(r["loss"]))]
        if bad:
            c.fail(f"{name} has non-finite losses at steps {bad[:5]}")
    if args.no_step_losses:
        c.note(f"{len(ref_steps)} steps")
        return
    first = min(ref_steps)
    worst = (0.0, first)
    differing = []
    for step in sorted(ref_steps):
        ref, run = float(ref_steps[step]["loss"]), float(run_steps[step]["loss"])
        rel = relative(run, ref)
        if rel > worst[0]:
            worst = (rel, step)
        if args.exact:
            if run != ref:
                differing.append(step)
            continue
        if step == first and args.first_loss_atol is not None:
            ok = abs(run - ref) <= args.first_loss_atol
            bound = f"|diff| <= {args.first_loss_atol:g}"
        else:
            rtol = args.first_loss_rtol if step == first and args.first_loss_rtol is not None else args.loss_rtol
            ok = rel <= rtol
            bound = f"rel <= {rtol:g}"
        if not ok:
            c.fail(f"step {step}: loss {run!r} vs reference {ref!r}: rel diff {rel:.3e}, "
                   f"|diff| {abs(run - ref):.3e}; allowed {bound}")
    if differing:
        s = differing[0]
        c.fail(f"losses differ at {len(differing)} of {len(ref_steps)} steps, first at step {s}: "
               f"{float(run_steps[s]['loss'])!r} vs reference {float(ref_steps[s]['loss'])!r}")
    c.note(f"{len(ref_steps)} steps, loss " + ("bit-identical" if args.exact and not differing else
                                               f"max rel diff {worst[0]:.2e} (step {worst[1]})"))

    ref_norms = {s: float(r["grad_norm"]) for s, r in ref_steps.items() if "grad_norm" in r}
    run_norms = {s: float(r["grad_norm"]) for s, r in run_steps.items() if "grad_norm" in r}
    if not (args.exact or args.grad_norm_rtol is not None) or set(ref_norms) != set(run_norms):
        return
    worst_norm = max((relative(run_norms[s], ref_norms[s]), s) for s in ref_norms)
    if args.grad_norm_rtol is not None:
        if worst_norm[0] > args.grad_norm_rtol:
            c.fail(f"grad_norm at step {worst_norm[1]}: rel diff {worst_norm[0]:.3e} > {args.grad_norm_rtol:g}")
        c.note(f"grad_norm max rel diff {worst_norm[0]:.2e}")
    elif worst_norm[0] != 0:
        s = worst_norm[1]
        c.fail(f"grad_norm not bit-identical: step {s}: {run_norms[s]!r} vs reference {ref_norms[s]!r} "
               f"(rel {worst_norm[0]:.2e}; --grad-norm-rtol allows a tolerance)")
    else:
        c.note("grad_norm bit-identical")


def compare_vals(c, ref_vals, run_vals, args):
    common = sorted(set(ref_vals) & set(run_vals))
    if not common:
        if ref_vals or run_vals or args.val_rtol is not None or args.val_atol is not None:
            c.fail(f"no validation step in common (reference {sorted(ref_vals)}, run {sorted(run_vals)})")
        return
    for step in common:
        ref, run = ref_vals[step], run_vals[step]
        diff, rel = abs(run - ref), relative(run, ref)
        text = f"val_loss at step {step}: {run:.6f} vs reference {ref:.6f} (diff {run - ref:+.3e}, rel {rel:.2e})"
        if not (math.isfinite(ref) and math.isfinite(run)):
            c.fail(text + ": not finite")
        elif args.exact and run != ref:
            c.fail(text + ": not bit-identical")
        elif args.val_rtol is not None and rel > args.val_rtol:
            c.fail(text + f": rel > {args.val_rtol:g}")
        elif args.val_atol is not None and diff > args.val_atol:
            c.fail(text + f": |diff| > {args.val_atol:g}")
    last = common[-1]
    c.note(f"final val_loss {run_vals[last]:.6f} vs {ref_vals[last]:.6f} (diff {run_vals[last] - ref_vals[last]:+.2e})")


def compare_files(c, ref_dir, run_dir, patterns):
    ref_ckpt, run_ckpt = newest_checkpoint(ref_dir), newest_checkpoint(run_dir)
    ref_names, run_names = matching_files(ref_ckpt, patterns), matching_files(run_ckpt, patterns)
    if ref_names != run_names:
        c.fail(f"checkpoint files differ: {run_ckpt} has {run_names}, {ref_ckpt} has {ref_names}")
        return
    if os.path.basename(ref_ckpt) != os.path.basename(run_ckpt):
        c.fail(f"newest checkpoints are of different steps: {run_ckpt}, {ref_ckpt}")
        return
    different = [n for n in ref_names
                 if file_digest(os.path.join(ref_ckpt, n)) != file_digest(os.path.join(run_ckpt, n))]
    if different:
        c.fail(f"{os.path.basename(run_ckpt)}: {', '.join(different)} not byte-identical")
    else:
        c.note(f"{os.path.basename(run_ckpt)} {' '.join(ref_names)} byte-identical")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("reference", help="reference run directory")
    p.add_argument("runs", nargs="+", help="run directories compared with the reference")
    p.add_argument("--exact", action="store_true", help="losses, grad norms and val losses bit-identical")
    p.add_argument("--loss-rtol", type=float, default=0.0, help="per-step relative tolerance of the loss")
    p.add_argument("--first-loss-rtol", type=float, help="relative tolerance of step 1's loss")
    p.add_argument("--first-loss-atol", type=float, help="absolute tolerance of step 1's loss")
    p.add_argument("--grad-norm-rtol", type=float, help="relative tolerance of grad_norm (default: exact with "
                   "--exact, else not compared)")
    p.add_argument("--val-rtol", type=float, help="relative tolerance of validation losses")
    p.add_argument("--val-atol", type=float, help="absolute tolerance of validation losses (nats)")
    p.add_argument("--no-step-losses", action="store_true", help="compare validation losses only")
    p.add_argument("--same-file", action="append", metavar="NAME", default=[], dest="same_files",
                   help="a file (or shell pattern) of the newest checkpoint that must be byte-identical; repeatable")
    args = p.parse_args()
    if not args.exact and not args.no_step_losses and args.loss_rtol <= 0:
        p.error("give --exact, --loss-rtol R > 0, or --no-step-losses")

    def name(d):
        return os.path.relpath(d)

    failed = 0
    try:
        ref_steps, ref_vals = read_metrics(args.reference)
    except RunError as e:
        print(f"FAIL reference {name(args.reference)}: {e}")
        return 1
    for run in args.runs:
        c = Comparison(name(args.reference), name(run))
        try:
            run_steps, run_vals = read_metrics(run)
            compare_steps(c, ref_steps, run_steps, args)
            compare_vals(c, ref_vals, run_vals, args)
            if args.same_files:
                compare_files(c, args.reference, run, args.same_files)
        except RunError as e:
            c.fail(str(e))
        if c.failures:
            failed += 1
            print(f"FAIL {c.label}: {'; '.join(c.notes)}")
            for f in c.failures:
                print(f"     {f}")
        else:
            print(f"PASS {c.label}: {'; '.join(c.notes)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
