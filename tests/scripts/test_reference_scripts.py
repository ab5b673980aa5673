"""Tests of the reference scripts that need PyTorch, transformers or numpy
(scripts/reference_modules.py): each answers --help without them, and where
a module is missing (CI's machine) ends with one line naming it, not a
traceback. On the GPU host, which has them all, only --help is checked."""
import importlib.util
import os
import subprocess
import sys
import unittest

SCRIPTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "scripts")

# Each script, arguments that get it past its own checks, and the modules it needs.
CASES = [
    ("bench_pytorch_gpt2.py", ["--attention"], ["torch"]),
    ("check_hf_export.py", ["--checkpoint", "x", "--data", "y"], ["numpy", "torch", "transformers"]),
    ("check_tokenizer_hf.py", [], ["regex", "transformers"]),
    ("check_tokenizer_corpus.py", [], ["transformers"]),
]


def run(script, args):
    result = subprocess.run([sys.executable, os.path.join(SCRIPTS, script), *args], capture_output=True, text=True)
    return result.returncode, result.stdout + result.stderr


class ReferenceScriptsTest(unittest.TestCase):
    def test_help_needs_no_third_party_module(self):
        for script, _, _ in CASES:
            with self.subTest(script=script):
                code, out = run(script, ["--help"])
                self.assertEqual(code, 0, out)
                self.assertIn("usage:", out)

    def test_a_missing_module_is_named_in_one_line(self):
        for script, args, modules in CASES:
            missing = [m for m in modules if importlib.util.find_spec(m) is None]
            if not missing:
                continue
            with self.subTest(script=script):
                code, out = run(script, args)
                self.assertEqual(code, 1, out)
                self.assertIn(f"{script}: needs the Python module '{missing[0]}'", out)
                self.assertNotIn("Traceback", out)


if __name__ == "__main__":
    unittest.main()
