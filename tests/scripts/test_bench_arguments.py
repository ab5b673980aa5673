"""The cpu benchmark programs (benchmarks/tokenizer_bench.cpp,
benchmarks/zero_memory_table.cpp) answer --help, and refuse bad arguments
and input with a message and a non-zero exit before any table starts.

Usage: test_bench_arguments.py TOKENIZER_BENCH ZERO_MEMORY_TABLE"""
import os
import subprocess
import sys
import tempfile
import unittest

TOKENIZER_BENCH, ZERO_MEMORY_TABLE = sys.argv[1:3]


def run(args, cwd=None):
    return subprocess.run(args, capture_output=True, text=True, timeout=120, cwd=cwd)


class TokenizerBench(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        self.text = os.path.join(self.tmp.name, "text.txt")
        with open(self.text, "w") as f:
            f.write("A line of text to tokenize.\n")

    def tearDown(self):
        self.tmp.cleanup()

    def check_refused(self, args, message):
        result = run([TOKENIZER_BENCH] + args, cwd=self.tmp.name)
        self.assertNotEqual(result.returncode, 0, f"{args}: {result.stdout}")
        self.assertIn(message, result.stderr, f"{args}")
        self.assertNotIn("|", result.stdout, f"{args}: no table may start")

    def test_help(self):
        result = run([TOKENIZER_BENCH, "--help"])
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn("--repeats", result.stdout)

    def test_repeats_out_of_range(self):
        self.check_refused(["--repeats", "0", self.text], "--repeats: 0 is below 1")
        self.check_refused(["--repeats", "", self.text], "--repeats: '' is not a whole number")

    def test_unreadable_or_empty_input(self):
        self.check_refused([os.path.join(self.tmp.name, "missing.txt")], "cannot read")
        empty = os.path.join(self.tmp.name, "empty.txt")
        open(empty, "w").close()
        self.check_refused([empty], "the input files hold no text")

    def test_missing_tokenizer_fails_before_the_table(self):
        self.check_refused(["--tokenizer-dir", os.path.join(self.tmp.name, "none"), self.text],
                           "encoder.json' does not exist")

    def test_no_files_and_no_demo_corpus(self):
        self.check_refused([], "demo corpus (run scripts/get_demo_corpus.sh, or pass text files)")


class ZeroMemoryTable(unittest.TestCase):
    def test_help(self):
        result = run([ZERO_MEMORY_TABLE, "--help"])
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn("ZeRO stage", result.stdout)

    def test_unknown_argument(self):
        result = run([ZERO_MEMORY_TABLE, "--world", "16"])
        self.assertNotEqual(result.returncode, 0)
        self.assertIn("--world", result.stderr)
        self.assertEqual(result.stdout, "")

    def test_tables(self):
        result = run([ZERO_MEMORY_TABLE])
        self.assertEqual(result.returncode, 0, result.stderr)
        # Four shapes, four stages, in each of the three tables.
        self.assertEqual(result.stdout.count("| d24 |"), 12, result.stdout)


if __name__ == "__main__":
    unittest.main(argv=sys.argv[:1])
