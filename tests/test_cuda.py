"""The inductor backend's CUDA path (backend.device=cuda). Skipped where torch sees no CUDA device:
no machine this suite normally runs on has one; bench/gpu_check.sh runs these where one is lent."""

from __future__ import annotations

import pytest
import torch
import transformers

from pipeline import modeling
from pipeline.verify import gate, output_metrics

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device (torch.cuda.is_available() is False)"),
]

GATES = {"fp32": {"atol": 1e-3, "rtol": 1e-3, "min_argmax_agreement": 1.0}, "bf16": {"min_cosine": 0.99}}


@pytest.mark.parametrize("cast", ["fp32", "bf16"])
def test_a_cuda_artifact_is_compiled_verified_and_matches_eager(tiny_models, tmp_path, cast):
    model = modeling.CompiledModelForFeatureExtraction.from_pretrained(
        str(tiny_models / "tiny-bert"), export=True, cache_dir=tmp_path, batch_size=2, sequence_length=16,
        auto_cast_type=cast, backend_options={"device": "cuda"},
    )
    assert model.compile_config["compiled"]["device"] == "cuda"
    assert model.manifest["verification"]["status"] == "passed"
    tok = transformers.AutoTokenizer.from_pretrained(tiny_models / "tiny-bert")
    enc = tok(["a short one", "and a somewhat longer sentence here"], return_tensors="pt", padding=True)
    got = model(**enc).last_hidden_state.cpu()
    with torch.no_grad():
        want = transformers.AutoModel.from_pretrained(tiny_models / "tiny-bert").eval()(**enc).last_hidden_state
    metrics = {"last_hidden_state": output_metrics(want, got, enc["attention_mask"], False, 1e-3, 1e-3)}
    assert gate(metrics, GATES[cast]) is None, metrics
