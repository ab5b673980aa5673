#include "srgpt/checkpoint.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <set>
#include <string>
#include <utility>

#include <spdlog/spdlog.h>

#include "srgpt/error.h"
#include "srgpt/json_parse.h"
#include "srgpt/posix_file.h"

namespace srgpt {

namespace fs = std::filesystem;

namespace {

constexpr const char* kFormatName = "srgpt-checkpoint";
constexpr const char* kManifestName = "manifest.json";
constexpr const char* kFaultAbortEnv = "SRGPT_FAULT_ABORT_IN_SAVE";
constexpr int kFaultAbortExitCode = 86;

// ---------------------------------------------------------------- CRC-32

std::array<uint32_t, 256> make_crc_table() {
  std::array<uint32_t, 256> table{};
  for (uint32_t i = 0; i < 256; ++i) {
    uint32_t c = i;
    for (int k = 0; k < 8; ++k) c = (c & 1) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
    table[i] = c;
  }
  return table;
}

// ---------------------------------------------------------------- directory names

std::string step_dir_name(int64_t step) { return fmt::format("step_{:08d}", step); }

// "step_<digits>" -> step; anything else (temporary dirs included) -> nullopt.
std::optional<int64_t> parse_step_dir_name(const std::string& name) {
  const std::string prefix = "step_";
  if (name.size() <= prefix.size() || name.compare(0, prefix.size(), prefix) != 0 || name.size() > prefix.size() + 18)
    return std::nullopt;
  int64_t step = 0;
  for (size_t i = prefix.size(); i < name.size(); ++i) {
    if (name[i] < '0' || name[i] > '9') return std::nullopt;
    step = step * 10 + (name[i] - '0');
  }
  return step;
}

// Whether `name` is a "step_<digits>.tmp-<pid>" or "step_<digits>.old-<pid>"
// directory save_checkpoint left behind, its writer gone.
bool abandoned_scratch_dir(const std::string& name) {
  const size_t dot = name.find('.');
  if (dot == std::string::npos || !parse_step_dir_name(name.substr(0, dot))) return false;
  const std::string stem = name.substr(0, dot + 1);
  return left_by_gone_writer(name, stem + "tmp-") || left_by_gone_writer(name, stem + "old-");
}

std::vector<fs::directory_entry> list_directory(const fs::path& root) {
  std::error_code ec;
  fs::directory_iterator it(root, ec);
  if (ec) fail("cannot list checkpoint directory {}: {}", root.string(), ec.message());
  std::vector<fs::directory_entry> entries;
  for (const fs::directory_entry& e : it) entries.push_back(e);
  return entries;
}

// Scratch directories of writers that died mid-save; another live
// process's directory is left alone.
void remove_abandoned_scratch_dirs(const fs::path& root) {
  for (const fs::directory_entry& e : list_directory(root)) {
    if (!abandoned_scratch_dir(e.path().filename().string())) continue;
    std::error_code ec;
    fs::remove_all(e.path(), ec);
    if (ec) spdlog::warn("cannot remove abandoned checkpoint scratch directory {}: {}", e.path().string(), ec.message());
  }
}

// Complete checkpoints (step_* with a manifest) under root, oldest first.
// Only a missing manifest marks an incomplete one (an interrupted save):
// one that cannot be read, or is not a file, is an error, since skipping it
// would resume from an older checkpoint, or from scratch, and overwrite it.
std::vector<std::pair<int64_t, fs::path>> complete_checkpoints(const fs::path& root) {
  std::vector<std::pair<int64_t, fs::path>> found;
  for (const fs::directory_entry& e : list_directory(root)) {
    const std::string name = e.path().filename().string();
    std::optional<int64_t> step = parse_step_dir_name(name);
    if (!step && name.size() > 5 && name.rfind("step_", 0) == 0 &&
        name.find_first_not_of("0123456789", 5) == std::string::npos)
      fail("{}: a step number of {} digits, more than srgpt writes (18); srgpt will not pass over it (it would "
           "resume from an older checkpoint, or from scratch): rename or remove it",
           e.path().string(), name.size() - 5);
    if (!step) continue;
    std::string why;
    const FileCheck manifest = check_regular_file(e.path() / kManifestName, &why);
    if (manifest == FileCheck::missing) continue;
    if (manifest == FileCheck::unusable)
      fail("{} {}; srgpt will not pass over this checkpoint (it would resume from an older one, or from scratch)",
           (e.path() / kManifestName).string(), why);
    found.emplace_back(*step, e.path());
  }
  std::sort(found.begin(), found.end());
  return found;
}

void prune_checkpoints(const fs::path& root, const fs::path& keep_always, int keep) {
  if (keep <= 0) return;
  auto found = complete_checkpoints(root);
  if (found.size() <= size_t(keep)) return;
  for (size_t i = 0; i + size_t(keep) < found.size(); ++i) {
    if (found[i].second == keep_always) continue;
    std::error_code ec;
    fs::remove_all(found[i].second, ec);
    if (ec) spdlog::warn("cannot remove old checkpoint {}: {}", found[i].second.string(), ec.message());
  }
}

// ---------------------------------------------------------------- validation

// The bytes a tensor of this shape and dtype takes, or nothing when a
// dimension is negative or the product does not fit in 63 bits.
std::optional<uint64_t> tensor_bytes(const std::vector<int64_t>& shape, DType dtype) {
  int64_t n = int64_t(dtype_size(dtype));
  for (int64_t d : shape)
    if (d < 0 || __builtin_mul_overflow(n, d, &n)) return std::nullopt;
  return uint64_t(n);
}

std::string shape_text(const std::vector<int64_t>& shape) { return fmt::format("[{}]", fmt::join(shape, ",")); }

bool valid_filename(const std::string& name) {
  return !name.empty() && name != "." && name != ".." && name != kManifestName && name.find('/') == std::string::npos;
}

void check_files_to_save(const std::vector<CheckpointFile>& files) {
  std::set<std::string> filenames;
  for (const CheckpointFile& f : files) {
    if (!valid_filename(f.filename))
      fail("checkpoint file name '{}' is not allowed: it must be a plain file name other than {}", f.filename,
           kManifestName);
    if (!filenames.insert(f.filename).second) fail("checkpoint file name '{}' is used twice", f.filename);
    std::set<std::string> names;
    for (const CheckpointTensor& t : f.tensors) {
      if (!names.insert(t.name).second) fail("{}: tensor name '{}' is used twice", f.filename, t.name);
      const std::optional<uint64_t> needed = tensor_bytes(t.shape, t.dtype);
      if (needed != t.bytes)
        fail("{}: tensor {} has {} bytes, but shape {} of {} needs {}", f.filename, t.name, t.bytes,
             shape_text(t.shape), dtype_name(t.dtype), needed ? std::to_string(*needed) : "more than 2^63");
      if (t.bytes > 0 && t.data == nullptr) fail("{}: tensor {} has no data pointer", f.filename, t.name);
    }
  }
}

// Writes one binary file (tensors back to back) and returns its manifest entry.
nlohmann::json write_binary_file(const fs::path& dir, const CheckpointFile& file) {
  fs::path path = dir / file.filename;
  PosixFile fd(path, O_WRONLY | O_CREAT | O_EXCL, 0644);
  uint32_t crc = 0;
  uint64_t offset = 0;
  nlohmann::json tensors = nlohmann::json::array();
  for (const CheckpointTensor& t : file.tensors) {
    fd.write_all(t.data, t.bytes);
    crc = crc32(t.data, t.bytes, crc);
    tensors.push_back({{"name", t.name},
                       {"dtype", dtype_name(t.dtype)},
                       {"shape", t.shape},
                       {"offset", offset},
                       {"bytes", t.bytes}});
    offset += t.bytes;
  }
  fd.sync();
  fd.close();
  return {{"name", file.filename}, {"bytes", offset}, {"crc32", crc}, {"tensors", tensors}};
}

void write_text_file(const fs::path& path, const std::string& text) {
  PosixFile fd(path, O_WRONLY | O_CREAT | O_EXCL, 0644);
  fd.write_all(text.data(), text.size());
  fd.sync();
  fd.close();
}

// Manifest accessors that fail with the manifest path and the key.
const nlohmann::json& required(const nlohmann::json& j, const char* key, const fs::path& manifest,
                               const std::string& where) {
  if (!j.is_object() || !j.contains(key)) fail("{}: {} has no \"{}\"", manifest.string(), where, key);
  return j.at(key);
}

uint64_t required_unsigned(const nlohmann::json& j, const char* key, const fs::path& manifest,
                           const std::string& where) {
  const nlohmann::json& v = required(j, key, manifest, where);
  // Below 2^63: steps, sizes and offsets are used as int64 too.
  const std::optional<int64_t> n = json_integer<int64_t>(v);
  if (!n || *n < 0)
    fail("{}: {} \"{}\" must be an integer in [0, 2^63), got {}", manifest.string(), where, key, v.dump());
  return uint64_t(*n);
}

const std::string& required_string(const nlohmann::json& j, const char* key, const fs::path& manifest,
                                   const std::string& where) {
  const nlohmann::json& v = required(j, key, manifest, where);
  if (!v.is_string()) fail("{}: {} \"{}\" must be a string, got {}", manifest.string(), where, key, v.dump());
  return v.get_ref<const std::string&>();
}

// Checks the manifest's structure so later lookups cannot throw json errors.
void validate_manifest(const nlohmann::json& m, const fs::path& manifest) {
  if (!m.is_object()) fail("{}: must be a JSON object", manifest.string());
  const std::string& format = required_string(m, "format", manifest, "manifest");
  if (format != kFormatName)
    fail("{}: \"format\" is \"{}\", expected \"{}\"", manifest.string(), format, kFormatName);
  const nlohmann::json& version = required(m, "format_version", manifest, "manifest");
  if (json_integer<int64_t>(version) != kCheckpointFormatVersion)
    fail("{}: unsupported format_version {} (this build reads version {})", manifest.string(), version.dump(),
         kCheckpointFormatVersion);
  required_unsigned(m, "step", manifest, "manifest");
  required(m, "state", manifest, "manifest");
  const nlohmann::json& files = required(m, "files", manifest, "manifest");
  if (!files.is_array()) fail("{}: \"files\" must be an array", manifest.string());
  std::set<std::string> file_names;
  for (const nlohmann::json& f : files) {
    const std::string& name = required_string(f, "name", manifest, "a \"files\" entry");
    if (!valid_filename(name)) fail("{}: file name \"{}\" is not a plain file name", manifest.string(), name);
    if (!file_names.insert(name).second) fail("{}: file \"{}\" is listed twice", manifest.string(), name);
    std::string where = "file " + name;
    uint64_t file_bytes = required_unsigned(f, "bytes", manifest, where);
    const nlohmann::json& crc = required(f, "crc32", manifest, where);
    if (!json_integer<uint32_t>(crc))
      fail("{}: {} \"crc32\" must be a CRC-32, an integer in [0, 2^32), got {}", manifest.string(), where, crc.dump());
    const nlohmann::json& tensors = required(f, "tensors", manifest, where);
    if (!tensors.is_array()) fail("{}: {} \"tensors\" must be an array", manifest.string(), where);
    std::set<std::string> tensor_names;
    std::vector<std::pair<uint64_t, uint64_t>> extents;  // (offset, bytes) of each tensor
    for (const nlohmann::json& t : tensors) {
      const std::string& tensor_name = required_string(t, "name", manifest, where + " tensor");
      if (!tensor_names.insert(tensor_name).second)
        fail("{}: {} lists tensor \"{}\" twice", manifest.string(), where, tensor_name);
      std::string tensor_where = where + " tensor " + tensor_name;
      DType dtype;
      const std::string& dtype_text = required_string(t, "dtype", manifest, tensor_where);
      if (!parse_dtype(dtype_text, &dtype))
        fail("{}: {} has unknown dtype \"{}\" (bf16, f32 or f64)", manifest.string(), tensor_where, dtype_text);
      const nlohmann::json& shape = required(t, "shape", manifest, tensor_where);
      bool shape_ok = shape.is_array() && std::all_of(shape.begin(), shape.end(), [](const nlohmann::json& d) {
                        const std::optional<int64_t> n = json_integer<int64_t>(d);
                        return n && *n >= 0;
                      });
      if (!shape_ok) fail("{}: {} \"shape\" must be an array of non-negative integers", manifest.string(), tensor_where);
      uint64_t offset = required_unsigned(t, "offset", manifest, tensor_where);
      uint64_t bytes = required_unsigned(t, "bytes", manifest, tensor_where);
      if (tensor_bytes(shape.get<std::vector<int64_t>>(), dtype) != bytes)
        fail("{}: {} has {} bytes, which does not match its shape and dtype", manifest.string(), tensor_where, bytes);
      if (offset > file_bytes || bytes > file_bytes - offset)
        fail("{}: {} (offset {}, {} bytes) lies outside the file's {} bytes", manifest.string(), tensor_where, offset,
             bytes, file_bytes);
      extents.emplace_back(offset, bytes);
    }
    // Tensors are written back to back: two that share bytes would load
    // one's values into the other.
    std::sort(extents.begin(), extents.end());
    for (size_t i = 1; i < extents.size(); ++i)
      if (extents[i].first < extents[i - 1].first + extents[i - 1].second)
        fail("{}: {} has tensors that overlap (bytes {} to {} and from {})", manifest.string(), where,
             extents[i - 1].first, extents[i - 1].first + extents[i - 1].second, extents[i].first);
  }
}

}  // namespace

uint32_t crc32(const void* data, size_t bytes, uint32_t crc) {
  static const std::array<uint32_t, 256> table = make_crc_table();
  const unsigned char* p = static_cast<const unsigned char*>(data);
  crc = ~crc;
  for (size_t i = 0; i < bytes; ++i) crc = table[(crc ^ p[i]) & 0xFF] ^ (crc >> 8);
  return ~crc;
}

fs::path begin_checkpoint(const fs::path& root, int64_t step) {
  if (step < 0) fail("checkpoint step must be >= 0, got {}", step);
  std::error_code ec;
  fs::create_directories(root, ec);
  if (ec) fail("cannot create checkpoint directory {}: {}", root.string(), ec.message());
  remove_abandoned_scratch_dirs(root);
  const fs::path tmp = root / fmt::format("{}.tmp-{}", step_dir_name(step), ::getpid());
  if (::mkdir(tmp.c_str(), 0755) != 0) fail("cannot create {}: {}", tmp.string(), std::strerror(errno));
  return tmp;
}

nlohmann::json write_checkpoint_file(const fs::path& staging, const CheckpointFile& file) {
  check_files_to_save({file});
  nlohmann::json entry = write_binary_file(staging, file);
  // Test hook: die like a preempted job after a data file, before the
  // manifest exists.
  if (std::getenv(kFaultAbortEnv)) ::_exit(kFaultAbortExitCode);
  return entry;
}

fs::path commit_checkpoint(const fs::path& root, int64_t step, const fs::path& staging, const nlohmann::json& state,
                           const nlohmann::json& file_table, int keep) {
  RemovePathOnExit remove_tmp(staging);
  std::set<std::string> names;
  for (const auto& f : file_table)
    if (!names.insert(f.at("name").get<std::string>()).second)
      fail("checkpoint file name '{}' is used twice", f.at("name").get<std::string>());
  const std::string name = step_dir_name(step);
  const fs::path final_dir = root / name;
  nlohmann::json manifest = {{"format", kFormatName},
                             {"format_version", kCheckpointFormatVersion},
                             {"step", step},
                             {"state", state},
                             {"files", file_table}};
  write_text_file(staging / kManifestName, manifest.dump(2) + "\n");
  sync_directory(staging);

  // Re-saving a step: move the old directory aside first, since rename(2)
  // cannot replace a non-empty directory. Whatever else holds the name (a
  // stray file, a dangling symlink, on which rename(2) fails) goes too.
  std::error_code ec;
  const fs::path old_dir = root / fmt::format("{}.old-{}", name, ::getpid());
  const bool replacing = fs::symlink_status(final_dir, ec).type() != fs::file_type::not_found;
  if (replacing) rename_path(final_dir, old_dir);
  rename_path(staging, final_dir);
  remove_tmp.release();
  sync_directory(root);
  if (replacing) {
    fs::remove_all(old_dir, ec);
    if (ec) spdlog::warn("cannot remove replaced checkpoint {}: {}", old_dir.string(), ec.message());
  }

  prune_checkpoints(root, final_dir, keep);
  return final_dir;
}

fs::path save_checkpoint(const fs::path& root, int64_t step, const nlohmann::json& state,
                         const std::vector<CheckpointFile>& files, int keep) {
  check_files_to_save(files);
  const fs::path staging = begin_checkpoint(root, step);
  RemovePathOnExit remove_tmp(staging);
  nlohmann::json file_table = nlohmann::json::array();
  for (const CheckpointFile& f : files) file_table.push_back(write_checkpoint_file(staging, f));
  remove_tmp.release();
  return commit_checkpoint(root, step, staging, state, file_table, keep);
}

std::optional<std::pair<int64_t, fs::path>> latest_checkpoint_with_step(const fs::path& root) {
  std::error_code ec;
  if (!fs::is_directory(root, ec)) return std::nullopt;
  auto found = complete_checkpoints(root);
  if (found.empty()) return std::nullopt;
  return found.back();
}

std::optional<fs::path> latest_checkpoint(const fs::path& root) {
  auto latest = latest_checkpoint_with_step(root);
  if (!latest) return std::nullopt;
  return latest->second;
}

CheckpointReader::CheckpointReader(const fs::path& dir) : dir_(dir) {
  std::error_code ec;
  if (!fs::is_directory(dir_, ec))
    fail("checkpoint directory {} {}", dir_.string(), fs::exists(dir_, ec) ? "is not a directory" : "does not exist");
  const fs::path manifest_path = dir_ / kManifestName;
  std::string why;
  switch (check_regular_file(manifest_path, &why)) {
    case FileCheck::regular: break;
    case FileCheck::missing:
      fail("{}: no {}, so it is not a complete checkpoint (an interrupted save leaves such a directory)",
           dir_.string(), kManifestName);
    case FileCheck::unusable: fail("{} {}", manifest_path.string(), why);
  }

  std::string text(fs::file_size(manifest_path, ec), '\0');
  if (ec) fail("cannot stat {}: {}", manifest_path.string(), ec.message());
  PosixFile(manifest_path, O_RDONLY).read_all(text.data(), text.size(), 0);
  manifest_ = parse_json(text, manifest_path.string());
  validate_manifest(manifest_, manifest_path);
  // The newest checkpoint is found by its name: one renamed, or copied over
  // another, would be taken for a step it does not hold.
  const std::string name = (dir_.filename().empty() ? dir_.parent_path() : dir_).filename().string();
  if (const std::optional<int64_t> named = parse_step_dir_name(name); named && *named != step())
    fail("{}: the directory's name says step {} but its {} says step {}; a checkpoint directory must keep the name "
         "srgpt gave it (step_{:08d}), or take one not of the form step_N",
         dir_.string(), *named, kManifestName, step(), step());

  for (const nlohmann::json& f : manifest_.at("files")) {
    const fs::path path = dir_ / f.at("name").get<std::string>();
    uint64_t expected = f.at("bytes").get<uint64_t>();
    if (const FileCheck file = check_regular_file(path, &why); file != FileCheck::regular)
      fail("{}: listed in {} but {}", path.string(), kManifestName, file == FileCheck::missing ? "missing" : why);
    uint64_t actual = fs::file_size(path, ec);
    if (ec) fail("cannot stat {}: {}", path.string(), ec.message());
    if (actual < expected)
      fail("{}: has {} bytes but {} says {} (truncated)", path.string(), actual, kManifestName, expected);
    if (actual > expected)
      fail("{}: has {} bytes but {} says {} ({} extra bytes)", path.string(), actual, kManifestName, expected,
           actual - expected);
  }
}

int64_t CheckpointReader::step() const { return manifest_.at("step").get<int64_t>(); }

namespace {

const nlohmann::json* find_by_name(const nlohmann::json& array, const std::string& name) {
  for (const nlohmann::json& e : array)
    if (e.at("name").get_ref<const std::string&>() == name) return &e;
  return nullptr;
}

}  // namespace

bool CheckpointReader::has_tensor(const std::string& file, const std::string& name) const {
  const nlohmann::json* f = find_by_name(manifest_.at("files"), file);
  return f && find_by_name(f->at("tensors"), name);
}

void CheckpointReader::check_tensor(const std::string& file, const std::string& name, DType dtype,
                                    const std::vector<int64_t>& shape) const {
  const nlohmann::json* f = find_by_name(manifest_.at("files"), file);
  if (!f) fail("{}: checkpoint has no file {}", dir_.string(), file);
  const nlohmann::json* t = find_by_name(f->at("tensors"), name);
  if (!t) fail("{}: checkpoint has no tensor {} in {}", dir_.string(), name, file);

  const std::string& stored_dtype = t->at("dtype").get_ref<const std::string&>();
  if (stored_dtype != dtype_name(dtype))
    fail("{}: tensor {} has dtype {} in the checkpoint but the model expects {}", file, name, stored_dtype,
         dtype_name(dtype));
  std::vector<int64_t> stored_shape = t->at("shape").get<std::vector<int64_t>>();
  if (stored_shape != shape)
    fail("{}: tensor {} has shape {} in the checkpoint but the model expects {}", file, name, shape_text(stored_shape),
         shape_text(shape));
}

void CheckpointReader::read_tensor(const std::string& file, const std::string& name, DType dtype,
                                   const std::vector<int64_t>& shape, void* dst, size_t bytes) {
  check_tensor(file, name, dtype, shape);
  const nlohmann::json* f = find_by_name(manifest_.at("files"), file);
  const nlohmann::json* t = find_by_name(f->at("tensors"), name);
  uint64_t stored_bytes = t->at("bytes").get<uint64_t>();
  if (stored_bytes != bytes)
    fail("{}: tensor {} has {} bytes in the checkpoint but the destination holds {}", file, name, stored_bytes, bytes);

  const fs::path path = dir_ / file;
  PosixFile fd(path, O_RDONLY);
  if (std::find(verified_.begin(), verified_.end(), file) == verified_.end()) {
    uint64_t file_bytes = f->at("bytes").get<uint64_t>();
    std::vector<char> chunk(size_t(1) << 22);
    uint32_t crc = 0;
    for (uint64_t off = 0; off < file_bytes; off += chunk.size()) {
      size_t n = size_t(std::min<uint64_t>(chunk.size(), file_bytes - off));
      fd.read_all(chunk.data(), n, off);
      crc = crc32(chunk.data(), n, crc);
    }
    uint32_t expected = f->at("crc32").get<uint32_t>();
    if (crc != expected)
      fail("{}: CRC32 is {:08x} but {} says {:08x} (the file is corrupt)", path.string(), crc, kManifestName, expected);
    verified_.push_back(file);
  }
  fd.read_all(dst, bytes, t->at("offset").get<uint64_t>());
}

}  // namespace srgpt
