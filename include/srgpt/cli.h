#pragma once
// Subcommands of the srgpt binary, one file each in src/cli/.
#include <CLI/CLI.hpp>

namespace srgpt {

void add_train_command(CLI::App& app);
void add_eval_command(CLI::App& app);
void add_info_command(CLI::App& app);
void add_prepare_command(CLI::App& app);
void add_sample_command(CLI::App& app);
void add_export_command(CLI::App& app);
void add_import_command(CLI::App& app);

}  // namespace srgpt

#include <filesystem>
#include <limits>
#include <string>

namespace srgpt {

// Checks an integer option: a whole number (digits, '-' for negatives, no
// leading zero) in [minimum, maximum], or an error naming the value and the
// range. CLI11's NonNegativeNumber prints its range up to the largest
// double, and CLI11 reads "010" as octal 8.
CLI::Validator integer_in_range(long long minimum, unsigned long long maximum);
// The same for an option stored in a T: up to T's largest value.
template <typename T>
CLI::Validator integer_at_least(long long minimum) {
  return integer_in_range(minimum, std::numeric_limits<T>::max());
}

// Checks a floating-point option is a number, written whole (CLI11 reads
// "" as 0); the command checks its range.
CLI::Validator real_number();

// Refuses an empty path option (an unset shell variable), saying what to
// pass instead: "an empty path; pass <expected>".
CLI::Validator non_empty_path(const std::string& expected);

// Warns on stderr that `option`, given on the command line, has no effect in
// this run, and why (--tokenizer-dir with the byte tokenizer, say).
void warn_unused_option(const CLI::Option& option, const std::string& why);

// Flushes stdout; an Error if anything written to it was lost (a full
// disk), so that `srgpt eval > result.json` cannot pass for success with
// its output cut short.
void flush_stdout();

// The checkpoint argument of eval, sample, export and info, required: given
// as `--checkpoint DIR` or as DIR alone (a checkpoint or a run directory).
CLI::Option* add_checkpoint_option(CLI::App& cmd, std::string& checkpoint);

// A checkpoint directory, or a run directory / checkpoints root, resolved to
// the checkpoint directory to read (the newest one for the latter two).
std::filesystem::path resolve_checkpoint_dir(const std::filesystem::path& path);

}  // namespace srgpt
