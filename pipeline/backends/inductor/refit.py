"""`weights: refit`: an AOTInductor program with no weights inside, and the weights beside it.

A fleet is a few architectures and many fine-tunes of each. With `weights: embedded` (the
default) every fine-tune is a full compile, because the shared object holds the weights and
freezing folds them into prepacked oneDNN buffers at compile time. With `weights: refit` the
program is compiled once per graph key (`pipeline.keys.graph_key`) with

- `aot_inductor.package_constants_in_so=False`: the weights are left out of model.pt2;
- `freezing=False` + `aot_inductor.use_runtime_constant_folding=True`: the weight preparation
  that freezing did at compile time (transposes, ...) runs when the weights are loaded;

and each fine-tune's artifact is that program plus its own `weights.safetensors`, loaded into
the program with `load_constants` (torch/export/pt2_archive/_package.py, AOTICompiledModel).
A refit artifact is still a separate artifact with its own key, verified against its own
model's CPU fp32 reference before it is trusted.

Not for int8 (pt2e quantization folds the quantized weights into the program's constants,
under names the fine-tune's state dict does not have) nor text-generation (the static-cache
decoder export keeps its own package layout): validation refuses both.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Any

WEIGHTS = "weights.safetensors"
MODES = ("embedded", "refit")

# Inductor settings of a program compiled for refit; they override backend.inductor_configs.
REFIT_CONFIGS: dict[str, Any] = {
    "freezing": False,  # freezing would bake the weights into the program
    "aot_inductor.package_constants_in_so": False,
    "aot_inductor.use_runtime_constant_folding": True,
}


# What mode=plan and runs say when weights: refit is chosen (measured: bench/results/refit.md).
TRADE_OFF = (
    "weights: refit: one compile per architecture, each further fine-tune a refit (~1 s for a tiny model, "
    "17% of a compile for MiniLM) verified against its own reference; refit artifacts run slower than "
    "embedded (frozen) ones: 1.10-1.15x per call on MiniLM (bench/results/refit.md)"
)


class RefitError(ValueError):
    """The weights do not fit the program (another architecture, shape or dtype)."""


def unsupported(task: str, cast_type: str) -> str | None:
    """Why `weights: refit` cannot serve this task and cast type, or None."""
    if task == "text-generation":
        return "refit supports encoder tasks only; text-generation compiles with weights: embedded"
    if cast_type == "int8":
        return (
            "refit cannot serve cast_type int8 (its weights are quantized into the program); "
            "use weights: embedded"
        )
    return None


def compile_configs(inductor_configs: dict[str, Any]) -> dict[str, Any]:
    return {**inductor_configs, **REFIT_CONFIGS}


def module_constants(module: Any) -> dict[str, Any]:
    """Every parameter and buffer of `module` under each name it has (tied weights under all of
    them, non-persistent buffers included): the names an exported program may use."""
    return {
        name: tensor.detach()
        for name, tensor in [
            *module.named_parameters(remove_duplicate=False),
            *module.named_buffers(remove_duplicate=False),
        ]
    }


def write_program_weights(program: Any, package_path: Path, folder: Path) -> dict[str, float]:
    """The weights the compiled package uses, taken from the exported program (parameters,
    buffers, lifted constants), into folder/weights.safetensors: the names AOTInductor's
    `get_constant_fqns` lists, less the ones runtime constant folding computes from them. A
    weight the graph never reads (e.g. a pooler whose output is not returned) is left out."""
    import torch
    from safetensors.torch import save_file

    started = time.perf_counter()
    constants = {**program.state_dict, **program.constants}
    used = torch._inductor.aoti_load_package(str(package_path)).get_constant_fqns()
    save_file({k: _plain(constants[k]) for k in used if k in constants}, str(folder / WEIGHTS))
    return {"weights_s": round(time.perf_counter() - started, 3)}


def write_refit_weights(module: Any, program_folder: Path, folder: Path) -> dict[str, float]:
    """`module`'s weights, under the names and with the shapes and dtypes of the program in
    `program_folder`, into folder/weights.safetensors. Raises RefitError naming what differs."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    started = time.perf_counter()
    ours = module_constants(module)
    out, problems = {}, []
    with safe_open(str(Path(program_folder) / WEIGHTS), framework="pt") as f:
        for name in f.keys():
            want = f.get_slice(name)
            got = ours.get(name)
            shape, dtype = tuple(want.get_shape()), want.get_dtype()
            if got is None:
                problems.append(f"{name} missing")
            elif tuple(got.shape) != shape or _dtype_tag(got.dtype) != dtype:
                problems.append(f"{name} {tuple(got.shape)} {_dtype_tag(got.dtype)} != program {shape} {dtype}")
            else:
                out[name] = _plain(got)
    if problems:
        raise RefitError(
            f"the weights do not fit the program ({len(problems)} of {len(out) + len(problems)} tensors): "
            + "; ".join(problems[:3])
        )
    save_file(out, str(folder / WEIGHTS))
    return {"weights_s": round(time.perf_counter() - started, 3)}


def link_program(program_folder: Path, folder: Path, package: str) -> None:
    """The program's package into `folder`: a hard link where the file system allows (the
    bytes are shared with the program's entry), else a copy."""
    src, dst = Path(program_folder) / package, Path(folder) / package
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def load_weights(package: Any, folder: Path, device: str) -> None:
    """Load folder/weights.safetensors into a loaded AOTI package; runtime constant folding
    redoes the weight preparation on the next call."""
    from safetensors.torch import load_file

    weights = load_file(str(Path(folder) / WEIGHTS), device=device)
    expected = set(package.get_constant_fqns())
    unknown = sorted(set(weights) - expected)
    # the program computes its _FOLDED_CONST_* tensors from the others (runtime constant folding)
    missing = sorted(n for n in expected - set(weights) if not n.startswith("_FOLDED_CONST_"))
    if unknown or missing:
        raise RefitError(
            f"{WEIGHTS} does not fit the program: unknown {', '.join(unknown[:3]) or '-'}; "
            f"missing {', '.join(missing[:3]) or '-'}"
        )
    # check_full_update=False: the folded constants are not in the file, the program computes them
    package.load_constants(weights, check_full_update=False)


def _plain(tensor: Any) -> Any:
    """A contiguous tensor that owns its storage (safetensors refuses shared or strided ones)."""
    return tensor.detach().contiguous().clone()


def _dtype_tag(dtype: Any) -> str:
    """A torch dtype as safetensors names it (F32, BF16, F16, I64, ...)."""
    import torch

    return {
        torch.float32: "F32",
        torch.bfloat16: "BF16",
        torch.float16: "F16",
        torch.int64: "I64",
        torch.int32: "I32",
        torch.bool: "BOOL",
        torch.uint8: "U8",
        torch.int8: "I8",
        torch.float64: "F64",
    }.get(dtype, str(dtype))
