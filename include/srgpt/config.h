#pragma once
// The run configuration: one JSON file per run, overridable with
// --set key.path=value. Parsing is strict: an unknown key, a wrong type, an
// out-of-range or inconsistent value is an Error naming the key, the value
// and what is allowed (docs/config.md lists every key).
#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "srgpt/model_config.h"
#include "srgpt/precision.h"

namespace srgpt {

enum class LrDecay { cosine, linear, constant };
enum class NonFinitePolicy { stop, skip };
enum class DeviceChoice { auto_select, cpu, cuda };
enum class CommunicatorChoice { auto_select, nccl, mpi };
enum class GradReduceChoice { auto_select, bf16, fp32 };

struct OptimizerConfig {
  double lr = 6e-4;
  double beta1 = 0.9;
  double beta2 = 0.95;
  double eps = 1e-8;
  double weight_decay = 0.1;
  double grad_clip = 1.0;  // global-norm clip; 0 disables
  int64_t warmup_steps = 0;
  LrDecay decay = LrDecay::cosine;
  double min_lr_ratio = 0.1;  // lr at the last step = lr * min_lr_ratio
};

struct BatchConfig {
  int micro_batch = 4;         // sequences per rank per micro-step
  int seq_len = 64;            // tokens per sequence (<= model.max_seq_len)
  int64_t total_tokens = 256;  // tokens per optimizer step, all ranks
  // micro_batch * seq_len * world_size * grad_accum == total_tokens
  int grad_accum(int world_size) const {
    return int(total_tokens / (int64_t(micro_batch) * seq_len * world_size));
  }
};

struct DataConfig {
  std::string train;  // glob pattern of token shards
  std::string val;    // glob pattern; empty disables validation
};

struct TrainConfig {
  int64_t steps = 100;
  int64_t eval_every = 0;      // 0: only at the end
  int64_t eval_tokens = 0;     // 0: the whole validation split
  int64_t log_every = 1;
  uint64_t seed = 1337;        // init, data order and SR bits
  NonFinitePolicy on_nonfinite = NonFinitePolicy::stop;
  double init_std = 0.02;
  Recompute recompute = Recompute::none;
  int lm_head_chunks = 1;  // row chunks of the LM head + loss (model_config.h)
  LayerNormBackwardFrom layernorm_backward_from = LayerNormBackwardFrom::input;  // (layernorm_math.h)
  double mfu_peak_tflops = 0;  // MFU's denominator per rank; 0: the backend's tensor_peak_flops()

  ActivationOptions activation_options() const { return {recompute, lm_head_chunks, layernorm_backward_from}; }
};

struct CheckpointConfig {
  int64_t every = 0;  // 0: only at the end and on SIGTERM/SIGINT
  int keep = 3;       // newest checkpoints kept; older ones are deleted
};

struct DistConfig {
  int zero_stage = 0;
  // auto: NCCL for the cuda backend, MPI for the cpu backend. mpi with the
  // cuda backend stages device buffers through host memory, so several
  // ranks can share one GPU (NCCL refuses that).
  CommunicatorChoice communicator = CommunicatorChoice::auto_select;
  // The dtype gradients are accumulated over micro-steps, reduced across
  // ranks and handed to the optimizer in. auto: the precision's compute
  // dtype (bf16 in the bf16 modes, the wire carrying bf16 while sums are
  // taken in fp32 and rounded once); fp32: each micro-step's bf16 gradients
  // are added into fp32 buffers, reduced in fp32 (twice the bytes on the
  // wire) and the optimizer reads fp32 gradients (docs/distributed.md).
  GradReduceChoice grad_reduce_dtype = GradReduceChoice::auto_select;
  // Run gradient reductions and weight gathers beside backward and forward
  // instead of between them; the same bits either way
  // (docs/distributed.md).
  bool overlap_comm = true;
  // The resolved dtype for a precision mode.
  DType grad_dtype(Precision precision) const;
};

struct Config {
  ModelConfig model;
  Precision precision = Precision::bf16_sr;
  DeviceChoice device = DeviceChoice::auto_select;
  OptimizerConfig optimizer;
  BatchConfig batch;
  DataConfig data;
  TrainConfig train;
  CheckpointConfig checkpoint;
  DistConfig dist;
  std::string out_dir = "runs/default";

  // Checks the cross-key constraints that need the world size (batch
  // divisibility). Throws Error naming the keys.
  void validate_for_world(int world_size) const;
};

// Parses and validates a full config document. `origin` names the source
// (file path) in error messages.
Config config_from_json(const nlohmann::json& doc, const std::string& origin);
nlohmann::json config_to_json(const Config& config);
// Reads a file, applies "a.b=value" overrides (value parsed as JSON, else
// taken as a string), then parses.
Config load_config(const std::string& path, const std::vector<std::string>& overrides);
// Applies one "a.b=value" override to a document; throws Error for a
// malformed override.
void apply_override(nlohmann::json& doc, const std::string& assignment);

const char* lr_decay_name(LrDecay d);
const char* device_choice_name(DeviceChoice d);
const char* communicator_choice_name(CommunicatorChoice c);
const char* grad_reduce_choice_name(GradReduceChoice g);
const char* nonfinite_policy_name(NonFinitePolicy p);
const char* recompute_name(Recompute r);
const char* layernorm_backward_from_name(LayerNormBackwardFrom f);

// Learning rate at optimizer step t (1-based): linear warmup over
// warmup_steps, then decay to lr * min_lr_ratio at total_steps.
double learning_rate(const OptimizerConfig& o, int64_t t, int64_t total_steps);

}  // namespace srgpt
