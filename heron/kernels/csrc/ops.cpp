// Small fused CPU operations for the decode path: one call each where torch needs several.
#include "heron_cpu.h"
#include "vec.h"

#include <ATen/Parallel.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>


namespace heron {
namespace {

inline void store_row(float* dst, const float* src, int64_t n) {
  std::memcpy(dst, src, n * sizeof(float));
}

inline void store_row(uint16_t* dst, const float* src, int64_t n) {
  for (int64_t i = 0; i < n; ++i) dst[i] = c10::Half(src[i]).x;
}

void check_rows(const at::Tensor& x, const at::Tensor& w) {
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == at::kFloat && x.is_contiguous(),
              "x must be a contiguous float32 [tokens, hidden] tensor");
  TORCH_CHECK(w.dim() == 1 && w.scalar_type() == at::kFloat && w.size(0) == x.size(1),
              "norm weight must be float32 [hidden]");
}

inline void norm_row(const float* src, const float* w, float* dst, int64_t h, float eps) {
  const float ms = dot(src, src, h) / static_cast<float>(h);
  const float r = 1.f / std::sqrt(ms + eps);
  for (int64_t i = 0; i < h; ++i) dst[i] = w[i] * (src[i] * r);
}

}  // namespace

at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& w, double eps) {
  check_rows(x, w);
  const int64_t T = x.size(0), H = x.size(1);
  at::Tensor out = at::empty_like(x);
  const float* xp = x.data_ptr<float>();
  const float* wp = w.data_ptr<float>();
  float* op = out.data_ptr<float>();
  at::parallel_for(0, T, 16, [&](int64_t b, int64_t e) {
    for (int64_t t = b; t < e; ++t) norm_row(xp + t * H, wp, op + t * H, H, (float)eps);
  });
  return out;
}

at::Tensor add_rms_norm_(const at::Tensor& x, at::Tensor& residual, const at::Tensor& w,
                         double eps) {
  check_rows(x, w);
  check_rows(residual, w);
  TORCH_CHECK(residual.sizes() == x.sizes(), "residual and x differ in shape");
  const int64_t T = x.size(0), H = x.size(1);
  at::Tensor out = at::empty_like(x);
  const float* xp = x.data_ptr<float>();
  float* rp = residual.data_ptr<float>();
  const float* wp = w.data_ptr<float>();
  float* op = out.data_ptr<float>();
  at::parallel_for(0, T, 16, [&](int64_t b, int64_t e) {
    for (int64_t t = b; t < e; ++t) {
      float* r = rp + t * H;
      for (int64_t i = 0; i < H; ++i) r[i] += xp[t * H + i];
      norm_row(r, wp, op + t * H, H, (float)eps);
    }
  });
  return out;
}

at::Tensor silu_mul(const at::Tensor& gu) {
  // gu [T, 2 * I] float32 contiguous: gate then up. Returns silu(gate) * up [T, I].
  TORCH_CHECK(gu.dim() == 2 && gu.scalar_type() == at::kFloat && gu.is_contiguous() &&
                  gu.size(1) % 2 == 0,
              "gu must be a contiguous float32 [T, 2 * I] tensor");
  const int64_t T = gu.size(0), I = gu.size(1) / 2;
  at::Tensor out = at::empty({T, I}, at::kFloat);
  const float* src = gu.data_ptr<float>();
  float* dst = out.data_ptr<float>();
  at::parallel_for(0, T, 16, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const float* g = src + t * 2 * I;
      const float* u = g + I;
      float* o = dst + t * I;
      int64_t i = 0;
#ifdef HERON_AVX2
      const __m256 one = _mm256_set1_ps(1.f);
      for (; i + 8 <= I; i += 8) {
        const __m256 x = _mm256_loadu_ps(g + i);
        const __m256 e = exp8(_mm256_sub_ps(_mm256_setzero_ps(), x));  // exp(-x)
        const __m256 s = _mm256_div_ps(x, _mm256_add_ps(one, e));
        _mm256_storeu_ps(o + i, _mm256_mul_ps(s, _mm256_loadu_ps(u + i)));
      }
#endif
      for (; i < I; ++i) o[i] = g[i] / (1.f + std::exp(-g[i])) * u[i];
    }
  });
  return out;
}

void rope_(at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin) {
  // x [T, heads, D] with unit stride in D and D-stride between heads (rows may be strided,
  // e.g. q or k viewed inside a fused qkv buffer); cos, sin [T, half] contiguous.
  TORCH_CHECK(x.dim() == 3 && x.scalar_type() == at::kFloat, "x must be float32 [T, heads, D]");
  TORCH_CHECK(x.stride(2) == 1 && x.stride(1) == x.size(2), "x heads must be dense");
  TORCH_CHECK(cos.is_contiguous() && sin.is_contiguous() && cos.dim() == 2 &&
                  cos.size(0) == x.size(0) && sin.sizes() == cos.sizes() &&
                  cos.scalar_type() == at::kFloat && sin.scalar_type() == at::kFloat,
              "cos and sin must be contiguous float32 [T, half]");
  const int64_t T = x.size(0), H = x.size(1), D = x.size(2), half = cos.size(1);
  TORCH_CHECK(2 * half <= D, "rotary dims exceed head_dim");
  float* xp = x.data_ptr<float>();
  const int64_t row = x.stride(0);
  const float* cp = cos.data_ptr<float>();
  const float* sp = sin.data_ptr<float>();
  at::parallel_for(0, T, 64, [&](int64_t b, int64_t e) {
    for (int64_t t = b; t < e; ++t) {
      const float* c = cp + t * half;
      const float* s = sp + t * half;
      for (int64_t h = 0; h < H; ++h) {
        float* v = xp + t * row + h * D;
        for (int64_t i = 0; i < half; ++i) {
          const float x1 = v[i], x2 = v[i + half];
          v[i] = x1 * c[i] - x2 * s[i];
          v[i + half] = x2 * c[i] + x1 * s[i];
        }
      }
    }
  });
}

namespace {

template <typename T>
void cache_write_impl(const at::Tensor& k, const at::Tensor& v, T* kc, T* vc,
                      const at::Tensor& slots, int64_t num_slots) {
  const int64_t T_ = k.size(0), width = k.size(1) * k.size(2);
  const int64_t* sp = slots.data_ptr<int64_t>();
  const float* kp = k.data_ptr<float>();
  const float* vp = v.data_ptr<float>();
  for (int64_t t = 0; t < T_; ++t) {
    const int64_t s = sp[t];
    TORCH_CHECK(s >= 0 && s < num_slots, "slot out of range");
    store_row(kc + s * width, kp + t * k.stride(0), width);
    store_row(vc + s * width, vp + t * v.stride(0), width);
  }
}


}  // namespace

bool half_cache(const at::Tensor& k_cache, const at::Tensor& v_cache) {
  const auto kt = k_cache.scalar_type();
  TORCH_CHECK(kt == v_cache.scalar_type() && (kt == at::kFloat || kt == at::kHalf),
              "caches must both be float32 or float16");
  TORCH_CHECK(k_cache.is_contiguous() && v_cache.is_contiguous(), "caches must be contiguous");
  return kt == at::kHalf;
}

void cache_write_(const at::Tensor& k, const at::Tensor& v, at::Tensor& k_cache,
                  at::Tensor& v_cache, const at::Tensor& slots) {
  // k, v [T, kv_heads, D] float32 (heads dense, rows may be strided); caches
  // [num_blocks, block_size, kv_heads, D] contiguous float32 or float16; slots [T] int64.
  TORCH_CHECK(k.scalar_type() == at::kFloat && v.scalar_type() == at::kFloat,
              "k and v must be float32");
  TORCH_CHECK(k.stride(2) == 1 && k.stride(1) == k.size(2) && v.stride(2) == 1 &&
                  v.stride(1) == v.size(2),
              "k and v heads must be dense");
  TORCH_CHECK(k_cache.size(2) * k_cache.size(3) == k.size(1) * k.size(2),
              "cache shape mismatch");
  const int64_t num_slots = k_cache.size(0) * k_cache.size(1);
  if (half_cache(k_cache, v_cache)) {
    cache_write_impl(k, v, reinterpret_cast<uint16_t*>(k_cache.data_ptr<at::Half>()),
                     reinterpret_cast<uint16_t*>(v_cache.data_ptr<at::Half>()), slots,
                     num_slots);
  } else {
    cache_write_impl(k, v, k_cache.data_ptr<float>(), v_cache.data_ptr<float>(), slots,
                     num_slots);
  }
}

}  // namespace heron
