#!/usr/bin/env python3
"""REFERENCE BASELINE, not part of srgpt: GPT-2 training-step throughput in
PyTorch with torch.compile, for comparison with benchmarks/gpu_step_bench.

Same workload as the srgpt benchmark: GPT-2 d12 (124M) or d24 (350M),
micro batch 32, sequence 1024, vocabulary padded to 50304, random tokens,
AdamW (lr 6e-4, betas 0.9/0.95, weight decay 0.1 on matrices), gradient
clipping at 1.0. Two precision modes:

  mixed  fp32 weights, bf16 autocast for forward/backward, fp32 AdamW state
         (the usual mixed precision)
  bf16   pure bf16 weights, gradients and AdamW state

Each (model, mode) runs in its own process so peak memory is measured
cleanly. Prints the median step time after warm-up, tokens/s, MFU and peak
memory, one line per run, then a table. MFU counts 6 N + 12 L C T FLOPs per
token against an 8192^3 bf16 matmul timed in the same process (as
gpu_step_bench does), so it needs no GPU model's peak written in.

--attention instead times PyTorch's causal scaled_dot_product_attention
alone, forward and backward, at the models' shapes (bf16, [B, H, T, hd]),
for each SDPA backend this PyTorch offers (its default choice, flash,
cuDNN, memory-efficient), with the same FLOP counts as gpu_step_bench's
per-kernel table: forward 4 B H T^2 hd / 2, backward 2.5x that.

  python3 scripts/bench_pytorch_gpt2.py                 # d12 and d24, both modes
  python3 scripts/bench_pytorch_gpt2.py --model d12 --mode bf16 --steps 30
  python3 scripts/bench_pytorch_gpt2.py --attention
"""
import argparse
import contextlib
import json
import math
import statistics
import subprocess
import sys
import time

from reference_modules import require

MODELS = {
    "d12": dict(n_layer=12, n_head=12, d_model=768),
    "d24": dict(n_layer=24, n_head=16, d_model=1024),
}


def build_model(torch, cfg, vocab, seq_len):
    nn = torch.nn
    F = torch.nn.functional

    class Block(nn.Module):
        def __init__(self, C, H):
            super().__init__()
            self.H = H
            self.ln_1 = nn.LayerNorm(C)
            self.c_attn = nn.Linear(C, 3 * C)
            self.c_proj = nn.Linear(C, C)
            self.ln_2 = nn.LayerNorm(C)
            self.c_fc = nn.Linear(C, 4 * C)
            self.mlp_proj = nn.Linear(4 * C, C)

        def forward(self, x):
            B, T, C = x.shape
            q, k, v = self.c_attn(self.ln_1(x)).split(C, dim=2)
            q, k, v = (t.view(B, T, self.H, C // self.H).transpose(1, 2) for t in (q, k, v))
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            x = x + self.c_proj(y.transpose(1, 2).contiguous().view(B, T, C))
            return x + self.mlp_proj(F.gelu(self.c_fc(self.ln_2(x)), approximate="tanh"))

    class GPT(nn.Module):
        def __init__(self):
            super().__init__()
            C = cfg["d_model"]
            self.wte = nn.Embedding(vocab, C)
            self.wpe = nn.Embedding(seq_len, C)
            self.blocks = nn.ModuleList(Block(C, cfg["n_head"]) for _ in range(cfg["n_layer"]))
            self.ln_f = nn.LayerNorm(C)
            std = 0.02
            for name, p in self.named_parameters():
                if p.dim() == 2:
                    s = std / math.sqrt(2 * cfg["n_layer"]) if name.endswith("proj.weight") else std
                    nn.init.normal_(p, 0.0, s)
                elif name.endswith("bias"):
                    nn.init.zeros_(p)

        def forward(self, idx, targets):
            T = idx.shape[1]
            x = self.wte(idx) + self.wpe(torch.arange(T, device=idx.device))
            for block in self.blocks:
                x = block(x)
            logits = F.linear(self.ln_f(x), self.wte.weight)  # tied head
            return F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.view(-1))

    return GPT()


def run_one(args):
    import torch

    torch.manual_seed(1234)
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    device = "cuda"
    ceiling_tflops = matmul_ceiling_tflops(torch)
    cfg = MODELS[args.model]
    vocab, B, T = 50304, args.batch, args.seq
    model = build_model(torch, cfg, vocab, T).to(device)
    if args.mode == "bf16":
        model = model.to(torch.bfloat16)
    n_params = sum(p.numel() for p in model.parameters())
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
        lr=6e-4, betas=(0.9, 0.95), eps=1e-8, fused=True)
    compiled = torch.compile(model)
    x = torch.randint(0, 50257, (B, T), device=device)
    y = torch.randint(0, 50257, (B, T), device=device)

    def step():
        opt.zero_grad(set_to_none=True)
        if args.mode == "mixed":
            with torch.autocast(device_type="cuda", dtype=torch.bfloat16):
                loss = compiled(x, y)
        else:
            loss = compiled(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        return loss

    torch.cuda.reset_peak_memory_stats()
    for _ in range(args.warmup):
        step()
    torch.cuda.synchronize()
    times = []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        loss = step()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    median = statistics.median(times)
    tokens = B * T
    flops = 6 * n_params * tokens + 12 * cfg["n_layer"] * cfg["d_model"] * T * tokens
    result = dict(
        impl="pytorch", model=args.model, mode=args.mode, batch=B, seq=T, params=n_params,
        step_ms=median * 1e3, tokens_per_s=tokens / median,
        mfu=flops / median / (ceiling_tflops * 1e12), matmul_ceiling_tflops=ceiling_tflops,
        peak_alloc_gib=torch.cuda.max_memory_allocated() / 2**30,
        peak_reserved_gib=torch.cuda.max_memory_reserved() / 2**30,
        loss=float(loss), torch=torch.__version__, gpu=torch.cuda.get_device_name())
    print("RESULT " + json.dumps(result), flush=True)


class JsonLines:
    """Rows appended to a JSON-lines file as they are measured, so a run
    stopped part-way (a time limit) keeps the rows it finished."""

    def __init__(self, path):
        self.file = open(path, "w") if path else None

    def add(self, row):
        if self.file:
            self.file.write(json.dumps(row) + "\n")
            self.file.flush()


def median_cuda_ms(torch, fn, warmup=5, reps=20):
    """Median of `reps` timings of fn() with CUDA events, after warm-up."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def matmul_ceiling_tflops(torch, n=8192):
    """What this GPU's tensor cores reach at best: a bf16 n^3 matmul. Its
    buffers are returned to the device before the model is built, so the
    model's peak memory does not include them; their own generator leaves
    the run's random state as it was."""
    gen = torch.Generator(device="cuda").manual_seed(0)
    a, b = (torch.randn(n, n, device="cuda", dtype=torch.bfloat16, generator=gen) for _ in range(2))
    ms = median_cuda_ms(torch, lambda: a @ b, warmup=3, reps=10)
    del a, b
    torch.cuda.empty_cache()
    return 2.0 * n ** 3 / ms / 1e9


def attention_table(args):
    import torch
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    backends = [("default", None), ("flash", SDPBackend.FLASH_ATTENTION), ("cudnn", SDPBackend.CUDNN_ATTENTION),
                ("efficient", SDPBackend.EFFICIENT_ATTENTION)]
    rows, out = [], JsonLines(args.json)
    for model in args.model or ["d12", "d24"]:
        cfg = MODELS[model]
        B, T, H = args.batch, args.seq, cfg["n_head"]
        hd = cfg["d_model"] // H
        forward_flops = 4.0 * B * H * T * T * hd / 2
        gen = torch.Generator(device="cuda").manual_seed(1)
        q, k, v = (torch.randn(B, H, T, hd, device="cuda", dtype=torch.bfloat16, generator=gen).requires_grad_()
                   for _ in range(3))
        dout = torch.randn(B, H, T, hd, device="cuda", dtype=torch.bfloat16, generator=gen)

        def forward():
            return F.scaled_dot_product_attention(q, k, v, is_causal=True)

        def forward_backward():
            torch.autograd.grad(forward(), (q, k, v), dout)

        for name, backend in backends:
            try:
                with sdpa_kernel([backend]) if backend is not None else contextlib.nullcontext():
                    fwd_ms = median_cuda_ms(torch, forward)
                    both_ms = median_cuda_ms(torch, forward_backward)
            except RuntimeError as error:
                print(f"attention {model} {name}: unavailable ({str(error).splitlines()[0][:120]})", flush=True)
                continue
            bwd_ms = both_ms - fwd_ms
            row = dict(model=model, backend=name, B=B, T=T, H=H, hd=hd, forward_ms=fwd_ms, backward_ms=bwd_ms,
                       forward_tflops=forward_flops / fwd_ms / 1e9, backward_tflops=2.5 * forward_flops / bwd_ms / 1e9,
                       torch=torch.__version__, gpu=torch.cuda.get_device_name())
            rows.append(row)
            out.add(row)
            print(json.dumps(row), flush=True)
    print("\nPyTorch causal SDPA, bf16, batch %d, seq %d (backward = forward+backward minus forward)" % (
        args.batch, args.seq))
    print("| model | backend | forward ms | TFLOP/s | backward ms | TFLOP/s |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print("| %s (H=%d hd=%d) | %s | %.3f | %.0f | %.3f | %.0f |" % (
            r["model"], r["H"], r["hd"], r["backend"], r["forward_ms"], r["forward_tflops"], r["backward_ms"],
            r["backward_tflops"]))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=sorted(MODELS), action="append")
    parser.add_argument("--mode", choices=["mixed", "bf16"], action="append")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seq", type=int, default=1024)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--json", help="also write the results to this file (JSON lines)")
    parser.add_argument("--attention", action="store_true",
                        help="time causal scaled_dot_product_attention alone, per SDPA backend")
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    require(__file__, "torch")
    if args.attention:
        return attention_table(args)
    if args.one:
        args.model, args.mode = args.model[0], args.mode[0]
        return run_one(args)

    results, out, failed = [], JsonLines(args.json), 0
    for model in args.model or ["d12", "d24"]:
        for mode in args.mode or ["mixed", "bf16"]:
            cmd = [sys.executable, __file__, "--one", "--model", model, "--mode", mode, "--batch", str(args.batch),
                   "--seq", str(args.seq), "--warmup", str(args.warmup), "--steps", str(args.steps)]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            lines = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
            if proc.returncode != 0 or not lines:
                tail = (proc.stderr or proc.stdout)[-2000:]
                print(f"pytorch {model} {mode}: FAILED (exit {proc.returncode})\n{tail}", flush=True)
                failed += 1
                continue
            result = json.loads(lines[-1][len("RESULT "):])
            results.append(result)
            out.add(result)
            print(json.dumps(result), flush=True)
    print("\nPyTorch reference (torch.compile), micro batch %d, seq %d" % (args.batch, args.seq))
    print("| model | mode | step ms | tokens/s | MFU | of matmul TFLOP/s | peak alloc GiB | peak reserved GiB |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        print("| %s | %s | %.1f | %.0f | %.1f%% | %.0f | %.2f | %.2f |" % (
            r["model"], r["mode"], r["step_ms"], r["tokens_per_s"], 100 * r["mfu"], r["matmul_ceiling_tflops"],
            r["peak_alloc_gib"], r["peak_reserved_gib"]))
    if failed:
        print(f"\n{failed} of {failed + len(results)} runs failed (above)")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
