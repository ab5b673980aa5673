// Stochastic rounding fp32 -> bf16: unbiasedness, variance bound, fixed
// points, and counter-based determinism (DESIGN.md section 4).
#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include <omp.h>

#include "catch.h"
#include "srgpt/bf16.h"
#include "srgpt/sr_hash.h"

using namespace srgpt;

namespace {

// The two bf16 neighbours of x (x itself when representable).
void bf16_neighbours(float x, float* lo, float* hi) {
  uint32_t u;
  std::memcpy(&u, &x, 4);
  uint32_t t = u & 0xffff0000u;
  float a = bits_float(t);
  float b = bits_float(t + 0x10000u);
  *lo = std::fabs(a) < std::fabs(b) ? a : b;
  *hi = std::fabs(a) < std::fabs(b) ? b : a;
}

}  // namespace

TEST_CASE("SR is unbiased within a 5-sigma bound across the bf16 range, both signs", "[sr]") {
  std::mt19937 rng(12345);
  std::uniform_real_distribution<float> mant(1.0f, 2.0f);
  const int draws = 1000000;
  for (int e : {-126, -100, -60, -20, -3, 0, 1, 7, 30, 90, 126}) {
    for (float sign : {1.0f, -1.0f}) {
      float x = sign * std::ldexp(mant(rng), e);
      float lo, hi;
      bf16_neighbours(x, &lo, &hi);
      const double ulp = std::fabs(double(hi) - double(lo));
      double sum = 0, sumsq = 0;
      const uint64_t seed = rng();
      for (int i = 0; i < draws; ++i) {
        double r = bf16_to_float(float_to_bf16_sr(x, sr_random_bits(seed, 3, uint64_t(i), kSrWeights)));
        REQUIRE((r == double(lo) || r == double(hi)));
        sum += r;
        sumsq += r * r;
      }
      const double mean = sum / draws;
      const double var = sumsq / draws - mean * mean;
      // The mean of n Bernoulli-rounded draws has standard deviation at most
      // ulp / (2 sqrt(n)); 5 sigma plus the 2^-16 granularity of the bits.
      const double bound = 5.0 * ulp / (2.0 * std::sqrt(double(draws))) + ulp * std::ldexp(1.0, -16);
      INFO("x = " << x << " ulp = " << ulp << " mean error = " << (mean - x));
      CHECK(std::fabs(mean - double(x)) <= bound);
      // Variance of SR is p(1-p) ulp^2 <= ulp^2/4 (5% sampling slack).
      CHECK(var <= 0.25 * ulp * ulp * 1.05);
    }
  }
}

TEST_CASE("SR leaves representable values, zeros, infinities and NaN unchanged", "[sr]") {
  std::mt19937 rng(777);
  for (int i = 0; i < 100000; ++i) {
    uint16_t h = uint16_t(rng());
    if ((h & 0x7f80u) == 0x7f80u) continue;  // Inf/NaN handled below
    float x = bf16_to_float(bf16{h});
    REQUIRE(float_to_bf16_sr(x, rng()).bits == h);
  }
  for (uint32_t bits : {0u, 0xffffu, 0x1234u}) {
    CHECK(float_to_bf16_sr(0.0f, bits).bits == 0x0000u);
    CHECK(float_to_bf16_sr(-0.0f, bits).bits == 0x8000u);
    CHECK(float_to_bf16_sr(std::numeric_limits<float>::infinity(), bits).bits == 0x7f80u);
    CHECK(float_to_bf16_sr(-std::numeric_limits<float>::infinity(), bits).bits == 0xff80u);
    // NaN, including one whose payload lies only in the low half.
    CHECK(std::isnan(bf16_to_float(float_to_bf16_sr(std::numeric_limits<float>::quiet_NaN(), bits))));
    CHECK(std::isnan(bf16_to_float(float_to_bf16_sr(bits_float(0x7f800001u), bits))));
    CHECK(std::isnan(bf16_to_float(float_to_bf16_sr(bits_float(0xff800001u), bits))));
  }
  CHECK(std::isnan(bf16_to_float(float_to_bf16_rn(bits_float(0x7f800001u)))));
}

TEST_CASE("SR rounds up with probability equal to the discarded fraction", "[sr]") {
  // x = 1 + 0.25 ulp: must round up in 25% of draws.
  const float x = bits_float(0x3f800000u + 0x4000u);
  int up = 0;
  const int n = 400000;
  for (int i = 0; i < n; ++i) up += float_to_bf16_sr(x, sr_random_bits(99, 1, uint64_t(i), kSrAdamM)).bits == 0x3f81u;
  const double p = double(up) / n, sigma = std::sqrt(0.25 * 0.75 / n);
  CHECK(std::fabs(p - 0.25) < 5 * sigma);
}

TEST_CASE("SR bits are a pure function of (seed, step, index, stream), independent of thread count", "[sr]") {
  const size_t n = 1 << 18;
  std::vector<float> x(n);
  std::mt19937 rng(5);
  std::normal_distribution<float> nd(0.0f, 3.0f);
  for (auto& v : x) v = nd(rng);
  auto round_all = [&](int threads, uint64_t seed, uint64_t step, uint32_t stream) {
    std::vector<uint16_t> out(n);
    omp_set_num_threads(threads);
#pragma omp parallel for schedule(dynamic, 1000)
    for (long i = 0; i < long(n); ++i)
      out[size_t(i)] = float_to_bf16_sr(x[size_t(i)], sr_random_bits(seed, step, uint64_t(i), stream)).bits;
    return out;
  };
  const auto a = round_all(1, 42, 10, kSrWeights);
  CHECK(a == round_all(2, 42, 10, kSrWeights));
  CHECK(a == round_all(4, 42, 10, kSrWeights));
  // Different seed, step or stream give different roundings somewhere.
  CHECK(a != round_all(2, 43, 10, kSrWeights));
  CHECK(a != round_all(2, 42, 11, kSrWeights));
  CHECK(a != round_all(2, 42, 10, kSrAdamV));
  omp_set_num_threads(omp_get_num_procs());
}

TEST_CASE("SR random bits are uniform in each stream's 16 bits, and the streams independent", "[sr]") {
  // Chi-square over 256 buckets: the top byte of each stream's 16 bits,
  // and (top 4 bits of one stream, top 4 bits of another) jointly, since
  // the three streams share one hash per element.
  const int n = 1 << 20;
  auto chi2_of = [n](auto bucket) {
    std::vector<int> hist(256, 0);
    for (int i = 0; i < n; ++i) ++hist[bucket(uint64_t(i))];
    double chi2 = 0, expect = double(n) / 256;
    for (int h : hist) chi2 += (h - expect) * (h - expect) / expect;
    return chi2;
  };
  // 255 degrees of freedom: mean 255, sd ~22.6; 6 sigma bound.
  const double bound = 255 + 6 * 22.6;
  for (uint32_t stream : {kSrWeights, kSrAdamM, kSrAdamV}) {
    INFO("stream " << stream);
    CHECK(chi2_of([stream](uint64_t i) { return (sr_random_bits(7, 1, i, stream) >> 8) & 0xff; }) < bound);
  }
  const std::pair<uint32_t, uint32_t> pairs[] = {{kSrWeights, kSrAdamM}, {kSrWeights, kSrAdamV}, {kSrAdamM, kSrAdamV}};
  for (const auto& [a, b] : pairs) {
    INFO("streams " << a << " and " << b);
    CHECK(chi2_of([a = a, b = b](uint64_t i) {
            return ((sr_random_bits(7, 1, i, a) >> 12) << 4) | (sr_random_bits(7, 1, i, b) >> 12);
          }) < bound);
  }
}
