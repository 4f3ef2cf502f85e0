// Number formats and math shared by the CPU kernels. Torch-free: the kernels build without torch.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

namespace fastrlhf {

// 16-bit storage formats, converted to float for all arithmetic.
struct bf16 { uint16_t bits; };
struct fp16 { uint16_t bits; };

inline float bits_to_float(uint32_t u) { float f; std::memcpy(&f, &u, 4); return f; }
inline uint32_t float_to_bits(float f) { uint32_t u; std::memcpy(&u, &f, 4); return u; }

inline float to_float(float x) { return x; }
inline float to_float(bf16 x) { return bits_to_float(uint32_t(x.bits) << 16); }
inline float to_float(fp16 x) {
  uint32_t sign = uint32_t(x.bits & 0x8000) << 16, exponent = (x.bits >> 10) & 0x1f, mantissa = x.bits & 0x3ff;
  if (exponent == 0x1f) return bits_to_float(sign | 0x7f800000u | (mantissa << 13));  // inf, nan
  if (exponent == 0) {  // zero or subnormal: mantissa * 2^-24
    float magnitude = float(mantissa) * 5.9604644775390625e-8f;
    return sign ? -magnitude : magnitude;
  }
  return bits_to_float(sign | ((exponent + 112) << 23) | (mantissa << 13));
}

// x where keep, else 0, without a branch: a masked-out position is never read, so nan or inf there
// cannot leak in (x * keep would give nan). GCC 12 turns `sum += keep ? x : 0` in an omp simd
// reduction into a conditional add, which it does not vectorise; this it does.
inline float masked(bool keep, float x) { return bits_to_float(float_to_bits(x) & (0u - uint32_t(keep))); }
inline double masked(bool keep, double x) {
  uint64_t u;
  std::memcpy(&u, &x, 8);
  u &= 0ull - uint64_t(keep);
  std::memcpy(&x, &u, 8);
  return x;
}

// A mask element, read as it is stored: bool (as bytes) or float32. Kept where nonzero; not_binary
// flags a float other than 0 and 1, which the op rejects rather than reading it as a weight.
inline bool is_kept(uint8_t m) { return m != 0; }
inline bool is_kept(float m) { return m != 0.0f; }
inline bool not_binary(uint8_t) { return false; }
inline bool not_binary(float m) { return (m != 0.0f) & (m != 1.0f); }

template <typename T> T from_float(float x);
template <> inline float from_float<float>(float x) { return x; }
template <> inline bf16 from_float<bf16>(float x) {  // round to nearest even
  uint32_t u = float_to_bits(x);
  if (x != x) return bf16{0x7fc0};  // nan (written so loops still vectorise)
  return bf16{uint16_t((u + 0x7fffu + ((u >> 16) & 1u)) >> 16)};
}
template <> inline fp16 from_float<fp16>(float x) {  // round to nearest even, overflow to inf
  uint32_t u = float_to_bits(x), sign = (u >> 16) & 0x8000u;
  u &= 0x7fffffffu;
  if (u > 0x7f800000u) return fp16{uint16_t(sign | 0x7e00u)};  // nan
  if (u >= 0x477ff000u) return fp16{uint16_t(sign | 0x7c00u)};  // rounds past 65504: inf
  if (u < 0x38800000u) {  // below 2^-14: subnormal, rounded by adding 0.5 and truncating the float sum
    float shifted = bits_to_float(u) + 0.5f;
    return fp16{uint16_t(sign | (float_to_bits(shifted) - 0x3f000000u))};
  }
  uint32_t rounded = u + 0xc8000fffu + ((u >> 13) & 1u);  // rebias exponent by -112, round at bit 13
  return fp16{uint16_t(sign | (rounded >> 13))};
}

// Hot loops are compiled for AVX-512, AVX2 and baseline x86-64; the dynamic loader picks one at
// run time (GCC function multiversioning). Elsewhere, and under sanitizers, one baseline build.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(__SANITIZE_ADDRESS__)
#define FASTRLHF_MULTIVERSION __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define FASTRLHF_MULTIVERSION
#endif

constexpr float kNegInf = -std::numeric_limits<float>::infinity();
constexpr float kInf = std::numeric_limits<float>::infinity();

// exp(x) in a form compilers vectorise (no libm call): x = n*ln2 + r with |r| <= ln2/2, a degree-6
// polynomial for exp(r), and 2^n put into the exponent bits. Relative error below 2e-7.
constexpr float kExpHi = 88.0f, kExpLo = -87.3365447505531f;  // 2^n stays a normal float

// exp(x) for x in [kExpLo, kExpHi] (or nan, giving nan).
inline float exp_in_range(float x) {
  const float round_magic = 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer
  float n = (x * 1.44269504088896341f + round_magic) - round_magic;
  float r = x - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  return p * bits_to_float(uint32_t(int32_t(n) + 127) << 23);
}

// exp(-inf) = 0, exp(nan) = nan, overflow gives inf.
inline float exp_fast(float x) {
  const float xc = x > kExpHi ? kExpHi : (x < kExpLo ? kExpLo : x);
  const float result = exp_in_range(xc);
  return x < kExpLo ? 0.0f : (x > kExpHi ? kInf : result);
}

// exp_fast for x <= 0 or nan (logits shifted by their max): no overflow side to clamp, fewer
// instructions in the softmax's hottest loop.
inline float exp_nonpositive(float x) {
  const float result = exp_in_range(x < kExpLo ? kExpLo : x);
  return x < kExpLo ? 0.0f : result;
}

// A view of rows in a [B, T, V] tensor with contiguous rows: row r starts at (r / T, r % T).
template <typename T>
struct Rows {
  const T* data;
  int64_t rows_per_batch, stride_batch, stride_row;
  const T* operator[](int64_t r) const {
    return data + (r / rows_per_batch) * stride_batch + (r % rows_per_batch) * stride_row;
  }
};

}  // namespace fastrlhf
