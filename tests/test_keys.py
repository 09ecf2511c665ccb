"""Key properties: a key changes when anything that decides the compiled bytes changes, and
only then. Specs are built by pipeline.plan.build_spec, as the planner builds them.
"""

from __future__ import annotations

import functools
import hashlib
import json
import random
import re
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from pipeline import keys
from pipeline.backends import get_backend
from pipeline.backends import inductor as inductor_mod
from pipeline.model_entries import ModelInfo
from pipeline.plan import build_spec
from pipeline.tasks import TASKS

SETTINGS = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
HEX40 = st.text(alphabet="0123456789abcdef", min_size=40, max_size=40)
NEURON_FLAGS = ["--enable-fast-loading-neuron-binaries", "--verbose=info", "--enable-saturate-infinity", "-O1"]


@functools.lru_cache(maxsize=None)
def _toolchain(name: str, target: str | None) -> str:
    """backend.toolchain() reads package metadata (~10 ms); once per backend and target."""
    options = {"target": target} if target else {}
    return json.dumps(get_backend(name, options).toolchain())


def hub_model(model_id: str, task: str, sha: str) -> ModelInfo:
    """A Hub model pinned to a commit: its spec needs no network and no files."""
    return ModelInfo(name=model_id.split("/")[-1], id=model_id, task=task, revision=sha, local=False, config=None)


@st.composite
def specs(draw) -> dict:
    name = draw(st.sampled_from(["inductor", "neuron"]))
    if name == "inductor":
        options = {
            "device": draw(st.sampled_from(["cpu", "cuda"])),
            "inductor_configs": {"freezing": draw(st.booleans()), "max_autotune": draw(st.booleans())},
        }
        casts = ["fp32", "bf16", "fp16", "int8"]
        target = None
    else:
        target = draw(st.sampled_from(["inf2", "trn1", "trn2"]))
        options = {
            "target": target,
            "optlevel": draw(st.integers(1, 3)),
            "num_cores": draw(st.integers(1, 8)),
            "compiler_args": draw(st.lists(st.sampled_from(NEURON_FLAGS), max_size=3)),
            "inline_weights_to_neff": draw(st.booleans()),
        }
        casts = ["fp32", "bf16", "fp16"]
    backend = get_backend(name, options)
    model = hub_model(
        draw(st.sampled_from(["google-bert/bert-base-uncased", "openai-community/gpt2", "distilbert-base-uncased"])),
        draw(st.sampled_from(sorted(TASKS))),
        draw(HEX40),
    )
    shapes = {"batch_size": draw(st.integers(1, 64)), "sequence_length": draw(st.integers(1, 8192))}
    return build_spec(
        model,
        model.task,
        shapes,
        draw(st.sampled_from(casts)),
        draw(st.sampled_from(keys.AUTO_CAST_SCOPES)),
        draw(st.booleans()),
        backend,
        toolchain=json.loads(_toolchain(name, target)),
    )


def leaves(obj: Any, prefix: tuple = ()) -> list[tuple]:
    """Paths (tuples: a key may hold a dot) to the non-mapping values of a spec."""
    if isinstance(obj, dict) and obj:
        return [p for k in obj for p in leaves(obj[k], prefix + (k,))]
    return [prefix]


def get_in(obj: dict, path: tuple) -> Any:
    for k in path:
        obj = obj[k]
    return obj


def set_in(obj: dict, path: tuple, value: Any) -> dict:
    """A copy of obj with the value at path replaced."""
    out = json.loads(json.dumps(obj))
    node = out
    for k in path[:-1]:
        node = node[k]
    node[path[-1]] = value
    return out


def changed(value: Any, bump: int) -> Any:
    """A different value of the same kind (bump >= 1)."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + bump
    if isinstance(value, float):
        return value + bump / 2
    if isinstance(value, str):
        return value + "x" * bump
    if isinstance(value, list):
        return value + [f"--flag{bump}"]
    if value is None:
        return f"v{bump}"
    if value == {}:
        return {"k": bump}
    raise AssertionError(f"unexpected leaf {value!r}")


def shuffled(obj: Any, rnd: random.Random) -> Any:
    """The same data with every mapping's insertion order shuffled."""
    if isinstance(obj, dict):
        items = list(obj.items())
        rnd.shuffle(items)
        return {k: shuffled(v, rnd) for k, v in items}
    if isinstance(obj, list):
        return [shuffled(v, rnd) for v in obj]
    return obj


# --------------------------------------------------------------------------- properties


@SETTINGS
@given(specs())
def test_key_is_64_lowercase_hex_and_deterministic(spec):
    key = keys.key_of(spec)
    assert re.fullmatch(r"[0-9a-f]{64}", key)
    assert key == keys.key_of(json.loads(json.dumps(spec)))
    assert key == hashlib.sha256(keys.canonical_json(spec).encode("ascii")).hexdigest()
    assert keys.short(key) == key[: keys.SHORT]


@SETTINGS
@given(specs(), st.data())
def test_any_field_change_changes_the_key(spec, data):
    path = data.draw(st.sampled_from(leaves(spec)), label="path")
    old = get_in(spec, path)
    new = changed(old, data.draw(st.integers(1, 1000), label="bump"))
    mutated = set_in(spec, path, new)
    assert keys.key_of(mutated) != keys.key_of(spec)
    if not isinstance(old, dict):  # a mutated {} grows a child path instead
        assert keys.diff(spec, mutated) == [(".".join(path), old, new)]


@SETTINGS
@given(specs(), st.randoms(use_true_random=False))
def test_dict_insertion_order_does_not_change_the_key(spec, rnd):
    other = shuffled(spec, rnd)
    assert keys.canonical_json(other) == keys.canonical_json(spec)
    assert keys.key_of(other) == keys.key_of(spec)
    assert keys.diff(spec, other) == []


@SETTINGS
@given(specs(), st.data())
def test_diff_lists_exactly_the_changed_paths(spec, data):
    paths = leaves(spec)
    chosen = data.draw(st.lists(st.sampled_from(paths), unique=True, max_size=len(paths)), label="paths")
    mutated, expected = spec, []
    for i, path in enumerate(chosen, 1):
        old = get_in(spec, path)
        if isinstance(old, dict):
            continue
        mutated = set_in(mutated, path, changed(old, i))
        expected.append((".".join(path), old, get_in(mutated, path)))
    assert keys.diff(spec, mutated) == sorted(expected)
    assert (keys.key_of(mutated) == keys.key_of(spec)) == (not expected)
    # reversed arguments: the same paths, the values swapped
    assert keys.diff(mutated, spec) == [(p, b, a) for p, a, b in sorted(expected)]


def test_diff_reports_added_and_removed_fields():
    a = {"shapes": {"batch_size": 1}, "toolchain": {"torch": "2.5"}}
    b = {"shapes": {"batch_size": 1, "sequence_length": 128}, "toolchain": {}}
    assert keys.diff(a, b) == [
        ("shapes.sequence_length", None, 128),
        ("toolchain", None, {}),
        ("toolchain.torch", "2.5", None),
    ]
    assert keys.key_of(a) != keys.key_of(b)


# --------------------------------------------------------------------------- equivalent spellings


SPELLINGS = [
    ("fp32", "float32", "float", "FP32"),
    ("bf16", "bfloat16", "BF16"),
    ("fp16", "float16", "half", "Float16"),
    ("int8", "qint8"),
]


@pytest.mark.parametrize("spellings", SPELLINGS, ids=[s[0] for s in SPELLINGS])
def test_equivalent_cast_type_spellings_share_a_key(spellings):
    backend = get_backend("inductor", {})
    model = hub_model("google-bert/bert-base-uncased", "feature-extraction", "a" * 40)
    toolchain = backend.toolchain()
    specs_ = [
        build_spec(model, model.task, {"batch_size": 1, "sequence_length": 128}, s, "matmul", False, backend, toolchain)
        for s in spellings
    ]
    assert {spec["cast_type"] for spec in specs_} == {spellings[0]}
    assert len({keys.key_of(spec) for spec in specs_}) == 1


def test_distinct_cast_types_have_distinct_keys():
    backend = get_backend("inductor", {})
    model = hub_model("google-bert/bert-base-uncased", "feature-extraction", "a" * 40)
    toolchain = backend.toolchain()
    got = {
        c: keys.key_of(
            build_spec(
                model, model.task, {"batch_size": 1, "sequence_length": 128}, c, "matmul", False, backend, toolchain
            )
        )
        for c in keys.CAST_TYPES
    }
    assert len(set(got.values())) == len(keys.CAST_TYPES)


def test_auto_cast_scope_does_not_matter_for_fp32():
    """fp32 is never auto-cast: every scope spells the same compile."""
    backend = get_backend("inductor", {})
    model = hub_model("google-bert/bert-base-uncased", "feature-extraction", "a" * 40)
    toolchain = backend.toolchain()
    fp32 = {
        keys.key_of(
            build_spec(model, model.task, {"batch_size": 1, "sequence_length": 8}, "fp32", s, False, backend, toolchain)
        )
        for s in keys.AUTO_CAST_SCOPES
    }
    bf16 = {
        keys.key_of(
            build_spec(model, model.task, {"batch_size": 1, "sequence_length": 8}, "bf16", s, False, backend, toolchain)
        )
        for s in keys.AUTO_CAST_SCOPES
    }
    assert len(fp32) == 1 and len(bf16) == len(keys.AUTO_CAST_SCOPES)


def test_neuron_targets_of_one_core_generation_share_a_key():
    """inf2, trn1 and trn1n compile to the same bytes (NeuronCore-v2); trn2 does not."""
    model = hub_model("google-bert/bert-base-uncased", "feature-extraction", "b" * 40)

    def key(target):
        backend = get_backend("neuron", {"target": target})
        return keys.key_of(
            build_spec(model, model.task, {"batch_size": 1, "sequence_length": 128}, "bf16", "matmul", False, backend)
        )

    assert key("inf2") == key("trn1") == key("trn1n") != key("trn2")


# --------------------------------------------------------------------------- toolchain


@pytest.mark.parametrize("package", ["torch", "transformers"])
def test_toolchain_version_change_changes_the_key(monkeypatch, package):
    backend = get_backend("inductor", {})
    model = hub_model("google-bert/bert-base-uncased", "feature-extraction", "c" * 40)
    args = (model, model.task, {"batch_size": 1, "sequence_length": 128}, "fp32", "matmul", False, backend)
    before = build_spec(*args)
    real = inductor_mod.package_version
    monkeypatch.setattr(inductor_mod, "package_version", lambda pkg: "99.0.0" if pkg == package else real(pkg))
    after = build_spec(*args)
    assert keys.key_of(after) != keys.key_of(before)
    assert keys.diff(before, after) == [(f"toolchain.{package}", before["toolchain"][package], "99.0.0")]


def test_compiler_and_platform_changes_change_the_key(monkeypatch):
    backend = get_backend("inductor", {})
    model = hub_model("google-bert/bert-base-uncased", "feature-extraction", "c" * 40)
    args = (model, model.task, {"batch_size": 1, "sequence_length": 128}, "fp32", "matmul", False, backend)
    before = build_spec(*args)
    monkeypatch.setattr(inductor_mod, "cxx_version", lambda: "clang++ 99")
    monkeypatch.setattr(
        inductor_mod,
        "cpu_capability",
        lambda: "AVX2" if before["toolchain"]["platform"]["cpu_capability"] != "AVX2" else "AVX512",
    )
    after = build_spec(*args)
    assert [p for p, _, _ in keys.diff(before, after)] == ["toolchain.cxx", "toolchain.platform.cpu_capability"]
    assert keys.key_of(after) != keys.key_of(before)


def test_recipe_version_is_in_the_key(monkeypatch):
    backend = get_backend("inductor", {})
    model = hub_model("google-bert/bert-base-uncased", "feature-extraction", "c" * 40)
    args = (model, model.task, {"batch_size": 1, "sequence_length": 128}, "fp32", "matmul", False, backend)
    before = build_spec(*args)
    monkeypatch.setattr(keys, "RECIPE_VERSION", keys.RECIPE_VERSION + ".1")
    assert keys.diff(before, build_spec(*args)) == [("recipe", before["recipe"], keys.RECIPE_VERSION)]


# --------------------------------------------------------------------------- canonical JSON


def test_canonical_json_is_sorted_compact_ascii():
    assert keys.canonical_json({"b": 1, "a": [0.1, "é"], "c": None}) == '{"a":[0.1,"\\u00e9"],"b":1,"c":null}'
    # a known vector: the canonical form is what is hashed
    assert keys.key_of({"a": 1}) == hashlib.sha256(b'{"a":1}').hexdigest()


def test_canonical_json_rejects_nan():
    with pytest.raises(ValueError):
        keys.key_of({"atol": float("nan")})


# --------------------------------------------------------------------------- graph key vs weights

ARCH_CONFIG = {
    "architectures": ["DistilBertForSequenceClassification"],
    "model_type": "distilbert",
    "dim": 32,
    "n_layers": 2,
    "n_heads": 2,
    "hidden_dim": 64,
    "vocab_size": 1000,
    "max_position_embeddings": 128,
    "activation": "gelu",
    "id2label": {"0": "LABEL_0", "1": "LABEL_1", "2": "LABEL_2"},
    "label2id": {"LABEL_0": 0, "LABEL_1": 1, "LABEL_2": 2},
    "_name_or_path": "org/base",
    "transformers_version": "4.57.0",
}


def weights_only(config: dict, data) -> dict:
    """The config of another fine-tune of the same base: renamed, relabelled, re-dated."""
    out = dict(config)
    out["_name_or_path"] = data.draw(st.text(min_size=1, max_size=20), label="name")
    out["transformers_version"] = data.draw(st.sampled_from(["4.57.0", "4.57.1", "5.0.0"]), label="tv")
    names = data.draw(st.lists(st.text(min_size=1, max_size=8), min_size=3, max_size=3, unique=True), label="labels")
    out["id2label"] = {str(i): n for i, n in enumerate(names)}
    out["label2id"] = {n: i for i, n in enumerate(names)}
    return out


@SETTINGS
@given(specs(), HEX40, st.data())
def test_weights_change_the_full_key_but_not_the_graph_key(spec, sha, data):
    other = set_in(spec, ("model", "revision"), sha)
    other = set_in(other, ("model", "id"), data.draw(st.sampled_from(["org/finetune-a", spec["model"]["id"]])))
    assume(other["model"] != spec["model"])
    config = weights_only(ARCH_CONFIG, data)
    assert keys.key_of(other) != keys.key_of(spec)
    assert keys.graph_key(other, config) == keys.graph_key(spec, ARCH_CONFIG)


@SETTINGS
@given(specs(), st.data())
def test_any_compile_relevant_change_changes_both_keys(spec, data):
    paths = [p for p in leaves(spec) if p[0] != "model"] + [("architecture", k) for k in ARCH_CONFIG]
    path = data.draw(st.sampled_from(paths), label="path")
    assume(path[0] != "architecture" or path[1] not in keys.WEIGHT_ONLY_CONFIG_FIELDS)
    bump = data.draw(st.integers(1, 1000), label="bump")
    if path[0] == "architecture":
        mutated, config = spec, dict(ARCH_CONFIG, **{path[1]: changed(ARCH_CONFIG[path[1]], bump)})
        assert keys.key_of(mutated) == keys.key_of(spec)  # in the full key, the revision names the architecture
    else:
        mutated, config = set_in(spec, path, changed(get_in(spec, path), bump)), ARCH_CONFIG
        assert keys.key_of(mutated) != keys.key_of(spec)
    assert keys.graph_key(mutated, config) != keys.graph_key(spec, ARCH_CONFIG)


def test_a_label_count_change_changes_the_graph_key():
    more = dict(ARCH_CONFIG, id2label={str(i): f"L{i}" for i in range(4)})
    spec = {"task": "text-classification", "model": {"id": "a", "revision": "b"}}
    assert keys.graph_key(spec, more) != keys.graph_key(spec, ARCH_CONFIG)
    assert keys.graph_key(spec, None) is None
