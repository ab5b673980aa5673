// Per-rank memory of the GPT-2 shapes in configs/gpt2-d*.json for each ZeRO
// stage and world size, as markdown tables (docs/distributed.md). Computed
// by rank_memory from the real parameter layout and shard plan; the unit
// test [zero][memory] checks rank_memory against the buffers ParameterStore
// and Optimizer allocate.
//   zero_memory_table
#include <cstdio>
#include <functional>
#include <iterator>

#include <CLI/CLI.hpp>

#include "srgpt/model.h"
#include "srgpt/zero.h"

namespace {

using srgpt::Precision;
using srgpt::RankMemory;

struct NamedShape {
  const char* name;
  srgpt::ModelConfig model;
};

srgpt::ModelConfig gpt2(int n_layer, int d_model, int n_head) {
  srgpt::ModelConfig m;
  m.vocab_size = 50257;
  m.max_seq_len = 1024;
  m.n_layer = n_layer;
  m.d_model = d_model;
  m.n_head = n_head;
  return m;
}

const NamedShape kShapes[] = {
    {"d12", gpt2(12, 768, 12)}, {"d24", gpt2(24, 1024, 16)}, {"d36", gpt2(36, 1280, 20)}, {"d48", gpt2(48, 1600, 25)}};
const int kWorldSizes[] = {1, 2, 4, 8};

double gib(size_t bytes) { return double(bytes) / double(size_t{1} << 30); }

// One table: a row per (model, ZeRO stage), a column per world size, each
// cell `bytes` of that rank's RankMemory in GiB.
void print_table(const char* title, Precision precision, const std::function<size_t(const RankMemory&)>& bytes) {
  std::printf("%s\n\n| model | params | ZeRO |", title);
  for (int n : kWorldSizes) std::printf(" %d rank%s |", n, n == 1 ? "" : "s");
  std::printf("\n|---|---:|---:|");
  for (size_t i = 0; i < std::size(kWorldSizes); ++i) std::printf("---:|");
  std::printf("\n");
  for (const NamedShape& shape : kShapes) {
    const double params_m = double(srgpt::gpt2_param_layout(shape.model, 1).num_params()) / 1e6;
    for (int stage = 0; stage <= 3; ++stage) {
      std::printf("| %s | %.0fM | %d |", shape.name, params_m, stage);
      for (int n : kWorldSizes)
        std::printf(" %.2f |", gib(bytes(srgpt::rank_memory(srgpt::gpt2_param_layout(shape.model, n), precision,
                                                             stage, n, srgpt::compute_dtype(precision)))));
      std::printf("\n");
    }
  }
  std::printf("\n");
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"Per-rank memory of GPT-2 d12-d48 for each ZeRO stage and world size, as markdown tables"};
  CLI11_PARSE(app, argc, argv);
  const auto persistent = [](const RankMemory& r) { return r.persistent(); };
  print_table("Persistent GiB per rank (weights + gradients + optimizer state), bf16-sr", Precision::bf16_sr,
              persistent);
  print_table("Persistent GiB per rank (weights + gradients + optimizer state), mixed", Precision::mixed, persistent);
  print_table("ZeRO working buffers, GiB per rank (bf16; the same for bf16-sr and mixed)", Precision::bf16_sr,
              [](const RankMemory& r) { return r.working; });
  return 0;
}
