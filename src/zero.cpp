#include "srgpt/zero.h"

#include <algorithm>

#include "srgpt/error.h"

namespace srgpt {

ZeroShardPlan::ZeroShardPlan(const Layout& layout, int world_size) : world_(world_size) {
  if (world_size < 1) fail("internal: world size {} < 1", world_size);
  // Consecutive tensors with the same layer index form a unit; the tensors
  // before block 0 are the embeddings, those after the last block ln_f.
  const auto& ts = layout.tensors();
  for (size_t i = 0; i < ts.size(); ++i) {
    const bool new_unit = i == 0 || ts[i].layer != ts[i - 1].layer;
    if (new_unit) {
      ZeroUnit u;
      u.layer = ts[i].layer;
      u.name = u.layer >= 0 ? "h." + std::to_string(u.layer) : (i == 0 ? "embeddings" : "ln_f");
      u.begin = ts[i].offset;
      units_.push_back(u);
    }
  }
  // Each unit's content: from its begin to the end of its last tensor.
  std::vector<size_t> content(units_.size(), 0);
  for (const TensorSpec& t : ts)
    for (size_t i = units_.size(); i-- > 0;)
      if (t.offset >= units_[i].begin) {
        content[i] = std::max(content[i], t.offset + t.numel - units_[i].begin);
        break;
      }
  size_t canonical = 0;
  for (size_t i = 0; i < units_.size(); ++i) {
    ZeroUnit& u = units_[i];
    u.canonical_begin = canonical;
    canonical += (content[i] + Layout::kAlign - 1) / Layout::kAlign * Layout::kAlign;
    u.end = i + 1 < units_.size() ? units_[i + 1].begin : layout.total();
    if (u.size() % (size_t(world_size) * Layout::kAlign) != 0)
      fail("internal: unit {} of {} elements is not padded for {} ranks", u.name, u.size(), world_size);
    u.chunk = u.size() / size_t(world_size);
    u.shard_offset = shard_size_;
    shard_size_ += u.chunk;
  }
}

size_t ZeroShardPlan::unit_of_layer(int layer) const {
  if (layer < 0 || size_t(layer) + 2 > units_.size()) fail("internal: no unit for layer {}", layer);
  return size_t(layer) + 1;
}

size_t ZeroShardPlan::owned_begin(size_t u, int rank) const { return units_.at(u).begin + size_t(rank) * units_[u].chunk; }

nlohmann::json ZeroShardPlan::to_json() const {
  nlohmann::json units = nlohmann::json::array();
  for (const ZeroUnit& u : units_)
    units.push_back({{"name", u.name}, {"begin", u.begin}, {"end", u.end}, {"chunk", u.chunk},
                     {"shard_offset", u.shard_offset}, {"canonical_begin", u.canonical_begin}});
  return {{"world_size", world_}, {"shard_size", shard_size_}, {"units", units}};
}

RankMemory rank_memory(const Layout& layout, Precision precision, int zero_stage, int world_size,
                       DType grad_dtype) {
  if (zero_stage < 0 || zero_stage > 3) fail("dist.zero_stage = {} is not allowed; use 0, 1, 2 or 3", zero_stage);
  const ZeroShardPlan plan(layout, world_size);
  const size_t es = dtype_size(compute_dtype(precision)), ges = dtype_size(grad_dtype);
  const bool wide = grad_dtype != compute_dtype(precision);
  const size_t full = layout.total(), shard = plan.shard_size();
  RankMemory r;
  r.weights = (zero_stage == 3 ? shard : full) * es;
  r.grads = (zero_stage >= 2 ? shard : full) * ges;
  const size_t state = zero_stage == 0 ? full : shard;
  r.optimizer_state = 2 * state * dtype_size(adam_state_dtype(precision));
  if (has_master_weights(precision)) r.optimizer_state += state * sizeof(float);
  if (has_kahan_compensation(precision)) r.optimizer_state += state * dtype_size(DType::bf16);
  size_t max_block = 0;
  for (const ZeroUnit& u : plan.units())
    if (u.layer >= 0) max_block = std::max(max_block, u.size());
  const size_t embeddings = plan.unit(plan.embeddings_unit()).size(), ln_f = plan.unit(plan.final_unit()).size();
  const size_t grad_slots = embeddings + 2 * std::max(max_block, ln_f);
  if (zero_stage == 3) r.working += (embeddings + ln_f + 2 * max_block) * es;
  if (zero_stage >= 2 || wide) r.working += grad_slots * es;
  if (zero_stage >= 2) r.working += grad_slots / size_t(world_size) * ges + (wide ? grad_slots * ges : 0);
  return r;
}

}  // namespace srgpt
