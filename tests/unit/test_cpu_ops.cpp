// The cpu backend's ops: every backward against central finite differences
// of its forward in f64, f32/bf16 against f64, matmul and attention against
// naive versions, bitwise determinism across thread counts, and AdamW
// against direct calls of the adamw_math.h element functions.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <limits>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <type_traits>
#include <vector>

#include "catch.h"
#include "srgpt/backend.h"
#include "srgpt/error.h"

using namespace srgpt;

namespace {

using Values = std::vector<double>;
using Bytes = std::vector<unsigned char>;

Values random_values(std::mt19937_64& rng, size_t n, double lo = -1.0, double hi = 1.0) {
  std::uniform_real_distribution<double> dist(lo, hi);
  Values x(n);
  for (double& v : x) v = dist(rng);
  return x;
}

double bf16_round(double x) { return bf16_to_float(float_to_bf16_rn(float(x))); }

Values round_to_bf16(Values x) {
  for (double& v : x) v = bf16_round(v);
  return x;
}

Values minus(Values a, const Values& b) {
  for (size_t i = 0; i < a.size(); ++i) a[i] -= b[i];
  return a;
}

double max_abs(const Values& x) {
  double m = 0;
  for (double v : x) m = std::max(m, std::fabs(v));
  return m;
}

// max |x - ref| / max |ref|: the error relative to the tensor's scale.
double relative_error(const Values& x, const Values& ref) {
  double err = 0;
  for (size_t i = 0; i < ref.size(); ++i) err = std::max(err, std::fabs(x[i] - ref[i]));
  return err / std::max(max_abs(ref), 1e-30);
}

Bytes encode(DType type, const Values& x) {
  Bytes bytes(x.size() * dtype_size(type));
  for (size_t i = 0; i < x.size(); ++i) {
    if (type == DType::bf16) {
      bf16 h = float_to_bf16_rn(float(x[i]));
      std::memcpy(&bytes[2 * i], &h, 2);
    } else if (type == DType::f32) {
      float f = float(x[i]);
      std::memcpy(&bytes[4 * i], &f, 4);
    } else {
      std::memcpy(&bytes[8 * i], &x[i], 8);
    }
  }
  return bytes;
}

Values decode(DType type, const Bytes& bytes) {
  Values x(bytes.size() / dtype_size(type));
  for (size_t i = 0; i < x.size(); ++i) {
    if (type == DType::bf16) {
      bf16 h;
      std::memcpy(&h, &bytes[2 * i], 2);
      x[i] = bf16_to_float(h);
    } else if (type == DType::f32) {
      float f;
      std::memcpy(&f, &bytes[4 * i], 4);
      x[i] = f;
    } else {
      std::memcpy(&x[i], &bytes[8 * i], 8);
    }
  }
  return x;
}

// A cpu backend plus moving double vectors in and out of it in its storage
// dtype or its statistics (accumulation) dtype.
struct Device {
  explicit Device(DType t) : dtype(t), backend(make_cpu_backend(t)) {}
  Backend& be() { return *backend; }

  DeviceBuffer put_bytes(const Bytes& bytes) {
    DeviceBuffer buf(*backend, std::max<size_t>(bytes.size(), 1), "test tensor");
    backend->upload(buf.get(), bytes.data(), bytes.size());
    return buf;
  }
  Bytes get_bytes(const DeviceBuffer& buf) {
    Bytes bytes(buf.bytes());
    backend->download(bytes.data(), buf.get(), bytes.size());
    return bytes;
  }
  DeviceBuffer put(const Values& x) { return put_bytes(encode(dtype, x)); }
  DeviceBuffer put_stats(const Values& x) { return put_bytes(encode(accum_dtype(dtype), x)); }
  // Overwritten outputs start as NaN, so an element an op fails to write
  // (or reads before writing) shows up.
  DeviceBuffer poisoned(size_t n) { return put(Values(n, std::numeric_limits<double>::quiet_NaN())); }
  DeviceBuffer poisoned_stats(size_t n) { return put_stats(Values(n, std::numeric_limits<double>::quiet_NaN())); }
  DeviceBuffer put_ints(const std::vector<int32_t>& v) {
    Bytes bytes(v.size() * sizeof(int32_t));
    std::memcpy(bytes.data(), v.data(), bytes.size());
    return put_bytes(bytes);
  }
  Values get(const DeviceBuffer& buf, size_t n) {
    Bytes bytes = get_bytes(buf);
    bytes.resize(n * dtype_size(dtype));
    return decode(dtype, bytes);
  }
  Values get_stats(const DeviceBuffer& buf, size_t n) {
    Bytes bytes = get_bytes(buf);
    bytes.resize(n * dtype_size(accum_dtype(dtype)));
    return decode(accum_dtype(dtype), bytes);
  }

  DType dtype;
  std::unique_ptr<Backend> backend;
};

// Sets the OpenMP thread count for a scope.
class ThreadCount {
 public:
  explicit ThreadCount(int n) : saved_(omp_get_max_threads()) { omp_set_num_threads(n); }
  ~ThreadCount() { omp_set_num_threads(saved_); }
  ThreadCount(const ThreadCount&) = delete;
  ThreadCount& operator=(const ThreadCount&) = delete;

 private:
  int saved_;
};

// Gradient outputs that accumulate start from these values (bf16-exact, so
// every dtype starts from the same numbers); the test subtracts them again,
// so a backward that overwrote instead of adding would fail.
Values accumulation_base(size_t n, uint64_t salt) {
  std::mt19937_64 rng(1000 + salt);
  return round_to_bf16(random_values(rng, n, -0.25, 0.25));
}

using Inputs = std::vector<Values>;
using Buffers = std::map<std::string, DeviceBuffer>;

// An op as a function of its differentiable inputs: forward returns its
// outputs; backward returns the gradient of sum_o <cotangent_o, output_o>
// with respect to each input.
struct OpUnderTest {
  std::string name;
  Inputs inputs;
  std::function<std::vector<Values>(Device&, const Inputs&)> forward;
  std::function<std::vector<Values>(Device&, const Inputs&, const std::vector<Values>&)> backward;
};

// ---- the ops, at odd sizes

OpUnderTest embedding_op() {
  const int B = 2, T = 7, C = 12, V = 11;
  std::mt19937_64 rng(11);
  std::vector<int32_t> tokens(B * T);
  for (auto& t : tokens) t = int32_t(rng() % V);
  tokens[5] = tokens[9] = tokens[0];  // a token seen three times
  OpUnderTest op;
  op.name = "embedding";
  op.inputs = {random_values(rng, V * C), random_values(rng, T * C)};
  op.forward = [=](Device& dev, const Inputs& x) {
    auto wte = dev.put(x[0]), wpe = dev.put(x[1]), tok = dev.put_ints(tokens), out = dev.poisoned(B * T * C);
    dev.be().embedding_forward(out.get(), tok.as<int32_t>(), wte.get(), wpe.get(), B, T, C);
    return std::vector<Values>{dev.get(out, B * T * C)};
  };
  op.backward = [=](Device& dev, const Inputs&, const std::vector<Values>& dy) {
    Values base_wte = accumulation_base(V * C, 1), base_wpe = accumulation_base(T * C, 2);
    auto dwte = dev.put(base_wte), dwpe = dev.put(base_wpe), dout = dev.put(dy[0]), tok = dev.put_ints(tokens);
    dev.be().embedding_backward(dwte.get(), dwpe.get(), dout.get(), tok.as<int32_t>(), B, T, C);
    return std::vector<Values>{minus(dev.get(dwte, V * C), base_wte), minus(dev.get(dwpe, T * C), base_wpe)};
  };
  return op;
}

// res_out = res_in + delta; out = LayerNorm(res_out). Without delta the
// residual is normalised in place (res_out aliases res_in), as the model
// does for the first block. The backward starts din from the residual
// stream's own gradient, as the model does, and reads the forward's input
// or output as `from` says.
OpUnderTest layernorm_op(bool with_delta, LayerNormBackwardFrom from = LayerNormBackwardFrom::input) {
  const int N = 5, C = 12;
  const size_t NC = size_t(N) * C;
  std::mt19937_64 rng(with_delta ? 21 : 22);
  OpUnderTest op;
  op.name = std::string(with_delta ? "residual_layernorm" : "layernorm in place") +
            (from == LayerNormBackwardFrom::output ? ", backward from the output" : "");
  Values res_in = random_values(rng, NC, -2, 2), delta = random_values(rng, NC);
  Values w = random_values(rng, C, 0.5, 1.5), b = random_values(rng, C, -0.5, 0.5);
  op.inputs = with_delta ? Inputs{res_in, delta, w, b} : Inputs{res_in, w, b};
  auto run_forward = [=](Device& dev, const Inputs& x, Buffers& buf) {
    buf["res_in"] = dev.put(x[0]);
    buf["w"] = dev.put(x[with_delta ? 2 : 1]);
    buf["b"] = dev.put(x[with_delta ? 3 : 2]);
    if (with_delta) {
      buf["delta"] = dev.put(x[1]);
      buf["res_out"] = dev.poisoned(NC);
    }
    buf["out"] = dev.poisoned(NC);
    buf["mean"] = dev.poisoned_stats(N);
    buf["rstd"] = dev.poisoned_stats(N);
    void* res_out = with_delta ? buf["res_out"].get() : buf["res_in"].get();
    dev.be().residual_layernorm_forward(res_out, buf["out"].get(), buf["mean"].get(), buf["rstd"].get(),
                                        buf["res_in"].get(), with_delta ? buf["delta"].get() : nullptr,
                                        buf["w"].get(), buf["b"].get(), N, C);
    return res_out;
  };
  op.forward = [=](Device& dev, const Inputs& x) {
    Buffers buf;
    run_forward(dev, x, buf);
    return std::vector<Values>{dev.get(with_delta ? buf["res_out"] : buf["res_in"], NC), dev.get(buf["out"], NC)};
  };
  op.backward = [=](Device& dev, const Inputs& x, const std::vector<Values>& dy) {
    Buffers buf;
    void* res_out = run_forward(dev, x, buf);
    Values base_w = accumulation_base(C, 3), base_b = accumulation_base(C, 4);
    auto din = dev.put(dy[0]), dout = dev.put(dy[1]), dw = dev.put(base_w), db = dev.put(base_b);
    const void* saved = from == LayerNormBackwardFrom::input ? res_out : buf["out"].get();
    dev.be().layernorm_backward(din.get(), dw.get(), db.get(), dout.get(), from, saved, buf["w"].get(), buf["b"].get(),
                                buf["mean"].get(), buf["rstd"].get(), N, C);
    Values dres = dev.get(din, NC);
    std::vector<Values> grads{dres};
    if (with_delta) grads.push_back(dres);
    grads.push_back(minus(dev.get(dw, C), base_w));
    grads.push_back(minus(dev.get(db, C), base_b));
    return grads;
  };
  return op;
}

// One matmul without bias; the backward with db = null.
OpUnderTest matmul_op() {
  const int N = 5, C = 12, OC = 10;
  std::mt19937_64 rng(31);
  OpUnderTest op;
  op.name = "matmul";
  op.inputs = {random_values(rng, N * C), random_values(rng, OC * C)};
  op.forward = [=](Device& dev, const Inputs& x) {
    auto in = dev.put(x[0]), w = dev.put(x[1]), out = dev.poisoned(N * OC);
    dev.be().matmul_forward(out.get(), nullptr, in.get(), w.get(), nullptr, N, C, OC);
    return std::vector<Values>{dev.get(out, N * OC)};
  };
  op.backward = [=](Device& dev, const Inputs& x, const std::vector<Values>& dy) {
    Values base_w = accumulation_base(OC * C, 5);
    auto in = dev.put(x[0]), w = dev.put(x[1]), dout = dev.put(dy[0]);
    auto din = dev.poisoned(N * C), dw = dev.put(base_w);
    dev.be().matmul_backward(din.get(), dw.get(), nullptr, dout.get(), in.get(), w.get(), nullptr, N, C, OC);
    return std::vector<Values>{dev.get(din, N * C), minus(dev.get(dw, OC * C), base_w)};
  };
  return op;
}

// The GPT MLP: y = gelu(in @ w1^T + b1) @ w2^T + b2, with the GELU fused
// into the first matmul's forward and the second matmul's backward.
OpUnderTest mlp_op() {
  const int N = 5, C = 12, hidden = 20, OC = 9;
  std::mt19937_64 rng(41);
  OpUnderTest op;
  op.name = "matmul bias + gelu";
  op.inputs = {random_values(rng, N * C),      random_values(rng, hidden * C), random_values(rng, hidden),
               random_values(rng, OC * hidden), random_values(rng, OC)};
  auto run_forward = [=](Device& dev, const Inputs& x, Buffers& buf) {
    const char* names[] = {"in", "w1", "b1", "w2", "b2"};
    for (int i = 0; i < 5; ++i) buf[names[i]] = dev.put(x[i]);
    buf["pre"] = dev.poisoned(N * hidden);
    buf["h"] = dev.poisoned(N * hidden);
    buf["y"] = dev.poisoned(N * OC);
    dev.be().matmul_forward(buf["h"].get(), buf["pre"].get(), buf["in"].get(), buf["w1"].get(), buf["b1"].get(), N,
                            C, hidden);
    dev.be().matmul_forward(buf["y"].get(), nullptr, buf["h"].get(), buf["w2"].get(), buf["b2"].get(), N, hidden,
                            OC);
  };
  op.forward = [=](Device& dev, const Inputs& x) {
    Buffers buf;
    run_forward(dev, x, buf);
    return std::vector<Values>{dev.get(buf["y"], N * OC)};
  };
  op.backward = [=](Device& dev, const Inputs& x, const std::vector<Values>& dy) {
    Buffers buf;
    run_forward(dev, x, buf);
    Values base_w1 = accumulation_base(hidden * C, 6), base_b1 = accumulation_base(hidden, 7);
    Values base_w2 = accumulation_base(OC * hidden, 8), base_b2 = accumulation_base(OC, 9);
    auto dy_buf = dev.put(dy[0]), dpre = dev.poisoned(N * hidden), din = dev.poisoned(N * C);
    auto dw1 = dev.put(base_w1), db1 = dev.put(base_b1), dw2 = dev.put(base_w2), db2 = dev.put(base_b2);
    dev.be().matmul_backward(dpre.get(), dw2.get(), db2.get(), dy_buf.get(), buf["h"].get(), buf["w2"].get(),
                             buf["pre"].get(), N, hidden, OC);
    dev.be().matmul_backward(din.get(), dw1.get(), db1.get(), dpre.get(), buf["in"].get(), buf["w1"].get(), nullptr,
                             N, C, hidden);
    return std::vector<Values>{dev.get(din, N * C), minus(dev.get(dw1, hidden * C), base_w1),
                               minus(dev.get(db1, hidden), base_b1), minus(dev.get(dw2, OC * hidden), base_w2),
                               minus(dev.get(db2, OC), base_b2)};
  };
  return op;
}

OpUnderTest attention_op() {
  const int B = 2, T = 7, C = 12, H = 3;
  const size_t qkv_size = size_t(B) * T * 3 * C, out_size = size_t(B) * T * C;
  std::mt19937_64 rng(51);
  OpUnderTest op;
  op.name = "attention";
  op.inputs = {random_values(rng, qkv_size, -1.5, 1.5)};
  auto run_forward = [=](Device& dev, const Inputs& x, Buffers& buf) {
    buf["qkv"] = dev.put(x[0]);
    buf["out"] = dev.poisoned(out_size);
    buf["lse"] = dev.poisoned_stats(size_t(B) * H * T);
    dev.be().attention_forward(buf["out"].get(), buf["lse"].get(), buf["qkv"].get(), B, T, C, H);
  };
  op.forward = [=](Device& dev, const Inputs& x) {
    Buffers buf;
    run_forward(dev, x, buf);
    return std::vector<Values>{dev.get(buf["out"], out_size)};
  };
  op.backward = [=](Device& dev, const Inputs& x, const std::vector<Values>& dy) {
    Buffers buf;
    run_forward(dev, x, buf);
    auto dout = dev.put(dy[0]), dqkv = dev.poisoned(qkv_size);
    dev.be().attention_backward(dqkv.get(), dout.get(), buf["qkv"].get(), buf["out"].get(), buf["lse"].get(), B, T,
                                C, H);
    return std::vector<Values>{dev.get(dqkv, qkv_size)};
  };
  return op;
}

// The scalar output is the summed loss; its cotangent becomes dloss (and is
// bf16-exact, so the float dloss carries it exactly).
OpUnderTest cross_entropy_op() {
  const int N = 5, V = 13, Vp = 16;
  std::mt19937_64 rng(61);
  std::vector<int32_t> targets(N);
  for (auto& t : targets) t = int32_t(rng() % V);
  OpUnderTest op;
  op.name = "cross_entropy";
  op.inputs = {random_values(rng, size_t(N) * Vp, -3, 3)};
  auto run = [=](Device& dev, const Inputs& x, float dloss, Values* losses) {
    auto logits = dev.put(x[0]), loss_buf = dev.poisoned_stats(N), tgt = dev.put_ints(targets);
    dev.be().cross_entropy_forward_backward(loss_buf.get(), logits.get(), tgt.as<int32_t>(), N, V, Vp, dloss);
    *losses = dev.get_stats(loss_buf, N);
    return dev.get(logits, size_t(N) * Vp);
  };
  op.forward = [=](Device& dev, const Inputs& x) {
    Values losses;
    run(dev, x, 1.0f, &losses);
    double sum = 0;
    for (double l : losses) sum += l;
    return std::vector<Values>{Values{sum}};
  };
  op.backward = [=](Device& dev, const Inputs& x, const std::vector<Values>& dy) {
    Values losses;
    return std::vector<Values>{run(dev, x, float(dy[0][0]), &losses)};
  };
  return op;
}

std::vector<OpUnderTest> all_ops() {
  return {embedding_op(),
          layernorm_op(true),
          layernorm_op(false),
          layernorm_op(true, LayerNormBackwardFrom::output),
          matmul_op(),
          mlp_op(),
          attention_op(),
          cross_entropy_op()};
}

std::vector<Values> random_cotangents(const std::vector<Values>& outputs, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<Values> cot;
  for (const auto& y : outputs) cot.push_back(round_to_bf16(random_values(rng, y.size())));
  return cot;
}

double dot_loss(const std::vector<Values>& outputs, const std::vector<Values>& cot) {
  double loss = 0;
  for (size_t o = 0; o < outputs.size(); ++o)
    for (size_t i = 0; i < outputs[o].size(); ++i) loss += cot[o][i] * outputs[o][i];
  return loss;
}

}  // namespace

TEST_CASE("cpu ops: backward matches central finite differences in f64", "[cpu_ops]") {
  // Central differences with h = 1e-5 in double have truncation and
  // cancellation errors near 1e-10 (measured up to 6e-10 here); 1e-8 of the
  // gradient's scale leaves margin while any real mistake is far larger.
  const double h = 1e-5, tolerance = 1e-8;
  Device dev(DType::f64);
  for (const OpUnderTest& op : all_ops()) {
    auto outputs = op.forward(dev, op.inputs);
    auto cot = random_cotangents(outputs, 7);
    auto grads = op.backward(dev, op.inputs, cot);
    REQUIRE(grads.size() == op.inputs.size());
    for (size_t a = 0; a < op.inputs.size(); ++a) {
      REQUIRE(grads[a].size() == op.inputs[a].size());
      Inputs x = op.inputs;
      double max_err = 0;
      for (size_t i = 0; i < x[a].size(); ++i) {
        const double x0 = x[a][i];
        x[a][i] = x0 + h;
        const double up = dot_loss(op.forward(dev, x), cot);
        x[a][i] = x0 - h;
        const double down = dot_loss(op.forward(dev, x), cot);
        x[a][i] = x0;
        max_err = std::max(max_err, std::fabs((up - down) / (2 * h) - grads[a][i]));
      }
      INFO(op.name << " input " << a << ": max |fd - analytic| " << max_err << ", gradient scale "
                   << max_abs(grads[a]));
      CHECK(max_abs(grads[a]) > 1e-3);  // a real gradient, not zeros
      CHECK(max_err <= tolerance * std::max(1.0, max_abs(grads[a])));
    }
  }
}

TEST_CASE("cpu ops: f32 and bf16 agree with f64", "[cpu_ops]") {
  // Inputs and cotangents are bf16-exact, so every dtype sees the same
  // numbers and the difference is the op's own arithmetic and rounding.
  // Bound on max error / max |reference| per tensor: f32 1e-5 (measured
  // up to 2e-7), bf16 1e-2 (measured up to 4e-3: outputs and stored
  // intermediates such as the GELU pre-activation keep 8 mantissa bits).
  struct Bound {
    DType type;
    double tolerance;
  };
  const Bound bounds[] = {{DType::f32, 1e-5}, {DType::bf16, 1e-2}};
  Device reference(DType::f64);
  for (const OpUnderTest& op : all_ops()) {
    Inputs x;
    for (const auto& v : op.inputs) x.push_back(round_to_bf16(v));
    auto ref_out = op.forward(reference, x);
    auto cot = random_cotangents(ref_out, 8);
    auto ref_grad = op.backward(reference, x, cot);
    for (const Bound& bound : bounds) {
      Device dev(bound.type);
      auto out = op.forward(dev, x);
      auto grad = op.backward(dev, x, cot);
      for (size_t o = 0; o < out.size(); ++o) {
        INFO(op.name << " " << dtype_name(bound.type) << " output " << o);
        CHECK(relative_error(out[o], ref_out[o]) <= bound.tolerance);
      }
      for (size_t a = 0; a < grad.size(); ++a) {
        INFO(op.name << " " << dtype_name(bound.type) << " gradient of input " << a);
        CHECK(relative_error(grad[a], ref_grad[a]) <= bound.tolerance);
      }
    }
  }
}

TEST_CASE("cpu ops: layernorm statistics are the row mean and 1/sqrt(var + 1e-5)", "[cpu_ops]") {
  const int N = 6, C = 37;
  std::mt19937_64 rng(71);
  Values x = random_values(rng, N * C, -3, 3), w = random_values(rng, C), b = random_values(rng, C);
  Device dev(DType::f64);
  auto in = dev.put(x), wb = dev.put(w), bb = dev.put(b), out = dev.poisoned(N * C);
  auto mean = dev.poisoned_stats(N), rstd = dev.poisoned_stats(N);
  dev.be().residual_layernorm_forward(in.get(), out.get(), mean.get(), rstd.get(), in.get(), nullptr, wb.get(),
                                      bb.get(), N, C);
  Values got_mean = dev.get_stats(mean, N), got_rstd = dev.get_stats(rstd, N), got = dev.get(out, N * C);
  for (int n = 0; n < N; ++n) {
    double mu = 0, var = 0;
    for (int c = 0; c < C; ++c) mu += x[n * C + c] / C;
    for (int c = 0; c < C; ++c) var += (x[n * C + c] - mu) * (x[n * C + c] - mu) / C;
    const double rs = 1 / std::sqrt(var + 1e-5);
    CHECK(std::fabs(got_mean[n] - mu) < 1e-12);
    CHECK(std::fabs(got_rstd[n] - rs) < 1e-12 * rs);
    for (int c = 0; c < C; ++c) CHECK(std::fabs(got[n * C + c] - ((x[n * C + c] - mu) * rs * w[c] + b[c])) < 1e-12);
  }
}

TEST_CASE("cpu ops: the normalised input read back from a LayerNorm output", "[cpu_ops]") {
  const double bound = std::sqrt(768.0);
  // Exact where w is well away from 0, for either sign.
  for (double xhat : {-2.5, 0.0, 0.75, 3.0})
    for (double w : {1.3, -0.4})
      CHECK(layernorm_xhat_from_output(xhat * w + 0.25, 0.25, w, bound) == Approx(xhat).margin(1e-15));
  // w = 0: the output is the bias whatever xhat was; 0, not NaN.
  CHECK(layernorm_xhat_from_output(0.25, 0.25, 0.0, bound) == 0.0);
  CHECK(layernorm_xhat_from_output(0.3, 0.25, -0.0, bound) == 0.0);
  // A weight so small that the output's rounding dominates: held to the
  // range of a normalised element.
  CHECK(layernorm_xhat_from_output(0.25 + 1e-3, 0.25, 1e-9, bound) == bound);
  CHECK(layernorm_xhat_from_output(0.25 + 1e-3, 0.25, -1e-9, bound) == -bound);
  CHECK(std::isnan(layernorm_xhat_from_output(std::nan(""), 0.25, 1.0, bound)));
}

TEST_CASE("cpu ops: matmul forward matches a naive triple loop", "[cpu_ops]") {
  struct Shape {
    int N, C, OC;
    bool bias, gelu;
  };
  // Odd sizes cover partial register tiles; C = 1200 makes the product take
  // more than one cache pass over the packed weight panels.
  const Shape shapes[] = {{37, 53, 29, false, false}, {67, 300, 70, true, false}, {9, 1200, 130, true, true},
                          {1, 7, 3, true, true}};
  for (DType type : {DType::f64, DType::f32}) {
    // f64 differs from the double loop only by summation order; f32 sums in
    // float, ~sqrt(C) * 6e-8 relative for random signs.
    const double tolerance = type == DType::f64 ? 1e-13 : 1e-5;
    Device dev(type);
    for (const Shape& s : shapes) {
      std::mt19937_64 rng(81 + s.C);
      Values in = random_values(rng, size_t(s.N) * s.C), w = random_values(rng, size_t(s.OC) * s.C);
      Values bias = random_values(rng, s.OC);
      if (type == DType::f32) {
        in = round_to_bf16(in);
        w = round_to_bf16(w);
        bias = round_to_bf16(bias);
      }
      auto in_b = dev.put(in), w_b = dev.put(w), bias_b = dev.put(bias);
      auto out = dev.poisoned(size_t(s.N) * s.OC), pre = dev.poisoned(size_t(s.N) * s.OC);
      dev.be().matmul_forward(out.get(), s.gelu ? pre.get() : nullptr, in_b.get(), w_b.get(),
                              s.bias ? bias_b.get() : nullptr, s.N, s.C, s.OC);
      Values expected_pre(size_t(s.N) * s.OC), expected_out(expected_pre.size());
      for (int n = 0; n < s.N; ++n)
        for (int o = 0; o < s.OC; ++o) {
          double sum = s.bias ? bias[o] : 0.0;
          for (int c = 0; c < s.C; ++c) sum += in[size_t(n) * s.C + c] * w[size_t(o) * s.C + c];
          expected_pre[size_t(n) * s.OC + o] = sum;
          const double gelu = 0.5 * sum * (1 + std::tanh(std::sqrt(2 / std::acos(-1.0)) * (sum + 0.044715 * sum * sum * sum)));
          expected_out[size_t(n) * s.OC + o] = s.gelu ? gelu : sum;
        }
      INFO(dtype_name(type) << " N=" << s.N << " C=" << s.C << " OC=" << s.OC);
      CHECK(relative_error(dev.get(out, expected_out.size()), expected_out) < tolerance);
      if (s.gelu) CHECK(relative_error(dev.get(pre, expected_pre.size()), expected_pre) < tolerance);
    }
  }
}

TEST_CASE("cpu ops: attention matches naive causal softmax attention", "[cpu_ops]") {
  const int B = 2, T = 9, C = 12, H = 3, hd = C / H;
  std::mt19937_64 rng(91);
  Values qkv = round_to_bf16(random_values(rng, size_t(B) * T * 3 * C, -2, 2));
  // Naive: full T x T scores, future positions masked to -inf, softmax.
  Values expected(size_t(B) * T * C), expected_lse(size_t(B) * H * T);
  for (int b = 0; b < B; ++b)
    for (int h = 0; h < H; ++h)
      for (int t = 0; t < T; ++t) {
        std::vector<double> scores(T);
        for (int j = 0; j < T; ++j) {
          double s = 0;
          for (int d = 0; d < hd; ++d)
            s += qkv[(size_t(b) * T + t) * 3 * C + h * hd + d] * qkv[(size_t(b) * T + j) * 3 * C + C + h * hd + d];
          scores[j] = j <= t ? s / std::sqrt(double(hd)) : -INFINITY;
        }
        const double m = *std::max_element(scores.begin(), scores.end());
        double z = 0;
        for (double s : scores) z += std::exp(s - m);
        expected_lse[(size_t(b) * H + h) * T + t] = m + std::log(z);
        for (int d = 0; d < hd; ++d) {
          double o = 0;
          for (int j = 0; j < T; ++j)
            o += std::exp(scores[j] - m) / z * qkv[(size_t(b) * T + j) * 3 * C + 2 * C + h * hd + d];
          expected[(size_t(b) * T + t) * C + h * hd + d] = o;
        }
      }
  for (DType type : {DType::f64, DType::f32}) {
    const double tolerance = type == DType::f64 ? 1e-13 : 1e-5;
    Device dev(type);
    auto in = dev.put(qkv), out = dev.poisoned(expected.size()), lse = dev.poisoned_stats(expected_lse.size());
    dev.be().attention_forward(out.get(), lse.get(), in.get(), B, T, C, H);
    INFO(dtype_name(type));
    CHECK(relative_error(dev.get(out, expected.size()), expected) < tolerance);
    CHECK(relative_error(dev.get_stats(lse, expected_lse.size()), expected_lse) < tolerance);
  }
}

TEST_CASE("cpu ops: attention is causal", "[cpu_ops]") {
  const int B = 2, T = 8, C = 12, H = 2, changed = 5;
  std::mt19937_64 rng(101);
  Values qkv = random_values(rng, size_t(B) * T * 3 * C);
  Device dev(DType::f32);
  auto attend = [&](const Values& x) {
    auto in = dev.put(x), out = dev.poisoned(size_t(B) * T * C), lse = dev.poisoned_stats(size_t(B) * H * T);
    dev.be().attention_forward(out.get(), lse.get(), in.get(), B, T, C, H);
    return dev.get(out, size_t(B) * T * C);
  };
  Values before = attend(qkv);
  for (int i = 0; i < 3 * C; ++i) qkv[size_t(changed) * 3 * C + i] += 0.5;  // q, k, v of batch 0, token 5
  Values after = attend(qkv);
  for (int b = 0; b < B; ++b)
    for (int t = 0; t < T; ++t) {
      bool same = std::equal(before.begin() + (size_t(b) * T + t) * C, before.begin() + (size_t(b) * T + t + 1) * C,
                             after.begin() + (size_t(b) * T + t) * C);
      INFO("batch " << b << " token " << t);
      CHECK(same == (b == 1 || t < changed));
    }
}

TEST_CASE("cpu ops: cross entropy matches log-softmax and zeroes padded columns", "[cpu_ops]") {
  const int N = 6, V = 13, Vp = 16;
  const float dloss = 0.37f;
  std::mt19937_64 rng(111);
  Values logits = round_to_bf16(random_values(rng, size_t(N) * Vp, -4, 4));
  for (int j = 0; j < V; ++j) logits[j] += 512;  // large logits must not overflow
  std::vector<int32_t> targets(N);
  for (auto& t : targets) t = int32_t(rng() % V);
  targets[1] = V - 1;
  for (DType type : {DType::f64, DType::f32, DType::bf16}) {
    const double tolerance = type == DType::f64 ? 1e-12 : type == DType::f32 ? 1e-5 : 1e-2;
    Device dev(type);
    auto buf = dev.put(logits), losses = dev.poisoned_stats(N), tgt = dev.put_ints(targets);
    Values stored = dev.get(buf, logits.size());  // exactly what the op reads
    dev.be().cross_entropy_forward_backward(losses.get(), buf.get(), tgt.as<int32_t>(), N, V, Vp, dloss);
    Values got_losses = dev.get_stats(losses, N), grad = dev.get(buf, logits.size());
    for (int n = 0; n < N; ++n) {
      const double* row = &stored[size_t(n) * Vp];
      const double m = *std::max_element(row, row + V);
      double z = 0;
      for (int j = 0; j < V; ++j) z += std::exp(row[j] - m);
      const double lse = m + std::log(z);
      INFO(dtype_name(type) << " row " << n);
      CHECK(std::fabs(got_losses[n] - (lse - row[targets[n]])) < tolerance * std::max(1.0, lse - row[targets[n]]));
      for (int j = 0; j < Vp; ++j) {
        const double g = grad[size_t(n) * Vp + j];
        if (j >= V) {
          CHECK(g == 0.0);
          continue;
        }
        const double expected = dloss * (std::exp(row[j] - lse) - (j == targets[n] ? 1.0 : 0.0));
        CHECK(std::fabs(g - expected) < tolerance * dloss);
      }
    }
  }
}

TEST_CASE("cpu ops: cross entropy rejects targets outside the vocabulary", "[cpu_ops]") {
  const int N = 3, V = 5, Vp = 8;
  Device dev(DType::f32);
  std::mt19937_64 rng(121);
  Values logits = random_values(rng, N * Vp);
  for (int32_t bad : {-1, V}) {
    auto buf = dev.put(logits), losses = dev.poisoned_stats(N), tgt = dev.put_ints({0, bad, 1});
    try {
      dev.be().cross_entropy_forward_backward(losses.get(), buf.get(), tgt.as<int32_t>(), N, V, Vp, 1.0f);
      FAIL("no error for target " << bad);
    } catch (const Error& e) {
      std::string msg = e.what();
      INFO(msg);
      CHECK(msg.find("target") != std::string::npos);
      CHECK(msg.find("row 1") != std::string::npos);
    }
    CHECK(dev.get(buf, logits.size()) == dev.get(dev.put(logits), logits.size()));  // left untouched
  }
}

TEST_CASE("cpu ops: reductions", "[cpu_ops]") {
  std::mt19937_64 rng(131);
  const size_t n = 40000;
  Values x = round_to_bf16(random_values(rng, n));
  double sum = 0, squares = 0;
  for (double v : x) {
    sum += v;
    squares += v * v;
  }
  for (DType type : {DType::f64, DType::f32, DType::bf16}) {
    Device dev(type);
    auto storage = dev.put(x), stats = dev.put_stats(x);
    INFO(dtype_name(type));
    CHECK(std::fabs(dev.be().sum_squares(storage.get(), type, {{0, n}}) - squares) < 1e-9 * squares);
    if (type == DType::bf16) {  // f32 gradients on a bf16 backend
      auto wide = dev.put_bytes(encode(DType::f32, x));
      CHECK(dev.be().sum_squares(wide.get(), DType::f32, {{0, n}}) == dev.be().sum_squares(storage.get(), type, {{0, n}}));
    }
    // Several ranges (a ZeRO shard's units): each range's own sum, added
    // in order; an empty range adds nothing; overlapping ones are refused.
    const std::vector<ElementRange> ranges = {{3, 1000}, {1000, 1000}, {1001, 25003}, {30000, n}};
    double in_order = 0, exact = 0;
    for (const ElementRange& r : ranges) {
      in_order += dev.be().sum_squares(storage.get(), type, {r});
      for (size_t i = r.begin; i < r.end; ++i) exact += x[i] * x[i];
    }
    CHECK(dev.be().sum_squares(storage.get(), type, ranges) == in_order);
    CHECK(std::fabs(in_order - exact) < 1e-9 * exact);
    CHECK_THROWS_WITH(dev.be().sum_squares(storage.get(), type, {{0, 10}, {5, 20}}),
                      "sum_squares (cpu backend): element range 1 [5, 20) starts before range 0 ends at 10 (ranges "
                      "must be ascending and disjoint)");
    CHECK(std::fabs(dev.be().sum_accum(stats.get(), n) - sum) < 1e-9 * max_abs(x) * n);
    CHECK(dev.be().all_finite(storage.get(), n));
    // One bad element anywhere must be found: at either end (the first
    // and last thread's share) and at fresh random positions.
    std::random_device rd;
    const uint32_t seed = rd();
    INFO("position seed " << seed);
    std::mt19937 pick(seed);
    std::vector<size_t> positions{0, n - 1};
    for (int k = 0; k < 8; ++k) positions.push_back(pick() % n);
    for (size_t at : positions)
      for (double bad : {double(INFINITY), -double(INFINITY), double(NAN)}) {
        INFO(bad << " at " << at);
        Values y = x;
        y[at] = bad;
        auto with_bad = dev.put(y);
        CHECK_FALSE(dev.be().all_finite(with_bad.get(), n));
      }
  }
}

TEST_CASE("cpu ops: accumulate adds elementwise, rounding once", "[cpu_ops]") {
  const size_t n = 5001;
  std::mt19937_64 rng(135);
  const Values dst = round_to_bf16(random_values(rng, n)), src = round_to_bf16(random_values(rng, n, -1e-2, 1e-2));
  for (DType type : {DType::f64, DType::f32, DType::bf16}) {
    Device dev(type);
    auto d = dev.put(dst), s = dev.put(src);
    dev.be().accumulate(d.get(), type, s.get(), type, n);
    const Values got = dev.get(d, n);
    size_t mismatches = 0;
    for (size_t i = 0; i < n; ++i) {
      const float sum32 = float(dst[i]) + float(src[i]);
      const double expected =
          type == DType::f64 ? dst[i] + src[i] : type == DType::f32 ? double(sum32) : bf16_round(sum32);
      mismatches += got[i] != expected;
    }
    INFO(dtype_name(type));
    CHECK(mismatches == 0);
    CHECK(got != dst);
  }
  // f32 gradients on a bf16 backend: f32 += bf16 and f32 += f32, one fp32
  // add each; any other pair of dtypes is refused.
  Device dev(DType::bf16);
  const Values wide_dst = random_values(rng, n);
  auto d = dev.put_bytes(encode(DType::f32, wide_dst)), narrow = dev.put(src);
  auto wide_src = dev.put_bytes(encode(DType::f32, src));
  dev.be().accumulate(d.get(), DType::f32, narrow.get(), DType::bf16, n);
  dev.be().accumulate(d.get(), DType::f32, wide_src.get(), DType::f32, n);
  const Values got = decode(DType::f32, dev.get_bytes(d));
  size_t mismatches = 0;
  for (size_t i = 0; i < n; ++i) mismatches += got[i] != double((float(wide_dst[i]) + float(src[i])) + float(src[i]));
  CHECK(mismatches == 0);
  CHECK_THROWS_WITH(dev.be().accumulate(narrow.get(), DType::bf16, d.get(), DType::f32, n),
                    "cpu backend (bf16): accumulate of f32 into bf16 is not supported (allowed: into bf16 or f32)");
}

namespace {

// Every reduction-bearing op at sizes that split over threads; the raw
// bytes of every output.
std::vector<Bytes> reduction_outputs(DType type, int threads) {
  ThreadCount thread_count(threads);
  Device dev(type);
  std::mt19937_64 rng(141);
  std::vector<Bytes> results;
  {  // embedding backward with many repeated tokens
    const int B = 4, T = 64, C = 96, V = 50;
    std::vector<int32_t> tokens(B * T);
    for (auto& t : tokens) t = int32_t(rng() % V);
    auto tok = dev.put_ints(tokens), dout = dev.put(random_values(rng, size_t(B) * T * C));
    auto dwte = dev.put(random_values(rng, V * C)), dwpe = dev.put(random_values(rng, T * C));
    dev.be().embedding_backward(dwte.get(), dwpe.get(), dout.get(), tok.as<int32_t>(), B, T, C);
    results.push_back(dev.get_bytes(dwte));
    results.push_back(dev.get_bytes(dwpe));
  }
  {  // layernorm forward + backward
    const int N = 256, C = 200;
    auto in = dev.put(random_values(rng, N * C)), w = dev.put(random_values(rng, C)), b = dev.put(random_values(rng, C));
    auto out = dev.poisoned(N * C), mean = dev.poisoned_stats(N), rstd = dev.poisoned_stats(N);
    dev.be().residual_layernorm_forward(in.get(), out.get(), mean.get(), rstd.get(), in.get(), nullptr, w.get(),
                                        b.get(), N, C);
    auto din = dev.put(random_values(rng, N * C)), dw = dev.put(random_values(rng, C)),
         db = dev.put(random_values(rng, C)), dout = dev.put(random_values(rng, N * C));
    dev.be().layernorm_backward(din.get(), dw.get(), db.get(), dout.get(), LayerNormBackwardFrom::input, in.get(),
                                w.get(), b.get(), mean.get(), rstd.get(), N, C);
    for (auto* buf : {&out, &din, &dw, &db}) results.push_back(dev.get_bytes(*buf));
  }
  {  // matmul forward + backward with GELU
    const int N = 64, C = 72, OC = 100;
    auto in = dev.put(random_values(rng, N * C)), w = dev.put(random_values(rng, OC * C));
    auto bias = dev.put(random_values(rng, OC)), out = dev.poisoned(N * OC), pre = dev.put(random_values(rng, N * C));
    dev.be().matmul_forward(out.get(), nullptr, in.get(), w.get(), bias.get(), N, C, OC);
    auto din = dev.poisoned(N * C), dw = dev.put(random_values(rng, OC * C)), db = dev.put(random_values(rng, OC));
    dev.be().matmul_backward(din.get(), dw.get(), db.get(), out.get(), in.get(), w.get(), pre.get(), N, C, OC);
    for (auto* buf : {&out, &din, &dw, &db}) results.push_back(dev.get_bytes(*buf));
  }
  {  // attention forward + backward
    const int B = 2, T = 33, C = 24, H = 2;
    auto qkv = dev.put(random_values(rng, size_t(B) * T * 3 * C)), out = dev.poisoned(size_t(B) * T * C);
    auto lse = dev.poisoned_stats(size_t(B) * H * T);
    dev.be().attention_forward(out.get(), lse.get(), qkv.get(), B, T, C, H);
    auto dout = dev.put(random_values(rng, size_t(B) * T * C)), dqkv = dev.poisoned(size_t(B) * T * 3 * C);
    dev.be().attention_backward(dqkv.get(), dout.get(), qkv.get(), out.get(), lse.get(), B, T, C, H);
    for (auto* buf : {&out, &lse, &dqkv}) results.push_back(dev.get_bytes(*buf));
  }
  {  // cross entropy, then the loss sum and squared norm over many chunks
    const int N = 64, V = 300, Vp = 384;
    std::vector<int32_t> targets(N);
    for (auto& t : targets) t = int32_t(rng() % V);
    auto logits = dev.put(random_values(rng, size_t(N) * Vp, -5, 5)), losses = dev.poisoned_stats(N);
    auto tgt = dev.put_ints(targets);
    dev.be().cross_entropy_forward_backward(losses.get(), logits.get(), tgt.as<int32_t>(), N, V, Vp, 1.0f / N);
    results.push_back(dev.get_bytes(logits));
    results.push_back(dev.get_bytes(losses));
    const size_t n = 100003;
    auto big = dev.put(random_values(rng, n)), big_stats = dev.put_stats(random_values(rng, n));
    const double sums[] = {dev.be().sum_squares(big.get(), type, {{0, n}}), dev.be().sum_accum(big_stats.get(), n)};
    Bytes sum_bytes(sizeof(sums));
    std::memcpy(sum_bytes.data(), sums, sizeof(sums));
    results.push_back(sum_bytes);
  }
  return results;
}

}  // namespace

TEST_CASE("cpu ops: results are bitwise independent of the thread count", "[cpu_ops]") {
  for (DType type : {DType::bf16, DType::f32}) {
    const auto one = reduction_outputs(type, 1);
    for (int threads : {2, 3}) {
      const auto many = reduction_outputs(type, threads);
      REQUIRE(many.size() == one.size());
      for (size_t i = 0; i < one.size(); ++i) {
        INFO(dtype_name(type) << " output " << i << " with " << threads << " threads");
        CHECK(many[i] == one[i]);
      }
    }
  }
}

namespace {

template <typename X>
std::vector<X> random_elements(std::mt19937_64& rng, size_t n, double lo, double hi) {
  Values v = random_values(rng, n, lo, hi);
  std::vector<X> out(n);
  for (size_t i = 0; i < n; ++i) {
    if constexpr (std::is_same_v<X, bf16>)
      out[i] = float_to_bf16_rn(float(v[i]));
    else
      out[i] = X(v[i]);
  }
  return out;
}

template <typename X>
Bytes as_bytes(const std::vector<X>& v) {
  Bytes b(v.size() * sizeof(X));
  if (!b.empty()) std::memcpy(b.data(), v.data(), b.size());
  return b;
}

template <typename X>
std::vector<X> from_bytes(const Bytes& b) {
  std::vector<X> v(b.size() / sizeof(X));
  if (!v.empty()) std::memcpy(v.data(), b.data(), v.size() * sizeof(X));
  return v;
}

// Host copies of every optimizer buffer of one precision mode (the unused
// ones empty), in the mode's storage types.
struct OptimizerState {
  std::vector<bf16> w16, g16, m16, v16, c16;
  std::vector<float> w32, g32, m32, v32, master;
};

OptimizerState random_optimizer_state(Precision mode, size_t n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  OptimizerState s;
  if (mode == Precision::fp32) {
    s.w32 = random_elements<float>(rng, n, -0.5, 0.5);
    s.g32 = random_elements<float>(rng, n, -0.05, 0.05);
  } else {
    s.w16 = random_elements<bf16>(rng, n, -0.5, 0.5);
    s.g16 = random_elements<bf16>(rng, n, -0.05, 0.05);
  }
  if (adam_state_dtype(mode) == DType::f32) {
    s.m32 = random_elements<float>(rng, n, -0.01, 0.01);
    s.v32 = random_elements<float>(rng, n, 1e-6, 1e-4);
  } else {
    s.m16 = random_elements<bf16>(rng, n, -0.01, 0.01);
    s.v16 = random_elements<bf16>(rng, n, 1e-6, 1e-4);
  }
  if (has_master_weights(mode)) {
    s.master = random_elements<float>(rng, n, -0.5, 0.5);
    for (size_t i = 0; i < n; ++i) s.w16[i] = float_to_bf16_rn(s.master[i]);
  }
  if (has_kahan_compensation(mode)) s.c16 = random_elements<bf16>(rng, n, -1e-3, 1e-3);
  return s;
}

AdamWStep test_step() {
  AdamWStep step{};
  step.lr = 1e-2f;
  step.beta1 = 0.9f;
  step.beta2 = 0.95f;
  step.eps = 1e-8f;
  step.weight_decay = 0.1f;
  step.grad_scale = 0.7f;
  step.step = 3;
  step.bias_correction1 = float(1 - std::pow(0.9, 3));
  step.bias_correction2 = float(1 - std::pow(0.95, 3));
  step.seed = 0x5eed1234abcdull;
  step.index_offset = 4096;  // the buffers hold a shard starting at flat index 4096
  return step;
}

// Elements [from, end) of every buffer: a shard of the state.
OptimizerState shard_of(OptimizerState s, size_t from) {
  auto cut = [from](auto& v) {
    if (!v.empty()) v.erase(v.begin(), v.begin() + long(from));
  };
  cut(s.w16), cut(s.g16), cut(s.m16), cut(s.v16), cut(s.c16);
  cut(s.w32), cut(s.g32), cut(s.m32), cut(s.v32), cut(s.master);
  return s;
}

// Runs the backend's adamw_update over the ranges and returns the state.
OptimizerState backend_adamw(Precision mode, OptimizerState s, const std::vector<AdamWRange>& ranges,
                             const AdamWStep& step, int threads) {
  ThreadCount thread_count(threads);
  Device dev(compute_dtype(mode));
  Buffers buf;
  auto put = [&](const char* name, const Bytes& bytes) -> void* {
    if (bytes.empty()) return nullptr;
    buf[name] = dev.put_bytes(bytes);
    return buf[name].get();
  };
  OptimizerBuffers ob;
  ob.weights = put("w", mode == Precision::fp32 ? as_bytes(s.w32) : as_bytes(s.w16));
  ob.grads = put("g", mode == Precision::fp32 ? as_bytes(s.g32) : as_bytes(s.g16));
  ob.m = put("m", s.m32.empty() ? as_bytes(s.m16) : as_bytes(s.m32));
  ob.v = put("v", s.v32.empty() ? as_bytes(s.v16) : as_bytes(s.v32));
  ob.master = static_cast<float*>(put("master", as_bytes(s.master)));
  ob.compensation = put("c", as_bytes(s.c16));
  dev.be().adamw_update(mode, ob, ranges, step);
  auto fetch = [&](const char* name) { return dev.get_bytes(buf.at(name)); };
  if (mode == Precision::fp32) {
    s.w32 = from_bytes<float>(fetch("w"));
  } else {
    s.w16 = from_bytes<bf16>(fetch("w"));
  }
  if (s.m32.empty()) {
    s.m16 = from_bytes<bf16>(fetch("m"));
    s.v16 = from_bytes<bf16>(fetch("v"));
  } else {
    s.m32 = from_bytes<float>(fetch("m"));
    s.v32 = from_bytes<float>(fetch("v"));
  }
  if (!s.master.empty()) s.master = from_bytes<float>(fetch("master"));
  if (!s.c16.empty()) s.c16 = from_bytes<bf16>(fetch("c"));
  return s;
}

// The same update as direct per-element calls of adamw_math.h.
OptimizerState direct_adamw(Precision mode, OptimizerState s, const std::vector<AdamWRange>& ranges,
                            const AdamWStep& decayed) {
  const uint64_t sr_key = sr_step_key(decayed.seed, decayed.step);
  for (const AdamWRange& range : ranges) {
    AdamWStep step = decayed;
    if (!range.decay) step.weight_decay = 0.0f;
    for (size_t i = range.begin; i < range.end; ++i) {
      switch (mode) {
        case Precision::bf16_sr:
        case Precision::bf16_rn:
          adamw_bf16(&s.w16[i], &s.m16[i], &s.v16[i], bf16_to_float(s.g16[i]) * step.grad_scale, i,
                     mode == Precision::bf16_sr ? &sr_key : nullptr, step);
          break;
        case Precision::mixed:
          adamw_mixed(&s.master[i], &s.w16[i], &s.m32[i], &s.v32[i], bf16_to_float(s.g16[i]) * step.grad_scale,
                      step);
          break;
        case Precision::fp32: adamw_fp32(&s.w32[i], &s.m32[i], &s.v32[i], s.g32[i] * step.grad_scale, step); break;
        case Precision::bf16_kahan:
          adamw_kahan(&s.w16[i], &s.c16[i], &s.m16[i], &s.v16[i], bf16_to_float(s.g16[i]) * step.grad_scale, step);
          break;
      }
    }
  }
  return s;
}

std::vector<Bytes> state_bytes(const OptimizerState& s) {
  return {as_bytes(s.w16), as_bytes(s.m16), as_bytes(s.v16), as_bytes(s.c16), as_bytes(s.w32),
          as_bytes(s.m32), as_bytes(s.v32), as_bytes(s.master)};
}

}  // namespace

TEST_CASE("cpu ops: adamw_update equals the adamw_math.h element functions bit for bit", "[cpu_ops]") {
  const size_t n = 1001;
  // Sub-ranges (the SR index is the flat index), with and without weight
  // decay, one empty, two neighbours and a gap: the tensors of a ZeRO unit.
  const std::vector<AdamWRange> ranges = {{37, 301, true}, {301, 302, false}, {302, 302, true}, {310, 901, false}};
  const AdamWStep step = test_step();
  for (Precision mode :
       {Precision::bf16_sr, Precision::bf16_rn, Precision::mixed, Precision::fp32, Precision::bf16_kahan}) {
    INFO(precision_name(mode));
    const OptimizerState initial = random_optimizer_state(mode, n, 151);
    const OptimizerState expected = direct_adamw(mode, initial, ranges, step);
    const OptimizerState got = backend_adamw(mode, initial, ranges, step, 2);
    CHECK(state_bytes(got) == state_bytes(expected));
    // The step must have moved some weights for the comparison to mean much,
    // and weight decay must matter: the same ranges all without it differ.
    const auto w_before = state_bytes(initial)[mode == Precision::fp32 ? 4 : 0];
    const auto w_after = state_bytes(got)[mode == Precision::fp32 ? 4 : 0];
    CHECK(w_before != w_after);
    std::vector<AdamWRange> undecayed = ranges;
    for (AdamWRange& r : undecayed) r.decay = false;
    CHECK(state_bytes(backend_adamw(mode, initial, undecayed, step, 2)) != state_bytes(got));
  }
  // Stochastic rounding's bits come from the element's flat index: not
  // from the thread, nor from where the rank's shard of the buffers starts.
  const OptimizerState initial = random_optimizer_state(Precision::bf16_sr, n, 152);
  const OptimizerState whole = backend_adamw(Precision::bf16_sr, initial, {{0, n, true}}, step, 2);
  CHECK(state_bytes(backend_adamw(Precision::bf16_sr, initial, {{0, n, true}}, step, 1)) == state_bytes(whole));
  const size_t shard_start = 300;
  AdamWStep shard_step = step;
  shard_step.index_offset += shard_start;
  CHECK(state_bytes(backend_adamw(Precision::bf16_sr, shard_of(initial, shard_start), {{0, n - shard_start, true}},
                                  shard_step, 2)) == state_bytes(shard_of(whole, shard_start)));
}

TEST_CASE("cpu ops: adamw_update rejects a dtype, buffer or ranges that do not fit", "[cpu_ops]") {
  const AdamWStep step = test_step();
  auto expect_error = [&](DType type, Precision mode, bool with_master, const std::vector<AdamWRange>& ranges,
                          const std::string& needle) {
    Device dev(type);
    DeviceBuffer buf(dev.be(), 64, "optimizer buffer");
    OptimizerBuffers ob;
    ob.weights = ob.m = ob.v = buf.get();
    ob.grads = buf.get();
    ob.master = with_master ? buf.as<float>() : nullptr;
    Bytes before(buf.bytes());
    for (size_t i = 0; i < before.size(); ++i) before[i] = decltype(before)::value_type(i * 37 + 11);
    dev.be().upload(buf.get(), before.data(), before.size());
    try {
      dev.be().adamw_update(mode, ob, ranges, step);
      FAIL("no error for " << precision_name(mode) << " on " << dtype_name(type));
    } catch (const Error& e) {
      INFO(e.what());
      CHECK(std::string(e.what()).find(needle) != std::string::npos);
    }
    // Refused before anything was updated.
    CHECK(dev.get_bytes(buf) == before);
  };
  expect_error(DType::f64, Precision::fp32, false, {{0, 4, true}}, "f64");
  expect_error(DType::bf16, Precision::fp32, false, {{0, 4, true}}, "f32");
  expect_error(DType::f32, Precision::bf16_sr, false, {{0, 4, true}}, "bf16");
  expect_error(DType::bf16, Precision::mixed, false, {{0, 4, true}}, "master");
  expect_error(DType::bf16, Precision::bf16_sr, false, {{0, 4, true}, {5, 3, true}}, "range 1 [5, 3) is reversed");
  expect_error(DType::bf16, Precision::bf16_sr, false, {{0, 4, true}, {8, 12, true}, {11, 16, false}},
               "range 2 [11, 16) starts before range 1 ends at 12");
}

TEST_CASE("cpu ops: backend memory", "[cpu_ops]") {
  for (DType type : {DType::bf16, DType::f32, DType::f64}) {
    Device dev(type);
    CHECK(dev.be().dtype() == type);
    CHECK(dev.be().name().find(dtype_name(type)) != std::string::npos);
    std::mt19937_64 rng(161);
    Values x = random_values(rng, 333);
    DeviceBuffer buf = dev.put(x);
    CHECK(reinterpret_cast<uintptr_t>(buf.get()) % 64 == 0);
    CHECK(dev.get(buf, x.size()) == decode(type, encode(type, x)));
    dev.be().fill_zero(buf.get(), buf.bytes());
    CHECK(dev.get(buf, x.size()) == Values(x.size(), 0.0));
  }
}
