// Floats into Heron's quantized blocks of 32: activations per row (int8, for the linears in
// quant.cpp and packed.cpp) and weights in GGUF's Q4_1 and Q8_0 layouts (see quant.cpp).
#include "heron_cpu.h"

#include <ATen/Parallel.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <cmath>
#include <utility>

#include "vec.h"

namespace heron {
namespace {

// One block of 32 activations: writes xq = round-half-even(x / dx) to dst and returns
// (dx, sum(xq)), dx = amax / 127.
inline std::pair<float, int32_t> quantize_block(const float* src, int8_t* dst) {
#ifdef HERON_AVX2
  // The same numbers as the scalar code: the maximum is exact in any order, x * inv is one
  // rounded product either way, and vroundps's nearest-even is nearbyint's default rounding.
  const __m256 sign = _mm256_set1_ps(-0.f);
  __m256 v[4];
  __m256 mx = _mm256_setzero_ps();
  for (int j = 0; j < 4; ++j) {
    v[j] = _mm256_loadu_ps(src + 8 * j);
    mx = _mm256_max_ps(mx, _mm256_andnot_ps(sign, v[j]));
  }
  const float d = hmax8(mx) / 127.f;
  const __m256 inv = _mm256_set1_ps(d != 0.f ? 1.f / d : 0.f);
  __m256i q[4];
  for (int j = 0; j < 4; ++j)
    q[j] = _mm256_cvtps_epi32(_mm256_round_ps(_mm256_mul_ps(v[j], inv),
                                              _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  // The packs interleave 128-bit lanes; the permute puts the 32 bytes back in order.
  const __m256i bytes = _mm256_packs_epi16(_mm256_packs_epi32(q[0], q[1]),
                                           _mm256_packs_epi32(q[2], q[3]));
  _mm256_storeu_si256(
      reinterpret_cast<__m256i*>(dst),
      _mm256_permutevar8x32_epi32(bytes, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7)));
  const __m256i total =
      _mm256_add_epi32(_mm256_add_epi32(q[0], q[1]), _mm256_add_epi32(q[2], q[3]));
  return {d, hsum8_epi32(total)};
#else
  float amax = 0.f;
  for (int j = 0; j < QK; ++j) amax = std::max(amax, std::fabs(src[j]));
  const float d = amax / 127.f;
  const float inv = d != 0.f ? 1.f / d : 0.f;
  int32_t sum = 0;
  for (int j = 0; j < QK; ++j) {
    const int q = static_cast<int>(std::nearbyint(src[j] * inv));
    dst[j] = static_cast<int8_t>(q);
    sum += q;
  }
  return {d, sum};
#endif
}

}  // namespace

QuantizedRows quantize_rows(const at::Tensor& x) {
  const int64_t M = x.size(0), K = x.size(1), nb = K / QK;
  QuantizedRows out{at::empty({M, K}, at::kChar), at::empty({M, nb}, at::kFloat),
                    at::empty({M, nb}, at::kFloat), at::empty({M, nb}, at::kInt)};
  const float* xp = x.data_ptr<float>();
  int8_t* qp = out.q.data_ptr<int8_t>();
  float* dp = out.d.data_ptr<float>();
  float* sp = out.s.data_ptr<float>();
  int32_t* ip = out.sum.data_ptr<int32_t>();
  const int64_t grain = M * K > (1 << 16) ? 1 : M;
  at::parallel_for(0, M * nb, grain * nb, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const auto [d, sum] = quantize_block(xp + i * QK, qp + i * QK);
      dp[i] = d;
      sp[i] = d * static_cast<float>(sum);
      ip[i] = sum;
    }
  });
  return out;
}

void check_linear_input(const at::Tensor& x, int64_t K) {
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == at::kFloat && x.is_contiguous(),
              "x must be a contiguous float32 [M, K] tensor");
  TORCH_CHECK(x.size(1) == K, "x has ", x.size(1), " features, the weight ", K);
  TORCH_CHECK(K % QK == 0, "in_features must be a multiple of 32");
}

std::vector<at::Tensor> quantize_q4_1(const at::Tensor& w) {
  TORCH_CHECK(w.dim() == 2 && w.scalar_type() == at::kFloat && w.is_contiguous(),
              "weight must be a contiguous float32 [N, K] tensor");
  const int64_t N = w.size(0), K = w.size(1), nb = K / QK;
  TORCH_CHECK(K % QK == 0, "in_features must be a multiple of 32");
  at::Tensor qs = at::empty({N, K / 2}, at::kByte);
  at::Tensor d = at::empty({N, nb}, at::kHalf), m = at::empty({N, nb}, at::kHalf);
  const float* wp = w.data_ptr<float>();
  uint8_t* qp = qs.data_ptr<uint8_t>();
  uint16_t* dp = reinterpret_cast<uint16_t*>(d.data_ptr<at::Half>());
  uint16_t* mp = reinterpret_cast<uint16_t*>(m.data_ptr<at::Half>());
  at::parallel_for(0, N * nb, 256, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const float* src = wp + i * QK;
      float lo = src[0], hi = src[0];
      for (int j = 1; j < QK; ++j) {
        lo = std::min(lo, src[j]);
        hi = std::max(hi, src[j]);
      }
      // Scales are stored in fp16; quantize against the rounded values so that weights
      // that came from a q4_1 file are reproduced exactly.
      const uint16_t dh = float_to_half((hi - lo) / 15.f), mh = float_to_half(lo);
      const float dd = half_to_float(dh), mm = half_to_float(mh);
      const float inv = dd != 0.f ? 1.f / dd : 0.f;
      uint8_t q[QK];
      for (int j = 0; j < QK; ++j) {
        const int v = static_cast<int>(std::nearbyint((src[j] - mm) * inv));
        q[j] = static_cast<uint8_t>(std::min(15, std::max(0, v)));
      }
      for (int j = 0; j < 16; ++j) qp[i * 16 + j] = q[j] | (q[j + 16] << 4);
      dp[i] = dh;
      mp[i] = mh;
    }
  });
  return {qs, d, m};
}

std::vector<at::Tensor> quantize_q8_0(const at::Tensor& w) {
  TORCH_CHECK(w.dim() == 2 && w.scalar_type() == at::kFloat && w.is_contiguous(),
              "weight must be a contiguous float32 [N, K] tensor");
  const int64_t N = w.size(0), K = w.size(1), nb = K / QK;
  TORCH_CHECK(K % QK == 0, "in_features must be a multiple of 32");
  at::Tensor qs = at::empty({N, K}, at::kChar);
  at::Tensor d = at::empty({N, nb}, at::kHalf);
  const float* wp = w.data_ptr<float>();
  int8_t* qp = qs.data_ptr<int8_t>();
  uint16_t* dp = reinterpret_cast<uint16_t*>(d.data_ptr<at::Half>());
  at::parallel_for(0, N * nb, 256, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const float* src = wp + i * QK;
      float amax = 0.f;
      for (int j = 0; j < QK; ++j) amax = std::max(amax, std::fabs(src[j]));
      const uint16_t dh = float_to_half(amax / 127.f);
      const float dd = half_to_float(dh);
      const float inv = dd != 0.f ? 1.f / dd : 0.f;
      for (int j = 0; j < QK; ++j) {
        const int v = static_cast<int>(std::nearbyint(src[j] * inv));
        qp[i * QK + j] = static_cast<int8_t>(std::min(127, std::max(-127, v)));
      }
      dp[i] = dh;
    }
  });
  return {qs, d};
}

}  // namespace heron
