#!/usr/bin/env python3
"""Trains one config in each precision mode and several seeds, and prints
the validation losses as a table: the quality side of the precision modes
(docs/precision.md), beside the speed and memory side in docs/benchmarks.md.

  compare_precisions.py [--srgpt PATH] [--config FILE] [--modes a,b,...]
                        [--seeds 1337,1338] [--out DIR] [--set KEY=VALUE ...]

Every (mode, seed) run is `srgpt train --config FILE --set precision=MODE
--set train.seed=SEED --set out_dir=OUT/MODE-SEED` plus the extra --set
options, run one after another (each uses all cores). The table has the
final validation loss per seed, their mean, and the mean's difference from
the fp32 runs' mean; the seed-to-seed spread of fp32 is the noise to judge
it against. A run that fails stops the script with its exit status.

Standard library only (and compare_runs.py beside it, for reading metrics).
"""
import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time

from compare_runs import RunError, read_metrics


def final_validation(run_dir):
    """(step, val_loss) of the run's last validation."""
    try:
        _, vals = read_metrics(run_dir)
    except RunError as e:
        raise SystemExit(str(e))
    if not vals:
        raise SystemExit(f"{run_dir}: no validation record (set train.eval_every)")
    step = max(vals)
    return step, vals[step]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--srgpt", default="build/srgpt", help="the srgpt binary (default build/srgpt)")
    parser.add_argument("--config", default="configs/demo.json")
    parser.add_argument("--modes", default="fp32,mixed,bf16-sr,bf16-rn,bf16-kahan")
    parser.add_argument("--seeds", default="1337,1338")
    parser.add_argument("--out", default="runs/precision", help="parent of the run directories")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="extra config override for every run (repeatable)")
    args = parser.parse_args()
    modes = [m for m in args.modes.split(",") if m]
    known = ("fp32", "mixed", "bf16-sr", "bf16-rn", "bf16-kahan")
    unknown = [m for m in modes if m not in known]
    if unknown:
        parser.error(f"--modes: unknown {', '.join(unknown)} (allowed: {', '.join(known)})")
    try:
        seeds = [int(s) for s in args.seeds.split(",") if s]
    except ValueError:
        parser.error(f"--seeds: '{args.seeds}' is not a comma-separated list of whole numbers")
    if not modes or not seeds:
        parser.error("--modes and --seeds need at least one value each")
    if not os.access(args.srgpt, os.X_OK):
        parser.error(f"--srgpt: {args.srgpt} is not an executable (build it with scripts/build.sh, or pass its path)")

    losses = {}
    for mode in modes:
        for seed in seeds:
            out_dir = os.path.join(args.out, f"{mode}-{seed}")
            # A fresh run each time: srgpt refuses an out_dir with another run's checkpoints.
            shutil.rmtree(out_dir, ignore_errors=True)
            cmd = [args.srgpt, "train", "--config", args.config, "--set", f"precision={mode}",
                   "--set", f"train.seed={seed}", "--set", f"out_dir={out_dir}"]
            for override in args.set:
                cmd += ["--set", override]
            start = time.time()
            proc = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            if proc.returncode != 0:
                sys.stderr.write(proc.stderr[-3000:])
                raise SystemExit(f"{' '.join(cmd)}: exit {proc.returncode}")
            step, val = final_validation(out_dir)
            losses[(mode, seed)] = val
            print(f"{mode} seed {seed}: step {step} val_loss {val:.4f} ({time.time() - start:.0f} s)", flush=True)

    reference = statistics.mean(losses[("fp32", s)] for s in seeds) if "fp32" in modes else None
    print()
    print("| mode | " + " | ".join(f"seed {s}" for s in seeds) + " | mean | mean - fp32 mean |")
    print("|---|" + "---|" * (len(seeds) + 2))
    for mode in modes:
        values = [losses[(mode, s)] for s in seeds]
        mean = statistics.mean(values)
        delta = f"{mean - reference:+.4f}" if reference is not None else "n/a"
        print(f"| {mode} | " + " | ".join(f"{v:.4f}" for v in values) + f" | {mean:.4f} | {delta} |")


if __name__ == "__main__":
    main()
