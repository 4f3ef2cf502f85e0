// whitening() and masked_whiten_apply against a direct double computation.
#include <vector>

#include "cpu/masked_whiten.h"
#include "tests/check.h"

using namespace fastrlhf;

namespace {

template <typename T>
void check(int64_t n, float offset, bool shift_mean, bool unbiased, double tol) {
  auto x = fastrlhf_test::random_normal(n, 3.0f, uint32_t(n));
  std::vector<T> stored(n);
  std::vector<uint8_t> mask(n);
  for (int64_t i = 0; i < n; ++i) stored[i] = from_float<T>(x[i] + offset), mask[i] = i % 3 != 1;
  const Whitening w = whitening(masked_moments<T>(stored.data(), mask.data(), 0, n), shift_mean, unbiased, 1e-8);
  std::vector<float> y(n);
  masked_whiten_apply<T>(stored.data(), mask.data(), w, 0, n, y.data());
  double count = 0, sum = 0, m2 = 0;
  for (int64_t i = 0; i < n; ++i) count += mask[i], sum += mask[i] ? to_float(stored[i]) : 0.0;
  const double mean = sum / std::max(count, 1.0);
  for (int64_t i = 0; i < n; ++i) m2 += mask[i] ? std::pow(to_float(stored[i]) - mean, 2) : 0.0;
  const double rstd = 1.0 / std::sqrt(m2 / std::max(unbiased ? count - 1 : count, 1.0) + 1e-8);
  for (int64_t i = 0; i < n; ++i) {
    const double expected = mask[i] ? (to_float(stored[i]) - mean) * rstd + (shift_mean ? 0.0 : mean) : 0.0;
    CHECK_CLOSE(y[i], expected, tol * (1 + std::fabs(mean)), 0.0);
  }
}

}  // namespace

int main() {
  for (bool shift_mean : {true, false}) {
    for (bool unbiased : {false, true}) {
      check<float>(2, 0.0f, shift_mean, unbiased, 1e-5);  // one masked element
      check<float>(3001, 0.5f, shift_mean, unbiased, 1e-5);
      check<bf16>(500, -2.0f, shift_mean, unbiased, 1e-5);
      check<fp16>(700, 1.0f, shift_mean, unbiased, 1e-5);
    }
  }
  check<float>(5000, 1e4f, true, false, 1e-7);  // |mean| / std ~ 3000: needs the stable variance
  return TEST_MAIN_RESULT();
}
