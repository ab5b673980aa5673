#pragma once
// Checkpoint directories (DESIGN.md section 6, docs/formats.md):
//   <root>/step_00000100/manifest.json   format version, caller's state JSON,
//                                        file table with CRC32 and tensors
//   <root>/step_00000100/<file>.bin      raw tensor bytes, back to back
// Written under a temporary name, every file fsynced, then renamed; a
// directory without manifest.json is never a checkpoint. Reading verifies
// sizes and checksums and reports the file and problem.
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "srgpt/dtype.h"

namespace srgpt {

constexpr int kCheckpointFormatVersion = 1;

struct CheckpointTensor {
  std::string name;
  DType dtype;
  std::vector<int64_t> shape;
  const void* data;  // host memory
  size_t bytes;
};

struct CheckpointFile {
  std::string filename;  // e.g. "model.bin", "optim_rank00000.bin"
  std::vector<CheckpointTensor> tensors;
};

uint32_t crc32(const void* data, size_t bytes, uint32_t crc = 0);

// Writes <root>/step_<step>/ atomically and deletes the oldest complete
// checkpoints beyond `keep` (keep <= 0 keeps all). Returns the directory.
std::filesystem::path save_checkpoint(const std::filesystem::path& root, int64_t step, const nlohmann::json& state,
                                      const std::vector<CheckpointFile>& files, int keep);

// The three steps of save_checkpoint, for several processes writing one
// checkpoint: one process makes the staging directory, every process writes
// its files into it (each returns its manifest entry: name, bytes, crc32,
// tensors), and one process commits the manifest and renames the directory
// into place. A staging directory that is never committed is removed by the
// next begin_checkpoint under the same root once its writer has exited.
std::filesystem::path begin_checkpoint(const std::filesystem::path& root, int64_t step);
nlohmann::json write_checkpoint_file(const std::filesystem::path& staging, const CheckpointFile& file);
std::filesystem::path commit_checkpoint(const std::filesystem::path& root, int64_t step,
                                        const std::filesystem::path& staging, const nlohmann::json& state,
                                        const nlohmann::json& file_table, int keep);

// The newest complete checkpoint under root, if any (with its step).
std::optional<std::filesystem::path> latest_checkpoint(const std::filesystem::path& root);
std::optional<std::pair<int64_t, std::filesystem::path>> latest_checkpoint_with_step(
    const std::filesystem::path& root);

class CheckpointReader {
 public:
  explicit CheckpointReader(const std::filesystem::path& dir);  // parses + validates manifest
  const std::filesystem::path& dir() const { return dir_; }
  const nlohmann::json& state() const { return manifest_.at("state"); }
  const nlohmann::json& manifest() const { return manifest_; }
  int64_t step() const;
  bool has_tensor(const std::string& file, const std::string& name) const;
  // Fails unless the tensor is listed with this dtype and shape; reads
  // nothing. Checking a model's tensors this way before allocating it keeps
  // a damaged config from sizing an allocation the files do not back.
  void check_tensor(const std::string& file, const std::string& name, DType dtype,
                    const std::vector<int64_t>& shape) const;
  // Reads one tensor into host memory after checking the file's checksum
  // (once per file) and that dtype and shape match what the caller expects.
  void read_tensor(const std::string& file, const std::string& name, DType dtype, const std::vector<int64_t>& shape,
                   void* dst, size_t bytes);

 private:
  std::filesystem::path dir_;
  nlohmann::json manifest_;
  std::vector<std::string> verified_;
};

}  // namespace srgpt
