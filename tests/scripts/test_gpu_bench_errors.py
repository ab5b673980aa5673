"""Bad input to the GPU benchmark's two entry points fails at once, with a
message saying what is allowed, before anything is measured, so it runs
without a GPU (CI builds the CUDA code whenever nvcc is present):

- gpu_step_bench's flags, given as this script's first argument;
- the attention tiling sweep's variants (-DSRGPT_ATTENTION_SWEEP, used by
  scripts/gpu_check.sh sweep), by configuring the source tree named by the
  second argument with cmake, the third."""
import os
import subprocess
import sys
import tempfile
import unittest

BENCH, SOURCE_DIR, CMAKE = sys.argv[1:4]


def run(args, **kwargs):
    return subprocess.run(args, capture_output=True, text=True, timeout=300, **kwargs)


class StepBenchFlags(unittest.TestCase):
    def check_refused(self, args, message):
        with tempfile.TemporaryDirectory() as tmp:
            # A GPU host would start measuring if a flag were wrongly accepted;
            # --json into tmp shows that nothing was written either.
            json_path = os.path.join(tmp, "rows.json")
            result = run([BENCH, "--json", json_path] + args)
            self.assertEqual(result.returncode, 1, f"{args}: {result.stdout}{result.stderr}")
            self.assertIn(message, result.stderr, f"{args}")
            self.assertEqual(result.stdout, "", f"{args}: no table may start")

    def test_numbers_out_of_range_or_malformed(self):
        self.check_refused(["--batch", "0"], "--batch: 0 is below 1; allowed: a whole number in [1, 2147483647]")
        self.check_refused(["--seq", "1024x"], "--seq: '1024x' is not a whole number")
        self.check_refused(["--warmup", "-1"], "--warmup: -1 is below 0")
        self.check_refused(["--iters", "99999999999"], "--iters: 99999999999 is too large")

    def test_missing_value(self):
        self.check_refused(["--iters"], "--iters: 1 required")

    def test_unknown_argument_points_to_help(self):
        self.check_refused(["--modle", "d12"], "--modle; see --help")

    def test_help_lists_the_flags(self):
        result = run([BENCH, "--help"])
        self.assertEqual(result.returncode, 0, result.stderr)
        for flag in ["--kernels", "--steps", "--model", "--only", "--no-wgmma-one-pass", "--smoke"]:
            self.assertIn(flag, result.stdout)

    def test_unknown_model_fails_before_measuring(self):
        self.check_refused(["--steps", "--model", "d12", "--model", "d36"], "unknown model 'd36' (allowed: d12, d24)")

    def test_unwritable_json_path(self):
        result = run([BENCH, "--json", os.path.join(SOURCE_DIR, "no-such-dir", "rows.json")])
        self.assertEqual(result.returncode, 1, result.stderr)
        self.assertIn("--json: cannot open", result.stderr)


class AttentionSweepVariants(unittest.TestCase):
    def test_malformed_variant_stops_the_configure(self):
        with tempfile.TemporaryDirectory() as build:
            result = run([CMAKE, "-S", SOURCE_DIR, "-B", build, "-DSRGPT_CUDA=ON",
                          "-DSRGPT_ATTENTION_SWEEP=1:64:1:32;3:64:1:32"])
            self.assertNotEqual(result.returncode, 0, result.stdout)
            message = " ".join(result.stderr.split())  # cmake wraps and indents its messages
            self.assertIn("SRGPT_ATTENTION_SWEEP: '3:64:1:32' is not fwd_blocks:fwd_keys:bwd_blocks:bwd_queries",
                          message)
            self.assertIn("blocks per warp 1 or 2", message)


if __name__ == "__main__":
    unittest.main(argv=sys.argv[:1])
