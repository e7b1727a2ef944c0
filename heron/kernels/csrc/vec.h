// Small vector helpers shared by the kernel sources (header-only, inlined).
#pragma once

#include <cstdint>

#if defined(__AVX2__) && defined(__FMA__) && !defined(HERON_AVX2)
#define HERON_AVX2 1
#endif
#ifdef HERON_AVX2
#include <immintrin.h>
#endif

namespace heron {

#ifdef HERON_AVX2
inline float hsum8(__m256 v) {
  __m128 lo = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  lo = _mm_add_ps(lo, _mm_movehl_ps(lo, lo));
  lo = _mm_add_ss(lo, _mm_movehdup_ps(lo));
  return _mm_cvtss_f32(lo);
}
#endif

// sum(a[i] * b[i]) over n floats.
inline float dot(const float* a, const float* b, int64_t n) {
  int64_t i = 0;
  float total = 0.f;
#ifdef HERON_AVX2
  __m256 acc = _mm256_setzero_ps();
  for (; i + 8 <= n; i += 8)
    acc = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), acc);
  total = hsum8(acc);
#endif
  for (; i < n; ++i) total += a[i] * b[i];
  return total;
}

}  // namespace heron
