// One decode step of a Llama-style decoder layer in a single call, for steps where every
// query token attends over its own sequence's cached blocks. It chains the same kernels the
// Python layer calls one by one (norm, q/k/v projection, rotary, cache write, paged
// attention, output projection, norm, gated SiLU MLP), so the numbers are identical; only
// the per-op Python overhead goes. The layer's weights arrive as one named ``LayerWeights``
// (built from ``heron.kernels.fused.FusedLayerWeights``), never as a positional list.
#include "heron_cpu.h"

namespace heron {

LinearWeights make_linear_weights(const std::string& kind, std::vector<at::Tensor> tensors,
                                  c10::optional<at::Tensor> bias) {
  LinearWeights w;
  size_t expected = 0;
  if (kind == "f32") {
    w.kind = LinearKind::kFloat;
    expected = 1;  // weight [N, K]
  } else if (kind == "q4_1") {
    w.kind = LinearKind::kQ4_1;
    expected = 3;  // qs, d, m
  } else if (kind == "q8_0") {
    w.kind = LinearKind::kQ8_0;
    expected = 2;  // qs, d
  } else {
    TORCH_CHECK(false, "unknown linear kind '", kind, "'; known: f32, q4_1, q8_0");
  }
  TORCH_CHECK(tensors.size() == expected, "a ", kind, " linear takes ", expected,
              " tensors, got ", tensors.size());
  w.tensors = std::move(tensors);
  w.bias = std::move(bias);
  return w;
}

const std::vector<std::string>& LayerWeights::field_names() {
#define HERON_FIELD_NAME(type, name) #name,
  static const std::vector<std::string> names = {HERON_LAYER_WEIGHTS(HERON_FIELD_NAME)};
#undef HERON_FIELD_NAME
  return names;
}

namespace {

at::Tensor run_linear(const at::Tensor& x, const LinearWeights& w) {
  const std::vector<at::Tensor>& t = w.tensors;
  switch (w.kind) {
    case LinearKind::kQ4_1:
      return linear_q4_1(x, t[0], t[1], t[2], w.bias);
    case LinearKind::kQ8_0:
      return linear_q8_0(x, t[0], t[1], w.bias);
    case LinearKind::kFloat:
      break;
  }
  return at::linear(x, t[0], w.bias);
}

void check_layer(const LayerWeights& w, const at::Tensor& k_cache, const at::Tensor& v_cache) {
  TORCH_CHECK(w.num_heads > 0 && w.num_kv_heads > 0 && w.head_dim > 0 &&
                  w.num_heads % w.num_kv_heads == 0,
              "bad head counts");
  TORCH_CHECK(w.input_norm.defined() && w.post_attention_norm.defined(), "norm weights unset");
  for (const LinearWeights* l : {&w.qkv, &w.o, &w.gate_up, &w.down})
    TORCH_CHECK(!l->tensors.empty(), "linear weights unset");
  TORCH_CHECK(w.window >= 0, "window must be >= 0 (0: none)");
  half_cache(k_cache, v_cache);  // checks dtype and layout
  TORCH_CHECK(k_cache.dim() == 4 && k_cache.size(2) == w.num_kv_heads &&
                  k_cache.size(3) == w.head_dim,
              "cache [num_blocks, block_size, num_kv_heads, head_dim] does not fit the layer");
}

}  // namespace

namespace {

// y += the adapters' delta of input x, where the linear is adapted and the step has rows.
void adapt(at::Tensor& y, const at::Tensor& x, const AdapterSlots& slots,
           const AdapterPlan* plan) {
  if (plan != nullptr && slots.defined()) apply_adapters_(y, x, slots, *plan);
}

// One layer; ``adapters`` and ``plan`` (both or neither) add the step's LoRA deltas to each
// adapted linear's output, as ``heron.lora.layer.LoRALinear`` does on the layered path.
void layer_step(at::Tensor& x, const LayerWeights& w, at::Tensor& k_cache, at::Tensor& v_cache,
                const at::Tensor& cos, const at::Tensor& sin, const at::Tensor& slots,
                const at::Tensor& block_table, const at::Tensor& context_lens,
                const LayerAdapters* adapters, const AdapterPlan* plan) {
  static const LayerAdapters none;
  const LayerAdapters& ad = adapters != nullptr ? *adapters : none;
  // x [B, hidden]: the residual stream, one row per query token, updated in place.
  const int64_t B = x.size(0);
  const int64_t q_size = w.num_heads * w.head_dim, kv_size = w.num_kv_heads * w.head_dim;
  at::Tensor h = rms_norm(x, w.input_norm, w.input_norm_eps);
  at::Tensor qkv = run_linear(h, w.qkv);  // [B, q_size + 2 * kv_size]
  adapt(qkv, h, ad.qkv, plan);
  at::Tensor q = qkv.narrow(1, 0, q_size).view({B, w.num_heads, w.head_dim});
  at::Tensor k = qkv.narrow(1, q_size, kv_size).view({B, w.num_kv_heads, w.head_dim});
  at::Tensor v = qkv.narrow(1, q_size + kv_size, kv_size).view({B, w.num_kv_heads, w.head_dim});
  rope_(q, cos, sin);
  rope_(k, cos, sin);
  cache_write_(k, v, k_cache, v_cache, slots);
  at::Tensor attn = paged_decode_attention(q, k_cache, v_cache, block_table, context_lens,
                                           w.scale, w.window, 0.0);
  const at::Tensor attn_rows = attn.view({B, q_size});
  at::Tensor o = run_linear(attn_rows, w.o);
  adapt(o, attn_rows, ad.o, plan);
  h = add_rms_norm_(o, x, w.post_attention_norm, w.post_attention_norm_eps);
  at::Tensor gu = run_linear(h, w.gate_up);  // [B, 2 * inter]
  adapt(gu, h, ad.gate_up, plan);
  const at::Tensor act = silu_mul(gu);
  at::Tensor down = run_linear(act, w.down);
  adapt(down, act, ad.down, plan);
  x.add_(down);
}

}  // namespace

void decode_layer_(at::Tensor& x, const LayerWeights& w, at::Tensor& k_cache,
                   at::Tensor& v_cache, const at::Tensor& cos, const at::Tensor& sin,
                   const at::Tensor& slots, const at::Tensor& block_table,
                   const at::Tensor& context_lens) {
  layer_step(x, w, k_cache, v_cache, cos, sin, slots, block_table, context_lens, nullptr,
             nullptr);
}

void DecodeStack::add(const LayerWeights& weights, const at::Tensor& k_cache,
                      const at::Tensor& v_cache) {
  check_layer(weights, k_cache, v_cache);
  layers_.push_back(Layer{weights, k_cache, v_cache, {}});
}

void DecodeStack::set_adapters(int64_t layer, const std::string& linear, const at::Tensor& a,
                               const at::Tensor& b, const at::Tensor& spans) {
  TORCH_CHECK(layer >= 0 && layer < size(), "no layer ", layer, " in the stack");
  LayerAdapters& ad = layers_[layer].adapters;
  AdapterSlots* target = linear == "qkv"       ? &ad.qkv
                         : linear == "o"       ? &ad.o
                         : linear == "gate_up" ? &ad.gate_up
                         : linear == "down"    ? &ad.down
                                               : nullptr;
  TORCH_CHECK(target != nullptr, "unknown linear '", linear, "'; known: qkv, o, gate_up, down");
  *target = AdapterSlots{a, b, spans};
}

void DecodeStack::run(at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin,
                      const at::Tensor& slots, const at::Tensor& block_table,
                      const at::Tensor& context_lens,
                      const c10::optional<at::Tensor>& adapter_slots) {
  AdapterPlan plan;  // planned once per step for every layer
  const bool adapted = adapter_slots.has_value();
  if (adapted) {
    TORCH_CHECK(adapter_slots->dim() == 1 && adapter_slots->size(0) == x.size(0),
                "adapter_slots [T] must match x [T, hidden]");
    plan = plan_adapters(*adapter_slots);
  }
  const bool any = adapted && !plan.rows.empty();
  for (auto& l : layers_)
    layer_step(x, l.weights, l.k_cache, l.v_cache, cos, sin, slots, block_table, context_lens,
               any ? &l.adapters : nullptr, any ? &plan : nullptr);
}

}  // namespace heron
