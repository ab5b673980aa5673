#pragma once
// Parsing of every JSON file srgpt reads (configs, manifests, summaries,
// tokenizer and Hugging Face files), so each reports bad JSON the same way.
#include <istream>
#include <string>

#include <nlohmann/json.hpp>

namespace srgpt {

// No JSON srgpt reads nests deeper than a few levels; far deeper nesting
// would overflow the stack in nlohmann's recursive dump() and destructor.
constexpr int kMaxJsonDepth = 64;

// Parses `text` (or the stream `in`). Whatever nlohmann rejects - bad syntax
// (reported with its line and column), a number beyond double's range, bad
// UTF-8 - becomes an srgpt::Error "<origin>: not valid JSON: <reason>",
// followed by "; expected <expected>" when that is given; so does nesting
// deeper than kMaxJsonDepth levels. Errors thrown by `callback` pass
// through unchanged.
nlohmann::json parse_json(const std::string& text, const std::string& origin, const std::string& expected = "",
                          const nlohmann::json::parser_callback_t& callback = nullptr);
nlohmann::json parse_json(std::istream& in, const std::string& origin, const std::string& expected = "",
                          const nlohmann::json::parser_callback_t& callback = nullptr);

}  // namespace srgpt
