#include "srgpt/json_parse.h"

#include "srgpt/error.h"

namespace srgpt {
namespace {

[[noreturn]] void fail_not_json(const std::string& origin, const std::string& nlohmann_what,
                                const std::string& expected) {
  // Drop nlohmann's "[json.exception.parse_error.101] " tag: it means nothing to a user.
  const size_t tag_end = nlohmann_what.find("] ");
  const std::string reason = tag_end == std::string::npos ? nlohmann_what : nlohmann_what.substr(tag_end + 2);
  if (expected.empty()) fail("{}: not valid JSON: {}", origin, reason);
  fail("{}: not valid JSON: {}; expected {}", origin, reason, expected);
}

template <typename Input>
nlohmann::json parse_or_fail(Input& input, const std::string& origin, const std::string& expected,
                             const nlohmann::json::parser_callback_t& callback) {
  const nlohmann::json::parser_callback_t checked = [&](int depth, nlohmann::json::parse_event_t event,
                                                        nlohmann::json& parsed) {
    // nlohmann counts the outermost array or object as depth 0.
    const bool opens = event == nlohmann::json::parse_event_t::object_start ||
                       event == nlohmann::json::parse_event_t::array_start;
    if (opens && depth >= kMaxJsonDepth)
      fail("{}: JSON nested deeper than {} levels; srgpt's JSON files are a few levels deep", origin, kMaxJsonDepth);
    return callback ? callback(depth, event, parsed) : true;
  };
  try {
    return nlohmann::json::parse(input, checked);
  } catch (const nlohmann::json::exception& e) {
    fail_not_json(origin, e.what(), expected);
  }
}

}  // namespace

nlohmann::json parse_json(const std::string& text, const std::string& origin, const std::string& expected,
                          const nlohmann::json::parser_callback_t& callback) {
  return parse_or_fail(text, origin, expected, callback);
}

nlohmann::json parse_json(std::istream& in, const std::string& origin, const std::string& expected,
                          const nlohmann::json::parser_callback_t& callback) {
  return parse_or_fail(in, origin, expected, callback);
}

bool JsonEventHandler::parse_error(std::size_t, const std::string&, const nlohmann::detail::exception& e) {
  fail_not_json(origin_, e.what(), expected_);
}

void parse_json_events(const std::string& text, JsonEventHandler& handler) {
  nlohmann::json::sax_parse(text, &handler);
}

}  // namespace srgpt
