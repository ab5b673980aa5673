#include "srgpt/checkpoint.h"
#include "srgpt/cli.h"
#include "srgpt/error.h"

namespace srgpt {

namespace fs = std::filesystem;

CLI::Validator non_empty_path(const std::string& expected) {
  return CLI::Validator(
      [expected](std::string& path) { return path.empty() ? "an empty path; pass " + expected : std::string(); },
      "PATH");
}

CLI::Option* add_checkpoint_option(CLI::App& cmd, std::string& checkpoint) {
  return cmd
      .add_option("--checkpoint,checkpoint", checkpoint,
                  "Checkpoint directory, or a run directory (its newest checkpoint is used); the option name may be "
                  "left out")
      ->required()
      ->check(non_empty_path("a checkpoint or run directory"));
}

fs::path resolve_checkpoint_dir(const fs::path& path) {
  // Looked up with error codes: std::filesystem's exceptions would print
  // only "filesystem error: status: ..." (a symlink loop, EACCES, ENAMETOOLONG).
  std::error_code ec;
  const fs::file_type type = fs::status(path, ec).type();
  if (type == fs::file_type::not_found) fail("checkpoint path {} does not exist", path.string());
  if (ec) fail("checkpoint path {} cannot be read: {}", path.string(), ec.message());
  if (type != fs::file_type::directory)
    fail("checkpoint path {} is not a directory; pass a checkpoint directory (checkpoints/step_NNNNNNNN) or a run "
         "directory",
         path.string());
  // Any manifest.json makes it a checkpoint directory, whose reader says
  // what is wrong with a manifest that cannot be read.
  if (fs::symlink_status(path / "manifest.json", ec).type() != fs::file_type::not_found) return path;
  for (const fs::path& root : {path, path / "checkpoints"})
    if (auto latest = latest_checkpoint(root)) return *latest;
  fail("{} is neither a checkpoint directory (it has no manifest.json, which an interrupted save leaves out) nor a "
       "run directory containing complete checkpoints",
       path.string());
}

}  // namespace srgpt
