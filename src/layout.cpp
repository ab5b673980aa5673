#include "srgpt/layout.h"

#include "srgpt/error.h"

namespace srgpt {

const TensorSpec& Layout::add(const std::string& name, std::vector<int64_t> shape, bool decay, int layer) {
  TensorSpec t;
  t.name = name;
  t.numel = 1;
  for (int64_t d : shape) t.numel *= size_t(d);
  t.shape = std::move(shape);
  t.offset = (total_ + kAlign - 1) / kAlign * kAlign;
  t.decay = decay;
  t.layer = layer;
  total_ = t.offset + t.numel;
  count_ += t.numel;
  if (!index_.emplace(t.name, tensors_.size()).second) fail("duplicate tensor name '{}' in a layout", t.name);
  tensors_.push_back(std::move(t));
  return tensors_.back();
}

void Layout::pad_to(size_t multiple) { total_ = (total_ + multiple - 1) / multiple * multiple; }

const TensorSpec& Layout::at(const std::string& name) const {
  auto it = index_.find(name);
  if (it != index_.end()) return tensors_[it->second];
  fail("no tensor named '{}' in the layout", name);
}

}  // namespace srgpt
