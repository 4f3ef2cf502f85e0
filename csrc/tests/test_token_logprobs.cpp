// token_logprobs forward and backward against a direct double-precision computation.
#include "cpu/token_logprobs.h"
#include "tests/check.h"

using namespace fastrlhf;

namespace {

struct Expected {
  double logprob, entropy, lse;
  std::vector<double> grad;  // of g_logprob * logprob + g_entropy * entropy
};

Expected direct(const std::vector<float>& z, int64_t label, double temperature, double g_logprob, double g_entropy) {
  const int64_t vocab = z.size();
  double m = -INFINITY;
  for (float v : z) m = std::max(m, v / temperature);
  double sum = 0;
  for (float v : z) sum += std::exp(v / temperature - m);
  Expected e{0, 0, m + std::log(sum), std::vector<double>(vocab)};
  e.logprob = z[label] / temperature - e.lse;
  std::vector<double> p(vocab), logp(vocab);
  for (int64_t j = 0; j < vocab; ++j) {
    logp[j] = z[j] / temperature - e.lse;
    p[j] = std::exp(logp[j]);
    if (p[j] > 0) e.entropy -= p[j] * logp[j];
  }
  for (int64_t j = 0; j < vocab; ++j) {
    double d_entropy = p[j] > 0 ? -p[j] * (logp[j] + e.entropy) : 0.0;
    e.grad[j] = (g_logprob * ((j == label) - p[j]) + g_entropy * d_entropy) / temperature;
  }
  return e;
}

// Runs both kernels on `rows` rows of `vocab` logits stored as T, row 1 ignored, and compares.
template <typename T>
void check_rows(int64_t rows, int64_t vocab, float scale, float temperature, double tol) {
  const int64_t ignore = -100;
  auto values = fastrlhf_test::random_normal(rows * vocab, scale, uint32_t(vocab));
  std::vector<T> stored(values.size());
  for (size_t i = 0; i < values.size(); ++i) {
    stored[i] = from_float<T>(values[i]);
    values[i] = to_float(stored[i]);  // compare on exactly the stored values
  }
  if (vocab > 3) stored[2] = from_float<T>(kNegInf), values[2] = kNegInf;  // a masked-out token
  std::vector<int64_t> labels(rows);
  for (int64_t r = 0; r < rows; ++r) labels[r] = (r * 7919 + 3) % vocab;
  if (rows > 1) labels[1] = ignore;
  std::vector<float> logprobs(rows), entropy(rows), g_logprob(rows), g_entropy(rows);
  std::vector<SoftmaxRow> stats(rows);
  for (int64_t r = 0; r < rows; ++r) g_logprob[r] = 0.5f + r, g_entropy[r] = 1.0f - 0.25f * r;
  Rows<T> view{stored.data(), rows, 0, vocab};
  const float inv_temperature = float(1.0 / temperature);
  token_logprobs_forward<T>(view, vocab, labels.data(), inv_temperature, ignore, 0, rows, logprobs.data(),
                            entropy.data(), stats.data());
  std::vector<T> grad(rows * vocab);
  token_logprobs_backward<T>(view, vocab, labels.data(), stats.data(), entropy.data(), g_logprob.data(),
                             g_entropy.data(), inv_temperature, ignore, 0, rows, grad.data());
  const double grad_tol = sizeof(T) == 2 ? 1.0 / 128 : 1e-6;
  for (int64_t r = 0; r < rows; ++r) {
    if (labels[r] == ignore) {
      CHECK(logprobs[r] == 0.0f && entropy[r] == 0.0f);
      for (int64_t j = 0; j < vocab; ++j) CHECK(to_float(grad[r * vocab + j]) == 0.0f);
      continue;
    }
    std::vector<float> row(values.begin() + r * vocab, values.begin() + (r + 1) * vocab);
    Expected e = direct(row, labels[r], temperature, g_logprob[r], g_entropy[r]);
    CHECK_CLOSE(logprobs[r], e.logprob, tol, tol);
    CHECK_CLOSE(entropy[r], e.entropy, tol, tol);
    CHECK_CLOSE(stats[r].max_logit * inv_temperature + stats[r].log_sum, e.lse, tol, tol);
    double grad_scale = 0;
    for (double g : e.grad) grad_scale = std::max(grad_scale, std::fabs(g));
    for (int64_t j = 0; j < vocab; ++j) CHECK_CLOSE(to_float(grad[r * vocab + j]), e.grad[j], grad_tol * grad_scale, 0.0);
  }
}

// A peaked row at a low temperature: the gradient of the label's log-prob is 1 - p ~ exp(-19370) ~ 0
// (not 1 - p's rounding error times 1/T), and tiny temperatures stay finite.
void check_low_temperature(double temperature) {
  const std::vector<float> z = {19.37f, 0.0f, -5.1f};
  const int64_t label = 0;
  const float inv_temperature = float(1.0 / temperature);
  float logprob, entropy;
  SoftmaxRow stats;
  const float one = 1.0f;
  Rows<float> view{z.data(), 1, 0, 3};
  token_logprobs_forward<float>(view, 3, &label, inv_temperature, -100, 0, 1, &logprob, &entropy, &stats);
  float grad[3];
  token_logprobs_backward<float>(view, 3, &label, &stats, &entropy, &one, &one, inv_temperature, -100, 0, 1, grad);
  CHECK(logprob == 0.0f && entropy == 0.0f);
  for (float g : grad) CHECK(g == 0.0f);
}

}  // namespace

int main() {
  check_low_temperature(1e-3);
  check_low_temperature(1e-25);
  check_rows<float>(4, 1, 1.0f, 1.0f, 1e-6);  // V = 1: logprob 0, entropy 0
  check_rows<float>(5, 1000, 1.0f, 1.0f, 2e-6);
  check_rows<float>(3, 50021, 4.0f, 0.7f, 1e-5);  // large odd vocabulary, temperature != 1
  check_rows<bf16>(3, 4099, 30.0f, 1.0f, 1e-5);   // |z| ~ 30 stored in bf16
  check_rows<fp16>(3, 333, 3.0f, 1.3f, 1e-5);
  return TEST_MAIN_RESULT();
}
