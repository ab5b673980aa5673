#include "srgpt/optimizer.h"

#include <algorithm>
#include <cmath>

#include "srgpt/bf16.h"
#include "srgpt/error.h"

namespace srgpt {

Optimizer::Optimizer(ParameterStore& params, Precision precision, const OptimizerConfig& config, uint64_t seed)
    : params_(params), precision_(precision), config_(config), seed_(seed) {
  Backend& be = params.backend();
  if (be.dtype() != compute_dtype(precision))
    fail("internal: backend dtype {} does not match precision {}", dtype_name(be.dtype()), precision_name(precision));
  const size_t n = params.state_elements();
  const size_t state_bytes = n * dtype_size(adam_state_dtype(precision));
  m_ = DeviceBuffer(be, state_bytes, "Adam m");
  v_ = DeviceBuffer(be, state_bytes, "Adam v");
  be.fill_zero(m_.get(), m_.bytes());
  be.fill_zero(v_.get(), v_.bytes());
  if (has_master_weights(precision)) {
    master_ = DeviceBuffer(be, n * sizeof(float), "fp32 master weights");
    be.fill_zero(master_.get(), master_.bytes());
  }
  if (has_kahan_compensation(precision)) {
    compensation_ = DeviceBuffer(be, n * sizeof(bf16), "Kahan compensation");
    be.fill_zero(compensation_.get(), compensation_.bytes());
  }
}

void Optimizer::set_weights(const std::vector<float>& values) {
  params_.set_weights(values);
  if (!master_.get()) return;
  // The master shard holds, at local index i, the value of flat index
  // i + offset of each unit this rank owns.
  std::vector<float> local(params_.state_elements(), 0.0f);
  for (size_t u = 0; u < params_.plan().units().size(); ++u) {
    UnitUpdateView view = params_.update_view(u);
    std::copy(values.begin() + long(view.begin), values.begin() + long(view.end),
              local.begin() + long(view.begin - view.offset));
  }
  params_.backend().upload(master_.get(), local.data(), local.size() * sizeof(float));
}

void Optimizer::step(int64_t t, double lr, float grad_scale) {
  AdamWStep s;
  s.lr = float(lr);
  s.beta1 = float(config_.beta1);
  s.beta2 = float(config_.beta2);
  s.eps = float(config_.eps);
  s.weight_decay = float(config_.weight_decay);
  s.grad_scale = grad_scale;
  s.bias_correction1 = float(1.0 - std::pow(config_.beta1, double(t)));
  s.bias_correction2 = float(1.0 - std::pow(config_.beta2, double(t)));
  s.seed = seed_;
  s.step = uint64_t(t);
  OptimizerBuffers bufs;
  bufs.m = m_.get();
  bufs.v = v_.get();
  bufs.master = master_.as<float>();
  bufs.compensation = compensation_.get();
  bufs.f32_grads = params_.grad_dtype() != params_.backend().dtype();
  const auto& tensors = params_.layout().tensors();
  std::vector<AdamWRange> ranges;
  for (size_t u = 0; u < params_.plan().units().size(); ++u) {
    UnitUpdateView view = params_.update_view(u);
    bufs.weights = view.weights;
    bufs.grads = view.grads;
    s.index_offset = view.sr_offset;
    // Each tensor's part of the owned range, in one backend call per unit;
    // alignment padding is skipped.
    ranges.clear();
    for (const TensorSpec& tensor : tensors) {
      const size_t a = std::max(view.begin, tensor.offset), b = std::min(view.end, tensor.offset + tensor.numel);
      if (a < b) ranges.push_back({a - view.offset, b - view.offset, tensor.decay});
    }
    params_.backend().adamw_update(precision_, bufs, ranges, s);
    params_.weights_updated(u);
  }
  params_.gather_updated_weights();
}

std::vector<StateBuffer> optimizer_state_kinds(Precision precision) {
  const DType sd = adam_state_dtype(precision);
  std::vector<StateBuffer> out{{"m", sd, nullptr}, {"v", sd, nullptr}};
  if (has_master_weights(precision)) out.push_back({"master", DType::f32, nullptr});
  if (has_kahan_compensation(precision)) out.push_back({"compensation", DType::bf16, nullptr});
  return out;
}

std::vector<StateBuffer> Optimizer::state_buffers() {
  std::vector<StateBuffer> out = optimizer_state_kinds(precision_);
  for (StateBuffer& s : out)
    s.data = s.name == "m" ? m_.get() : s.name == "v" ? v_.get() : s.name == "master" ? master_.get() : compensation_.get();
  return out;
}

std::vector<std::vector<char>> Optimizer::state_on_host() {
  std::vector<std::vector<char>> host;
  for (const StateBuffer& s : state_buffers()) {
    host.emplace_back(params_.state_elements() * dtype_size(s.dtype));
    params_.backend().download(host.back().data(), s.data, host.back().size());
  }
  return host;
}

size_t Optimizer::state_bytes() const {
  return m_.bytes() + v_.bytes() + master_.bytes() + compensation_.bytes();
}

}  // namespace srgpt
