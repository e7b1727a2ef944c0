// Paged attention for query tokens that each attend to their own cached context: decode
// steps, and prefill chunks short enough to run as one query per token.
#include "heron_cpu.h"
#include "vec.h"

#include <ATen/Parallel.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <type_traits>
#include <vector>

namespace heron {
namespace {

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


// s[i] = exp(s[i] - max(s)) in place; returns the sum.
inline float softmax_(float* s, int64_t n) {
  float mx = -std::numeric_limits<float>::infinity();
  int64_t i = 0;
#ifdef HERON_AVX2
  // Eight running maxima, not one chain: the maximum is exact, so the order cannot change it.
  __m256 m8 = _mm256_set1_ps(mx);
  for (; i + 8 <= n; i += 8) m8 = _mm256_max_ps(m8, _mm256_loadu_ps(s + i));
  mx = hmax8(m8);
#endif
  for (; i < n; ++i) mx = std::max(mx, s[i]);
  float total = 0.f;
  i = 0;
#ifdef HERON_AVX2
  const __m256 m = _mm256_set1_ps(mx);
  __m256 acc = _mm256_setzero_ps();
  for (; i + 8 <= n; i += 8) {
    const __m256 e = exp8(_mm256_sub_ps(_mm256_loadu_ps(s + i), m));
    _mm256_storeu_ps(s + i, e);
    acc = _mm256_add_ps(acc, e);
  }
  total = hsum8(acc);
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
  total = hsum8(acc);
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

#ifdef HERON_AVX2
inline __m256 load8(const float* p) { return _mm256_loadu_ps(p); }
inline __m256 load8(const uint16_t* p) {
  return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}

// [sum(a0), ..., sum(a7)]: the lane sums of eight vectors, in one vector. By value: an
// accumulator array whose address is taken stays in memory, and GCC then stores and
// reloads every accumulator on every step of the loop that fills it (a 3-4x slowdown).
inline __m256 sum8x8(__m256 a0, __m256 a1, __m256 a2, __m256 a3, __m256 a4, __m256 a5,
                     __m256 a6, __m256 a7) {
  const __m256 h01 = _mm256_hadd_ps(a0, a1), h23 = _mm256_hadd_ps(a2, a3);
  const __m256 h45 = _mm256_hadd_ps(a4, a5), h67 = _mm256_hadd_ps(a6, a7);
  const __m256 h03 = _mm256_hadd_ps(h01, h23), h47 = _mm256_hadd_ps(h45, h67);
  return _mm256_add_ps(_mm256_permute2f128_ps(h03, h47, 0x20),
                       _mm256_permute2f128_ps(h03, h47, 0x31));
}

// Query rows q[r] (NR of them) against eight keys at once: out[r][k] = q[r] . keys[k]. Each
// row has eight independent accumulators, and each key chunk is loaded once for all rows, so
// NR rows cost little more memory traffic than one. A row's operations and their order do
// not depend on NR, so its scores are bit-identical however many rows share the call.
// Not inlined, for the same reason as weighted_sum64_rows below.
template <int NR, typename T>
__attribute__((noinline)) void dot8_rows(const float* const* q, const T* const* keys, int64_t D,
                                         __m256* out) {
  __m256 acc[NR][8];
  for (int r = 0; r < NR; ++r)
    for (int k = 0; k < 8; ++k) acc[r][k] = _mm256_setzero_ps();
  for (int64_t j = 0; j < D; j += 8) {
    __m256 qj[NR];
    for (int r = 0; r < NR; ++r) qj[r] = _mm256_loadu_ps(q[r] + j);
    for (int k = 0; k < 8; ++k) {
      const __m256 kv = load8(keys[k] + j);
      for (int r = 0; r < NR; ++r) acc[r][k] = _mm256_fmadd_ps(qj[r], kv, acc[r][k]);
    }
  }
  for (int r = 0; r < NR; ++r)
    out[r] = sum8x8(acc[r][0], acc[r][1], acc[r][2], acc[r][3], acc[r][4], acc[r][5], acc[r][6],
                    acc[r][7]);
}

// out[r][off:off+64] = sum_t p[r][t] * rows[t][off:off+64] for NR rows of weights,
// accumulated in registers; each value chunk is loaded once for all rows. Per row the same
// operations in the same order whatever NR is. Not inlined: inside the large attention task
// GCC kept the accumulators in memory as well, storing all of them on every row of L.
template <int NR, typename T>
__attribute__((noinline)) void weighted_sum64_rows(float* const* out, const float* const* p,
                                                   const T* const* rows, int64_t L, int64_t off) {
  __m256 acc[NR][8];
  for (int r = 0; r < NR; ++r)
    for (int j = 0; j < 8; ++j) acc[r][j] = _mm256_setzero_ps();
  for (int64_t t = 0; t < L; ++t) {
    if (t + 16 < L)
      for (int64_t b = 0; b < 64 * static_cast<int64_t>(sizeof(T)); b += 64)
        _mm_prefetch(reinterpret_cast<const char*>(rows[t + 16] + off) + b, _MM_HINT_T0);
    const T* v = rows[t] + off;
    __m256 pt[NR];
    for (int r = 0; r < NR; ++r) pt[r] = _mm256_set1_ps(p[r][t]);
    for (int j = 0; j < 8; ++j) {
      const __m256 vj = load8(v + 8 * j);
      for (int r = 0; r < NR; ++r) acc[r][j] = _mm256_fmadd_ps(pt[r], vj, acc[r][j]);
    }
  }
  for (int r = 0; r < NR; ++r)
    for (int j = 0; j < 8; ++j) _mm256_storeu_ps(out[r] + off + 8 * j, acc[r][j]);
}
#endif

// NR query heads that share one KV head, against its context: rows of keys and values [L]
// (pointers into the cache), scores [NR][L] scratch (row r at scores + r * L). Writes out[r]
// [D]. Every row's result is bit-identical to running it alone (NR = 1).
template <int NR, typename T>
void attend_rows(const float* const* q, const T* const* keys, const T* const* values, int64_t L,
                 int64_t D, float scale, float cap, float* scores, float* const* out) {
  float* s[NR];
  for (int r = 0; r < NR; ++r) s[r] = scores + r * L;
  int64_t t = 0;
#ifdef HERON_AVX2
  if (D % 8 == 0)
    for (; t + 8 <= L; t += 8) {
      // The rows 16 ahead: cache rows are scattered over blocks, which hardware prefetchers
      // do not follow.
      for (int64_t i = t + 16; i < std::min(t + 24, L); ++i)
        for (int64_t b = 0; b < D * static_cast<int64_t>(sizeof(T)); b += 64)
          _mm_prefetch(reinterpret_cast<const char*>(keys[i]) + b, _MM_HINT_T0);
      __m256 dots[NR];
      dot8_rows<NR>(q, keys + t, D, dots);
      for (int r = 0; r < NR; ++r)
        _mm256_storeu_ps(s[r] + t, _mm256_mul_ps(dots[r], _mm256_set1_ps(scale)));
    }
#endif
  for (int r = 0; r < NR; ++r) {
    for (int64_t i = t; i < L; ++i) s[r][i] = dot_cache(q[r], keys[i], D) * scale;
    if (cap > 0.f)
      for (int64_t i = 0; i < L; ++i) s[r][i] = cap * std::tanh(s[r][i] / cap);
    const float inv = 1.f / softmax_(s[r], L);
    for (int64_t i = 0; i < L; ++i) s[r][i] *= inv;
  }
#ifdef HERON_AVX2
  if (D % 64 == 0) {
    const float* ps[NR];
    for (int r = 0; r < NR; ++r) ps[r] = s[r];
    for (int64_t off = 0; off < D; off += 64) weighted_sum64_rows<NR>(out, ps, values, L, off);
    return;
  }
#endif
  for (int r = 0; r < NR; ++r) {
    std::fill(out[r], out[r] + D, 0.f);
    for (int64_t i = 0; i < L; ++i) axpy_cache(out[r], s[r][i], values[i], D);
  }
}

// Query heads [n] of one KV head in calls of up to kMaxRows rows. With AVX-512's 32 vector
// registers three rows' accumulators fit; with 16, one.
#ifdef __AVX512VL__
constexpr int kMaxRows = 3;
#else
constexpr int kMaxRows = 1;
#endif

template <typename T>
void attend_heads(const float* const* q, const T* const* keys, const T* const* values,
                  int64_t L, int64_t D, float scale, float cap, float* scores, float* const* out,
                  int64_t n) {
  for (int64_t r = 0; r < n;) {
    const int64_t left = n - r;
    if (kMaxRows >= 3 && left >= 3) {
      attend_rows<3>(q + r, keys, values, L, D, scale, cap, scores, out + r);
      r += 3;
    } else if (kMaxRows >= 2 && left >= 2) {
      attend_rows<2>(q + r, keys, values, L, D, scale, cap, scores, out + r);
      r += 2;
    } else {
      attend_rows<1>(q + r, keys, values, L, D, scale, cap, scores, out + r);
      r += 1;
    }
  }
}

}  // namespace

at::Tensor paged_decode_attention(const at::Tensor& q, const at::Tensor& k_cache,
                                  const at::Tensor& v_cache, const at::Tensor& block_table,
                                  const at::Tensor& context_lens, double scale,
                                  int64_t window, double softcap) {
  // q [B, heads, D]: B queries, query i at position context_lens[i] - 1 of the sequence
  // whose blocks are block_table[i]; caches [num_blocks, block_size, kv_heads, D];
  // block_table [B, max_blocks] int64; context_lens [B] int64. Returns [B, heads, D].
  // window <= 0: no sliding window; softcap <= 0: none.
  TORCH_CHECK(q.dim() == 3 && q.scalar_type() == at::kFloat && q.stride(2) == 1 &&
                  q.stride(1) == q.size(2),
              "q must be float32 [B, heads, D] with dense heads (rows may be strided)");
  const bool half = half_cache(k_cache, v_cache);
  TORCH_CHECK(block_table.scalar_type() == at::kLong && block_table.is_contiguous() &&
                  context_lens.scalar_type() == at::kLong && context_lens.is_contiguous(),
              "block_table and context_lens must be contiguous int64");
  const int64_t B = q.size(0), H = q.size(1), D = q.size(2);
  const int64_t BS = k_cache.size(1), KVH = k_cache.size(2), NB = k_cache.size(0);
  const int64_t MB = block_table.size(1);
  TORCH_CHECK(k_cache.size(3) == D && H % KVH == 0, "head shapes do not match");
  TORCH_CHECK(H / KVH <= 64, "at most 64 query heads per KV head");
  TORCH_CHECK(block_table.size(0) == B && context_lens.size(0) == B,
              "one block-table row and context length per query");
  at::Tensor out = at::empty({q.size(0), q.size(1), q.size(2)}, at::kFloat);
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
      std::vector<float> scores;
      std::vector<const std::remove_reference_t<decltype(*kcache)>*> keys, values;
      for (int64_t task = begin; task < end; ++task) {
        // Head-major order: a thread's consecutive tasks read the same KV head, so queries of
        // one sequence (a prefill chunk) find its cached rows still in L2.
        const int64_t b = task % B, h0 = (task / B) * per_task;
        const int64_t kvh = h0 / group;
        const int64_t ctx = cl[b];
        const int64_t start = window > 0 ? std::max<int64_t>(0, ctx - window) : 0;
        const int64_t L = ctx - start;
        const int64_t* table = bt + b * MB;
        keys.resize(L);
        values.resize(L);
        // Row t of block blk, KV head kvh: ((table[blk] * BS + t % BS) * KVH + kvh) * D, with
        // the multiplications done once per block.
        const int64_t row_stride = KVH * D;
        for (int64_t t = start, blk = start / BS; t < ctx; ++blk) {
          const int64_t first = t - start;
          const int64_t n = std::min(ctx - t, (blk + 1) * BS - t);
          int64_t row = (table[blk] * BS + t % BS) * row_stride + kvh * D;
          for (int64_t i = 0; i < n; ++i, row += row_stride) {
            keys[first + i] = kcache + row;
            values[first + i] = vcache + row;
          }
          t += n;
        }
        scores.resize(kMaxRows * L);
        const float* qs[64];
        float* os[64];
        for (int64_t g = 0; g < per_task; ++g) {
          qs[g] = qp + b * q.stride(0) + (h0 + g) * D;
          os[g] = op + (b * H + h0 + g) * D;
        }
        attend_heads(qs, keys.data(), values.data(), L, D, fscale, cap, scores.data(), os,
                     per_task);
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
