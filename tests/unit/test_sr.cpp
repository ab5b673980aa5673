// Stochastic rounding fp32 -> bf16: round-up probability (unbiasedness),
// fixed points, and counter-based random bits (DESIGN.md section 4).
#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

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

TEST_CASE("SR round-up frequency is within 5 binomial sigma of the discarded fraction across the bf16 range, both signs",
          "[sr]") {
  std::random_device rd;
  const uint32_t seed = rd();
  INFO("seed " << seed);
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> mant(1.0f, 2.0f);
  const int draws = 1000000;
  for (int e : {-126, -100, -60, -20, -3, 0, 1, 7, 30, 90, 126}) {
    for (float sign : {1.0f, -1.0f}) {
      float x = sign * std::ldexp(mant(rng), e);
      float lo, hi;
      bf16_neighbours(x, &lo, &hi);
      // Exact in double: the discarded low 16 bits over 2^16.
      const double p = std::fabs(double(x) - double(lo)) / std::fabs(double(hi) - double(lo));
      const uint64_t bits_seed = rng();
      long up = 0;
      for (int i = 0; i < draws; ++i) {
        float r = bf16_to_float(float_to_bf16_sr(x, sr_random_bits(bits_seed, 3, uint64_t(i), kSrWeights)));
        REQUIRE((r == lo || r == hi));
        up += r == hi;
      }
      // The round-up count is Binomial(n, p): within 5 sigma of n p. This is
      // unbiasedness (the mean error is (k/n - p) ulp) with the exact
      // variance; a bound on the sample variance could not fail, since
      // draws of lo or hi never spread more than ulp^2/4.
      const double freq = double(up) / draws;
      INFO("x = " << x << " p = " << p << " round-up frequency = " << freq);
      CHECK(std::fabs(freq - p) <= 5.0 * std::sqrt(p * (1.0 - p) / draws));
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

TEST_CASE("SR roundings change with the seed, the step and the stream", "[sr]") {
  // Independence of the thread count is tested on the backend's update
  // (test_cpu_ops.cpp), where threads could matter.
  const size_t n = 1 << 18;
  std::vector<float> x(n);
  std::random_device rd;
  std::mt19937 rng(rd());
  std::normal_distribution<float> nd(0.0f, 3.0f);
  for (auto& v : x) v = nd(rng);
  auto round_all = [&](uint64_t seed, uint64_t step, uint32_t stream) {
    std::vector<uint16_t> out(n);
    for (size_t i = 0; i < n; ++i) out[i] = float_to_bf16_sr(x[i], sr_random_bits(seed, step, uint64_t(i), stream)).bits;
    return out;
  };
  const auto a = round_all(42, 10, kSrWeights);
  CHECK(a != round_all(43, 10, kSrWeights));
  CHECK(a != round_all(42, 11, kSrWeights));
  CHECK(a != round_all(42, 10, kSrAdamV));
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
