"""The wgmma attention kernels compile to Hopper's fast path: built for
sm_90a with the flags of the Release build (CMakeLists.txt), ptxas must not serialise their wgmma
instructions (C7520: the accumulators touched where the compiler must
insert warpgroup arrives; C7519: such an arrive injected) and must not
spill their registers. Either would cost much of their speed and cannot be
seen without a GPU otherwise; the emulated tests check their results, not
this. Runs where nvcc is (CI compiles the CUDA code when it is present).

    test_wgmma_compile.py NVCC SOURCE_DIR
"""
import os
import re
import subprocess
import sys
import tempfile
import unittest

NVCC, SOURCE_DIR = sys.argv[1], sys.argv[2]
del sys.argv[1:3]


def ptxas_report():
    """{kernel: {"registers": n, "spill_stores": n}} and the C75xx lines."""
    with tempfile.TemporaryDirectory() as tmp:
        command = [NVCC, "-std=c++17", "-O3", "-DNDEBUG", "--expt-relaxed-constexpr", "-lineinfo",
                   "-gencode=arch=compute_90a,code=sm_90a",
                   "-I" + os.path.join(SOURCE_DIR, "include"), "-I" + os.path.join(SOURCE_DIR, "cuda"),
                   "-Xptxas", "-v", "-c", os.path.join(SOURCE_DIR, "cuda", "attention.cu"),
                   "-o", os.path.join(tmp, "attention.o")]
        result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise AssertionError(f"nvcc failed ({result.returncode}):\n{result.stderr[-4000:]}")
    kernels, current, notes = {}, None, []
    for line in result.stderr.splitlines():
        found = re.search(r"Function properties for (\S+)", line)
        if found:
            current = found.group(1)
            kernels.setdefault(current, {})
        found = re.search(r"(\d+) bytes spill stores", line)
        if found and current:
            kernels[current]["spill_stores"] = int(found.group(1))
        found = re.search(r"Used (\d+) registers", line)
        if found and current:
            kernels[current]["registers"] = int(found.group(1))
        if re.search(r"C75\d\d", line):
            notes.append(line.strip())
    return kernels, notes


class WgmmaCompileTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.kernels, cls.notes = ptxas_report()
        cls.wgmma = {name: usage for name, usage in cls.kernels.items() if "wgmma_kernel" in name}

    def test_every_wgmma_kernel_is_compiled(self):
        # Forward, dK/dV (without and with dQ's adds: Lb0E, Lb1E) and dQ, at
        # head sizes 64 and 128.
        for kind, rest in (("attention_forward_wgmma_kernel", ""), ("attention_backward_dkdv_wgmma_kernel", "Lb0E"),
                           ("attention_backward_dkdv_wgmma_kernel", "Lb1E"),
                           ("attention_backward_dq_wgmma_kernel", "")):
            for head_size in (64, 128):
                self.assertTrue(any(kind + f"ILi{head_size}E" + rest in name for name in self.wgmma),
                                f"{kind}<{head_size}{rest}> not in {sorted(self.wgmma)}")

    def test_no_wgmma_serialised_or_arrive_injected(self):
        self.assertEqual(self.notes, [])

    def test_wgmma_kernels_do_not_spill(self):
        for name, usage in self.wgmma.items():
            self.assertEqual(usage.get("spill_stores"), 0, name)
            self.assertLessEqual(usage.get("registers", 256), 255, name)


if __name__ == "__main__":
    unittest.main()
