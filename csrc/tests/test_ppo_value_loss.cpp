// The value loss rows kernel (token gradients and row sums) against a direct double computation.
#include <vector>

#include "cpu/ppo_value_loss.h"
#include "tests/check.h"

using namespace fastrlhf;

namespace {

template <typename T>
void check_rows(int64_t rows, int64_t tokens, float clip_eps, double tol) {
  const int64_t n = rows * tokens;
  auto v = fastrlhf_test::random_normal(n, 1.0f, 4), move = fastrlhf_test::random_normal(n, 0.3f, 5);
  auto ret = fastrlhf_test::random_normal(n, 1.0f, 6);
  std::vector<T> v_t(n), old_t(n), ret_t(n);
  std::vector<uint8_t> mask(n);
  for (int64_t i = 0; i < n; ++i) {
    v_t[i] = from_float<T>(v[i]), old_t[i] = from_float<T>(v[i] + move[i]), ret_t[i] = from_float<T>(ret[i]);
    mask[i] = (i * 104729) % 4 != 0 && i / tokens != 1;  // holes, and row 1 empty
  }
  std::vector<float> token_grad(n), partials((kFirstStat + kValueStats) * rows);
  ppo_value_loss_rows<T>(v_t.data(), old_t.data(), ret_t.data(), mask.data(), tokens, clip_eps, rows, 0, rows,
                         token_grad.data(), partials.data());
  int64_t clipped_tokens = 0;
  for (int64_t r = 0; r < rows; ++r) {
    double count = 0, loss = 0, clipped_sum = 0;
    for (int64_t i = r * tokens; i < (r + 1) * tokens; ++i) {
      const double x = to_float(v_t[i]), old = to_float(old_t[i]), target = to_float(ret_t[i]);
      const double delta = x - old;
      const bool outside = std::fabs(delta) > clip_eps;  // inside, the clipped value is x itself
      const double clipped_x = outside ? old + std::min(std::max(delta, -double(clip_eps)), double(clip_eps)) : x;
      const double unclipped = (x - target) * (x - target), clipped = (clipped_x - target) * (clipped_x - target);
      CHECK_CLOSE(token_grad[i], mask[i] && unclipped >= clipped ? x - target : 0.0, tol, tol);
      if (!mask[i]) continue;
      count += 1, loss += 0.5 * std::max(unclipped, clipped), clipped_sum += clipped > unclipped;
    }
    CHECK(partials[kCount * rows + r] == count);
    CHECK_CLOSE(partials[kLoss * rows + r], loss, tol, tol);
    CHECK(partials[kFirstStat * rows + r] == clipped_sum);
    clipped_tokens += int64_t(clipped_sum);
  }
  if (n > 100) CHECK((clipped_tokens > 0) == std::isfinite(clip_eps));  // the data exercise the clipped branch
}

}  // namespace

int main() {
  check_rows<float>(1, 1, 0.2f, 1e-5);
  check_rows<float>(4, 1037, 0.2f, 1e-5);
  check_rows<float>(3, 100, kInf, 1e-5);  // clip_eps = None
  check_rows<bf16>(3, 64, 0.1f, 1e-5);
  check_rows<fp16>(5, 33, 0.3f, 1e-5);
  return TEST_MAIN_RESULT();
}
