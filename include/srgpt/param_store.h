#pragma once
// Where the weights and gradients of a data-parallel rank live, for each
// ZeRO stage (DESIGN.md section 5; docs/distributed.md):
//
//   stage 0  full weights, full gradients (all-reduced); optimizer state full
//   stage 1  full weights, full gradients (reduce-scattered to the owner);
//            optimizer state sharded; updated chunks all-gathered
//   stage 2  full weights; gradients only as the owned shard (each unit's
//            gradients are reduce-scattered as soon as backward finishes it)
//   stage 3  weights only as the owned shard too; a unit's weights are
//            gathered into a working buffer when the model needs them
//
// The model asks for each unit's weights and gradient buffer through this
// class; the optimizer asks for the range of each unit this rank updates.
//
// Gradients are kept in grad_dtype: the backend's dtype, or f32 on a bf16
// backend (dist.grad_reduce_dtype = fp32). Backward always writes a
// micro-step's gradients in the backend's dtype; with f32 gradients it
// writes them into per-unit working buffers, which grads_done adds into the
// f32 gradients (stages 0-1) or converts to f32 and reduce-scatters
// (stages 2-3), so sums over micro-steps and ranks are taken in f32.
//
// With overlap_comm the collectives run beside backward (the
// communicator's start_* calls; docs/distributed.md): stages 2-3
// reduce-scatter a unit while backward computes the next one, which writes
// its gradients into the other of two working slots; stages 0-1 reduce
// each unit in the step's last micro-step as soon as backward finishes it;
// stage 3 gathers the next unit's weights while the model computes this
// one (prefetch_weights); stages 1-2 gather the optimizer's updated chunks
// while the next pass begins. The reductions and their bits are the same as
// without overlap, only their timing differs.
#include <array>
#include <cstddef>
#include <cstdint>
#include <vector>

#include "srgpt/backend.h"
#include "srgpt/communicator.h"
#include "srgpt/layout.h"
#include "srgpt/zero.h"

namespace srgpt {

// The part of unit u this rank updates: flat layout range [begin, end), and
// base pointers such that the element at flat index i has local index
// i - offset (its place in the optimizer-state buffers, and in weights and
// grads through these base pointers).
struct UnitUpdateView {
  size_t begin = 0, end = 0;  // flat layout indices owned by this rank
  size_t offset = 0;          // flat index - local (state-buffer) index
  uint64_t sr_offset = 0;     // local index + sr_offset = world-size-independent SR counter
  void* weights = nullptr;    // indexed by local index
  const void* grads = nullptr;
};

class ParameterStore {
 public:
  ParameterStore(Backend& backend, Communicator& comm, Layout layout, int zero_stage);
  ParameterStore(Backend& backend, Communicator& comm, Layout layout, int zero_stage, DType grad_dtype,
                 bool overlap_comm = true);

  Backend& backend() { return backend_; }
  Communicator& comm() { return comm_; }
  const Layout& layout() const { return layout_; }
  const ZeroShardPlan& plan() const { return plan_; }
  DType grad_dtype() const { return grad_dtype_; }
  // Elements of each optimizer-state buffer on this rank.
  size_t state_elements() const { return stage_ == 0 ? layout_.total() : plan_.shard_size(); }

  // ---- the model's side
  // Base pointer of unit u's full weights: tensor t is at base + (t.offset -
  // unit.begin) elements. Under stage 3 this gathers the unit into a working
  // slot (the embeddings and ln_f have one each; blocks alternate between
  // two, so blocks l and l+1 are valid together) and the pointer stays valid
  // until another unit is acquired or prefetched into the same slot.
  const void* acquire_weights(size_t u);
  // Stage 3 with overlap: starts gathering unit u into its slot, so that
  // acquire_weights(u) later finds it there. The model calls it once the
  // work that reads the slot's present unit has been queued.
  void prefetch_weights(size_t u);
  // Base pointer (as above) of the buffer backward accumulates unit u's
  // gradients into during the current micro-step (backend dtype).
  void* unit_grads(size_t u);
  // Backward has finished unit u for this micro-step.
  void grads_done(size_t u);
  // Waits on the host (watching for peers that failed or hang) for the
  // collectives the backend's queued work waits for, so that reading a
  // result of that work cannot hang on a peer; the model calls it before
  // it reads the loss. Those nothing waits for yet go on: the embeddings'
  // reduce-scatter (stages 2-3), waited for by the next micro-step's LM
  // head or by reduce_gradients.
  void prepare_backend_read();
  // Waits on the host for every collective started so far and finishes
  // their bookkeeping.
  void complete_collectives();

  // ---- the trainer's and optimizer's side
  // This rank's weight buffer: the full layout for stages 0-2, the shard
  // for stage 3; and the gradient buffer (grad_dtype): full for stages 0-1,
  // shard after.
  void* weights() { return weights_.get(); }
  void* grads() { return grads_.get(); }
  void zero_grads();
  // Called before each micro-step's forward: whether it is the step's last,
  // whose backward then starts stages 0-1's reductions (with overlap).
  void begin_micro_step(bool last);
  // After the last micro-step: stage 0 all-reduces, stage 1 reduce-scatters
  // (or waits for backward's reductions of every unit).
  void reduce_gradients();
  // Sum of squared gradients of the whole model, identical on every rank.
  double grad_norm_squared();
  UnitUpdateView update_view(size_t u);
  // The optimizer step calls weights_updated(u) once it has queued unit u's
  // update, for every unit, then gather_updated_weights. Stages 1 and 2
  // all-gather the updated chunks: with overlap, each unit's gather starts
  // in weights_updated, beside the updates of the units after it, and the
  // next pass's acquire_weights of the unit waits for it; without, every
  // unit's gather runs and is waited for in gather_updated_weights.
  void weights_updated(size_t u);
  void gather_updated_weights();
  // Sets this rank's weights from fp32 values for the whole layout.
  void set_weights(const std::vector<float>& values);
  // The whole model's weights in host memory (stage 3 gathers unit by
  // unit; every rank must call it).
  std::vector<char> full_weights_on_host();
  // Replaces the weights from a full host copy in the layout.
  void load_full_weights(const std::vector<char>& host);

  // Persistent bytes on this rank, and working buffers.
  size_t weight_bytes() const;
  size_t grad_bytes() const;
  size_t working_bytes() const;
  // Bytes sent per optimizer step by this rank's collectives (approximate
  // wire volume of ring algorithms), for the log.
  size_t comm_bytes_per_step(int grad_accum) const;

 private:
  char* at(void* base, size_t elements) const { return static_cast<char*>(base) + elements * es_; }
  char* grad_at(void* base, size_t elements) const { return static_cast<char*>(base) + elements * ges_; }
  size_t working_slot(size_t u) const;
  // Backward writes into per-unit working buffers rather than grads_.
  bool unit_work_buffers() const { return stage_ >= 2 || grad_dtype_ != backend_.dtype(); }
  // The working gradient slots: 0 for the embeddings (the LM head writes
  // wte's gradient first, the embedding backward last), 1 and 2 alternate
  // between ln_f and the blocks in backward order. Offsets in elements;
  // every unit's size is a multiple of the world size, and so are these.
  static constexpr size_t kGradSlots = 3;
  size_t grad_slot(size_t u) const;
  size_t grad_slot_offset(size_t s) const;
  // Stages 2-3: where slot s's reduce-scatter leaves this rank's chunk.
  char* slot_reduced_chunk(size_t s) const;
  // Stages 0-1 in the last micro-step with overlap: starts reducing unit u.
  void start_unit_reduction(size_t u);
  // Stages 2-3: the slot's pending reduce-scatter is waited for and added
  // into the gradient shard.
  void finish_reduction(size_t s);
  // Stage 3: which of the four weight slots unit u is gathered into.
  size_t weight_slot_index(size_t u) const;
  // Stages 1-2: starts all-gathering unit u's updated chunks.
  void start_updated_gather(size_t u);
  // comm_.wait(ticket), remembering the latest ticket the backend waits for.
  void backend_waits_for(CollectiveTicket ticket);

  Backend& backend_;
  Communicator& comm_;
  Layout layout_;
  ZeroShardPlan plan_;
  int stage_;
  DType grad_dtype_;
  size_t es_, ges_;
  DeviceBuffer weights_;     // full (stages 0-2) or shard (stage 3)
  DeviceBuffer grads_;       // grad dtype: full (stages 0-1) or shard (stages 2-3)
  DeviceBuffer work_weights_;  // stage 3: embeddings | ln_f | block slot 0 | block slot 1
  DeviceBuffer work_grads_;    // unit_work_buffers(): the gradient slots (backend dtype)
  DeviceBuffer wide_unit_;     // stages 2-3 with f32 gradients: the slots' gradients in f32
  DeviceBuffer reduced_chunk_; // stages 2-3: each slot's reduce-scatter result (grad dtype)
  std::vector<bool> grads_active_;
  size_t max_block_ = 0;
  size_t other_slot_ = 0;  // elements of gradient slots 1 and 2: the largest block or ln_f
  bool overlap_;

  // A started collective not yet waited for: per gradient slot (stages
  // 2-3's reduce-scatters) and per weight slot (stage 3's gathers).
  struct Pending {
    bool active = false;
    CollectiveTicket ticket = 0;
    size_t unit = 0;
  };
  std::array<Pending, kGradSlots> pending_reductions_;
  std::array<Pending, 4> pending_gathers_;
  // Stages 1-2: each unit's gather of the updated chunks, started by the
  // optimizer and waited for by the next acquire_weights (0: none).
  std::vector<CollectiveTicket> updated_weights_;
  CollectiveTicket backend_waits_ = 0;  // the latest ticket the backend's work was made to wait for
  bool reduce_in_backward_ = false;    // stages 0-1: this micro-step's backward reduces each unit
  size_t units_reduced_ = 0;           // units whose reduction backward has started this step
};

}  // namespace srgpt
