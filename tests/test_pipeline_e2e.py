"""The pipeline end to end through the CLI: real tiny models, real compiles, real processes.

The smoke sweep runs once per session (the README's `make demo` command, redirected to a
test cache); the fault tests use small matrices in their own cache dirs.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO, cli_env, latest_report, run_cli

from pipeline.cache import Cache

ONE_JOB = ["matrix.models=[tiny-bert]", "matrix.cast_types=[fp32]", "matrix.shapes=[{batch_size:1,sequence_length:16}]"]


@pytest.mark.slow
def test_smoke_sweep_passes_end_to_end(smoke):
    report = smoke["report"]
    jobs = report["jobs"]
    models = {j["model"] for j in jobs}
    assert models == {"tiny-bert", "tiny-distilbert", "tiny-roberta", "tiny-llama"}
    assert {j["cast_type"] for j in jobs} == {"fp32", "bf16"} and len(jobs) == 14
    assert all(j["status"] == "passed" for j in jobs), [(j["model"], j["error"]) for j in jobs]
    assert "summary" in smoke["stdout"] and "14 passed" in smoke["stdout"]
    for j in jobs:
        if j["task"] == "text-generation":  # the report carries the agreement metrics
            assert j["metrics"]["generated"]["compared_tokens"] == 32
            if j["cast_type"] == "fp32":
                assert j["metrics"]["generated"]["exact"] and j["metrics"]["generated"]["agreement_length"] == 32
    for j in jobs:
        entry = Path(j["artifact"])
        manifest = json.loads((entry / "manifest.json").read_text())
        assert manifest["verification"]["status"] == "passed" and manifest["key"] == j["key"]
        assert {"model.pt2", "config.json", "logs/compile.log", "logs/verify.log"} <= set(manifest["files"])
        assert json.loads((entry / "config.json").read_text())["pipeline"]["key"] == j["key"]
        for name in ("logits",) if j["task"] != "feature-extraction" else ("last_hidden_state",):  # the gate's metrics
            assert {"max_abs", "mean_abs", "rel_error", "cosine"} <= set(j["metrics"][name]), (j["model"], name)
    run_dir = smoke["runs"] / "latest"
    assert {"plan.json", "report.json", "report.md", "junit.xml"} <= {p.name for p in run_dir.iterdir()}
    assert 'tests="14" failures="0"' in (run_dir / "junit.xml").read_text()
    # bf16 on a CPU that only emulates it: said in the console, report.json and report.md
    from pipeline.backends import inductor

    emulated = not inductor.cpu_flags() & {"avx512_bf16", "amx_bf16"}
    assert any(a.startswith("cast_type bf16") for a in report["environment"]["advice"]) == emulated
    assert ("note: cast_type bf16" in smoke["stdout"]) == emulated
    assert ("> note: cast_type bf16" in (run_dir / "report.md").read_text()) == emulated


@pytest.mark.slow
def test_later_jobs_start_in_standby_workers_and_none_is_left_behind(smoke):
    """Each job runs in its own process, but from job 2 on that process was started (and did its
    imports) while the previous job compiled; every process started was used, none outlives the run."""
    jobs = smoke["report"]["jobs"]
    assert [j["timings"]["warm_start"] for j in jobs] == [False] + [True] * 13
    run_dir = (smoke["runs"] / "latest").resolve()
    assert len(list((run_dir / "jobs").glob("process-*.log"))) == 14
    assert _worker_pids(str(run_dir)) == []
    verifiers = subprocess.run(["pgrep", "-f", f"pipeline.verify --standby [^ ]+ {smoke['cache'].resolve()}"],
                               capture_output=True)  # fmt: skip
    assert verifiers.returncode == 1


@pytest.mark.slow
def test_second_identical_run_is_all_cached_and_compiles_nothing(smoke):
    before = {p: p.stat().st_mtime_ns for p in smoke["cache"].glob("??/*/manifest.json")}
    t = time.perf_counter()
    proc = run_cli("+sweep=smoke", env=smoke["env"])
    elapsed = time.perf_counter() - t
    assert proc.returncode == 0, proc.stderr
    report = latest_report(smoke["runs"])
    assert [j["status"] for j in report["jobs"]] == ["cached"] * 14
    assert all(j["attempts"] == 0 for j in report["jobs"])  # no worker process was started
    assert {p: p.stat().st_mtime_ns for p in smoke["cache"].glob("??/*/manifest.json")} == before
    assert not (smoke["runs"] / "latest" / "jobs").exists()
    print(f"all-hit rerun of 14 jobs: {elapsed:.1f} s")


@pytest.mark.slow
def test_impossible_tolerance_fails_with_metric_named_and_others_pass(tiny_models, tmp_path):
    proc = run_cli(
        "matrix.models=[tiny-bert]",
        "matrix.shapes=[{batch_size:1,sequence_length:16}]",
        "matrix.cast_types=[fp32,bf16]",
        "verify.tolerances.bf16.min_cosine=1.01",
        f"cache.dir={tmp_path / 'cache'}",
        f"report.dir={tmp_path / 'runs'}",
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    rows = {j["cast_type"]: j for j in latest_report(tmp_path / "runs")["jobs"]}
    assert rows["fp32"]["status"] == "passed"
    assert rows["bf16"]["status"] == "failed"
    assert "cosine" in rows["bf16"]["error"] and "min_cosine 1.01" in rows["bf16"]["error"]
    assert rows["bf16"]["metrics"]["last_hidden_state"]["cosine"] < 1.01
    cache = Cache(tmp_path / "cache")
    assert cache.status(rows["bf16"]["key"]) == "failed-before"  # never stored as good
    assert not cache.entry_dir(rows["bf16"]["key"]).exists()
    assert "min_cosine" in cache.failure(rows["bf16"]["key"])["error"]
    assert "failed" in (tmp_path / "runs" / "latest" / "report.md").read_text()
    # the failed key is retried on the next run, unless retry_failed=false
    proc = run_cli(
        "matrix.models=[tiny-bert]",
        "matrix.shapes=[{batch_size:1,sequence_length:16}]",
        "matrix.cast_types=[bf16]",
        "retry_failed=false",
        f"cache.dir={tmp_path / 'cache'}",
        f"report.dir={tmp_path / 'runs'}",
    )
    assert proc.returncode == 1
    (row,) = latest_report(tmp_path / "runs")["jobs"]
    assert row["attempts"] == 0 and "retry_failed=false" in row["error"]


def _worker_pids(marker: str) -> list[int]:
    out = subprocess.run(["pgrep", "-f", f"pipeline.worker .*{marker}"], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


@pytest.mark.slow
def test_sigkill_mid_compile_leaves_no_entry_and_no_lock(tiny_models, tmp_path):
    cache_dir, runs = tmp_path / "cache", tmp_path / "runs"
    args = [*ONE_JOB, f"cache.dir={cache_dir}", f"report.dir={runs}"]
    parent = subprocess.Popen(
        [sys.executable, "-m", "pipeline", *args],
        cwd=REPO,
        env=cli_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 300
    while time.time() < deadline:  # wait until the worker is compiling (its temp entry exists)
        pids = _worker_pids(str(runs))
        if pids and list((cache_dir / ".tmp").glob("*/logs/compile.log")) if (cache_dir / ".tmp").is_dir() else False:
            break
        time.sleep(0.2)
    else:
        pytest.fail("worker never started")
    time.sleep(2.0)
    parent.send_signal(signal.SIGKILL)
    for pid in _worker_pids(str(runs)):
        os.kill(pid, signal.SIGKILL)
    parent.wait()
    time.sleep(0.5)
    assert not _worker_pids(str(runs))
    cache = Cache(cache_dir)
    assert not list(cache_dir.glob("??/*/manifest.json"))  # no entry
    (plan,) = runs.glob("*/plan.json")  # no `latest` link: the run never ended
    key = json.loads(plan.read_text())["jobs"][0]["key"]
    lock = cache.lock(key, timeout=0)
    lock.acquire()  # no lock held by the dead worker
    lock.release()
    proc = run_cli(*args)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert latest_report(runs)["jobs"][0]["status"] == "passed"
    assert not list((cache_dir / ".tmp").glob(f"{key}-*"))  # the crash's temp dir was cleared


@pytest.mark.slow
def test_two_processes_on_one_cache_compile_each_key_once(tiny_models, tmp_path):
    cache_dir = tmp_path / "cache"
    base = [
        "matrix.models=[tiny-bert,tiny-distilbert]",
        "matrix.cast_types=[fp32]",
        "matrix.shapes=[{batch_size:1,sequence_length:16}]",
        f"cache.dir={cache_dir}",
    ]
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "pipeline", *base, f"report.dir={tmp_path / f'runs{i}'}"],
            cwd=REPO,
            env=cli_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in (0, 1)
    ]
    outs = [p.communicate(timeout=900)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    rows = [j for i in (0, 1) for j in latest_report(tmp_path / f"runs{i}")["jobs"]]
    by_key: dict[str, list[str]] = {}
    for r in rows:
        by_key.setdefault(r["key"], []).append(r["status"])
    assert len(by_key) == 2
    for statuses in by_key.values():  # compiled exactly once, the other process took the entry
        assert sorted(statuses) == ["cached", "passed"]
    compile_logs = [p for p in cache_dir.glob("??/*/logs/compile.log")]
    assert len(compile_logs) == 2


@pytest.mark.slow
def test_tampered_entry_is_rebuilt_not_used(smoke, tmp_path):
    row = next(
        j
        for j in smoke["report"]["jobs"]
        if j["model"] == "tiny-bert" and j["cast_type"] == "fp32" and j["shapes"]["batch_size"] == 1
    )
    cache_dir = tmp_path / "cache"
    src = Path(row["artifact"])
    dest = cache_dir / row["key"][:2] / row["key"]
    shutil.copytree(src, dest)
    blob = bytearray((dest / "model.pt2").read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    (dest / "model.pt2").write_bytes(bytes(blob))
    proc = run_cli(*ONE_JOB, f"cache.dir={cache_dir}", f"report.dir={tmp_path / 'runs'}")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (got,) = latest_report(tmp_path / "runs")["jobs"]
    assert got["key"] == row["key"] and got["status"] == "passed"  # rebuilt, not "cached"
    assert any("integrity" in n and "model.pt2" in n for n in got["notes"])
    folder, why = Cache(cache_dir).lookup(row["key"])
    assert folder is not None and why is None


@pytest.mark.slow
def test_a_timeout_fails_the_job_without_a_retry(tiny_models, tmp_path):
    """A deterministic slow compile would only cost the timeout twice: timeouts are not retried."""
    proc = run_cli(*ONE_JOB, "timeout_s=2", f"cache.dir={tmp_path / 'cache'}", f"report.dir={tmp_path / 'runs'}")
    assert proc.returncode == 1
    (row,) = latest_report(tmp_path / "runs")["jobs"]
    assert row["status"] == "failed" and row["attempts"] == 1
    assert "timed out after 2 s (timeout_s); not retried" in row["error"]
    assert not list((tmp_path / "cache").glob("??/*/manifest.json"))


def test_neuron_jobs_fail_clearly_without_the_sdk_and_all_are_attempted(tiny_models, tmp_path):
    proc = run_cli(
        "backend=neuron",
        "matrix.models=[tiny-bert,tiny-distilbert]",
        "matrix.cast_types=[bf16]",
        "matrix.shapes=[{batch_size:1,sequence_length:16}]",
        f"cache.dir={tmp_path / 'cache'}",
        f"report.dir={tmp_path / 'runs'}",
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    rows = latest_report(tmp_path / "runs")["jobs"]
    assert [r["status"] for r in rows] == ["failed", "failed"]
    for r in rows:  # deterministic: not retried
        assert r["attempts"] == 1
        assert "backend unavailable" in r["error"] and "torch_neuronx" in r["error"]


@pytest.mark.slow
def test_fail_fast_skips_the_rest(tiny_models, tmp_path):
    proc = run_cli(
        "matrix.models=[tiny-bert,tiny-distilbert]",
        "matrix.cast_types=[fp32]",
        "matrix.shapes=[{batch_size:1,sequence_length:16}]",
        "verify.tolerances.fp32.min_cosine=1.5",
        "fail_fast=true",
        f"cache.dir={tmp_path / 'cache'}",
        f"report.dir={tmp_path / 'runs'}",
    )
    assert proc.returncode == 1
    rows = latest_report(tmp_path / "runs")["jobs"]
    assert [r["status"] for r in rows] == ["failed", "skipped"]
    assert "fail_fast" in rows[1]["error"]
    assert 'skipped="1"' in (tmp_path / "runs" / "latest" / "junit.xml").read_text()


@pytest.mark.slow
def test_decoder_that_cannot_be_exported_fails_clearly_and_the_run_completes(smoke, tmp_path):
    """Falcon's static-cache export fails in torch.export (measured); tiny-llama, cached by the
    smoke run, still completes in the same run."""
    import transformers

    cfg = transformers.FalconConfig(
        vocab_size=256, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=128
    )
    transformers.FalconForCausalLM(cfg).save_pretrained(tmp_path / "tiny-falcon")
    proc = run_cli(
        "+sweep=smoke",
        f"matrix.models=[tiny-llama,{{id: '{tmp_path / 'tiny-falcon'}', task: text-generation}}]",
        "matrix.exclude=[]",
        "matrix.include=[]",
        "matrix.shapes=[{batch_size:2,sequence_length:48}]",
        "matrix.cast_types=[fp32]",
        f"report.dir={tmp_path / 'runs'}",
        env=smoke["env"],
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    rows = {r["model"]: r for r in latest_report(tmp_path / "runs")["jobs"]}
    assert rows["tiny-llama"]["status"] == "cached"
    assert rows["tiny-falcon"]["status"] == "failed" and rows["tiny-falcon"]["attempts"] == 1
    assert (
        "compile failed: DecoderExportError" in rows["tiny-falcon"]["error"]
        and "Falcon" in rows["tiny-falcon"]["error"]
    )


@pytest.mark.slow
def test_gpt2_decoder_through_the_cli_fp32_exact_bf16_recorded(tiny_models, tmp_path):
    """The smoke sweep covers the tiny Llama; GPT-2's architecture goes through the CLI here."""
    proc = run_cli(
        "matrix.models=[tiny-gpt2]",
        "matrix.shapes=[{batch_size:2,sequence_length:48}]",
        "matrix.cast_types=[fp32,bf16]",
        f"cache.dir={tmp_path / 'cache'}",
        f"report.dir={tmp_path / 'runs'}",
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = {r["cast_type"]: r for r in latest_report(tmp_path / "runs")["jobs"]}
    assert rows["fp32"]["status"] == "passed" and rows["bf16"]["status"] == "passed"
    fp32 = rows["fp32"]["metrics"]["generated"]
    assert fp32["exact"] and fp32["agreement_length"] == fp32["compared_tokens"] == 32
    bf16 = rows["bf16"]["metrics"]["generated"]
    assert {"agreement_length", "agreement_rate", "token_agreement"} <= set(bf16)
