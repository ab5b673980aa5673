// Identical inputs give identical bits on the GPU: the ops whose sums could
// depend on timing (atomics, split reductions) are run twice and compared.
#include "backend.cuh"
#include "gpu_test_util.h"
#include "srgpt/config.h"

using namespace srgpt;
using namespace srgpt::gpu_test;

namespace {

// Runs `op` twice on the same inputs (`reset` restores them) and compares
// every output tensor byte for byte.
template <typename Reset, typename Op>
void check_repeatable(const std::string& what, const std::vector<Tensor*>& outputs, Reset reset, Op op) {
  std::vector<std::vector<uint8_t>> first;
  reset();
  op();
  for (Tensor* t : outputs) first.push_back(t->bytes());
  reset();
  op();
  for (size_t i = 0; i < outputs.size(); ++i)
    check_same_bytes(what + " output " + std::to_string(i), outputs[i]->bytes(), first[i]);
}

}  // namespace

TEST_CASE("gpu ops are deterministic", "[gpu][determinism]") {
  if (!have_gpu()) return;
  uint64_t seed = 800;
  for (DType dtype : {DType::bf16, DType::f32}) {
    auto gpu = make_cuda_backend(dtype, 0);
    Backend& be = *gpu;

    {  // attention backward
      // hd 64 (tensor cores in bf16) and hd 48 (simple kernel).
      for (int H : {4, 2}) {
        const int B = 2, T = 700, C = H == 4 ? 256 : 96;
        const size_t rows = size_t(B) * T;
        Tensor qkv(be, dtype, rows * 3 * C), out(be, dtype, rows * C), lse(be, DType::f32, size_t(B) * H * T);
        Tensor dout(be, dtype, rows * C), dqkv(be, dtype, rows * 3 * C);
        qkv.set(random_normal(qkv.count(), ++seed));
        dout.set(random_normal(dout.count(), ++seed));
        be.attention_forward(out.get(), lse.get(), qkv.get(), B, T, C, H);
        for (gpu::AttentionBackward how : {gpu::AttentionBackward::one_pass, gpu::AttentionBackward::two_pass}) {
          dynamic_cast<gpu::CudaBackend&>(be).set_attention_backward_strategy(how);
          check_repeatable(
              std::string("attention_backward ") + dtype_name(dtype) + " " + gpu::attention_backward_name(how),
              {&dqkv}, [&] { dqkv.poison(); },
              [&] { be.attention_backward(dqkv.get(), dout.get(), qkv.get(), out.get(), lse.get(), B, T, C, H); });
        }
        const auto o1 = out.bytes();
        be.attention_forward(out.get(), lse.get(), qkv.get(), B, T, C, H);
        check_same_bytes("attention_forward", out.bytes(), o1);
      }
    }

    {  // embedding backward with many repeated tokens
      const int B = 8, T = 512, C = 768, V = 50;
      Tensor tokens(be, DType::f32, size_t(B) * T), dout(be, dtype, size_t(B) * T * C);
      Tensor dwte(be, dtype, size_t(V) * C), dwpe(be, dtype, size_t(T) * C);
      const auto token_values = random_tokens(size_t(B) * T, V, ++seed);
      std::vector<uint8_t> token_bytes(token_values.size() * 4);
      std::memcpy(token_bytes.data(), token_values.data(), token_bytes.size());
      tokens.set_bytes(token_bytes);
      dout.set(random_normal(dout.count(), ++seed));
      const auto dwte0 = random_normal(dwte.count(), ++seed), dwpe0 = random_normal(dwpe.count(), ++seed);
      check_repeatable(
          std::string("embedding_backward ") + dtype_name(dtype), {&dwte, &dwpe},
          [&] {
            dwte.set(dwte0);
            dwpe.set(dwpe0);
          },
          [&] {
            be.embedding_backward(dwte.get(), dwpe.get(), dout.get(), static_cast<const int32_t*>(tokens.get()), B, T,
                                  C);
          });
    }

    {  // matmul and layernorm backward
      const int N = 2048, C = 768, OC = 3072;
      Tensor in(be, dtype, size_t(N) * C), w(be, dtype, size_t(OC) * C), dout(be, dtype, size_t(N) * OC);
      Tensor pre(be, dtype, size_t(N) * C), din(be, dtype, size_t(N) * C), dw(be, dtype, size_t(OC) * C),
          db(be, dtype, OC);
      in.set(random_normal(in.count(), ++seed));
      w.set(random_normal(w.count(), ++seed, 0.03f));
      dout.set(random_normal(dout.count(), ++seed));
      pre.set(random_normal(pre.count(), ++seed));
      const auto dw0 = random_normal(dw.count(), ++seed), db0 = random_normal(db.count(), ++seed);
      check_repeatable(
          std::string("matmul_backward ") + dtype_name(dtype), {&din, &dw, &db},
          [&] {
            din.poison();
            dw.set(dw0);
            db.set(db0);
          },
          [&] {
            be.matmul_backward(din.get(), dw.get(), db.get(), dout.get(), in.get(), w.get(), pre.get(), N, C, OC);
          });

      Tensor mean(be, DType::f32, N), rstd(be, DType::f32, N), ln_out(be, dtype, size_t(N) * C);
      Tensor lw(be, dtype, C), lb(be, dtype, C), ldw(be, dtype, C), ldb(be, dtype, C), ldin(be, dtype, size_t(N) * C);
      lw.set(random_normal(C, ++seed));
      lb.set(random_normal(C, ++seed));
      be.residual_layernorm_forward(in.get(), ln_out.get(), mean.get(), rstd.get(), in.get(), nullptr, lw.get(),
                                    lb.get(), N, C);
      const auto ldin0 = random_normal(ldin.count(), ++seed);
      for (LayerNormBackwardFrom from : {LayerNormBackwardFrom::input, LayerNormBackwardFrom::output})
        check_repeatable(
            std::string("layernorm_backward from ") + layernorm_backward_from_name(from) + " " + dtype_name(dtype),
            {&ldin, &ldw, &ldb},
            [&] {
              ldin.set(ldin0);
              ldw.set(std::vector<float>(C, 0.5f));
              ldb.set(std::vector<float>(C, -0.25f));
            },
            [&] {
              be.layernorm_backward(ldin.get(), ldw.get(), ldb.get(), pre.get(), from,
                                    from == LayerNormBackwardFrom::input ? in.get() : ln_out.get(), lw.get(), lb.get(),
                                    mean.get(), rstd.get(), N, C);
            });
    }

    {  // reductions and cross-entropy
      const size_t n = (size_t(1) << 23) + 11;
      Tensor x(be, dtype, n), losses(be, DType::f32, n);
      x.set(random_normal(n, ++seed));
      losses.set(random_normal(n, ++seed));
      const double squares = be.sum_squares(x.get(), dtype, {{0, n}}), sum = be.sum_accum(losses.get(), n);
      for (int repeat = 0; repeat < 3; ++repeat) {
        CHECK(be.sum_squares(x.get(), dtype, {{0, n}}) == squares);
        CHECK(be.sum_accum(losses.get(), n) == sum);
      }
      const int N = 64, V = 50257, Vp = 50304;
      Tensor logits(be, dtype, size_t(N) * Vp), row_losses(be, DType::f32, N), targets(be, DType::f32, N);
      const auto logit_values = random_normal(logits.count(), ++seed, 2.0f);
      const auto target_values = random_tokens(N, V, ++seed);
      std::vector<uint8_t> target_bytes(N * 4);
      std::memcpy(target_bytes.data(), target_values.data(), target_bytes.size());
      targets.set_bytes(target_bytes);
      check_repeatable(
          std::string("cross_entropy ") + dtype_name(dtype), {&logits, &row_losses},
          [&] {
            logits.set(logit_values);
            row_losses.poison();
          },
          [&] {
            be.cross_entropy_forward_backward(row_losses.get(), logits.get(),
                                              static_cast<const int32_t*>(targets.get()), N, V, Vp, 1.0f / N);
          });
    }
  }
}
