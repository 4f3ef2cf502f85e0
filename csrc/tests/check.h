// A minimal test harness for the native kernels: CHECK macros count failures, main returns them.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <random>
#include <vector>

namespace fastrlhf_test {

inline int& failures() {
  static int count = 0;
  return count;
}

inline std::vector<float> random_normal(int64_t n, float scale, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, scale);
  std::vector<float> values(n);
  for (auto& v : values) v = normal(rng);
  return values;
}

}  // namespace fastrlhf_test

#define CHECK(cond)                                                        \
  do {                                                                     \
    if (!(cond)) {                                                         \
      std::printf("%s:%d: CHECK(%s) failed\n", __FILE__, __LINE__, #cond); \
      ++fastrlhf_test::failures();                                         \
    }                                                                      \
  } while (0)

// |actual - expected| <= atol + rtol * |expected|; nan matches nan.
#define CHECK_CLOSE(actual, expected, atol, rtol)                                                             \
  do {                                                                                                        \
    double a_ = (actual), e_ = (expected);                                                                    \
    bool ok_ = (std::isnan(a_) && std::isnan(e_)) || a_ == e_ || std::fabs(a_ - e_) <= (atol) + (rtol)*std::fabs(e_); \
    if (!ok_) {                                                                                               \
      std::printf("%s:%d: %s = %.9g, expected %.9g\n", __FILE__, __LINE__, #actual, a_, e_);                  \
      ++fastrlhf_test::failures();                                                                            \
    }                                                                                                         \
  } while (0)

#define TEST_MAIN_RESULT()                                                          \
  (std::printf("%s\n", fastrlhf_test::failures() ? "FAILED" : "passed"), fastrlhf_test::failures() ? 1 : 0)
