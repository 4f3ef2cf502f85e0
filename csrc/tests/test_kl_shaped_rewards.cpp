// kl_shaped_rewards against a direct computation.
#include "cpu/kl_shaped_rewards.h"
#include "tests/check.h"

#include <algorithm>
#include <memory>

using namespace fastrlhf;

namespace {

// Row 0: holes and a masked last token; row 1: empty mask; row 2: a prefix; others: holes ending early.
template <typename T>
void check(int64_t rows, int64_t length, float kl_coef, float score_clip) {
  const int64_t n = rows * length;
  auto kl_values = fastrlhf_test::random_normal(n, 1.0f, uint32_t(n));
  auto scores = fastrlhf_test::random_normal(rows, 2.0f, uint32_t(rows));
  std::vector<T> kl(n);
  std::unique_ptr<bool[]> mask(new bool[n]);
  for (int64_t i = 0; i < n; ++i) {
    kl[i] = from_float<T>(kl_values[i]);
    const int64_t row = i / length, t = i % length;
    if (row == 0) mask[i] = t % 2 == 0 || t == length - 1;
    else if (row == 1) mask[i] = false;
    else if (row == 2) mask[i] = t < length / 2 + 1;
    else mask[i] = t % 3 == 0 && t < length - 2;
  }
  for (int64_t i = 0; i < n; ++i) {
    if (!mask[i]) kl[i] = from_float<T>(i % 2 ? std::nanf("") : kInf);  // never read
  }
  std::vector<float> rewards(n);
  kl_shaped_rewards<T>(scores.data(), kl.data(), mask.get(), length, kl_coef, score_clip, 0, rows, rewards.data());
  for (int64_t row = 0; row < rows; ++row) {
    int64_t last = -1;
    for (int64_t t = 0; t < length; ++t) last = mask[row * length + t] ? t : last;
    for (int64_t t = 0; t < length; ++t) {
      const int64_t i = row * length + t;
      double expected = mask[i] ? -double(kl_coef) * to_float(kl[i]) : 0.0;
      if (t == last) expected += std::min(std::max(double(scores[row]), -double(score_clip)), double(score_clip));
      CHECK_CLOSE(rewards[i], expected, 1e-6, 1e-6);
    }
  }
}

}  // namespace

int main() {
  check<float>(1, 1, 0.1f, kInf);  // T = 1
  check<float>(6, 37, 0.05f, kInf);
  check<float>(6, 37, -0.2f, 0.5f);  // a negative coefficient and a clip
  check<bf16>(5, 129, 0.1f, 1.0f);
  check<fp16>(5, 64, 0.3f, kInf);
  return TEST_MAIN_RESULT();
}
