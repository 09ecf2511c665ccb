"""The local executor's worker processes: one process serves several jobs in turn
(executor.jobs_per_process), is let go after a failure, and gives the same results as a fresh
process per job. Real compiles of a tiny BERT through the CLI."""

from __future__ import annotations

import pytest
from conftest import cli_env, latest_report, run_cli

pytestmark = pytest.mark.slow

TINY = ["+model=tiny-bert", "matrix.shapes=[{batch_size: 1, sequence_length: 16}]"]


def _run(tmp_path, name: str, *args: str):
    env = cli_env(
        PIPELINE_CACHE_DIR=str(tmp_path / f"{name}-cache"), PIPELINE_REPORT_DIR=str(tmp_path / f"{name}-runs")
    )
    proc = run_cli(*TINY, *args, env=env)
    return proc, latest_report(tmp_path / f"{name}-runs")


def test_a_worker_process_serves_jobs_in_turn_and_is_replaced_after_a_failure(tmp_path, tiny_models):
    # bf16's gate is made impossible: the second job fails, so its process must not take the third
    proc, report = _run(
        tmp_path,
        "reuse",
        "matrix.cast_types=[fp32,bf16,fp16]",
        "executor.jobs_per_process=8",
        "verify.tolerances.bf16.min_cosine=1.5",
    )
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
    fp32, bf16, fp16 = report["jobs"]
    assert [fp32["status"], bf16["status"], fp16["status"]] == ["passed", "failed", "passed"]
    assert bf16["attempts"] == 1, "a deterministic failure is not retried"
    assert fp32["pid"] == bf16["pid"], "the second job did not reuse the first job's process"
    assert fp16["pid"] != bf16["pid"], "a process whose job failed was reused"
    assert [fp32["timings"]["jobs_in_process"], bf16["timings"]["jobs_in_process"]] == [1, 2]

    # the job that ran second in a process, run again alone in a fresh process: the same outputs
    fresh_proc, fresh = _run(
        tmp_path,
        "fresh",
        "matrix.cast_types=[bf16]",
        "executor.jobs_per_process=1",
        "verify.tolerances.bf16.min_cosine=1.5",
    )
    (row,) = fresh["jobs"]
    assert row["key"] == bf16["key"] and row["timings"]["jobs_in_process"] == 1, fresh_proc.stdout[-2000:]
    assert row["metrics"] == bf16["metrics"] and row["metrics"], "a reused process gave other outputs than a fresh one"
