// srgpt: pure-BF16 GPT training with stochastic-rounding AdamW.
#include <omp.h>

#include <algorithm>
#include <csignal>
#include <cstdio>
#include <exception>
#include <memory>
#include <string>
#include <thread>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>
#include <spdlog/pattern_formatter.h>
#include <spdlog/spdlog.h>

#include "srgpt/cli.h"
#include "srgpt/communicator.h"
#include "srgpt/error.h"

namespace {

// One line on stderr and a non-zero exit; under an MPI launcher the whole
// job is brought down so no other rank waits forever for this one.
int report_error(const std::string& msg) {
  bool mpi = false;
  try {
    mpi = srgpt::launched_under_mpi();
  } catch (const std::exception&) {
  }
  if (mpi) srgpt::abort_job(1, "error: " + msg);
  std::fprintf(stderr, "srgpt: error: %s\n", msg.c_str());
  return 1;
}

// The log's %W flag: "warning: " before a warning, nothing before the
// progress lines, so that a warning among them stands out.
class WarningTag : public spdlog::custom_flag_formatter {
 public:
  void format(const spdlog::details::log_msg& msg, const std::tm&, spdlog::memory_buf_t& dest) override {
    if (msg.level < spdlog::level::warn) return;
    const std::string_view tag = msg.level == spdlog::level::warn ? "warning: " : "error: ";
    dest.append(tag.data(), tag.data() + tag.size());
  }
  std::unique_ptr<custom_flag_formatter> clone() const override { return std::make_unique<WarningTag>(); }
};

// CLI11 answers a misspelled subcommand with "A subcommand is required";
// name the word it did not know instead.
std::string unknown_subcommand(const CLI::App& app, int argc, char** argv) {
  if (argc < 2 || argv[1][0] == '-') return "";
  const std::string word = argv[1];
  std::string names, closest;
  for (const CLI::App* sub : app.get_subcommands([](const CLI::App*) { return true; })) {
    if (sub->check_name(word)) return "";
    names += (names.empty() ? "" : ", ") + sub->get_name();
    if (closest.empty() && word.size() > 1 && sub->get_name().compare(0, 2, word, 0, 2) == 0) closest = sub->get_name();
  }
  return "unknown subcommand '" + word + "'" + (closest.empty() ? "" : " (did you mean '" + closest + "'?)") +
         "; the subcommands are " + names + ", each with its --help";
}

// An option given no value takes the next option's name as its value:
// `sample --prompt --tokens 5` continued the text "--tokens", and `prepare
// --input $UNSET --out x` read "--out" as an input. CLI11 cannot tell them
// apart, so an option that takes a value may not be followed by another
// option's name ("--prompt=--tokens" passes such text).
std::string option_without_value(const CLI::App& app, int argc, char** argv) {
  const CLI::App* command = nullptr;
  for (const CLI::App* sub : app.get_subcommands([](const CLI::App*) { return true; }))
    if (argc > 1 && sub->check_name(argv[1])) command = sub;
  if (!command) return "";
  auto option_named = [&](const std::string& word) -> const CLI::Option* {
    if (word.size() < 2 || word[0] != '-' || word.find('=') != std::string::npos) return nullptr;
    for (const CLI::Option* option : command->get_options())
      if (option->check_name(word)) return option;
    return nullptr;
  };
  for (int i = 2; i + 1 < argc; ++i) {
    const CLI::Option* option = option_named(argv[i]);
    if (option && option->get_items_expected_min() > 0 && option_named(argv[i + 1]))
      return fmt::format("{}: no value given (the next word, {}, is an option); for a value that starts with "
                         "'-', write {}=VALUE",
                         argv[i], argv[i + 1], argv[i]);
  }
  return "";
}

// The srgpt command line, every error reported as one line.
int run(int argc, char** argv) {
  CLI::App app{"srgpt: train GPT-2 models in pure BF16 with stochastic-rounding AdamW"};
  app.require_subcommand(1);
  app.set_version_flag("--version", "srgpt " SRGPT_VERSION);
  srgpt::add_train_command(app);
  srgpt::add_eval_command(app);
  srgpt::add_info_command(app);
  srgpt::add_prepare_command(app);
  srgpt::add_sample_command(app);
  srgpt::add_export_command(app);
  srgpt::add_import_command(app);
  auto log_format = std::make_unique<spdlog::pattern_formatter>();
  log_format->add_flag<WarningTag>('W').set_pattern("[%H:%M:%S] %W%v");
  spdlog::set_formatter(std::move(log_format));
  if (const std::string unknown = unknown_subcommand(app, argc, argv); !unknown.empty()) return report_error(unknown);
  if (const std::string missing = option_without_value(app, argc, argv); !missing.empty())
    return report_error(missing);
  // libgomp crashes (SIGSEGV) when it cannot start the threads
  // OMP_NUM_THREADS asks for, and takes minutes to start tens of thousands.
  const int cores = int(std::thread::hardware_concurrency());
  const int max_threads = std::max(64, 8 * cores);
  if (omp_get_max_threads() > max_threads)
    return report_error(fmt::format("OMP_NUM_THREADS asks for {} threads; allowed here: at most {} (this machine "
                                    "has {} hardware threads); the cpu backend is fastest with one per core",
                                    omp_get_max_threads(), max_threads, cores));
  try {
    app.parse(argc, argv);
    srgpt::flush_stdout();
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  } catch (const srgpt::Error& e) {
    return report_error(e.what());
  } catch (const nlohmann::json::exception& e) {
    // Parse errors are srgpt::Errors (parse_json); this is a JSON file's
    // content of an unexpected type or shape.
    return report_error(std::string("unexpected JSON content: ") + e.what());
  } catch (const std::bad_alloc&) {
    // Only training and evaluation size their memory by the config.
    const auto commands = app.get_subcommands();
    const std::string command = commands.empty() ? "" : commands.front()->get_name();
    const bool sized_by_config = command == "train" || command == "eval";
    return report_error("out of host memory in `srgpt " + command + "`" +
                        (sized_by_config ? "; a smaller batch.micro_batch or model needs less" : ""));
  } catch (const std::exception& e) {
    return report_error(e.what());
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  // A file-size limit (`ulimit -f`, often set by batch schedulers) would
  // kill the process mid-write with SIGXFSZ, without a message and leaving
  // temporary files; ignored, the write fails with EFBIG and is reported
  // and cleaned up like a full disk.
  std::signal(SIGXFSZ, SIG_IGN);
  try {
    return run(argc, argv);
  } catch (const std::bad_alloc&) {  // while setting up the command line
    return report_error("out of host memory while starting");
  }
}
