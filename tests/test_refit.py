"""weights: refit, with real tiny models and real compiles: three fine-tunes of one architecture
(same config, different random weights) and one of another; one compile per architecture, a
refit for every other fine-tune, each artifact verified against its own CPU fp32 reference.

Two compiles in all (module fixture), ~1-3 min on 2 cores.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import cli_env, latest_report, run_cli
from test_config import _repo_offline, composed

from pipeline import keys, tasks, verify
from pipeline.backends import get_backend
from pipeline.backends.inductor import decoder, refit
from pipeline.model_entries import ModelInfo
from pipeline.plan import build_spec, plan
from pipeline.validate import ConfigError, validate

SHAPES = {"batch_size": 2, "sequence_length": 16}
FP32 = {"atol": 1e-4, "rtol": 1e-4, "min_argmax_agreement": 1.0}  # the default fp32 gate (config.py)
FINETUNES = ("ft-a", "ft-b", "ft-c")


def _finetune(root: Path, tiny_name: str, name: str, seed: int) -> Path:
    """A tiny model saved with save_pretrained under `name`, weights drawn from `seed`."""
    from pipeline import tiny

    folder = tiny.build(tiny_name, root / name, seed=seed)
    return folder


def _variant(folder: Path, task: str, backend) -> dict:
    """Everything a worker has for one model: spec, keys, eager model, inputs, reference."""
    import torch

    config = json.loads((folder / "config.json").read_text())
    info = ModelInfo(name=folder.parent.name, id=str(folder), task=task, revision=None, local=True, config=config)
    spec = build_spec(info, task, SHAPES, "fp32", "none", False, backend)
    model = tasks.load_eager_model(task, str(folder))
    inputs = tasks.example_inputs(config, SHAPES["batch_size"], SHAPES["sequence_length"], seed=0)
    with torch.no_grad():
        out = model(**inputs, return_dict=True)
    reference = {name: out[name].float() for name in tasks.TASKS[task].outputs}
    return {
        "spec": spec,
        "key": keys.key_of(spec),
        "graph_key": keys.graph_key(spec, config),
        "model": model,
        "inputs": inputs,
        "reference": reference,
        "task": task,
    }


def _gate(backend, folder: Path, section: dict, variant: dict) -> str | None:
    """Load the artifact (fresh package, its own weights file) and gate it against `variant`'s
    reference: None when it passes, else the broken metric."""
    run = backend.load(folder, {"compiled": section})
    got = run(**variant["inputs"])
    task = tasks.TASKS[variant["task"]]
    mask = variant["inputs"]["attention_mask"]
    ref = variant["reference"]
    metrics = {
        name: verify.output_metrics(ref[name], got[name], mask, task.argmax, FP32["atol"], FP32["rtol"])
        for name in task.outputs
    }
    return verify.gate(metrics, FP32)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    """Three DistilBERT classifier fine-tunes + one BERT encoder; compiles counted."""
    root = tmp_path_factory.mktemp("refit")
    backend = get_backend("inductor", {"weights": "refit"})
    variants = {
        name: _variant(_finetune(root / "models", "tiny-distilbert", name, seed), "text-classification", backend)
        for seed, name in enumerate(FINETUNES, start=1)
    }
    variants["bert"] = _variant(_finetune(root / "models", "tiny-bert", "bert", 7), "feature-extraction", backend)

    compiles = []
    real = decoder.compile_package
    artifacts, programs = {}, {}  # name -> (folder, section); graph key -> program folder
    mp = pytest.MonkeyPatch()
    mp.setattr(decoder, "compile_package", lambda *a, **k: compiles.append(a[1]) or real(*a, **k))
    try:
        for name, v in variants.items():
            folder = root / "artifacts" / name
            folder.mkdir(parents=True)
            program = programs.get(v["graph_key"])
            if program is None:
                out = backend.compile(v["model"], v["inputs"], v["spec"], folder)
                programs[v["graph_key"]] = folder
            else:
                out = backend.refit(v["model"], v["inputs"], v["spec"], folder, program)
            artifacts[name] = (folder, out["compiled"], out["timings"])
    finally:
        mp.undo()
    return {"backend": backend, "variants": variants, "artifacts": artifacts, "compiles": compiles, "root": root}


@pytest.mark.slow
def test_fine_tunes_share_a_graph_key_and_keep_their_own_keys(fleet):
    v = fleet["variants"]
    assert len({v[n]["graph_key"] for n in FINETUNES}) == 1
    assert len({v[n]["key"] for n in FINETUNES}) == 3
    assert v["bert"]["graph_key"] != v["ft-a"]["graph_key"]
    assert v["ft-a"]["spec"]["backend"]["options"]["weights"] == "refit"


@pytest.mark.slow
def test_one_compile_per_architecture_and_every_variant_passes_its_own_gate(fleet):
    backend, artifacts = fleet["backend"], fleet["artifacts"]
    assert len(fleet["compiles"]) == 2, fleet["compiles"]
    for name in ("ft-b", "ft-c"):
        folder, section, timings = artifacts[name]
        assert "refit_s" in timings and "lower_s" not in timings
        assert (folder / refit.WEIGHTS).is_file()
        assert (folder / "model.pt2").read_bytes() == (artifacts["ft-a"][0] / "model.pt2").read_bytes()
    for name, (folder, section, _) in artifacts.items():
        assert section["weights"] == refit.WEIGHTS
        assert _gate(backend, folder, section, fleet["variants"][name]) is None, name


@pytest.mark.slow
def test_weights_are_outside_the_program(fleet):
    folder = fleet["artifacts"]["ft-a"][0]
    n_params = sum(p.numel() for p in fleet["variants"]["ft-a"]["model"].parameters())
    weights = (folder / refit.WEIGHTS).stat().st_size
    assert weights >= 4 * n_params  # fp32 weights are all in the file
    different = fleet["artifacts"]["ft-b"][0] / refit.WEIGHTS
    assert different.read_bytes() != (folder / refit.WEIGHTS).read_bytes()


@pytest.mark.slow
def test_a_variant_given_another_fine_tunes_weights_fails_its_gate(fleet):
    backend, artifacts, v = fleet["backend"], fleet["artifacts"], fleet["variants"]
    swapped = fleet["root"] / "swapped"
    swapped.mkdir()
    out = backend.refit(v["ft-b"]["model"], v["ft-c"]["inputs"], v["ft-c"]["spec"], swapped, artifacts["ft-a"][0])
    broken = _gate(backend, swapped, out["compiled"], v["ft-c"])
    assert broken is not None and "logits" in broken
    assert _gate(backend, swapped, out["compiled"], v["ft-b"]) is None  # the weights it really holds


@pytest.mark.slow
def test_another_architectures_weights_are_refused(fleet):
    backend, artifacts, v = fleet["backend"], fleet["artifacts"], fleet["variants"]
    target = fleet["root"] / "wrong-arch"
    target.mkdir()
    with pytest.raises(refit.RefitError, match="do not fit the program"):
        backend.refit(v["bert"]["model"], v["bert"]["inputs"], v["ft-a"]["spec"], target, artifacts["ft-a"][0])
    assert not (target / refit.WEIGHTS).exists()


# --------------------------------------------------------------------------- config


def test_embedded_is_the_default_and_keeps_existing_keys():
    embedded = get_backend("inductor", {})
    assert embedded.options["weights"] == "embedded"
    assert "weights" not in embedded.spec_options()  # keys computed before the option existed stay valid
    assert get_backend("inductor", {"weights": "refit"}).spec_options()["weights"] == "refit"
    assert refit.TRADE_OFF in get_backend("inductor", {"weights": "refit"}).advice(set())  # plan prints it
    assert refit.TRADE_OFF not in embedded.advice(set())


@pytest.mark.parametrize(
    "overrides, message",
    [
        (
            ("backend.weights=baked", "matrix.models=[tiny-bert]"),
            "backend.weights: 'baked' is not one of embedded, refit",
        ),
        (
            ("backend.weights=refit", "matrix.models=[tiny-gpt2]"),
            "backend.weights: refit supports encoder tasks only",
        ),
        (
            ("backend.weights=refit", "matrix.models=[tiny-bert]", "matrix.cast_types=[int8]"),
            "backend.weights: refit cannot serve cast_type int8",
        ),
    ],
)
def test_refit_config_errors_name_the_key(tiny_models, overrides, message):
    with _repo_offline(), pytest.raises(ConfigError) as e:
        validate(composed(*overrides))
    assert any(message in err for err in e.value.errors), e.value.errors


def test_cli_exits_2_naming_backend_weights(tiny_models):
    proc = run_cli("matrix.models=[tiny-gpt2]", "backend.weights=refit", "mode=validate")
    assert proc.returncode == 2, proc.stdout[-1000:] + proc.stderr[-1000:]
    assert "backend.weights: refit supports encoder tasks only" in proc.stdout + proc.stderr


def test_plan_gives_fine_tunes_one_graph_key(tiny_models):
    with _repo_offline():
        jobs = plan(validate(composed("matrix.models=[tiny-distilbert,tiny-bert]", "backend.weights=refit")))
    assert len(jobs) == 2 and all(j["graph_key"] for j in jobs)
    assert jobs[0]["graph_key"] != jobs[1]["graph_key"]
    for job in jobs:
        config = json.loads((Path(job["model"]["path"]) / "config.json").read_text())
        assert job["graph_key"] == keys.graph_key(job["spec"], config)


# --------------------------------------------------------------------------- planner, workers, runtime


@pytest.fixture(scope="module")
def refit_run(tmp_path_factory):
    """`python -m pipeline backend.weights=refit` over two fine-tunes of one architecture: the
    plan, then the run (one compile, one refit, each verified in its own worker)."""
    root = tmp_path_factory.mktemp("refit-run")
    models = [_finetune(root / "models", "tiny-distilbert", name, seed) for name, seed in (("ft-x", 11), ("ft-y", 12))]
    env = cli_env(PIPELINE_CACHE_DIR=str(root / "cache"), PIPELINE_REPORT_DIR=str(root / "runs"))
    inline = ", ".join(f"{{id: {m}, task: text-classification, name: {m.parent.name}}}" for m in models)
    shapes = "matrix.shapes=[{batch_size: 2, sequence_length: 16}]"
    args = [f"matrix.models=[{inline}]", shapes, "backend.weights=refit"]
    planned = run_cli(*args, "mode=plan", env=env)
    assert planned.returncode == 0, planned.stdout[-2000:] + planned.stderr[-2000:]
    plan_json = json.loads(sorted((root / "runs").glob("*/plan.json"))[-1].read_text())
    ran = run_cli(*args, env=env)
    assert ran.returncode == 0, ran.stdout[-3000:] + ran.stderr[-3000:]
    return {"root": root, "plan": plan_json, "plan_out": planned.stdout, "report": latest_report(root / "runs")}


@pytest.mark.slow
def test_plan_marks_the_second_fine_tune_refit_with_a_smaller_estimate(refit_run):
    jobs = refit_run["plan"]["jobs"]
    assert [j["status"] for j in jobs] == ["miss", "refit"]
    assert jobs[0]["graph_key"] == jobs[1]["graph_key"] and jobs[0]["key"] != jobs[1]["key"]
    assert jobs[1]["estimate"]["seconds"] < jobs[0]["estimate"]["seconds"]
    assert "a refit" in jobs[1]["estimate"]["basis"]
    assert "1 by refit" in refit_run["plan_out"]


@pytest.mark.slow
def test_run_compiles_once_and_refits_the_other_fine_tune_verified(refit_run):
    from pipeline.cache import Cache

    rows = refit_run["report"]["jobs"]
    assert [r["status"] for r in rows] == ["passed", "passed"]
    first, second = rows
    assert "refit_from" not in first["timings"] and "lower_s" in first["timings"]
    assert second["timings"]["refit_from"] == first["key"] and "lower_s" not in second["timings"]
    assert any(n.startswith("refit:") for n in second["notes"])
    assert second["metrics"]["logits"]["allclose_violations"] == 0  # its own gate, against its own reference
    cache = Cache(refit_run["root"] / "cache")
    a, b = cache.entry_dir(first["key"]), cache.entry_dir(second["key"])
    assert (a / "model.pt2").stat().st_ino == (b / "model.pt2").stat().st_ino  # one program on disk
    assert (a / refit.WEIGHTS).read_bytes() != (b / refit.WEIGHTS).read_bytes()
    assert cache.program(refit_run["plan"]["jobs"][0]["graph_key"]) in (a, b)


@pytest.mark.slow
def test_from_pretrained_export_refits_when_the_graph_is_cached(refit_run, caplog):
    import logging

    import torch

    from pipeline.modeling import CompiledModelForSequenceClassification

    folder = _finetune(refit_run["root"] / "models", "tiny-distilbert", "ft-z", 13)
    with caplog.at_level(logging.INFO, logger="pipeline.modeling"):
        compiled = CompiledModelForSequenceClassification.from_pretrained(
            str(folder),
            export=True,
            cache_dir=refit_run["root"] / "cache",
            backend_options={"weights": "refit"},
            batch_size=2,
            sequence_length=16,
        )
    assert any("refit: the program of" in r.getMessage() for r in caplog.records), caplog.text
    eager = tasks.load_eager_model("text-classification", str(folder))
    inputs = tasks.example_inputs(eager.config.to_dict(), 2, 16, seed=3)
    with torch.no_grad():
        want = eager(**inputs).logits
    torch.testing.assert_close(compiled(**inputs).logits, want, atol=1e-4, rtol=1e-4)
