"""The neuron backend's rules: everything that needs no AWS Neuron SDK, so it runs and is
tested on any machine.

Options and their parsing, the target / core-generation / core-count / HBM tables, the key
options, the neuronx-cc flag translation (`auto_cast_flags`, `compiler_args`), the
config.json "neuron" section, the job validation `NeuronBackend.validate` runs, the parameter
estimate behind the weights-per-core check, what of the SDK is missing here and the install
hint.

Nothing here imports torch or the SDK; `pipeline.backends.neuron` (the backend class, the SDK
calls) and `pipeline.backends.neuron.decoder` (the decoder runtimes) build on it.
"""
from __future__ import annotations

import dataclasses
import glob
import importlib.util
import shutil
from dataclasses import dataclass, field
from typing import Any, Optional

from pipeline import keys

NEURON_INDEX_URL = "https://pip.repos.neuron.amazonaws.com"


def install_hint(distributions: list[str]) -> str:
    return (f"install them from AWS's pip index, not PyPI (PyPI only has placeholders): "
            f"pip install --extra-index-url {NEURON_INDEX_URL} {' '.join(distributions)}")


TARGETS = ("inf2", "trn1", "trn1n", "trn2")
# inf2, trn1 and trn1n are all NeuronCore-v2 and compile to the same bytes for `--target trn1`
# (optimum-neuron normalises them the same way); trn2 is NeuronCore-v3.
TARGET_GENERATION = {"inf2": "trn1", "trn1": "trn1", "trn1n": "trn1", "trn2": "trn2"}
# Most NeuronCores one instance of the family offers (inf2.48xlarge: 12 chips x 2 cores;
# trn1(n).32xlarge: 16 x 2; trn2.48xlarge: 16 chips x 4 logical cores at the default LNC=2).
MAX_CORES = {"inf2": 24, "trn1": 32, "trn1n": 32, "trn2": 64}
GIB = 1024 ** 3
# HBM per (logical) NeuronCore: 32 GiB per chip / 2 cores on v2; trn2: 96 GiB per chip,
# 8 physical cores, 2 per logical core at LNC=2 (the default).
HBM_PER_CORE = {"inf2": 16 * GIB, "trn1": 16 * GIB, "trn1n": 16 * GIB, "trn2": 24 * GIB}
OPTLEVELS = (1, 2, 3)
MODEL_TYPES = ("generic", "transformer", "unet-inference")
DECODER_ENGINES = ("nxdi", "transformers-neuronx")
ENCODER_TASKS = ("feature-extraction", "text-classification", "token-classification",
                 "question-answering", "fill-mask")
DECODER_TASKS = ("text-generation",)
# Our auto_cast scope -> the compiler's spelling ("matmult" is the documented value).
AUTO_CAST_FLAG = {"matmul": "matmult", "all": "all"}
BYTES_PER_PARAM = {"fp32": 4, "bf16": 2, "fp16": 2}
TORCH_DTYPE_NAME = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
TNX_AMP = {"fp32": "f32", "bf16": "bf16", "fp16": "f16"}
MODEL_FILE = "model.pt"
# Options that do not change the compiled bytes and stay out of the key: the instance family
# (the core generation goes into the toolchain instead) and where the compiler runs.
NOT_IN_KEY = ("target", "cpu_backend")

SDK_DISTRIBUTIONS = ("neuronx-cc", "torch-neuronx", "neuronx-distributed",
                     "neuronx-distributed-inference", "optimum-neuron")


@dataclass
class Options:
    """The neuron backend's options (configs/backend/neuron.yaml)."""

    target: str = "inf2"  # instance family: inf2 | trn1 | trn1n | trn2 (the key keeps only the core generation)
    optlevel: int = 2  # neuronx-cc --optlevel: 1 (fast compile) | 2 (default) | 3 (most optimised)
    num_cores: int = 1  # NeuronCores: encoders reserve them (NEURON_RT_NUM_CORES); decoders: tensor_parallel_size
    model_type: str = "transformer"  # neuronx-cc --model-type: generic | transformer | unet-inference
    compiler_args: list[str] = field(default_factory=list)  # extra neuronx-cc flags, last (the right-most wins)
    inline_weights_to_neff: bool = True  # weights in the NEFF; False keeps them apart (moved to the device at load)
    cpu_backend: Optional[bool] = None  # compile without a Neuron device; None = auto (True without /dev/neuron*)
    decoder_engine: str = "nxdi"  # nxdi (optimum-neuron NeuronModelForCausalLM) | transformers-neuronx (legacy)


OPTION_FIELDS = tuple(f.name for f in dataclasses.fields(Options))


def parse_options(options: dict[str, Any] | None) -> tuple[Options, list[str]]:
    """Options from a plain dict (defaults filled in), and every problem as "backend.<field>: msg"."""
    data = dict(options or {})
    data.pop("name", None)
    data.pop("_target_", None)
    errors = [f"backend.{k}: unknown neuron option (known: {', '.join(OPTION_FIELDS)})"
              for k in sorted(data) if k not in OPTION_FIELDS]
    opts = Options(**{k: v for k, v in data.items() if k in OPTION_FIELDS})
    if opts.target == "inf1":
        errors.append("backend.target: 'inf1' (Inferentia 1) is out of scope: it needs the older torch-neuron / "
                      "neuron-cc stack (end of support); this backend compiles with neuronx-cc for "
                      f"{', '.join(TARGETS)}")
    elif opts.target not in TARGETS:
        errors.append(f"backend.target: {opts.target!r} is not a Neuron target; use one of {', '.join(TARGETS)}")
    if isinstance(opts.optlevel, bool) or opts.optlevel not in OPTLEVELS:
        errors.append(f"backend.optlevel: {opts.optlevel!r} is not a neuronx-cc optlevel; use 1, 2 or 3")
    if opts.model_type not in MODEL_TYPES:
        errors.append(f"backend.model_type: {opts.model_type!r} is not a neuronx-cc --model-type; "
                      f"use one of {', '.join(MODEL_TYPES)}")
    if not isinstance(opts.compiler_args, (list, tuple)) \
            or not all(isinstance(a, str) for a in opts.compiler_args):
        errors.append("backend.compiler_args: must be a list of strings (one neuronx-cc flag or value per item)")
    if not isinstance(opts.inline_weights_to_neff, bool):
        errors.append("backend.inline_weights_to_neff: must be true or false")
    if opts.cpu_backend is not None and not isinstance(opts.cpu_backend, bool):
        errors.append("backend.cpu_backend: must be true, false or null (auto)")
    if opts.decoder_engine not in DECODER_ENGINES:
        errors.append(f"backend.decoder_engine: {opts.decoder_engine!r} is not a decoder engine; "
                      f"use one of {', '.join(DECODER_ENGINES)}")
    if isinstance(opts.num_cores, bool) or not isinstance(opts.num_cores, int) or opts.num_cores < 1:
        errors.append(f"backend.num_cores: {opts.num_cores!r} must be an integer >= 1")
    elif opts.target in MAX_CORES and opts.num_cores > max_cores(opts):
        errors.append(f"backend.num_cores: {opts.num_cores} NeuronCores is more than the largest "
                      f"{opts.target} instance has ({max_cores(opts)})")
    return opts, errors


def target_generation(target: str) -> str:
    """The NeuronCore generation a target compiles for ("trn1" = NeuronCore-v2, "trn2" = v3)."""
    try:
        return TARGET_GENERATION[target]
    except KeyError:
        raise ValueError(f"unknown Neuron target {target!r}; use one of {', '.join(TARGETS)}") from None


def _logical_nc_config(opts: Options) -> int:
    """trn2's logical NeuronCore size (--logical-nc-config / -lnc / --lnc), 2 by default."""
    lnc = 2
    args = list(opts.compiler_args or [])
    for i, a in enumerate(args):
        value = None
        if a in ("--logical-nc-config", "-lnc", "--lnc") and i + 1 < len(args):
            value = args[i + 1]
        elif a.startswith(("--logical-nc-config=", "--lnc=", "-lnc=")):
            value = a.split("=", 1)[1]
        if value is not None and value.strip() in ("1", "2"):
            lnc = int(value)
    return lnc


def max_cores(opts: Options) -> int:
    if opts.target == "trn2":
        return MAX_CORES["trn2"] * 2 // _logical_nc_config(opts)
    return MAX_CORES[opts.target]


def hbm_per_core(opts: Options) -> int:
    if opts.target == "trn2":
        return HBM_PER_CORE["trn2"] * _logical_nc_config(opts) // 2
    return HBM_PER_CORE[opts.target]


def is_decoder(task: str) -> bool:
    return task in DECODER_TASKS


def key_options(options: dict[str, Any] | Options) -> dict[str, Any]:
    """The backend options as they go into a spec: defaults filled in, the instance family and
    cpu_backend left out (the core generation is in the toolchain), so inf2 and trn1 share keys."""
    opts = options if isinstance(options, Options) else parse_options(options)[0]
    data = dataclasses.asdict(opts)
    data["compiler_args"] = list(data["compiler_args"])
    for k in NOT_IN_KEY:
        data.pop(k, None)
    return data


def options_of_spec(spec: dict[str, Any]) -> Options:
    return parse_options(((spec.get("backend") or {}).get("options")) or {})[0]


def spec_generation(spec: dict[str, Any], opts: Options) -> str:
    """The compile target: the toolchain's core generation (what the key holds), else the option's."""
    gen = (spec.get("toolchain") or {}).get("target")
    if gen is not None:
        if gen not in ("trn1", "trn2"):
            raise ValueError(f"toolchain.target: {gen!r} is not a NeuronCore generation (trn1 or trn2)")
        return gen
    return target_generation(opts.target)


def auto_cast_flags(cast_type: str, auto_cast: str) -> list[str]:
    """neuronx-cc's auto-cast flags for our cast_type x auto_cast. fp32 is never auto-cast."""
    cast = keys.canonical_cast_type(cast_type)
    if cast == "fp32":
        return ["--auto-cast", "none"]
    if cast == "int8":
        raise ValueError(INT8_MESSAGE)
    if cast not in ("bf16", "fp16"):
        raise ValueError(f"cast_type {cast_type!r} is not supported by the neuron backend (fp32, bf16, fp16)")
    if auto_cast == "none":
        raise ValueError(AUTO_CAST_NONE_MESSAGE.format(cast=cast))
    if auto_cast not in AUTO_CAST_FLAG:
        raise ValueError(f"auto_cast {auto_cast!r} is not one of none, matmul, all")
    return ["--auto-cast", AUTO_CAST_FLAG[auto_cast], "--auto-cast-type", cast]


INT8_MESSAGE = ("int8 is not supported by the neuron backend: neuronx-cc auto-casts to bf16/fp16 "
                "(fp8 is a trn2-only compiler option we do not offer); use cast_type bf16 or fp16 "
                "with auto_cast matmul or all")
AUTO_CAST_NONE_MESSAGE = ("none with cast_type {cast} would compile in fp32 anyway; set auto_cast "
                          "to matmul or all, or use cast_type fp32")


def compiler_args(spec: dict[str, Any]) -> list[str]:
    """The exact neuronx-cc argument list for an encoder spec, in a stable order:
    --auto-cast [--auto-cast-type], --optlevel, --target, --model-type, then the extra flags
    (last, so the right-most occurrence of a flag - the user's - wins)."""
    opts = options_of_spec(spec)
    args = auto_cast_flags(spec.get("cast_type", "fp32"), spec.get("auto_cast", "none"))
    args += ["--optlevel", str(opts.optlevel)]
    args += ["--target", spec_generation(spec, opts)]
    args += ["--model-type", opts.model_type]
    args += [str(a) for a in (opts.compiler_args or [])]
    return args


def decoder_engine_name(decoder_engine: str) -> str:
    """The `engine` of a decoder artifact's config section for a `decoder_engine` option."""
    return "optimum-neuron" if decoder_engine == "nxdi" else "transformers-neuronx"


def neuron_config_section(spec: dict[str, Any], compiler_version: str, *,
                          input_names: list[str] | None = None,
                          output_names: list[str] | None = None,
                          model_type: str | None = None,
                          vocab_size: int | None = None) -> dict[str, Any]:
    """The "neuron" section of the artifact's config.json.

    Field names follow optimum-neuron's `store_compilation_config` (so its classes and cache
    tooling can read our artifacts where the file layout allows); our own extras are prefixed
    by nothing but are keys optimum ignores (input/output names, the flag list, the engine).
    Decoders also get `vocab_size`: with `static_batch_size` and `static_sequence_length` it
    is what loading needs to describe the decoder runtime (`DecoderRuntime`)."""
    opts = options_of_spec(spec)
    task = spec.get("task")
    cast = keys.canonical_cast_type(spec.get("cast_type", "fp32")) or spec.get("cast_type")
    scope = spec.get("auto_cast", "none")
    decoder = is_decoder(task)
    shapes = spec.get("shapes") or {}
    cast_applies = cast in ("bf16", "fp16") and scope in AUTO_CAST_FLAG and not decoder
    section: dict[str, Any] = {
        "compiler_type": "neuronx-cc",
        "compiler_version": compiler_version,
        "task": task,
        "instance_type": spec_generation(spec, opts),
        "auto_cast": scope if cast_applies else None,
        "auto_cast_type": cast if cast_applies else None,
        "optlevel": str(opts.optlevel),
        "dynamic_batch_size": bool(spec.get("dynamic_batch_size", False)),
        "inline_weights_to_neff": bool(opts.inline_weights_to_neff) if not decoder else False,
        "tensor_parallel_size": opts.num_cores if decoder else 1,
        "num_cores": opts.num_cores,
        "int_dtype": "int64",
        "float_dtype": cast if decoder else "fp32",
        "output_attentions": False,
        "output_hidden_states": False,
        "model_type": model_type or ((spec.get("model") or {}).get("config") or {}).get("model_type"),
        "neuron_model_type": opts.model_type,
        "engine": decoder_engine_name(opts.decoder_engine) if decoder else "torch_neuronx.trace",
        "compiler_args": None if decoder else compiler_args(spec),
        "model_file": None if decoder else MODEL_FILE,
        "input_names": list(input_names) if input_names is not None else None,
        "output_names": list(output_names) if output_names is not None else None,
    }
    for axis, value in sorted(shapes.items()):
        section[f"static_{axis}"] = value
    if decoder:
        section["vocab_size"] = vocab_size
    return section


# ---------------------------------------------------------------- environment facts

def _has_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):  # a parent package missing, or a broken install
        return False


def neuron_device_present() -> bool:
    """True when the Neuron driver exposes a device here (/dev/neuron0, ...)."""
    return bool(glob.glob("/dev/neuron[0-9]*"))


def runtime_env(num_cores: int, first_core: int | None = None) -> dict[str, str]:
    """Environment for a process that runs a compiled model: a disjoint core range
    (NEURON_RT_VISIBLE_CORES) when `first_core` is given, else a core count."""
    if first_core is None:
        return {"NEURON_RT_NUM_CORES": str(num_cores)}
    last = first_core + num_cores - 1
    return {"NEURON_RT_VISIBLE_CORES": str(first_core) if last == first_core else f"{first_core}-{last}"}


def missing_sdk(task: str | None = None, decoder_engine: str = "nxdi") -> list[str]:
    """The SDK parts missing here for `task` (all tasks when None), as
    "<distribution> (<what to import>...)"; the distribution name is the first word."""
    missing = []
    needs_encoder = task is None or not is_decoder(task)
    needs_decoder = task is None or is_decoder(task)
    if needs_encoder:
        if not _has_module("torch_neuronx"):
            missing.append("torch-neuronx (module torch_neuronx)")
        if not (_has_module("neuronxcc") or shutil.which("neuronx-cc")):
            missing.append("neuronx-cc (module neuronxcc / the neuronx-cc command)")
    if needs_decoder:
        if decoder_engine == "transformers-neuronx":
            if not _has_module("transformers_neuronx"):
                missing.append("transformers-neuronx (module transformers_neuronx, for text-generation)")
        else:
            if not _has_module("optimum.neuron"):
                missing.append("optimum-neuron (module optimum.neuron, for text-generation)")
            if not _has_module("neuronx_distributed"):
                missing.append("neuronx-distributed (module neuronx_distributed, for text-generation)")
        if not needs_encoder and not (_has_module("neuronxcc") or shutil.which("neuronx-cc")):
            missing.append("neuronx-cc (module neuronxcc / the neuronx-cc command)")
    return missing


def missing_reason(missing: list[str]) -> str | None:
    if not missing:
        return None
    dists = list(dict.fromkeys(m.split(" ", 1)[0] for m in missing))
    return f"AWS Neuron SDK missing: {'; '.join(missing)}; {install_hint(dists)}"


# ---------------------------------------------------------------- parameter estimate

GATED_MLP_FAMILIES = {"llama", "mistral", "mixtral", "qwen2", "qwen2_moe", "qwen3", "qwen3_moe", "gemma",
                      "gemma2", "gemma3", "gemma3_text", "phi3", "granite", "smollm3", "olmo", "olmo2"}


def _first(config: dict, *names: str) -> Any:
    for n in names:
        if config.get(n) is not None:
            return config[n]
    return None


def estimate_parameters(config: dict[str, Any], task: str | None = None) -> int | None:
    """Rough parameter count from a config.json dict: embeddings, attention (GQA aware), MLP
    (gated or not, experts), LM head when untied. None when the config lacks the sizes."""
    h = _first(config, "hidden_size", "n_embd", "d_model", "dim")
    n_layers = _first(config, "num_hidden_layers", "n_layer", "num_layers", "n_layers")
    vocab = _first(config, "vocab_size")
    if not all(isinstance(v, int) and v > 0 for v in (h, n_layers, vocab)):
        return None
    heads = _first(config, "num_attention_heads", "n_head", "n_heads") or 1
    kv_heads = _first(config, "num_key_value_heads", "n_kv_heads") or heads
    head_dim = _first(config, "head_dim") or h // heads
    inter = _first(config, "moe_intermediate_size", "intermediate_size", "n_inner", "ffn_dim", "hidden_dim") \
        or 4 * h
    experts = _first(config, "num_local_experts", "num_experts", "n_routed_experts") or 1
    gated = config.get("model_type") in GATED_MLP_FAMILIES or config.get("hidden_act") == "silu"
    attention = 2 * h * heads * head_dim + 2 * h * kv_heads * head_dim
    mlp = experts * (3 if gated else 2) * h * inter
    params = vocab * h + n_layers * (attention + mlp)
    learned_positions = config.get("rope_theta") is None and config.get("rope_scaling") is None
    if learned_positions and config.get("max_position_embeddings"):
        params += config["max_position_embeddings"] * h  # learned position embeddings
    if task is not None and is_decoder(task) and not config.get("tie_word_embeddings", True):
        params += vocab * h
    return params




# ---------------------------------------------------------------- job validation

CAST_TYPES = ("fp32", "bf16", "fp16")
TASKS = ENCODER_TASKS + DECODER_TASKS


def job_options(backend_options: dict[str, Any], job: dict[str, Any]) -> dict[str, Any]:
    """A backend's options overlaid with the job's (a spec's options lack `target`)."""
    backend = job.get("backend") or {}
    own = (backend.get("options") if isinstance(backend, dict) else None) or {}
    merged = {**backend_options, **own}
    # A spec holds the core generation (toolchain.target), not the family: when the job
    # names no target, one of that generation stands in for the backend's default.
    gen = (job.get("toolchain") or {}).get("target")
    if "target" not in own and gen in ("trn1", "trn2"):
        current = merged.get("target", Options.target)
        merged["target"] = current if TARGET_GENERATION.get(current) == gen else gen
    return merged


def validate_job(options: dict[str, Any], job: dict[str, Any]) -> list[str]:
    """Every problem with one job, as "<field>: <message>", given the merged options
    (`job_options`): options, target vs toolchain, task, cast type, static shapes,
    decoder-only restrictions, weights per NeuronCore."""
    opts, errors = parse_options(options)
    errors = list(errors)
    task = job.get("task")
    gen = (job.get("toolchain") or {}).get("target")
    if gen is not None and opts.target in TARGET_GENERATION and gen != TARGET_GENERATION[opts.target]:
        errors.append(f"toolchain.target: the spec was planned for {gen} cores but backend.target is "
                      f"{opts.target} ({TARGET_GENERATION[opts.target]}); plan again with this target")
    if task not in TASKS:
        errors.append(f"task: {task!r} is not compiled by the neuron backend (supported: {', '.join(TASKS)})")
    cast = keys.canonical_cast_type(job.get("cast_type", "fp32"))
    errors += _cast_errors(job, cast)
    errors += _shape_errors(job, is_decoder(task))
    if is_decoder(task):
        errors += _decoder_errors(opts)
    errors += _weight_errors(job, opts, cast, is_decoder(task))
    return errors


def _cast_errors(job: dict[str, Any], cast: str | None) -> list[str]:
    raw_cast = job.get("cast_type", "fp32")
    scope = job.get("auto_cast", "none")
    errors = []
    if cast == "int8":
        errors.append(f"cast_type: {INT8_MESSAGE}")
    elif cast not in CAST_TYPES:
        errors.append(f"cast_type: {raw_cast!r} is not supported by the neuron backend (use fp32, bf16 or fp16)")
    if scope not in keys.AUTO_CAST_SCOPES:
        errors.append(f"auto_cast: {scope!r} is not one of {', '.join(keys.AUTO_CAST_SCOPES)}")
    elif cast in ("bf16", "fp16") and scope == "none":
        errors.append(f"auto_cast: {AUTO_CAST_NONE_MESSAGE.format(cast=cast)}")
    return errors


def _shape_errors(job: dict[str, Any], decoder: bool) -> list[str]:
    shapes = job.get("shapes") or {}
    config = (job.get("model") or {}).get("config") or {}
    errors = []
    for axis in ("batch_size", "sequence_length"):
        value = shapes.get(axis)
        if isinstance(value, bool) or not isinstance(value, int):
            errors.append(f"shapes.{axis}: neuronx-cc compiles static shapes; give an integer "
                          f"(one variant per shape), not {value!r}")
        elif value < 1:
            errors.append(f"shapes.{axis}: must be >= 1, not {value}")
    seq = shapes.get("sequence_length")
    if isinstance(seq, int) and not isinstance(seq, bool) and seq >= 1:
        max_pos = _first(config, "max_position_embeddings", "n_positions", "max_sequence_length")
        if isinstance(max_pos, int) and seq > max_pos:
            errors.append(f"shapes.sequence_length: {seq} exceeds the model's max_position_embeddings ({max_pos})")
        if decoder and seq < 2:
            errors.append("shapes.sequence_length: a text-generation variant needs room for the prompt "
                          "and generated tokens (KV cache); use >= 2")
    if job.get("dynamic_batch_size") and decoder:
        errors.append("dynamic_batch_size: not supported for text-generation on neuron: decoders compile a "
                      "static batch (and KV cache); compile one variant per batch size")
    return errors


def _decoder_errors(opts: Options) -> list[str]:
    """Options that only exist on the encoder path, and engine/target mismatches."""
    errors = []
    if opts.compiler_args:
        errors.append("backend.compiler_args: not applied to text-generation (optimum-neuron sets the "
                      "decoder's neuronx-cc flags itself); remove them for decoder jobs")
    if opts.optlevel in OPTLEVELS and opts.optlevel != Options.optlevel:
        errors.append("backend.optlevel: not applied to text-generation (the decoder graphs use their "
                      "own optlevels); leave it at 2 for decoder jobs")
    if opts.decoder_engine == "transformers-neuronx" and opts.target == "trn2":
        errors.append("backend.decoder_engine: transformers-neuronx does not support trn2 (and reached end "
                      "of support in Neuron 2.26); use nxdi")
    return errors


def _weight_errors(job: dict[str, Any], opts: Options, cast: str | None, decoder: bool) -> list[str]:
    """Weights per NeuronCore against the core's HBM (parameters estimated from config.json)."""
    cores = opts.num_cores
    if cast not in BYTES_PER_PARAM or opts.target not in HBM_PER_CORE or isinstance(cores, bool) \
            or not isinstance(cores, int) or cores < 1:
        return []
    params = estimate_parameters((job.get("model") or {}).get("config") or {}, job.get("task"))
    if params is None:
        return []
    # Encoders keep fp32 weights in the NEFF (auto-cast changes the compute type; inferred, so
    # the estimate is conservative); decoders cast the weights.
    width = BYTES_PER_PARAM[cast] if decoder else 4
    shards = cores if decoder else 1
    per_core = params * width / shards
    limit = hbm_per_core(opts)
    if per_core <= limit:
        return []
    gib = per_core / GIB
    if decoder:
        need = -(-params * width // limit)
        return [f"backend.num_cores: about {gib:.1f} GiB of {cast} weights per NeuronCore "
                f"({params / 1e9:.2f}B parameters over {shards} cores) exceed the "
                f"{limit // GIB} GiB per {opts.target} NeuronCore; use num_cores >= {need}"]
    return [f"model: about {gib:.1f} GiB of weights ({params / 1e9:.2f}B parameters) exceed "
            f"the {limit // GIB} GiB of one {opts.target} NeuronCore; an encoder is not "
            f"sharded (num_cores only reserves cores)"]

