#pragma once
// A layout carves one flat buffer into named tensors. Parameters, gradients
// and optimizer state share the parameter layout, so a tensor is the same
// [offset, offset + numel) range in every one of them, and a shard of the
// optimizer is a single contiguous range.
#include <cstddef>
#include <cstdint>
#include <string>
#include <unordered_map>
#include <vector>

namespace srgpt {

struct TensorSpec {
  std::string name;
  std::vector<int64_t> shape;
  size_t offset = 0;  // in elements
  size_t numel = 0;
  bool decay = false;  // decoupled weight decay applies (matrices only)
  int layer = -1;      // transformer block index, -1 outside the blocks
};

class Layout {
 public:
  // Offsets are aligned to kAlign elements so every tensor starts on a
  // 128-byte boundary for vectorised device access.
  static constexpr size_t kAlign = 64;

  const TensorSpec& add(const std::string& name, std::vector<int64_t> shape, bool decay = false, int layer = -1);
  const TensorSpec& at(const std::string& name) const;  // throws Error naming the tensor
  // Rounds the end of the buffer up to a multiple of `multiple` elements
  // (ZeRO pads each sharding unit so it splits evenly over the ranks).
  void pad_to(size_t multiple);
  const std::vector<TensorSpec>& tensors() const { return tensors_; }
  size_t total() const { return total_; }      // elements including alignment padding
  size_t num_params() const { return count_; }  // elements excluding padding

 private:
  std::vector<TensorSpec> tensors_;
  std::unordered_map<std::string, size_t> index_;
  size_t total_ = 0;
  size_t count_ = 0;
};

}  // namespace srgpt
