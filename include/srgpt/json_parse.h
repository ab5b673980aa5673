#pragma once
// Parsing of every JSON file srgpt reads (configs, manifests, summaries,
// tokenizer and Hugging Face files), so each reports bad JSON the same way.
#include <cstdint>
#include <istream>
#include <limits>
#include <optional>
#include <string>
#include <type_traits>
#include <utility>

#include <nlohmann/json.hpp>

namespace srgpt {

// No JSON srgpt reads nests deeper than a few levels; far deeper nesting
// would overflow the stack in nlohmann's recursive dump() and destructor.
constexpr int kMaxJsonDepth = 64;

// Parses `text` (or the stream `in`). Whatever nlohmann rejects - bad syntax
// (reported with its line and column), a number beyond double's range, bad
// UTF-8 - becomes an srgpt::Error "<origin>: not valid JSON: <reason>",
// followed by "; expected <expected>" when that is given; so do a raw NUL
// byte (where nlohmann would stop reading, taking what follows for nothing)
// and nesting deeper than kMaxJsonDepth levels. A key that appears twice in
// one object is an error too: JSON allows it, but one copy would be dropped
// silently. `root`: the dotted path of the parsed value, naming such a key
// ("" for a whole file: "optimizer.lr").
nlohmann::json parse_json(const std::string& text, const std::string& origin, const std::string& expected = "",
                          const std::string& root = "");
nlohmann::json parse_json(std::istream& in, const std::string& origin, const std::string& expected = "",
                          const std::string& root = "");

// The dotted path of `key` in the object at `prefix` ("" for the top level):
// how config keys and JSON errors name a value ("optimizer.lr").
std::string dotted_key(const std::string& prefix, const std::string& key);

// A reader of parse events (nlohmann's SAX interface), for a file too big
// to hold as a JSON tree: nlohmann's tree takes several times the text, and
// its destructor allocates, so running out of memory while one is destroyed
// ends the process. A syntax error becomes the same srgpt::Error as
// parse_json's; the handler reports wrong content itself.
class JsonEventHandler : public nlohmann::json_sax<nlohmann::json> {
 public:
  bool parse_error(std::size_t position, const std::string& last_token,
                   const nlohmann::detail::exception& e) final;

 protected:
  JsonEventHandler(std::string origin, std::string expected)
      : origin_(std::move(origin)), expected_(std::move(expected)) {}

 private:
  std::string origin_, expected_;
};

// Parses `text`, passing its events to `handler`.
void parse_json_events(const std::string& text, JsonEventHandler& handler);

// `v` as a T when it is a JSON integer within T's range; std::nullopt for a
// fraction, a boolean, any other kind or an integer out of range.
// nlohmann's get<T>() instead truncates 1.5 to 1, takes true as 1 and
// converts 1e300 with undefined behaviour.
template <typename T>
std::optional<T> json_integer(const nlohmann::json& v) {
  static_assert(std::is_integral_v<T> && !std::is_same_v<T, bool>);
  if (v.is_number_unsigned()) {
    const uint64_t u = v.get<uint64_t>();
    if (u > uint64_t(std::numeric_limits<T>::max())) return std::nullopt;
    return T(u);
  }
  if (v.is_number_integer()) {
    const int64_t i = v.get<int64_t>();
    if (i < 0) {
      if (std::is_unsigned_v<T> || i < int64_t(std::numeric_limits<T>::min())) return std::nullopt;
    } else if (uint64_t(i) > uint64_t(std::numeric_limits<T>::max())) {
      return std::nullopt;
    }
    return T(i);
  }
  return std::nullopt;
}

// `v` as a T, or std::nullopt when it is of another kind: an integral T
// through json_integer, any other through nlohmann's get<T>().
template <typename T>
std::optional<T> json_value(const nlohmann::json& v) {
  if constexpr (std::is_integral_v<T>) {
    return json_integer<T>(v);
  } else {
    try {
      return v.get<T>();
    } catch (const nlohmann::json::exception&) {
      return std::nullopt;
    }
  }
}

}  // namespace srgpt
