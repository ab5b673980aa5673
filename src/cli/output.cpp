// What the commands print besides their results: warnings on stderr, and
// the check that their results reached stdout.
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <string>

#include "srgpt/cli.h"
#include "srgpt/error.h"

namespace srgpt {

void warn_unused_option(const CLI::Option& option, const std::string& why) {
  if (option.count() > 0)
    std::fprintf(stderr, "srgpt: warning: %s is not used: %s\n", option.get_name().c_str(), why.c_str());
}

void flush_stdout() {
  errno = 0;
  if (std::fflush(stdout) != 0 || std::ferror(stdout))
    fail("cannot write the output to standard output: {}", errno ? std::strerror(errno) : "an earlier write failed");
}

}  // namespace srgpt
