"""The neuron backend: flag translation, keys, validation, config.json section, availability,
and the decoder runtimes (DecoderRuntime over the SDK models' forward step).

Everything above the SDK section runs on any machine. The SDK section compiles and runs real
models with torch-neuronx / optimum-neuron; it is skipped where the AWS Neuron SDK is absent
(it is not installable from PyPI) and is meant to run on an inf2/trn1/trn2 host.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import itertools
import json
import subprocess
import sys

import pytest

from pipeline import keys, verify
from pipeline.backends import neuron
from pipeline.backends.base import BackendUnavailable, DecoderRuntime
from pipeline.backends.neuron import NeuronBackend, Options, rules
from pipeline.backends.neuron import decoder as neuron_decoder
from pipeline.generation import StaticShapeError, generate

HAS_SDK = importlib.util.find_spec("torch_neuronx") is not None
needs_sdk = pytest.mark.skipif(
    not HAS_SDK,
    reason="AWS Neuron SDK (torch-neuronx) not installed; install from https://pip.repos.neuron.amazonaws.com")

TINY_BERT = dict(vocab_size=1000, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                 intermediate_size=64, max_position_embeddings=128)
TINY_LLAMA = dict(vocab_size=1000, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, intermediate_size=128, max_position_embeddings=128,
                  tie_word_embeddings=False)


def make_spec(task="feature-extraction", cast_type="fp32", auto_cast="none", batch_size=1,
              sequence_length=128, dynamic_batch_size=False, toolchain_overrides=None, **options):
    backend = NeuronBackend(options)
    toolchain = {**backend.toolchain(), **(toolchain_overrides or {})}
    return {
        "model": {"id": "hf-internal-testing/tiny-random-bert", "revision": "a" * 40},
        "task": task,
        "shapes": {"batch_size": batch_size, "sequence_length": sequence_length},
        "cast_type": cast_type,
        "auto_cast": auto_cast,
        "dynamic_batch_size": dynamic_batch_size,
        "backend": {"name": "neuron", "options": backend.spec_options()},
        "toolchain": toolchain,
        "recipe": keys.RECIPE_VERSION,
    }


# ---------------------------------------------------------------- import weight

def test_import_is_light():
    code = ("import sys; import pipeline.backends.neuron; "
            "heavy = [m for m in ('torch', 'transformers', 'torch_neuronx', 'optimum') if m in sys.modules]; "
            "print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# ---------------------------------------------------------------- options

def test_options_defaults():
    o = Options()
    assert (o.target, o.optlevel, o.num_cores, o.model_type, o.compiler_args, o.inline_weights_to_neff,
            o.cpu_backend, o.decoder_engine) == ("inf2", 2, 1, "transformer", [], True, None, "nxdi")


def test_options_every_field_documented():
    import inspect as _inspect
    src = _inspect.getsource(Options)
    for name in rules.OPTION_FIELDS:
        line = next(line for line in src.splitlines() if line.strip().startswith(f"{name}:"))
        assert "#" in line, f"{name} has no one-line doc"


@pytest.mark.parametrize("options,expected", [
    ({"target": "inf1"}, "backend.target: 'inf1' (Inferentia 1) is out of scope: it needs the older torch-neuron / "
                         "neuron-cc stack (end of support); this backend compiles with neuronx-cc for "
                         "inf2, trn1, trn1n, trn2"),
    ({"target": "inf3"}, "backend.target: 'inf3' is not a Neuron target; use one of inf2, trn1, trn1n, trn2"),
    ({"optlevel": 4}, "backend.optlevel: 4 is not a neuronx-cc optlevel; use 1, 2 or 3"),
    ({"model_type": "encoder"}, "backend.model_type: 'encoder' is not a neuronx-cc --model-type; "
                                "use one of generic, transformer, unet-inference"),
    ({"compiler_args": "--verbose info"},
     "backend.compiler_args: must be a list of strings (one neuronx-cc flag or value per item)"),
    ({"decoder_engine": "vllm"},
     "backend.decoder_engine: 'vllm' is not a decoder engine; use one of nxdi, transformers-neuronx"),
    ({"num_cores": 0}, "backend.num_cores: 0 must be an integer >= 1"),
    ({"num_cores": 25, "target": "inf2"},
     "backend.num_cores: 25 NeuronCores is more than the largest inf2 instance has (24)"),
    ({"num_cores": 33, "target": "trn1"},
     "backend.num_cores: 33 NeuronCores is more than the largest trn1 instance has (32)"),
    ({"num_cores": 65, "target": "trn2"},
     "backend.num_cores: 65 NeuronCores is more than the largest trn2 instance has (64)"),
    ({"cores": 2}, "backend.cores: unknown neuron option"),
])
def test_option_errors(options, expected):
    errors = NeuronBackend({}).validate({**make_spec(), "backend": {"name": "neuron", "options": options}})
    assert any(e.startswith(expected) for e in errors), errors


def test_num_cores_limits_per_target_are_valid():
    for target, n in [("inf2", 24), ("trn1", 32), ("trn1n", 32), ("trn2", 64)]:
        options = {"target": target, "num_cores": n}
        assert NeuronBackend({}).validate(
            {**make_spec(target=target), "backend": {"name": "neuron", "options": options}}) == []
    # trn2 with LNC=1 exposes twice the (smaller) cores
    opts = {"target": "trn2", "num_cores": 128, "compiler_args": ["--logical-nc-config", "1"]}
    spec = {**make_spec(target="trn2"), "backend": {"name": "neuron", "options": opts}}
    assert NeuronBackend({}).validate(spec) == []


# ---------------------------------------------------------------- compiler argument table

# What neuronx-cc must receive for each cast_type x auto_cast (None: invalid job).
CAST_FLAGS = {
    ("fp32", "none"): ["--auto-cast", "none"],
    ("fp32", "matmul"): ["--auto-cast", "none"],
    ("fp32", "all"): ["--auto-cast", "none"],
    ("bf16", "none"): None,
    ("bf16", "matmul"): ["--auto-cast", "matmult", "--auto-cast-type", "bf16"],
    ("bf16", "all"): ["--auto-cast", "all", "--auto-cast-type", "bf16"],
    ("fp16", "none"): None,
    ("fp16", "matmul"): ["--auto-cast", "matmult", "--auto-cast-type", "fp16"],
    ("fp16", "all"): ["--auto-cast", "all", "--auto-cast-type", "fp16"],
    ("int8", "none"): None,
    ("int8", "matmul"): None,
    ("int8", "all"): None,
}
TARGET_FLAG = {"inf2": "trn1", "trn1": "trn1", "trn1n": "trn1", "trn2": "trn2"}
MATRIX = list(itertools.product(("none", "matmul", "all"), ("fp32", "bf16", "fp16", "int8"),
                                ("inf2", "trn1", "trn1n", "trn2"), (1, 2, 3)))


@pytest.mark.parametrize("auto_cast,cast_type,target,optlevel", MATRIX)
def test_compiler_args_table(auto_cast, cast_type, target, optlevel):
    spec = make_spec(cast_type=cast_type, auto_cast=auto_cast, target=target, optlevel=optlevel)
    cast = CAST_FLAGS[(cast_type, auto_cast)]
    if cast is None:
        with pytest.raises(ValueError):
            rules.compiler_args(spec)
        return
    assert rules.compiler_args(spec) == cast + ["--optlevel", str(optlevel), "--target", TARGET_FLAG[target],
                                                 "--model-type", "transformer"]


def test_compiler_args_extra_flags_last_and_model_type():
    spec = make_spec(cast_type="bf16", auto_cast="matmul", model_type="generic",
                     compiler_args=["--auto-cast-type", "fp16", "--verbose", "info"])
    assert rules.compiler_args(spec) == [
        "--auto-cast", "matmult", "--auto-cast-type", "bf16", "--optlevel", "2", "--target", "trn1",
        "--model-type", "generic", "--auto-cast-type", "fp16", "--verbose", "info"]


def test_compiler_args_cast_aliases():
    assert rules.compiler_args(make_spec(cast_type="bfloat16", auto_cast="all"))[:4] == \
        ["--auto-cast", "all", "--auto-cast-type", "bf16"]


def test_compiler_args_without_toolchain_target_uses_option():
    spec = make_spec()
    del spec["toolchain"]["target"]
    spec["backend"]["options"]["target"] = "trn2"
    assert rules.compiler_args(spec)[4:6] == ["--target", "trn2"]


# ---------------------------------------------------------------- keys

def test_key_options_leave_out_family_and_cpu_backend():
    ko = rules.key_options({"target": "trn1n", "cpu_backend": True})
    assert "target" not in ko and "cpu_backend" not in ko
    assert ko == {"optlevel": 2, "num_cores": 1, "model_type": "transformer", "compiler_args": [],
                  "inline_weights_to_neff": True, "decoder_engine": "nxdi"}


def test_keys_same_core_generation_share_a_key():
    k_inf2 = keys.key_of(make_spec(target="inf2"))
    assert k_inf2 == keys.key_of(make_spec(target="trn1")) == keys.key_of(make_spec(target="trn1n"))
    assert keys.key_of(make_spec(target="inf2", cpu_backend=True)) == k_inf2


def test_keys_differ_by_core_generation():
    a, b = make_spec(target="inf2"), make_spec(target="trn2")
    assert keys.key_of(a) != keys.key_of(b)
    assert keys.diff(a, b) == [("toolchain.target", "trn1", "trn2")]


def test_keys_differ_by_compiler_version():
    a = make_spec(toolchain_overrides={"neuronx-cc": "2.21.33363.0+82de4a2c"})
    b = make_spec(toolchain_overrides={"neuronx-cc": "2.22.1.0+1a2b3c4d"})
    assert keys.key_of(a) != keys.key_of(b)
    assert keys.diff(a, b) == [("toolchain.neuronx-cc", "2.21.33363.0+82de4a2c", "2.22.1.0+1a2b3c4d")]
    c = make_spec(toolchain_overrides={"optimum-neuron": "0.4.6"})
    assert keys.key_of(c) != keys.key_of(make_spec(toolchain_overrides={"optimum-neuron": "0.4.5"}))


def test_keys_differ_by_compile_options():
    base = keys.key_of(make_spec())
    for opts in ({"optlevel": 3}, {"num_cores": 2}, {"model_type": "generic"},
                 {"compiler_args": ["--verbose", "info"]}, {"inline_weights_to_neff": False}):
        assert keys.key_of(make_spec(**opts)) != base, opts


def test_toolchain_fields():
    tc = NeuronBackend({"target": "trn1n"}).toolchain()
    assert set(tc) == {"neuronx-cc", "torch-neuronx", "neuronx-distributed", "neuronx-distributed-inference",
                       "optimum-neuron", "target"}
    assert tc["target"] == "trn1"
    assert NeuronBackend({"target": "trn2"}).toolchain()["target"] == "trn2"
    if not HAS_SDK:
        assert tc["torch-neuronx"] == "absent" and tc["neuronx-cc"] == "absent"
    assert "transformers-neuronx" in NeuronBackend({"decoder_engine": "transformers-neuronx"}).toolchain()


# ---------------------------------------------------------------- validation

def _errors(**kw):
    """Validate a spec planned and checked with the same backend options."""
    model_config = kw.pop("model_config", None)
    spec = make_spec(**kw)
    if model_config is not None:
        spec["model"]["config"] = model_config
    options = {k: v for k, v in kw.items() if k in rules.OPTION_FIELDS}
    return NeuronBackend(options).validate(spec)


def test_valid_jobs_have_no_errors():
    assert _errors() == []
    assert _errors(cast_type="bf16", auto_cast="matmul", dynamic_batch_size=True) == []
    assert _errors(task="text-generation", cast_type="bf16", auto_cast="matmul", num_cores=2) == []
    assert _errors(cast_type="fp16", auto_cast="all", model_config={"model_type": "bert", **TINY_BERT}) == []


def test_int8_rejected_with_alternative():
    errors = _errors(cast_type="int8", auto_cast="matmul")
    assert errors == [
        "cast_type: int8 is not supported by the neuron backend: neuronx-cc auto-casts to bf16/fp16 "
        "(fp8 is a trn2-only compiler option we do not offer); use cast_type bf16 or fp16 with auto_cast "
        "matmul or all"]


@pytest.mark.parametrize("cast_type", ["bf16", "fp16"])
def test_auto_cast_none_with_reduced_cast_type(cast_type):
    assert _errors(cast_type=cast_type, auto_cast="none") == [
        f"auto_cast: none with cast_type {cast_type} would compile in fp32 anyway; set auto_cast to matmul "
        "or all, or use cast_type fp32"]


def test_unknown_cast_and_scope():
    assert _errors(cast_type="fp64") == [
        "cast_type: 'fp64' is not supported by the neuron backend (use fp32, bf16 or fp16)"]
    assert _errors(auto_cast="matmult") == ["auto_cast: 'matmult' is not one of none, matmul, all"]


@pytest.mark.parametrize("axis,value", [("batch_size", None), ("sequence_length", "dynamic"),
                                        ("sequence_length", 12.5)])
def test_static_shapes_required(axis, value):
    errors = _errors(**{axis: value})
    assert errors == [f"shapes.{axis}: neuronx-cc compiles static shapes; give an integer "
                      f"(one variant per shape), not {value!r}"]


def test_shapes_positive():
    assert _errors(batch_size=0) == ["shapes.batch_size: must be >= 1, not 0"]


def test_sequence_length_over_model_limit():
    errors = _errors(sequence_length=256, model_config={"model_type": "bert", **TINY_BERT})
    assert errors == ["shapes.sequence_length: 256 exceeds the model's max_position_embeddings (128)"]


def test_decoder_sequence_length_minimum():
    assert _errors(task="text-generation", sequence_length=1) == [
        "shapes.sequence_length: a text-generation variant needs room for the prompt and generated tokens "
        "(KV cache); use >= 2"]


def test_dynamic_batch_rejected_for_decoders_only():
    assert _errors(dynamic_batch_size=True) == []
    assert _errors(task="text-generation", dynamic_batch_size=True) == [
        "dynamic_batch_size: not supported for text-generation on neuron: decoders compile a static batch "
        "(and KV cache); compile one variant per batch size"]


def test_decoder_only_options():
    assert _errors(task="text-generation", compiler_args=["--verbose", "info"]) == [
        "backend.compiler_args: not applied to text-generation (optimum-neuron sets the decoder's neuronx-cc "
        "flags itself); remove them for decoder jobs"]
    assert _errors(task="text-generation", optlevel=3) == [
        "backend.optlevel: not applied to text-generation (the decoder graphs use their own optlevels); "
        "leave it at 2 for decoder jobs"]
    assert _errors(task="text-generation", target="trn2", decoder_engine="transformers-neuronx") == [
        "backend.decoder_engine: transformers-neuronx does not support trn2 (and reached end of support in "
        "Neuron 2.26); use nxdi"]


def test_unsupported_task():
    assert _errors(task="image-classification") == [
        "task: 'image-classification' is not compiled by the neuron backend (supported: feature-extraction, "
        "text-classification, token-classification, question-answering, fill-mask, text-generation)"]


LLAMA_70B = {"model_type": "llama", "vocab_size": 128256, "hidden_size": 8192, "num_hidden_layers": 80,
             "num_attention_heads": 64, "num_key_value_heads": 8, "intermediate_size": 28672,
             "tie_word_embeddings": False, "rope_theta": 500000.0, "max_position_embeddings": 131072}


def test_decoder_weights_must_fit_per_core():
    errors = _errors(task="text-generation", cast_type="bf16", auto_cast="matmul", num_cores=2,
                     sequence_length=4096, model_config=LLAMA_70B)
    assert errors == ["backend.num_cores: about 65.7 GiB of bf16 weights per NeuronCore (70.55B parameters over "
                      "2 cores) exceed the 16 GiB per inf2 NeuronCore; use num_cores >= 9"]
    assert _errors(task="text-generation", cast_type="bf16", auto_cast="matmul", num_cores=24,
                   sequence_length=4096, model_config=LLAMA_70B) == []
    # trn2 logical cores hold 24 GiB: 8 cores are enough there
    assert _errors(task="text-generation", cast_type="bf16", auto_cast="matmul", num_cores=8, target="trn2",
                   sequence_length=4096, model_config=LLAMA_70B) == []


def test_encoder_weights_are_not_sharded():
    big = {"model_type": "bert", "vocab_size": 250000, "hidden_size": 8192, "num_hidden_layers": 48,
           "num_attention_heads": 64, "intermediate_size": 32768, "max_position_embeddings": 512}
    errors = _errors(cast_type="bf16", auto_cast="matmul", num_cores=8, model_config=big)
    assert len(errors) == 1 and errors[0].startswith("model: about ")
    assert "exceed the 16 GiB of one inf2 NeuronCore; an encoder is not sharded" in errors[0]


def test_validate_collects_every_error():
    spec = make_spec(task="text-generation", cast_type="int8", batch_size=0, dynamic_batch_size=True,
                     toolchain_overrides=None)
    spec["backend"]["options"] = {"optlevel": 7, "num_cores": 0}
    fields = [e.split(":", 1)[0] for e in NeuronBackend({}).validate(spec)]
    assert fields == ["backend.optlevel", "backend.num_cores", "cast_type", "shapes.batch_size", "dynamic_batch_size"]


def test_spec_without_target_takes_the_toolchain_generation():
    """A backend rebuilt from a spec's options (no target, defaults filled in) checks a trn2 spec."""
    spec = make_spec(target="trn2", task="text-generation", cast_type="bf16", auto_cast="matmul", num_cores=8,
                     sequence_length=4096)
    spec["model"]["config"] = LLAMA_70B
    rebuilt = NeuronBackend({**dataclasses.asdict(Options()), **spec["backend"]["options"]})
    assert rebuilt.validate(spec) == []  # 24 GiB trn2 cores: 8 suffice (16 GiB inf2 cores would not)


def test_toolchain_generation_must_match_target():
    spec = make_spec(target="inf2")
    spec["backend"]["options"]["target"] = "trn2"
    errors = NeuronBackend({"target": "trn2"}).validate(spec)
    assert errors == ["toolchain.target: the spec was planned for trn1 cores but backend.target is trn2 (trn2); "
                      "plan again with this target"]


# ---------------------------------------------------------------- parameter estimate (against real models)

@pytest.mark.parametrize("family", ["bert", "llama"])
def test_parameter_estimate_close_to_real_count(family):
    import transformers
    if family == "bert":
        kw = dict(vocab_size=1000, hidden_size=256, num_hidden_layers=2, num_attention_heads=4,
                  intermediate_size=1024, max_position_embeddings=128)
        model = transformers.BertModel(transformers.BertConfig(**kw))
        task = "feature-extraction"
    else:
        kw = dict(TINY_LLAMA, hidden_size=256, intermediate_size=688)
        model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**kw))
        task = "text-generation"
    config = json.loads(model.config.to_json_string())
    real = sum(p.numel() for p in model.parameters())
    estimate = rules.estimate_parameters(config, task)
    assert abs(estimate - real) / real < 0.05, (estimate, real)


def test_parameter_estimate_needs_sizes():
    assert rules.estimate_parameters({"model_type": "bert"}) is None


# ---------------------------------------------------------------- config.json "neuron" section

def test_neuron_config_section_encoder():
    spec = make_spec(cast_type="bf16", auto_cast="matmul", batch_size=4, sequence_length=64,
                     dynamic_batch_size=True, target="trn1n", optlevel=3)
    spec["model"]["config"] = {"model_type": "bert"}
    section = rules.neuron_config_section(spec, "2.21.33363.0+82de4a2c",
                                           input_names=["input_ids", "attention_mask"],
                                           output_names=["last_hidden_state", "pooler_output"])
    assert section == {
        "compiler_type": "neuronx-cc", "compiler_version": "2.21.33363.0+82de4a2c",
        "task": "feature-extraction", "instance_type": "trn1",
        "auto_cast": "matmul", "auto_cast_type": "bf16", "optlevel": "3",
        "dynamic_batch_size": True, "inline_weights_to_neff": True,
        "tensor_parallel_size": 1, "num_cores": 1, "int_dtype": "int64", "float_dtype": "fp32",
        "output_attentions": False, "output_hidden_states": False,
        "model_type": "bert", "neuron_model_type": "transformer", "engine": "torch_neuronx.trace",
        "compiler_args": ["--auto-cast", "matmult", "--auto-cast-type", "bf16", "--optlevel", "3",
                          "--target", "trn1", "--model-type", "transformer"],
        "model_file": "model.pt",
        "input_names": ["input_ids", "attention_mask"], "output_names": ["last_hidden_state", "pooler_output"],
        "static_batch_size": 4, "static_sequence_length": 64,
    }
    json.dumps(section)  # config.json must hold it


def test_neuron_config_section_fp32_has_no_auto_cast():
    section = rules.neuron_config_section(make_spec(cast_type="fp32", auto_cast="matmul"), "2.21")
    assert section["auto_cast"] is None and section["auto_cast_type"] is None
    assert section["compiler_args"][:2] == ["--auto-cast", "none"]


def test_neuron_config_section_decoder():
    spec = make_spec(task="text-generation", cast_type="bf16", auto_cast="matmul", num_cores=8,
                     sequence_length=4096, target="trn2")
    section = rules.neuron_config_section(spec, "2.21", model_type="llama")
    assert section["tensor_parallel_size"] == 8
    assert section["float_dtype"] == "bf16"
    assert section["instance_type"] == "trn2"
    assert section["engine"] == "optimum-neuron"
    assert section["compiler_args"] is None and section["model_file"] is None
    assert section["auto_cast"] is None  # decoders cast the weights (torch_dtype), not the compute
    assert section["static_sequence_length"] == 4096


# ---------------------------------------------------------------- availability and runtime plumbing

@pytest.mark.skipif(HAS_SDK, reason="the Neuron SDK is installed here")
def test_available_reason_here():
    reason = NeuronBackend({}).available()
    assert reason.startswith("AWS Neuron SDK missing: torch-neuronx (module torch_neuronx); neuronx-cc")
    assert "optimum-neuron (module optimum.neuron, for text-generation)" in reason
    assert "https://pip.repos.neuron.amazonaws.com" in reason and "not PyPI" in reason
    assert "\n" not in reason
    enc = NeuronBackend({}).available("feature-extraction")
    assert "optimum-neuron" not in enc and "torch-neuronx" in enc
    dec = NeuronBackend({"decoder_engine": "transformers-neuronx"}).available("text-generation")
    assert "transformers-neuronx" in dec and "torch-neuronx (module" not in dec


@pytest.mark.skipif(HAS_SDK, reason="the Neuron SDK is installed here")
def test_compile_refuses_without_sdk(tmp_path):
    with pytest.raises(BackendUnavailable, match="pip.repos.neuron.amazonaws.com"):
        NeuronBackend({}).compile(object(), {}, make_spec(), tmp_path)
    assert not (tmp_path / "model.pt").exists()


@pytest.mark.skipif(rules.neuron_device_present(), reason="a Neuron device is present")
def test_load_refuses_without_device(tmp_path):
    with pytest.raises(BackendUnavailable, match="no Neuron device here"):
        NeuronBackend({}).load(tmp_path, {"neuron": {"task": "feature-extraction"}})


def test_runtime_env():
    assert rules.runtime_env(2) == {"NEURON_RT_NUM_CORES": "2"}
    assert rules.runtime_env(2, first_core=4) == {"NEURON_RT_VISIBLE_CORES": "4-5"}
    assert rules.runtime_env(1, first_core=3) == {"NEURON_RT_VISIBLE_CORES": "3"}


def test_input_order_outputs_and_runner_on_cpu_trace():
    """The plumbing around torch_neuronx.trace (input order, tuple wrapper, runner), exercised with
    plain torch.jit.trace on CPU: no Neuron result is produced or claimed here."""
    import torch
    import transformers
    model = transformers.BertModel(transformers.BertConfig(**TINY_BERT)).eval()
    inputs = {"token_type_ids": torch.zeros(2, 16, dtype=torch.long),
              "attention_mask": torch.ones(2, 16, dtype=torch.long),
              "input_ids": torch.randint(0, 1000, (2, 16))}
    names = neuron.ordered_input_names(model, inputs)
    assert names == ["input_ids", "attention_mask", "token_type_ids"]
    with torch.no_grad():
        eager = model(**inputs)
    outputs = neuron.output_names_of(eager)
    assert outputs == ["last_hidden_state", "pooler_output"]
    wrapper = neuron._TupleWrapper(model, names, outputs)
    with torch.no_grad():
        traced = torch.jit.trace(wrapper, tuple(inputs[n] for n in names), strict=False)
    runner = neuron.EncoderRunner(traced, names, outputs)
    with torch.no_grad():
        got = runner(**inputs)
    assert list(got) == outputs
    torch.testing.assert_close(got["last_hidden_state"], eager.last_hidden_state)
    with pytest.raises(ValueError, match=r"missing \['token_type_ids'\]"):
        runner(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])


# ---------------------------------------------------------------- decoder runtimes (no SDK)
#
# The neuron decoder runtimes wrap the SDK model's forward step. Without the SDK, the compiled
# model is replaced by the one unavoidable stand-in (see `NxDStandIn` / `TnxStandIn`): a tiny
# random transformers LlamaForCausalLM behind exactly the forward signature each engine has,
# keeping its own KV cache. Everything above the SDK model is the real code: the runtime,
# pipeline.generation.generate() and pipeline.verify's run_decoder / decoder_metrics / gate,
# the same path the inductor decoder is verified through. No Neuron result is produced here.

# initializer_range 0.2 (not transformers' 0.02): at 0.02 the tiny model's attention is nearly
# uniform and a decode step fed the wrong position still gave the same greedy tokens (tried);
# at 0.2 that mistake fails the greedy tests.
TINY_DECODER = dict(vocab_size=1000, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                    intermediate_size=64, max_position_embeddings=128, initializer_range=0.2)
FP32_TOLERANCE = {"atol": 1e-4, "rtol": 1e-4, "min_argmax_agreement": 1.0, "min_token_agreement": 1.0}


def _tiny_decoder(seed=0):
    import torch
    import transformers
    torch.manual_seed(seed)
    return transformers.LlamaForCausalLM(transformers.LlamaConfig(**TINY_DECODER)).eval()


class NxDStandIn:
    """Stand-in for optimum-neuron's compiled NeuronModelForCausalLM (NxD backend), the one
    thing these tests cannot have without the SDK and a Neuron device.

    It exposes exactly the forward step `NxDDecoderRuntime` is written against
    (optimum/neuron/models/inference/backend/modules/decoder/modeling_decoder.py,
    `NxDModelForCausalLM.forward(input_ids, position_ids, seq_ids=None, attention_mask=None,
    sampling_params=None, output_attentions=None, output_hidden_states=None, return_dict=None)`),
    `neuron_config.on_device_sampling` and `reset()`, and behaves like it where the runtime
    depends on it: a KV cache kept inside (a transformers DynamicCache, started afresh when the
    positions start at 0), logits of the last position only, (batch, 1, vocab), None when
    sampling on the device; `vocab_pad` extra columns imitate a vocabulary padded for tensor
    parallelism. The numbers come from the eager model: nothing here is a Neuron result."""

    def __init__(self, model, on_device_sampling=False, vocab_pad=0):
        import types
        self.model = model
        self.config = model.config
        self.neuron_config = types.SimpleNamespace(on_device_sampling=on_device_sampling)
        self.vocab_pad = vocab_pad
        self.cache = None
        self.calls = []

    def reset(self):
        self.calls.append("reset")

    def __call__(self, input_ids, position_ids, seq_ids=None, attention_mask=None, sampling_params=None,
                 output_attentions=None, output_hidden_states=None, return_dict=None):
        import torch
        import transformers
        from transformers.modeling_outputs import CausalLMOutputWithPast
        assert position_ids.shape == input_ids.shape, (position_ids.shape, input_ids.shape)
        assert attention_mask is None and sampling_params is None  # inferred by the model / host sampling
        assert torch.equal(seq_ids, torch.arange(input_ids.shape[0]))
        self.calls.append((tuple(input_ids.shape), int(position_ids.min())))
        if int(position_ids.min()) == 0:
            self.cache = transformers.DynamicCache(config=self.config)
        with torch.no_grad():
            out = self.model(input_ids=input_ids, position_ids=position_ids, cache=self.cache,
                             use_cache=True)
        logits = out.logits[:, -1:, :].float()
        if self.vocab_pad:
            logits = torch.cat([logits, torch.full((*logits.shape[:2], self.vocab_pad), -1e30)], dim=-1)
        return CausalLMOutputWithPast(logits=None if self.neuron_config.on_device_sampling else logits)


class TnxStandIn:
    """Stand-in for a compiled transformers-neuronx `LlamaForSampling` (legacy engine), for the
    same reason as `NxDStandIn`: exactly its forward step (src/transformers_neuronx/llama/model.py,
    `forward(input_ids, cache_ids=None, start_ids=None)` -> next-token logits (batch, vocab));
    cache_ids None numbers the prompt 0..n-1 itself (a new sequence), else the int32 positions."""

    def __init__(self, model):
        self.model = model
        self.config = model.config
        self.cache = None
        self.calls = []

    def __call__(self, input_ids, cache_ids=None, start_ids=None):
        import torch
        import transformers
        assert start_ids is None
        if cache_ids is None:
            self.cache = transformers.DynamicCache(config=self.config)
            positions = torch.arange(input_ids.shape[1])
        else:
            assert cache_ids.dtype == torch.int32
            positions = cache_ids.long()
        self.calls.append((tuple(input_ids.shape), None if cache_ids is None else cache_ids.tolist()))
        with torch.no_grad():
            out = self.model(input_ids=input_ids, position_ids=positions[None].expand(input_ids.shape[0], -1),
                             cache=self.cache, use_cache=True)
        return out.logits[:, -1, :].float()


STAND_INS = {"optimum-neuron": lambda m: NxDStandIn(m, vocab_pad=24), "transformers-neuronx": TnxStandIn}
ENGINE_OPTION = {"optimum-neuron": "nxdi", "transformers-neuronx": "transformers-neuronx"}


def _runtime(engine, sdk_model, tmp_path, eager, batch_size=1, sequence_length=32):
    """The runtime as `NeuronBackend.load` builds it: from the config section compile writes
    and the artifact folder with the model's generation_config.json."""
    spec = make_spec(task="text-generation", batch_size=batch_size, sequence_length=sequence_length,
                     decoder_engine=ENGINE_OPTION[engine])
    section = rules.neuron_config_section(spec, "2.21", model_type="llama", vocab_size=eager.config.vocab_size,
                                          input_names=neuron.DECODER_INPUT_NAMES,
                                          output_names=neuron.DECODER_OUTPUT_NAMES)
    assert section["engine"] == engine and section["vocab_size"] == 1000
    eager.generation_config.save_pretrained(tmp_path)
    return neuron_decoder.decoder_runtime(sdk_model, json.loads(json.dumps(section)), tmp_path)


@pytest.mark.parametrize("engine", ["optimum-neuron", "transformers-neuronx"])
@pytest.mark.parametrize("batch_size", [1, 2])
def test_decoder_runtime_greedy_equals_eager_and_passes_the_gate(engine, batch_size, tmp_path):
    import torch
    model = _tiny_decoder()
    runtime = _runtime(engine, STAND_INS[engine](model), tmp_path, model, batch_size=batch_size)
    assert isinstance(runtime, DecoderRuntime)
    assert (runtime.batch_size, runtime.sequence_length, runtime.vocab_size) == (batch_size, 32, 1000)
    assert runtime.generation_config.eos_token_id == model.generation_config.eos_token_id

    prompt = torch.randint(3, 1000, (batch_size, 6), generator=torch.Generator().manual_seed(1))
    got = generate(runtime, prompt, max_new_tokens=12, do_sample=False, pad_token_id=0)
    with torch.no_grad():
        ref = model.generate(prompt, attention_mask=torch.ones_like(prompt), do_sample=False, max_new_tokens=12,
                             pad_token_id=0)
    assert torch.equal(got, ref), (got, ref)

    generate_tokens = 10
    inputs, reference = verify.decoder_reference(model, batch_size, 32, generate_tokens, seed=0)
    out = verify.run_decoder(runtime, inputs["input_ids"], generate_tokens)
    assert out["logits"].shape == (batch_size, 1, 1000)  # the last position only: compared to the reference's last
    metrics = verify.decoder_metrics(reference, out, inputs["input_ids"].shape[1], FP32_TOLERANCE)
    assert metrics["generated"]["token_agreement"] == 1.0 and metrics["generated"]["exact"]
    assert metrics["logits"]["argmax_agreement"] == 1.0
    assert verify.gate(metrics, FP32_TOLERANCE) is None, metrics


@pytest.mark.parametrize("engine", ["optimum-neuron", "transformers-neuronx"])
def test_decoder_runtime_gate_fails_on_another_model(engine, tmp_path):
    """The check can fail: the logits of another random model do not pass."""
    model, other = _tiny_decoder(seed=0), _tiny_decoder(seed=1)
    runtime = _runtime(engine, STAND_INS[engine](other), tmp_path, model)
    inputs, reference = verify.decoder_reference(model, 1, 32, 10, seed=0)
    out = verify.run_decoder(runtime, inputs["input_ids"], 10)
    metrics = verify.decoder_metrics(reference, out, inputs["input_ids"].shape[1], FP32_TOLERANCE)
    broken = verify.gate(metrics, FP32_TOLERANCE)
    assert broken is not None and broken.startswith("logits:"), broken


def test_decoder_runtime_calls_the_engines_forward_step(tmp_path):
    """A prefill from 0 then one token per step; the NxD model is reset for each new sequence."""
    import torch
    model = _tiny_decoder()
    nxd, tnx = NxDStandIn(model), TnxStandIn(model)
    prompt = torch.randint(3, 1000, (1, 5), generator=torch.Generator().manual_seed(2))
    generate(_runtime("optimum-neuron", nxd, tmp_path, model), prompt, max_new_tokens=3, pad_token_id=0)
    assert nxd.calls == ["reset", ((1, 5), 0), ((1, 1), 5), ((1, 1), 6)]
    generate(_runtime("transformers-neuronx", tnx, tmp_path, model), prompt, max_new_tokens=3, pad_token_id=0)
    assert tnx.calls == [((1, 5), None), ((1, 1), [5]), ((1, 1), [6])]


def test_decoder_runtime_refuses_on_device_sampling(tmp_path):
    model = _tiny_decoder()
    with pytest.raises(ValueError, match="on_device_sampling is true"):
        _runtime("optimum-neuron", NxDStandIn(model, on_device_sampling=True), tmp_path, model)
    runtime = _runtime("optimum-neuron", NxDStandIn(model), tmp_path, model)
    runtime.model.neuron_config.on_device_sampling = True  # logits None from the forward step
    with pytest.raises(RuntimeError, match="returns token ids, not logits"):
        runtime.forward([[5, 6]], [0, 1])


def test_decoder_runtime_step_checks(tmp_path):
    model = _tiny_decoder()
    runtime = _runtime("optimum-neuron", NxDStandIn(model), tmp_path, model, batch_size=2, sequence_length=8)
    with pytest.raises(StaticShapeError, match=r"shape \(batch_size=2, n\)"):
        runtime.forward([[5, 6]], [0, 1])
    with pytest.raises(StaticShapeError, match="outside the compiled cache 0..7"):
        runtime.forward([[5]] * 2, [8])
    with pytest.raises(ValueError, match="contiguous"):
        runtime.forward([[5, 6]] * 2, [0, 2])
    with pytest.raises(ValueError, match="a prefill from position 0 or one token"):
        runtime.forward([[5, 6]] * 2, [3, 4])
    with pytest.raises(StaticShapeError, match="compiled sequence_length 8"):
        generate(runtime, [[5, 6, 7]] * 2, max_new_tokens=6)


def test_decoder_runtime_from_section_needs_the_shapes(tmp_path):
    model = _tiny_decoder()
    section = {"engine": "optimum-neuron", "static_batch_size": 1, "static_sequence_length": 16}
    runtime = neuron_decoder.decoder_runtime(NxDStandIn(model), section, tmp_path)
    assert runtime.vocab_size == 1000  # older sections: from the model's config
    assert runtime.generation_config is None  # no generation_config.json in the folder
    with pytest.raises(ValueError, match="lacks static_sequence_length"):
        neuron_decoder.decoder_runtime(NxDStandIn(model), {"static_batch_size": 1}, tmp_path)
    with pytest.raises(ValueError, match="not a decoder engine"):
        neuron_decoder.decoder_runtime(NxDStandIn(model), {**section, "engine": "torch_neuronx.trace"}, tmp_path)


# ---------------------------------------------------------------- SDK: real compiles (inf2/trn host)

def _tiny_bert(tmp_path):
    import torch
    import transformers
    torch.manual_seed(0)
    model = transformers.BertModel(transformers.BertConfig(**TINY_BERT)).eval()
    model.save_pretrained(tmp_path / "bert")
    model = transformers.BertModel.from_pretrained(tmp_path / "bert").eval()
    inputs = {"input_ids": torch.randint(0, 1000, (1, 32)), "attention_mask": torch.ones(1, 32, dtype=torch.long),
              "token_type_ids": torch.zeros(1, 32, dtype=torch.long)}
    return model, inputs


@needs_sdk
@pytest.mark.parametrize("cast_type,auto_cast", [("fp32", "none"), ("bf16", "matmul")])
def test_sdk_compile_and_verify_tiny_bert(tmp_path, cast_type, auto_cast):
    import torch
    model, inputs = _tiny_bert(tmp_path)
    with torch.no_grad():
        reference = model(**inputs)
    backend = NeuronBackend({"target": "inf2"})  # cpu_backend auto: True without a device
    spec = make_spec(cast_type=cast_type, auto_cast=auto_cast, batch_size=1, sequence_length=32)
    spec["model"]["config"] = json.loads(model.config.to_json_string())
    assert backend.validate(spec) == []
    section = backend.compile(model, inputs, spec, tmp_path / "out")
    assert (tmp_path / "out" / "model.pt").stat().st_size > 0
    assert section["neuron"]["input_names"] == ["input_ids", "attention_mask", "token_type_ids"]
    assert section["neuron"]["compiler_version"] != "absent"
    if not rules.neuron_device_present():
        pytest.skip("compiled with cpu_backend; running needs a Neuron device (inf2/trn1/trn2)")
    run = backend.load(tmp_path / "out", section)
    with torch.no_grad():
        got = run(**inputs)
    tol = {"rtol": 1e-2, "atol": 1e-3} if cast_type == "fp32" else {"rtol": 1e-1, "atol": 1e-2}
    torch.testing.assert_close(got["last_hidden_state"], reference.last_hidden_state, **tol)
    torch.testing.assert_close(got["pooler_output"], reference.pooler_output, **tol)


@needs_sdk
def test_sdk_dynamic_batch_tiny_bert(tmp_path):
    import torch
    model, inputs = _tiny_bert(tmp_path)
    backend = NeuronBackend({})
    spec = make_spec(batch_size=1, sequence_length=32, dynamic_batch_size=True)
    section = backend.compile(model, inputs, spec, tmp_path / "out")
    if not rules.neuron_device_present():
        pytest.skip("compiled with cpu_backend; running needs a Neuron device (inf2/trn1/trn2)")
    run = backend.load(tmp_path / "out", section)
    batch3 = {k: v.repeat(3, 1) for k, v in inputs.items()}
    with torch.no_grad():
        reference = model(**batch3)
        got = run(**batch3)
    torch.testing.assert_close(got["last_hidden_state"], reference.last_hidden_state, rtol=1e-2, atol=1e-3)


@needs_sdk
@pytest.mark.parametrize("decoder_engine", ["nxdi", "transformers-neuronx"])
def test_sdk_compile_and_verify_tiny_llama(tmp_path, decoder_engine):
    """Compile a tiny Llama with the decoder engine, then verify it as the worker does: the
    runtime from `load`, pipeline.verify.run_decoder, decoder_metrics and the fp32 gate."""
    import transformers
    missing = rules.missing_sdk("text-generation", decoder_engine)
    if missing:
        pytest.skip(f"{missing} not installed; install from https://pip.repos.neuron.amazonaws.com")
    model = _tiny_decoder()
    options = {"num_cores": 2, "decoder_engine": decoder_engine}
    backend = NeuronBackend(options)
    spec = make_spec(task="text-generation", cast_type="fp32", batch_size=1, sequence_length=64, **options)
    spec["model"]["config"] = json.loads(model.config.to_json_string())
    assert backend.validate(spec) == []
    section = backend.compile(model, {}, spec, tmp_path / "out")
    assert section["neuron"]["vocab_size"] == 1000 and section["neuron"]["static_sequence_length"] == 64
    assert (tmp_path / "out" / "generation_config.json").is_file()
    if not rules.neuron_device_present():
        pytest.skip("compiled; running needs a Neuron device (inf2/trn1/trn2)")
    runtime = backend.load(tmp_path / "out", {**json.loads(model.config.to_json_string()), **section})
    assert isinstance(runtime, DecoderRuntime)
    inputs, reference = verify.decoder_reference(model, 1, 64, 16, seed=0)
    got = verify.run_decoder(runtime, inputs["input_ids"], 16)
    tolerance = {"atol": 1e-3, "rtol": 1e-2, "min_argmax_agreement": 1.0, "min_token_agreement": 1.0}
    metrics = verify.decoder_metrics(reference, got, inputs["input_ids"].shape[1], tolerance)
    assert verify.gate(metrics, tolerance) is None, metrics
    assert transformers.GenerationConfig.from_pretrained(tmp_path / "out").eos_token_id == 2
