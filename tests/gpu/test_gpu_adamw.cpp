// The GPU optimizer step is bit-identical to the cpu reference for every
// precision mode, over whole and partial (unaligned) element ranges, and
// over many ranges in one call.
#include <cmath>

#include "gpu_test_util.h"
#include "srgpt/precision.h"

using namespace srgpt;
using namespace srgpt::gpu_test;

namespace {

AdamWStep make_step(uint64_t t, float weight_decay, float grad_scale, uint64_t index_offset = 0) {
  AdamWStep s{};
  s.lr = 3e-3f;
  s.beta1 = 0.9f;
  s.beta2 = 0.95f;
  s.eps = 1e-8f;
  s.weight_decay = weight_decay;
  s.grad_scale = grad_scale;
  s.bias_correction1 = float(1.0 - std::pow(0.9, double(t)));
  s.bias_correction2 = float(1.0 - std::pow(0.95, double(t)));
  s.seed = 0x5eed5eedull;
  s.step = t;
  s.index_offset = index_offset;
  return s;
}

// The optimizer buffers of one precision mode on one backend, with
// gradients in the compute dtype or (dist.grad_reduce_dtype = fp32) f32.
struct State {
  State(Backend& be, Precision mode, size_t n, bool f32_grads)
      : f32_grads(f32_grads),
        weights(be, compute_dtype(mode), n),
        grads(be, f32_grads ? DType::f32 : compute_dtype(mode), n),
        m(be, adam_state_dtype(mode), n),
        v(be, adam_state_dtype(mode), n),
        master(be, DType::f32, has_master_weights(mode) ? n : 0),
        compensation(be, DType::bf16, has_kahan_compensation(mode) ? n : 0) {}

  OptimizerBuffers buffers() {
    OptimizerBuffers b;
    b.weights = weights.get();
    b.grads = grads.get();
    b.m = m.get();
    b.v = v.get();
    b.master = master.count() ? static_cast<float*>(master.get()) : nullptr;
    b.compensation = compensation.count() ? compensation.get() : nullptr;
    b.f32_grads = f32_grads;
    return b;
  }
  std::vector<const Tensor*> all() const { return {&weights, &grads, &m, &v, &master, &compensation}; }

  bool f32_grads;
  Tensor weights, grads, m, v, master, compensation;
};

}  // namespace

TEST_CASE("gpu adamw_update is bit-identical to the cpu backend in every precision mode", "[gpu]") {
  if (!have_gpu()) return;
  const Precision modes[] = {Precision::bf16_sr, Precision::bf16_rn, Precision::mixed, Precision::fp32,
                             Precision::bf16_kahan};
  const size_t n = 100003;
  uint64_t seed = 700;
  // Every mode with gradients in its compute dtype, and the bf16 modes with
  // f32 gradients too.
  std::vector<std::pair<Precision, bool>> cases;
  for (Precision mode : modes) {
    cases.push_back({mode, false});
    if (compute_dtype(mode) == DType::bf16) cases.push_back({mode, true});
  }
  for (const auto& [mode, f32_grads] : cases) {
    const DType dtype = compute_dtype(mode);
    auto cpu = make_cpu_backend(dtype);
    auto gpu = make_cuda_backend(dtype, 0);
    State on_cpu(*cpu, mode, n, f32_grads), on_gpu(*gpu, mode, n, f32_grads);
    // Initial state: weights ~ N(0, 0.02), moments as after some steps.
    auto weights = random_normal(n, ++seed, 0.02f);
    auto m = random_normal(n, ++seed, 1e-3f);
    auto v = random_normal(n, ++seed, 1e-3f);
    for (float& x : v) x = x * x;
    auto compensation = random_normal(n, ++seed, 1e-5f);
    for (State* s : {&on_cpu, &on_gpu}) {
      s->weights.set(weights);
      s->m.set(m);
      s->v.set(v);
      if (s->master.count()) s->master.set(weights);
      if (s->compensation.count()) s->compensation.set(compensation);
    }
    // Four steps: the whole range, then ranges with unaligned ends (as a
    // ZeRO shard or one tensor of the layout would be), then many ranges in
    // one call (as the tensors of a ZeRO unit): more than one launch takes,
    // empty ones, neighbours sharing a group of 8 elements, gaps, with and
    // without weight decay. New gradients each step.
    std::vector<AdamWRange> tensors;
    for (size_t begin = 1; begin + 2000 < n;) {
      const size_t end = begin + 1 + (begin * 7919) % 1999;
      tensors.push_back({begin, end, (tensors.size() % 3) != 1});
      tensors.push_back({end, end, true});
      begin = end + (tensors.size() % 4 == 0 ? 5 : 0);
    }
    REQUIRE(tensors.size() > 2 * 16);
    const std::vector<AdamWRange> ranges[] = {{{0, n, true}}, {{3, n - 5, false}}, {{8, 8 * 1001 + 1, true}}, tensors};
    uint64_t t = 0;
    for (const auto& range : ranges) {
      ++t;
      const auto grads = random_normal(n, ++seed, 1e-2f);
      on_cpu.grads.set(grads);
      on_gpu.grads.set(grads);
      // The third step updates as a ZeRO shard would: SR counters offset.
      const AdamWStep step = make_step(t, 0.1f, t == 3 ? 0.37f : 1.0f, t == 3 ? 123457 : 0);
      cpu->adamw_update(mode, on_cpu.buffers(), range, step);
      gpu->adamw_update(mode, on_gpu.buffers(), range, step);
      const auto cpu_tensors = on_cpu.all(), gpu_tensors = on_gpu.all();
      const char* names[] = {"weights", "grads", "m", "v", "master", "compensation"};
      for (size_t i = 0; i < cpu_tensors.size(); ++i)
        check_same_bytes(std::string(precision_name(mode)) + (f32_grads ? " (f32 gradients)" : "") + " step " +
                             std::to_string(t) + " " + names[i],
                         gpu_tensors[i]->bytes(), cpu_tensors[i]->bytes());
    }
    // The weights did move: a step that did nothing would also match.
    CHECK(on_gpu.weights.bytes() != to_bytes(dtype, weights));
  }
}

TEST_CASE("gpu adamw_update refuses a mode whose dtype differs from the backend's, or overlapping ranges", "[gpu]") {
  if (!have_gpu()) return;
  auto gpu = make_cuda_backend(DType::bf16, 0);
  Tensor w(*gpu, DType::bf16, 16), g(*gpu, DType::bf16, 16), m(*gpu, DType::f32, 16), v(*gpu, DType::f32, 16);
  OptimizerBuffers b;
  b.weights = w.get();
  b.grads = g.get();
  b.m = m.get();
  b.v = v.get();
  CHECK_THROWS_WITH(gpu->adamw_update(Precision::fp32, b, {{0, 16, true}}, make_step(1, 0.1f, 1.0f)),
                    contains_substring("precision fp32 computes in f32, but this backend stores bf16"));
  // mixed needs the master buffer.
  CHECK_THROWS_WITH(gpu->adamw_update(Precision::mixed, b, {{0, 16, true}}, make_step(1, 0.1f, 1.0f)),
                    contains_substring("precision mixed needs the master buffer, which is missing"));
  // Ranges that overlap would update an element twice, at once on a GPU.
  CHECK_THROWS_WITH(gpu->adamw_update(Precision::bf16_sr, b, {{0, 9, true}, {8, 16, true}}, make_step(1, 0.1f, 1.0f)),
                    contains_substring("element range 1 [8, 16) starts before range 0 ends at 9"));
}
