// Quantized linear layers for CPUs: 4-bit (q4_1) and 8-bit (q8_0) weights in blocks of 32,
// multiplied by activations quantized per row and per block of 32 to int8.
//
// Weight layouts match GGUF's Q4_1 and Q8_0 blocks, split into a quant array and fp16 scale
// arrays, so a model shipped in those formats runs on exactly its own weights:
//   q4_1: qs [N, K/2] uint8 (per block of 32: byte j holds element j in its low nibble and
//         element j + 16 in its high nibble), d [N, K/32] fp16, m [N, K/32] fp16;
//         w = d * q + m.
//   q8_0: qs [N, K] int8, d [N, K/32] fp16; w = d * q.
// The blocks are made in quantize.cpp. Every output element is one fixed-order dot product
// that depends only on its own row of x, so results do not change with batch size or thread
// count.
#include "heron_cpu.h"

#include <ATen/Parallel.h>
#include <c10/util/Half.h>

#include <cmath>
#include <cstring>

#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#include <immintrin.h>
#define HERON_AVX2 1
#endif
#if defined(HERON_AVX2) && defined(__AVX512VL__) && defined(__AVX512VNNI__)
// vpdpbusd gives the same int32 lanes as maddubs + madd (each lane sums 4 products, and
// the int16 step cannot saturate for these operands), in one instruction.
#define HERON_VNNI 1
#endif

#include "vec.h"

namespace heron {
namespace {

#ifdef HERON_AVX2
// Sums of the 8 int32 lanes of each of p0..p3, as [b0, b1, b2, b3 | b0, b1, b2, b3] halves:
// a lane-wise float sum of both halves gives each block's dot product.
inline __m256i sum4(__m256i p0, __m256i p1, __m256i p2, __m256i p3) {
  // Interleave-and-add instead of hadd (single-uop shuffles).
  const __m256i s01 = _mm256_add_epi32(_mm256_unpacklo_epi32(p0, p1),
                                       _mm256_unpackhi_epi32(p0, p1));  // [a02 b02 a13 b13]
  const __m256i s23 = _mm256_add_epi32(_mm256_unpacklo_epi32(p2, p3),
                                       _mm256_unpackhi_epi32(p2, p3));
  return _mm256_add_epi32(_mm256_unpacklo_epi64(s01, s23), _mm256_unpackhi_epi64(s01, s23));
}

inline __m256i unpack_q4(const uint8_t* src) {
  const __m128i raw = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src));
  return _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(raw, 4), raw),
                          _mm256_set1_epi8(0x0F));  // 32 values 0..15, in order
}

inline __m256i dot_u8s8(__m256i w, const int8_t* x) {
  const __m256i xv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x));
#ifdef HERON_VNNI
  return _mm256_dpbusd_epi32(_mm256_setzero_si256(), w, xv);
#else
  return _mm256_madd_epi16(_mm256_maddubs_epi16(w, xv), _mm256_set1_epi16(1));
#endif
}

inline __m256i dot_s8s8(__m256i wabs, __m256i w, const int8_t* x) {
  // maddubs takes unsigned x signed: |w| and x carrying w's sign.
  const __m256i xv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x));
#ifdef HERON_VNNI
  return _mm256_dpbusd_epi32(_mm256_setzero_si256(), wabs, _mm256_sign_epi8(xv, w));
#else
  return _mm256_madd_epi16(_mm256_maddubs_epi16(wabs, _mm256_sign_epi8(xv, w)),
                           _mm256_set1_epi16(1));
#endif
}

inline __m128 load_half4(const uint16_t* p) {
  return _mm_cvtph_ps(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p)));
}

inline float hsum128(__m128 v) {
  v = _mm_add_ps(v, _mm_movehl_ps(v, v));
  v = _mm_add_ss(v, _mm_movehdup_ps(v));
  return _mm_cvtss_f32(v);
}

// R rows of x against one q4_1 weight row. Blocks go four at a time (their int sums packed
// into one vector, scaled by one multiply), then one at a time for the rest; the order of
// every float operation is fixed, whatever R is.
template <int R>
inline void dot_q4_rows(const uint8_t* wq, const uint16_t* wd, const uint16_t* wm,
                        const int8_t* xq, const float* xd, const float* xs, int64_t K,
                        int64_t nb, float* out, int64_t out_stride) {
  __m256 acc[R];
  __m128 macc[R];
  for (int r = 0; r < R; ++r) {
    acc[r] = _mm256_setzero_ps();
    macc[r] = _mm_setzero_ps();
  }
  int64_t b = 0;
  for (; b + 4 <= nb; b += 4) {
    const __m128 d4 = load_half4(wd + b), m4 = load_half4(wm + b);
    const __m256i w0 = unpack_q4(wq + b * 16), w1 = unpack_q4(wq + b * 16 + 16);
    const __m256i w2 = unpack_q4(wq + b * 16 + 32), w3 = unpack_q4(wq + b * 16 + 48);
    for (int r = 0; r < R; ++r) {
      const int8_t* x = xq + r * K + b * QK;
      const __m256i s = sum4(dot_u8s8(w0, x), dot_u8s8(w1, x + QK), dot_u8s8(w2, x + 2 * QK),
                             dot_u8s8(w3, x + 3 * QK));
      const __m128 sc = _mm_mul_ps(d4, _mm_loadu_ps(xd + r * nb + b));
      acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s), _mm256_set_m128(sc, sc), acc[r]);
      macc[r] = _mm_fmadd_ps(m4, _mm_loadu_ps(xs + r * nb + b), macc[r]);
    }
  }
  if (b < nb) {
    // The last 1-3 blocks, padded with zero blocks to the same four-wide step.
    const int64_t rest = nb - b;
    uint16_t dh[4] = {0, 0, 0, 0}, mh[4] = {0, 0, 0, 0};
    for (int64_t i = 0; i < rest; ++i) {
      dh[i] = wd[b + i];
      mh[i] = wm[b + i];
    }
    const __m128 d4 = load_half4(dh), m4 = load_half4(mh);
    const __m256i zero = _mm256_setzero_si256();
    const __m256i w0 = unpack_q4(wq + b * 16);
    const __m256i w1 = rest > 1 ? unpack_q4(wq + b * 16 + 16) : zero;
    const __m256i w2 = rest > 2 ? unpack_q4(wq + b * 16 + 32) : zero;
    for (int r = 0; r < R; ++r) {
      const int8_t* x = xq + r * K + b * QK;
      float xdv[4] = {0.f, 0.f, 0.f, 0.f}, xsv[4] = {0.f, 0.f, 0.f, 0.f};
      for (int64_t i = 0; i < rest; ++i) {
        xdv[i] = xd[r * nb + b + i];
        xsv[i] = xs[r * nb + b + i];
      }
      const __m256i s = sum4(dot_u8s8(w0, x), rest > 1 ? dot_u8s8(w1, x + QK) : zero,
                             rest > 2 ? dot_u8s8(w2, x + 2 * QK) : zero, zero);
      const __m128 sc = _mm_mul_ps(d4, _mm_loadu_ps(xdv));
      acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s), _mm256_set_m128(sc, sc), acc[r]);
      macc[r] = _mm_fmadd_ps(m4, _mm_loadu_ps(xsv), macc[r]);
    }
  }
  for (int r = 0; r < R; ++r) out[r * out_stride] = hsum8(acc[r]) + hsum128(macc[r]);
}

template <int R>
inline void dot_q8_rows(const int8_t* wq, const uint16_t* wd, const int8_t* xq,
                        const float* xd, int64_t K, int64_t nb, float* out,
                        int64_t out_stride) {
  __m256 acc[R];
  for (int r = 0; r < R; ++r) acc[r] = _mm256_setzero_ps();
  int64_t b = 0;
  for (; b + 4 <= nb; b += 4) {
    const __m128 d4 = load_half4(wd + b);
    const int8_t* wb = wq + b * QK;
    const __m256i w0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wb));
    const __m256i w1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wb + QK));
    const __m256i w2 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wb + 2 * QK));
    const __m256i w3 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wb + 3 * QK));
    const __m256i a0 = _mm256_sign_epi8(w0, w0), a1 = _mm256_sign_epi8(w1, w1);
    const __m256i a2 = _mm256_sign_epi8(w2, w2), a3 = _mm256_sign_epi8(w3, w3);
    for (int r = 0; r < R; ++r) {
      const int8_t* x = xq + r * K + b * QK;
      const __m256i s = sum4(dot_s8s8(a0, w0, x), dot_s8s8(a1, w1, x + QK),
                             dot_s8s8(a2, w2, x + 2 * QK), dot_s8s8(a3, w3, x + 3 * QK));
      const __m128 sc = _mm_mul_ps(d4, _mm_loadu_ps(xd + r * nb + b));
      acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s), _mm256_set_m128(sc, sc), acc[r]);
    }
  }
  if (b < nb) {
    const int64_t rest = nb - b;
    uint16_t dh[4] = {0, 0, 0, 0};
    for (int64_t i = 0; i < rest; ++i) dh[i] = wd[b + i];
    const __m128 d4 = load_half4(dh);
    const __m256i zero = _mm256_setzero_si256();
    const int8_t* wb = wq + b * QK;
    const __m256i w0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wb));
    const __m256i w1 =
        rest > 1 ? _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wb + QK)) : zero;
    const __m256i w2 =
        rest > 2 ? _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wb + 2 * QK)) : zero;
    const __m256i a0 = _mm256_sign_epi8(w0, w0), a1 = _mm256_sign_epi8(w1, w1);
    const __m256i a2 = _mm256_sign_epi8(w2, w2);
    for (int r = 0; r < R; ++r) {
      const int8_t* x = xq + r * K + b * QK;
      float xdv[4] = {0.f, 0.f, 0.f, 0.f};
      for (int64_t i = 0; i < rest; ++i) xdv[i] = xd[r * nb + b + i];
      const __m256i s = sum4(dot_s8s8(a0, w0, x), rest > 1 ? dot_s8s8(a1, w1, x + QK) : zero,
                             rest > 2 ? dot_s8s8(a2, w2, x + 2 * QK) : zero, zero);
      const __m128 sc = _mm_mul_ps(d4, _mm_loadu_ps(xdv));
      acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s), _mm256_set_m128(sc, sc), acc[r]);
    }
  }
  for (int r = 0; r < R; ++r) out[r * out_stride] = hsum8(acc[r]);
}
#endif

// Scalar reference: same math, used where AVX2 is missing.
inline float dot_q4_scalar(const uint8_t* wq, const uint16_t* wd, const uint16_t* wm,
                           const int8_t* xq, const float* xd, const float* xs, int64_t nb) {
  float total = 0.f;
  for (int64_t b = 0; b < nb; ++b) {
    int32_t acc = 0;
    for (int j = 0; j < 16; ++j) {
      acc += (wq[b * 16 + j] & 0x0F) * xq[b * QK + j];
      acc += (wq[b * 16 + j] >> 4) * xq[b * QK + j + 16];
    }
    total += half_to_float(wd[b]) * xd[b] * static_cast<float>(acc);
    total = std::fma(half_to_float(wm[b]), xs[b], total);
  }
  return total;
}

inline float dot_q8_scalar(const int8_t* wq, const uint16_t* wd, const int8_t* xq,
                           const float* xd, int64_t nb) {
  float total = 0.f;
  for (int64_t b = 0; b < nb; ++b) {
    int32_t acc = 0;
    for (int j = 0; j < QK; ++j) acc += wq[b * QK + j] * xq[b * QK + j];
    total += half_to_float(wd[b]) * xd[b] * static_cast<float>(acc);
  }
  return total;
}


#ifdef HERON_AVX2
constexpr int64_t kAhead = 4;  // weight rows prefetched ahead

inline void prefetch_bytes(const void* p, int64_t n) {
  const char* c = static_cast<const char*>(p);
  for (int64_t i = 0; i < n; i += 64) _mm_prefetch(c + i, _MM_HINT_T0);
}
#endif

// Weight rows per task: enough work to amortise scheduling, small enough to balance.
constexpr int64_t kRowGrain = 32;

}  // namespace

// Per row and block of 32: xq = round(x / dx), dx = amax / 127; xs = dx * sum(xq).
at::Tensor linear_q4_1(const at::Tensor& x, const at::Tensor& qs, const at::Tensor& d,
                       const at::Tensor& m, const c10::optional<at::Tensor>& bias) {
  if (qs.dim() == 3) return linear_q4_1_x8(x, qs, d, m, bias);
  const int64_t N = qs.size(0), K = qs.size(1) * 2, nb = K / QK;
  check_linear_input(x, K);
  const int64_t M = x.size(0);
  at::Tensor out = at::empty({M, N}, at::kFloat);
  const uint8_t* wq = qs.data_ptr<uint8_t>();
  const uint16_t* wd = reinterpret_cast<const uint16_t*>(d.data_ptr<at::Half>());
  const uint16_t* wm = reinterpret_cast<const uint16_t*>(m.data_ptr<at::Half>());
  QuantizedRows xr = quantize_rows(x);
  const int8_t* xq = xr.q.data_ptr<int8_t>();
  const float* xd = xr.d.data_ptr<float>();
  const float* xs = xr.s.data_ptr<float>();
  float* op = out.data_ptr<float>();
  at::parallel_for(0, N, kRowGrain, [&](int64_t begin, int64_t end) {
    for (int64_t n = begin; n < end; ++n) {
      const uint8_t* wrow = wq + n * (K / 2);
      const uint16_t* drow = wd + n * nb;
      const uint16_t* mrow = wm + n * nb;
      int64_t r = 0;
#ifdef HERON_AVX2
      if (n + kAhead < end) {  // the row kAhead on: DRAM latency is what bounds one user
        prefetch_bytes(wrow + kAhead * (K / 2), K / 2);
        prefetch_bytes(drow + kAhead * nb, nb * 2);
        prefetch_bytes(mrow + kAhead * nb, nb * 2);
      }
      for (; r + 8 <= M; r += 8)
        dot_q4_rows<8>(wrow, drow, mrow, xq + r * K, xd + r * nb, xs + r * nb, K, nb,
                       op + r * N + n, N);
      for (; r + 4 <= M; r += 4)
        dot_q4_rows<4>(wrow, drow, mrow, xq + r * K, xd + r * nb, xs + r * nb, K, nb,
                       op + r * N + n, N);
      // The last 1-3 rows in one call, so 2 or 3 rows (a verify step, a small batch)
      // unpack each weight block once, not once per row.
      switch (M - r) {
        case 3:
          dot_q4_rows<3>(wrow, drow, mrow, xq + r * K, xd + r * nb, xs + r * nb, K, nb,
                         op + r * N + n, N);
          break;
        case 2:
          dot_q4_rows<2>(wrow, drow, mrow, xq + r * K, xd + r * nb, xs + r * nb, K, nb,
                         op + r * N + n, N);
          break;
        case 1:
          dot_q4_rows<1>(wrow, drow, mrow, xq + r * K, xd + r * nb, xs + r * nb, K, nb,
                         op + r * N + n, N);
          break;
        default:
          break;
      }
#else
      for (; r < M; ++r)
        op[r * N + n] = dot_q4_scalar(wrow, drow, mrow, xq + r * K, xd + r * nb, xs + r * nb, nb);
#endif
    }
  });
  if (bias.has_value()) out.add_(*bias);
  return out;
}

at::Tensor linear_q8_0(const at::Tensor& x, const at::Tensor& qs, const at::Tensor& d,
                       const c10::optional<at::Tensor>& bias) {
  if (qs.dim() == 3) return linear_q8_0_x8(x, qs, d, bias);
  const int64_t N = qs.size(0), K = qs.size(1), nb = K / QK;
  check_linear_input(x, K);
  const int64_t M = x.size(0);
  at::Tensor out = at::empty({M, N}, at::kFloat);
  const int8_t* wq = qs.data_ptr<int8_t>();
  const uint16_t* wd = reinterpret_cast<const uint16_t*>(d.data_ptr<at::Half>());
  QuantizedRows xr = quantize_rows(x);
  const int8_t* xq = xr.q.data_ptr<int8_t>();
  const float* xd = xr.d.data_ptr<float>();
  float* op = out.data_ptr<float>();
  at::parallel_for(0, N, kRowGrain, [&](int64_t begin, int64_t end) {
    for (int64_t n = begin; n < end; ++n) {
      const int8_t* wrow = wq + n * K;
      const uint16_t* drow = wd + n * nb;
      int64_t r = 0;
#ifdef HERON_AVX2
      if (n + kAhead < end) {
        prefetch_bytes(wrow + kAhead * K, K);
        prefetch_bytes(drow + kAhead * nb, nb * 2);
      }
      for (; r + 8 <= M; r += 8)
        dot_q8_rows<8>(wrow, drow, xq + r * K, xd + r * nb, K, nb, op + r * N + n, N);
      for (; r + 4 <= M; r += 4)
        dot_q8_rows<4>(wrow, drow, xq + r * K, xd + r * nb, K, nb, op + r * N + n, N);
      switch (M - r) {  // the last 1-3 rows in one call, as for q4_1
        case 3:
          dot_q8_rows<3>(wrow, drow, xq + r * K, xd + r * nb, K, nb, op + r * N + n, N);
          break;
        case 2:
          dot_q8_rows<2>(wrow, drow, xq + r * K, xd + r * nb, K, nb, op + r * N + n, N);
          break;
        case 1:
          dot_q8_rows<1>(wrow, drow, xq + r * K, xd + r * nb, K, nb, op + r * N + n, N);
          break;
        default:
          break;
      }
#else
      for (; r < M; ++r) op[r * N + n] = dot_q8_scalar(wrow, drow, xq + r * K, xd + r * nb, nb);
#endif
    }
  });
  if (bias.has_value()) out.add_(*bias);
  return out;
}

bool has_vnni() {
#ifdef HERON_VNNI
  return true;
#else
  return false;
#endif
}

bool has_avx2() {
#ifdef HERON_AVX2
  return true;
#else
  return false;
#endif
}

}  // namespace heron
