// gae against a direct double-precision recurrence.
#include "cpu/gae.h"
#include "tests/check.h"

#include <memory>

using namespace fastrlhf;

namespace {

// rows x length inputs stored as T; row 0 has holes, row 1 (if any) an empty mask, the rest random prefixes.
template <typename T>
void check(int64_t rows, int64_t length, float gamma, float lam, double tol) {
  const int64_t n = rows * length;
  auto r = fastrlhf_test::random_normal(n, 1.0f, uint32_t(n));
  auto v = fastrlhf_test::random_normal(n, 1.0f, uint32_t(n + 1));
  std::vector<T> rewards(n), values(n);
  std::unique_ptr<bool[]> mask(new bool[n]);
  for (int64_t i = 0; i < n; ++i) {
    rewards[i] = from_float<T>(r[i]), values[i] = from_float<T>(v[i]);
    const int64_t row = i / length, t = i % length;
    mask[i] = row == 0 ? t % 3 != 1 : (row == 1 ? false : t < length - row % length);
  }
  // nan and inf at masked-out positions are never read
  for (int64_t i = 0; i < n; ++i) {
    if (!mask[i]) rewards[i] = from_float<T>(std::nanf("")), values[i] = from_float<T>(i % 2 ? kInf : -kInf);
  }
  std::vector<float> advantages(n), returns(n);
  CHECK(gae<T>(rewards.data(), values.data(), mask.get(), length, gamma, lam, 0, rows, advantages.data(),
               returns.data()));
  for (int64_t row = 0; row < rows; ++row) {
    double next_advantage = 0, next_value = 0;
    for (int64_t t = length - 1; t >= 0; --t) {
      const int64_t i = row * length + t;
      const double value = mask[i] ? to_float(values[i]) : 0.0, reward = mask[i] ? to_float(rewards[i]) : 0.0;
      next_advantage = reward + double(gamma) * next_value - value + double(gamma) * lam * next_advantage;
      next_value = value;
      CHECK_CLOSE(advantages[i], next_advantage, tol, tol);
      CHECK_CLOSE(returns[i], next_advantage + value, tol, tol);
    }
  }
}

// A nan or inf at a masked position makes some advantage non-finite, and the kernel says so.
void check_non_finite_flag() {
  for (float bad : {std::nanf(""), kInf, -kInf}) {
    for (int64_t at = 0; at < 4; ++at) {
      for (bool in_values : {false, true}) {
        std::vector<float> rewards(4, 1.0f), values(4, 0.5f), advantages(4), returns(4);
        (in_values ? values : rewards)[at] = bad;
        const bool mask[4] = {true, true, true, true};
        CHECK(!gae<float>(rewards.data(), values.data(), mask, 4, 0.0f, 0.0f, 0, 1, advantages.data(), returns.data()));
      }
    }
  }
}

}  // namespace

int main() {
  check_non_finite_flag();
  check<float>(1, 1, 1.0f, 0.95f, 1e-6);  // T = 1: A = r - v
  check<float>(5, 257, 0.99f, 0.95f, 1e-5);
  check<float>(3, 100, 1.0f, 1.0f, 1e-4);  // no decay: sums over up to 100 terms
  check<float>(4, 33, 0.0f, 0.0f, 1e-6);   // A = r - v
  check<bf16>(3, 129, 0.9f, 0.8f, 1e-5);
  check<fp16>(3, 65, 1.0f, 0.5f, 1e-5);
  return TEST_MAIN_RESULT();
}
