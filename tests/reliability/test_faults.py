"""Faults produced for real against the CLI: signals, killed pipelines and workers, concurrent
pipelines on one cache, a full disk, a memory cap, tampered local and shared-cache entries.

Every test runs `python -m pipeline` in a subprocess on tiny models (2-layer BERT, ~30 s a
compile on 2 cores) with its own cache and report dirs, and finds the processes it started by
a marker in their environment (/proc/<pid>/environ), so it can tell that none outlived the run.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from conftest import REPO, cli_env, latest_report, marked
from filelock import FileLock, Timeout

from pipeline.cache import MANIFEST, check_integrity, file_table

pytestmark = [pytest.mark.reliability, pytest.mark.slow]

TINY = ["+model=tiny-bert", "matrix.shapes=[{batch_size: 1, sequence_length: 16}]"]
TWO = [*TINY, "matrix.cast_types=[fp32,bf16]"]




class Run:
    def __init__(self, tmp: Path, *args: str, cache: Path | None = None, runs: Path | None = None, **env: str):
        self.marker = f"PIPELINE_TEST_MARK_{uuid.uuid4().hex}"
        self.cache, self.runs = cache or tmp / "cache", runs or tmp / "runs"
        self.env = cli_env(PIPELINE_CACHE_DIR=str(self.cache), PIPELINE_REPORT_DIR=str(self.runs), **env)
        self.env[self.marker] = "1"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pipeline", *args],
            cwd=REPO,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )

    def wait_for(self, what, timeout: float = 240) -> None:
        end = time.monotonic() + timeout
        while not what():
            assert self.proc.poll() is None, (
                f"the run ended (rc {self.proc.returncode}) before: {self.proc.stdout.read()}"
            )
            assert time.monotonic() < end, "timed out waiting"
            time.sleep(0.2)

    def compiling(self) -> bool:
        return any(self.cache.glob(".tmp/*/logs/compile.log"))

    def finish(self, timeout: float = 900) -> tuple[int, str]:
        out, _ = self.proc.communicate(timeout=timeout)
        return self.proc.returncode, out


def no_survivors(marker: str, within: float = 5) -> list[int]:
    end = time.monotonic() + within
    while (left := marked(marker)) and time.monotonic() < end:
        time.sleep(0.2)
    return left


def seeded(smoke, dest: Path, casts=("fp32", "bf16")) -> Path:
    """A cache holding the smoke run's tiny-bert b1 s16 entries (the TINY / TWO jobs), so a test
    that needs finished entries does not compile them again."""
    import shutil

    wanted = {r["key"] for r in smoke["report"]["jobs"] if r["model"] == "tiny-bert" and r["cast_type"] in casts
              and r["shapes"] == {"batch_size": 1, "sequence_length": 16}}  # fmt: skip
    assert len(wanted) == len(casts)
    for key in wanted:
        shutil.copytree(smoke["cache"] / key[:2] / key, dest / key[:2] / key, ignore=shutil.ignore_patterns("*.lock"))
    shutil.copytree(smoke["cache"] / ".refs", dest / ".refs")
    return dest


def locks_free(cache: Path, within: float = 5) -> bool:
    """Whether every key lock can be taken (a dead holder's flock is released).

    Waits up to `within` seconds: a process that is exiting has already lost its /proc environ
    (so `marked` no longer lists it) a moment before the kernel closes its files."""
    for path in (cache / ".locks").glob("*.lock"):
        try:
            with FileLock(str(path), timeout=within):
                pass
        except Timeout:
            return False
    return True


def entries_sound(cache: Path) -> list[str]:
    """Keys of every entry, after checking each one's files against its manifest."""
    keys = []
    for manifest in cache.glob(f"??/*/{MANIFEST}"):
        assert check_integrity(manifest.parent, json.loads(manifest.read_text())) is None, manifest.parent
        keys.append(manifest.parent.name)
    return sorted(keys)


@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_stops_the_run_kills_every_child_and_writes_the_report(tmp_path, tiny_models, signum, code):
    run = Run(tmp_path, *TWO)
    run.wait_for(run.compiling)
    time.sleep(2)  # inside the compile (export / Inductor / g++)
    sent = time.monotonic()
    run.proc.send_signal(signum)
    rc, out = run.finish(timeout=60)
    assert rc == code, out[-2000:]
    assert time.monotonic() - sent < 15, "the run did not stop within a few seconds"
    assert no_survivors(run.marker) == [], "a worker, standby or verifier outlived the pipeline"
    report = latest_report(run.runs)
    statuses = [j["status"] for j in report["jobs"]]
    assert statuses == ["interrupted", "skipped"], statuses
    assert signal.Signals(signum).name in report["stopped"]
    assert (run.runs / "latest" / "junit.xml").is_file() and (run.runs / "latest" / "report.md").is_file()
    assert not list((run.cache / ".tmp").glob("*")), "temp dirs left behind"
    assert locks_free(run.cache)


def test_a_rerun_after_ctrl_c_reuses_every_finished_entry(tmp_path, smoke):
    cache = seeded(smoke, tmp_path / "cache", casts=("fp32",))  # the first job finished in an earlier run
    run = Run(tmp_path, *TWO, cache=cache)
    run.wait_for(run.compiling)  # the second one is compiling
    run.proc.send_signal(signal.SIGINT)
    rc, out = run.finish(timeout=60)
    assert rc == 130, out[-2000:]
    assert [j["status"] for j in latest_report(run.runs)["jobs"]] == ["cached", "interrupted"]
    again = Run(tmp_path, *TWO, cache=cache)
    rc, out = again.finish()
    assert rc == 0, out[-3000:]
    assert [j["status"] for j in latest_report(again.runs)["jobs"]] == ["cached", "passed"]
    assert len(entries_sound(again.cache)) == 2


def test_sigkill_of_the_pipeline_takes_its_children_and_a_rerun_completes(tmp_path, smoke):
    run = Run(tmp_path, *TWO, cache=seeded(smoke, tmp_path / "cache", casts=("fp32",)))
    run.wait_for(run.compiling)
    time.sleep(3)
    run.proc.kill()
    run.proc.wait()
    assert no_survivors(run.marker) == [], "workers outlived a SIGKILLed pipeline"
    assert locks_free(run.cache), "a key lock is still held"
    again = Run(tmp_path, *TWO, cache=run.cache)
    rc, out = again.finish()
    assert rc == 0, out[-3000:]
    assert len(entries_sound(again.cache)) == 2
    assert not list((again.cache / ".tmp").glob("*"))


@pytest.mark.parametrize("phase", ["compile", "verify"])
def test_a_killed_worker_is_retried_once_and_the_job_passes(tmp_path, tiny_models, phase):
    run = Run(tmp_path, *TINY, "executor.standby=false")

    def worker_pid() -> int | None:
        for pid in marked(run.marker):
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"pipeline.worker" in cmd and phase == "compile" and run.compiling():
                return pid
            if (
                b"pipeline.worker" in cmd
                and phase == "verify"
                and list(run.cache.glob(".tmp/*/.verify/inputs.safetensors"))
            ):
                return pid
        return None

    run.wait_for(lambda: worker_pid() is not None)
    os.kill(worker_pid(), signal.SIGKILL)
    rc, out = run.finish()
    assert rc == 0, out[-3000:]
    (row,) = latest_report(run.runs)["jobs"]
    assert row["status"] == "passed" and row["attempts"] == 2, row
    assert len(entries_sound(run.cache)) == 1
    assert no_survivors(run.marker) == []


@pytest.mark.parametrize("n", [2, 4])
def test_concurrent_pipelines_compile_each_key_exactly_once(tmp_path, tiny_models, n):
    cache = tmp_path / "cache"
    runs = [Run(tmp_path, *TWO, cache=cache, runs=tmp_path / f"runs{i}") for i in range(n)]
    results = [r.finish() for r in runs]
    assert all(rc == 0 for rc, _ in results), [out[-1500:] for _, out in results]
    rows = [row for r in runs for row in latest_report(r.runs)["jobs"]]
    by_key: dict[str, list[str]] = {}
    for row in rows:
        by_key.setdefault(row["key"], []).append(row["status"])
    assert len(by_key) == 2
    for key, statuses in by_key.items():
        assert sorted(statuses) == ["cached"] * (n - 1) + ["passed"], (key, statuses)
    assert len(entries_sound(cache)) == 2


def _tmpfs(path: Path, size: str) -> None:
    path.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here (needs root in a namespace that allows mounts): {proc.stderr!r}")


def test_a_full_cache_disk_fails_the_job_plainly_and_leaves_nothing_partial(tmp_path, tiny_models):
    cache = tmp_path / "small"
    _tmpfs(cache, "1m")
    try:
        run = Run(tmp_path, *TINY, "executor.standby=false", cache=cache)
        rc, out = run.finish()
        assert rc == 1, out[-2000:]
        (row,) = latest_report(run.runs)["jobs"]
        assert row["status"] == "failed" and "no space left on device" in row["error"], row
        assert row["attempts"] == 1, "a full disk is not transient"
        assert entries_sound(cache) == [] and not list((cache / ".tmp").glob("*")), "partial entry left"
        assert no_survivors(run.marker) == []
    finally:
        subprocess.run(["umount", "-l", str(cache)], check=False)


def test_a_full_report_disk_is_a_clear_error_not_a_half_plan(tmp_path, tiny_models):
    runs = tmp_path / "runs"
    _tmpfs(runs, "64k")
    try:
        (runs / "filler").write_bytes(b"\0" * 60_000)  # leave too little for plan.json
        run = Run(tmp_path, *TINY, "matrix.cast_types=[fp32,bf16,fp16]", runs=runs)
        rc, out = run.finish()
        assert rc == 3, out[-2000:]
        assert "plan.json" in out and "No space left" in out
        assert not (runs / "latest").exists(), "latest points at a run whose plan could not be written"
        assert not [p for p in runs.rglob("plan.json") if p.stat().st_size == 0]
    finally:
        subprocess.run(["umount", "-l", str(runs)], check=False)


def test_a_worker_over_its_memory_cap_is_reported_out_of_memory(tmp_path, tiny_models):
    """The cap is 1 GB of address space: the worker's imports (~0.9 GB) fit, the job does not."""
    run = Run(tmp_path, *TINY, "executor.memory_limit_gb=1.0", "executor.standby=false")
    rc, out = run.finish()
    assert rc == 1, out[-2000:]
    (row,) = latest_report(run.runs)["jobs"]
    assert row["status"] == "failed" and row["error"].startswith("out of memory (executor.memory_limit_gb=1.0)"), row
    assert entries_sound(run.cache) == []


@pytest.mark.parametrize("damage", ["truncate", "bitflip", "delete"])
def test_a_damaged_local_entry_is_found_and_rebuilt(tmp_path, smoke, damage):
    cache = seeded(smoke, tmp_path / "cache", casts=("fp32",))
    (key,) = entries_sound(cache)
    victim = cache / key[:2] / key / "model.pt2"
    data = bytearray(victim.read_bytes())
    if damage == "truncate":
        victim.write_bytes(data[: len(data) // 2])
    elif damage == "bitflip":
        data[len(data) // 2] ^= 0x01
        victim.write_bytes(bytes(data))
    else:
        victim.unlink()
    again = Run(tmp_path, *TINY, cache=cache)
    rc, out = again.finish()
    assert rc == 0, out[-2000:]
    (row,) = latest_report(again.runs)["jobs"]
    assert row["status"] == "passed" and any("integrity check" in n for n in row["notes"]), row
    assert entries_sound(again.cache) == [key]


def _publish_local(tmp_path: Path, cache: Path, *extra: str) -> Run:
    return Run(tmp_path, *extra, "publish=local", f"publish.dir={tmp_path / 'shared'}", cache=cache)


def test_a_shared_entry_that_matches_its_manifest_but_gives_wrong_outputs_is_refused(tmp_path, smoke):
    """Someone with write access to the shared cache swaps the fp32 artifact for the bf16 one and
    rewrites the manifest's hashes: the files are 'intact', the outputs are not fp32's."""
    seed = _publish_local(tmp_path, seeded(smoke, tmp_path / "seed-cache"), *TWO)
    rc, out = seed.finish()
    assert rc == 0, out[-2000:]
    rows = {r["cast_type"]: r for r in latest_report(seed.runs)["jobs"]}
    shared = tmp_path / "shared" / "cache"
    fp32 = next(shared.glob(f"*/*/{rows['fp32']['key']}"))
    bf16 = next(shared.glob(f"*/*/{rows['bf16']['key']}"))
    (fp32 / "model.pt2").write_bytes((bf16 / "model.pt2").read_bytes())
    manifest = json.loads((fp32 / MANIFEST).read_text())
    manifest["files"] = file_table(fp32)
    (fp32 / MANIFEST).write_text(json.dumps(manifest))

    user = _publish_local(tmp_path, tmp_path / "user-cache", *TINY)
    rc, out = user.finish()
    assert rc == 0, out[-2000:]
    (row,) = latest_report(user.runs)["jobs"]
    assert row["status"] == "passed", row  # compiled here instead
    assert any("failed local re-verification" in n for n in row["notes"]), row["notes"]
    fetched = json.loads((user.cache / row["key"][:2] / row["key"] / MANIFEST).read_text())
    assert "fetched_from" not in fetched


def test_a_sound_shared_entry_is_fetched_and_reverified_not_compiled(tmp_path, smoke):
    seed = _publish_local(tmp_path, seeded(smoke, tmp_path / "seed-cache", casts=("fp32",)), *TINY)
    assert seed.finish()[0] == 0
    user = _publish_local(tmp_path, tmp_path / "user-cache", *TINY)
    rc, out = user.finish()
    assert rc == 0, out[-2000:]
    (row,) = latest_report(user.runs)["jobs"]
    assert row["status"] == "cached" and any("re-verified here" in n for n in row["notes"]), row
    assert "compile_s" not in row["timings"] and "verify_s" in row["timings"]
    manifest = json.loads((user.cache / row["key"][:2] / row["key"] / MANIFEST).read_text())
    assert manifest["fetched_from"]["source"].endswith("cache")


def test_a_truncated_shared_download_is_refused_by_its_manifest(tmp_path, smoke):
    seed = _publish_local(tmp_path, seeded(smoke, tmp_path / "seed-cache", casts=("fp32",)), *TINY)
    assert seed.finish()[0] == 0
    (entry,) = (tmp_path / "shared" / "cache").glob("*/*/*")
    data = (entry / "model.pt2").read_bytes()
    (entry / "model.pt2").write_bytes(data[:100])
    user = _publish_local(tmp_path, tmp_path / "user-cache", *TINY)
    rc, out = user.finish()
    assert rc == 0, out[-2000:]
    (row,) = latest_report(user.runs)["jobs"]
    assert row["status"] == "passed" and any("integrity check" in n and "model.pt2" in n for n in row["notes"]), row
