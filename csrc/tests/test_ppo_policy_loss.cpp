// The policy loss rows kernel (token gradients and row sums) against a direct double computation.
#include <vector>

#include "cpu/ppo_policy_loss.h"
#include "tests/check.h"

using namespace fastrlhf;

namespace {

struct Token {
  double loss, grad, clipped, kl, ratio;
  bool capped;  // by the dual clip
};

Token direct(double logprob, double old, double a, PolicyClip clip) {
  const double log_ratio = logprob - old;
  const double ratio = std::exp(std::min(std::max(log_ratio, -20.0), 20.0));
  const double unclipped = -a * ratio;
  const double clipped = -a * std::min(std::max(ratio, 1.0 - clip.clip_eps), 1.0 + double(clip.clip_eps_high));
  double loss = std::max(unclipped, clipped), grad = unclipped >= clipped && std::fabs(log_ratio) <= 20 ? unclipped : 0;
  const bool capped = a < 0 && loss > -double(clip.dual_clip) * a;
  if (capped) loss = -double(clip.dual_clip) * a, grad = 0;
  return {loss, grad, clipped > unclipped ? 1.0 : 0.0, 0.5 * log_ratio * log_ratio, ratio, capped};
}

template <typename T>
void check_rows(int64_t rows, int64_t tokens, PolicyClip clip, double tol) {
  const int64_t n = rows * tokens;
  auto lp = fastrlhf_test::random_normal(n, 1.0f, 1), old = fastrlhf_test::random_normal(n, 1.0f, 2);
  auto adv = fastrlhf_test::random_normal(n, 1.0f, 3);
  std::vector<T> lp_t(n), old_t(n), adv_t(n);
  std::vector<uint8_t> mask(n);
  for (int64_t i = 0; i < n; ++i) {
    lp_t[i] = from_float<T>(lp[i]), old_t[i] = from_float<T>(old[i] * 0.6f + lp[i]), adv_t[i] = from_float<T>(adv[i]);
    mask[i] = (i * 7919) % 5 != 0 && i / tokens != 1;  // holes, and row 1 empty
  }
  if (n > 3) old_t[3] = from_float<T>(to_float(lp_t[3]) + 25.0f);  // beyond the log-ratio clamp
  std::vector<float> token_grad(n), partials((kFirstStat + kPolicyStats) * rows);
  ppo_policy_loss_rows<T>(lp_t.data(), old_t.data(), adv_t.data(), mask.data(), tokens, clip, rows, 0, rows,
                          token_grad.data(), partials.data());
  int64_t capped = 0;
  for (int64_t r = 0; r < rows; ++r) {
    double sums[kFirstStat + kPolicyStats] = {};
    for (int64_t i = r * tokens; i < (r + 1) * tokens; ++i) {
      const Token e = direct(to_float(lp_t[i]), to_float(old_t[i]), to_float(adv_t[i]), clip);
      CHECK_CLOSE(token_grad[i], mask[i] ? e.grad : 0.0, tol, tol);
      if (!mask[i]) continue;
      capped += e.capped;
      const double values[] = {1, e.loss, e.clipped, e.kl, e.ratio};
      for (int k = 0; k < kFirstStat + kPolicyStats; ++k) sums[k] += values[k];
    }
    for (int k = 0; k < kFirstStat + kPolicyStats; ++k) CHECK_CLOSE(partials[k * rows + r], sums[k], tol, tol);
  }
  if (n > 100) CHECK((capped > 0) == std::isfinite(clip.dual_clip));  // the data exercise the dual clip
}

}  // namespace

int main() {
  check_rows<float>(1, 1, {0.2f, 0.2f, kInf}, 1e-5);
  check_rows<float>(4, 1037, {0.2f, 0.2f, kInf}, 1e-5);
  check_rows<float>(3, 100, {0.1f, 0.28f, 3.0f}, 1e-5);  // asymmetric clip, dual clip
  check_rows<bf16>(3, 64, {0.2f, 0.3f, 2.0f}, 1e-5);
  check_rows<fp16>(5, 33, {0.2f, 0.2f, kInf}, 1e-5);
  return TEST_MAIN_RESULT();
}
