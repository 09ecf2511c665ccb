"""`executor=ray` against a real Ray cluster on 127.0.0.1: `ray start --head` plus one worker node
process (1 CPU each, token auth, every Ray process listening on loopback only), torn down after.

The CLI runs as a user runs it (`python -m pipeline ... executor=ray executor.address=...`) on a
small matrix (tiny-bert, b1 s16; ~30 s a compile on 2 cores), each test with its own cache and
report dirs. Ray's processes carry a marker in their environment (/proc/<pid>/environ), so the
fixture ends exactly the processes it started (never `ray stop`, which stops every Ray on the
machine) and the tests can tell which task processes are left.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest
from conftest import REPO, cli_env, latest_report, marked
from hub_fixtures import TOKEN, hub, hub_client_online, one_entry  # noqa: F401

pytest.importorskip("ray", reason="executor=ray needs the ray extra: pip install -e '.[ray]'")

from pipeline.cache import MANIFEST, Cache, check_integrity  # noqa: E402
from pipeline.executors.ray import _run_job, fetch_exchanged, push_entry  # noqa: E402
from pipeline.obtain import worker_payload  # noqa: E402

pytestmark = pytest.mark.slow

RAY = Path(sys.executable).parent / "ray"
TINY = ["+model=tiny-bert", "matrix.shapes=[{batch_size: 1, sequence_length: 16}]"]
TWO = [*TINY, "matrix.cast_types=[fp32,bf16]"]
THREE = [*TINY, "matrix.cast_types=[fp32,bf16,fp16]"]




def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cluster_pids(cluster: dict) -> list[int]:
    """The cluster's processes: the marker in their environment, or (Ray's process titles can
    overwrite the environment's memory) its temp dir in their command line or working dir."""
    temp, out = str(cluster["temp"]), set(marked(cluster["marker"]))
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                cwd = os.readlink(d / "cwd")
            except OSError:
                continue
            if cwd.startswith(temp) or temp in cmdline(int(d.name)):
                out.add(int(d.name))
    return sorted(p for p in out if p != os.getpid())


def _stop(cluster: dict) -> None:
    """End exactly the processes the fixture started (Ray's agents ignore SIGTERM: then SIGKILL)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in cluster_pids(cluster):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        end = time.monotonic() + 5
        while cluster_pids(cluster) and time.monotonic() < end:
            time.sleep(0.2)


@pytest.fixture(scope="module")
def cluster():
    """A head node and one worker node on 127.0.0.1, each with 1 CPU. Ray rewrites 127.0.0.1 to
    the machine's outbound address unless told the cluster is local-only (the head's and the
    drivers' RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0, which `ray start --address` refuses): the worker
    node joins through 127.0.0.01, the same address in a spelling Ray does not rewrite."""
    marker = f"PIPELINE_RAY_TEST_{uuid.uuid4().hex}"
    temp = Path(tempfile.mkdtemp(prefix="ray-", dir="/tmp"))  # short: Ray's unix socket paths live under it
    port = free_port()
    env = cli_env(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32), RAY_USAGE_STATS_ENABLED="0",
                  RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0")  # fmt: skip  (the head's and every driver's)
    cluster = {"address": f"127.0.0.1:{port}", "env": env, "marker": marker, "temp": temp}
    try:
        for args, extra in (
            (["--head", "--node-ip-address=127.0.0.1", f"--port={port}", "--include-dashboard=false",
              "--disable-usage-stats"], {}),
            ([f"--address=127.0.0.01:{port}"], {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "1"}),
        ):  # fmt: skip
            proc = subprocess.run([str(RAY), "start", *args, "--num-cpus=1", f"--temp-dir={temp}"], cwd=temp,
                                  env=dict(env, **extra, **{marker: "1"}), capture_output=True, text=True,
                                  timeout=180)  # fmt: skip
            assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        yield cluster
    finally:
        _stop(cluster)
        shutil.rmtree(temp, ignore_errors=True)


def test_every_ray_process_listens_on_loopback_only(cluster):
    pids = {str(p) for p in cluster_pids(cluster)}
    out = subprocess.run(["ss", "-Hltnp"], capture_output=True, text=True).stdout if shutil.which("ss") else ""
    if not out:
        pytest.skip("ss is not available")
    ours = [line for line in out.splitlines() if any(f"pid={p}," in line for p in pids)]
    assert ours, out
    assert all(line.split()[3].rsplit(":", 1)[0] in ("127.0.0.1", "[::ffff:127.0.0.1]") for line in ours), ours


class Run:
    """`python -m pipeline ARGS executor=ray` against the cluster, with its own cache and reports."""

    def __init__(self, cluster: dict, tmp: Path, *args: str, name: str = "ray", **env: str):
        self.cache, self.runs = tmp / f"{name}-cache", tmp / f"{name}-runs"
        ray_args = ["executor=ray", f"executor.address={cluster['address']}"] if name == "ray" else []
        self.env = dict(cluster["env"], PIPELINE_CACHE_DIR=str(self.cache), PIPELINE_REPORT_DIR=str(self.runs), **env)
        self.proc = subprocess.Popen([sys.executable, "-m", "pipeline", *args, *ray_args], cwd=REPO, env=self.env,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip

    def finish(self, timeout: float = 900) -> tuple[int, str]:
        out, _ = self.proc.communicate(timeout=timeout)
        return self.proc.returncode, out

    def rows(self) -> list[dict]:
        return latest_report(self.runs)["jobs"]

    def wait_for(self, what, timeout: float = 300):
        end = time.monotonic() + timeout
        while not (found := what()):
            assert self.proc.poll() is None, f"the run ended (rc {self.proc.returncode}): {self.proc.stdout.read()}"
            assert time.monotonic() < end, "timed out waiting"
            time.sleep(0.2)
        return found

    def verifiers(self) -> list[int]:
        """pids of the verifying processes of this run's jobs (started when a job's compile starts)."""
        mine = f"pipeline.verify --standby inductor {self.cache}/"
        return [int(d.name) for d in Path("/proc").iterdir() if d.name.isdigit() and mine in cmdline(int(d.name))]

    def compiling(self) -> list[int]:
        return self.verifiers() if list(self.cache.glob(".tmp/*/logs/compile.log")) else []


def task_processes(cluster: dict) -> list[str]:
    """Ray worker processes of the cluster that are running one of our jobs (`ray::pipeline-<key>`)."""
    return [c for p in cluster_pids(cluster) if (c := cmdline(p)).startswith("ray::pipeline-")]


def files_of(artifact: str) -> list[str]:
    folder = Path(artifact)
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file() and p.parts[-2] != "logs")


def test_ray_runs_the_matrix_like_the_local_executor(cluster, tiny_models, tmp_path):
    ray = Run(cluster, tmp_path, *TWO, "executor.workers=2")
    rc, out = ray.finish()
    assert rc == 0, out[-3000:]
    local = Run(cluster, tmp_path, *TWO, name="local")
    rc, out = local.finish()
    assert rc == 0, out[-3000:]
    rows, expected = ray.rows(), local.rows()
    assert [r["key"] for r in rows] == [r["key"] for r in expected]
    assert [r["status"] for r in rows] == [r["status"] for r in expected] == ["passed", "passed"]
    assert [set(r) for r in rows] == [set(r) for r in expected], "rows differ in shape"
    assert [r["attempts"] for r in rows] == [1, 1]
    assert all(r["timings"]["wall_s"] >= r["timings"]["total_s"] for r in rows)
    for r, e in zip(rows, expected):
        assert Path(r["artifact"]).parent.parent == ray.cache and files_of(r["artifact"]) == files_of(e["artifact"])
        assert check_integrity(Path(r["artifact"]), json.loads((Path(r["artifact"]) / MANIFEST).read_text())) is None
    assert task_processes(cluster) == []
    again = Run(cluster, tmp_path, *TWO, "executor.workers=2")  # every job a hit: answered without Ray
    rc, out = again.finish(timeout=120)
    assert rc == 0, out[-3000:]
    assert [r["status"] for r in again.rows()] == ["cached", "cached"]


def test_the_smoke_sweep_through_ray_gives_the_keys_and_statuses_of_the_local_run(cluster, smoke, tmp_path):
    run = Run(cluster, tmp_path, "+sweep=smoke", f"cache.dir={smoke['cache']}")
    rc, out = run.finish(timeout=300)
    assert rc == 0, out[-3000:]
    rows, expected = run.rows(), smoke["report"]["jobs"]
    assert [r["key"] for r in rows] == [r["key"] for r in expected] and len(rows) == 14
    assert {r["status"] for r in rows} == {"cached"}
    assert [files_of(r["artifact"]) for r in rows] == [files_of(r["artifact"]) for r in expected]


def test_a_killed_ray_worker_is_retried_and_the_run_completes(cluster, tiny_models, tmp_path):
    fresh = {"TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "inductor")}  # a cold compile: time to kill it
    run = Run(cluster, tmp_path, *TINY, "matrix.cast_types=[fp32]", **fresh)
    (verifier,) = run.wait_for(run.compiling)
    time.sleep(2)  # inside the compile
    worker = int(Path(f"/proc/{verifier}/stat").read_text().rsplit(")", 1)[1].split()[1])
    assert cmdline(worker).startswith("ray::pipeline-"), cmdline(worker)
    os.kill(worker, signal.SIGKILL)
    rc, out = run.finish()
    assert rc == 0, out[-3000:]
    (row,) = run.rows()
    assert row["status"] == "passed" and row["attempts"] == 2, row
    assert row["pid"] != worker and any("Ray retried" in n for n in row["notes"]), row
    assert not list((run.cache / ".tmp").glob("*")), "temp dirs left behind"
    assert Cache(run.cache).failure(row["key"]) is None


def test_a_job_that_fails_deterministically_is_not_retried(cluster, tiny_models, tmp_path):
    tolerance = ["verify.tolerances.fp32.atol=1e-30", "verify.tolerances.fp32.rtol=0"]
    run = Run(cluster, tmp_path, *TINY, "matrix.cast_types=[fp32]", *tolerance)
    rc, out = run.finish()
    assert rc == 1, out[-3000:]
    (row,) = run.rows()
    assert row["status"] == "failed" and row["attempts"] == 1, row
    assert "verification failed" in row["error"] and not any("Ray retried" in n for n in row["notes"]), row
    assert "verification failed" in Cache(run.cache).failure(row["key"])["error"]


def test_ctrl_c_cancels_the_running_and_the_queued_ray_tasks(cluster, tiny_models, tmp_path):
    fresh = {"TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "inductor")}
    run = Run(cluster, tmp_path, *THREE, "executor.workers=3", **fresh)  # 2 CPUs: two run, one waits in Ray
    run.wait_for(lambda: len(run.verifiers()) == 2 and run.compiling())
    time.sleep(2)
    sent = time.monotonic()
    run.proc.send_signal(signal.SIGINT)
    rc, out = run.finish(timeout=60)
    assert rc == 130, out[-2000:]
    assert time.monotonic() - sent < 15, "the run did not stop within a few seconds"
    end = time.monotonic() + 10
    while (task_processes(cluster) or run.verifiers()) and time.monotonic() < end:
        time.sleep(0.2)
    assert task_processes(cluster) == [] and run.verifiers() == [], "a task of the run is still running"
    report = latest_report(run.runs)
    assert sorted(r["status"] for r in report["jobs"]) == ["interrupted", "interrupted", "skipped"]
    assert "SIGINT" in report["stopped"]
    assert (run.runs / "latest" / "junit.xml").is_file() and (run.runs / "latest" / "report.md").is_file()
    assert not list((run.cache / ".tmp").glob("*")), "temp dirs left behind"


def test_a_node_that_does_not_see_the_driver_cache_needs_a_shared_cache(tmp_path):
    payload = {"key": "ab" * 32, "cache_dir": str(tmp_path / "cache"), "shared_cache": {"source": None}}
    result = _run_job(payload, None, (str(tmp_path / "not-on-this-node"), "probe"))
    assert result["status"] == "failed" and "publish.cache_repo" in result["error"], result
    assert not (tmp_path / "cache").exists(), "nothing was built"


def test_without_a_shared_filesystem_entries_are_exchanged_through_the_hub_cache(hub, one_entry, tmp_path,
                                                                                 monkeypatch):  # fmt: skip
    """The task's half (push the entry it built to the cache repo) and the driver's half (fetch it
    into its own cache, never reading the node's disk), on one compiled entry."""
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    (job,) = one_entry["jobs"]
    node = Cache(tmp_path / "node-cache")  # the node's own disk
    shutil.copytree(Cache(one_entry["cache"]).entry_dir(job["key"]), node.entry_dir(job["key"]))
    publish_cfg = {"name": "hub", "dry_run": False, "cache_repo": "org/ray-exchange", "endpoint": hub.url}
    with hub_client_online():
        push_entry(worker_payload(job, node, publish_cfg), str(node.entry_dir(job["key"])), publish_cfg)
        shutil.rmtree(node.root)  # out of the driver's reach
        result = {"status": "passed", "exchange": "org/ray-exchange", "artifact": "/elsewhere", "node": "10.1.2.3"}
        got = fetch_exchanged(Cache(tmp_path / "driver-cache"), job, result, publish_cfg)
    folder = Path(got["artifact"])
    assert got["status"] == "passed" and folder == Cache(tmp_path / "driver-cache").entry_dir(job["key"]), got
    manifest = json.loads((folder / MANIFEST).read_text())
    assert check_integrity(folder, manifest) is None and manifest["key"] == job["key"]
    assert any("exchanged through the shared cache org/ray-exchange" in n for n in got["notes"])
