// kl_penalty forward and backward against a direct double-precision computation.
#include "cpu/kl_penalty.h"
#include "tests/check.h"

#include <algorithm>

using namespace fastrlhf;

namespace {

struct Expected {
  double kl, slope;  // slope: d kl / d logprobs after the clamp
};

Expected direct(double x, int estimator, double clamp) {
  double kl = 0, slope = 0;
  switch (estimator) {
    case kK1: kl = x, slope = 1; break;
    case kK2: kl = 0.5 * x * x, slope = x; break;
    case kK3: {
      const double y = std::max(x, -clamp);
      kl = std::exp(-y) - 1 + y, slope = x >= -clamp ? 1 - std::exp(-y) : 0;
      break;
    }
    default: kl = std::fabs(x), slope = (x > 0) - (x < 0);
  }
  if (kl < -clamp || kl > clamp) slope = 0;  // the gradient passes on the bounds
  return {std::min(std::max(kl, -clamp), clamp), slope};
}

// Both kernels on n elements stored as T, for one estimator and clamp; each gradient output alone too.
template <typename T>
void check(int estimator, float clamp, int64_t n, double tol) {
  auto a = fastrlhf_test::random_normal(n, 1.5f, uint32_t(n + estimator));
  auto b = fastrlhf_test::random_normal(n, 1.5f, uint32_t(n + 99));
  auto g = fastrlhf_test::random_normal(n, 1.0f, 7);
  std::vector<T> logprobs(n), ref(n);
  for (int64_t i = 0; i < n; ++i) logprobs[i] = from_float<T>(a[i]), ref[i] = from_float<T>(b[i]);
  if (n > 2) logprobs[1] = ref[1];                                    // x = 0: d|x|/dx = 0
  if (n > 3 && clamp < kInf) ref[2] = from_float<T>(0.0f), logprobs[2] = from_float<T>(clamp);  // k1 on a bound
  std::vector<float> kl(n);
  kl_penalty_forward<T>(logprobs.data(), ref.data(), estimator, clamp, 0, n, kl.data());
  std::vector<T> grad_logprobs(n), grad_ref(n), alone(n);
  kl_penalty_backward<T>(logprobs.data(), ref.data(), g.data(), estimator, clamp, 0, n, grad_logprobs.data(),
                         grad_ref.data());
  kl_penalty_backward<T>(logprobs.data(), ref.data(), g.data(), estimator, clamp, 0, n, nullptr, alone.data());
  const double grad_tol = sizeof(T) == 2 ? 1.0 / 128 : 1e-6;
  for (int64_t i = 0; i < n; ++i) {
    const double x = double(to_float(logprobs[i])) - double(to_float(ref[i]));
    const Expected e = direct(x, estimator, clamp);
    CHECK_CLOSE(kl[i], e.kl, tol, tol);
    CHECK(std::isfinite(kl[i]));
    CHECK_CLOSE(to_float(grad_logprobs[i]), g[i] * e.slope, grad_tol, grad_tol);
    CHECK_CLOSE(to_float(grad_ref[i]), -g[i] * e.slope, grad_tol, grad_tol);
    CHECK(to_float(alone[i]) == to_float(grad_ref[i]));
  }
}

}  // namespace

int main() {
  for (int estimator : {kK1, kK2, kK3, kAbs}) {
    for (float clamp : {kInf, 0.5f, 3.0f}) {
      check<float>(estimator, clamp, 1, 2e-6);
      check<float>(estimator, clamp, 1037, 2e-6);  // odd: the vector loops' tails, and more than one block
      check<bf16>(estimator, clamp, 301, 2e-6);
      check<fp16>(estimator, clamp, 301, 2e-6);
    }
  }
  // k3 far below -clamp: the input is clamped before the exp, so nothing overflows.
  float huge = -200.0f, zero = 0.0f, kl = 0.0f, one = 1.0f, grad = 1.0f;
  kl_penalty_forward<float>(&huge, &zero, kK3, 5.0f, 0, 1, &kl);
  CHECK(kl == 5.0f);
  kl_penalty_backward<float>(&huge, &zero, &one, kK3, 5.0f, 0, 1, &grad, nullptr);
  CHECK(grad == 0.0f);
  return TEST_MAIN_RESULT();
}
