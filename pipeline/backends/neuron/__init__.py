"""AWS Neuron backend: neuronx-cc through torch-neuronx (encoders) and optimum-neuron (decoders).

Light at import: torch, torch_neuronx, optimum.neuron and transformers_neuronx are imported
inside the functions that need them, so planning and validation run anywhere.

Where things are: `rules` holds everything that needs no SDK (options, flag translation,
keys, validation, the config.json "neuron" section); `decoder` the text-generation runtimes
(`DecoderRuntime` over the SDK models' forward step); this module the backend class, the SDK
calls (compile, load) and the encoder runner.

What is verified where: the rules and the decoder runtimes' plumbing are tested on every
machine; compiling and running need the AWS Neuron SDK, which only installs from AWS's own pip
index (https://pip.repos.neuron.amazonaws.com), and running needs a Neuron device (inf2 / trn1
/ trn2). See docs/neuron.md.
"""
from __future__ import annotations

import inspect
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

from pipeline import keys
from pipeline.backends.base import Backend, BackendUnavailable
from pipeline.backends.neuron.decoder import (
    GENERATION_CONFIG_FILE,
    NxDDecoderRuntime,
    TnxDecoderRuntime,
    decoder_runtime,
)
from pipeline.backends.neuron.rules import (
    CAST_TYPES,
    DECODER_TASKS,
    MODEL_FILE,
    SDK_DISTRIBUTIONS,
    TARGET_GENERATION,
    TASKS,
    TNX_AMP,
    TORCH_DTYPE_NAME,
    Options,
    compiler_args,
    decoder_engine_name,
    is_decoder,
    job_options,
    key_options,
    missing_reason,
    missing_sdk,
    neuron_config_section,
    neuron_device_present,
    parse_options,
    runtime_env,
    spec_generation,
    target_generation,
    validate_job,
)
from pipeline.keys import package_version

# The names this package is used by: the registry finds `Options` and the Backend subclass here.
__all__ = ["NeuronBackend", "Options", "EncoderRunner", "NxDDecoderRuntime", "TnxDecoderRuntime"]

# Decoder artifacts describe the DecoderRuntime contract, not an SDK graph's inputs.
DECODER_INPUT_NAMES = ["input_ids", "cache_position"]
DECODER_OUTPUT_NAMES = ["logits"]


class NeuronBackend(Backend):
    name = "neuron"
    cast_types = CAST_TYPES
    tasks = TASKS

    def __init__(self, options: dict[str, Any]):
        super().__init__(options)
        self.opts, self.option_errors = parse_options(self.options)

    # -- facts

    def available(self, task: str | None = None) -> str | None:
        """None when the SDK parts needed for `task` (every task when None) import here.
        Compiling needs no device (cpu_backend); running and verifying do."""
        return missing_reason(missing_sdk(task, self.opts.decoder_engine))

    def toolchain(self) -> dict[str, Any]:
        tc = {dist: package_version(dist) for dist in SDK_DISTRIBUTIONS}
        if self.opts.decoder_engine == "transformers-neuronx":
            tc["transformers-neuronx"] = package_version("transformers-neuronx")
        target = self.opts.target
        tc["target"] = target_generation(target) if target in TARGET_GENERATION else target
        return tc

    def spec_options(self) -> dict[str, Any]:
        """This backend's options as they belong in a spec (see `rules.key_options`)."""
        return key_options(self.opts)

    # -- validation

    def _job_options(self, job: dict[str, Any]) -> dict[str, Any]:
        """This backend's options overlaid with the job's (a spec's options lack `target`)."""
        return job_options(self.options, job)

    def validate(self, job: dict[str, Any]) -> list[str]:
        return validate_job(self._job_options(job), job)

    # -- compile

    def compile(self, model: Any, example_inputs: dict[str, Any], spec: dict[str, Any],
                workdir: Path) -> dict[str, Any]:
        workdir = Path(workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        task = spec.get("task")
        opts = parse_options(self._job_options(spec))[0]
        reason = missing_reason(missing_sdk(task, opts.decoder_engine))
        if reason:
            raise BackendUnavailable(reason)
        problems = self.validate(spec)
        if problems:
            raise ValueError("neuron job is not valid: " + "; ".join(problems))
        compiler_version = package_version("neuronx-cc")
        if is_decoder(task):
            return self._compile_decoder(model, spec, opts, workdir, compiler_version)
        input_names, output_names, model_type = self._compile_encoder(model, example_inputs, spec, opts, workdir)
        return {"neuron": neuron_config_section(spec, compiler_version, input_names=input_names,
                                                output_names=output_names, model_type=model_type)}

    def _cpu_backend(self, opts: Options) -> bool:
        return (not neuron_device_present()) if opts.cpu_backend is None else bool(opts.cpu_backend)

    def _compile_encoder(self, model, example_inputs, spec, opts, workdir):
        import torch
        import torch_neuronx

        model.eval()
        input_names = ordered_input_names(model, example_inputs)
        inputs = tuple(example_inputs[n] for n in input_names)
        with torch.no_grad():
            eager = model(**{n: example_inputs[n] for n in input_names})
        output_names = output_names_of(eager)
        wrapper = _TupleWrapper(model, input_names, output_names)
        cpu_backend = self._cpu_backend(opts)
        if not cpu_backend and not neuron_device_present():
            raise BackendUnavailable("cpu_backend is false but no Neuron device (/dev/neuron*) is present; "
                                     "set cpu_backend to null (auto) or true to compile without one")
        traced = torch_neuronx.trace(
            wrapper, inputs,
            compiler_args=compiler_args(spec),
            compiler_workdir=str(workdir / "compiler"),
            inline_weights_to_neff=opts.inline_weights_to_neff,
            cpu_backend=cpu_backend,
        )
        if spec.get("dynamic_batch_size"):
            traced = torch_neuronx.dynamic_batch(traced)
        torch.jit.save(traced, str(workdir / MODEL_FILE))
        return input_names, output_names, getattr(getattr(model, "config", None), "model_type", None)

    def _checkpoint_dir(self, model, tmp: str) -> str:
        """A local HF folder with the model's weights (safetensors) for the decoder exporters."""
        if isinstance(model, (str, os.PathLike)):
            return str(model)
        model.save_pretrained(tmp, safe_serialization=True)
        return tmp

    def _compile_decoder(self, model, spec, opts, workdir: Path, compiler_version: str) -> dict[str, Any]:
        """Compile with the decoder engine; the config section records what `load` needs
        (static shapes, vocab_size, engine) and generation_config.json goes next to it."""
        text_config = _text_config(model)
        if opts.decoder_engine == "transformers-neuronx":
            self._compile_tnx(model, spec, opts, workdir)
            extra = {}
        else:
            extra = self._compile_optimum(model, spec, opts, workdir)
        _save_generation_config(model, workdir)
        section = neuron_config_section(spec, compiler_version, model_type=getattr(text_config, "model_type", None),
                                        vocab_size=int(text_config.vocab_size),
                                        input_names=DECODER_INPUT_NAMES, output_names=DECODER_OUTPUT_NAMES)
        return {"neuron": section, **extra}

    def _compile_optimum(self, model, spec, opts, workdir) -> dict[str, Any]:
        """optimum-neuron NxD export. On-device sampling is turned off (the forward step must
        return logits), and chunked prefill too where the release has it (one context-encoding
        graph for the whole prompt). Returns the config.json keys optimum wrote that the
        worker's config.json must keep (the weight dtype)."""
        import torch
        from optimum.neuron import NeuronModelForCausalLM
        from transformers import AutoConfig

        if not hasattr(NeuronModelForCausalLM, "get_neuron_config"):
            raise BackendUnavailable(
                f"optimum-neuron {package_version('optimum-neuron')} has no NeuronModelForCausalLM.get_neuron_config "
                "(the NxD backend this pipeline drives); install a current release")
        cast = keys.canonical_cast_type(spec["cast_type"])
        dtype = getattr(torch, TORCH_DTYPE_NAME[cast])
        shapes = spec["shapes"]
        # The checkpoint goes under the build folder (the cache's own temp dir), never the system
        # /tmp: a multi-GB model on a small /tmp is a full disk, and a crash leaves it to gc.
        with tempfile.TemporaryDirectory(prefix=".neuron-ckpt-", dir=workdir) as tmp:
            path = self._checkpoint_dir(model, tmp)
            config = AutoConfig.from_pretrained(path)
            config = config.get_text_config() if hasattr(config, "get_text_config") else config
            # optimum-neuron takes the weight dtype from the config (NxD casts the weights).
            config.dtype = dtype
            config.torch_dtype = dtype
            kwargs = {}
            if "prefill_chunk_size" in inspect.signature(NeuronModelForCausalLM.get_neuron_config).parameters:
                kwargs["prefill_chunk_size"] = 0
            neuron_config = NeuronModelForCausalLM.get_neuron_config(
                path, config=config, instance_type=spec_generation(spec, opts),
                batch_size=shapes["batch_size"], sequence_length=shapes["sequence_length"],
                tensor_parallel_size=opts.num_cores, **kwargs)
            # Model classes turn on-device sampling on by default (Llama: on_device_sampling=True),
            # which makes the forward step return tokens instead of logits.
            neuron_config.on_device_sampling = False
            compiled = NeuronModelForCausalLM.export(path, neuron_config, config=config, load_weights=False)
            compiled.save_pretrained(str(workdir))
        saved = json.loads((workdir / "config.json").read_text()) if (workdir / "config.json").is_file() else {}
        return {k: saved[k] for k in ("torch_dtype", "dtype") if k in saved}

    def _compile_tnx(self, model, spec, opts, workdir) -> None:
        from transformers_neuronx import NeuronAutoModelForCausalLM

        cast = keys.canonical_cast_type(spec["cast_type"])
        ckpt = workdir / "checkpoint"
        if isinstance(model, (str, os.PathLike)):
            shutil.copytree(model, ckpt, dirs_exist_ok=True)
        else:
            model.save_pretrained(str(ckpt), safe_serialization=True)
        m = NeuronAutoModelForCausalLM.from_pretrained(
            str(ckpt), batch_size=spec["shapes"]["batch_size"], n_positions=spec["shapes"]["sequence_length"],
            tp_degree=opts.num_cores, amp=TNX_AMP[cast])
        m.to_neuron()
        m.save(str(workdir / "neuron"))

    # -- load

    def load(self, folder: Path, compile_config: dict[str, Any]) -> Callable[..., Any]:
        """An EncoderRunner, or for text-generation a DecoderRuntime (`decoder.decoder_runtime`)."""
        folder = Path(folder)
        section = compile_config.get("neuron", compile_config)
        if not neuron_device_present():
            raise BackendUnavailable(
                "no Neuron device here (/dev/neuron* absent): a Neuron artifact compiles anywhere "
                "(cpu_backend) but runs only on inf2/trn1/trn2; verify it on such an instance")
        num_cores = int(section.get("num_cores") or 1)
        if section.get("task") in DECODER_TASKS:
            return self._load_decoder(folder, section)
        reason = missing_reason(missing_sdk("feature-extraction"))
        if reason:
            raise BackendUnavailable(reason)
        if "NEURON_RT_VISIBLE_CORES" not in os.environ and "NEURON_RT_NUM_CORES" not in os.environ:
            os.environ.update(runtime_env(num_cores))
        import torch
        import torch_neuronx

        module = torch.jit.load(str(folder / section.get("model_file", MODEL_FILE)))
        if not section.get("inline_weights_to_neff", True):
            torch_neuronx.move_trace_to_device(module, 0)
        return EncoderRunner(module, section["input_names"], section["output_names"])

    def _load_decoder(self, folder: Path, section: dict[str, Any]) -> Any:
        tnx = section.get("engine") == decoder_engine_name("transformers-neuronx")
        reason = missing_reason(missing_sdk("text-generation", "transformers-neuronx" if tnx else "nxdi"))
        if reason:
            raise BackendUnavailable(reason)
        if tnx:
            from transformers_neuronx import NeuronAutoModelForCausalLM

            amp = TNX_AMP.get(section.get("float_dtype"), "f32")
            m = NeuronAutoModelForCausalLM.from_pretrained(
                str(folder / "checkpoint"), batch_size=section["static_batch_size"],
                n_positions=section["static_sequence_length"], tp_degree=section.get("tensor_parallel_size", 1),
                amp=amp)
            m.load(str(folder / "neuron"))
            m.to_neuron()
            return decoder_runtime(m, section, folder)
        from optimum.neuron import NeuronModelForCausalLM

        return decoder_runtime(NeuronModelForCausalLM.from_pretrained(str(folder)), section, folder)


def _text_config(model: Any) -> Any:
    """The text config of a model object or of a local checkpoint folder."""
    if isinstance(model, (str, os.PathLike)):
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(str(model))
    else:
        config = model.config
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def _save_generation_config(model: Any, workdir: Path) -> None:
    """generation_config.json next to the artifact: the defaults generate() starts from."""
    if isinstance(model, (str, os.PathLike)):
        source = Path(model) / GENERATION_CONFIG_FILE
        if source.is_file():
            shutil.copyfile(source, workdir / GENERATION_CONFIG_FILE)
        return
    generation_config = getattr(model, "generation_config", None)
    if generation_config is not None:
        generation_config.save_pretrained(str(workdir))


# ---------------------------------------------------------------- helpers used by compile/load

def ordered_input_names(model: Any, example_inputs: dict[str, Any]) -> list[str]:
    """Input names in the model's forward() order (then any others, sorted): the positional
    order the traced graph takes, fixed at compile time and stored in config.json."""
    try:
        params = list(inspect.signature(model.forward).parameters)
    except (TypeError, ValueError, AttributeError):
        params = []
    names = [p for p in params if p in example_inputs]
    return names + sorted(n for n in example_inputs if n not in names)


def output_names_of(outputs: Any) -> list[str]:
    """Names of the tensor outputs of an eager call (ModelOutput keys, or output_<i>)."""
    if hasattr(outputs, "keys") and hasattr(outputs, "__getitem__"):
        return [k for k in outputs.keys() if is_tensor(outputs[k])]
    if isinstance(outputs, (tuple, list)):
        return [f"output_{i}" for i, v in enumerate(outputs) if is_tensor(v)]
    return ["output_0"]


def is_tensor(x: Any) -> bool:
    return type(x).__name__ in ("Tensor", "Parameter") or (hasattr(x, "dtype") and hasattr(x, "shape"))


def _tuple_wrapper_class():
    import torch

    class TupleWrapper(torch.nn.Module):
        """Positional tensors in, a tuple of named outputs out: what torch.jit tracing wants."""

        def __init__(self, model, input_names, output_names):
            super().__init__()
            self.model = model
            self.input_names = list(input_names)
            self.output_names = list(output_names)

        def forward(self, *args):
            out = self.model(**dict(zip(self.input_names, args)))
            if hasattr(out, "keys"):
                return tuple(out[k] for k in self.output_names)
            if isinstance(out, (tuple, list)):
                tensors = [v for v in out if is_tensor(v)]
                return tuple(tensors)
            return (out,)

    return TupleWrapper


def _TupleWrapper(model, input_names, output_names):
    return _tuple_wrapper_class()(model, input_names, output_names)


class EncoderRunner:
    """A loaded traced encoder: keyword tensors in (stored order), dict of named outputs out."""

    def __init__(self, module: Any, input_names: list[str], output_names: list[str]):
        self.module = module
        self.input_names = list(input_names)
        self.output_names = list(output_names)

    def __call__(self, **inputs: Any) -> dict[str, Any]:
        missing = [n for n in self.input_names if n not in inputs]
        extra = [n for n in inputs if n not in self.input_names]
        if missing or extra:
            raise ValueError(f"compiled inputs are {self.input_names}; missing {missing}, unexpected {extra}")
        out = self.module(*(inputs[n] for n in self.input_names))
        if not isinstance(out, (tuple, list)):
            out = (out,)
        return dict(zip(self.output_names, out))

