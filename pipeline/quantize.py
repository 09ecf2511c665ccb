"""int8 for the inductor backend: PyTorch 2 export quantization (PT2E) with X86InductorQuantizer.

    program = export_int8(module, inputs, dynamic_shapes)
    torch._inductor.aoti_compile_and_package(program, inductor_configs={"freezing": True})

Why this recipe:
- torch 2.13 no longer ships `torch.ao.quantization.quantize_pt2e` / `...quantizer`; the PT2E
  flow and the X86 quantizer live in torchao (`torchao.quantization.pt2e`). Importing its
  quantizer module also registers the Inductor passes (weight prepack for oneDNN qlinear,
  quant lift-up) that turn the quantize/dequantize pattern into fused int8 GEMMs; those
  passes run under `freezing`, which the backend's default inductor_configs turn on.
- Dynamic activation quantization (per-tensor u8 scales computed at run time, per call) with
  per-channel symmetric int8 weights: no calibration set is needed, and per-channel weights are
  what keeps a MiniLM-class encoder at pooled cosine ~0.99 vs fp32 (per-tensor weights lose
  ~0.04 of cosine, measured with ONNX Runtime on all-MiniLM-L6-v2).
- Only Linear layers are quantized (the quantizer's module-type filter): embeddings,
  LayerNorm, softmax and the attention matmuls stay fp32; they are a small share of the
  FLOPs of an encoder and the most sensitive to int8.

The artifact calls only ops from torch core (onednn qlinear, quantized_decomposed), so it
loads with `aoti_load_package` in a process that never imports torchao.
"""
from __future__ import annotations

from typing import Any

INT8_RECIPE = "pt2e-x86-dynamic-per-channel-linear"


def _quantizer():
    """The X86InductorQuantizer from torchao (torch >= 2.10 removed torch.ao's copy)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            import torchao.quantization.pt2e.quantizer.x86_inductor_quantizer as xiq
            from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
        except ImportError as e:  # pragma: no cover - depends on the environment
            try:  # older torch: the in-tree copy
                import torch.ao.quantization.quantizer.x86_inductor_quantizer as xiq  # type: ignore[no-redef]
                from torch.ao.quantization.quantize_pt2e import convert_pt2e, prepare_pt2e  # type: ignore[no-redef]
            except ImportError:
                raise ImportError("cast_type int8 needs torchao (pip install torchao): PT2E quantization "
                                  f"moved out of torch.ao in this torch version ({e})") from e
    import torch

    quantizer = xiq.X86InductorQuantizer()
    config = xiq.get_default_x86_inductor_quantization_config(is_dynamic=True)  # per-channel weights
    quantizer.set_module_type_qconfig(torch.nn.Linear, config)
    return quantizer, prepare_pt2e, convert_pt2e


def export_int8(module, inputs: dict, dynamic_shapes: Any = None):
    """Export `module(**inputs)`, insert dynamic int8 quantization around its Linear layers,
    and re-export the quantized graph as an ExportedProgram for aoti_compile_and_package."""
    import torch

    quantizer, prepare_pt2e, convert_pt2e = _quantizer()
    with torch.no_grad():
        captured = torch.export.export(module, (), kwargs=inputs, dynamic_shapes=dynamic_shapes, strict=True).module()
        # Outputs the task does not return (BERT's pooler: Linear + Tanh) survive export as
        # user-less nodes; the quantizer's Linear->Tanh pattern matcher trips over them.
        captured.graph.eliminate_dead_code()
        captured.recompile()
        prepared = prepare_pt2e(captured, quantizer)
        prepared(**inputs)  # dynamic quantization: observers only record weights; one pass is enough
        converted = convert_pt2e(prepared, fold_quantize=True)
        # The converted GraphModule is already ATen-level; export it again (non-strict: it is
        # not Python source Dynamo needs to trace) so AOTInductor gets an ExportedProgram.
        return torch.export.export(converted, (), kwargs=inputs, dynamic_shapes=dynamic_shapes, strict=False)
