#pragma once
// Every user-facing failure is an srgpt::Error whose message says what went
// wrong, where (file, key, offset) and what is allowed. main() prints it and
// exits non-zero; nothing is allowed to crash or hang instead.
#include <stdexcept>
#include <string>

#include <spdlog/fmt/fmt.h>

namespace srgpt {

// `text` with its control characters other than newline and tab written as
// \xNN: a NUL from a user's key or file name would end the C string that
// what() returns, cutting the message there, and an escape sequence would
// reach the terminal.
inline std::string printable_message(const std::string& text) {
  std::string out;
  out.reserve(text.size());
  for (const char c : text) {
    const auto byte = static_cast<unsigned char>(c);
    if ((byte < 0x20 && c != '\n' && c != '\t') || byte == 0x7f)
      out += fmt::format("\\x{:02x}", byte);
    else
      out += c;
  }
  return out;
}

struct Error : std::runtime_error {
  explicit Error(const std::string& message) : std::runtime_error(printable_message(message)) {}
};

template <typename... Args>
[[noreturn]] void fail(fmt::format_string<Args...> format, Args&&... args) {
  throw Error(fmt::format(format, std::forward<Args>(args)...));
}

// body(), with an Error from it rethrown as "<context>: <its message>": for
// a part that cannot know where its input came from (a config key, an
// option, a checkpoint's field).
template <typename Body>
decltype(auto) with_error_context(const std::string& context, Body&& body) {
  try {
    return body();
  } catch (const Error& e) {
    fail("{}: {}", context, e.what());
  }
}

}  // namespace srgpt
