// Heron's CPU kernels: declarations shared by the source files and the Python bindings.
// Only ATen here, not <torch/extension.h>: every source is compiled once per ISA level
// (heron/kernels/isa.py), and only the bindings (bindings.cpp) need pybind11.
#pragma once

#include <ATen/ATen.h>
#include <c10/util/Half.h>

#include <string>
#include <vector>

namespace heron {

// GGUF's quantization block: 32 weights share an fp16 scale (and, in q4_1, an fp16 minimum).
constexpr int64_t QK = 32;

inline float half_to_float(uint16_t h) {
  c10::Half v;
  v.x = h;
  return static_cast<float>(v);
}

inline uint16_t float_to_half(float f) { return c10::Half(f).x; }

// quantize.cpp
// Activations quantized per row and per block of 32 to int8: xq = round(x / dx), dx = amax / 127.
struct QuantizedRows {
  at::Tensor q;    // [M, K] int8
  at::Tensor d;    // [M, K/32] float: dx
  at::Tensor s;    // [M, K/32] float: dx * sum(xq)
  at::Tensor sum;  // [M, K/32] int32: sum(xq)
};
QuantizedRows quantize_rows(const at::Tensor& x);
void check_linear_input(const at::Tensor& x, int64_t K);
std::vector<at::Tensor> quantize_q4_1(const at::Tensor& w);
std::vector<at::Tensor> quantize_q8_0(const at::Tensor& w);

// quant.cpp
at::Tensor linear_q4_1(const at::Tensor& x, const at::Tensor& qs, const at::Tensor& d,
                       const at::Tensor& m, const c10::optional<at::Tensor>& bias);
at::Tensor linear_q8_0(const at::Tensor& x, const at::Tensor& qs, const at::Tensor& d,
                       const c10::optional<at::Tensor>& bias);
bool has_avx2();

// packed.cpp: the same linears on weights repacked 8 output rows at a time
at::Tensor linear_q4_1_x8(const at::Tensor& x, const at::Tensor& qs, const at::Tensor& d,
                          const at::Tensor& m, const c10::optional<at::Tensor>& bias);
at::Tensor linear_q8_0_x8(const at::Tensor& x, const at::Tensor& qs, const at::Tensor& d,
                          const c10::optional<at::Tensor>& bias);
std::vector<at::Tensor> pack_q4_1(const at::Tensor& qs, const at::Tensor& d,
                                  const at::Tensor& m);
std::vector<at::Tensor> pack_q8_0(const at::Tensor& qs, const at::Tensor& d);
bool has_packed();
bool has_vnni();

// ops.cpp
at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& w, double eps);
at::Tensor add_rms_norm_(const at::Tensor& x, at::Tensor& residual, const at::Tensor& w,
                         double eps);
at::Tensor silu_mul(const at::Tensor& gu);
void rope_(at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin);
bool half_cache(const at::Tensor& k_cache, const at::Tensor& v_cache);  // checks both
void cache_write_(const at::Tensor& k, const at::Tensor& v, at::Tensor& k_cache,
                  at::Tensor& v_cache, const at::Tensor& slots);

// attention.cpp
at::Tensor paged_decode_attention(const at::Tensor& q, const at::Tensor& k_cache,
                                  const at::Tensor& v_cache, const at::Tensor& block_table,
                                  const at::Tensor& context_lens, double scale,
                                  int64_t window, double softcap);

// layer.cpp
// How a linear's tensors are laid out: float weight (at::linear), q4_1 (qs, d, m) or q8_0
// (qs, d), plain or packed 8 rows at a time (the linears tell those apart themselves).
enum class LinearKind : int64_t { kFloat, kQ4_1, kQ8_0 };

struct LinearWeights {
  LinearKind kind = LinearKind::kFloat;
  std::vector<at::Tensor> tensors;
  c10::optional<at::Tensor> bias;
};
// kind "f32", "q4_1" or "q8_0"; checks the number of tensors.
LinearWeights make_linear_weights(const std::string& kind, std::vector<at::Tensor> tensors,
                                  c10::optional<at::Tensor> bias);

// One decoder layer's weights and shapes, by name: this list is the one place that names
// them. It declares ``LayerWeights``, its Python attributes and ``field_names``;
// ``heron.kernels.fused.FusedLayerWeights`` has the same fields and checks them at bind time.
#define HERON_LAYER_WEIGHTS(X)                                                              \
  X(at::Tensor, input_norm)       /* [hidden] */                                          \
  X(double, input_norm_eps)                                                                \
  X(LinearWeights, qkv)           /* [q_size + 2 * kv_size, hidden]: q, k, then v rows */ \
  X(LinearWeights, o)             /* [hidden, q_size] */                                  \
  X(at::Tensor, post_attention_norm) /* [hidden] */                                       \
  X(double, post_attention_norm_eps)                                                       \
  X(LinearWeights, gate_up)       /* [2 * inter, hidden]: gate, then up rows */           \
  X(LinearWeights, down)          /* [hidden, inter] */                                   \
  X(int64_t, num_heads)                                                                    \
  X(int64_t, num_kv_heads)                                                                 \
  X(int64_t, head_dim)                                                                     \
  X(double, scale)                /* attention score scale */                             \
  X(int64_t, window)              /* sliding window in tokens, 0 for none */

struct LayerWeights {
#define HERON_DECLARE_FIELD(type, name) type name{};
  HERON_LAYER_WEIGHTS(HERON_DECLARE_FIELD)
#undef HERON_DECLARE_FIELD
  static const std::vector<std::string>& field_names();
};

// x [T, hidden] updated in place; caches [num_blocks, block_size, num_kv_heads, head_dim];
// cos, sin [T, rotary_dim / 2]; slots [T]; block_table [T, max_blocks]; context_lens [T].
void decode_layer_(at::Tensor& x, const LayerWeights& w, at::Tensor& k_cache,
                   at::Tensor& v_cache, const at::Tensor& cos, const at::Tensor& sin,
                   const at::Tensor& slots, const at::Tensor& block_table,
                   const at::Tensor& context_lens);

// lora.cpp: the mixed-adapter LoRA delta (see there for the slot tensors' layout).
// One linear's adapter slots: a [S, K, R] and b [S, R, N] (both float32 or both float16),
// spans [S, blocks, 3] int64 (rank, first output column, columns) per slot and rank block.
// Undefined: not adapted.
struct AdapterSlots {
  at::Tensor a, b, spans;
  bool defined() const { return a.defined(); }
};
// One step's rows that use an adapter (token_slots[t] >= 0), by slot, in tiles of a few rows.
struct AdapterPlan {
  std::vector<int64_t> rows;        // token rows, by slot then row
  std::vector<int64_t> tile_start;  // per tile: its first index into rows
  std::vector<int64_t> tile_rows;   // per tile: how many rows
  std::vector<int64_t> tile_slot;   // per tile: the slot
};
AdapterPlan plan_adapters(const at::Tensor& token_slots);  // token_slots [T] int64, -1: none
// y [T, N] += (x[t] @ a[s]) @ b[s] for each planned row t with slot s; x [T, K].
void apply_adapters_(at::Tensor& y, const at::Tensor& x, const AdapterSlots& slots,
                     const AdapterPlan& plan);
// The same from Python, planned from token_slots [T] int64 (-1: the base model's row).
void lora_add_(at::Tensor& y, const at::Tensor& x, const at::Tensor& a, const at::Tensor& b,
               const at::Tensor& spans, const at::Tensor& token_slots);
// A layer's adapted linears (any may be undefined).
struct LayerAdapters {
  AdapterSlots qkv, o, gate_up, down;
};

// Every layer's weights and cache views, held once, so that a whole model's decode step is
// one call from Python (``run``) instead of one per layer.
class DecodeStack {
 public:
  // Checks the layer's shapes against its caches.
  void add(const LayerWeights& weights, const at::Tensor& k_cache, const at::Tensor& v_cache);
  // Adapter slots of one linear ("qkv", "o", "gate_up" or "down") of layer ``layer``; the
  // stack holds the tensors (views: slot writes show in later steps).
  void set_adapters(int64_t layer, const std::string& linear, const at::Tensor& a,
                    const at::Tensor& b, const at::Tensor& spans);
  // x [T, hidden] updated in place through every layer; the rest are the step's inputs.
  // adapter_slots [T] int64: each row's adapter slot (-1: none); absent: no adapter deltas.
  void run(at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin, const at::Tensor& slots,
           const at::Tensor& block_table, const at::Tensor& context_lens,
           const c10::optional<at::Tensor>& adapter_slots = c10::nullopt);
  int64_t size() const { return static_cast<int64_t>(layers_.size()); }

 private:
  struct Layer {
    LayerWeights weights;
    at::Tensor k_cache, v_cache;
    LayerAdapters adapters;
  };
  std::vector<Layer> layers_;
};

}  // namespace heron
