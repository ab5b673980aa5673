#pragma once
// The training loop: gradient accumulation, lr schedule, clipping, periodic
// validation, logging and metrics, checkpoints, resume and preemption.
#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "srgpt/backend.h"
#include "srgpt/checkpoint.h"
#include "srgpt/communicator.h"
#include "srgpt/config.h"
#include "srgpt/data.h"
#include "srgpt/model.h"
#include "srgpt/optimizer.h"
#include "srgpt/posix_file.h"

namespace srgpt {

// Backend for a config: device auto|cpu|cuda and the precision's dtype; a
// GPU is picked by local rank.
std::unique_ptr<Backend> make_backend(const Config& config, int local_rank = 0);
// The communicator for this process: when launched by mpirun/srun, NCCL or
// MPI as dist.communicator says (auto: NCCL for the cuda backend, MPI for
// the cpu backend); else single-process.
std::unique_ptr<Communicator> make_communicator(Backend& backend, CommunicatorChoice choice);

struct EvalResult {
  double loss = 0;  // mean per-token cross-entropy, nats
  int64_t tokens = 0;
  double perplexity() const;
};

// Mean loss over every sample of `data`'s shards in file order, or over the
// first max_tokens tokens' worth (rounded down to whole sequences, at least
// one) when max_tokens > 0: the same sequences whatever the number of ranks
// and the model's batch. Collective: the ranks take turns at batches of
// sequences (the last may be partial) and all get the same mean. `data`'s
// seq_len must be the model's; its batch, shuffle and position do not count.
EvalResult evaluate(GPT& model, const TokenLoader& data, int64_t max_tokens);
// How many sequences evaluate() reads from `data` for this max_tokens.
int64_t evaluation_samples(const TokenLoader& data, int64_t max_tokens);

struct TrainOptions {
  bool resume = false;  // continue from the newest checkpoint in out_dir
  std::filesystem::path resume_from;  // or from this checkpoint directory
  bool quiet = false;  // no per-step log lines (tests)
  int64_t stop_after_step = 0;  // > 0: checkpoint and stop after this step
  bool single_process = false;  // ignore an MPI launcher (reference runs in tests)
  // No data loaders (data.train may be empty): a trainer only for writing a
  // checkpoint of given weights with save() (srgpt import); run() refuses.
  bool without_data = false;
  // Called on every rank after each completed step (tests check replicas).
  std::function<void(int64_t step)> on_step;
};

struct TrainResult {
  int64_t first_step = 1;          // first step this run executed
  int64_t last_step = 0;           // last step completed
  std::vector<double> losses;      // training loss of each executed step
  std::optional<double> val_loss;  // final validation loss, if any
  bool interrupted = false;        // stopped early (SIGTERM/SIGINT, stop_after_step): no final validation
  int64_t skipped_steps = 0;       // non-finite steps skipped
};

class Trainer {
 public:
  Trainer(Config config, TrainOptions options);
  ~Trainer();
  TrainResult run();

  GPT& model() { return *model_; }
  ParameterStore& params() { return *params_; }
  Optimizer& optimizer() { return *optimizer_; }
  Communicator& comm() { return *comm_; }
  const Config& config() const { return config_; }
  // Writes a checkpoint of the current state at `step` (collective).
  std::filesystem::path save(int64_t step);

 private:
  void load(CheckpointReader& reader);
  double train_step(int64_t step, double* grad_norm);
  std::optional<double> validate();

  Config config_;
  TrainOptions options_;
  std::unique_ptr<ExclusiveFileLock> out_dir_lock_;  // rank 0's, for the whole run
  // Declared after the lock, so that a failed start removes the lock file
  // (in an out_dir it made) while still holding the lock.
  StartDirectories start_dirs_;
  std::unique_ptr<Backend> backend_;
  std::unique_ptr<Communicator> comm_;
  // Collectives on host data (checkpoint paths and file tables): comm_
  // itself unless that one works on device memory (NCCL, host-staged MPI).
  std::unique_ptr<Communicator> host_comm_owned_;
  Communicator* host_comm_ = nullptr;
  std::unique_ptr<ParameterStore> params_;
  std::unique_ptr<GPT> model_;
  std::unique_ptr<Optimizer> optimizer_;
  std::unique_ptr<TokenLoader> train_loader_;
  std::unique_ptr<TokenLoader> val_loader_;
  int64_t step_ = 0;  // optimizer steps completed
  int64_t tokens_seen_ = 0;
  int64_t skipped_steps_ = 0;
  std::vector<int32_t> inputs_, targets_;
};

// One optimizer-state buffer ("m", "v", "master", "compensation") of a
// checkpoint written with any world size and ZeRO stage, as a full flat
// buffer in `layout`: stage 0 stores it per tensor, stages 1-3 as each
// rank's flat shard, re-assembled here through the saved shard plan. Needs
// host memory for the whole buffer.
std::vector<char> read_optimizer_state(CheckpointReader& reader, const std::string& name, DType dtype,
                                       const ModelConfig& model, const Layout& layout);

// Model weights from a checkpoint into a fresh single-process model (eval,
// sample, export).
struct LoadedModel {
  Config config;
  std::unique_ptr<Backend> backend;
  std::unique_ptr<Communicator> comm;
  std::unique_ptr<ParameterStore> params;
  std::unique_ptr<GPT> model;
  int64_t step = 0;
};
// The config a checkpoint was trained with.
Config checkpoint_config(const CheckpointReader& reader);
// The sequence length to run `config`'s model at: `seq_len`, or the
// training's batch.seq_len when <= 0; fails past model.max_seq_len.
int inference_seq_len(const Config& config, int seq_len);
// Fails on weights that are not all finite. `batch` <= 0: the training's
// batch.micro_batch; `seq_len` as inference_seq_len.
LoadedModel load_model_for_inference(const std::filesystem::path& checkpoint_dir, int batch, int seq_len);
LoadedModel load_model_for_inference(CheckpointReader& reader, int batch, int seq_len);

// The checkpoint's model at the precision it is trained at, in fp32 and its
// one-rank layout: a mixed run's fp32 master copy (model.bin holds the bf16
// working copy rounded from it), else `lm`'s weights (model.bin's values).
// `lm` is the checkpoint's, from load_model_for_inference. What export writes.
std::vector<float> trained_weights_as_float(CheckpointReader& reader, LoadedModel& lm);

// Everything a resume reads from a checkpoint, read and checked without a
// training config: the state's fields, the weights (finite, in a model)
// and each optimizer-state buffer of its precision (finite, re-assembled
// from any ZeRO sharding). Fails with the first problem. Files the reader
// has already verified are not checksummed again.
void check_checkpoint_loads(CheckpointReader& reader);

}  // namespace srgpt
