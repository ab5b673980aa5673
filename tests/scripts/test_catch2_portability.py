"""The tests build against Catch2 2.13 here (Debian 12) and Catch2 3 on the
GPU host (Ubuntu 24.04), which no CI machine has. The two disagree on a few
names, and a test spelled for one fails to compile on the other: on the GPU
host that costs the session's build. tests/catch.h gives one spelling for
both (and tests/main.cpp the runner for both); this checks that the other
test sources use it and include Catch2 through it.
"""
import os
import re
import unittest

TESTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
SHIM = os.path.normpath(os.path.join(TESTS, "catch.h"))
VERSION_AWARE = {SHIM, os.path.normpath(os.path.join(TESTS, "main.cpp"))}

# (pattern, why it breaks, what to write instead)
FORBIDDEN = [
    (r"\bCatch::(Matchers::)?Contains\b|using\s+Catch::Matchers::Contains\b|using\s+namespace\s+Catch::Matchers\b",
     "Catch2 3's Contains matches an element of a range, not a substring", "contains_substring(...)"),
    (r"\bContainsSubstring\b", "Catch2 2 has no ContainsSubstring", "contains_substring(...)"),
    (r"\bCatch::Detail::Approx\b", "Catch2 3 has Catch::Approx only", "Approx"),
    (r"#\s*include\s*[<\"]catch2/", "Catch2 2 and 3 have different headers", '#include "catch.h"'),
]


def test_sources():
    for root, _, names in os.walk(TESTS):
        for name in names:
            path = os.path.normpath(os.path.join(root, name))
            if path not in VERSION_AWARE and name.endswith((".cpp", ".h", ".cu", ".cuh")):
                yield path


def violations(text):
    """(line number, pattern's reason, replacement) for each forbidden spelling in text."""
    found = []
    for number, line in enumerate(text.splitlines(), 1):
        code = line.split("//", 1)[0]
        for pattern, why, instead in FORBIDDEN:
            if re.search(pattern, code):
                found.append((number, why, instead))
    return found


class Catch2PortabilityTest(unittest.TestCase):
    def test_test_sources_use_the_shims_spellings(self):
        sources = list(test_sources())
        self.assertGreater(len(sources), 20)
        problems = []
        for path in sources:
            with open(path, encoding="utf-8", errors="replace") as f:
                for number, why, instead in violations(f.read()):
                    problems.append(f"{os.path.relpath(path, TESTS)}:{number}: {why}; write {instead}")
        self.assertEqual(problems, [], "\n".join(problems))

    def test_each_forbidden_spelling_is_found(self):
        for snippet in ['CHECK_THROWS_WITH(f(), Catch::Matchers::Contains("x"));',
                        'CHECK_THROWS_WITH(f(), Catch::Contains("x"));', "using Catch::Matchers::Contains;",
                        "using namespace Catch::Matchers;", 'Catch::Matchers::ContainsSubstring("x")',
                        "CHECK(x == Catch::Detail::Approx(1.0));", "#include <catch2/catch.hpp>",
                        "#include <catch2/catch_all.hpp>"]:
            with self.subTest(snippet=snippet):
                self.assertEqual(len(violations(snippet)), 1)
        self.assertEqual(violations('CHECK_THROWS_WITH(f(), contains_substring("x") && contains_substring("y"));'), [])

    def test_the_shim_defines_the_spellings_for_both_versions(self):
        with open(SHIM, encoding="utf-8") as f:
            shim = f.read()
        v3, v2 = shim.split("#else", 1)
        self.assertIn("catch2/catch_all.hpp", v3)
        self.assertIn("ContainsSubstring(", v3)
        self.assertIn("using Catch::Approx;", v3)
        self.assertIn("catch2/catch.hpp", v2)
        self.assertIn("Catch::Matchers::Contains(", v2)


if __name__ == "__main__":
    unittest.main()
