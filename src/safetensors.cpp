#include "srgpt/safetensors.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <limits>
#include <optional>
#include <utility>

#include "srgpt/bf16.h"
#include "srgpt/error.h"
#include "srgpt/json_parse.h"
#include "srgpt/posix_file.h"

namespace srgpt {

namespace fs = std::filesystem;

namespace {

// The reference implementation refuses larger headers; so do we, before
// allocating anything for one.
constexpr uint64_t kMaxHeaderBytes = uint64_t(100) << 20;
constexpr const char* kMetadataKey = "__metadata__";
constexpr const char* kAllowedDtypes = "F32, BF16, F64";

bool parse_safetensors_dtype(const std::string& name, DType* out) {
  for (DType d : {DType::f32, DType::bf16, DType::f64})
    if (name == safetensors_dtype_name(d)) {
      *out = d;
      return true;
    }
  return false;
}

// Element count of a shape, or an Error when it overflows.
size_t checked_numel(const std::vector<int64_t>& shape, const fs::path& file, const std::string& tensor) {
  size_t n = 1;
  for (int64_t d : shape) {
    if (d < 0) fail("{}: tensor '{}' has a negative dimension {}", file.string(), tensor, d);
    if (d != 0 && n > std::numeric_limits<size_t>::max() / size_t(d))
      fail("{}: tensor '{}' has a shape whose element count overflows", file.string(), tensor);
    n *= size_t(d);
  }
  return n;
}

std::string shape_text(const std::vector<int64_t>& shape) { return nlohmann::json(shape).dump(); }

uint64_t json_offset(const nlohmann::json& value, const fs::path& file, const std::string& tensor) {
  const std::optional<uint64_t> offset = json_integer<uint64_t>(value);
  if (!offset)
    fail("{}: tensor '{}' has data offset {}; offsets must be non-negative integers", file.string(), tensor,
         value.dump());
  return *offset;
}

SafetensorsEntry parse_entry(const std::string& name, const nlohmann::json& info, const fs::path& file) {
  if (!info.is_object()) fail("{}: header entry '{}' is not an object", file.string(), name);
  SafetensorsEntry e;
  e.name = name;
  const auto dtype = info.find("dtype");
  if (dtype == info.end() || !dtype->is_string())
    fail("{}: tensor '{}' has no \"dtype\" string", file.string(), name);
  if (!parse_safetensors_dtype(dtype->get<std::string>(), &e.dtype))
    fail("{}: tensor '{}' has dtype {}, which srgpt does not read; supported: {}", file.string(), name,
         dtype->get<std::string>(), kAllowedDtypes);
  const auto shape = info.find("shape");
  if (shape == info.end() || !shape->is_array())
    fail("{}: tensor '{}' has no \"shape\" array", file.string(), name);
  for (const auto& d : *shape) {
    const std::optional<int64_t> dim = json_integer<int64_t>(d);
    if (!dim) fail("{}: tensor '{}' has shape {}; dimensions must be integers", file.string(), name, shape->dump());
    e.shape.push_back(*dim);
  }
  const auto offsets = info.find("data_offsets");
  if (offsets == info.end() || !offsets->is_array() || offsets->size() != 2)
    fail("{}: tensor '{}' has no \"data_offsets\" pair [begin, end]", file.string(), name);
  e.begin = json_offset((*offsets)[0], file, name);
  e.end = json_offset((*offsets)[1], file, name);
  const size_t numel = checked_numel(e.shape, file, name);
  const size_t es = dtype_size(e.dtype);
  if (e.end < e.begin)
    fail("{}: tensor '{}' has data offsets [{}, {}] with end before begin", file.string(), name, e.begin, e.end);
  const bool overflows = numel > std::numeric_limits<uint64_t>::max() / es;
  if (overflows || e.end - e.begin != uint64_t(numel) * es)
    fail("{}: tensor '{}' has data offsets [{}, {}] ({} bytes), but shape {} of {} needs {} bytes", file.string(),
         name, e.begin, e.end, e.end - e.begin, shape_text(e.shape), dtype->get<std::string>(),
         overflows ? "more than 2^64" : std::to_string(uint64_t(numel) * es));
  return e;
}

}  // namespace

void convert_to_float(const void* src, DType dtype, size_t n, float* dst) {
  switch (dtype) {
    case DType::f32:
      std::memcpy(dst, src, n * sizeof(float));
      return;
    case DType::bf16: {
      const bf16* s = static_cast<const bf16*>(src);
      for (size_t i = 0; i < n; ++i) dst[i] = bf16_to_float(s[i]);
      return;
    }
    case DType::f64: {
      const double* s = static_cast<const double*>(src);
      for (size_t i = 0; i < n; ++i) dst[i] = float(s[i]);
      return;
    }
  }
}

const char* safetensors_dtype_name(DType dtype) {
  switch (dtype) {
    case DType::f32: return "F32";
    case DType::bf16: return "BF16";
    case DType::f64: return "F64";
  }
  return "?";
}

size_t SafetensorsEntry::numel() const {
  size_t n = 1;
  for (int64_t d : shape) n *= size_t(d);
  return n;
}

void write_safetensors(const fs::path& path, const std::vector<SafetensorsTensor>& tensors,
                       const std::map<std::string, std::string>& metadata) {
  nlohmann::json header = nlohmann::json::object();
  uint64_t offset = 0;
  for (const SafetensorsTensor& t : tensors) {
    const size_t expected = checked_numel(t.shape, path, t.name) * dtype_size(t.dtype);
    if (t.bytes != expected)
      fail("internal: tensor '{}' for {} has {} bytes, but shape {} needs {}", t.name, path.string(), t.bytes,
           shape_text(t.shape), expected);
    if (t.name == kMetadataKey || header.contains(t.name))
      fail("internal: tensor name '{}' is reserved or repeated in {}", t.name, path.string());
    header[t.name] = {{"dtype", safetensors_dtype_name(t.dtype)},
                      {"shape", t.shape},
                      {"data_offsets", {offset, offset + t.bytes}}};
    offset += t.bytes;
  }
  header[kMetadataKey] = metadata;
  std::string text = header.dump();
  // Padding keeps the data section 8-byte aligned for readers that map it.
  text.append((8 - text.size() % 8) % 8, ' ');
  const uint64_t length = text.size();
  write_file_atomically(path, [&](const ByteSink& sink) {
    sink(&length, sizeof length);
    sink(text.data(), text.size());
    for (const SafetensorsTensor& t : tensors) sink(t.data, t.bytes);
  });
}

SafetensorsReader::SafetensorsReader(const fs::path& path) : path_(path) {
  std::error_code ec;
  if (!fs::is_regular_file(path_, ec)) fail("{}: no such file", path_.string());
  const uint64_t file_size = fs::file_size(path_, ec);
  if (ec) fail("cannot read {}: {}", path_.string(), ec.message());
  std::ifstream in(path_, std::ios::binary);
  if (!in) fail("cannot open {}: {}", path_.string(), std::strerror(errno));
  if (file_size < 8)
    fail("{}: {} bytes is too short for a safetensors file (it starts with an 8-byte header length)", path_.string(),
         file_size);
  uint64_t header_length = 0;
  in.read(reinterpret_cast<char*>(&header_length), sizeof header_length);
  if (header_length > file_size - 8)
    fail("{}: header length {} runs past the end of the file ({} bytes); the file is truncated or not safetensors",
         path_.string(), header_length, file_size);
  if (header_length > kMaxHeaderBytes)
    fail("{}: header length {} exceeds the format's limit of {} bytes", path_.string(), header_length,
         kMaxHeaderBytes);
  std::string text(header_length, '\0');
  if (!in.read(text.data(), std::streamsize(header_length))) fail("cannot read the header of {}", path_.string());
  data_begin_ = 8 + header_length;
  const uint64_t data_bytes = file_size - data_begin_;

  const nlohmann::json header = parse_json(text, path_.string() + " header");
  if (!header.is_object()) fail("{}: header is not a JSON object", path_.string());
  for (const auto& [name, info] : header.items()) {
    if (name == kMetadataKey) {
      if (!info.is_object()) fail("{}: \"{}\" is not an object", path_.string(), kMetadataKey);
      metadata_ = info;
      continue;
    }
    SafetensorsEntry e = parse_entry(name, info, path_);
    if (e.end > data_bytes)
      fail("{}: tensor '{}' has data offsets [{}, {}] beyond the {}-byte data section; the file is truncated",
           path_.string(), name, e.begin, e.end, data_bytes);
    entries_.push_back(std::move(e));
  }
  std::vector<const SafetensorsEntry*> by_offset;
  for (const auto& e : entries_) by_offset.push_back(&e);
  std::sort(by_offset.begin(), by_offset.end(),
            [](const SafetensorsEntry* a, const SafetensorsEntry* b) { return a->begin < b->begin; });
  for (size_t i = 1; i < by_offset.size(); ++i)
    if (by_offset[i]->begin < by_offset[i - 1]->end)
      fail("{}: tensors '{}' and '{}' overlap in the data section", path_.string(), by_offset[i - 1]->name,
           by_offset[i]->name);
}

const SafetensorsEntry* SafetensorsReader::find(const std::string& name) const {
  auto it = std::lower_bound(entries_.begin(), entries_.end(), name,
                             [](const SafetensorsEntry& e, const std::string& n) { return e.name < n; });
  return it != entries_.end() && it->name == name ? &*it : nullptr;
}

std::vector<char> SafetensorsReader::read_bytes(const SafetensorsEntry& entry) const {
  std::vector<char> bytes(entry.end - entry.begin);
  std::ifstream in(path_, std::ios::binary);
  in.seekg(std::streamoff(data_begin_ + entry.begin));
  if (!in || !in.read(bytes.data(), std::streamsize(bytes.size())))
    fail("{}: cannot read the data of tensor '{}' (bytes {}..{} of the data section)", path_.string(), entry.name,
         entry.begin, entry.end);
  return bytes;
}

std::vector<float> SafetensorsReader::read_floats(const SafetensorsEntry& entry) const {
  const std::vector<char> bytes = read_bytes(entry);
  std::vector<float> values(entry.numel());
  convert_to_float(bytes.data(), entry.dtype, values.size(), values.data());
  return values;
}

}  // namespace srgpt
