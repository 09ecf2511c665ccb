"""Fuzzing the readers of user input with hypothesis: the config validator, the cache's
manifest reader and the artifact reader of `from_pretrained`. Each either accepts the input or
says what is wrong with it in its own error type, never another exception and never a hang.

Every test has a bounded `max_examples` and `deadline`; the file runs in well under a minute.
"""

from __future__ import annotations

import copy
import json
import signal
from contextlib import contextmanager
from pathlib import Path

import pytest
from conftest import REPO, artifact_config
from hydra import compose, initialize_config_dir
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from omegaconf import OmegaConf

from pipeline import modeling
from pipeline.cache import MANIFEST, Cache, check_integrity
from pipeline.validate import ConfigError, validate

pytestmark = pytest.mark.reliability

# Keys of the schema, so random trees land on real fields as well as on unknown ones.
SCHEMA_KEYS = [
    "mode", "matrix", "models", "shapes", "batch_size", "sequence_length", "cast_types", "auto_cast",
    "dynamic_batch_size", "include", "exclude", "model", "id", "task", "revision", "name", "max_positions",
    "backend", "device", "inductor_configs", "num_cores", "target", "executor", "workers", "publish", "cache",
    "dir", "max_size_gb", "verify", "tolerances", "fp32", "bf16", "atol", "min_cosine", "generate_tokens",
    "timeout_s", "shard", "key", "against", "runs", "cast_type", "shared_cache", "trusted_repos",
]
LEAF = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12)
    | st.sampled_from(["fp32", "bf16", "int8", "feature-extraction", "tiny-bert", "1/2", "inductor", "neuron", "run",
                       "validate", "../x", "a/b/c", "org/name", "~nobody/x", "\x00", "x" * 300])
)
KEY = st.sampled_from(SCHEMA_KEYS) | st.text(max_size=8)
TREE = st.recursive(
    LEAF, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(KEY, inner, max_size=4), max_leaves=16
)
SETTINGS = dict(deadline=3000, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@contextmanager
def no_hang(seconds: int = 20):
    """Fail (instead of hanging the suite) when one example runs longer than `seconds`."""

    def boom(*_):
        raise AssertionError(f"hung for more than {seconds} s")

    old = signal.signal(signal.SIGALRM, boom)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def merge(base, patch):
    """`patch` deep-merged into `base` (dicts merge, everything else replaces)."""
    if isinstance(base, dict) and isinstance(patch, dict):
        out = dict(base)
        for k, v in patch.items():
            out[k] = merge(base.get(k), v) if k in base else v
        return out
    return patch


# --------------------------------------------------------------------------- (a) config validator
@pytest.fixture(scope="module")
def base_config(tmp_path_factory) -> dict:
    """A valid composed config (as the CLI gets it) over a local model folder made here."""
    model = tmp_path_factory.mktemp("fuzz-model")
    (model / "config.json").write_text(json.dumps({"model_type": "bert", "max_position_embeddings": 64}))
    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
        cfg = compose(
            config_name="config",
            overrides=[f"matrix.models=[{{id: '{model}', task: feature-extraction}}]",
                       "matrix.shapes=[{batch_size: 1, sequence_length: 16}]"],
        )
    data = OmegaConf.to_container(cfg, resolve=True)
    data.pop("hydra", None)
    validate(copy.deepcopy(data))  # the base itself is valid
    return data


def _check_validate(cfg: dict) -> None:
    with no_hang():
        try:
            validate(cfg)
        except ConfigError as e:
            assert e.errors and all(isinstance(m, str) and m.strip() for m in e.errors), e.errors


@settings(max_examples=250, **SETTINGS)
@given(patch=st.dictionaries(KEY, TREE, max_size=4))
def test_validate_random_trees_merged_at_the_top(base_config, patch):
    _check_validate(merge(copy.deepcopy(base_config), patch))


MATRIX_PATHS = [("matrix",), ("matrix", "models"), ("matrix", "shapes"), ("matrix", "include"), ("matrix", "exclude"),
                ("matrix", "cast_types"), ("backend",), ("verify", "tolerances"), ("model",), ("executor",),
                ("publish",), ("cache",), ("shared_cache",)]


@settings(max_examples=250, **SETTINGS)
@given(where=st.sampled_from(MATRIX_PATHS), value=TREE, mode=st.sampled_from(["replace", "merge", "append"]))
def test_validate_random_trees_at_every_section(base_config, where, value, mode):
    cfg = copy.deepcopy(base_config)
    node = cfg
    for k in where[:-1]:
        node = node[k]
    old = node.get(where[-1])
    if mode == "append" and isinstance(old, list):
        node[where[-1]] = old + [value]
    elif mode == "merge":
        node[where[-1]] = merge(old, value)
    else:
        node[where[-1]] = value
    _check_validate(cfg)


# --------------------------------------------------------------------------- (b) manifest reader
KEY64 = "ab" + "0" * 62
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=12,
)
FILES_ENTRY = st.fixed_dictionaries({}, optional={"sha256": JSON | st.text(max_size=64), "size": JSON}) | JSON
MANIFEST_JSON = (
    st.fixed_dictionaries(
        {},
        optional={
            "files": st.dictionaries(st.sampled_from(["config.json", "model.pt2", "../x", "/etc/hostname", "logs/a"])
                                     | st.text(max_size=8), FILES_ENTRY, max_size=3) | JSON,
            "verification": JSON,
            "spec": JSON,
        },
    )
    | JSON
)


def _entry(root: Path, content: bytes) -> Cache:
    cache = Cache(root)
    entry = cache.entry_dir(KEY64)
    entry.mkdir(parents=True, exist_ok=True)
    (entry / "config.json").write_text("{}")
    (entry / MANIFEST).write_bytes(content)
    return cache


@settings(max_examples=200, **SETTINGS)
@given(content=st.binary(max_size=200))
def test_manifest_reader_on_random_bytes(tmp_path, content):
    """Never raises, whatever the bytes."""
    cache = _entry(tmp_path / "c", content)
    with no_hang():
        cache.manifest(KEY64)
        cache.status(KEY64)


@settings(max_examples=200, **SETTINGS)
@given(doc=MANIFEST_JSON)
def test_manifest_reader_and_integrity_check_on_random_json(tmp_path, doc):
    """A manifest that is JSON but not what we write (a list, a file table of the wrong shape,
    paths outside the entry) is a reason, never an exception."""
    cache = _entry(tmp_path / "c", json.dumps(doc).encode())
    with no_hang():
        m = cache.manifest(KEY64)
        assert m is None or isinstance(m, dict)
        if m is not None:
            problem = check_integrity(cache.entry_dir(KEY64), m)
            assert problem is None or isinstance(problem, str)
        folder, why = cache.lookup(KEY64)
        assert folder is None or why is None


# --------------------------------------------------------------------------- (c) from_pretrained's reader
ARTIFACT = artifact_config(KEY64)
CLEAR = (modeling.ArtifactError, modeling.ArtifactNotFoundError)


def _load_expecting_a_clear_error(folder: Path, **kwargs) -> None:
    with no_hang():
        try:
            modeling.CompiledModelForFeatureExtraction.from_pretrained(str(folder), **kwargs)
        except CLEAR as e:
            assert isinstance(e, (ValueError, FileNotFoundError))
            assert str(folder) in str(e), str(e)  # the file is named
            return
    raise AssertionError("a broken artifact was loaded")


@settings(max_examples=150, **SETTINGS)
@given(content=st.binary(max_size=300))
def test_from_pretrained_random_bytes_config(tmp_path_factory, content):
    folder = tmp_path_factory.mktemp("art")
    (folder / "config.json").write_bytes(content)
    _load_expecting_a_clear_error(folder)


@settings(max_examples=150, **SETTINGS)
@given(doc=JSON)
def test_from_pretrained_random_json_config(tmp_path_factory, doc):
    folder = tmp_path_factory.mktemp("art")
    (folder / "config.json").write_text(json.dumps(doc))
    _load_expecting_a_clear_error(folder, allow_unverified=True)


@settings(max_examples=150, **SETTINGS)
@given(patch=st.dictionaries(st.sampled_from(["compiled", "pipeline", "neuron", "model_type"]), TREE, max_size=2),
       inner=st.dictionaries(st.sampled_from(sorted({*ARTIFACT["compiled"], *ARTIFACT["pipeline"]})), TREE,
                             max_size=3))
def test_from_pretrained_artifact_config_with_random_fields(tmp_path_factory, patch, inner):
    """A plausible artifact whose fields are replaced by random values (model.pt2 is garbage,
    so nothing random can load: every outcome must be a clear error naming a file)."""
    folder = tmp_path_factory.mktemp("art")
    doc = merge(copy.deepcopy(ARTIFACT), patch)
    for section in ("compiled", "pipeline"):
        if isinstance(doc.get(section), dict):
            doc[section].update({k: v for k, v in inner.items() if k in ARTIFACT[section]})
    assume(doc != ARTIFACT)
    (folder / "config.json").write_text(json.dumps(doc))
    (folder / "model.pt2").write_bytes(b"not a zip archive")
    _load_expecting_a_clear_error(folder, allow_unverified=True)


@settings(max_examples=100, **SETTINGS)
@given(doc=MANIFEST_JSON, raw=st.none() | st.binary(max_size=100))
def test_from_pretrained_random_manifest(tmp_path_factory, doc, raw):
    folder = tmp_path_factory.mktemp("art")
    (folder / "config.json").write_text(json.dumps(ARTIFACT))
    (folder / "model.pt2").write_bytes(b"not a zip archive")
    (folder / MANIFEST).write_bytes(raw if raw is not None else json.dumps(doc).encode())
    _load_expecting_a_clear_error(folder, allow_unverified=True)
