"""int8 for the inductor backend: PyTorch 2 export quantization (PT2E) with X86InductorQuantizer.

    program = export_int8(module, inputs, dynamic_shapes)
    with torch.no_grad():
        torch._inductor.aoti_compile_and_package(program, inductor_configs={"freezing": True})

The recipe, and why:

- torch 2.13 no longer ships `torch.ao.quantization.quantize_pt2e` / `...quantizer`; the PT2E
  flow and the X86 quantizer live in torchao (`torchao.quantization.pt2e`). Importing its
  quantizer module registers the Inductor freezing passes (oneDNN weight prepack, quant
  lift-up) that turn quantize/dequantize + addmm into fused int8 `qlinear_pointwise` calls.
  They only run under `freezing` AND `torch.no_grad()` (Inductor freezes only inference
  graphs): without no_grad the artifact silently computes fake-quant in fp32, slower than fp32.
- Dynamic activation quantization (u8, per-tensor scale computed per call) with per-channel
  symmetric int8 weights: per-channel weights are what keep MiniLM-class encoders near fp32
  (ONNX Runtime on all-MiniLM-L6-v2: pooled cosine 0.99 per-channel, 0.95 per-tensor).
- Only Linear layers are quantized; embeddings, LayerNorm, softmax and the attention matmuls
  stay fp32.
- SmoothQuant-style smoothing (alpha 0.5): BERT-like residual streams carry a few outlier
  channels (20-30x the median channel); a per-tensor activation scale then wastes most of the
  u8 range. Each Linear's input is multiplied by 1/s per channel and its weight columns by s
  (exact in fp32; Inductor fuses the multiply into the producer's kernel), with
  s = amax(x)^a / amax(w)^(1-a), kept only where it lowers that layer's simulated int8 error.
- Layers whose simulated int8 error on the calibration batch stays above `max_layer_error`
  (relative error of the layer output, worst token: the gate checks every position) stay fp32.
  In MiniLM those are the FFN down-projections of layers 0-3 (GELU outputs with token outliers,
  "massive activations", that neither per-tensor scales nor channel smoothing fix) and a few
  value projections: 8 of 36 Linear layers, ~28% of the Linear FLOPs.
- Calibration uses synthetic token ids (seeded, same shape and mask as the example inputs;
  the first token kept), not the example inputs themselves, which the worker also uses to
  verify: the gate then measures generalisation, not a fit to its own test data.

The artifact calls only torch-core ops (onednn qlinear, quantized_decomposed), so it loads
with `aoti_load_package` in a process that never imports torchao.
"""

from __future__ import annotations

import copy
from typing import Any

INT8_RECIPE = "pt2e-x86-dynamic-u8-act-per-channel-s8-weight-smooth0.5-skip-worst-token-0.1"
ALPHA = 0.5
MAX_LAYER_ERROR = 0.1
CALIBRATION_SEED = 1234


def _pt2e():
    """prepare_pt2e, convert_pt2e and the X86 quantizer module (torchao; torch.ao on old torch)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            import torchao.quantization.pt2e.quantizer.x86_inductor_quantizer as xiq
            from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
        except ImportError as e:  # pragma: no cover - depends on the environment
            try:  # torch < 2.10 kept an in-tree copy
                import torch.ao.quantization.quantizer.x86_inductor_quantizer as xiq  # type: ignore[no-redef]
                from torch.ao.quantization.quantize_pt2e import convert_pt2e, prepare_pt2e  # type: ignore[no-redef]
            except ImportError:
                raise ImportError(
                    "cast_type int8 needs torchao (pip install torchao): PT2E quantization "
                    f"moved out of torch.ao in this torch version ({e})"
                ) from e
    return xiq, prepare_pt2e, convert_pt2e


def _smoothed_linear_class():
    import torch

    class SmoothedLinear(torch.nn.Module):
        """linear(x / s, W * s) == linear(x, W): moves activation outlier channels into the weights."""

        def __init__(self, linear, inv_scale):
            super().__init__()
            self.linear = linear
            self.register_buffer("inv_scale", inv_scale)

        def forward(self, x):
            return self.linear(x * self.inv_scale)

    return SmoothedLinear


def _simulated_error(x, weight, worst_token: bool = False) -> float:
    """Relative error of x @ W^T when x is u8 per-tensor and W s8 per-channel (the runtime scheme)."""
    import torch

    x = x.float()
    lo, hi = min(x.min().item(), 0.0), max(x.max().item(), 0.0)
    scale = max((hi - lo) / 255.0, 1e-12)
    zp = round(-lo / scale)
    xq = ((x / scale).round() + zp).clamp(0, 255).sub(zp).mul(scale)
    ws = weight.abs().amax(1, keepdim=True).clamp(min=1e-12) / 127.0
    wq = (weight / ws).round().clamp(-127, 127) * ws
    y = torch.nn.functional.linear(x, weight)
    d = torch.nn.functional.linear(xq, wq) - y
    if worst_token:  # the gate checks every position: one token with massive activations counts
        return (d.norm(dim=-1) / y.norm(dim=-1).clamp(min=1e-12)).max().item()
    norm = y.norm().item()
    return d.norm().item() / norm if norm > 0 else 0.0


def calibration_inputs(inputs: dict, vocab_size: int | None, seed: int = CALIBRATION_SEED) -> dict:
    """Same shapes and masks as `inputs`, other token ids (first token kept: [CLS]/<s>)."""
    import torch

    out = dict(inputs)
    ids = inputs.get("input_ids")
    if ids is None or not vocab_size:
        return out
    g = torch.Generator().manual_seed(seed)
    rand = torch.randint(min(5, vocab_size - 1), vocab_size, ids.shape, generator=g, dtype=ids.dtype)
    rand[:, 0] = ids[:, 0]
    mask = inputs.get("attention_mask")
    out["input_ids"] = torch.where(mask.bool(), rand, ids) if mask is not None else rand
    return out


def plan_layers(module, calib: dict, alpha: float = ALPHA, max_layer_error: float = MAX_LAYER_ERROR) -> dict[str, dict]:
    """Per Linear (by module name): smoothing scale or None, and whether to quantize it."""
    import torch

    inputs: dict[str, Any] = {}
    linears = {n: m for n, m in module.named_modules() if isinstance(m, torch.nn.Linear)}

    def hook(name):
        def record(mod, args, out):
            inputs[name] = args[0].detach().flatten(0, -2).float()

        return record

    handles = [m.register_forward_hook(hook(n)) for n, m in linears.items()]
    try:
        with torch.no_grad():
            module(**calib)
    finally:
        for h in handles:
            h.remove()
    plan = {}
    for name, x in inputs.items():
        weight = linears[name].weight.detach().float()
        s = (x.abs().amax(0).clamp(min=1e-5) ** alpha / weight.abs().amax(0).clamp(min=1e-5) ** (1 - alpha)).clamp(
            min=1e-5
        )
        raw, smoothed = _simulated_error(x, weight), _simulated_error(x / s, weight * s)
        use = smoothed < raw
        worst = (
            _simulated_error(x / s, weight * s, worst_token=True)
            if use
            else _simulated_error(x, weight, worst_token=True)
        )
        plan[name] = {
            "scale": s if use else None,
            "quantize": worst <= max_layer_error,
            "error": round(min(raw, smoothed), 5),
            "worst_token_error": round(worst, 5),
        }
    return plan


def apply_smoothing(module, plan: dict[str, dict]):
    """A copy of `module` with SmoothedLinear wrappers where the plan has a scale."""
    import torch

    SmoothedLinear = _smoothed_linear_class()
    module = copy.deepcopy(module)
    for name, p in plan.items():
        if p["scale"] is None:
            continue
        parent_name, _, attr = name.rpartition(".")
        parent = module.get_submodule(parent_name) if parent_name else module
        linear = getattr(parent, attr)
        with torch.no_grad():
            linear.weight.mul_(p["scale"].to(linear.weight.dtype))
        setattr(parent, attr, SmoothedLinear(linear, (1.0 / p["scale"]).to(linear.weight.dtype)))
    return module


def export_int8(
    module,
    inputs: dict,
    dynamic_shapes: Any = None,
    *,
    alpha: float = ALPHA,
    max_layer_error: float = MAX_LAYER_ERROR,
    report: dict | None = None,
    dynamic: bool = True,
):
    """Export `module(**inputs)` with dynamic int8 Linear layers (see the module docstring) as an
    ExportedProgram for aoti_compile_and_package. `report`, when given, receives the per-layer plan.
    `dynamic=False` is static activation quantization (ranges from the calibration batch): fewer
    ops per call, but fixed activation scales lose accuracy on outlier-heavy encoders."""
    import torch

    xiq, prepare_pt2e, convert_pt2e = _pt2e()
    inner = getattr(module, "model", module)  # the backend's OutputsAsTuple wraps the HF model
    calib = calibration_inputs(inputs, getattr(getattr(inner, "config", None), "vocab_size", None))
    plan = plan_layers(module, calib, alpha, max_layer_error)
    smoothed = apply_smoothing(module, plan)

    quantizer = xiq.X86InductorQuantizer()
    for name, p in plan.items():
        if not p["quantize"]:  # annotated first, so the module-type rule below skips it
            quantizer.set_module_name_qconfig(name + (".linear" if p["scale"] is not None else ""), None)
    quantizer.set_module_type_qconfig(
        torch.nn.Linear, xiq.get_default_x86_inductor_quantization_config(is_dynamic=dynamic)
    )
    if report is not None:
        report.update(
            {
                "recipe": INT8_RECIPE,
                "layers": {
                    n: {k: v for k, v in p.items() if k != "scale"} | {"smoothed": p["scale"] is not None}
                    for n, p in plan.items()
                },
            }
        )
    with torch.no_grad():
        captured = torch.export.export(smoothed, (), kwargs=inputs, dynamic_shapes=dynamic_shapes, strict=True).module()
        # Outputs the task does not return (BERT's pooler: Linear + Tanh) survive export as
        # user-less nodes; the quantizer's Linear->Tanh pattern matcher trips over them.
        captured.graph.eliminate_dead_code()
        captured.recompile()
        prepared = prepare_pt2e(captured, quantizer)
        prepared(**calib)  # dynamic: the observers only record weights; static: activation ranges too
        converted = convert_pt2e(prepared, fold_quantize=True)
        # The converted GraphModule is ATen-level code, not Python source for Dynamo: export it
        # again non-strict to hand AOTInductor an ExportedProgram.
        return torch.export.export(converted, (), kwargs=inputs, dynamic_shapes=dynamic_shapes, strict=False)
