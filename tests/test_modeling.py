"""Runtime classes: compiled models as drop-ins for AutoModelFor<Task>, on real compiled artifacts."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time

import pytest
import torch
import transformers
from conftest import cli_env

from pipeline import modeling
from pipeline.tasks import TASKS, get_mandatory_axes_for_task
from pipeline.verify import gate, output_metrics

FP32 = {"atol": 1e-4, "rtol": 1e-4, "min_argmax_agreement": 1.0}
# task -> (tiny model, runtime class)
TASK_MODELS = {
    "feature-extraction": ("tiny-bert", modeling.CompiledModelForFeatureExtraction),
    "text-classification": ("tiny-distilbert", modeling.CompiledModelForSequenceClassification),
    "token-classification": ("tiny-roberta", modeling.CompiledModelForTokenClassification),
    "question-answering": ("tiny-bert-qa", modeling.CompiledModelForQuestionAnswering),
    "fill-mask": ("tiny-bert-mlm", modeling.CompiledModelForMaskedLM),
}


@pytest.fixture(scope="module")
def compiled(tiny_models, test_cache):
    """One static b2/s32 fp32 artifact per encoder task, compiled through export=True."""
    out = {}
    for task, (name, cls) in TASK_MODELS.items():
        out[task] = cls.from_pretrained(
            str(tiny_models / name), export=True, batch_size=2, sequence_length=32, cache_dir=test_cache
        )
    return out


def _eager(tiny_models, task):
    return getattr(transformers, TASKS[task].auto_class).from_pretrained(tiny_models / TASK_MODELS[task][0]).eval()


def _inputs(tiny_models, task, texts):
    tok = transformers.AutoTokenizer.from_pretrained(tiny_models / TASK_MODELS[task][0])
    enc = tok(texts, return_tensors="pt", padding=True, truncation=True, max_length=32)
    return {k: v for k, v in enc.items() if k in ("input_ids", "attention_mask", "token_type_ids")}


def _assert_close(task, eager_out, got, mask):
    metrics = {
        n: output_metrics(eager_out[n], got[n], mask, TASKS[task].argmax, 1e-4, 1e-4) for n in TASKS[task].outputs
    }
    assert gate(metrics, FP32) is None, metrics
    assert type(got).__name__ == TASKS[task].output_class


@pytest.mark.slow
@pytest.mark.parametrize("task", list(TASK_MODELS))
def test_compiled_matches_eager_padded_unpadded_small_and_dynamic_batch(compiled, tiny_models, task):
    model = compiled[task]
    eager = _eager(tiny_models, task)
    cases = {
        "padded batch": ["the quick brown fox", "paris is the capital of france and berlin"],
        "batch smaller than compiled, unpadded": ["i really enjoyed this film"],
    }
    for label, texts in cases.items():
        enc = _inputs(tiny_models, task, texts)
        with torch.no_grad():
            ref = eager(**enc)
        _assert_close(task, ref, model(**enc), enc["attention_mask"])
    # a batch larger than compiled: refused by default, chunked with dynamic_batch_size=True
    enc = _inputs(tiny_models, task, [f"the fox number {i} jumps" for i in range(5)])
    with pytest.raises(ValueError, match="exceeds the compiled batch_size 2"):
        model(**enc)
    dyn = type(model).from_pretrained(model.folder, dynamic_batch_size=True)
    with torch.no_grad():
        ref = eager(**enc)
    got = dyn(**enc)
    assert got[TASKS[task].outputs[0]].shape[0] == 5
    _assert_close(task, ref, got, enc["attention_mask"])


@pytest.mark.slow
def test_longer_than_compiled_sequence_is_a_clear_error(compiled):
    with pytest.raises(ValueError, match="sequence length 40 exceeds the compiled sequence_length 32"):
        compiled["feature-extraction"](input_ids=torch.ones(1, 40, dtype=torch.int64))


def test_mandatory_axes_helper():
    assert get_mandatory_axes_for_task("text-classification") == ("batch_size", "sequence_length")
    with pytest.raises(ValueError, match="unknown task"):
        get_mandatory_axes_for_task("image-to-text")


def test_export_needs_the_mandatory_axes(tiny_models):
    with pytest.raises(TypeError, match="needs the input shapes sequence_length"):
        modeling.CompiledModelForFeatureExtraction.from_pretrained(
            str(tiny_models / "tiny-bert"), export=True, batch_size=1
        )


@pytest.mark.slow
def test_transformers_pipeline_gives_the_eager_answers(compiled, tiny_models):
    texts = ["I really enjoyed this film; the acting was superb!", "Paris is the capital of France."]
    for task, pipe_task in (
        ("text-classification", "text-classification"),
        ("feature-extraction", "feature-extraction"),
    ):
        tok = transformers.AutoTokenizer.from_pretrained(tiny_models / TASK_MODELS[task][0])
        got = transformers.pipeline(pipe_task, model=compiled[task], tokenizer=tok)(texts)
        want = transformers.pipeline(pipe_task, model=_eager(tiny_models, task), tokenizer=tok)(texts)
        if task == "text-classification":
            assert [g["label"] for g in got] == [w["label"] for w in want]
            assert [g["score"] for g in got] == pytest.approx([w["score"] for w in want], abs=1e-5)
        else:
            assert torch.allclose(torch.tensor(got[0]), torch.tensor(want[0]), atol=1e-4)
            assert torch.allclose(torch.tensor(got[1]), torch.tensor(want[1]), atol=1e-4)


RELOAD = r"""
import sys, time, json, torch
t = time.perf_counter()
from pipeline.modeling import CompiledModelForSequenceClassification as C
m = C.from_pretrained(sys.argv[1])
load_s = time.perf_counter() - t
out = m(input_ids=torch.tensor([[5, 6, 7, 8]]), attention_mask=torch.ones(1, 4, dtype=torch.int64)).logits
import torch._dynamo.utils as du
print(json.dumps({"load_s": load_s, "logits": out.tolist(),
                  "model_code_imported": [k for k in sys.modules if k.startswith("transformers.models.")
                                          and ".modeling_" in k and not k.startswith("transformers.models.auto.")],
                  "dynamo_frames": sum(du.counters["frames"].values())}))
"""


@pytest.mark.slow
def test_save_and_reload_in_fresh_process_without_arguments(compiled, tiny_models, tmp_path):
    saved = compiled["text-classification"].save_pretrained(tmp_path / "saved")
    assert {"config.json", "model.pt2", "manifest.json", "tokenizer.json"} <= {p.name for p in saved.iterdir()}
    proc = subprocess.run(
        [sys.executable, "-c", RELOAD, str(saved)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=cli_env(),
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["model_code_imported"] == []  # no transformers modeling code ran for the compiled graph
    assert result["dynamo_frames"] == 0  # nothing traced or recompiled
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        want = _eager(tiny_models, "text-classification")(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
    assert torch.allclose(torch.tensor(result["logits"]), want, atol=1e-4)
    print(f"fresh-process reload: {result['load_s']:.2f} s")


@pytest.mark.slow
def test_export_twice_second_is_a_cache_hit(compiled, tiny_models, test_cache, monkeypatch):
    import pipeline.executors.local as local

    def no_compile(*a, **k):
        raise AssertionError("a cache hit must not start a compile")

    monkeypatch.setattr(local, "run_worker", no_compile)  # only asserts it is not called
    t = time.perf_counter()
    again = modeling.CompiledModelForSequenceClassification.from_pretrained(
        str(tiny_models / "tiny-distilbert"), export=True, batch_size=2, sequence_length=32, cache_dir=test_cache
    )
    print(f"export=True cache hit: {time.perf_counter() - t:.2f} s")
    assert again.folder == compiled["text-classification"].folder


@pytest.mark.slow
def test_unverified_artifact_is_refused_unless_allowed(compiled, tmp_path):
    folder = compiled["feature-extraction"].save_pretrained(tmp_path / "a")
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["verification"]["status"] = "failed"
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(modeling.UnverifiedArtifactError, match="verification status is failed"):
        modeling.CompiledModelForFeatureExtraction.from_pretrained(folder)
    (folder / "manifest.json").unlink()
    with pytest.raises(modeling.UnverifiedArtifactError, match="missing"):
        modeling.CompiledModelForFeatureExtraction.from_pretrained(folder)
    assert (
        modeling.CompiledModelForFeatureExtraction.from_pretrained(folder, allow_unverified=True).shapes["batch_size"]
        == 2
    )


@pytest.mark.slow
def test_wrong_class_for_the_artifact_is_refused(compiled):
    with pytest.raises(ValueError, match="compiled for task 'feature-extraction'"):
        modeling.CompiledModelForSequenceClassification.from_pretrained(compiled["feature-extraction"].folder)


@pytest.mark.slow
def test_real_artifact_integrity_key_prefix_and_tampering(compiled, test_cache, tmp_path):
    """A real artifact: loads by key prefix and from a copy without logs/ (push_to_hub leaves
    them out); one flipped byte in model.pt2 is refused naming the file, before loading it."""
    model = compiled["feature-extraction"]
    key = model.folder.name
    by_prefix = modeling.CompiledModelForFeatureExtraction.from_pretrained(key[:12], cache_dir=test_cache)
    assert by_prefix.folder == model.folder
    folder = model.save_pretrained(tmp_path / "copy")
    shutil.rmtree(folder / "logs", ignore_errors=True)
    modeling.CompiledModelForFeatureExtraction.from_pretrained(folder)
    with open(folder / "model.pt2", "r+b") as f:
        f.seek(100)
        byte = f.read(1)
        f.seek(100)
        f.write(bytes([byte[0] ^ 1]))
    with pytest.raises(modeling.ArtifactError, match=f"^{folder}/model.pt2: sha256 mismatch"):
        modeling.CompiledModelForFeatureExtraction.from_pretrained(folder)
    with pytest.raises(FileNotFoundError, match="no cache entry starts with"):
        modeling.CompiledModelForFeatureExtraction.from_pretrained("0" * 12, cache_dir=tmp_path / "empty")
