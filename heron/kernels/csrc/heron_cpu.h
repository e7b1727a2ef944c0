// Heron's CPU kernels: declarations shared by the source files and the Python bindings.
#pragma once

#include <c10/util/Half.h>

#include <torch/extension.h>

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
void decode_layer_(at::Tensor& x, const at::Tensor& norm1, const at::Tensor& norm2,
                   double eps, const std::vector<at::Tensor>& qkv_w, int64_t qkv_kind,
                   const c10::optional<at::Tensor>& qkv_bias, const std::vector<at::Tensor>& o_w,
                   int64_t o_kind, const c10::optional<at::Tensor>& o_bias,
                   const std::vector<at::Tensor>& gate_up_w, int64_t gate_up_kind,
                   const std::vector<at::Tensor>& down_w, int64_t down_kind, int64_t num_heads,
                   int64_t num_kv_heads, int64_t head_dim, const at::Tensor& cos,
                   const at::Tensor& sin, at::Tensor& k_cache, at::Tensor& v_cache,
                   const at::Tensor& slots, const at::Tensor& block_table,
                   const at::Tensor& context_lens, double scale, int64_t window);

// Every layer's weights, caches and shapes, held once, so that a whole model's decode step is
// one call from Python (``run``) instead of one per layer.
class DecodeStack {
 public:
  void add(const at::Tensor& norm1, const at::Tensor& norm2, double eps,
           const std::vector<at::Tensor>& qkv_w, int64_t qkv_kind,
           const c10::optional<at::Tensor>& qkv_bias, const std::vector<at::Tensor>& o_w,
           int64_t o_kind, const c10::optional<at::Tensor>& o_bias,
           const std::vector<at::Tensor>& gate_up_w, int64_t gate_up_kind,
           const std::vector<at::Tensor>& down_w, int64_t down_kind, int64_t num_heads,
           int64_t num_kv_heads, int64_t head_dim, const at::Tensor& k_cache,
           const at::Tensor& v_cache, double scale, int64_t window);
  // x [T, hidden] updated in place through every layer; the rest are the step's inputs.
  void run(at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin, const at::Tensor& slots,
           const at::Tensor& block_table, const at::Tensor& context_lens);
  int64_t size() const { return static_cast<int64_t>(layers_.size()); }

 private:
  struct Layer {
    at::Tensor norm1, norm2;
    double eps;
    std::vector<at::Tensor> qkv_w;
    int64_t qkv_kind;
    c10::optional<at::Tensor> qkv_bias;
    std::vector<at::Tensor> o_w;
    int64_t o_kind;
    c10::optional<at::Tensor> o_bias;
    std::vector<at::Tensor> gate_up_w;
    int64_t gate_up_kind;
    std::vector<at::Tensor> down_w;
    int64_t down_kind;
    int64_t num_heads, num_kv_heads, head_dim;
    at::Tensor k_cache, v_cache;
    double scale;
    int64_t window;
  };
  std::vector<Layer> layers_;
};

}  // namespace heron
