// Residual add fused with LayerNorm (forward), and LayerNorm backward.
#include <algorithm>
#include <cmath>

#include "cpu_ops.h"
#include "srgpt/model_config.h"

namespace srgpt::cpu {

namespace {
// Channels per task of the dw/db reduction: wide enough for contiguous reads
// of each row, narrow enough to give every thread work.
constexpr int kChannelBlock = 64;
}  // namespace

template <typename S>
void residual_layernorm_forward(S* res_out, S* out, Math<S>* mean, Math<S>* rstd, const S* res_in, const S* delta,
                                const S* w, const S* b, int N, int C) {
  using M = Math<S>;
#pragma omp parallel for schedule(static)
  for (int n = 0; n < N; ++n) {
    const size_t row = size_t(n) * C;
    S* x = res_out + row;
    // Elementwise, so res_out may alias res_in (or delta).
    if (delta) {
      for (int c = 0; c < C; ++c) x[c] = store<S>(load(res_in[row + c]) + load(delta[row + c]));
    } else if (x != res_in + row) {
      std::copy(res_in + row, res_in + row + C, x);
    }
    M sum = 0;
    for (int c = 0; c < C; ++c) sum += load(x[c]);
    const M mu = sum / M(C);
    M squares = 0;
    for (int c = 0; c < C; ++c) {
      M d = load(x[c]) - mu;
      squares += d * d;
    }
    const M rs = M(1) / std::sqrt(squares / M(C) + M(kLayerNormEps));
    for (int c = 0; c < C; ++c) out[row + c] = store<S>((load(x[c]) - mu) * rs * load(w[c]) + load(b[c]));
    mean[n] = mu;
    rstd[n] = rs;
  }
}

template <typename S>
void layernorm_backward(S* din, S* dw, S* db, const S* dout, LayerNormBackwardFrom from, const S* x, const S* w,
                        const S* b, const Math<S>* mean, const Math<S>* rstd, int N, int C) {
  using M = Math<S>;
  const bool from_output = from == LayerNormBackwardFrom::output;
  const M xhat_bound = std::sqrt(M(C));
  // The normalised input of x's element at column c of a row with mean mu
  // and rstd rs.
  auto xhat = [&](M value, int c, M mu, M rs) {
    return from_output ? layernorm_xhat_from_output(value, M(load(b[c])), M(load(w[c])), xhat_bound)
                       : (value - mu) * rs;
  };
#pragma omp parallel
  {
#pragma omp for schedule(static)
    for (int n = 0; n < N; ++n) {
      const size_t row = size_t(n) * C;
      const M mu = from_output ? M(0) : mean[n], rs = rstd[n];
      M dxhat_sum = 0, dxhat_xhat_sum = 0;
      for (int c = 0; c < C; ++c) {
        M dxhat = load(dout[row + c]) * load(w[c]);
        dxhat_sum += dxhat;
        dxhat_xhat_sum += dxhat * xhat(load(x[row + c]), c, mu, rs);
      }
      const M dxhat_mean = dxhat_sum / M(C), dxhat_xhat_mean = dxhat_xhat_sum / M(C);
      for (int c = 0; c < C; ++c) {
        M dxhat = load(dout[row + c]) * load(w[c]);
        accumulate(&din[row + c], rs * (dxhat - dxhat_mean - xhat(load(x[row + c]), c, mu, rs) * dxhat_xhat_mean));
      }
    }

    // dw, db: each block of channels is summed over all rows by one thread.
    M dw_sum[kChannelBlock], db_sum[kChannelBlock];
    const int blocks = (C + kChannelBlock - 1) / kChannelBlock;
#pragma omp for schedule(static)
    for (int block = 0; block < blocks; ++block) {
      const int c0 = block * kChannelBlock, width = std::min(kChannelBlock, C - c0);
      std::fill(dw_sum, dw_sum + width, M(0));
      std::fill(db_sum, db_sum + width, M(0));
      for (int n = 0; n < N; ++n) {
        const size_t row = size_t(n) * C + c0;
        const M mu = from_output ? M(0) : mean[n], rs = rstd[n];
        for (int c = 0; c < width; ++c) {
          M g = load(dout[row + c]);
          dw_sum[c] += g * xhat(load(x[row + c]), c0 + c, mu, rs);
          db_sum[c] += g;
        }
      }
      for (int c = 0; c < width; ++c) {
        accumulate(&dw[c0 + c], dw_sum[c]);
        accumulate(&db[c0 + c], db_sum[c]);
      }
    }
  }
}

SRGPT_CPU_INSTANTIATE(residual_layernorm_forward)
SRGPT_CPU_INSTANTIATE(layernorm_backward)

}  // namespace srgpt::cpu
