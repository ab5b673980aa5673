#pragma once
// Every user-facing failure is an srgpt::Error whose message says what went
// wrong, where (file, key, offset) and what is allowed. main() prints it and
// exits non-zero; nothing is allowed to crash or hang instead.
#include <stdexcept>
#include <string>

#include <spdlog/fmt/fmt.h>

namespace srgpt {

struct Error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

template <typename... Args>
[[noreturn]] void fail(fmt::format_string<Args...> format, Args&&... args) {
  throw Error(fmt::format(format, std::forward<Args>(args)...));
}

}  // namespace srgpt
