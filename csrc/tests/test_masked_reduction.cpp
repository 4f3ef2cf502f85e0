// Moments (Chan merge), the loss finalize and the loss backward against direct double computations.
#include <vector>

#include "cpu/masked_reduction.h"
#include "tests/check.h"

using namespace fastrlhf;

namespace {

std::vector<uint8_t> random_mask(int64_t n, uint32_t seed, int keep_percent) {
  std::mt19937 rng(seed);
  std::vector<uint8_t> mask(n);
  for (auto& m : mask) m = int(rng() % 100) < keep_percent;
  return mask;
}

// Moments over [begin, end) in chunks merged with merge(), vs two-pass double over everything.
void check_moments(int64_t n, float offset, int64_t chunk, int keep_percent) {
  auto x = fastrlhf_test::random_normal(n, 1.0f, uint32_t(n));
  for (auto& v : x) v += offset;
  auto mask = random_mask(n, 7, keep_percent);
  Moments got;
  for (int64_t begin = 0; begin < n; begin += chunk) got = merge(got, masked_moments<float>(x.data(), mask.data(), begin, std::min(n, begin + chunk)));
  double count = 0, sum = 0, m2 = 0;
  for (int64_t i = 0; i < n; ++i) count += mask[i], sum += mask[i] ? x[i] : 0.0;
  const double mean = count ? sum / count : 0.0;
  for (int64_t i = 0; i < n; ++i) m2 += mask[i] ? (x[i] - mean) * (x[i] - mean) : 0.0;
  CHECK(got.count == count);
  CHECK_CLOSE(got.mean, mean, 1e-6 * (1 + std::fabs(offset)), 0.0);
  CHECK_CLOSE(got.m2, m2, 1e-9, 1e-4);  // relative: stays accurate when |mean| >> std
}

// Values near 1e30: M2 ~ 1e63 overflows float; the moments must still match double.
void check_huge_moments() {
  auto x = fastrlhf_test::random_normal(3000, 1e30f, 11);
  auto mask = random_mask(3000, 5, 70);
  const Moments got = masked_moments<float>(x.data(), mask.data(), 0, 3000);
  double count = 0, sum = 0, m2 = 0;
  for (size_t i = 0; i < x.size(); ++i) count += mask[i], sum += mask[i] ? x[i] : 0.0;
  const double mean = sum / count;
  for (size_t i = 0; i < x.size(); ++i) m2 += mask[i] ? (x[i] - mean) * (x[i] - mean) : 0.0;
  CHECK(got.count == count);
  CHECK_CLOSE(got.mean, mean, 1e-6 * 1e30, 0.0);
  CHECK_CLOSE(got.m2, m2, 0.0, 1e-5);
}

// finalize_loss on hand-made row sums (row 1 empty) for every reduction.
void check_finalize() {
  const int64_t rows = 3, n_stats = 2;
  // rows of partials: count, loss, stat 0, stat 1
  const std::vector<float> partials = {4, 0, 2,   8, 0, 1,   1, 0, 1,   2, 0, 6};
  float loss, stats[2], scale[3];
  finalize_loss(partials.data(), rows, n_stats, Reduction::kTokenMean, &loss, stats, scale);
  CHECK_CLOSE(loss, 9.0 / 6, 1e-7, 1e-6);
  CHECK_CLOSE(stats[0], 2.0 / 6, 1e-7, 1e-6);
  CHECK_CLOSE(stats[1], 8.0 / 6, 1e-7, 1e-6);
  for (float s : scale) CHECK_CLOSE(s, 1.0 / 6, 1e-7, 1e-6);
  finalize_loss(partials.data(), rows, n_stats, Reduction::kSeqMeanTokenMean, &loss, stats, scale);
  CHECK_CLOSE(loss, (8.0 / 4 + 1.0 / 2) / 2, 1e-7, 1e-6);
  CHECK_CLOSE(scale[0], 1.0 / (4 * 2), 1e-7, 1e-6);
  CHECK(scale[1] == 0.0f);
  CHECK_CLOSE(scale[2], 1.0 / (2 * 2), 1e-7, 1e-6);
  finalize_loss(partials.data(), rows, n_stats, Reduction::kSeqMeanTokenSum, &loss, stats, scale);
  CHECK_CLOSE(loss, 9.0 / 2, 1e-7, 1e-6);
  for (float s : scale) CHECK_CLOSE(s, 0.5, 1e-7, 1e-6);
  const std::vector<float> empty(4 * rows, 0.0f);  // a fully masked batch: all zero, no nan
  for (Reduction r : {Reduction::kTokenMean, Reduction::kSeqMeanTokenMean, Reduction::kSeqMeanTokenSum}) {
    finalize_loss(empty.data(), rows, n_stats, r, &loss, stats, scale);
    CHECK(loss == 0.0f && stats[0] == 0.0f && stats[1] == 0.0f);
    for (float s : scale) CHECK(std::isfinite(s));
  }
}

template <typename T>
void check_backward(double tol) {
  const int64_t rows = 3, tokens = 37;
  auto token_grad = fastrlhf_test::random_normal(rows * tokens, 1.0f, 3);
  const std::vector<float> row_scale = {0.5f, 0.0f, 0.125f};
  std::vector<T> grad(rows * tokens);
  loss_backward<T>(-2.0f, token_grad.data(), row_scale.data(), tokens, 0, rows, grad.data());
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t t = 0; t < tokens; ++t)
      CHECK_CLOSE(to_float(grad[r * tokens + t]), -2.0 * token_grad[r * tokens + t] * row_scale[r], 1e-7, tol);
}

}  // namespace

int main() {
  CHECK(masked(true, 2.5f) == 2.5f && masked(false, std::nanf("")) == 0.0f && masked(false, kInf) == 0.0f);
  check_moments(1, 0.0f, 1, 100);
  check_moments(5000, 0.0f, 5000, 60);
  check_moments(5000, 1e4f, 777, 60);    // |mean| >> std, odd chunks
  check_moments(100000, -3e3f, 1 << 15, 90);
  check_moments(3000, 2.0f, 1000, 0);    // nothing masked in: all zero
  check_huge_moments();
  check_finalize();
  check_backward<float>(1e-6);
  check_backward<bf16>(1.0 / 128);
  check_backward<fp16>(1.0 / 1024);
  return TEST_MAIN_RESULT();
}
