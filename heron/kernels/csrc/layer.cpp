// One decode step of a Llama-style decoder layer in a single call, for steps where every
// sequence decodes one token. It chains the same kernels the Python layer calls one by one
// (norm, q/k/v projection, rotary, cache write, paged attention, output projection, norm,
// gated SiLU MLP), so the numbers are identical; only the per-op Python overhead goes.
#include "heron_cpu.h"

namespace heron {
namespace {

// kind: 0 float weight (at::linear), 1 q4_1 (qs, d, m), 2 q8_0 (qs, d).
at::Tensor run_linear(const at::Tensor& x, const std::vector<at::Tensor>& w, int64_t kind,
                      const c10::optional<at::Tensor>& bias) {
  if (kind == 1) return linear_q4_1(x, w[0], w[1], w[2], bias);
  if (kind == 2) return linear_q8_0(x, w[0], w[1], bias);
  return at::linear(x, w[0], bias);
}

}  // namespace

void decode_layer_(at::Tensor& x, const at::Tensor& norm1, const at::Tensor& norm2,
                   double eps, const std::vector<at::Tensor>& qkv_w, int64_t qkv_kind,
                   const c10::optional<at::Tensor>& qkv_bias, const std::vector<at::Tensor>& o_w,
                   int64_t o_kind, const c10::optional<at::Tensor>& o_bias,
                   const std::vector<at::Tensor>& gate_up_w, int64_t gate_up_kind,
                   const std::vector<at::Tensor>& down_w, int64_t down_kind, int64_t num_heads,
                   int64_t num_kv_heads, int64_t head_dim, const at::Tensor& cos,
                   const at::Tensor& sin, at::Tensor& k_cache, at::Tensor& v_cache,
                   const at::Tensor& slots, const at::Tensor& block_table,
                   const at::Tensor& context_lens, double scale, int64_t window) {
  // x [B, hidden]: the residual stream, one token per sequence, updated in place.
  const int64_t B = x.size(0);
  const int64_t q_size = num_heads * head_dim, kv_size = num_kv_heads * head_dim;
  at::Tensor h = rms_norm(x, norm1, eps);
  at::Tensor qkv = run_linear(h, qkv_w, qkv_kind, qkv_bias);  // [B, q_size + 2 * kv_size]
  at::Tensor q = qkv.narrow(1, 0, q_size).view({B, num_heads, head_dim});
  at::Tensor k = qkv.narrow(1, q_size, kv_size).view({B, num_kv_heads, head_dim});
  at::Tensor v = qkv.narrow(1, q_size + kv_size, kv_size).view({B, num_kv_heads, head_dim});
  rope_(q, cos, sin);
  rope_(k, cos, sin);
  cache_write_(k, v, k_cache, v_cache, slots);
  at::Tensor attn = paged_decode_attention(q, k_cache, v_cache, block_table,
                                           context_lens, scale, window, 0.0);
  at::Tensor o = run_linear(attn.view({B, q_size}), o_w, o_kind, o_bias);
  h = add_rms_norm_(o, x, norm2, eps);
  at::Tensor gu = run_linear(h, gate_up_w, gate_up_kind, c10::nullopt);  // [B, 2 * inter]
  x.add_(run_linear(silu_mul(gu), down_w, down_kind, c10::nullopt));
}

void DecodeStack::add(const at::Tensor& norm1, const at::Tensor& norm2, double eps,
                      const std::vector<at::Tensor>& qkv_w, int64_t qkv_kind,
                      const c10::optional<at::Tensor>& qkv_bias,
                      const std::vector<at::Tensor>& o_w, int64_t o_kind,
                      const c10::optional<at::Tensor>& o_bias,
                      const std::vector<at::Tensor>& gate_up_w, int64_t gate_up_kind,
                      const std::vector<at::Tensor>& down_w, int64_t down_kind,
                      int64_t num_heads, int64_t num_kv_heads, int64_t head_dim,
                      const at::Tensor& k_cache, const at::Tensor& v_cache, double scale,
                      int64_t window) {
  layers_.push_back(Layer{norm1, norm2, eps, qkv_w, qkv_kind, qkv_bias, o_w, o_kind, o_bias,
                          gate_up_w, gate_up_kind, down_w, down_kind, num_heads, num_kv_heads,
                          head_dim, k_cache, v_cache, scale, window});
}

void DecodeStack::run(at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin,
                      const at::Tensor& slots, const at::Tensor& block_table,
                      const at::Tensor& context_lens) {
  for (auto& l : layers_)
    decode_layer_(x, l.norm1, l.norm2, l.eps, l.qkv_w, l.qkv_kind, l.qkv_bias, l.o_w, l.o_kind,
                  l.o_bias, l.gate_up_w, l.gate_up_kind, l.down_w, l.down_kind, l.num_heads,
                  l.num_kv_heads, l.head_dim, cos, sin, l.k_cache, l.v_cache, slots,
                  block_table, context_lens, l.scale, l.window);
}

}  // namespace heron
