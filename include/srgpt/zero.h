#pragma once
// How ZeRO shards the flat parameter-layout buffers over data-parallel ranks.
//
// The layout is cut into units: the embeddings (wte, wpe), each transformer
// block, and the final layernorm; each unit is a contiguous range of the
// layout. A unit is padded to a multiple of the world size and split into
// equal chunks, chunk r owned by rank r, so gathering or reduce-scattering
// one unit is a single equal-count collective. A rank's shard buffer is its
// chunks of all units back to back. Units (not the whole buffer) are the
// granularity so ZeRO-3 can gather one block's weights at a time.
#include <cstddef>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "srgpt/layout.h"
#include "srgpt/precision.h"

namespace srgpt {

struct ZeroUnit {
  std::string name;    // "embeddings", "h.<l>", "ln_f"
  size_t begin = 0;    // flat layout range [begin, end)
  size_t end = 0;
  size_t chunk = 0;    // elements per rank: (end - begin) / world
  size_t shard_offset = 0;  // where this unit's chunk starts in a shard buffer
  // Where the unit starts in the one-rank layout. Tensor offsets relative
  // to the unit's begin are the same for every world size, so
  // flat index - begin + canonical_begin is an element's index independent
  // of the world size: the SR counter, so replicas round alike however many
  // ranks there are.
  size_t canonical_begin = 0;
  int layer = -1;      // block index, -1 for the embeddings and ln_f

  size_t size() const { return end - begin; }
};

class ZeroShardPlan {
 public:
  ZeroShardPlan(const Layout& layout, int world_size);

  int world_size() const { return world_; }
  const std::vector<ZeroUnit>& units() const { return units_; }
  const ZeroUnit& unit(size_t i) const { return units_.at(i); }
  // The unit holding block `layer`'s tensors.
  size_t unit_of_layer(int layer) const;
  size_t embeddings_unit() const { return 0; }
  size_t final_unit() const { return units_.size() - 1; }
  // Elements in one rank's shard buffer (same on every rank).
  size_t shard_size() const { return shard_size_; }
  // Flat layout index of the first element of unit u's chunk on `rank`;
  // the chunk is [owned_begin, owned_begin + unit(u).chunk).
  size_t owned_begin(size_t u, int rank) const;

  nlohmann::json to_json() const;

 private:
  int world_;
  std::vector<ZeroUnit> units_;
  size_t shard_size_ = 0;
};

// Bytes one rank allocates for the model's state, as ParameterStore and
// Optimizer allocate them; layout is gpt2_param_layout(cfg, world_size).
//   weights          full, or the shard under stage 3
//   grads            full for stages 0-1, the shard for stages 2-3, in
//                    grad_dtype (the compute dtype, or f32)
//   optimizer_state  m, v (+ fp32 master in mixed, + compensation in
//                    bf16-kahan): full for stage 0, the shard otherwise
//   working          ZeRO working buffers: stage 3's gathered weights
//                    (embeddings, ln_f, two block slots); the micro-step
//                    gradient slots (embeddings + twice the largest other
//                    unit, so one can be reduced while backward fills the
//                    other) of stages 2-3, and of stages 0-1 with f32
//                    gradients; stages 2-3's reduced chunks (1/world of
//                    the slots), and with f32 gradients the slots in f32
struct RankMemory {
  size_t weights = 0;
  size_t grads = 0;
  size_t optimizer_state = 0;
  size_t working = 0;
  size_t persistent() const { return weights + grads + optimizer_state; }
};
RankMemory rank_memory(const Layout& layout, Precision precision, int zero_stage, int world_size,
                       DType grad_dtype);

}  // namespace srgpt
