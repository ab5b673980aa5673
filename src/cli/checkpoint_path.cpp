#include "srgpt/checkpoint.h"
#include "srgpt/cli.h"
#include "srgpt/error.h"

namespace srgpt {

namespace fs = std::filesystem;

CLI::Option* add_checkpoint_option(CLI::App& cmd, std::string& checkpoint) {
  return cmd
      .add_option("--checkpoint,checkpoint", checkpoint,
                  "Checkpoint directory, or a run directory (its newest checkpoint is used); the option name may be "
                  "left out")
      ->required();
}

fs::path resolve_checkpoint_dir(const fs::path& path) {
  if (!fs::exists(path)) fail("checkpoint path {} does not exist", path.string());
  if (!fs::is_directory(path))
    fail("checkpoint path {} is not a directory; pass a checkpoint directory (checkpoints/step_NNNNNNNN) or a run "
         "directory",
         path.string());
  if (fs::exists(path / "manifest.json")) return path;
  for (const fs::path& root : {path, path / "checkpoints"})
    if (auto latest = latest_checkpoint(root)) return *latest;
  fail("{} is neither a checkpoint directory (it has no manifest.json, which an interrupted save leaves out) nor a "
       "run directory containing complete checkpoints",
       path.string());
}

}  // namespace srgpt
