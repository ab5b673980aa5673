#include <cctype>
#include <cerrno>
#include <cstdlib>
#include <string>

#include "srgpt/cli.h"

namespace srgpt {

CLI::Validator integer_in_range(long long minimum, unsigned long long maximum) {
  const std::string allowed =
      "allowed: a whole number in [" + std::to_string(minimum) + ", " + std::to_string(maximum) + "]";
  return CLI::Validator(
      [minimum, maximum, allowed](std::string& text) -> std::string {
        const bool negative = !text.empty() && text[0] == '-';
        const size_t first_digit = negative ? 1 : 0;
        if (text.size() == first_digit || text.find_first_not_of("0123456789", first_digit) != std::string::npos)
          return "'" + text + "' is not a whole number; " + allowed;
        if (text[first_digit] == '0' && text.size() > first_digit + 1)
          return "'" + text + "' has a leading zero (CLI11 would read it as octal); " + allowed;
        bool below = true;
        if (negative) {
          below = std::strtoll(text.c_str(), nullptr, 10) < minimum;
        } else {
          // Parsed as unsigned, so every uint64 seed passes.
          errno = 0;
          const unsigned long long value = std::strtoull(text.c_str(), nullptr, 10);
          if (errno == ERANGE || value > maximum) return text + " is too large; " + allowed;
          below = minimum > 0 && value < static_cast<unsigned long long>(minimum);
        }
        if (below) return text + " is below " + std::to_string(minimum) + "; " + allowed;
        return std::string();
      },
      "[" + std::to_string(minimum) + ", " + std::to_string(maximum) + "]");
}

CLI::Validator real_number() {
  return CLI::Validator(
      [](std::string& text) -> std::string {
        char* end = nullptr;
        std::strtod(text.c_str(), &end);
        if (text.empty() || std::isspace(static_cast<unsigned char>(text[0])) || end != text.c_str() + text.size())
          return "'" + text + "' is not a number";
        return std::string();
      },
      "NUMBER");
}

}  // namespace srgpt
