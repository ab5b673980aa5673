// parse_json's errors and json_integer's strict reading of counters from
// files srgpt did not necessarily write.
#include <cstdint>
#include <limits>
#include <random>
#include <string>

#include "catch.h"
#include "test_util.h"
#include "srgpt/json_parse.h"

using namespace std::string_literals;

using nlohmann::json;
using srgpt::json_integer;
using srgpt_test::contains;
using srgpt_test::error_message;

TEST_CASE("json_integer takes integers in range and nothing else", "[json]") {
  std::mt19937_64 rng(srgpt_test::fresh_seed());
  for (int i = 0; i < 1000; ++i) {
    const int64_t n = int64_t(rng());
    const json parsed = json::parse(std::to_string(n));
    REQUIRE(json_integer<int64_t>(parsed) == n);
    CHECK(json_integer<int64_t>(json(n)) == n);  // built, not parsed: stored as a signed integer even when >= 0
    CHECK(json_integer<uint64_t>(parsed) == (n >= 0 ? std::optional<uint64_t>(uint64_t(n)) : std::nullopt));
    const bool fits_int = n >= std::numeric_limits<int>::min() && n <= std::numeric_limits<int>::max();
    CHECK(json_integer<int>(parsed) == (fits_int ? std::optional<int>(int(n)) : std::nullopt));
    const int32_t small = int32_t(rng());
    CHECK(json_integer<int>(json::parse(std::to_string(small))) == small);
    CHECK(json_integer<uint32_t>(json::parse(std::to_string(uint32_t(small)))) == uint32_t(small));
  }
  // The edges of each range.
  CHECK(json_integer<int64_t>(json::parse("9223372036854775807")) == std::numeric_limits<int64_t>::max());
  CHECK(json_integer<int64_t>(json::parse("-9223372036854775808")) == std::numeric_limits<int64_t>::min());
  CHECK_FALSE(json_integer<int64_t>(json::parse("9223372036854775808")));
  CHECK(json_integer<uint64_t>(json::parse("18446744073709551615")) == std::numeric_limits<uint64_t>::max());
  CHECK_FALSE(json_integer<uint64_t>(json::parse("-1")));
  CHECK(json_integer<uint32_t>(json::parse("4294967295")) == 4294967295u);
  CHECK_FALSE(json_integer<uint32_t>(json::parse("4294967296")));
  CHECK_FALSE(json_integer<int>(json::parse("2147483648")));
  CHECK_FALSE(json_integer<int>(json::parse("-2147483649")));
  // What nlohmann's get<int64_t>() would have turned into a number.
  for (const char* not_an_integer : {"1.5", "4.0", "1e300", "-1e300", "true", "false", "null", "\"7\"", "[7]", "{}"})
    CHECK_FALSE(json_integer<int64_t>(json::parse(not_an_integer)));
}

TEST_CASE("parse_json names the origin, the reason and what was expected", "[json]") {
  const std::string bad_syntax = error_message([] { srgpt::parse_json("{\"a\": 1,", "x.json", "a config object"); });
  CHECK(contains(bad_syntax, "x.json: not valid JSON: "));
  CHECK(contains(bad_syntax, "; expected a config object"));
  CHECK_FALSE(contains(bad_syntax, "[json.exception"));
  CHECK(contains(error_message([] { srgpt::parse_json("1e400", "y.json"); }), "y.json: not valid JSON"));
  const std::string depth = std::to_string(srgpt::kMaxJsonDepth);
  const std::string deep(size_t(srgpt::kMaxJsonDepth) + 1, '[');
  CHECK(contains(error_message([&] { srgpt::parse_json(deep, "z.json"); }), "z.json: JSON nested deeper than " + depth));
  const size_t levels = size_t(srgpt::kMaxJsonDepth);
  CHECK(srgpt::parse_json(std::string(levels, '[') + "7" + std::string(levels, ']'), "ok.json").is_array());
  CHECK(srgpt::parse_json(std::string(levels - 1, '[') + "{\"a\": 7}" + std::string(levels - 1, ']'), "ok.json")
            .is_array());

  // A raw NUL byte: nlohmann stopped there and took the rest for nothing.
  const std::string nul_tail = error_message([] { srgpt::parse_json("{\"a\": 1}\0 junk {{"s, "n.json"); });
  CHECK(contains(nul_tail, "n.json: not valid JSON: a NUL byte at line 1, column 9"));
  CHECK(contains(error_message([] { srgpt::parse_json("{\n  \"a\": \"x\0y\"}"s, "m.json"); }),
                 "m.json: not valid JSON: a NUL byte at line 2, column 10"));
  CHECK(srgpt::parse_json("{\"a\": \"x\\u0000y\"}", "ok.json")["a"] == "x\0y"s);

  // A key twice in one object, named by its path from `root`; the same key
  // in different objects is fine.
  CHECK(contains(error_message([] { srgpt::parse_json(R"({"a": {"b": 1, "b": 2}})", "d.json"); }),
                 "d.json: duplicate key 'a.b'; each key may appear once per object"));
  CHECK(contains(error_message([] { srgpt::parse_json(R"([{"k": 1}, {"k": 2, "k": 3}])", "e.json", "", "top"); }),
                 "e.json: duplicate key 'top[].k'"));
  CHECK(srgpt::parse_json(R"({"a": {"k": 1}, "b": {"k": 2}, "k": [{"k": 3}, {"k": 4}]})", "ok.json").size() == 3);
}

TEST_CASE("error messages show control characters as hex escapes, so a NUL cannot cut them", "[json]") {
  const srgpt::Error e("unknown key 'n_layer\0x\x1b[31m'\n\tnext line"s);
  CHECK(std::string(e.what()) == "unknown key 'n_layer\\x00x\\x1b[31m'\n\tnext line");
  CHECK(std::string(srgpt::Error("caf\xc3\xa9").what()) == "caf\xc3\xa9");  // UTF-8 is kept
}
