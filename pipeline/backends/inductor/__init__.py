"""The `inductor` backend: torch.export + AOTInductor, on CPU (and CUDA where present).

The artifact is one `model.pt2` package: a shared library with the weights, loadable with
`torch._inductor.aoti_load_package` and no model Python code.
"""

from __future__ import annotations

import functools
import platform
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict

from pipeline import tasks
from pipeline.backends.base import Backend
from pipeline.backends.inductor import decoder, int8
from pipeline.keys import package_version

DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16", "int8": "float32"}
PACKAGE = "model.pt2"


@dataclass
class Options:
    name: str = "inductor"
    device: str = "cpu"  # cpu | cuda
    # Inductor options baked into the artifact. freezing prepacks weights for oneDNN linear:
    # ~2x faster on CPU than the defaults (measured, see README "Performance").
    inductor_configs: Dict[str, Any] = field(default_factory=lambda: {"freezing": True})


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags from /proc/cpuinfo (empty where there is none), so that planning
    does not import torch."""
    try:
        return frozenset(
            next(
                (
                    line.split(":", 1)[1].split()
                    for line in Path("/proc/cpuinfo").read_text().splitlines()
                    if line.startswith("flags")
                ),
                [],
            )
        )
    except OSError:
        return frozenset()


# Inductor settings under which the generated C++ uses ISA extensions found at compile time
# (e.g. max_autotune's CPP GEMM templates emit AMX / AVX512-BF16 micro-kernels), rather than
# oneDNN kernels that pick their ISA at run time: such an artifact is tied to these CPU flags.
ISA_SPECIFIC_CONFIGS = ("max_autotune", "max_autotune_gemm", "max_autotune_gemm_backends")
ISA_FLAGS = frozenset({"avx512_bf16", "avx512_fp16", "avx512_vnni", "avx_vnni", "amx_tile", "amx_bf16", "amx_int8",
                       "amx_fp16"})


def isa_specific(inductor_configs: dict[str, Any]) -> bool:
    return any(inductor_configs.get(name) not in (None, False, "", "ATEN") for name in ISA_SPECIFIC_CONFIGS)


# CPU features that do bf16 / fp16 math natively; without them oneDNN and Inductor emulate it.
NATIVE_LOW_PRECISION = {"bf16": ("avx512_bf16", "amx_bf16"), "fp16": ("avx512_fp16", "amx_fp16")}


@functools.cache
def cpu_capability() -> str:
    """The vector ISA Inductor generates code for (what torch.backends.cpu reports)."""
    flags = cpu_flags()
    if {"avx512f", "avx512bw", "avx512vl", "avx512dq"} <= flags:
        return "AVX512"
    if "avx2" in flags:
        return "AVX2"
    return platform.machine() or "unknown"


@functools.cache
def cxx_version() -> str:
    cxx = shutil.which("g++") or shutil.which("c++") or shutil.which("clang++")
    if not cxx:
        return "absent"
    try:
        return (
            subprocess.run([cxx, "--version"], capture_output=True, text=True, timeout=10)
            .stdout.splitlines()[0]
            .strip()
        )
    except (OSError, subprocess.SubprocessError, IndexError):
        return "unknown"


@functools.cache
def gpu_arch() -> str:
    import torch

    if not torch.cuda.is_available():
        return "absent"
    major, minor = torch.cuda.get_device_capability()
    return f"sm_{major}{minor} {torch.cuda.get_device_name()}"


class InductorBackend(Backend):
    name = "inductor"
    cast_types = ("fp32", "bf16", "fp16", "int8")
    tasks = (
        "feature-extraction",
        "text-classification",
        "token-classification",
        "question-answering",
        "fill-mask",
        "text-generation",
    )

    def warm_up(self) -> None:
        import torch  # noqa: F401
        import torch._inductor  # noqa: F401
        import torch.export  # noqa: F401
        import transformers.modeling_utils  # noqa: F401

    def quantization(self, cast_type: str) -> dict[str, Any] | None:
        if cast_type != "int8":
            return None
        return {"recipe": int8.INT8_RECIPE, "torchao": package_version("torchao")}

    def available(self) -> str | None:
        if cxx_version() == "absent":
            return "inductor: no C++ compiler (g++/c++/clang++) on PATH; AOTInductor needs one to compile"
        if self.options.get("device") == "cuda" and gpu_arch() == "absent":
            return "inductor: device=cuda but torch sees no CUDA device"
        return None

    def toolchain(self) -> dict[str, Any]:
        device = self.options.get("device", "cpu")
        plat = {
            "os": platform.system(),
            "arch": platform.machine(),
            "cpu_capability": cpu_capability(),
            "gpu_arch": gpu_arch() if device == "cuda" else None,
        }
        if device == "cpu" and isa_specific(self.options.get("inductor_configs") or {}):
            plat["isa_flags"] = sorted(cpu_flags() & ISA_FLAGS)  # the artifact runs only where these exist
        return {
            "torch": package_version("torch"),
            "transformers": package_version("transformers"),
            "cxx": cxx_version(),
            "platform": plat,
        }

    def advice(self, cast_types: set[str]) -> list[str]:
        flags = cpu_flags()
        if self.options.get("device", "cpu") != "cpu" or not flags:  # no /proc/cpuinfo: nothing known
            return []
        return [
            f"cast_type {cast}: this CPU has neither {' nor '.join(NATIVE_LOW_PRECISION[cast])}, so {cast} math is "
            "emulated "
            "and its artifacts will likely run slower than fp32 (bench/results/latency.md measured bf16 at 0.4x "
            "fp32 on such a CPU)"
            for cast in sorted(cast_types & set(NATIVE_LOW_PRECISION))
            if not flags & set(NATIVE_LOW_PRECISION[cast])
        ]

    def validate(self, job: dict[str, Any]) -> list[str]:
        errors = []
        if self.options.get("device") not in ("cpu", "cuda"):
            errors.append(f"backend.device: {self.options.get('device')!r} is not one of cpu, cuda")
        if not isinstance(self.options.get("inductor_configs"), dict):
            errors.append("backend.inductor_configs: must be a mapping of Inductor config names to values")
        if job["cast_type"] == "int8" and job["task"] == "text-generation":
            errors.append("cast_type: int8 is supported for encoder tasks only on the inductor backend")
        if job["cast_type"] == "int8" and self.options.get("device") == "cuda":
            errors.append("cast_type: int8 (X86InductorQuantizer) runs on device=cpu only")
        return errors

    def compile(self, model, example_inputs, spec, workdir: Path) -> dict[str, Any]:
        import torch

        task = tasks.TASKS[spec["task"]]
        if task.decoder:
            info = decoder.export_decoder(
                model,
                spec["shapes"]["batch_size"],
                spec["shapes"]["sequence_length"],
                spec["cast_type"],
                workdir,
                inductor_configs=dict(self.options["inductor_configs"]),
                device=self.options["device"],
            )
            return {"compiled": info}
        device = self.options["device"]
        dtype = getattr(torch, DTYPES[spec["cast_type"]])
        model = model.to(device=device, dtype=dtype).eval()
        names = list(example_inputs)
        inputs = {k: v.to(device) for k, v in example_inputs.items()}
        module = OutputsAsTuple(model, task.outputs)
        dynamic = None
        if spec.get("dynamic_batch_size"):
            batch = torch.export.Dim("batch", min=1, max=max(2, spec["shapes"]["batch_size"]))
            if inputs[names[0]].shape[0] < 2:  # a batch-1 example specialises the dim: export from batch 2
                inputs = {k: v.repeat(2, *([1] * (v.dim() - 1))) for k, v in inputs.items()}
            dynamic = {k: {0: batch} for k in names}
        with torch.no_grad():
            if spec["cast_type"] == "int8":
                program = int8.export_int8(module, inputs, dynamic)
            else:
                program = torch.export.export(module, (), kwargs=inputs, dynamic_shapes=dynamic, strict=True)
            torch._inductor.aoti_compile_and_package(
                program, package_path=str(workdir / PACKAGE), inductor_configs=dict(self.options["inductor_configs"])
            )
        return {
            "compiled": {
                "format": "aoti-pt2",
                "file": PACKAGE,
                "input_names": names,
                "output_names": list(task.outputs),
                "dtype": DTYPES[spec["cast_type"]],
                "device": device,
                "dynamic_batch_size": bool(spec.get("dynamic_batch_size")),
            }
        }

    def load(self, folder: Path, compile_config: dict[str, Any]):
        import torch

        info = compile_config["compiled"]
        if info["format"] != "aoti-pt2":
            return decoder.load_decoder(folder, info)
        package = torch._inductor.aoti_load_package(str(Path(folder) / info["file"]))
        names, outputs, device = info["input_names"], info["output_names"], info["device"]

        def run(**inputs):
            with torch.no_grad():
                result = package(**{n: inputs[n].to(device) for n in names})
            return dict(zip(outputs, result))

        return run


def OutputsAsTuple(model, outputs: tuple[str, ...]):
    """Wrap a transformers model so the exported graph returns a tuple of the task's outputs
    (plain tensors; ModelOutput objects are rebuilt by the runtime classes)."""
    import torch

    class _Wrapped(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask, token_type_ids=None):
            extra = {} if token_type_ids is None else {"token_type_ids": token_type_ids}
            out = self.model(input_ids=input_ids, attention_mask=attention_mask, return_dict=True, **extra)
            return tuple(out[name] for name in outputs)

    return _Wrapped().eval()
