"""Tests of scripts/compare_runs.py, the judge of the GPU host's dist, export
and demo checks (scripts/gpu_check.sh): a comparison that passed whatever the
runs contained would make those checks meaningless. Each test writes run
directories as `srgpt train` does (metrics.jsonl, checkpoints/step_N/) and
runs the script as gpu_check.sh does."""
import json
import math
import os
import random
import subprocess
import sys
import tempfile
import unittest

SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "scripts", "compare_runs.py")


def write_run(root, name, losses, grad_norms, vals, files=None, checkpoint_step=None):
    run = os.path.join(root, name)
    os.makedirs(run)
    with open(os.path.join(run, "metrics.jsonl"), "w") as f:
        for step, (loss, norm) in enumerate(zip(losses, grad_norms), 1):
            f.write(json.dumps({"step": step, "loss": loss, "grad_norm": norm, "lr": 1e-3}) + "\n")
            if step in vals:
                f.write(json.dumps({"step": step, "val_loss": vals[step]}) + "\n")
    if files:
        ckpt = os.path.join(run, "checkpoints", f"step_{checkpoint_step or len(losses)}")
        os.makedirs(ckpt)
        for file_name, data in files.items():
            with open(os.path.join(ckpt, file_name), "wb") as f:
                f.write(data)
    return run


def compare(*args):
    result = subprocess.run([sys.executable, SCRIPT, *args], capture_output=True, text=True)
    return result.returncode, result.stdout + result.stderr


class CompareRunsTest(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        self.root = self.tmp.name
        rng = random.Random()
        self.losses = [rng.uniform(2.0, 6.0) for _ in range(20)]
        self.norms = [rng.uniform(0.1, 3.0) for _ in range(20)]
        self.vals = {10: rng.uniform(2.0, 3.0), 20: rng.uniform(2.0, 3.0)}
        self.weights = bytes(rng.getrandbits(8) for _ in range(4096))
        self.ref = write_run(self.root, "ref", self.losses, self.norms, self.vals,
                             {"model.bin": self.weights, "optim_rank00000.bin": self.weights[::-1]})

    def tearDown(self):
        self.tmp.cleanup()

    def nudged(self, values, index, factor):
        copy = list(values)
        copy[index] *= factor
        return copy

    def test_identical_runs_pass_exact_with_files(self):
        run = write_run(self.root, "run", self.losses, self.norms, self.vals,
                        {"model.bin": self.weights, "optim_rank00000.bin": self.weights[::-1]})
        code, out = compare("--exact", "--same-file", "model.bin", "--same-file", "optim_rank*.bin", self.ref, run)
        self.assertEqual(code, 0, out)
        self.assertIn("PASS", out)
        self.assertIn("bit-identical", out)

    def test_last_bit_of_one_loss_fails_exact(self):
        step = random.randrange(20)
        losses = list(self.losses)
        losses[step] = math.nextafter(losses[step], math.inf)
        run = write_run(self.root, "run", losses, self.norms, self.vals)
        code, out = compare("--exact", self.ref, run)
        self.assertEqual(code, 1, out)
        self.assertIn(f"first at step {step + 1}", out)

    def test_grad_norm_checked_under_exact(self):
        run = write_run(self.root, "run", self.losses, self.nudged(self.norms, 7, 1 + 1e-15), self.vals)
        code, out = compare("--exact", self.ref, run)
        self.assertEqual(code, 1, out)
        self.assertIn("grad_norm not bit-identical: step 8", out)
        code, out = compare("--exact", "--grad-norm-rtol", "1e-12", self.ref, run)
        self.assertEqual(code, 0, out)

    def test_relative_tolerance_bounds_each_step(self):
        run = write_run(self.root, "run", self.nudged(self.losses, 12, 1 + 4e-3), self.norms, self.vals)
        self.assertEqual(compare("--loss-rtol", "5e-3", self.ref, run)[0], 0)
        code, out = compare("--loss-rtol", "3e-3", self.ref, run)
        self.assertEqual(code, 1, out)
        self.assertIn("step 13:", out)

    def test_first_step_has_its_own_bound(self):
        run = write_run(self.root, "run", self.nudged(self.losses, 0, 1 + 1e-6), self.norms, self.vals)
        self.assertEqual(compare("--loss-rtol", "1e-2", "--first-loss-atol", "1e-3", self.ref, run)[0], 0)
        code, out = compare("--loss-rtol", "1e-2", "--first-loss-atol", "1e-9", self.ref, run)
        self.assertEqual(code, 1, out)
        self.assertIn("step 1:", out)

    def test_validation_losses_compared(self):
        vals = dict(self.vals)
        vals[20] += 0.03
        run = write_run(self.root, "run", self.losses, self.norms, vals)
        self.assertEqual(compare("--no-step-losses", "--val-atol", "0.05", self.ref, run)[0], 0)
        code, out = compare("--no-step-losses", "--val-atol", "0.02", self.ref, run)
        self.assertEqual(code, 1, out)
        self.assertIn("val_loss at step 20", out)

    def test_non_finite_loss_fails(self):
        # srgpt writes a non-finite value as null (a skipped step's loss and
        # grad norm, a diverged evaluation); the script used to crash on it.
        losses, norms, vals = list(self.losses), list(self.norms), dict(self.vals)
        losses[5] = norms[5] = vals[20] = None
        run = write_run(self.root, "run", losses, norms, vals)
        for reference, other in ((self.ref, run), (run, self.ref)):
            code, out = compare("--loss-rtol", "1.0", reference, other)
            self.assertEqual(code, 1, out)
            self.assertIn("non-finite losses at steps [6]", out)
            self.assertIn("val_loss at step 20", out)
            self.assertNotIn("Traceback", out)
            code, out = compare("--no-step-losses", reference, other)
            self.assertEqual(code, 1, out)
            self.assertIn("non-finite losses at steps [6]", out)

    def test_metrics_not_utf8_fail(self):
        run = os.path.join(self.root, "binary")
        os.makedirs(run)
        with open(os.path.join(run, "metrics.jsonl"), "wb") as f:
            f.write(b'\xff\xfe{"step":1}\n')
        code, out = compare("--exact", self.ref, run)
        self.assertEqual(code, 1, out)
        self.assertIn("not UTF-8 text", out)
        self.assertNotIn("Traceback", out)

    def test_missing_steps_fail(self):
        run = write_run(self.root, "run", self.losses[:15], self.norms[:15], {10: self.vals[10]})
        code, out = compare("--exact", self.ref, run)
        self.assertEqual(code, 1, out)
        self.assertIn("logged steps differ", out)

    def test_checkpoint_byte_difference_fails(self):
        changed = bytearray(self.weights)
        changed[random.randrange(len(changed))] ^= 1 << random.randrange(8)
        run = write_run(self.root, "run", self.losses, self.norms, self.vals,
                        {"model.bin": bytes(changed), "optim_rank00000.bin": self.weights[::-1]})
        code, out = compare("--exact", "--same-file", "model.bin", self.ref, run)
        self.assertEqual(code, 1, out)
        self.assertIn("model.bin not byte-identical", out)

    def test_missing_checkpoint_file_fails(self):
        run = write_run(self.root, "run", self.losses, self.norms, self.vals, {"model.bin": self.weights})
        code, out = compare("--exact", "--same-file", "optim_rank*.bin", self.ref, run)
        self.assertEqual(code, 1, out)
        self.assertIn("no file matches 'optim_rank*.bin'", out)

    def test_missing_metrics_fail(self):
        os.makedirs(os.path.join(self.root, "empty"))
        code, out = compare("--exact", self.ref, os.path.join(self.root, "empty"))
        self.assertEqual(code, 1, out)
        self.assertIn("cannot read", out)

    def test_a_tolerance_is_required(self):
        run = write_run(self.root, "run", self.losses, self.norms, self.vals)
        code, out = compare(self.ref, run)
        self.assertEqual(code, 2, out)
        self.assertIn("give --exact", out)


if __name__ == "__main__":
    unittest.main()
