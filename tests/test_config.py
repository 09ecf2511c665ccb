"""Configs, validation, planning and explain — everything that runs before a compile.

Three layers, all without loading a weight or compiling anything:

- every shipped config (configs/sweep/*.yaml, and the root config with `+model=<file>`)
  composes through Hydra's compose API and passes `pipeline.config.validate`, so none can rot;
- a table of malformed configs, each run through the real CLI (`python -m pipeline`) in a
  subprocess: exit code 2, the config path and the message in the output, no traceback;
- the planner (counts, dedup, order, shards, plan.json, cache statuses, no torch import) and
  `mode=explain`, partly in-process and partly through the CLI.

Every CLI run of this module is started at once by the `cli` fixture (each start costs about
a second of Hydra import), and each test waits only for its own runs.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import copy
import functools
import json
import os
import re
import subprocess
import sys
import textwrap

import pytest
from conftest import REPO, cli_env, run_cli
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from pipeline import keys
from pipeline.cache import MANIFEST, Cache
from pipeline.plan import plan, write_plan
from pipeline.validate import ConfigError, validate

SWEEPS = sorted(p.stem for p in (REPO / "configs" / "sweep").glob("*.yaml"))
MODEL_FILES = sorted(p.stem for p in (REPO / "configs" / "model").glob("*.yaml"))
MODEL_EXTRA: dict[str, list[str]] = {}  # extra overrides a model file needs to validate alone
TINY_BERT = "matrix.models=[{id: artifacts/models/tiny-bert, task: feature-extraction}]"


@contextlib.contextmanager
def _repo_offline():
    """Model ids like artifacts/models/tiny-bert are relative to the repo root, and Hub
    models must not be fetched: run in-process checks as the CLI runs (cwd=REPO, offline)."""
    old_cwd, old_env = os.getcwd(), os.environ.get("HF_HUB_OFFLINE")
    os.chdir(REPO)
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        yield
    finally:
        os.chdir(old_cwd)
        if old_env is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = old_env


@functools.lru_cache(maxsize=None)
def _composed(overrides: tuple[str, ...]) -> dict:
    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=list(overrides))
    data = OmegaConf.to_container(cfg, resolve=True)
    data.pop("hydra", None)
    return data


def composed(*overrides: str, **top_level) -> dict:
    """The config the CLI would get for these overrides, as plain data (a fresh copy: a Hydra
    compose costs ~0.4 s, so each distinct one is done once). `top_level` sets plain keys."""
    return {**copy.deepcopy(_composed(overrides)), **top_level}


def plan_of(*overrides: str, **top_level) -> list[dict]:
    with _repo_offline():
        return plan(validate(composed(*overrides, **top_level)))


def output(proc: subprocess.CompletedProcess) -> str:
    return proc.stdout + proc.stderr


def table_rows(text: str) -> list[list[str]]:
    """The body rows of a rich table as lists of stripped cells."""
    return [
        [c.strip() for c in line.strip().strip("│").split("│")] for line in text.splitlines() if line.startswith("│")
    ]


# --------------------------------------------------------------------------- malformed configs
# (id, CLI arguments, fragments that must all appear in the output). `mode=validate` is added
# unless the case names a mode. Each fragment holds the config path and the message.
BAD = [
    ("unknown-top-level-key", ["+modee=plan", TINY_BERT], ["modee: unknown key (did you mean 'mode'?)"]),
    (
        "unknown-matrix-key",
        ["+matrix.cast_type=[fp32]", TINY_BERT],
        ["matrix.cast_type: unknown key (did you mean 'cast_types'?)"],
    ),
    (
        "unknown-model-entry-key",
        ["matrix.models=[{id: artifacts/models/tiny-bert, task: feature-extraction, revison: main}]"],
        ["matrix.models[0].revison: unknown key (did you mean 'revision'?)"],
    ),
    (
        "unknown-inductor-option",
        ["+backend.devce=cpu", TINY_BERT],
        ["backend.devce: unknown key (did you mean 'device'?)"],
    ),
    (
        "unknown-neuron-option",
        ["backend=neuron", "+backend.num_core=2", TINY_BERT],
        ["backend.num_core: unknown key (did you mean 'num_cores'?)"],
    ),
    (
        "wrong-types",
        ["matrix.shapes=[{batch_size: two, sequence_length: 16}]", "timeout_s=abc", "fail_fast=maybe", TINY_BERT],
        [
            "3 problems",
            "matrix.shapes[0].batch_size: expected int, got str 'two'",
            "timeout_s: expected int, got str 'abc'",
            "fail_fast: expected bool, got str 'maybe'",
        ],
    ),
    ("no-models", ["matrix.models=[]"], ["matrix.models: empty"]),
    ("no-cast-types", ["matrix.cast_types=[]", TINY_BERT], ["matrix.cast_types: empty"]),
    ("no-shapes", ["matrix.shapes=[]", TINY_BERT], ["matrix.shapes: empty"]),
    (
        "shape-below-1",
        ["matrix.shapes=[{batch_size: 0, sequence_length: -3}]", TINY_BERT],
        ["matrix.shapes[0].batch_size: must be >= 1, got 0", "matrix.shapes[0].sequence_length: must be >= 1, got -3"],
    ),
    (
        "missing-mandatory-axis",
        ["matrix.shapes=[{batch_size: 1, sequence_length: null}]", TINY_BERT],
        ["matrix.shapes[0].sequence_length: required for task feature-extraction of tiny-bert"],
    ),
    (
        "sequence-above-max-positions",
        [
            "+sweep=smoke",
            "matrix.shapes=[{batch_size: 1, sequence_length: 128}, {batch_size: 1, sequence_length: 4096}]",
        ],
        [
            "matrix.shapes[1].sequence_length: 4096 exceeds max_position_embeddings 128 of tiny-bert",
            # tiny-roberta has 130 positions, 2 of them reserved for the padding offset
            "matrix.shapes[1].sequence_length: 4096 exceeds max_position_embeddings 128 of tiny-roberta",
        ],
    ),
    (
        "unknown-cast-type",
        ["matrix.cast_types=[fp32, fp8]", TINY_BERT],
        ["matrix.cast_types[1]: 'fp8' is not a cast type"],
    ),
    (
        "cast-type-unsupported-by-backend",
        ["backend=neuron", "matrix.cast_types=[int8]", TINY_BERT],
        ["matrix.cast_types[0]: 'int8' is not supported by backend neuron"],
    ),
    (
        "unknown-task",
        ["matrix.models=[{id: artifacts/models/tiny-bert, task: translation}]"],
        ["matrix.models[0].task: 'translation' is not a supported task"],
    ),
    (
        "task-unsupported-with-cast",
        [
            "matrix.models=[tiny-gpt2]",
            "matrix.cast_types=[int8]",
            "matrix.shapes=[{batch_size: 1, sequence_length: 32}]",
        ],
        ["matrix.cast_types[0]: int8 is supported for encoder tasks only on the inductor backend (tiny-gpt2"],
    ),
    (
        "exclude-not-in-matrix",
        ["+sweep=smoke", "matrix.exclude=[{model: tiny-gpt2}, {cast_type: fp16}, {modle: tiny-bert}]"],
        [
            "matrix.exclude[0].model: 'tiny-gpt2' is not in the matrix",
            "matrix.exclude[1].cast_type: 'fp16' is not in the matrix",
            "matrix.exclude[2].modle: unknown key",
        ],
    ),
    (
        "include-not-in-matrix",
        [
            "+sweep=smoke",
            "matrix.include=[{model: nope, batch_size: 4}, {model: tiny-bert, cast_type: fp8, batch_size: 0}]",
        ],
        [
            "matrix.include[0].model: 'nope' is not a model of the matrix",
            "matrix.include[1].cast_type: 'fp8' is not a cast type",
            "matrix.include[1].batch_size: must be an integer >= 1",
        ],
    ),
    (
        "model-id-path-traversal",
        ["matrix.models=[{id: tests/../configs, task: feature-extraction}]"],
        ["matrix.models[0].id: local model folder 'tests/../configs' has no config.json"],
    ),
    (
        "model-id-three-parts",  # a Hub id has at most one '/': a local path that does not exist
        ["matrix.models=[{id: a/b/c, task: feature-extraction}]"],
        ["matrix.models[0].id: local model folder 'a/b/c' does not exist"],
    ),
    (
        "model-id-odd-characters",
        ["matrix.models=[{id: 'bad id!', task: feature-extraction}]"],
        ["matrix.models[0].id: 'bad id!' is not a valid Hub repo id"],
    ),
    (
        "revision-traversal",
        [
            "matrix.models=[{id: google-bert/bert-base-uncased, task: feature-extraction, revision: '../x', "
            "max_positions: 512}]"
        ],
        ["matrix.models[0].revision: '../x' is not a valid revision"],
    ),
    (
        "revision-space",
        [
            "matrix.models=[{id: google-bert/bert-base-uncased, task: feature-extraction, revision: 'a b', "
            "max_positions: 512}]"
        ],
        ["matrix.models[0].revision: 'a b' is not a valid revision"],
    ),
    ("shard-index-above-count", ["shard=3/2", TINY_BERT], ["shard: '3/2': need 1 <= i <= N"]),
    ("shard-index-zero", ["shard=0/2", TINY_BERT], ["shard: '0/2': need 1 <= i <= N"]),
    ("shard-not-a-fraction", ["shard=x", TINY_BERT], ["shard: 'x' is not of the form i/N"]),
    ("bad-mode", ["mode=compile", TINY_BERT], ["mode: 'compile' is not one of run, plan, validate, explain, gc"]),
    ("explain-without-key", ["mode=explain", TINY_BERT], ["mode=explain needs key=<key or prefix>"]),
    ("unknown-backend-group", ["backend=tpu", TINY_BERT], ["Could not find 'backend/tpu'"]),
    (
        "neuron-bf16-without-auto-cast",
        ["backend=neuron", "matrix.cast_types=[bf16]", "matrix.auto_cast=none", TINY_BERT],
        ["matrix.auto_cast: none with cast_type bf16 would compile in fp32 anyway"],
    ),
    (
        "neuron-too-many-cores",
        ["backend=neuron", "backend.num_cores=100", TINY_BERT],
        ["backend.num_cores: 100 NeuronCores is more than the largest inf2 instance has (24)"],
    ),
    ("hydra-override-error", ["foo=1"], ["Could not override 'foo'"]),
    ("unknown-sweep", ["+sweep=nope"], ["Could not find 'sweep/nope'"]),
    (
        "missing-local-model-folder",
        ["matrix.models=[{id: ./artifacts/models/nope, task: feature-extraction}]"],
        ["matrix.models[0].id: local model folder './artifacts/models/nope' does not exist"],
    ),
    (
        "unknown-model-file",
        ["matrix.models=[tiny-bert, nope]"],
        ["matrix.models[1]: no model config named 'nope' in configs/model/"],
    ),
    (
        "several-errors-at-once",
        [
            "mode=compile",
            "shard=x",
            "matrix.cast_types=[fp8]",
            "matrix.shapes=[{batch_size: 0, sequence_length: 16}]",
            "matrix.models=[tiny-bert, nope]",
            "timeout_s=0",
            "+matrix.exlude=[]",
        ],
        [
            "7 problems",
            "matrix.exlude: unknown key (did you mean 'exclude'?)",
            "mode: 'compile' is not one of",
            "shard: 'x' is not of the form i/N",
            "matrix.cast_types[0]: 'fp8' is not a cast type",
            "matrix.shapes[0].batch_size: must be >= 1, got 0",
            "matrix.models[1]: no model config named 'nope'",
            "timeout_s: must be >= 1",
        ],
    ),
]
# More malformed configs, checked in-process through validate() (cheaper than a CLI start).
BAD_IN_PROCESS = [
    ("wrong-type-shape-item", ["matrix.shapes=[5]", TINY_BERT], ["matrix.shapes[0]: expected a mapping, got int 5"]),
    (
        "roberta-position-offset",
        ["matrix.models=[tiny-roberta]", "matrix.shapes=[{batch_size: 1, sequence_length: 129}]"],
        ["matrix.shapes[0].sequence_length: 129 exceeds max_position_embeddings 128 of tiny-roberta"],
    ),
    (
        "decoder-above-max-positions",
        ["matrix.models=[tiny-gpt2]", "matrix.shapes=[{batch_size: 1, sequence_length: 200}]"],
        ["matrix.shapes[0].sequence_length: 200 exceeds max_position_embeddings 128 of tiny-gpt2"],
    ),
    (
        "model-id-inner-traversal",
        ["matrix.models=[{id: org/../../etc, task: feature-extraction}]"],
        ["matrix.models[0].id: local model folder 'org/../../etc' does not exist"],
    ),
    (
        "unknown-backend-name",
        ["backend.name=tpu", TINY_BERT],
        ["backend.name: 'tpu' is not a known backend; known: inductor, neuron"],
    ),
    (
        "duplicate-model-names",
        ["matrix.models=[tiny-bert, {id: artifacts/models/tiny-bert-mlm, task: fill-mask, name: tiny-bert}]"],
        ["matrix.models: two models are named 'tiny-bert'"],
    ),
]
assert len(BAD) >= 25 and len({b[0] for b in BAD + BAD_IN_PROCESS}) == len(BAD) + len(BAD_IN_PROCESS)


def _maybe_quote(prefix: str) -> str:
    """Hydra reads `12e3` as a float: a key prefix of that form has to be quoted."""
    return f"'{prefix}'" if re.fullmatch(r"[0-9]+e[0-9]+", prefix) else prefix


@pytest.fixture(scope="session")
def workspace(tmp_path_factory, tiny_models) -> dict:
    """Report and cache dirs for the CLI runs, prepared in-process from the smoke plan:
    a plan.json for explain, a fake cache hit and a recorded failure for the plan statuses."""
    ws = tmp_path_factory.mktemp("cfg")
    jobs = plan_of("+sweep=smoke")
    assert len(jobs) == 14
    write_plan(jobs, ws / "explain-runs" / "20260101-000000-aaaaaa" / "plan.json")
    status_cache = Cache(ws / "status-cache")
    hit, failed = jobs[0], jobs[5]
    status_cache.entry_dir(hit["key"]).mkdir(parents=True)
    (status_cache.entry_dir(hit["key"]) / MANIFEST).write_text(json.dumps({"spec": hit["spec"]}))
    status_cache.record_failure(failed["key"], {"spec": failed["spec"], "error": "boom"})
    short_keys = [keys.short(j["key"]) for j in jobs]
    # a one-character prefix that at least two keys share: ambiguous
    ambiguous = next(c for c in "0123456789abcdef" if sum(k.startswith(c) for k in short_keys) >= 2)
    return {"dir": ws, "jobs": jobs, "hit": hit["key"], "failed": failed["key"], "ambiguous": ambiguous}


def _cli_calls(ws: dict) -> dict[str, tuple[list[str], dict]]:
    d, jobs = ws["dir"], ws["jobs"]
    explain = [f"cache.dir={d / 'explain-cache'}", f"report.dir={d / 'explain-runs'}", "mode=explain"]
    calls: dict[str, tuple[list[str], dict]] = {}
    for name, args, _ in BAD:
        calls[f"bad:{name}"] = (args if any(a.startswith("mode=") for a in args) else ["mode=validate", *args], {})
    calls.update(
        {
            "validate-prod": (["+sweep=prod", "mode=validate"], {}),
            "help": (["--help"], {}),
            "cfg-job": (["+sweep=smoke", "matrix.cast_types=[fp16]", "--cfg", "job"], {}),
            # the same plan in two processes with different hash seeds: statuses, then order
            "plan-a": (
                ["+sweep=smoke", "mode=plan", f"cache.dir={d / 'status-cache'}", f"report.dir={d / 'runs-a'}"],
                {"PYTHONHASHSEED": "1"},
            ),
            "plan-b": (
                ["+sweep=smoke", "mode=plan", f"cache.dir={d / 'cache-b'}", f"report.dir={d / 'runs-b'}"],
                {"PYTHONHASHSEED": "2"},
            ),
            "explain-one": ([*explain, f"key={_maybe_quote(keys.short(jobs[0]['key']))}"], {}),
            "explain-against": (
                [*explain, f"key={_maybe_quote(keys.short(jobs[0]['key']))}", f"against={jobs[3]['key']}"],
                {},
            ),
            "explain-unknown": ([*explain, "key=nothex"], {}),
            "explain-ambiguous": ([*explain, f"key={ws['ambiguous']}"], {}),
            "explain-float-key": ([*explain, "key=12e3"], {}),
        }
    )
    return calls


@pytest.fixture(scope="session")
def cli(workspace):
    """name -> Future[CompletedProcess] for every CLI run of this module, all started at once."""
    calls = _cli_calls(workspace)
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=max(3, (os.cpu_count() or 2) + 1))
    futures = {
        name: pool.submit(run_cli, *args, env=cli_env(**extra), timeout=300) for name, (args, extra) in calls.items()
    }
    yield futures
    pool.shutdown(wait=True)


def result(cli, name: str) -> subprocess.CompletedProcess:
    proc = cli[name].result()
    assert "Traceback" not in output(proc), f"{name}: traceback in output:\n{output(proc)}"
    return proc


# --------------------------------------------------------------------------- shipped configs


@pytest.mark.parametrize("sweep", SWEEPS)
def test_every_sweep_composes_and_validates(sweep, tiny_models):
    with _repo_offline():
        resolved = validate(composed(f"+sweep={sweep}"))
    assert resolved.models


@pytest.mark.parametrize("model", MODEL_FILES)
def test_root_config_with_each_model_file_validates(model, tiny_models):
    with _repo_offline():
        resolved = validate(composed(f"+model={model}", *MODEL_EXTRA.get(model, [])))
    declared = OmegaConf.load(REPO / "configs" / "model" / f"{model}.yaml")
    assert [(m.id, m.task) for m in resolved.models] == [(declared.id, declared.task)]


def test_decoder_sequence_above_max_positions_is_rejected(tiny_models):
    with _repo_offline(), pytest.raises(ConfigError) as e:
        validate(composed("+model=tiny-gpt2", "matrix.shapes=[{batch_size:1,sequence_length:129}]"))
    assert e.value.errors == ["matrix.shapes[0].sequence_length: 129 exceeds max_position_embeddings 128 of tiny-gpt2"]


def test_validate_prod_through_the_cli(cli):
    proc = result(cli, "validate-prod")
    assert proc.returncode == 0, output(proc)
    assert "config OK: 5 models" in proc.stdout


@pytest.mark.parametrize("seq, ok", [(128, True), (129, False)])
def test_max_positions_boundary(seq, ok, tiny_models):
    """The largest sequence that fits is accepted: tiny-bert 128; tiny-roberta 130 - offset 2."""
    for model in ("tiny-bert", "tiny-roberta"):
        cfg = composed(TINY_BERT)
        cfg["matrix"].update(models=[model], shapes=[{"batch_size": 1, "sequence_length": seq}])
        with _repo_offline():
            if ok:
                validate(cfg)
            else:
                with pytest.raises(ConfigError, match=f"{seq} exceeds max_position_embeddings 128 of {model}"):
                    validate(cfg)


# --------------------------------------------------------------------------- malformed configs


@pytest.mark.parametrize("name, args, fragments", BAD, ids=[b[0] for b in BAD])
def test_malformed_config_exits_2_with_its_path(cli, name, args, fragments):
    proc = result(cli, f"bad:{name}")
    text = output(proc)
    assert proc.returncode == 2, f"exit {proc.returncode}:\n{text}"
    for fragment in fragments:
        assert fragment in text, f"{fragment!r} not in:\n{text}"
    assert "config OK" not in text


@pytest.mark.parametrize("name, args, fragments", BAD_IN_PROCESS, ids=[b[0] for b in BAD_IN_PROCESS])
def test_malformed_config_in_process(name, args, fragments, tiny_models):
    cfg = composed(*args)
    with _repo_offline(), pytest.raises(ConfigError) as e:
        validate(cfg)
    for fragment in fragments:
        assert any(fragment in line for line in e.value.errors), f"{fragment!r} not in {e.value.errors}"


def test_type_errors_do_not_hide_other_problems(tiny_models):
    cfg = composed(TINY_BERT, "timeout_s=abc", "mode=compile")
    with _repo_offline(), pytest.raises(ConfigError) as e:
        validate(cfg)
    assert "timeout_s: expected int, got str 'abc'" in e.value.errors
    assert any(line.startswith("mode: 'compile'") for line in e.value.errors)


# --------------------------------------------------------------------------- CLI basics


def test_help_lists_the_config_groups(cli):
    proc = result(cli, "help")
    assert proc.returncode == 0, output(proc)
    section = proc.stdout.split("== Configuration groups ==")[1].split("== Config ==")[0]
    groups = dict(line.split(": ", 1) for line in section.splitlines() if ": " in line and not line.startswith(" "))
    assert {"backend", "model", "sweep", "executor", "publish"} <= set(groups)
    assert {"inductor", "neuron"} <= set(groups["backend"].split(", "))
    assert set(SWEEPS) <= set(groups["sweep"].split(", "))
    assert set(MODEL_FILES) <= set(groups["model"].split(", "))


def test_cfg_job_prints_the_composed_matrix(cli):
    proc = result(cli, "cfg-job")
    assert proc.returncode == 0, output(proc)
    job = OmegaConf.to_container(OmegaConf.create(proc.stdout))
    assert job["matrix"]["models"] == ["tiny-bert", "tiny-distilbert", "tiny-roberta", "tiny-llama"]
    assert job["matrix"]["cast_types"] == ["fp16"]  # the override applies
    assert job["backend"]["name"] == "inductor"


# --------------------------------------------------------------------------- planning


# The smoke sweep's encoders alone (3 models x 2 shapes x 2 casts = 12 jobs): its tiny decoder
# comes through an exclude + include pair that the counting tests below would have to undo.
ENCODER_SMOKE = {"models": ["tiny-bert", "tiny-distilbert", "tiny-roberta"], "exclude": [], "include": []}


def smoke_plan(**matrix) -> list[dict]:
    """The smoke sweep's encoder plan with some matrix fields replaced (plain data)."""
    cfg = composed("+sweep=smoke")
    cfg["matrix"].update(ENCODER_SMOKE)
    cfg["matrix"].update(matrix)
    with _repo_offline():
        return plan(validate(cfg))


def test_plan_counts_product_include_exclude(tiny_models):
    assert len(smoke_plan()) == 3 * 2 * 2
    excluded = smoke_plan(exclude=[{"model": "tiny-roberta", "cast_type": "bf16"}, {"task": "text-classification"}])
    assert len(excluded) == 12 - 2 - 4
    assert not any(j["model"]["name"] == "tiny-roberta" and j["cast_type"] == "bf16" for j in excluded)
    assert not any(j["task"] == "text-classification" for j in excluded)
    # an exclude matches a model by id as well as by name, and a cast type by any spelling
    assert len(smoke_plan(exclude=[{"model": "artifacts/models/tiny-bert", "cast_type": "bfloat16"}])) == 12 - 2
    # an include with every axis adds one job per given cast type; with some axes, one per
    # matrix shape (the given axes replaced) and cast type
    full = smoke_plan(include=[{"model": "tiny-bert", "batch_size": 4, "sequence_length": 64, "cast_type": "fp32"}])
    assert (
        len(full) == 13
        and full[-1]["shapes"] == {"batch_size": 4, "sequence_length": 64}
        and full[-1]["cast_type"] == "fp32"
    )
    partial = smoke_plan(include=[{"model": "tiny-bert", "batch_size": 4}])
    assert len(partial) == 12 + 2 * 2
    assert {(j["shapes"]["sequence_length"], j["cast_type"]) for j in partial[12:]} == {
        (16, "fp32"),
        (16, "bf16"),
        (32, "fp32"),
        (32, "bf16"),
    }
    # include and exclude together: excludes apply to the product, an include is explicit
    both = smoke_plan(
        exclude=[{"model": "tiny-bert"}],
        include=[{"model": "tiny-bert", "batch_size": 1, "sequence_length": 16, "cast_type": "fp32"}],
    )
    assert len(both) == 12 - 4 + 1


def test_plan_dedups_equivalent_jobs(tiny_models):
    base = [j["key"] for j in smoke_plan()]
    # two spellings of one cast type are one job
    assert [j["key"] for j in smoke_plan(cast_types=["fp32", "bf16", "bfloat16", "float32"])] == base
    # an include that repeats a product combination adds nothing
    repeated = smoke_plan(include=[{"model": "tiny-bert", "batch_size": 2, "sequence_length": 32, "cast_type": "bf16"}])
    assert [j["key"] for j in repeated] == base
    # the same weights listed twice under two names compile once (the name is display only)
    twice = smoke_plan(
        models=["tiny-bert", {"id": "artifacts/models/tiny-bert", "task": "feature-extraction", "name": "bert-again"}],
        shapes=[{"batch_size": 1, "sequence_length": 16}],
        cast_types=["fp32"],
    )
    assert len(twice) == 1 and twice[0]["model"]["name"] == "tiny-bert"


def test_plan_order_is_stable(tiny_models, cli, workspace):
    first = [j["key"] for j in smoke_plan()]
    from pipeline import model_entries as models

    models._resolved.clear()
    models._hashed.clear()  # recompute the content hashes too
    assert [j["key"] for j in smoke_plan()] == first
    # across processes with different hash seeds, and the same as in-process
    for name, runs in (("plan-a", "runs-a"), ("plan-b", "runs-b")):
        proc = result(cli, name)
        assert proc.returncode == 0, output(proc)
        written = json.loads((workspace["dir"] / runs / "latest" / "plan.json").read_text())
        assert [j["key"] for j in written["jobs"]] == [j["key"] for j in workspace["jobs"]]
        assert [j["key"] for j in written["jobs"]][:12] == first  # the encoders first, then the include
    # product order: model, then shape, then cast type
    jobs = smoke_plan()
    assert [(j["model"]["name"], j["shapes"]["batch_size"], j["cast_type"]) for j in jobs[:4]] == [
        ("tiny-bert", 1, "fp32"),
        ("tiny-bert", 1, "bf16"),
        ("tiny-bert", 2, "fp32"),
        ("tiny-bert", 2, "bf16"),
    ]


def test_plan_notes_a_cast_type_this_cpu_only_emulates(cli):
    """The smoke plan has bf16 jobs: the note is printed exactly when this CPU lacks native bf16."""
    from pipeline.backends import inductor

    proc = result(cli, "plan-a")
    native_bf16 = bool(inductor.cpu_flags() & {"avx512_bf16", "amx_bf16"})
    assert ("note: cast_type bf16: this CPU has neither avx512_bf16 nor amx_bf16" in proc.stdout) == (
        not native_bf16
    ), proc.stdout
    assert "cast_type fp32" not in proc.stdout


def test_advice_follows_the_cpu_flags_and_device(monkeypatch):
    """The CPU's flags are a hardware fact a test cannot change, so they are replaced here."""
    from pipeline.backends import get_backend, inductor

    backend = get_backend("inductor", {"name": "inductor", "device": "cpu", "inductor_configs": {}})
    monkeypatch.setattr(inductor, "cpu_flags", lambda: frozenset({"avx512f", "avx512_bf16"}))
    (note,) = backend.advice({"fp32", "bf16", "fp16", "int8"})
    assert note.startswith("cast_type fp16: this CPU has neither avx512_fp16 nor amx_fp16")
    monkeypatch.setattr(inductor, "cpu_flags", lambda: frozenset({"avx512f"}))
    assert [n.split(":")[0] for n in backend.advice({"bf16", "fp16"})] == ["cast_type bf16", "cast_type fp16"]
    monkeypatch.setattr(inductor, "cpu_flags", lambda: frozenset())  # no /proc/cpuinfo: nothing known, nothing said
    assert backend.advice({"bf16"}) == []
    cuda = get_backend("inductor", {"name": "inductor", "device": "cuda", "inductor_configs": {}})
    assert cuda.advice({"bf16", "fp16"}) == []
    assert get_backend("neuron", {"name": "neuron"}).advice({"bf16"}) == []


@pytest.mark.parametrize("n", [1, 2, 3, 5])
def test_shards_partition_the_plan(n, tiny_models):
    full = [j["key"] for j in plan_of("+sweep=smoke")]
    shards = [[j["key"] for j in plan_of("+sweep=smoke", shard=f"{i}/{n}")] for i in range(1, n + 1)]
    assert sorted(k for s in shards for k in s) == sorted(full)  # every job in exactly one shard
    for s in shards:
        assert s == [k for k in full if k in s]  # each shard keeps the plan order


def test_plan_mode_prints_every_job_and_writes_plan_json(cli, workspace):
    proc = result(cli, "plan-a")
    assert proc.returncode == 0, output(proc)
    jobs = workspace["jobs"]
    rows = table_rows(proc.stdout)
    assert len(rows) == len(jobs) == 14
    for i, (row, job) in enumerate(zip(rows, jobs), 1):
        status = {workspace["hit"]: "hit", workspace["failed"]: "failed-before"}.get(job["key"], "miss")
        assert row == [
            str(i),
            job["model"]["name"],
            job["task"],
            str(job["shapes"]["batch_size"]),
            str(job["shapes"]["sequence_length"]),
            job["cast_type"],
            "inductor",
            keys.short(job["key"]),
            status,
            *row[9:],  # est., why: checked in tests/test_estimate.py
        ]
        assert row[9] == ("-" if status == "hit" else row[9]) and row[10] in ("", "new variant", "rebuild")
    assert "1 failed-before, 1 hit, 12 miss" in proc.stdout
    runs = workspace["dir"] / "runs-a"
    latest = runs / "latest"
    assert latest.is_symlink()
    run_dir = runs / os.readlink(latest)
    assert run_dir.parent == runs and run_dir.is_dir()
    assert f"plan written to {run_dir / 'plan.json'}" in proc.stdout
    written = json.loads((run_dir / "plan.json").read_text())["jobs"]
    assert [j["key"] for j in written] == [j["key"] for j in jobs]
    assert all(keys.key_of(j["spec"]) == j["key"] for j in written)
    # nothing compiled: the cache holds only what the test put there
    cache = Cache(workspace["dir"] / "status-cache")
    assert [e.name for e in cache.entries()] == [workspace["hit"]]
    assert not (workspace["dir"] / "cache-b").exists() or not Cache(workspace["dir"] / "cache-b").entries()


def test_planning_imports_no_torch_and_is_fast(tiny_models):
    """Planning reads config.json and hashes files; it never imports torch or transformers."""
    code = textwrap.dedent(f"""
        import json, os, sys, time
        t0 = time.perf_counter()
        from hydra import compose, initialize_config_dir
        from omegaconf import OmegaConf
        from pipeline.validate import validate
        from pipeline.plan import plan
        with initialize_config_dir(config_dir={str(REPO / "configs")!r}, version_base="1.3"):
            cfg = OmegaConf.to_container(compose(config_name="config", overrides=["+sweep=smoke"]), resolve=True)
        t1 = time.perf_counter()
        jobs = plan(validate(cfg))
        t2 = time.perf_counter()
        print(json.dumps({{"jobs": len(jobs), "plan_s": t2 - t1, "total_s": t2 - t0,
                           "heavy": sorted(m for m in sys.modules
                                           if m.split(".")[0] in ("torch", "transformers", "safetensors"))}}))
    """)
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=cli_env(), capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, output(proc)
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["jobs"] == 14
    assert out["heavy"] == []
    assert out["plan_s"] < 2.0, out


# --------------------------------------------------------------------------- explain


def test_explain_lists_every_field_of_a_key(cli, workspace):
    proc = result(cli, "explain-one")
    assert proc.returncode == 0, output(proc)
    job = workspace["jobs"][0]
    assert job["key"] in proc.stdout  # the full key in the title
    fields = {row[0]: row[1] for row in table_rows(proc.stdout)}
    assert set(fields) == set(keys.flatten(job["spec"]))
    for path in (
        "model.id",
        "model.revision",
        "task",
        "shapes.batch_size",
        "shapes.sequence_length",
        "cast_type",
        "auto_cast",
        "backend.name",
        "toolchain.torch",
        "toolchain.transformers",
        "recipe",
    ):
        assert path in fields, path
    assert fields["model.revision"] == json.dumps(job["spec"]["model"]["revision"])
    assert fields["shapes.batch_size"] == "1"


def test_explain_against_shows_only_differing_fields(cli, workspace):
    proc = result(cli, "explain-against")
    assert proc.returncode == 0, output(proc)
    a, b = workspace["jobs"][0], workspace["jobs"][3]  # tiny-bert b1 s16 fp32 vs b2 s32 bf16
    rows = table_rows(proc.stdout)
    assert (
        {r[0] for r in rows}
        == {p for p, _, _ in keys.diff(a["spec"], b["spec"])}
        == {"auto_cast", "cast_type", "shapes.batch_size", "shapes.sequence_length"}
    )
    assert dict((r[0], (r[1], r[2])) for r in rows)["cast_type"] == ('"fp32"', '"bf16"')
    assert "toolchain.torch" not in proc.stdout


@pytest.mark.parametrize(
    "name, fragment",
    [
        ("explain-unknown", "no known key starts with 'nothex'"),
        ("explain-ambiguous", "is ambiguous"),
        ("explain-float-key", "quote it"),
    ],
)
def test_explain_bad_key_exits_2(cli, name, fragment):
    proc = result(cli, name)
    assert proc.returncode == 2, output(proc)
    assert fragment in output(proc)
