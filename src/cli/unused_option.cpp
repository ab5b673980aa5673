#include <cstdio>
#include <string>

#include "srgpt/cli.h"

namespace srgpt {

void warn_unused_option(const CLI::Option& option, const std::string& why) {
  if (option.count() > 0)
    std::fprintf(stderr, "srgpt: warning: %s is not used: %s\n", option.get_name().c_str(), why.c_str());
}

}  // namespace srgpt
