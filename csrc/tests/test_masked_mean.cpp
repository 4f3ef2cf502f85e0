// masked_mean along D of [outer, D, inner] and its backward against direct double computations.
#include <vector>

#include "cpu/masked_mean.h"
#include "tests/check.h"

using namespace fastrlhf;

namespace {

template <typename T, typename M = uint8_t>
void check(int64_t outer, int64_t reduced, int64_t inner, double tol) {
  const int64_t n = outer * reduced * inner;
  auto x = fastrlhf_test::random_normal(n, 2.0f, uint32_t(n));
  std::vector<T> stored(n);
  std::vector<M> mask(n);
  for (int64_t i = 0; i < n; ++i) stored[i] = from_float<T>(x[i] + 1.0f), mask[i] = (i * 31) % 7 < 4;
  for (int64_t d = 0; d < reduced; ++d) mask[d * inner] = 0;  // line (0, i = 0) is empty
  std::vector<float> mean(outer * inner), inv_count(outer * inner), grad(outer * inner);
  CHECK(masked_mean_lines<T>(stored.data(), mask.data(), reduced, inner, 0, outer, mean.data(), inv_count.data()));
  for (int64_t j = 0; j < outer * inner; ++j) grad[j] = 0.5f + j;
  std::vector<T> grad_x(n);
  CHECK(masked_mean_backward<T>(grad.data(), inv_count.data(), mask.data(), reduced, inner, 0, outer * reduced,
                                grad_x.data()));
  for (int64_t o = 0; o < outer; ++o) {
    for (int64_t i = 0; i < inner; ++i) {
      double sum = 0, count = 0;
      for (int64_t d = 0; d < reduced; ++d) {
        const int64_t k = (o * reduced + d) * inner + i;
        if (mask[k]) sum += to_float(stored[k]), count += 1;
      }
      const int64_t j = o * inner + i;
      CHECK_CLOSE(mean[j], count ? sum / count : 0.0, tol, tol);
      CHECK_CLOSE(inv_count[j], 1.0 / std::max(count, 1.0), 1e-7, 1e-6);
      for (int64_t d = 0; d < reduced; ++d) {
        const int64_t k = (o * reduced + d) * inner + i;
        CHECK_CLOSE(to_float(grad_x[k]), mask[k] ? grad[j] / count : 0.0, 1e-7, sizeof(T) == 2 ? 1.0 / 128 : 1e-6);
      }
    }
  }
}

}  // namespace

int main() {
  check<float>(1, 1, 1, 1e-6);
  check<float>(5, 1031, 1, 1e-5);  // dim = -1: contiguous lines
  check<float>(3, 17, 40, 1e-5);   // a middle dim
  check<float>(1, 9, 333, 1e-5);   // dim = 0
  check<bf16>(2, 100, 3, 1e-5);
  check<fp16>(4, 50, 1, 1e-5);
  check<float, float>(5, 1031, 1, 1e-5);  // float masks, read as they are
  check<bf16, float>(3, 17, 40, 1e-5);
  // A float mask value other than 0 and 1 is reported, and the whole-tensor sum is the double one.
  const std::vector<float> x = {1.0f, 2.0f, 4.0f}, half = {1.0f, 0.5f, 0.0f}, binary = {1.0f, 0.0f, 1.0f};
  CHECK(!masked_sum(x.data(), half.data(), 0, 3).binary);
  const MaskedSum sum = masked_sum(x.data(), binary.data(), 0, 3);
  CHECK(sum.binary && sum.count == 2 && sum.sum == 5);
  return TEST_MAIN_RESULT();
}
