// The mixed-adapter LoRA delta of one linear: for every token row t whose adapter slot
// s = token_slots[t] is >= 0, y[t] += (x[t] @ A[s]) @ B[s], in float32 from float32 or float16
// slot weights (``--lora-dtype``).
//
// Why float16 slots: for one user the delta is bound by reading the adapters (19.6 MB a token
// for rank-16 adapters on every SmolLM2 projection in float32); float16 halves the bytes, and
// every product and sum is still float32 (a float16 weight widens to float32 exactly).
//
// Slot tensors (``heron.lora.slots``): A [S, K, R] and B [S, R, N], R = blocks * max_rank (a
// fused module such as q/k/v has one rank block per target), the scale folded into B;
// spans [S, blocks, 3] int64 says per slot and block (rank, first output column, columns), so
// only a block's own rank and its own columns of B are read (rank 0: the block is unused).
//
// Every output element is one sum in a fixed order: u[t][r] = sum over k ascending of
// x[t][k] * A[k][r], then d[t][n] = sum over each block's rank ascending of u[t][r] * B[r][n],
// then y[t][n] += d[t][n], each term one product and one add (no fused multiply-add:
// -ffp-contract=off and explicit mul/add intrinsics). Tasks split tokens and columns, never a
// sum, and vectors run across columns, never along a sum: the numbers do not depend on the
// thread count, the batch, or the ISA level.
#include "heron_cpu.h"
#include "vec.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <vector>

namespace heron {
namespace {

constexpr int64_t kTile = 4;     // token rows of one slot computed together (reuse A and B)
constexpr int64_t kCols = 16;    // columns of one register tile
constexpr int64_t kChunk = 256;  // output columns per task of the up-projection
// Multiply-adds below which a phase runs on the calling thread: one user's delta (at most
// ~50k per phase for SmolLM2's MLP) is a few microseconds of work, and waking the other
// threads costs about as much, far more on a busy machine.
constexpr int64_t kMinWork = 1 << 17;

// Tasks per thread so that each thread gets at least kMinWork (all on one: run inline).
int64_t grain(int64_t work_per_task) {
  return std::max<int64_t>(1, kMinWork / std::max<int64_t>(1, work_per_task));
}

// out[r][j] (+)= sum_i xs[r][i] * w[i * ldw + j] for r < R, j < cols (<= kCols): the plain
// form, which compilers vectorize across j only (the same per-element order as the AVX path).
template <int R, typename W>
void tile_plain(const float* const* xs, const W* w, int64_t ldw, int64_t I, int64_t cols,
                float* const* out, bool add) {
  float acc[R][kCols] = {};
  for (int64_t i = 0; i < I; ++i) {
    const W* wr = w + i * ldw;
    for (int r = 0; r < R; ++r) {
      const float xv = xs[r][i];
      for (int64_t j = 0; j < cols; ++j) acc[r][j] = acc[r][j] + xv * static_cast<float>(wr[j]);
    }
  }
  for (int r = 0; r < R; ++r)
    for (int64_t j = 0; j < cols; ++j) out[r][j] = add ? out[r][j] + acc[r][j] : acc[r][j];
}

#ifdef HERON_AVX2
// 8 weights as float32 (float16 widened exactly, F16C).
inline __m256 load8(const float* w) { return _mm256_loadu_ps(w); }
inline __m256 load8(const at::Half* w) {
  return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(w)));
}

// The same for V * 8 columns, in registers.
template <int R, int V, typename W>
void tile_avx(const float* const* xs, const W* w, int64_t ldw, int64_t I, float* const* out,
              bool add) {
  __m256 acc[R][V];
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < V; ++v) acc[r][v] = _mm256_setzero_ps();
  for (int64_t i = 0; i < I; ++i) {
    __m256 wv[V];
    for (int v = 0; v < V; ++v) wv[v] = load8(w + i * ldw + 8 * v);
    for (int r = 0; r < R; ++r) {
      const __m256 xv = _mm256_set1_ps(xs[r][i]);
      for (int v = 0; v < V; ++v) acc[r][v] = _mm256_add_ps(acc[r][v], _mm256_mul_ps(xv, wv[v]));
    }
  }
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < V; ++v) {
      float* o = out[r] + 8 * v;
      _mm256_storeu_ps(o, add ? _mm256_add_ps(_mm256_loadu_ps(o), acc[r][v]) : acc[r][v]);
    }
}
#endif

// out[r][0 .. cols) (+)= xs[r] @ w[:, 0 .. cols) for R rows, in column tiles.
template <int R, typename W>
void rows_gemm(const float* const* xs, const W* w, int64_t ldw, int64_t I, int64_t cols,
               float* const* out, bool add) {
  float* o[R];
  int64_t j = 0;
#ifdef HERON_AVX2
  for (; j + 16 <= cols; j += 16) {
    for (int r = 0; r < R; ++r) o[r] = out[r] + j;
    tile_avx<R, 2, W>(xs, w + j, ldw, I, o, add);
  }
  for (; j + 8 <= cols; j += 8) {
    for (int r = 0; r < R; ++r) o[r] = out[r] + j;
    tile_avx<R, 1, W>(xs, w + j, ldw, I, o, add);
  }
#endif
  for (; j < cols; j += kCols) {
    for (int r = 0; r < R; ++r) o[r] = out[r] + j;
    tile_plain<R, W>(xs, w + j, ldw, I, std::min(kCols, cols - j), o, add);
  }
}

template <typename W>
void small_gemm(int64_t rows, const float* const* xs, const W* w, int64_t ldw, int64_t I,
                int64_t cols, float* const* out, bool add) {
  switch (rows) {
    case 4: return rows_gemm<4, W>(xs, w, ldw, I, cols, out, add);
    case 3: return rows_gemm<3, W>(xs, w, ldw, I, cols, out, add);
    case 2: return rows_gemm<2, W>(xs, w, ldw, I, cols, out, add);
    default: return rows_gemm<1, W>(xs, w, ldw, I, cols, out, add);
  }
}

void check_slots(const AdapterSlots& s) {
  TORCH_CHECK(s.a.dim() == 3 && s.b.dim() == 3 && s.spans.dim() == 3 && s.spans.size(2) == 3,
              "adapter slots: a [S, K, R], b [S, R, N], spans [S, blocks, 3]");
  TORCH_CHECK((s.a.scalar_type() == at::kFloat || s.a.scalar_type() == at::kHalf) &&
                  s.b.scalar_type() == s.a.scalar_type() && s.spans.scalar_type() == at::kLong,
              "adapter slots: a and b both float32 or both float16, spans int64");
  TORCH_CHECK(s.a.is_contiguous() && s.b.is_contiguous() && s.spans.is_contiguous(),
              "adapter slots must be contiguous");
  TORCH_CHECK(s.a.size(0) == s.b.size(0) && s.a.size(0) == s.spans.size(0) &&
                  s.a.size(2) == s.b.size(1) && s.spans.size(1) > 0 &&
                  s.a.size(2) % s.spans.size(1) == 0,
              "adapter slots: a, b and spans disagree on slots or rank");
}

// The delta itself, over slot weights of type W (float or at::Half); inputs checked.
template <typename W>
void run_adapters(at::Tensor& y, const at::Tensor& x, const AdapterSlots& slots,
                  const AdapterPlan& plan) {
  const int64_t K = slots.a.size(1), R = slots.a.size(2);
  const int64_t N = slots.b.size(2), blocks = slots.spans.size(1), max_rank = R / blocks;
  const int64_t* sp = slots.spans.data_ptr<int64_t>();
  const int64_t ntiles = static_cast<int64_t>(plan.tile_slot.size());
  const float* xp = x.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  const W* ap = slots.a.data_ptr<W>();
  const W* bp = slots.b.data_ptr<W>();
  const int64_t n_rows = static_cast<int64_t>(plan.rows.size());
  std::vector<float> u(n_rows * R);  // [rows in plan order, R]: x @ A
  // Down-projection: one task per tile and block.
  const int64_t tile_work = K * max_rank * std::min(kTile, n_rows);
  at::parallel_for(0, ntiles * blocks, grain(tile_work), [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t k = task / blocks, blk = task % blocks, s = plan.tile_slot[k];
      const int64_t rank = sp[(s * blocks + blk) * 3];
      if (rank == 0) continue;
      const float* xs[kTile];
      float* out[kTile];
      for (int64_t r = 0; r < plan.tile_rows[k]; ++r) {
        xs[r] = xp + plan.rows[plan.tile_start[k] + r] * K;
        out[r] = u.data() + (plan.tile_start[k] + r) * R + blk * max_rank;
      }
      small_gemm(plan.tile_rows[k], xs, ap + s * K * R + blk * max_rank, R, K, rank, out, false);
    }
  });
  // Up-projection: one task per tile and chunk of output columns; the blocks of a chunk in
  // order within the task.
  const int64_t chunks = (N + kChunk - 1) / kChunk;
  const int64_t chunk_work = std::min(kChunk, N) * max_rank * std::min(kTile, n_rows);
  at::parallel_for(0, ntiles * chunks, grain(chunk_work), [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t k = task / chunks, c0 = (task % chunks) * kChunk;
      const int64_t c1 = std::min(N, c0 + kChunk), s = plan.tile_slot[k];
      for (int64_t blk = 0; blk < blocks; ++blk) {
        const int64_t* e = sp + (s * blocks + blk) * 3;
        const int64_t lo = std::max(c0, e[1]), hi = std::min(c1, e[1] + e[2]);
        if (e[0] == 0 || lo >= hi) continue;
        const float* us[kTile];
        float* out[kTile];
        for (int64_t r = 0; r < plan.tile_rows[k]; ++r) {
          us[r] = u.data() + (plan.tile_start[k] + r) * R + blk * max_rank;
          out[r] = yp + plan.rows[plan.tile_start[k] + r] * N + lo;
        }
        const W* w = bp + s * R * N + blk * max_rank * N + lo;
        small_gemm(plan.tile_rows[k], us, w, N, e[0], hi - lo, out, true);
      }
    }
  });
}

}  // namespace

AdapterPlan plan_adapters(const at::Tensor& token_slots) {
  TORCH_CHECK(token_slots.dim() == 1 && token_slots.scalar_type() == at::kLong &&
                  token_slots.is_contiguous(),
              "token_slots must be a contiguous int64 [T] tensor");
  const int64_t T = token_slots.size(0);
  const int64_t* ts = token_slots.data_ptr<int64_t>();
  AdapterPlan plan;
  int64_t top = -1;
  for (int64_t t = 0; t < T; ++t) top = std::max(top, ts[t]);
  if (top < 0) return plan;
  // Rows by slot, then by row (a counting sort): a slot's rows share A and B in a tile.
  std::vector<int64_t> count(top + 2, 0);
  for (int64_t t = 0; t < T; ++t) ++count[ts[t] + 1];
  std::vector<int64_t> at(top + 2, 0);
  for (int64_t s = 1; s <= top + 1; ++s) at[s] = at[s - 1] + count[s - 1];
  std::vector<int64_t> order(T);
  for (int64_t t = 0; t < T; ++t) order[at[ts[t] + 1]++] = t;
  const int64_t base = count[0];  // rows without an adapter come first; dropped
  plan.rows.assign(order.begin() + base, order.end());
  int64_t i = 0;
  for (int64_t s = 0; s <= top; ++s) {
    const int64_t end = i + count[s + 1];
    for (; i < end; i += plan.tile_rows.back()) {
      plan.tile_start.push_back(i);
      plan.tile_rows.push_back(std::min(kTile, end - i));
      plan.tile_slot.push_back(s);
    }
  }
  return plan;
}

void apply_adapters_(at::Tensor& y, const at::Tensor& x, const AdapterSlots& slots,
                     const AdapterPlan& plan) {
  if (plan.rows.empty()) return;
  check_slots(slots);
  TORCH_CHECK(x.dim() == 2 && y.dim() == 2 && x.size(0) == y.size(0) &&
                  x.scalar_type() == at::kFloat && y.scalar_type() == at::kFloat &&
                  x.is_contiguous() && y.is_contiguous(),
              "x [T, K] and y [T, N] must be contiguous float32 with the same rows");
  const int64_t S = slots.a.size(0), K = slots.a.size(1), R = slots.a.size(2);
  const int64_t N = slots.b.size(2), blocks = slots.spans.size(1), max_rank = R / blocks;
  TORCH_CHECK(x.size(1) == K && y.size(1) == N, "x [T, ", K, "] and y [T, ", N,
              "] do not fit the adapter slots");
  TORCH_CHECK(*std::max_element(plan.rows.begin(), plan.rows.end()) < x.size(0),
              "the plan has more rows than x");
  const int64_t* sp = slots.spans.data_ptr<int64_t>();
  const int64_t ntiles = static_cast<int64_t>(plan.tile_slot.size());
  for (int64_t k = 0; k < ntiles; ++k) {
    const int64_t s = plan.tile_slot[k];
    TORCH_CHECK(s < S, "token slot ", s, " is past the ", S, " adapter slots");
    for (int64_t blk = 0; blk < blocks; ++blk) {
      const int64_t* e = sp + (s * blocks + blk) * 3;
      TORCH_CHECK(e[0] >= 0 && e[0] <= max_rank && e[1] >= 0 && e[2] >= 0 && e[1] + e[2] <= N,
                  "adapter spans out of range");
    }
  }
  if (slots.a.scalar_type() == at::kHalf)
    run_adapters<at::Half>(y, x, slots, plan);
  else
    run_adapters<float>(y, x, slots, plan);
}

void lora_add_(at::Tensor& y, const at::Tensor& x, const at::Tensor& a, const at::Tensor& b,
               const at::Tensor& spans, const at::Tensor& token_slots) {
  TORCH_CHECK(token_slots.size(0) == x.size(0), "token_slots [T] must match x [T, K]");
  apply_adapters_(y, x, AdapterSlots{a, b, spans}, plan_adapters(token_slots));
}

}  // namespace heron
