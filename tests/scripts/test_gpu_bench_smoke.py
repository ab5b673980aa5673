"""The GPU benchmark (benchmarks/gpu_step_bench.cpp), built against the
device emulator, runs every row at tiny shapes (--smoke) and reports what
the GPU host's run would: each step row in the table and as a JSON line,
each kernel row, the bf16-sr vs mixed ratios and the cuBLASLt epilogues.
A row that faults ends the program, and on the GPU host that would cost
the session every row after it: this finds such a row without a GPU. The
rows then make issue 4's targets table (scripts/bench_targets.py), as in
the session.

Usage: test_gpu_bench_smoke.py BENCH (the emulated gpu_step_bench)."""
import json
import math
import os
import subprocess
import sys
import tempfile
import unittest

BENCH = sys.argv[1]
BENCH_TARGETS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "scripts", "bench_targets.py")
BATCH, SEQ = 2, 64

DEFAULT_ATTENTION = "mma forward, one-pass backward"
WGMMA_ATTENTIONS = ["wgmma forward, wgmma backward", "wgmma forward, wgmma-one-pass backward"]
MEMORY_OPTIONS = [
    "recompute none, 8 head chunks",
    "recompute layernorm, 8 head chunks",
    "recompute none, 8 head chunks, LayerNorm backward from output",
    "recompute gelu, 8 head chunks",
    "recompute all, 8 head chunks",
    "recompute gelu, 8 head chunks, LayerNorm backward from output",
]
KERNEL_OPS = (
    ["embedding_forward", "embedding_backward", "residual_layernorm_forward", "layernorm_backward",
     "layernorm_backward from output"]
    + [f"matmul_{d} {m}{s}" for m in ["qkv", "attn proj", "fc + gelu", "mlp proj (dgelu)", "lm head"]
       for d, s in [("forward", ""), ("backward", ""), ("backward", ", one stream")]]
    + ["attention_forward mma", "attention_forward wgmma", "attention_backward one-pass",
       "attention_backward two-pass", "attention_backward wgmma", "attention_backward wgmma-one-pass",
       "cross_entropy_forward_backward", "sum_squares (grad norm)", "accumulate"]
    + ["adamw_update bf16-sr", "adamw_update bf16-sr, a launch per tensor", "adamw_update bf16-sr, a launch per unit"]
    + [f"adamw_update {p}" for p in ["bf16-rn", "mixed", "bf16-kahan"]])


def expected_step_rows(model, wgmma=True):
    rows = [(model, p, "none", DEFAULT_ATTENTION) for p in ["bf16-sr", "bf16-rn", "mixed"]]
    if wgmma:
        rows += [(model, "bf16-sr", "none", a) for a in WGMMA_ATTENTIONS]
    rows += [(model, "bf16-sr", o, DEFAULT_ATTENTION) for o in MEMORY_OPTIONS]
    return rows


def table(stdout, heading):
    """The rows of the markdown table after the line starting with heading,
    as lists of cells (the header and separator left out)."""
    lines = stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(heading))
    rows = []
    for line in lines[start + 1:]:
        if not line.startswith("|"):
            if rows:
                break
            continue
        rows.append([c.strip() for c in line.strip("|").split("|")])
    return rows[2:]


def run_bench(args):
    with tempfile.TemporaryDirectory() as tmp:
        json_path = os.path.join(tmp, "steps.jsonl")
        result = subprocess.run(
            [BENCH, "--smoke", "--batch", str(BATCH), "--seq", str(SEQ), "--warmup", "1", "--iters", "1",
             "--json", json_path] + args,
            capture_output=True, text=True, timeout=600)
        with open(json_path) as f:
            rows = [json.loads(line) for line in f]
    return result, rows


class EveryRow(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.result, cls.json_rows = run_bench([])

    def test_runs_to_the_end(self):
        self.assertEqual(self.result.returncode, 0, self.result.stdout[-3000:] + self.result.stderr)
        self.assertEqual(self.result.stderr, "")
        self.assertIn("smoke run: tiny shapes", self.result.stdout)
        self.assertIn("132 SMs at up to 1980 MHz (dense bf16 1071 TFLOP/s), memory 3.35 TB/s by specification",
                      self.result.stdout)

    def test_every_step_row_as_a_json_line(self):
        expected = expected_step_rows("d12") + expected_step_rows("d24")
        got = [(r["model"], r["precision"], r["activations"], r["attention"]) for r in self.json_rows]
        self.assertEqual(got, expected)
        for r in self.json_rows:
            self.assertEqual((r["batch"], r["seq"]), (BATCH, SEQ))
            for key in ["step_ms", "tokens_per_s", "mfu", "matmul_ceiling_tflops", "peak_gib"]:
                self.assertTrue(math.isfinite(r[key]) and r[key] > 0, f"{key} of {r}")
            self.assertAlmostEqual(r["tokens_per_s"], BATCH * SEQ / (r["step_ms"] * 1e-3), delta=1e-6 * r["tokens_per_s"])
            # 6 N + 12 L C T FLOPs per token (2 layers, d_model 128), of the ceiling.
            flops = 6 * r["params"] + 12 * 2 * 128 * SEQ
            self.assertAlmostEqual(r["mfu"], flops * r["tokens_per_s"] / (r["matmul_ceiling_tflops"] * 1e12),
                                   delta=1e-6 * r["mfu"])

    def test_step_table_matches_the_json_lines(self):
        rows = table(self.result.stdout, "training steps:")
        self.assertEqual([(r[0], r[1], r[2], r[3]) for r in rows],
                         [(j["model"], j["precision"], j["activations"], j["attention"]) for j in self.json_rows])
        for cells, j in zip(rows, self.json_rows):
            self.assertEqual(cells[5], f"{j['step_ms']:.1f}")
        for model in ["d12", "d24"]:
            sr, mixed = (next(j for j in self.json_rows if j["model"] == model and j["precision"] == p
                              and j["activations"] == "none") for p in ["bf16-sr", "mixed"])
            # Against the default attention's bf16-sr row, not a wgmma one.
            self.assertEqual(sr["attention"], DEFAULT_ATTENTION)
            self.assertIn(f"{model}: bf16-sr vs mixed: {sr['tokens_per_s'] / mixed['tokens_per_s']:.2f}x throughput",
                          self.result.stdout)

    def test_every_kernel_row(self):
        rows = table(self.result.stdout, "per-kernel results")
        self.assertEqual([r[0] for r in rows], KERNEL_OPS)
        for r in rows:
            self.assertGreater(float(r[2]), 0.0, r)
        self.assertRegex(self.result.stdout,
                         r"cuBLASLt epilogues of these matmuls, fused on how many of the products they were asked "
                         r"for: BIAS \d+ of \d+;")


    def test_targets_table_reads_the_rows(self):
        # The session's next step: issue 4's table from these rows and
        # PyTorch's (made up here, in bench_pytorch_gpt2.py's fields).
        with tempfile.TemporaryDirectory() as tmp:
            srgpt_path, torch_path = os.path.join(tmp, "srgpt.jsonl"), os.path.join(tmp, "pytorch.jsonl")
            with open(srgpt_path, "w") as f:
                f.writelines(json.dumps(r) + "\n" for r in self.json_rows)
            with open(torch_path, "w") as f:
                for model in ["d12", "d24"]:
                    for mode, tokens_per_s in [("mixed", 200.0), ("bf16", 210.0)]:
                        f.write(json.dumps({"model": model, "mode": mode, "tokens_per_s": tokens_per_s,
                                            "peak_alloc_gib": 0.1, "peak_reserved_gib": 0.12, "mfu": 0.1,
                                            "matmul_ceiling_tflops": 0.01}) + "\n")
            result = subprocess.run([sys.executable, BENCH_TARGETS, srgpt_path, torch_path], capture_output=True,
                                    text=True, timeout=60)
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)
        rows = [line for line in result.stdout.splitlines() if line.startswith("| d")]
        self.assertEqual([r.split("|")[1].strip() for r in rows], ["d12", "d24"])
        sr = next(j for j in self.json_rows if j["model"] == "d12" and j["precision"] == "bf16-sr")
        self.assertIn(f"{sr['tokens_per_s'] / 210.0:.2f}x (PyTorch bf16)", rows[0])


class LeftOut(unittest.TestCase):
    def test_no_wgmma_leaves_its_rows_out(self):
        result, rows = run_bench(["--steps", "--model", "d12", "--no-wgmma"])
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual([(r["model"], r["precision"], r["activations"], r["attention"]) for r in rows],
                         expected_step_rows("d12", wgmma=False))
        self.assertIn("steps: attention forward wgmma: not measured: --no-wgmma", result.stdout)
        self.assertNotIn("per-kernel results", result.stdout)

    def test_only_times_the_named_kernels(self):
        result, rows = run_bench(["--kernels", "--only", "attention_backward", "--no-wgmma-one-pass"])
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(rows, [])
        self.assertEqual([r[0] for r in table(result.stdout, "per-kernel results")],
                         ["attention_backward one-pass", "attention_backward two-pass", "attention_backward wgmma"])


if __name__ == "__main__":
    unittest.main(argv=sys.argv[:1])
