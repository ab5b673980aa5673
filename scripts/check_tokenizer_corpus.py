#!/usr/bin/env python3
"""Compares srgpt's GPT-2 token ids with Hugging Face's on real text.

The text is the demo corpus as its byte-level shards hold it (token id ==
byte value, documents ended by byte 0; scripts/get_demo_corpus.sh), so only
the prepared shards are needed, not the raw files. The script:
  1. decodes the documents of SHARD (default data/demo/val_000000.bin) and
     writes them one per line (documents hold no line breaks) to a temporary
     text file,
  2. runs `srgpt prepare --tokenizer gpt2 --split lines --val-fraction 0` on it,
     so srgpt's train shard holds every document's ids followed by
     <|endoftext|> (50256), in order,
  3. encodes each document with transformers' GPT2TokenizerFast (and, unless
     --fast-only, the Python GPT2Tokenizer), loaded from the same encoder.json
     and vocab.bpe, appends 50256, and compares the two id streams document
     by document.
With --hf-dir, the tokenizer that `srgpt export` wrote into a model
directory (vocab.json, merges.txt), loaded with
GPT2TokenizerFast.from_pretrained, is compared too. Exit status 0 when every
document agrees; otherwise the first mismatches are printed and the status
is 1. --keep DIR keeps the text and the gpt2 shards
there (scripts/gpu_check.sh's export stage trains on them).

Needs `transformers` (as on the H100 test host) and the tokenizer files
(scripts/get_tokenizer.sh).
  python3 scripts/check_tokenizer_corpus.py --srgpt build/srgpt
"""
import argparse
import glob
import os
import struct
import subprocess
import sys
import tempfile

from reference_modules import require

LLMC_MAGIC = 20240520
GPT2_EOT = 50256


def read_llmc_shard(path):
    """Token ids of an llm.c shard (256 x int32 header; uint16 or uint32 ids)."""
    with open(path, "rb") as f:
        data = f.read()
    if len(data) < 1024:
        sys.exit(f"error: {path} is too short for an llm.c shard header")
    magic, version, count = struct.unpack_from("<3i", data)
    if magic != LLMC_MAGIC or version not in (1, 2):
        sys.exit(f"error: {path} is not an llm.c shard (magic {magic}, version {version})")
    width = 2 if version == 1 else 4
    body = data[1024:1024 + count * width]
    if len(body) != count * width:
        sys.exit(f"error: {path} is truncated: header says {count} tokens")
    return list(struct.unpack(f"<{count}{'H' if width == 2 else 'I'}", body))


def byte_shard_documents(path):
    ids = read_llmc_shard(path)
    if any(i > 255 for i in ids):
        sys.exit(f"error: {path} has ids above 255; expected a byte-tokenized shard")
    docs = bytes(ids).split(b"\0")
    if docs and docs[-1] == b"":
        docs.pop()
    return docs


def main():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--srgpt", default=os.path.join(root, "build", "srgpt"), help="srgpt binary")
    p.add_argument("--shard", default=os.path.join(root, "data", "demo", "val_000000.bin"),
                   help="byte-tokenized llm.c shard whose documents are the test text")
    p.add_argument("--tokenizer-dir", default=os.path.join(root, "data", "tokenizer", "gpt2"))
    p.add_argument("--fast-only", action="store_true", help="skip the (slower) Python GPT2Tokenizer")
    p.add_argument("--hf-dir", help="also compare the tokenizer of this exported model directory")
    p.add_argument("--keep", metavar="DIR", help="write the text and srgpt's gpt2 shards here and keep them")
    args = p.parse_args()

    require(__file__, "transformers")
    from transformers import GPT2TokenizerFast

    from hf_gpt2_tokenizers import load_gpt2_tokenizers

    vocab = os.path.join(args.tokenizer_dir, "encoder.json")
    merges = os.path.join(args.tokenizer_dir, "vocab.bpe")
    for path in (vocab, merges):
        if not os.path.isfile(path):
            sys.exit(f"error: {path} not found; run scripts/get_tokenizer.sh")

    raw_docs = byte_shard_documents(args.shard)
    docs = []
    for raw in raw_docs:
        text = raw.decode("utf-8", errors="strict")
        # Hugging Face always reads "<|endoftext|>" as the special token;
        # srgpt prepare encodes it as text, like GPT-2's encoder.py.
        if b"\n" in raw or b"\r" in raw or not text.strip() or "<|endoftext|>" in text:
            sys.exit(f"error: document {len(docs)} of {args.shard} cannot be one line of the test text: {text[:80]!r}")
        docs.append(text)
    if not docs:
        sys.exit(f"error: {args.shard} holds no documents")

    with tempfile.TemporaryDirectory() as tmp:
        work = args.keep or tmp
        os.makedirs(work, exist_ok=True)
        text_path = os.path.join(work, "corpus.txt")
        with open(text_path, "w", encoding="utf-8", newline="\n") as f:
            f.write("\n".join(docs) + "\n")
        out_dir = os.path.join(work, "gpt2")
        cmd = [args.srgpt, "prepare", "--input", text_path, "--tokenizer", "gpt2", "--tokenizer-dir",
               args.tokenizer_dir, "--split", "lines", "--val-fraction", "0", "--out", out_dir, "--no-progress"]
        print("+", " ".join(cmd), flush=True)
        subprocess.run(cmd, check=True)
        ours = []
        for shard in sorted(glob.glob(os.path.join(out_dir, "train_*.bin"))):
            ours.extend(read_llmc_shard(shard))

    tokenizers = load_gpt2_tokenizers(vocab, merges)
    if args.fast_only:
        del tokenizers["GPT2Tokenizer"]
    if args.hf_dir:
        tokenizers[f"exported {args.hf_dir}"] = GPT2TokenizerFast.from_pretrained(args.hf_dir)

    # srgpt's stream, cut into documents at its <|endoftext|> tokens.
    srgpt_docs, start = [], 0
    for i, token in enumerate(ours):
        if token == GPT2_EOT:
            srgpt_docs.append(ours[start:i])
            start = i + 1
    if start != len(ours):
        print(f"MISMATCH: srgpt's stream ends with {len(ours) - start} ids after the last <|endoftext|>")
        return 1
    if len(srgpt_docs) != len(docs):
        print(f"MISMATCH: srgpt wrote {len(srgpt_docs)} documents, the text has {len(docs)}")
        return 1

    failed = 0
    for name, tokenizer in tokenizers.items():
        mismatches = 0
        for index, (text, mine) in enumerate(zip(docs, srgpt_docs)):
            theirs = tokenizer.encode(text)
            if theirs != mine:
                mismatches += 1
                if mismatches <= 5:
                    at = next((k for k, (a, b) in enumerate(zip(mine, theirs)) if a != b), min(len(mine), len(theirs)))
                    print(f"MISMATCH {name}, document {index} at id {at}: {text!r}\n"
                          f"  srgpt {mine[max(0, at - 3):at + 5]}\n  {name} {theirs[max(0, at - 3):at + 5]}")
        ids = sum(len(d) for d in srgpt_docs)
        print(f"{name}: {len(docs) - mismatches} of {len(docs)} documents identical "
              f"({ids} ids, {sum(len(d.encode('utf-8')) for d in docs)} bytes)")
        failed += mismatches
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
