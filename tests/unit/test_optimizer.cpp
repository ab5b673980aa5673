// The optimizer against an independent AdamW: fp32 steps through Optimizer
// and the cpu backend match an fp64 AdamW written here from PyTorch's
// definition (torch.optim.AdamW); a step of each bf16 mode stores that
// step rounded as the mode says; bf16-sr steps round weights, m and v
// stochastically, unbiased, with bits of their own that change with the
// step and the seed; and weight decay applies to the tensors
// docs/precision.md names.
#include <cmath>
#include <cstring>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "catch.h"
#include "srgpt/bf16.h"
#include "srgpt/communicator.h"
#include "srgpt/model.h"
#include "srgpt/optimizer.h"
#include "srgpt/safetensors.h"

using namespace srgpt;

namespace {

ModelConfig small_model(int n_layer) {
  ModelConfig cfg;
  cfg.vocab_size = 70;
  cfg.max_seq_len = 12;
  cfg.n_layer = n_layer;
  cfg.n_head = 2;
  cfg.d_model = 16;
  return cfg;
}

// The decayed tensors as docs/precision.md lists them: wte, wpe and the
// attention and MLP weight matrices; not biases or LayerNorm parameters.
std::set<std::string> decayed_names(int n_layer) {
  std::set<std::string> names{"wte", "wpe"};
  for (int l = 0; l < n_layer; ++l)
    for (const char* w : {"attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight"})
      names.insert("h." + std::to_string(l) + "." + w);
  return names;
}

// Settings under which every term of AdamW shows: eps near sqrt(v) for the
// small gradients (so its placement matters, and the clip scale with it),
// betas other than the defaults, decay large enough to move weights. All
// exact in fp32, as the tests' learning rates are too: storing 0.99 in fp32
// alone would change 1 - beta2 by 1e-6.
OptimizerConfig every_term_shows() {
  OptimizerConfig oc;
  oc.beta1 = 0.875;
  oc.beta2 = 0.984375;
  oc.eps = 1.0 / 1024;
  oc.weight_decay = 0.25;
  return oc;
}

// Host bytes of `dtype` values (weights, optimizer state) as floats.
std::vector<float> floats_of(const std::vector<char>& bytes, DType dtype) {
  std::vector<float> f(bytes.size() / dtype_size(dtype));
  convert_to_float(bytes.data(), dtype, f.size(), f.data());
  return f;
}

// A bf16-sr Optimizer's first step from zero state on a model whose weights
// are all 1 and gradients all 1, taken as step t: each element has the same
// fp32 results, so the elements are independent draws of the rounding.
struct SrStepResult {
  std::vector<float> w, m, v;  // the tensors' elements (no padding)
};
SrStepResult bf16_sr_step(const OptimizerConfig& oc, uint64_t seed, int64_t t, double lr, DType grad_dtype) {
  ModelConfig cfg = small_model(2);
  cfg.d_model = 32;
  auto backend = make_cpu_backend(DType::bf16);
  auto comm = make_single_process_communicator(*backend);
  ParameterStore params(*backend, *comm, gpt2_param_layout(cfg, 1), 0, grad_dtype);
  const size_t n = params.layout().total();
  Optimizer opt(params, Precision::bf16_sr, oc, seed);
  opt.set_weights(std::vector<float>(n, 1.0f));
  if (grad_dtype == DType::f32) {
    const std::vector<float> g(n, 1.0f);
    backend->upload(params.grads(), g.data(), n * sizeof(float));
  } else {
    const std::vector<bf16> g(n, float_to_bf16_rn(1.0f));
    backend->upload(params.grads(), g.data(), n * sizeof(bf16));
  }
  opt.step(t, lr, 1.0f);
  const std::vector<float> w = floats_of(params.full_weights_on_host(), DType::bf16);
  const std::vector<std::vector<char>> state = opt.state_on_host();
  const std::vector<float> m = floats_of(state[0], DType::bf16), v = floats_of(state[1], DType::bf16);
  SrStepResult r;
  for (const TensorSpec& tensor : params.layout().tensors())
    for (size_t i = tensor.offset; i < tensor.offset + tensor.numel; ++i) {
      r.w.push_back(w[i]);
      r.m.push_back(m[i]);
      r.v.push_back(v[i]);
    }
  return r;
}

// The bf16 values either side of x > 0, and how far between them x lies:
// the probability stochastic rounding gives the upper one.
struct Bracket {
  float low, high;
  double up_probability;
};
Bracket bf16_bracket(double x) {
  uint32_t bits;
  const float f = float(x);
  std::memcpy(&bits, &f, sizeof bits);
  const uint32_t low_bits = bits & 0xffff0000u, high_bits = low_bits + 0x10000u;
  float low, high;
  std::memcpy(&low, &low_bits, sizeof low);
  std::memcpy(&high, &high_bits, sizeof high);
  return {low, high, (x - low) / (double(high) - low)};
}

// Which elements rounded up; every element must be one of x's two bf16
// neighbours.
std::vector<char> rounded_up(const std::vector<float>& values, const Bracket& b) {
  std::vector<char> up;
  size_t elsewhere = 0;
  for (float x : values) {
    up.push_back(x == b.high);
    elsewhere += x != b.high && x != b.low;
  }
  CHECK(elsewhere == 0);
  return up;
}

// The fraction of elements on which two rounding patterns agree.
double agreement(const std::vector<char>& a, const std::vector<char>& b) {
  size_t same = 0;
  for (size_t i = 0; i < a.size(); ++i) same += a[i] == b[i];
  return double(same) / double(a.size());
}

}  // namespace

TEST_CASE("gpt2_param_layout decays exactly wte, wpe and the blocks' weight matrices", "[optimizer]") {
  for (int n_layer : {1, 3}) {
    const Layout layout = gpt2_param_layout(small_model(n_layer), 1);
    const std::set<std::string> expected = decayed_names(n_layer);
    std::set<std::string> decayed;
    for (const TensorSpec& t : layout.tensors()) {
      INFO(t.name);
      if (t.decay) decayed.insert(t.name);
      CHECK(t.decay == (t.shape.size() == 2));  // the 2-D tensors, and only they
    }
    CHECK(decayed == expected);
  }
}

TEST_CASE("fp32 AdamW steps through the optimizer match an fp64 AdamW to 1e-6", "[optimizer]") {
  const ModelConfig cfg = small_model(2);
  auto backend = make_cpu_backend(DType::f32);
  auto comm = make_single_process_communicator(*backend);
  ParameterStore params(*backend, *comm, gpt2_param_layout(cfg, 1), 0);
  const Layout& layout = params.layout();
  const size_t n = layout.total();
  const OptimizerConfig oc = every_term_shows();
  Optimizer opt(params, Precision::fp32, oc, 1);

  std::random_device rd;
  const uint32_t seed = rd();
  INFO("seed " << seed);
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> normal(0.0, 1.0);
  std::uniform_real_distribution<double> uniform(0.0, 1.0);

  // fp64 reference state. Alignment padding belongs to no tensor and must
  // never change.
  std::vector<float> w0(n);
  for (float& x : w0) x = float(0.5 * normal(rng));
  opt.set_weights(w0);
  std::vector<double> w(w0.begin(), w0.end()), m(n, 0.0), v(n, 0.0);
  std::vector<char> in_tensor(n, 0), decays(n, 0);
  const std::set<std::string> decayed = decayed_names(cfg.n_layer);
  for (const TensorSpec& t : layout.tensors())
    for (size_t i = t.offset; i < t.offset + t.numel; ++i) {
      in_tensor[i] = 1;
      decays[i] = decayed.count(t.name);
    }

  const int steps = 6;
  double lr_sum = 0;
  for (int t = 1; t <= steps; ++t) {
    // Gradients from 1e-5 to 1e-1 in magnitude, both signs.
    std::vector<float> g(n);
    for (float& x : g) x = float(normal(rng) * std::pow(10.0, -5.0 + 4.0 * uniform(rng)));
    backend->upload(params.grads(), g.data(), n * sizeof(float));
    const double lr = double(float(0.005 + 0.015 * uniform(rng)));
    lr_sum += lr;
    const float clip_scale = float(0.5 + 0.5 * uniform(rng));
    opt.step(t, lr, clip_scale);

    // torch.optim.AdamW (decoupled decay, eps added to the bias-corrected
    // sqrt(v)): p *= 1 - lr wd; p -= lr/(1 - b1^t) m / (sqrt(v)/sqrt(1 - b2^t) + eps).
    const double bc1 = 1 - std::pow(oc.beta1, t), bc2 = 1 - std::pow(oc.beta2, t);
    for (size_t i = 0; i < n; ++i) {
      if (!in_tensor[i]) continue;
      const double grad = double(g[i]) * double(clip_scale);
      m[i] = oc.beta1 * m[i] + (1 - oc.beta1) * grad;
      v[i] = oc.beta2 * v[i] + (1 - oc.beta2) * grad * grad;
      if (decays[i]) w[i] *= 1 - lr * oc.weight_decay;
      w[i] -= lr / bc1 * m[i] / (std::sqrt(v[i]) / std::sqrt(bc2) + oc.eps);
    }
  }

  const std::vector<float> got_w = floats_of(params.full_weights_on_host(), DType::f32);
  const std::vector<std::vector<char>> state = opt.state_on_host();
  REQUIRE(state.size() == 2);
  const std::vector<float> got_m = floats_of(state[0], DType::f32), got_v = floats_of(state[1], DType::f32);
  REQUIRE(got_w.size() == n);
  REQUIRE(got_m.size() == n);
  double w_err = 0, m_err = 0, v_err = 0;
  size_t padding_moved = 0;
  for (size_t i = 0; i < n; ++i) {
    if (!in_tensor[i]) {
      padding_moved += got_w[i] != w0[i];
      continue;
    }
    // Relative to the weight plus how far it can move (|direction| ~ 1):
    // a weight that crossed zero has no relative error of its own.
    w_err = std::max(w_err, std::fabs(got_w[i] - w[i]) / (std::fabs(w[i]) + lr_sum));
    m_err = std::max(m_err, std::fabs(got_m[i] - m[i]) / std::sqrt(v[i]));
    v_err = std::max(v_err, std::fabs(got_v[i] - v[i]) / v[i]);
  }
  // fp32 rounds each of the ~10 operations per step to 6e-8: measured at
  // most 2.6e-7 (w), 2.7e-7 (m), 4.7e-7 (v) over 40 seeds. Misplacing eps
  // (inside the sqrt, or beside the uncorrected sqrt(v)) gives errors
  // above 0.1, decaying every tensor 0.02, 0.9 wd 2e-3, lr 3e-6 higher 2e-6.
  INFO("max relative error: w " << w_err << ", m (of sqrt v) " << m_err << ", v " << v_err);
  CHECK(padding_moved == 0);
  CHECK(w_err < 1e-6);
  CHECK(m_err < 1e-6);
  CHECK(v_err < 1e-6);
}

// The spacing of bf16 values around x (x != 0): 8 significant bits.
double bf16_spacing(double x) {
  int exponent;
  std::frexp(x, &exponent);
  return std::ldexp(1.0, exponent - 8);
}

TEST_CASE("a step of each bf16 mode stores the fp64 AdamW step of its state, rounded as the mode says", "[optimizer]") {
  const ModelConfig cfg = small_model(2);
  std::random_device rd;
  const uint32_t seed = rd();
  INFO("seed " << seed);
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> normal(0.0, 1.0);
  std::uniform_real_distribution<double> uniform(0.0, 1.0);
  const OptimizerConfig oc = every_term_shows();
  const int64_t t = 3;
  const double lr = 1.0 / 128, scale = 0.75;
  const double bc1 = 1 - std::pow(oc.beta1, t), bc2 = 1 - std::pow(oc.beta2, t);
  const std::set<std::string> decayed = decayed_names(cfg.n_layer);

  for (Precision mode : {Precision::bf16_rn, Precision::bf16_sr, Precision::mixed, Precision::bf16_kahan}) {
    INFO(precision_name(mode));
    auto backend = make_cpu_backend(DType::bf16);
    auto comm = make_single_process_communicator(*backend);
    ParameterStore params(*backend, *comm, gpt2_param_layout(cfg, 1), 0);
    const size_t n = params.layout().total();
    Optimizer opt(params, mode, oc, 7);
    std::vector<float> w0(n);
    for (float& x : w0) x = float(0.5 * normal(rng));
    opt.set_weights(w0);
    // The state the step starts from: m and v values of the dtype the mode
    // stores them in (m of either sign, v > 0), gradients from 1e-5 to 1e-1.
    const DType state_dtype = optimizer_state_kinds(mode).front().dtype;
    auto storable = [&](double x) {
      return state_dtype == DType::f32 ? float(x) : bf16_to_float(float_to_bf16_rn(float(x)));
    };
    std::vector<float> m0(n), v0(n);
    std::vector<double> g(n);
    std::vector<bf16> g_stored(n);
    for (size_t i = 0; i < n; ++i) {
      const double magnitude = std::pow(10.0, -5.0 + 4.0 * uniform(rng));
      m0[i] = storable(0.5 * magnitude * normal(rng));
      v0[i] = storable(std::pow(magnitude * (0.5 + uniform(rng)), 2));
      g_stored[i] = float_to_bf16_rn(float(magnitude * normal(rng)));
      g[i] = double(bf16_to_float(g_stored[i])) * scale;
    }
    for (const StateBuffer& b : opt.state_buffers()) {
      if (b.name != "m" && b.name != "v") continue;
      const std::vector<float>& values = b.name == "m" ? m0 : v0;
      if (b.dtype == DType::f32) {
        backend->upload(b.data, values.data(), n * sizeof(float));
        continue;
      }
      std::vector<bf16> narrow(n);
      for (size_t i = 0; i < n; ++i) narrow[i] = float_to_bf16_rn(values[i]);  // exact: bf16 values
      backend->upload(b.data, narrow.data(), n * sizeof(bf16));
    }
    backend->upload(params.grads(), g_stored.data(), n * sizeof(bf16));
    const std::vector<float> w_before = floats_of(params.full_weights_on_host(), DType::bf16);
    opt.step(t, lr, float(scale));

    const std::vector<float> w = floats_of(params.full_weights_on_host(), DType::bf16);
    std::vector<float> m, v, master, compensation;
    const std::vector<StateBuffer> kinds = optimizer_state_kinds(mode);
    const std::vector<std::vector<char>> state = opt.state_on_host();
    for (size_t k = 0; k < kinds.size(); ++k) {
      const std::vector<float> values = floats_of(state[k], kinds[k].dtype);
      (kinds[k].name == "m" ? m : kinds[k].name == "v" ? v : kinds[k].name == "master" ? master : compensation) =
          values;
    }
    // Each stored value against the exact one, in units of bf16 spacing
    // where the mode rounds to bf16: to nearest within 0.5 (fp32's own
    // rounding before it is below 1e-3 of a spacing), stochastically to one
    // of the two neighbours. Mixed keeps fp32 m, v and master: 1e-6.
    const bool sr = mode == Precision::bf16_sr;
    const double bf16_bound = sr ? 1.001 : 0.501;
    double w_err = 0, m_err = 0, v_err = 0, master_err = 0, kahan_err = 0;
    size_t checked = 0;
    auto bf16_error = [](double got, double exact) { return std::fabs(got - exact) / bf16_spacing(exact); };
    for (const TensorSpec& tensor : params.layout().tensors()) {
      const double wd = decayed.count(tensor.name) ? oc.weight_decay : 0.0;
      for (size_t i = tensor.offset; i < tensor.offset + tensor.numel; ++i, ++checked) {
        // torch.optim.AdamW, as in the fp32 test.
        const double mi = oc.beta1 * m0[i] + (1 - oc.beta1) * g[i];
        const double vi = oc.beta2 * v0[i] + (1 - oc.beta2) * g[i] * g[i];
        const double before = mode == Precision::mixed ? double(w0[i]) : double(w_before[i]);
        const double after = before - lr * (mi / bc1 / (std::sqrt(vi / bc2) + oc.eps) + wd * before);
        if (mode == Precision::mixed) {
          master_err = std::max(master_err, std::fabs(master[i] - after) / (std::fabs(after) + lr));
          m_err = std::max(m_err, std::fabs(m[i] - mi) / std::sqrt(vi));
          v_err = std::max(v_err, std::fabs(v[i] - vi) / vi);
          continue;
        }
        m_err = std::max(m_err, bf16_error(m[i], mi));
        v_err = std::max(v_err, bf16_error(v[i], vi));
        if (mode == Precision::bf16_kahan) {
          // The weight less its compensation (c holds what w did not take,
          // negated) is the exact step to three bf16 roundings of values the
          // size of the update (the update, the part w absorbed, c: under 2
          // spacings of it; measured at most 0.99 over 40 seeds), after fp32
          // computed the update as a difference of weights (a few fp32
          // roundings of the weight).
          const double allowed = bf16_spacing(after - before) + 4 * std::ldexp(std::fabs(before), -24);
          kahan_err = std::max(kahan_err, std::fabs(double(w[i]) - compensation[i] - after) / allowed);
        } else {
          w_err = std::max(w_err, bf16_error(w[i], after));
        }
      }
    }
    REQUIRE(checked > 5000);
    INFO("max error: w " << w_err << ", m " << m_err << ", v " << v_err << ", master " << master_err
                         << ", w - compensation " << kahan_err);
    if (mode == Precision::mixed) {
      CHECK(master_err < 1e-6);
      CHECK(m_err < 1e-6);
      CHECK(v_err < 1e-6);
    } else {
      CHECK(w_err <= bf16_bound);
      CHECK(m_err <= (sr ? 1.001 : 0.501));
      CHECK(v_err <= (sr ? 1.001 : 0.501));
      CHECK(kahan_err <= 2.0);
    }
  }
}

TEST_CASE("bf16-sr steps through the optimizer round w, m and v stochastically, unbiased, with bits of their own "
          "that change with the step and the seed", "[optimizer][sr]") {
  OptimizerConfig oc;
  oc.beta1 = 0.9;
  oc.beta2 = 0.999;
  oc.eps = 1e-8;
  oc.weight_decay = 0.0;
  const double lr = 1e-3;
  std::random_device rd;
  const uint64_t seed = rd();
  INFO("seed " << seed);
  // Step 1 from zero state with g = 1: m = 0.1, v = 0.001 and the update
  // direction is 1, so w = 1 - lr; none is a bf16 value. At step 2 from
  // zero state m and v are the same and only w's bias correction differs.
  const Bracket m_at = bf16_bracket(1 - oc.beta1), v_at = bf16_bracket(1 - oc.beta2), w_at = bf16_bracket(1 - lr);
  const double bc1 = 1 - oc.beta1 * oc.beta1, bc2 = 1 - oc.beta2 * oc.beta2;
  const Bracket w2_at = bf16_bracket(1 - lr * ((1 - oc.beta1) / bc1) / (std::sqrt((1 - oc.beta2) / bc2) + oc.eps));
  for (DType grad_dtype : {DType::bf16, DType::f32}) {
    INFO("gradients in " << dtype_name(grad_dtype));
    const SrStepResult first = bf16_sr_step(oc, seed, 1, lr, grad_dtype);
    const std::vector<char> w_up = rounded_up(first.w, w_at), m_up = rounded_up(first.m, m_at),
                            v_up = rounded_up(first.v, v_at);
    const double n = double(w_up.size());
    REQUIRE(n > 20000);
    // Unbiased: each rounds up as often as x's place between its
    // neighbours says, within 5 binomial standard deviations (round to
    // nearest gives 0 or 1, far outside).
    auto check_frequency = [&](const char* what, const std::vector<char>& up, const Bracket& at) {
      double ups = 0;
      for (char u : up) ups += u;
      const double sd = std::sqrt(at.up_probability * (1 - at.up_probability) / n);
      INFO(what << ": rounded up " << ups / n << ", expected " << at.up_probability << " +- " << sd);
      CHECK(std::fabs(ups / n - at.up_probability) < 5 * sd);
    };
    check_frequency("w", w_up, w_at);
    check_frequency("m", m_up, m_at);
    check_frequency("v", v_up, v_at);
    // Two patterns drawn with independent bits agree with probability
    // pq + (1-p)(1-q); the same bits would agree far more often.
    auto check_independent = [&](const char* what, const std::vector<char>& a, const Bracket& a_at,
                                 const std::vector<char>& b, const Bracket& b_at) {
      const double p = a_at.up_probability, q = b_at.up_probability;
      const double expected = p * q + (1 - p) * (1 - q);
      const double sd = std::sqrt(expected * (1 - expected) / n);
      INFO(what << ": agree on " << agreement(a, b) << ", independent: " << expected << " +- " << sd);
      CHECK(std::fabs(agreement(a, b) - expected) < 5 * sd);
    };
    check_independent("w and m", w_up, w_at, m_up, m_at);
    check_independent("w and v", w_up, w_at, v_up, v_at);
    check_independent("m and v", m_up, m_at, v_up, v_at);
    // New bits at each step and for each seed.
    const SrStepResult second = bf16_sr_step(oc, seed, 2, lr, grad_dtype);
    check_frequency("w at step 2", rounded_up(second.w, w2_at), w2_at);
    check_independent("m at steps 1 and 2", m_up, m_at, rounded_up(second.m, m_at), m_at);
    check_independent("v at steps 1 and 2", v_up, v_at, rounded_up(second.v, v_at), v_at);
    const SrStepResult reseeded = bf16_sr_step(oc, seed + 1, 1, lr, grad_dtype);
    check_independent("w of seeds s and s + 1", w_up, w_at, rounded_up(reseeded.w, w_at), w_at);
    // The same seed and step give the same bits.
    const SrStepResult again = bf16_sr_step(oc, seed, 1, lr, grad_dtype);
    CHECK(again.w == first.w);
    CHECK(again.m == first.m);
    CHECK(again.v == first.v);
  }
}

TEST_CASE("mixed mode's bf16 copy is its fp32 master rounded to nearest, after set_weights and after each step",
          "[optimizer]") {
  const ModelConfig cfg = small_model(2);
  auto backend = make_cpu_backend(DType::bf16);
  auto comm = make_single_process_communicator(*backend);
  ParameterStore params(*backend, *comm, gpt2_param_layout(cfg, 1), 0);
  const size_t n = params.layout().total();
  Optimizer opt(params, Precision::mixed, OptimizerConfig{}, 1);
  std::random_device rd;
  const uint32_t seed = rd();
  INFO("seed " << seed);
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, 0.02f);
  std::vector<float> values(n);
  for (float& x : values) x = normal(rng);  // almost none a bf16 value
  opt.set_weights(values);
  const std::vector<std::vector<char>> state = opt.state_on_host();
  REQUIRE(state.size() == 3);  // m, v, master
  CHECK(floats_of(state[2], DType::f32) == values);
  const std::vector<float> copy = floats_of(params.full_weights_on_host(), DType::bf16);
  size_t not_nearest = 0;
  for (size_t i = 0; i < n; ++i) not_nearest += copy[i] != bf16_to_float(float_to_bf16_rn(values[i]));
  CHECK(not_nearest == 0);

  // The step writes the copy the forward reads: rounded to nearest too, where
  // truncating the master would differ for about half the elements.
  std::vector<bf16> grads(n);
  for (int64_t t = 1; t <= 3; ++t) {
    INFO("step " << t);
    for (bf16& g : grads) g = float_to_bf16_rn(normal(rng));
    backend->upload(params.grads(), grads.data(), n * sizeof(bf16));
    opt.step(t, 1e-3, 1.0f);
    const std::vector<float> master = floats_of(opt.state_on_host()[2], DType::f32);
    const std::vector<float> stepped = floats_of(params.full_weights_on_host(), DType::bf16);
    REQUIRE(master != values);
    size_t wrong = 0, truncation_differs = 0;
    for (size_t i = 0; i < n; ++i) {
      const float nearest = bf16_to_float(float_to_bf16_rn(master[i]));
      uint32_t bits;
      std::memcpy(&bits, &master[i], sizeof bits);
      wrong += stepped[i] != nearest;
      truncation_differs += bf16_to_float(bf16{uint16_t(bits >> 16)}) != nearest;
    }
    CHECK(wrong == 0);
    CHECK(truncation_differs > n / 4);
  }
}

TEST_CASE("clip_scale is clip / norm exactly when the norm exceeds a positive clip and else 1",
          "[optimizer][clip]") {
  std::random_device rd;
  const uint32_t seed = rd();
  INFO("seed " << seed);
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<double> log_uniform(-6.0, 6.0), ratio(-3.0, 3.0);
  // Norms from 2.5e-3 to 400, on both sides of 1 (where comparing the clip
  // with norm^2 instead of norm errs one way or the other), with clips from
  // 20x below to 20x above them. The trainer tests clip only far below or
  // far above the norm.
  size_t clipped = 0, kept = 0, wrong = 0;
  for (int trial = 0; trial < 2000; ++trial) {
    const double norm = std::exp(log_uniform(rng)), clip = norm * std::exp(ratio(rng));
    const float want = norm > clip ? float(clip / norm) : 1.0f;
    const float got = clip_scale(norm, clip);
    if (got != want && wrong++ == 0)
      UNSCOPED_INFO("first wrong: norm " << norm << " clip " << clip << ": " << got << " not " << want);
    (norm > clip ? clipped : kept) += 1;
    wrong += clip_scale(norm, 0.0) != 1.0f;  // grad_clip 0 never clips
  }
  CHECK(wrong == 0);
  CHECK(clipped > 500);
  CHECK(kept > 500);
  // A norm exactly at the clip is not scaled.
  CHECK(clip_scale(0.75, 0.75) == 1.0f);
}
