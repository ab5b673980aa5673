"""The third-party Python modules of the reference scripts (PyTorch,
transformers, numpy, regex), which the GPU host has and CI's machine does
not: a missing one ends the script with one line saying what it needs and
where it runs, rather than a traceback."""
import importlib
import os
import sys


def require(script, *names):
    """Imports each module of `names`; exits naming the first one missing."""
    modules = []
    for name in names:
        try:
            modules.append(importlib.import_module(name))
        except ImportError as e:
            sys.exit(f"{os.path.basename(script)}: needs the Python module '{name}' ({e}); it is a reference check "
                     f"for the GPU host, which has PyTorch, transformers and numpy (docs/gpu-session.md)")
    return modules
