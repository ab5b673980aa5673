#!/usr/bin/env python3
"""Reference check of `srgpt export --format hf` against Hugging Face transformers.

NEEDS PYTHON WITH torch, transformers AND numpy (the GPU test host has them); it is not
part of ctest. It:
  1. exports CHECKPOINT with `srgpt export --format hf --dtype f32` into a
     temporary directory (or uses --hf-dir, an existing export),
  2. runs `srgpt eval` on the token shards with an explicit batch and sequence
     length,
  3. loads the export with transformers.GPT2LMHeadModel.from_pretrained and
     computes the mean next-token loss over exactly the windows srgpt eval
     reads (non-overlapping windows of seq_len + 1 tokens starting at multiples
     of seq_len, in shard order, all of them or the first --max-tokens' worth),
  4. prints both losses and fails (exit 1) when they differ by more than the
     relative tolerance: 1e-4 for an fp32 checkpoint (both sides compute in
     fp32), 1e-2 for the bf16 precisions (srgpt stores activations in bf16,
     transformers computes in fp32).

Example:
  python3 scripts/check_hf_export.py --srgpt build/srgpt --checkpoint runs/demo \
      --data 'data/demo/val_*.bin' --batch 8 --seq-len 128 --max-tokens 65536
"""
import argparse
import glob
import json
import math
import os
import subprocess
import sys
import tempfile

from reference_modules import require

np = torch = GPT2LMHeadModel = None  # imported in main(), so that --help needs none of them

LLMC_MAGIC = 20240520


def read_shard(path):
    """Token ids of an llm.c shard (uint16 or uint32) or a raw nanoGPT uint16 file."""
    with open(path, "rb") as f:
        data = f.read()
    header = np.frombuffer(data[:1024], dtype="<i4") if len(data) >= 1024 else None
    if header is not None and header[0] == LLMC_MAGIC:
        version, count = int(header[1]), int(header[2])
        dtype = {1: "<u2", 2: "<u4"}[version]
        return np.frombuffer(data[1024:], dtype=dtype, count=count).astype(np.int64)
    return np.frombuffer(data, dtype="<u2").astype(np.int64)


def eval_windows(files, batch, seq_len, max_tokens):
    """The sequences srgpt eval reads, in batches of B (the last may be partial): per shard,
    (n - 1) // T windows of T + 1 tokens at multiples of T, in file order; the first
    max_tokens // T of them (at least one) when max_tokens > 0."""
    rows = []
    for path in files:
        tokens = read_shard(path)
        rows += [tokens[i * seq_len:i * seq_len + seq_len + 1] for i in range((len(tokens) - 1) // seq_len)]
    if max_tokens > 0:
        rows = rows[:max(1, max_tokens // seq_len)]
    return [np.stack(rows[i:i + batch]) for i in range(0, len(rows), batch)]


def run(cmd):
    print("+", " ".join(cmd), flush=True)
    return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout


def main():
    global np, torch, GPT2LMHeadModel
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--srgpt", default="build/srgpt", help="srgpt binary")
    p.add_argument("--checkpoint", required=True, help="checkpoint or run directory")
    p.add_argument("--data", required=True, help="glob of token shards (quote it)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--max-tokens", type=int, default=0, help="0: the whole split")
    p.add_argument("--hf-dir", help="use this export instead of exporting to a temporary directory")
    p.add_argument("--rtol", type=float, help="relative tolerance (default by the checkpoint's precision)")
    p.add_argument("--device", help="torch device (default: cuda when available, else cpu)")
    args = p.parse_args()
    np, torch, transformers = require(__file__, "numpy", "torch", "transformers")
    GPT2LMHeadModel = transformers.GPT2LMHeadModel
    if args.device is None:
        args.device = "cuda" if torch.cuda.is_available() else "cpu"

    files = sorted(glob.glob(args.data))
    if not files:
        sys.exit(f"no shard matches {args.data}")
    info = json.loads(run([args.srgpt, "info", args.checkpoint, "--json"]))
    precision = info["state"]["precision"]
    rtol = args.rtol if args.rtol is not None else (1e-4 if precision == "fp32" else 1e-2)

    eval_out = run([args.srgpt, "eval", "--checkpoint", args.checkpoint, "--data", args.data, "--batch",
                    str(args.batch), "--seq-len", str(args.seq_len), "--max-tokens", str(args.max_tokens)])
    srgpt_result = json.loads(eval_out.strip().splitlines()[-1])

    with tempfile.TemporaryDirectory() as tmp:
        hf_dir = args.hf_dir or os.path.join(tmp, "hf")
        if not args.hf_dir:
            run([args.srgpt, "export", "--checkpoint", args.checkpoint, "--out", hf_dir, "--format", "hf",
                 "--dtype", "f32"])
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        model = GPT2LMHeadModel.from_pretrained(hf_dir, torch_dtype=torch.float32).to(args.device).eval()
        vocab = model.config.vocab_size
        batches = eval_windows(files, args.batch, args.seq_len, args.max_tokens)
        total, tokens = 0.0, 0
        with torch.no_grad():
            for window in batches:
                w = torch.from_numpy(window).to(args.device)
                logits = model(w[:, :-1]).logits.float()
                loss = torch.nn.functional.cross_entropy(logits.reshape(-1, vocab), w[:, 1:].reshape(-1))
                total += float(loss) * w[:, 1:].numel()
                tokens += w[:, 1:].numel()
    hf_loss = total / tokens
    ours = srgpt_result["loss"]
    rel = abs(hf_loss - ours) / abs(ours)
    print(f"precision {precision} | tokens srgpt {srgpt_result['tokens']} transformers {tokens}")
    print(f"loss srgpt {ours:.6f} | transformers {hf_loss:.6f} | relative difference {rel:.2e} (tolerance {rtol:g})")
    print(f"perplexity srgpt {math.exp(ours):.4f} | transformers {math.exp(hf_loss):.4f}")
    if tokens != srgpt_result["tokens"]:
        sys.exit("FAIL: the two sides evaluated different numbers of tokens")
    if rel > rtol:
        sys.exit("FAIL: losses differ by more than the tolerance")
    print("OK")


if __name__ == "__main__":
    main()
