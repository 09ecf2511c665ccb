"""`task: auto` in a model entry: the task comes from config.json's `architectures`, through
the real CLI (mode=plan) on the tiny models; ambiguous or unknown architectures are a config
error (exit 2) naming the entry and the candidates."""

from __future__ import annotations

import json
import shutil

import pytest
from conftest import cli_env, run_cli

from pipeline.tasks import TaskInferenceError, infer_task

# tiny model -> the task its configs/model file declares (what `auto` must find on its own)
DECLARED = {
    "tiny-bert": "feature-extraction",
    "tiny-distilbert": "text-classification",
    "tiny-roberta": "token-classification",
    "tiny-bert-qa": "question-answering",
    "tiny-bert-mlm": "fill-mask",
    "tiny-gpt2": "text-generation",
    "tiny-llama": "text-generation",
}


def _inline(model_id, name: str | None = None) -> str:
    return "{id: " + str(model_id) + ", task: auto" + (f", name: {name}" if name else "") + "}"


def test_task_auto_plans_every_tiny_model_with_its_declared_task(tiny_models, tmp_path):
    models = ",".join(_inline(tiny_models / name) for name in DECLARED)
    env = cli_env(PIPELINE_CACHE_DIR=str(tmp_path / "cache"), PIPELINE_REPORT_DIR=str(tmp_path / "runs"))
    proc = run_cli(
        "mode=plan", f"matrix.models=[{models}]", "matrix.shapes=[{batch_size: 1, sequence_length: 16}]", env=env
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    jobs = json.loads((tmp_path / "runs" / "latest" / "plan.json").read_text())["jobs"]
    assert {j["model"]["name"]: j["task"] for j in jobs} == DECLARED
    assert all(j["spec"]["task"] == j["task"] for j in jobs)  # the inferred task is what the key hashes


def test_task_auto_ambiguous_or_unknown_is_a_config_error_naming_entry_and_candidates(tiny_models, tmp_path):
    ambiguous, unknown = tmp_path / "two-heads", tmp_path / "pretraining"
    for folder, archs in ((ambiguous, ["BertForMaskedLM", "BertForSequenceClassification"]),
                          (unknown, ["BertForPreTraining"])):  # fmt: skip
        shutil.copytree(tiny_models / "tiny-bert", folder)
        config = json.loads((folder / "config.json").read_text())
        (folder / "config.json").write_text(json.dumps(dict(config, architectures=archs)))
    models = f"[{_inline(tiny_models / 'tiny-bert')},{_inline(ambiguous)},{_inline(unknown)}]"
    env = cli_env(PIPELINE_CACHE_DIR=str(tmp_path / "cache"), PIPELINE_REPORT_DIR=str(tmp_path / "runs"))
    proc = run_cli("mode=plan", f"matrix.models={models}", env=env)
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    lines = [line.strip() for line in proc.stderr.splitlines()]
    (amb,) = [line for line in lines if line.startswith("matrix.models[1].task:")]
    assert "two-heads" in amb and "candidates: fill-mask, text-classification" in amb, amb
    assert "BertForMaskedLM -> fill-mask" in amb and "BertForSequenceClassification -> text-classification" in amb
    (unk,) = [line for line in lines if line.startswith("matrix.models[2].task:")]
    assert "pretraining" in unk and "BertForPreTraining -> no supported task" in unk and "candidates: none" in unk
    assert not any(line.startswith("matrix.models[0]") for line in lines), proc.stderr  # tiny-bert is fine
    assert not (tmp_path / "runs").exists()  # nothing planned


@pytest.mark.parametrize(
    ("archs", "task"),
    [
        (["GPT2LMHeadModel"], "text-generation"),
        (["LlamaForCausalLM"], "text-generation"),
        (["BertModel"], "feature-extraction"),
        (["RobertaForTokenClassification"], "token-classification"),
        (["DistilBertForSequenceClassification", "DistilBertForSequenceClassification"], "text-classification"),
        (["T5ForConditionalGeneration"], None),
        (["GPT2DoubleHeadsModel"], None),
        ([], None),
    ],
)
def test_infer_task_by_architecture(archs, task):
    if task is None:
        with pytest.raises(TaskInferenceError):
            infer_task({"architectures": archs})
    else:
        assert infer_task({"architectures": archs}) == task

