// exp_fast against std::exp; bf16 / fp16 conversions against known bit patterns.
#include "cpu/numeric.h"
#include "tests/check.h"

using namespace fastrlhf;

static void test_exp_fast() {
  for (float x = -87.0f; x < 88.0f; x += 0.0137f) CHECK_CLOSE(exp_fast(x), std::exp(double(x)), 0.0, 3e-7);
  CHECK(exp_fast(kNegInf) == 0.0f);
  CHECK(exp_fast(-200.0f) == 0.0f);
  CHECK(std::isinf(exp_fast(200.0f)));
  CHECK(std::isnan(exp_fast(std::nanf(""))));
  CHECK(exp_fast(0.0f) == 1.0f);
}

static void test_bf16() {
  CHECK(to_float(bf16{0x3f80}) == 1.0f);
  CHECK(to_float(bf16{0xc040}) == -3.0f);
  CHECK(from_float<bf16>(1.0f).bits == 0x3f80);
  CHECK(from_float<bf16>(1.00390625f).bits == 0x3f80);  // halfway between 1 and 1+2^-7: to even
  CHECK(from_float<bf16>(1.01171875f).bits == 0x3f82);  // halfway between 1+2^-7 and 1+2^-6: to even
  CHECK(from_float<bf16>(std::nanf("")).bits == 0x7fc0);
  for (float x : {0.1f, -2.5f, 3.14159f, 1e30f, -1e-30f}) CHECK_CLOSE(to_float(from_float<bf16>(x)), x, 0.0, 1.0 / 256);
}

static void test_fp16() {
  CHECK(to_float(fp16{0x3c00}) == 1.0f);
  CHECK(to_float(fp16{0x7bff}) == 65504.0f);
  CHECK(to_float(fp16{0x0001}) == 5.9604644775390625e-8f);  // smallest subnormal
  CHECK(std::isinf(to_float(fp16{0xfc00})) && to_float(fp16{0xfc00}) < 0);
  CHECK(std::isnan(to_float(fp16{0x7e00})));
  CHECK(from_float<fp16>(1.0f).bits == 0x3c00);
  CHECK(from_float<fp16>(65504.0f).bits == 0x7bff);
  CHECK(from_float<fp16>(65520.0f).bits == 0x7c00);  // rounds past the largest finite value
  CHECK(from_float<fp16>(-0.0f).bits == 0x8000);
  CHECK(from_float<fp16>(5.9604644775390625e-8f).bits == 0x0001);
  CHECK(from_float<fp16>(2.98023223876953125e-8f).bits == 0x0000);  // half the smallest subnormal: to even
  CHECK(from_float<fp16>(1.00048828125f).bits == 0x3c00);           // halfway above 1: to even
  CHECK((from_float<fp16>(std::nanf("")).bits & 0x7c00) == 0x7c00);
  // Every finite fp16 value survives a round trip.
  for (uint32_t bits = 0; bits < 0x10000; ++bits) {
    if ((bits & 0x7c00) == 0x7c00) continue;
    CHECK(from_float<fp16>(to_float(fp16{uint16_t(bits)})).bits == bits);
  }
}

int main() {
  test_exp_fast();
  test_bf16();
  test_fp16();
  return TEST_MAIN_RESULT();
}
