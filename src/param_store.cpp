#include "srgpt/param_store.h"

#include <algorithm>
#include <utility>

#include "srgpt/bf16.h"
#include "srgpt/error.h"

namespace srgpt {

namespace {

// fp32 values in a storage dtype's bytes (bf16 rounded to nearest).
std::vector<char> encode(const float* values, size_t n, DType dtype) {
  std::vector<char> out(n * dtype_size(dtype));
  for (size_t i = 0; i < n; ++i) {
    switch (dtype) {
      case DType::bf16: reinterpret_cast<bf16*>(out.data())[i] = float_to_bf16_rn(values[i]); break;
      case DType::f32: reinterpret_cast<float*>(out.data())[i] = values[i]; break;
      case DType::f64: reinterpret_cast<double*>(out.data())[i] = values[i]; break;
    }
  }
  return out;
}

}  // namespace

ParameterStore::ParameterStore(Backend& backend, Communicator& comm, Layout layout, int zero_stage)
    : ParameterStore(backend, comm, std::move(layout), zero_stage, backend.dtype()) {}

ParameterStore::ParameterStore(Backend& backend, Communicator& comm, Layout layout, int zero_stage, DType grad_dtype,
                               bool overlap_comm)
    : backend_(backend),
      comm_(comm),
      layout_(std::move(layout)),
      plan_(layout_, comm.size()),
      stage_(zero_stage),
      grad_dtype_(grad_dtype),
      es_(dtype_size(backend.dtype())),
      ges_(dtype_size(grad_dtype)),
      overlap_(overlap_comm) {
  if (zero_stage < 0 || zero_stage > 3) fail("dist.zero_stage = {} is not allowed; use 0, 1, 2 or 3", zero_stage);
  if (grad_dtype != backend.dtype() && !(grad_dtype == DType::f32 && backend.dtype() == DType::bf16))
    fail("dist.grad_reduce_dtype: gradients in {} on a {} backend are not supported (allowed: {} or fp32)",
         dtype_name(grad_dtype), dtype_name(backend.dtype()), dtype_name(backend.dtype()));
  for (const ZeroUnit& u : plan_.units())
    if (u.layer >= 0) max_block_ = std::max(max_block_, u.size());
  const ZeroUnit& emb = plan_.unit(plan_.embeddings_unit());
  const ZeroUnit& lnf = plan_.unit(plan_.final_unit());
  other_slot_ = std::max(max_block_, lnf.size());
  const size_t slot_elements = grad_slot_offset(kGradSlots);
  weights_ = DeviceBuffer(backend, (stage_ == 3 ? plan_.shard_size() : layout_.total()) * es_,
                          stage_ == 3 ? "weight shard" : "weights");
  grads_ = DeviceBuffer(backend, (stage_ >= 2 ? plan_.shard_size() : layout_.total()) * ges_,
                        stage_ >= 2 ? "gradient shard" : "gradients");
  backend.fill_zero(weights_.get(), weights_.bytes());
  if (stage_ == 3)
    work_weights_ = DeviceBuffer(backend, (emb.size() + lnf.size() + 2 * max_block_) * es_, "gathered weights");
  if (unit_work_buffers()) work_grads_ = DeviceBuffer(backend, slot_elements * es_, "unit gradients");
  if (stage_ >= 2) {
    reduced_chunk_ = DeviceBuffer(backend, slot_elements / size_t(plan_.world_size()) * ges_, "reduced gradient chunks");
    if (grad_dtype_ != backend.dtype()) wide_unit_ = DeviceBuffer(backend, slot_elements * ges_, "fp32 unit gradients");
  }
  grads_active_.assign(plan_.units().size(), false);
  updated_weights_.assign(plan_.units().size(), 0);
  zero_grads();
}

size_t ParameterStore::working_slot(size_t u) const {
  const ZeroUnit& emb = plan_.unit(plan_.embeddings_unit());
  const ZeroUnit& lnf = plan_.unit(plan_.final_unit());
  if (u == plan_.embeddings_unit()) return 0;
  if (u == plan_.final_unit()) return emb.size();
  return emb.size() + lnf.size() + size_t(plan_.unit(u).layer % 2) * max_block_;
}

size_t ParameterStore::weight_slot_index(size_t u) const {
  if (u == plan_.embeddings_unit()) return 0;
  if (u == plan_.final_unit()) return 1;
  return 2 + size_t(plan_.unit(u).layer % 2);
}

size_t ParameterStore::grad_slot(size_t u) const {
  if (u == plan_.embeddings_unit()) return 0;
  // ln_f comes first in backward, then the blocks from the last down.
  const size_t position = u == plan_.final_unit() ? plan_.units().size() - 2 : size_t(plan_.unit(u).layer);
  return 1 + position % 2;
}

size_t ParameterStore::grad_slot_offset(size_t s) const {
  return s == 0 ? 0 : plan_.unit(plan_.embeddings_unit()).size() + (s - 1) * other_slot_;
}

char* ParameterStore::slot_reduced_chunk(size_t s) const {
  return grad_at(reduced_chunk_.get(), grad_slot_offset(s) / size_t(plan_.world_size()));
}

const void* ParameterStore::acquire_weights(size_t u) {
  const ZeroUnit& unit = plan_.unit(u);
  if (stage_ < 3) {
    // Stages 1-2: the optimizer's gather of this unit's updated chunks.
    if (updated_weights_[u]) backend_waits_for(std::exchange(updated_weights_[u], 0));
    return at(weights_.get(), unit.begin);
  }
  char* slot = at(work_weights_.get(), working_slot(u));
  Pending& gather = pending_gathers_[weight_slot_index(u)];
  if (gather.active && gather.unit == u) {
    backend_waits_for(gather.ticket);
  } else {
    const CollectiveTicket ticket =
        comm_.start_all_gather(at(weights_.get(), unit.shard_offset), slot, unit.chunk, backend_.dtype());
    if (overlap_)
      backend_waits_for(ticket);
    else
      complete_collectives();
  }
  gather.active = false;
  return slot;
}

void ParameterStore::prefetch_weights(size_t u) {
  if (stage_ < 3 || !overlap_) return;
  const ZeroUnit& unit = plan_.unit(u);
  pending_gathers_[weight_slot_index(u)] = {
      true, comm_.start_all_gather(at(weights_.get(), unit.shard_offset), at(work_weights_.get(), working_slot(u)),
                                   unit.chunk, backend_.dtype()),
      u};
}

void* ParameterStore::unit_grads(size_t u) {
  const ZeroUnit& unit = plan_.unit(u);
  if (!unit_work_buffers()) return at(grads_.get(), unit.begin);
  const size_t s = grad_slot(u);
  char* slot = at(work_grads_.get(), grad_slot_offset(s));
  if (!grads_active_[u]) {
    // The slot's previous unit may still be on its way to the other ranks.
    finish_reduction(s);
    backend_.fill_zero(slot, unit.size() * es_);
    grads_active_[u] = true;
  }
  return slot;
}

void ParameterStore::grads_done(size_t u) {
  if (!unit_work_buffers()) {
    start_unit_reduction(u);
    return;
  }
  const ZeroUnit& unit = plan_.unit(u);
  const DType dtype = backend_.dtype();
  const size_t s = grad_slot(u);
  const void* micro_step = unit_grads(u);
  if (stage_ < 2) {
    // f32 gradients, reduced in or after the last micro-step.
    backend_.accumulate(grad_at(grads_.get(), unit.begin), grad_dtype_, micro_step, dtype, unit.size());
    start_unit_reduction(u);
  } else {
    const void* send = micro_step;
    if (grad_dtype_ != dtype) {
      char* wide = grad_at(wide_unit_.get(), grad_slot_offset(s));
      backend_.fill_zero(wide, unit.size() * ges_);
      backend_.accumulate(wide, grad_dtype_, micro_step, dtype, unit.size());
      send = wide;
    }
    pending_reductions_[s] = {
        true, comm_.start_reduce_scatter_sum(send, slot_reduced_chunk(s), unit.chunk, grad_dtype_), u};
    if (!overlap_) complete_collectives();
  }
  grads_active_[u] = false;
}

void ParameterStore::start_unit_reduction(size_t u) {
  if (!reduce_in_backward_) return;
  const ZeroUnit& unit = plan_.unit(u);
  if (stage_ == 0)
    comm_.start_all_reduce_sum(grad_at(grads_.get(), unit.begin), unit.size(), grad_dtype_);
  else
    comm_.start_reduce_scatter_sum(grad_at(grads_.get(), unit.begin),
                                   grad_at(grads_.get(), plan_.owned_begin(u, comm_.rank())), unit.chunk, grad_dtype_);
  ++units_reduced_;
}

void ParameterStore::finish_reduction(size_t s) {
  Pending& reduction = pending_reductions_[s];
  if (!reduction.active) return;
  reduction.active = false;
  backend_waits_for(reduction.ticket);
  const ZeroUnit& unit = plan_.unit(reduction.unit);
  backend_.accumulate(grad_at(grads_.get(), unit.shard_offset), grad_dtype_, slot_reduced_chunk(s), grad_dtype_,
                      unit.chunk);
}

void ParameterStore::backend_waits_for(CollectiveTicket ticket) {
  comm_.wait(ticket);
  backend_waits_ = std::max(backend_waits_, ticket);
}

void ParameterStore::prepare_backend_read() {
  comm_.wait_on_host(backend_waits_);
  // A gather nobody acquired is dropped, so no later pass (after the
  // optimizer has changed the shard) can take its stale weights; a later
  // gather into the same slot runs after it.
  for (Pending& gather : pending_gathers_) gather.active = false;
}

void ParameterStore::complete_collectives() {
  comm_.wait_all();
  for (size_t s = 0; s < kGradSlots; ++s) finish_reduction(s);
  for (Pending& gather : pending_gathers_) gather.active = false;
  std::fill(updated_weights_.begin(), updated_weights_.end(), 0);
}

void ParameterStore::zero_grads() {
  // Reductions of gradients being thrown away: their slots wait for them,
  // their sums are dropped.
  for (Pending& reduction : pending_reductions_)
    if (std::exchange(reduction.active, false)) backend_waits_for(reduction.ticket);
  backend_.fill_zero(grads_.get(), grads_.bytes());
  std::fill(grads_active_.begin(), grads_active_.end(), false);
  reduce_in_backward_ = false;
  units_reduced_ = 0;
}

void ParameterStore::begin_micro_step(bool last) { reduce_in_backward_ = last && overlap_ && stage_ < 2; }

void ParameterStore::reduce_gradients() {
  complete_collectives();
  reduce_in_backward_ = false;
  const size_t reduced = std::exchange(units_reduced_, 0);
  if (reduced == plan_.units().size()) return;
  if (reduced != 0) fail("internal: backward reduced {} of {} units' gradients", reduced, plan_.units().size());
  if (stage_ == 0) {
    comm_.all_reduce_sum(grads_.get(), layout_.total(), grad_dtype_);
  } else if (stage_ == 1) {
    for (size_t u = 0; u < plan_.units().size(); ++u) {
      const ZeroUnit& unit = plan_.unit(u);
      comm_.reduce_scatter_sum(grad_at(grads_.get(), unit.begin),
                               grad_at(grads_.get(), plan_.owned_begin(u, comm_.rank())), unit.chunk, grad_dtype_);
    }
  }
}

double ParameterStore::grad_norm_squared() {
  if (stage_ == 0) return backend_.sum_squares(grads_.get(), grad_dtype_, {{0, layout_.total()}});
  // This rank's chunk of each unit: where it is in the full gradients
  // (stage 1) or in the shard (stages 2-3). One call, one wait.
  std::vector<ElementRange> owned;
  for (size_t u = 0; u < plan_.units().size(); ++u) {
    const size_t begin = stage_ == 1 ? plan_.owned_begin(u, comm_.rank()) : plan_.unit(u).shard_offset;
    owned.push_back({begin, begin + plan_.unit(u).chunk});
  }
  return comm_.all_reduce_sum(backend_.sum_squares(grads_.get(), grad_dtype_, owned));
}

UnitUpdateView ParameterStore::update_view(size_t u) {
  const ZeroUnit& unit = plan_.unit(u);
  UnitUpdateView v;
  if (stage_ == 0) {
    v.begin = unit.begin;
    v.end = unit.end;
    v.weights = weights_.get();
    v.grads = grads_.get();
    v.sr_offset = unit.canonical_begin - unit.begin;  // wraps modulo 2^64; sums are exact
    return v;
  }
  v.begin = plan_.owned_begin(u, comm_.rank());
  v.end = v.begin + unit.chunk;
  v.offset = v.begin - unit.shard_offset;
  v.weights = stage_ == 3 ? weights_.get() : at(weights_.get(), v.offset);
  v.grads = stage_ >= 2 ? grads_.get() : grad_at(grads_.get(), v.offset);
  v.sr_offset = v.offset + unit.canonical_begin - unit.begin;
  return v;
}

void ParameterStore::weights_updated(size_t u) {
  if (overlap_) start_updated_gather(u);
}

void ParameterStore::gather_updated_weights() {
  // With overlap weights_updated has started every unit's gather, and the
  // next pass's acquire_weights waits for each.
  if (overlap_ || (stage_ != 1 && stage_ != 2)) return;
  for (size_t u = 0; u < plan_.units().size(); ++u) start_updated_gather(u);
  complete_collectives();
}

void ParameterStore::start_updated_gather(size_t u) {
  if (stage_ != 1 && stage_ != 2) return;
  const ZeroUnit& unit = plan_.unit(u);
  updated_weights_[u] = comm_.start_all_gather(at(weights_.get(), plan_.owned_begin(u, comm_.rank())),
                                               at(weights_.get(), unit.begin), unit.chunk, backend_.dtype());
}

void ParameterStore::set_weights(const std::vector<float>& values) {
  if (values.size() != layout_.total()) fail("internal: weight vector size mismatch");
  complete_collectives();
  if (stage_ < 3) {
    std::vector<char> bytes = encode(values.data(), values.size(), backend_.dtype());
    backend_.upload(weights_.get(), bytes.data(), bytes.size());
    return;
  }
  for (size_t u = 0; u < plan_.units().size(); ++u) {
    const ZeroUnit& unit = plan_.unit(u);
    std::vector<char> bytes = encode(values.data() + plan_.owned_begin(u, comm_.rank()), unit.chunk, backend_.dtype());
    backend_.upload(at(weights_.get(), unit.shard_offset), bytes.data(), bytes.size());
  }
}

std::vector<char> ParameterStore::full_weights_on_host() {
  std::vector<char> host(layout_.total() * es_);
  complete_collectives();
  if (stage_ < 3) {
    backend_.download(host.data(), weights_.get(), host.size());
    return host;
  }
  for (size_t u = 0; u < plan_.units().size(); ++u) {
    const ZeroUnit& unit = plan_.unit(u);
    const void* gathered = acquire_weights(u);
    complete_collectives();
    backend_.download(host.data() + unit.begin * es_, gathered, unit.size() * es_);
  }
  return host;
}

void ParameterStore::load_full_weights(const std::vector<char>& host) {
  if (host.size() != layout_.total() * es_) fail("internal: weight bytes size mismatch");
  complete_collectives();
  if (stage_ < 3) {
    backend_.upload(weights_.get(), host.data(), host.size());
    return;
  }
  for (size_t u = 0; u < plan_.units().size(); ++u) {
    const ZeroUnit& unit = plan_.unit(u);
    backend_.upload(at(weights_.get(), unit.shard_offset), host.data() + plan_.owned_begin(u, comm_.rank()) * es_,
                    unit.chunk * es_);
  }
}

size_t ParameterStore::weight_bytes() const { return weights_.bytes(); }
size_t ParameterStore::grad_bytes() const { return grads_.bytes(); }
size_t ParameterStore::working_bytes() const {
  return work_weights_.bytes() + work_grads_.bytes() + wide_unit_.bytes() + reduced_chunk_.bytes();
}

size_t ParameterStore::comm_bytes_per_step(int grad_accum) const {
  const size_t n = size_t(comm_.size());
  if (n == 1) return 0;
  // One ring reduce-scatter or all-gather of the whole layout, of weights
  // and of gradients.
  const size_t weight_pass = layout_.total() * es_ * (n - 1) / n, grad_pass = layout_.total() * ges_ * (n - 1) / n;
  const size_t accum = size_t(grad_accum);
  switch (stage_) {
    case 0: return 2 * grad_pass;
    case 1: return grad_pass + weight_pass;
    case 2: return accum * grad_pass + weight_pass;
    default: return accum * (2 * weight_pass + grad_pass);  // gather for forward and backward, reduce-scatter
  }
}

}  // namespace srgpt
