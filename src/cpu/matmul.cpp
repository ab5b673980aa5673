// Matmul with bias and GELU epilogue, forward and backward, over one packed
// and cache-blocked matrix product.
#include <algorithm>
#include <vector>

#include "cpu_ops.h"
#include "srgpt/gelu_math.h"

namespace srgpt::cpu {

namespace {

// Element (r, c) of an operand is data[r * row_stride + c * col_stride], so
// one product routine serves plain and transposed operands.
template <typename S>
struct Operand {
  const S* data;
  size_t row_stride, col_stride;
  Math<S> at(size_t r, size_t c) const { return load(data[r * row_stride + c * col_stride]); }
};

// Register tile of the inner kernel: kTileRows x kTileCols outputs.
constexpr int kTileRows = 4;
constexpr int kTileCols = 8;
// Packed b panels touched per pass over a thread's row tiles, sized so they
// stay in a 1 MiB share of L2 while the a tiles stream past.
constexpr size_t kPanelBytesPerPass = size_t(1) << 20;

// One tile: tile[r][j] = sum_k a[k][r] * b[k][j] over k ascending, with one
// accumulator per output, so neither the vector width nor the thread count
// changes the rounding. The AVX clone doubles the vector width where the CPU
// has it; both clones compute identical bits (no FMA contraction).
template <typename M>
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
__attribute__((target_clones("avx", "default")))
#endif
void multiply_tile(size_t depth, const M* __restrict a_panel, const M* __restrict b_panel, M* __restrict tile) {
  M sum[kTileRows][kTileCols] = {};
  for (size_t k = 0; k < depth; ++k) {
    const M* a = a_panel + k * kTileRows;
    const M* b = b_panel + k * kTileCols;
    for (int r = 0; r < kTileRows; ++r)
      for (int j = 0; j < kTileCols; ++j) sum[r][j] += a[r] * b[j];
  }
  for (int r = 0; r < kTileRows; ++r)
    for (int j = 0; j < kTileCols; ++j) tile[r * kTileCols + j] = sum[r][j];
}

// Packs `panels` panels of Width lines (a's rows or b's columns) over the
// whole depth: packed[(panel * depth + k) * Width + w] = value(k, line),
// line = panel * Width + w, zero past `lines`. An orphaned worksharing loop:
// called inside the product's parallel region, it splits the panels over
// its threads.
template <int Width, typename M, typename Value>
void pack_panels(M* packed, int64_t panels, size_t depth, size_t lines, Value value) {
#pragma omp for schedule(static)
  for (int64_t panel = 0; panel < panels; ++panel) {
    M* dst = packed + size_t(panel) * depth * Width;
    for (size_t k = 0; k < depth; ++k)
      for (int w = 0; w < Width; ++w) {
        const size_t line = size_t(panel) * Width + w;
        dst[k * Width + w] = line < lines ? value(k, line) : M(0);
      }
  }
}

// product(i, j) = sum_k a(i, k) * b(k, j) for i < rows, j < cols, handed to
// epilogue(i, j, value). The operands are converted to Math<S> once, into
// zero-padded panels laid out in the order the tile kernel reads them.
template <typename S, typename Epilogue>
void matrix_product(size_t rows, size_t cols, size_t depth, Operand<S> a, Operand<S> b, Epilogue epilogue) {
  using M = Math<S>;
  const int64_t row_tiles = int64_t((rows + kTileRows - 1) / kTileRows);
  const int64_t col_panels = int64_t((cols + kTileCols - 1) / kTileCols);
  std::vector<M> a_packed(size_t(row_tiles) * depth * kTileRows);
  std::vector<M> b_packed(size_t(col_panels) * depth * kTileCols);
  const int64_t panels_per_pass =
      std::max<int64_t>(1, int64_t(kPanelBytesPerPass / (std::max<size_t>(depth, 1) * kTileCols * sizeof(M))));

#pragma omp parallel
  {
    pack_panels<kTileRows>(a_packed.data(), row_tiles, depth, rows, [&](size_t k, size_t i) { return a.at(i, k); });
    pack_panels<kTileCols>(b_packed.data(), col_panels, depth, cols, [&](size_t k, size_t j) { return b.at(k, j); });

    M tile_values[kTileRows * kTileCols];
    for (int64_t first_panel = 0; first_panel < col_panels; first_panel += panels_per_pass) {
      const int64_t last_panel = std::min(col_panels, first_panel + panels_per_pass);
      // Static and without a barrier: each thread keeps the same row tiles
      // in every pass, and distinct tiles write distinct outputs.
#pragma omp for schedule(static) nowait
      for (int64_t tile = 0; tile < row_tiles; ++tile) {
        const M* a_panel = a_packed.data() + size_t(tile) * depth * kTileRows;
        for (int64_t panel = first_panel; panel < last_panel; ++panel) {
          multiply_tile(depth, a_panel, b_packed.data() + size_t(panel) * depth * kTileCols, tile_values);
          const size_t i0 = size_t(tile) * kTileRows, j0 = size_t(panel) * kTileCols;
          const int valid_rows = int(std::min<size_t>(kTileRows, rows - i0));
          const int valid_cols = int(std::min<size_t>(kTileCols, cols - j0));
          for (int r = 0; r < valid_rows; ++r)
            for (int j = 0; j < valid_cols; ++j) epilogue(i0 + r, j0 + j, tile_values[r * kTileCols + j]);
        }
      }
    }
  }
}

}  // namespace

template <typename S>
void matmul_forward(S* out, S* gelu_pre, const S* in, const S* w, const S* bias, int N, int C, int OC) {
  using M = Math<S>;
  // out(n, o) = sum_c in(n, c) * w(o, c): b(k = c, j = o) = w[o * C + c].
  Operand<S> a{in, size_t(C), 1}, b{w, 1, size_t(C)};
  matrix_product(size_t(N), size_t(OC), size_t(C), a, b, [&](size_t n, size_t o, M value) {
    M pre = bias ? value + load(bias[o]) : value;
    const size_t index = n * size_t(OC) + o;
    if (gelu_pre) {
      // GELU of the pre-activation as stored, so backward's gelu' and a
      // recomputed activation (gelu_forward) see the same value.
      gelu_pre[index] = store<S>(pre);
      out[index] = store<S>(gelu_tanh(load(gelu_pre[index])));
    } else {
      out[index] = store<S>(pre);
    }
  });
}

template <typename S>
void matmul_backward(S* din, S* dw, S* db, const S* dout, const S* in, const S* w, const S* gelu_pre, int N, int C,
                     int OC) {
  using M = Math<S>;
  // din(n, c) = sum_o dout(n, o) * w(o, c)
  matrix_product(size_t(N), size_t(C), size_t(OC), Operand<S>{dout, size_t(OC), 1}, Operand<S>{w, size_t(C), 1},
                 [&](size_t n, size_t c, M value) {
                   const size_t index = n * size_t(C) + c;
                   din[index] = store<S>(gelu_pre ? value * gelu_tanh_derivative(load(gelu_pre[index])) : value);
                 });
  // dw(o, c) += sum_n dout(n, o) * in(n, c)
  matrix_product(size_t(OC), size_t(C), size_t(N), Operand<S>{dout, 1, size_t(OC)}, Operand<S>{in, size_t(C), 1},
                 [&](size_t o, size_t c, M value) { accumulate(&dw[o * size_t(C) + c], value); });
  if (!db) return;
  // db(o) += sum_n dout(n, o): each block of columns summed by one thread.
  constexpr int kColumnBlock = 64;
  const int blocks = (OC + kColumnBlock - 1) / kColumnBlock;
#pragma omp parallel for schedule(static)
  for (int block = 0; block < blocks; ++block) {
    const int o0 = block * kColumnBlock, width = std::min(kColumnBlock, OC - o0);
    M sum[kColumnBlock] = {};
    for (int n = 0; n < N; ++n) {
      const S* row = dout + size_t(n) * OC + o0;
      for (int j = 0; j < width; ++j) sum[j] += load(row[j]);
    }
    for (int j = 0; j < width; ++j) accumulate(&db[o0 + j], sum[j]);
  }
}

SRGPT_CPU_INSTANTIATE(matmul_forward)
SRGPT_CPU_INSTANTIATE(matmul_backward)

}  // namespace srgpt::cpu
