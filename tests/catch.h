#pragma once
// Catch2 v2 (Debian 12) and v3 (Ubuntu 24.04, the GPU host) shim. Tests
// spell the two names the versions disagree on as below
// (tests/scripts/test_catch2_portability.py keeps them to it).
#include <string>
#if __has_include(<catch2/catch_all.hpp>)
#include <catch2/catch_all.hpp>
using Catch::Approx;
// v3 renamed the substring matcher; its Contains matches range elements.
inline auto contains_substring(const std::string& part) { return Catch::Matchers::ContainsSubstring(part); }
#else
#include <catch2/catch.hpp>
inline auto contains_substring(const std::string& part) { return Catch::Matchers::Contains(part); }
#endif
