// Quantized linears on weights repacked eight output rows at a time, for CPUs with AVX2 (and
// faster with AVX-512 VNNI). The numbers are GGUF's Q4_1 / Q8_0 blocks unchanged; only their
// order in memory differs, so that one 256-bit vpdpbusd (VNNI) or maddubs (AVX2) multiplies
// four inputs into eight outputs at once and a block's eight integer dot products come out in
// one vector, with no horizontal sums. Each extra row of x then costs only its own multiplies:
// the weight bytes are loaded and unpacked once for up to 4 (AVX2) or 8 (VNNI) rows, which is
// what makes verifying speculative drafts cheap.
//
// Layouts, for G = N / 8 groups of eight output rows c = 0..7 and nb = K / 32 blocks:
//   q4_1 x8: qs [G, nb, 128] uint8: byte h * 32 + c * 4 + t (h = 0..3, t = 0..3) holds the
//            weight of row c at block offset 8h + t in its low nibble and at 8h + 4 + t in
//            its high nibble; d, m [G, nb, 8] fp16 (row c's block scale and minimum).
//   q8_0 x8: qs [G, nb, 256] uint8: byte q * 32 + c * 4 + t holds row c's weight at block
//            offset 4q + t, plus 128 (vpdpbusd multiplies unsigned by signed bytes; the
//            offset is taken back exactly with 128 * sum(xq)); d [G, nb, 8] fp16.
// Each output is still one fixed-order computation over its own row of x (integer block sums,
// then one float multiply-add per block), so results do not depend on the batch or on the
// number of threads.
#include "heron_cpu.h"

#include <ATen/Parallel.h>

#include <cstring>

#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#include <immintrin.h>
#define HERON_PACKED 1
#if defined(__AVX512VL__) && defined(__AVX512VNNI__)
#define HERON_PACKED_VNNI 1
#endif
#endif

namespace heron {
namespace {

constexpr int64_t kCols = 8;       // output rows per group
constexpr int64_t kGroupGrain = 4;  // groups per parallel task, at least

[[maybe_unused]] void check_packed(const at::Tensor& qs, int64_t bytes,
                                   const std::vector<at::Tensor>& scales) {
  TORCH_CHECK(qs.dim() == 3 && qs.size(2) == bytes && qs.scalar_type() == at::kByte &&
                  qs.is_contiguous(),
              "packed weights must be a contiguous uint8 [G, nb, ", bytes, "] tensor");
  for (const auto& s : scales)
    TORCH_CHECK(s.dim() == 3 && s.size(0) == qs.size(0) && s.size(1) == qs.size(1) &&
                    s.size(2) == kCols && s.scalar_type() == at::kHalf && s.is_contiguous(),
                "packed scales must be contiguous float16 [G, nb, 8] tensors");
}

#ifdef HERON_PACKED
inline __m256i broadcast4(const int8_t* p) {
  int32_t v;
  std::memcpy(&v, p, 4);
  return _mm256_set1_epi32(v);
}

inline __m256 load_half8(const uint16_t* p) {
  return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}

#ifdef HERON_PACKED_VNNI
// R rows of x against one group of eight q4_1 weight rows; writes out[r * ldo + c].
template <int R>
inline void tile_q4(const uint8_t* wq, const uint16_t* wd, const uint16_t* wm, const int8_t* xq,
                    const float* xd, const float* xs, int64_t K, int64_t nb, float* out,
                    int64_t ldo) {
  const __m256i low = _mm256_set1_epi8(0x0F);
  __m256 acc[R], macc[R];
  for (int r = 0; r < R; ++r) acc[r] = macc[r] = _mm256_setzero_ps();
  for (int64_t b = 0; b < nb; ++b) {
    const uint8_t* wb = wq + b * 128;
    __m256i isum[R];
    for (int r = 0; r < R; ++r) isum[r] = _mm256_setzero_si256();
    for (int h = 0; h < 4; ++h) {
      const __m256i raw = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wb + h * 32));
      const __m256i lo = _mm256_and_si256(raw, low);
      const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(raw, 4), low);
      for (int r = 0; r < R; ++r) {
        const int8_t* x = xq + r * K + b * QK + h * 8;
        isum[r] = _mm256_dpbusd_epi32(isum[r], lo, broadcast4(x));
        isum[r] = _mm256_dpbusd_epi32(isum[r], hi, broadcast4(x + 4));
      }
    }
    const __m256 dw = load_half8(wd + b * kCols), mw = load_half8(wm + b * kCols);
    for (int r = 0; r < R; ++r) {
      const __m256 scale = _mm256_mul_ps(dw, _mm256_set1_ps(xd[r * nb + b]));
      acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum[r]), scale, acc[r]);
      macc[r] = _mm256_fmadd_ps(mw, _mm256_set1_ps(xs[r * nb + b]), macc[r]);
    }
  }
  for (int r = 0; r < R; ++r) _mm256_storeu_ps(out + r * ldo, _mm256_add_ps(acc[r], macc[r]));
}

// R rows of x against one group of eight q8_0 weight rows (stored plus 128).
template <int R>
inline void tile_q8(const uint8_t* wq, const uint16_t* wd, const int8_t* xq, const float* xd,
                    const int32_t* xsum, int64_t K, int64_t nb, float* out, int64_t ldo) {
  __m256 acc[R];
  for (int r = 0; r < R; ++r) acc[r] = _mm256_setzero_ps();
  for (int64_t b = 0; b < nb; ++b) {
    const uint8_t* wb = wq + b * 256;
    __m256i isum[R];
    // Start from -128 * sum(xq): what the +128 offset of the weights adds.
    for (int r = 0; r < R; ++r) isum[r] = _mm256_set1_epi32(-128 * xsum[r * nb + b]);
    for (int q = 0; q < 8; ++q) {
      const __m256i w = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wb + q * 32));
      for (int r = 0; r < R; ++r)
        isum[r] = _mm256_dpbusd_epi32(isum[r], w, broadcast4(xq + r * K + b * QK + q * 4));
    }
    const __m256 dw = load_half8(wd + b * kCols);
    for (int r = 0; r < R; ++r) {
      const __m256 scale = _mm256_mul_ps(dw, _mm256_set1_ps(xd[r * nb + b]));
      acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum[r]), scale, acc[r]);
    }
  }
  for (int r = 0; r < R; ++r) _mm256_storeu_ps(out + r * ldo, acc[r]);
}

#else
// AVX2 without VNNI: maddubs (unsigned x signed bytes -> int16 sums of pairs) and madd by
// ones (-> int32 sums of four) give vpdpbusd's lanes exactly, for the same layouts. Tiles go
// up to 5 rows so that every accumulator stays in the 16 vector registers.

// q4_1: weights 0..15 and |xq| <= 127 (quantize.cpp), so one maddubs lane is at most
// 2 * 15 * 127 = 3810 in size and a block's eight of them at most 30480: the int16 lanes add
// exactly, and one madd per block and row widens them.
template <int R>
inline void tile_q4(const uint8_t* wq, const uint16_t* wd, const uint16_t* wm, const int8_t* xq,
                    const float* xd, const float* xs, int64_t K, int64_t nb, float* out,
                    int64_t ldo) {
  const __m256i low = _mm256_set1_epi8(0x0F);
  const __m256i ones = _mm256_set1_epi16(1);
  __m256 acc[R];
  for (int r = 0; r < R; ++r) acc[r] = _mm256_setzero_ps();
  for (int64_t b = 0; b < nb; ++b) {
    const uint8_t* wb = wq + b * 128;
    __m256i s16[R];
    for (int r = 0; r < R; ++r) s16[r] = _mm256_setzero_si256();
    for (int h = 0; h < 4; ++h) {
      const __m256i raw = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wb + h * 32));
      const __m256i lo = _mm256_and_si256(raw, low);
      const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(raw, 4), low);
      for (int r = 0; r < R; ++r) {
        const int8_t* x = xq + r * K + b * QK + h * 8;
        s16[r] = _mm256_add_epi16(s16[r], _mm256_maddubs_epi16(lo, broadcast4(x)));
        s16[r] = _mm256_add_epi16(s16[r], _mm256_maddubs_epi16(hi, broadcast4(x + 4)));
      }
    }
    const __m256 dw = load_half8(wd + b * kCols), mw = load_half8(wm + b * kCols);
    for (int r = 0; r < R; ++r) {
      const __m256 scale = _mm256_mul_ps(dw, _mm256_set1_ps(xd[r * nb + b]));
      const __m256i isum = _mm256_madd_epi16(s16[r], ones);
      acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum), scale, acc[r]);
      acc[r] = _mm256_fmadd_ps(mw, _mm256_set1_ps(xs[r * nb + b]), acc[r]);
    }
  }
  for (int r = 0; r < R; ++r) _mm256_storeu_ps(out + r * ldo, acc[r]);
}

// q8_0: the stored bytes minus 128 are the signed weights again. maddubs takes |w| (128 for
// -128, read unsigned) against x carrying w's sign; a lane is at most 2 * 128 * 127 = 32512,
// so it cannot saturate, and each is widened to int32 before the next is added.
template <int R>
inline void tile_q8(const uint8_t* wq, const uint16_t* wd, const int8_t* xq, const float* xd,
                    const int32_t* /*xsum*/, int64_t K, int64_t nb, float* out, int64_t ldo) {
  const __m256i flip = _mm256_set1_epi8(static_cast<char>(0x80));
  const __m256i ones = _mm256_set1_epi16(1);
  __m256 acc[R];
  for (int r = 0; r < R; ++r) acc[r] = _mm256_setzero_ps();
  for (int64_t b = 0; b < nb; ++b) {
    const uint8_t* wb = wq + b * 256;
    __m256i isum[R];
    for (int r = 0; r < R; ++r) isum[r] = _mm256_setzero_si256();
    for (int q = 0; q < 8; ++q) {
      const __m256i w = _mm256_xor_si256(
          _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wb + q * 32)), flip);
      const __m256i wabs = _mm256_abs_epi8(w);
      for (int r = 0; r < R; ++r) {
        const __m256i xs = _mm256_sign_epi8(broadcast4(xq + r * K + b * QK + q * 4), w);
        isum[r] = _mm256_add_epi32(
            isum[r], _mm256_madd_epi16(_mm256_maddubs_epi16(wabs, xs), ones));
      }
    }
    const __m256 dw = load_half8(wd + b * kCols);
    for (int r = 0; r < R; ++r) {
      const __m256 scale = _mm256_mul_ps(dw, _mm256_set1_ps(xd[r * nb + b]));
      acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum[r]), scale, acc[r]);
    }
  }
  for (int r = 0; r < R; ++r) _mm256_storeu_ps(out + r * ldo, acc[r]);
}
#endif

// Runs tile(R, row) over all M rows in tiles of 8 (VNNI) or 4, then one tile of the last 1-3
// (or, on AVX2, 5) rows, so a verify step or a small batch reads each weight block once.
template <typename Tile>
inline void over_rows(int64_t M, Tile tile) {
  int64_t r = 0;
#ifdef HERON_PACKED_VNNI
  for (; r + 8 <= M; r += 8) tile(std::integral_constant<int, 8>{}, r);
  for (; r + 4 <= M; r += 4) tile(std::integral_constant<int, 4>{}, r);
#else
  // Five rows in one tile (one user verifying 4 drafts, the default), else fours.
  for (; M - r >= 4 && M - r != 5; r += 4) tile(std::integral_constant<int, 4>{}, r);
#endif
  switch (M - r) {
#ifndef HERON_PACKED_VNNI
    case 5:
      tile(std::integral_constant<int, 5>{}, r);
      break;
#endif
    case 3:
      tile(std::integral_constant<int, 3>{}, r);
      break;
    case 2:
      tile(std::integral_constant<int, 2>{}, r);
      break;
    case 1:
      tile(std::integral_constant<int, 1>{}, r);
      break;
    default:
      break;
  }
}
#endif

}  // namespace

at::Tensor linear_q4_1_x8(const at::Tensor& x, const at::Tensor& qs, const at::Tensor& d,
                          const at::Tensor& m, const c10::optional<at::Tensor>& bias) {
#ifdef HERON_PACKED
  check_packed(qs, 128, {d, m});
  const int64_t G = qs.size(0), nb = qs.size(1), K = nb * QK, N = G * kCols;
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
  at::parallel_for(0, G, kGroupGrain, [&](int64_t begin, int64_t end) {
    for (int64_t g = begin; g < end; ++g) {
      const uint8_t* gq = wq + g * nb * 128;
      const uint16_t* gd = wd + g * nb * kCols;
      const uint16_t* gm = wm + g * nb * kCols;
      over_rows(M, [&](auto rows, int64_t r) {
        tile_q4<decltype(rows)::value>(gq, gd, gm, xq + r * K, xd + r * nb, xs + r * nb, K, nb,
                                       op + r * N + g * kCols, N);
      });
    }
  });
  if (bias.has_value()) out.add_(*bias);
  return out;
#else
  TORCH_CHECK(false, "packed q4_1 weights need a CPU with AVX2");
#endif
}

at::Tensor linear_q8_0_x8(const at::Tensor& x, const at::Tensor& qs, const at::Tensor& d,
                          const c10::optional<at::Tensor>& bias) {
#ifdef HERON_PACKED
  check_packed(qs, 256, {d});
  const int64_t G = qs.size(0), nb = qs.size(1), K = nb * QK, N = G * kCols;
  check_linear_input(x, K);
  const int64_t M = x.size(0);
  at::Tensor out = at::empty({M, N}, at::kFloat);
  const uint8_t* wq = qs.data_ptr<uint8_t>();
  const uint16_t* wd = reinterpret_cast<const uint16_t*>(d.data_ptr<at::Half>());
  QuantizedRows xr = quantize_rows(x);
  const int8_t* xq = xr.q.data_ptr<int8_t>();
  const float* xd = xr.d.data_ptr<float>();
  const int32_t* xsum = xr.sum.data_ptr<int32_t>();
  float* op = out.data_ptr<float>();
  at::parallel_for(0, G, kGroupGrain, [&](int64_t begin, int64_t end) {
    for (int64_t g = begin; g < end; ++g) {
      const uint8_t* gq = wq + g * nb * 256;
      const uint16_t* gd = wd + g * nb * kCols;
      over_rows(M, [&](auto rows, int64_t r) {
        tile_q8<decltype(rows)::value>(gq, gd, xq + r * K, xd + r * nb, xsum + r * nb, K, nb,
                                       op + r * N + g * kCols, N);
      });
    }
  });
  if (bias.has_value()) out.add_(*bias);
  return out;
#else
  TORCH_CHECK(false, "packed q8_0 weights need a CPU with AVX2");
#endif
}

std::vector<at::Tensor> pack_q4_1(const at::Tensor& qs, const at::Tensor& d,
                                  const at::Tensor& m) {
  TORCH_CHECK(qs.dim() == 2 && qs.scalar_type() == at::kByte && qs.is_contiguous() &&
                  qs.size(0) % kCols == 0,
              "q4_1 weights must be a contiguous uint8 [N, K/2] tensor with N divisible by 8");
  const int64_t N = qs.size(0), nb = qs.size(1) / 16, G = N / kCols;
  TORCH_CHECK(qs.size(1) == nb * 16 && d.sizes() == m.sizes() && d.size(0) == N &&
                  d.size(1) == nb && d.scalar_type() == at::kHalf && m.scalar_type() == at::kHalf,
              "q4_1 scales must be float16 [N, K/32] tensors");
  at::Tensor pq = at::empty({G, nb, 128}, at::kByte);
  at::Tensor pd = d.contiguous().view({G, kCols, nb}).transpose(1, 2).contiguous();
  at::Tensor pm = m.contiguous().view({G, kCols, nb}).transpose(1, 2).contiguous();
  const uint8_t* src = qs.data_ptr<uint8_t>();
  uint8_t* dst = pq.data_ptr<uint8_t>();
  at::parallel_for(0, G * nb, 64, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const int64_t g = i / nb, b = i % nb;
      for (int64_t c = 0; c < kCols; ++c) {
        const uint8_t* blk = src + (g * kCols + c) * nb * 16 + b * 16;
        auto elem = [&](int e) { return e < 16 ? blk[e] & 0x0F : blk[e - 16] >> 4; };
        for (int h = 0; h < 4; ++h)
          for (int t = 0; t < 4; ++t)
            dst[i * 128 + h * 32 + c * 4 + t] =
                static_cast<uint8_t>(elem(8 * h + t) | (elem(8 * h + 4 + t) << 4));
      }
    }
  });
  return {pq, pd, pm};
}

std::vector<at::Tensor> pack_q8_0(const at::Tensor& qs, const at::Tensor& d) {
  TORCH_CHECK(qs.dim() == 2 && qs.scalar_type() == at::kChar && qs.is_contiguous() &&
                  qs.size(0) % kCols == 0,
              "q8_0 weights must be a contiguous int8 [N, K] tensor with N divisible by 8");
  const int64_t N = qs.size(0), nb = qs.size(1) / QK, G = N / kCols;
  TORCH_CHECK(qs.size(1) == nb * QK && d.dim() == 2 && d.size(0) == N && d.size(1) == nb &&
                  d.scalar_type() == at::kHalf,
              "q8_0 scales must be a float16 [N, K/32] tensor");
  at::Tensor pq = at::empty({G, nb, 256}, at::kByte);
  at::Tensor pd = d.contiguous().view({G, kCols, nb}).transpose(1, 2).contiguous();
  const int8_t* src = qs.data_ptr<int8_t>();
  uint8_t* dst = pq.data_ptr<uint8_t>();
  at::parallel_for(0, G * nb, 64, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const int64_t g = i / nb, b = i % nb;
      for (int64_t c = 0; c < kCols; ++c) {
        const int8_t* blk = src + (g * kCols + c) * nb * QK + b * QK;
        for (int q = 0; q < 8; ++q)
          for (int t = 0; t < 4; ++t)
            dst[i * 256 + q * 32 + c * 4 + t] = static_cast<uint8_t>(blk[4 * q + t] + 128);
      }
    }
  });
  return {pq, pd};
}

bool has_packed() {
#ifdef HERON_PACKED
  return true;
#else
  return false;
#endif
}

}  // namespace heron
