// Whole-model gradients in fp32 against central finite differences of the
// loss computed in fp64, for every parameter tensor.
#include <cmath>
#include <random>
#include <vector>

#include "catch.h"
#include "srgpt/backend.h"
#include "srgpt/communicator.h"
#include "srgpt/model.h"

using namespace srgpt;

namespace {

template <typename T>
std::vector<T> to_storage(const std::vector<double>& x) {
  return std::vector<T>(x.begin(), x.end());
}

// A single-process model on the cpu backend with the given storage dtype.
struct CpuModel {
  CpuModel(const ModelConfig& cfg, DType dtype, int B, int T)
      : backend(make_cpu_backend(dtype)),
        comm(make_single_process_communicator(*backend)),
        params(*backend, *comm, gpt2_param_layout(cfg), 0),
        model(cfg, params, B, T) {}
  std::unique_ptr<Backend> backend;
  std::unique_ptr<Communicator> comm;
  ParameterStore params;
  GPT model;
};

}  // namespace

TEST_CASE("fp32 analytic gradients match fp64 central finite differences on every tensor", "[gradcheck]") {
  ModelConfig cfg;
  cfg.vocab_size = 50;  // padded to 128: padded rows must get zero gradient
  cfg.max_seq_len = 8;
  cfg.n_layer = 2;
  cfg.n_head = 2;
  cfg.d_model = 8;
  const int B = 2, T = 7;
  const Layout layout = gpt2_param_layout(cfg);
  const size_t P = layout.total();

  // Random weights (larger than GPT-2 init so every path carries signal).
  std::mt19937_64 rng(31337);
  std::normal_distribution<double> nd(0.0, 0.3);
  std::vector<double> w(P, 0.0);
  for (const TensorSpec& t : layout.tensors()) {
    const bool ln_weight = t.name.find("ln_") != std::string::npos && t.name.find("weight") != std::string::npos;
    size_t n = t.name == "wte" ? size_t(cfg.vocab_size) * cfg.d_model : t.numel;
    for (size_t i = 0; i < n; ++i) w[t.offset + i] = (ln_weight ? 1.0 : 0.0) + nd(rng);
  }
  std::vector<int32_t> in(B * T), tg(B * T);
  for (int i = 0; i < B * T; ++i) {
    in[i] = int32_t(rng() % cfg.vocab_size);
    tg[i] = int32_t(rng() % cfg.vocab_size);
  }

  // Analytic gradient of the mean loss in fp32.
  CpuModel m32(cfg, DType::f32, B, T);
  auto w32 = to_storage<float>(w);
  m32.backend->upload(m32.params.weights(), w32.data(), P * sizeof(float));
  m32.params.zero_grads();
  m32.model.forward_backward(in.data(), tg.data(), 1.0f / float(B * T));
  std::vector<float> g32(P);
  m32.backend->download(g32.data(), m32.params.grads(), P * sizeof(float));

  // Loss in fp64 as a function of the weights.
  CpuModel m64(cfg, DType::f64, B, T);
  auto loss64 = [&](const std::vector<double>& x) {
    m64.backend->upload(m64.params.weights(), x.data(), P * sizeof(double));
    return m64.model.forward(in.data(), tg.data());
  };
  // fp64 analytic gradient too: checks the backward formulas tightly.
  m64.backend->upload(m64.params.weights(), w.data(), P * sizeof(double));
  m64.params.zero_grads();
  m64.model.forward_backward(in.data(), tg.data(), 1.0 / double(B * T));
  std::vector<double> g64(P);
  m64.backend->download(g64.data(), m64.params.grads(), P * sizeof(double));

  const double h = 1e-5;
  std::vector<double> x = w;
  for (const TensorSpec& t : layout.tensors()) {
    // Up to 24 elements per tensor, spread over it, plus a padded wte row.
    std::vector<size_t> idx;
    const size_t stride = std::max<size_t>(1, t.numel / 24);
    for (size_t i = 0; i < t.numel; i += stride) idx.push_back(i);
    if (t.name == "wte") idx.push_back(size_t(cfg.vocab_size) * cfg.d_model + 3);
    double num = 0, den = 0, num64 = 0;
    for (size_t i : idx) {
      const size_t k = t.offset + i;
      x[k] = w[k] + h;
      const double lp = loss64(x);
      x[k] = w[k] - h;
      const double lm = loss64(x);
      x[k] = w[k];
      const double fd = (lp - lm) / (2 * h);
      num += (double(g32[k]) - fd) * (double(g32[k]) - fd);
      num64 += (g64[k] - fd) * (g64[k] - fd);
      den += fd * fd;
    }
    const double rel32 = std::sqrt(num / std::max(den, 1e-30));
    const double rel64 = std::sqrt(num64 / std::max(den, 1e-30));
    INFO(t.name << ": |g32 - fd| / |fd| = " << rel32 << ", |g64 - fd| / |fd| = " << rel64 << ", |fd| = "
                << std::sqrt(den));
    REQUIRE(den > 1e-16);  // every tensor carries gradient
    // fp32 storage and math: relative error well under 1e-3; fp64: the
    // finite-difference truncation error O(h^2) only.
    CHECK(rel32 < 1e-3);
    CHECK(rel64 < 1e-6);
  }
  // Padded vocabulary rows receive exactly zero gradient.
  const TensorSpec& wte = layout.at("wte");
  for (size_t i = size_t(cfg.vocab_size) * cfg.d_model; i < wte.numel; ++i) REQUIRE(g32[wte.offset + i] == 0.0f);
}
