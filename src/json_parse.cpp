#include "srgpt/json_parse.h"

#include <algorithm>
#include <iterator>
#include <set>
#include <vector>

#include "srgpt/error.h"

namespace srgpt {
namespace {

[[noreturn]] void fail_not_json(const std::string& origin, const std::string& reason, const std::string& expected) {
  if (expected.empty()) fail("{}: not valid JSON: {}", origin, reason);
  fail("{}: not valid JSON: {}; expected {}", origin, reason, expected);
}

// nlohmann's message without its "[json.exception.parse_error.101] " tag,
// which means nothing to a user.
std::string nlohmann_reason(const nlohmann::detail::exception& e) {
  const std::string what = e.what();
  const size_t tag_end = what.find("] ");
  return tag_end == std::string::npos ? what : what.substr(tag_end + 2);
}

}  // namespace

std::string dotted_key(const std::string& prefix, const std::string& key) {
  return prefix.empty() ? key : prefix + "." + key;
}

nlohmann::json parse_json(const std::string& text, const std::string& origin, const std::string& expected,
                          const std::string& root) {
  if (const size_t nul = text.find('\0'); nul != std::string::npos) {
    const size_t line_start = text.rfind('\n', nul);
    const size_t column = line_start == std::string::npos ? nul + 1 : nul - line_start;
    fail_not_json(origin,
                  fmt::format("a NUL byte at line {}, column {} (JSON text has none; in a string it is \\u0000)",
                              std::count(text.begin(), text.begin() + long(nul), '\n') + 1, column),
                  expected);
  }
  // The path of each open object or array, and the keys an object has had.
  struct Open {
    std::string path;
    bool is_array;
    std::set<std::string> keys;
    std::string last_key;
  };
  std::vector<Open> open;
  const nlohmann::json::parser_callback_t check = [&](int depth, nlohmann::json::parse_event_t event,
                                                      nlohmann::json& parsed) {
    using Event = nlohmann::json::parse_event_t;
    switch (event) {
      case Event::object_start:
      case Event::array_start: {
        // nlohmann counts the outermost array or object as depth 0.
        if (depth >= kMaxJsonDepth)
          fail("{}: JSON nested deeper than {} levels; srgpt's JSON files are a few levels deep", origin,
               kMaxJsonDepth);
        std::string path = root;
        if (!open.empty())
          path = open.back().is_array ? open.back().path + "[]" : dotted_key(open.back().path, open.back().last_key);
        open.push_back({std::move(path), event == Event::array_start, {}, {}});
        break;
      }
      case Event::object_end:
      case Event::array_end: open.pop_back(); break;
      case Event::key: {
        Open& object = open.back();
        object.last_key = parsed.get<std::string>();
        if (!object.keys.insert(object.last_key).second)
          fail("{}: duplicate key '{}'; each key may appear once per object", origin,
               dotted_key(object.path, object.last_key));
        break;
      }
      case Event::value: break;
    }
    return true;
  };
  try {
    return nlohmann::json::parse(text, check);
  } catch (const nlohmann::json::exception& e) {
    fail_not_json(origin, nlohmann_reason(e), expected);
  }
}

nlohmann::json parse_json(std::istream& in, const std::string& origin, const std::string& expected,
                          const std::string& root) {
  const std::string text(std::istreambuf_iterator<char>(in), {});
  return parse_json(text, origin, expected, root);
}

bool JsonEventHandler::parse_error(std::size_t, const std::string&, const nlohmann::detail::exception& e) {
  fail_not_json(origin_, nlohmann_reason(e), expected_);
}

void parse_json_events(const std::string& text, JsonEventHandler& handler) {
  nlohmann::json::sax_parse(text, &handler);
}

}  // namespace srgpt
