// Small fused CPU operations for the decode path: one call each where torch needs several.
#include "heron_cpu.h"

#include <ATen/Parallel.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define HERON_AVX2 1
#endif

namespace heron {
namespace {

inline float dot(const float* a, const float* b, int64_t n) {
  int64_t i = 0;
  float total = 0.f;
#ifdef HERON_AVX2
  __m256 acc = _mm256_setzero_ps();
  for (; i + 8 <= n; i += 8)
    acc = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), acc);
  __m128 lo = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1));
  lo = _mm_add_ps(lo, _mm_movehl_ps(lo, lo));
  lo = _mm_add_ss(lo, _mm_movehdup_ps(lo));
  total = _mm_cvtss_f32(lo);
#endif
  for (; i < n; ++i) total += a[i] * b[i];
  return total;
}

// out += p * v
inline void axpy(float* out, float p, const float* v, int64_t n) {
  int64_t i = 0;
#ifdef HERON_AVX2
  const __m256 pv = _mm256_set1_ps(p);
  for (; i + 8 <= n; i += 8)
    _mm256_storeu_ps(out + i, _mm256_fmadd_ps(pv, _mm256_loadu_ps(v + i), _mm256_loadu_ps(out + i)));
#endif
  for (; i < n; ++i) out[i] += p * v[i];
}

#ifdef HERON_AVX2
// exp of 8 floats: 2^n * p(r) with x = n ln2 + r, |r| <= ln2 / 2, p a degree-6 Taylor
// polynomial (relative error about 2e-7, like expf's); inputs below -87 give 0.
inline __m256 exp8(__m256 x) {
  const __m256 lo = _mm256_set1_ps(-87.3f);
  const __m256 under = _mm256_cmp_ps(x, lo, _CMP_LT_OQ);
  x = _mm256_max_ps(x, lo);
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
  __m256 p = _mm256_set1_ps(1.f / 720.f);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.f / 120.f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.f / 24.f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.f / 6.f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0.5f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.f));
  const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_andnot_ps(under, _mm256_mul_ps(p, _mm256_castsi256_ps(e)));
}
#endif

// s[i] = exp(s[i] - max(s)) in place; returns the sum.
inline float softmax_(float* s, int64_t n) {
  float mx = -std::numeric_limits<float>::infinity();
  for (int64_t i = 0; i < n; ++i) mx = std::max(mx, s[i]);
  float total = 0.f;
  int64_t i = 0;
#ifdef HERON_AVX2
  const __m256 m = _mm256_set1_ps(mx);
  __m256 acc = _mm256_setzero_ps();
  for (; i + 8 <= n; i += 8) {
    const __m256 e = exp8(_mm256_sub_ps(_mm256_loadu_ps(s + i), m));
    _mm256_storeu_ps(s + i, e);
    acc = _mm256_add_ps(acc, e);
  }
  __m128 lo = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1));
  lo = _mm_add_ps(lo, _mm_movehl_ps(lo, lo));
  lo = _mm_add_ss(lo, _mm_movehdup_ps(lo));
  total = _mm_cvtss_f32(lo);
#endif
  for (; i < n; ++i) {
    s[i] = std::exp(s[i] - mx);
    total += s[i];
  }
  return total;
}

// Cache rows are float32 or fp16 (uint16_t bits); these read them as float32.
inline float dot_cache(const float* q, const float* k, int64_t n) { return dot(q, k, n); }
inline void axpy_cache(float* out, float p, const float* v, int64_t n) { axpy(out, p, v, n); }

inline float dot_cache(const float* q, const uint16_t* k, int64_t n) {
  int64_t i = 0;
  float total = 0.f;
#ifdef HERON_AVX2
  __m256 acc = _mm256_setzero_ps();
  for (; i + 8 <= n; i += 8) {
    const __m256 kv = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(k + i)));
    acc = _mm256_fmadd_ps(_mm256_loadu_ps(q + i), kv, acc);
  }
  __m128 lo = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1));
  lo = _mm_add_ps(lo, _mm_movehl_ps(lo, lo));
  lo = _mm_add_ss(lo, _mm_movehdup_ps(lo));
  total = _mm_cvtss_f32(lo);
#endif
  for (; i < n; ++i) total += q[i] * static_cast<float>(c10::Half(k[i], c10::Half::from_bits()));
  return total;
}

inline void axpy_cache(float* out, float p, const uint16_t* v, int64_t n) {
  int64_t i = 0;
#ifdef HERON_AVX2
  const __m256 pv = _mm256_set1_ps(p);
  for (; i + 8 <= n; i += 8) {
    const __m256 vv = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(v + i)));
    _mm256_storeu_ps(out + i, _mm256_fmadd_ps(pv, vv, _mm256_loadu_ps(out + i)));
  }
#endif
  for (; i < n; ++i) out[i] += p * static_cast<float>(c10::Half(v[i], c10::Half::from_bits()));
}

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

bool half_cache(const at::Tensor& k_cache, const at::Tensor& v_cache) {
  const auto kt = k_cache.scalar_type();
  TORCH_CHECK(kt == v_cache.scalar_type() && (kt == at::kFloat || kt == at::kHalf),
              "caches must both be float32 or float16");
  TORCH_CHECK(k_cache.is_contiguous() && v_cache.is_contiguous(), "caches must be contiguous");
  return kt == at::kHalf;
}

}  // namespace

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

at::Tensor paged_decode_attention(const at::Tensor& q, const at::Tensor& k_cache,
                                  const at::Tensor& v_cache, const at::Tensor& block_table,
                                  const at::Tensor& context_lens, double scale,
                                  int64_t window, double softcap) {
  // q [B, heads, D]: B queries, query i at position context_lens[i] - 1 of the sequence
  // whose blocks are block_table[i]; caches [num_blocks, block_size, kv_heads, D];
  // block_table [B, max_blocks] int64; context_lens [B] int64. Returns [B, heads, D].
  // window <= 0: no sliding window; softcap <= 0: none.
  TORCH_CHECK(q.dim() == 3 && q.scalar_type() == at::kFloat && q.is_contiguous(),
              "q must be contiguous float32 [B, heads, D]");
  const bool half = half_cache(k_cache, v_cache);
  TORCH_CHECK(block_table.scalar_type() == at::kLong && block_table.is_contiguous() &&
                  context_lens.scalar_type() == at::kLong && context_lens.is_contiguous(),
              "block_table and context_lens must be contiguous int64");
  const int64_t B = q.size(0), H = q.size(1), D = q.size(2);
  const int64_t BS = k_cache.size(1), KVH = k_cache.size(2), NB = k_cache.size(0);
  const int64_t MB = block_table.size(1);
  TORCH_CHECK(k_cache.size(3) == D && H % KVH == 0, "head shapes do not match");
  TORCH_CHECK(block_table.size(0) == B && context_lens.size(0) == B,
              "one block-table row and context length per query");
  at::Tensor out = at::empty_like(q);
  const float* qp = q.data_ptr<float>();
  const void* kc = k_cache.data_ptr();
  const void* vc = v_cache.data_ptr();
  const int64_t* bt = block_table.data_ptr<int64_t>();
  const int64_t* cl = context_lens.data_ptr<int64_t>();
  float* op = out.data_ptr<float>();
  const int64_t group = H / KVH;
  const float fscale = static_cast<float>(scale), cap = static_cast<float>(softcap);
  for (int64_t b = 0; b < B; ++b) {
    TORCH_CHECK(cl[b] >= 1 && cl[b] <= MB * BS, "context length outside the block table");
    const int64_t used = (cl[b] + BS - 1) / BS;
    for (int64_t i = 0; i < used; ++i)
      TORCH_CHECK(bt[b * MB + i] >= 0 && bt[b * MB + i] < NB, "block id out of range");
  }
  // One task per (query, KV head), so the query heads sharing a KV head read each cached
  // row once; with few queries, one task per (query, head) instead, to keep both threads
  // busy. Either way each head runs the same operations in the same order.
  const int64_t per_task = B * KVH >= 4 * at::get_num_threads() ? group : 1;
  const int64_t tasks_per_query = H / per_task;
  auto run = [&](auto* kcache, auto* vcache) {
    at::parallel_for(0, B * tasks_per_query, 1, [&](int64_t begin, int64_t end) {
      std::vector<float> scores, inv(per_task);
      for (int64_t task = begin; task < end; ++task) {
        const int64_t b = task / tasks_per_query, h0 = (task % tasks_per_query) * per_task;
        const int64_t kvh = h0 / group;
        const int64_t ctx = cl[b];
        const int64_t start = window > 0 ? std::max<int64_t>(0, ctx - window) : 0;
        const int64_t L = ctx - start;
        const int64_t* table = bt + b * MB;
        const float* q0 = qp + (b * H + h0) * D;  // [per_task, D]
        scores.resize(per_task * L);
        for (int64_t t = start; t < ctx; ++t) {
          const auto* kv = kcache + ((table[t / BS] * BS + t % BS) * KVH + kvh) * D;
          for (int64_t g = 0; g < per_task; ++g) {
            float s = dot_cache(q0 + g * D, kv, D) * fscale;
            if (cap > 0.f) s = cap * std::tanh(s / cap);
            scores[g * L + t - start] = s;
          }
        }
        for (int64_t g = 0; g < per_task; ++g) inv[g] = 1.f / softmax_(scores.data() + g * L, L);
        float* o0 = op + (b * H + h0) * D;
        std::fill(o0, o0 + per_task * D, 0.f);
        for (int64_t t = start; t < ctx; ++t) {
          const auto* vv = vcache + ((table[t / BS] * BS + t % BS) * KVH + kvh) * D;
          for (int64_t g = 0; g < per_task; ++g)
            axpy_cache(o0 + g * D, scores[g * L + t - start] * inv[g], vv, D);
        }
      }
    });
  };
  if (half)
    run(static_cast<const uint16_t*>(kc), static_cast<const uint16_t*>(vc));
  else
    run(static_cast<const float*>(kc), static_cast<const float*>(vc));
  return out;
}

}  // namespace heron

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "Heron's CPU kernels";
  m.def("linear_q4_1", &heron::linear_q4_1, "x @ q4_1(W).T (+ bias)");
  m.def("linear_q8_0", &heron::linear_q8_0, "x @ q8_0(W).T (+ bias)");
  m.def("quantize_q4_1", &heron::quantize_q4_1, "W -> (qs, d, m)");
  m.def("quantize_q8_0", &heron::quantize_q8_0, "W -> (qs, d)");
  m.def("pack_q4_1", &heron::pack_q4_1, "(qs, d, m) -> the 8-row packed layout");
  m.def("pack_q8_0", &heron::pack_q8_0, "(qs, d) -> the 8-row packed layout");
  m.def("has_packed", &heron::has_packed, "whether the packed (VNNI) linears are built");
  m.def("has_avx2", &heron::has_avx2);
  m.def("has_vnni", &heron::has_vnni, "whether the linears use AVX-512 VNNI");
  m.def("rms_norm", &heron::rms_norm);
  m.def("add_rms_norm_", &heron::add_rms_norm_);
  m.def("rope_", &heron::rope_);
  m.def("cache_write_", &heron::cache_write_);
  m.def("paged_decode_attention", &heron::paged_decode_attention);
  m.def("decode_layer_", &heron::decode_layer_, "one decode step of a Llama-style layer");
}
