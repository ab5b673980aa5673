// Causal multi-head self-attention, flash-style: the forward pass keeps only
// each row's softmax log-sum-exp, and the backward pass recomputes the
// probabilities from q, k and that lse.
#include <algorithm>
#include <cmath>
#include <vector>

#include "cpu_ops.h"
#include "srgpt/error.h"

namespace srgpt::cpu {

namespace {

int head_dim(int C, int H, const char* op) {
  if (H <= 0 || C % H != 0) fail("{}: model width {} is not divisible by the number of heads {}", op, C, H);
  return C / H;
}

// One (batch, head) slice of qkv converted to Math<S>, keys and values each
// both row-major ([T][hd]) and transposed ([hd][T]), so that every inner
// loop runs over contiguous memory with independent outputs and vectorises.
template <typename S>
struct HeadSlice {
  using M = Math<S>;
  std::vector<M> keys, keys_t, values, values_t;
  int T, hd;

  HeadSlice(int seq_len, int head_dim)
      : keys(size_t(seq_len) * head_dim),
        keys_t(keys.size()),
        values(keys.size()),
        values_t(keys.size()),
        T(seq_len),
        hd(head_dim) {}

  void load_from(const S* qkv, int b, int h, int C) {
    for (int t = 0; t < T; ++t) {
      const S* row = qkv + (size_t(b) * T + t) * 3 * C + size_t(h) * hd;
      for (int d = 0; d < hd; ++d) {
        M k = load(row[C + d]), v = load(row[2 * C + d]);
        keys[size_t(t) * hd + d] = keys_t[size_t(d) * T + t] = k;
        values[size_t(t) * hd + d] = values_t[size_t(d) * T + t] = v;
      }
    }
  }

  // scores[j] = scale * q . k_j for the keys j <= t this query may see.
  // Forward and backward share it, so they see the same scores bit for bit.
  void causal_scores(const M* q, int t, M scale, M* scores) const {
    std::fill(scores, scores + t + 1, M(0));
    for (int d = 0; d < hd; ++d) {
      const M qd = q[d];
      const M* kd = keys_t.data() + size_t(d) * T;
      for (int j = 0; j <= t; ++j) scores[j] += qd * kd[j];
    }
    for (int j = 0; j <= t; ++j) scores[j] *= scale;
  }
};

}  // namespace

template <typename S>
void attention_forward(S* out, Math<S>* lse, const S* qkv, int B, int T, int C, int H) {
  using M = Math<S>;
  const int hd = head_dim(C, H, "attention_forward");
  const M scale = M(1) / std::sqrt(M(hd));
#pragma omp parallel
  {
    HeadSlice<S> slice(T, hd);
    std::vector<M> q(hd), probs(T), o(hd);
#pragma omp for schedule(dynamic)
    for (int bh = 0; bh < B * H; ++bh) {
      const int b = bh / H, h = bh % H;
      slice.load_from(qkv, b, h, C);
      for (int t = 0; t < T; ++t) {
        const size_t row = size_t(b) * T + t;
        const S* q_row = qkv + row * 3 * C + size_t(h) * hd;
        for (int d = 0; d < hd; ++d) q[d] = load(q_row[d]);
        slice.causal_scores(q.data(), t, scale, probs.data());
        const M max_score = *std::max_element(probs.begin(), probs.begin() + t + 1);
        M sum = 0;
        for (int j = 0; j <= t; ++j) {
          probs[j] = std::exp(probs[j] - max_score);
          sum += probs[j];
        }
        std::fill(o.begin(), o.end(), M(0));
        for (int j = 0; j <= t; ++j) {
          const M p = probs[j];
          const M* v = slice.values.data() + size_t(j) * hd;
          for (int d = 0; d < hd; ++d) o[d] += p * v[d];
        }
        const M inv_sum = M(1) / sum;
        S* out_row = out + row * C + size_t(h) * hd;
        for (int d = 0; d < hd; ++d) out_row[d] = store<S>(o[d] * inv_sum);
        lse[(size_t(b) * H + h) * T + t] = max_score + std::log(sum);
      }
    }
  }
}

template <typename S>
void attention_backward(S* dqkv, const S* dout, const S* qkv, const S* out, const Math<S>* lse, int B, int T, int C,
                        int H) {
  using M = Math<S>;
  const int hd = head_dim(C, H, "attention_backward");
  const M scale = M(1) / std::sqrt(M(hd));
#pragma omp parallel
  {
    HeadSlice<S> slice(T, hd);
    std::vector<M> q(hd), dout_row(hd), dq(hd), probs(T), dscores(T);
    // dk and dv of the whole slice, summed over queries in ascending order.
    std::vector<M> dk(size_t(T) * hd), dv(size_t(T) * hd);
#pragma omp for schedule(dynamic)
    for (int bh = 0; bh < B * H; ++bh) {
      const int b = bh / H, h = bh % H;
      slice.load_from(qkv, b, h, C);
      std::fill(dk.begin(), dk.end(), M(0));
      std::fill(dv.begin(), dv.end(), M(0));
      for (int t = 0; t < T; ++t) {
        const size_t row = size_t(b) * T + t;
        const size_t head_offset = size_t(h) * hd;
        const S* q_row = qkv + row * 3 * C + head_offset;
        M dout_dot_out = 0;  // D_t = sum_d dout * out: the softmax backward's row term
        for (int d = 0; d < hd; ++d) {
          q[d] = load(q_row[d]);
          dout_row[d] = load(dout[row * C + head_offset + d]);
          dout_dot_out += dout_row[d] * load(out[row * C + head_offset + d]);
        }
        slice.causal_scores(q.data(), t, scale, probs.data());
        const M row_lse = lse[(size_t(b) * H + h) * T + t];
        for (int j = 0; j <= t; ++j) probs[j] = std::exp(probs[j] - row_lse);
        // dP = dout . v_j, then dS = P * (dP - D).
        std::fill(dscores.begin(), dscores.begin() + t + 1, M(0));
        for (int d = 0; d < hd; ++d) {
          const M g = dout_row[d];
          const M* vd = slice.values_t.data() + size_t(d) * T;
          for (int j = 0; j <= t; ++j) dscores[j] += g * vd[j];
        }
        for (int j = 0; j <= t; ++j) dscores[j] = probs[j] * (dscores[j] - dout_dot_out) * scale;
        std::fill(dq.begin(), dq.end(), M(0));
        for (int j = 0; j <= t; ++j) {
          const M ds = dscores[j], p = probs[j];
          const M* k = slice.keys.data() + size_t(j) * hd;
          M* dk_j = dk.data() + size_t(j) * hd;
          M* dv_j = dv.data() + size_t(j) * hd;
          for (int d = 0; d < hd; ++d) {
            dq[d] += ds * k[d];
            dk_j[d] += ds * q[d];
            dv_j[d] += p * dout_row[d];
          }
        }
        S* dq_row = dqkv + row * 3 * C + head_offset;
        for (int d = 0; d < hd; ++d) dq_row[d] = store<S>(dq[d]);
      }
      for (int t = 0; t < T; ++t) {
        S* row = dqkv + (size_t(b) * T + t) * 3 * C + size_t(h) * hd;
        for (int d = 0; d < hd; ++d) {
          row[C + d] = store<S>(dk[size_t(t) * hd + d]);
          row[2 * C + d] = store<S>(dv[size_t(t) * hd + d]);
        }
      }
    }
  }
}

SRGPT_CPU_INSTANTIATE(attention_forward)
SRGPT_CPU_INSTANTIATE(attention_backward)

}  // namespace srgpt::cpu
