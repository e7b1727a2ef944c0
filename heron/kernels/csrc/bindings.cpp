// The Python bindings of Heron's CPU kernels: one module per ISA level, each built from these
// same sources (heron/kernels/isa.py), named by TORCH_EXTENSION_NAME.
#include "heron_cpu.h"

// The tensor type casters alone: <torch/extension.h> would also bring torch's C++ frontend and
// double this file's compile time, three times over.
#include <torch/csrc/utils/pybind.h>

#include <vector>

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "Heron's CPU kernels";
  m.def("linear_q4_1", &heron::linear_q4_1, "x @ q4_1(W).T (+ bias)");
  m.def("linear_q8_0", &heron::linear_q8_0, "x @ q8_0(W).T (+ bias)");
  m.def("quantize_q4_1", &heron::quantize_q4_1, "W -> (qs, d, m)");
  m.def("quantize_q8_0", &heron::quantize_q8_0, "W -> (qs, d)");
  m.def(
      "quantize_rows",
      [](const at::Tensor& x) {
        heron::check_linear_input(x, x.size(1));
        const heron::QuantizedRows r = heron::quantize_rows(x);
        return std::vector<at::Tensor>{r.q, r.d, r.s, r.sum};
      },
      "x [M, K] -> (xq int8, dx, dx * sum(xq), sum(xq)): the linears' activation blocks");
  m.def("pack_q4_1", &heron::pack_q4_1, "(qs, d, m) -> the 8-row packed layout");
  m.def("pack_q8_0", &heron::pack_q8_0, "(qs, d) -> the 8-row packed layout");
  m.def("has_packed", &heron::has_packed, "whether the packed (8-row, AVX2 or VNNI) linears are built");
  m.def("has_avx2", &heron::has_avx2);
  m.def("has_vnni", &heron::has_vnni, "whether the linears use AVX-512 VNNI");
  m.def("rms_norm", &heron::rms_norm);
  m.def("add_rms_norm_", &heron::add_rms_norm_);
  m.def("rope_", &heron::rope_);
  m.def("silu_mul", &heron::silu_mul, "silu(gate) * up of a [T, 2 * I] gate_up output");
  m.def("cache_write_", &heron::cache_write_);
  m.def("paged_decode_attention", &heron::paged_decode_attention);
  // Module-local classes: each ISA level is a module of its own with these same C++ types, and
  // a process may load several (the tests load every level the CPU runs).
  const auto local = pybind11::module_local();
  pybind11::class_<heron::LinearWeights>(m, "LinearWeights", local, "one linear of a fused layer")
      .def(pybind11::init(&heron::make_linear_weights), pybind11::arg("kind"),
           pybind11::arg("tensors"), pybind11::arg("bias"));
  pybind11::class_<heron::LayerWeights> layer(m, "LayerWeights", local, "a fused layer, by name");
  layer.def(pybind11::init<>()).def_static("field_names", &heron::LayerWeights::field_names);
#define HERON_BIND_FIELD(type, name) layer.def_readwrite(#name, &heron::LayerWeights::name);
  HERON_LAYER_WEIGHTS(HERON_BIND_FIELD)
#undef HERON_BIND_FIELD
  m.def("decode_layer_", &heron::decode_layer_, "one decode step of a Llama-style layer");
  m.def("lora_add_", &heron::lora_add_,
        "y [T, N] += (x[t] @ a[s]) @ b[s] for each row t with slot s = token_slots[t] >= 0");
  pybind11::class_<heron::DecodeStack>(m, "DecodeStack", local, "decode_layer_ over held layers")
      .def(pybind11::init<>())
      .def("add", &heron::DecodeStack::add)
      .def("set_adapters", &heron::DecodeStack::set_adapters, pybind11::arg("layer"),
           pybind11::arg("linear"), pybind11::arg("a"), pybind11::arg("b"),
           pybind11::arg("spans"))
      .def("run", &heron::DecodeStack::run, pybind11::arg("x"), pybind11::arg("cos"),
           pybind11::arg("sin"), pybind11::arg("slots"), pybind11::arg("block_table"),
           pybind11::arg("context_lens"), pybind11::arg("adapter_slots") = pybind11::none())
      .def("__len__", &heron::DecodeStack::size);
}
