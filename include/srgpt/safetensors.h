#pragma once
// The safetensors file format (docs/formats.md), read and written here:
//   8 bytes   little-endian uint64 N, the header length
//   N bytes   JSON header: {"<tensor>": {"dtype": "F32"|"BF16"|"F64",
//             "shape": [...], "data_offsets": [begin, end]}, ...,
//             "__metadata__": {"<key>": "<string>", ...}}, padded with
//             spaces to a multiple of 8 bytes
//   data      the tensors' bytes, row-major, offsets relative to this point
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "srgpt/dtype.h"

namespace srgpt {

// Converts n values of `dtype` (bf16, f32 or f64) to float.
void convert_to_float(const void* src, DType dtype, size_t n, float* dst);


// safetensors dtype names: "F32", "BF16", "F64".
const char* safetensors_dtype_name(DType dtype);

// A tensor to write: `bytes` of host memory holding the product of `shape`
// elements of `dtype`.
struct SafetensorsTensor {
  std::string name;
  DType dtype;
  std::vector<int64_t> shape;
  const void* data;
  size_t bytes;
};

// Writes the tensors back to back in the given order, atomically.
void write_safetensors(const std::filesystem::path& path, const std::vector<SafetensorsTensor>& tensors,
                       const std::map<std::string, std::string>& metadata);

// One tensor listed in a safetensors header.
struct SafetensorsEntry {
  std::string name;
  DType dtype;
  std::vector<int64_t> shape;
  uint64_t begin = 0, end = 0;  // byte range within the data section
  size_t numel() const;
};

// Parses and validates the header when constructed: the header length fits
// the file, the header is a JSON object, every tensor has a supported dtype,
// a shape of non-negative integers and data offsets inside the data section
// that match its size and overlap no other tensor. Any problem is an Error
// naming the file and, where it applies, the tensor. Tensor data is read on
// request.
class SafetensorsReader {
 public:
  explicit SafetensorsReader(const std::filesystem::path& path);

  const std::filesystem::path& path() const { return path_; }
  // Sorted by name.
  const std::vector<SafetensorsEntry>& tensors() const { return entries_; }
  // nullptr when the file has no tensor of that name.
  const SafetensorsEntry* find(const std::string& name) const;
  // The "__metadata__" object (empty when absent).
  const nlohmann::json& metadata() const { return metadata_; }

  std::vector<char> read_bytes(const SafetensorsEntry& entry) const;
  std::vector<float> read_floats(const SafetensorsEntry& entry) const;

 private:
  std::filesystem::path path_;
  uint64_t data_begin_ = 0;  // file offset of the data section
  std::vector<SafetensorsEntry> entries_;
  nlohmann::json metadata_ = nlohmann::json::object();
};

}  // namespace srgpt
