"""tests/hubserver.py as a subprocess (so a test can kill it mid-commit), a session server,
and one compiled cache entry for publisher tests.

Import the fixtures into a test module: ``from hub_fixtures import hub, HubProc, TOKEN``
(and ``one_entry``, which needs conftest's ``tiny_models``).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from pipeline import keys
from pipeline.cache import Cache

SERVER = Path(__file__).resolve().parent / "hubserver.py"
TOKEN = "hf_TestTokenDoNotLeak0123456789"


@contextlib.contextmanager
def hub_client_online():
    """Let the in-process huggingface_hub client talk to the loopback server.

    The suite runs with HF_HUB_OFFLINE=1 (no internet here), and huggingface_hub reads its
    environment once, at import, which an earlier test module may already have done: so the
    constants are flipped too, and restored afterwards."""
    import huggingface_hub.constants as c

    saved = (
        c.HF_HUB_OFFLINE,
        c.HF_HUB_DISABLE_XET,
        os.environ.get("HF_HUB_OFFLINE"),
        os.environ.get("HF_HUB_DISABLE_XET"),
    )
    c.HF_HUB_OFFLINE, c.HF_HUB_DISABLE_XET = False, True
    os.environ["HF_HUB_OFFLINE"], os.environ["HF_HUB_DISABLE_XET"] = "0", "1"
    try:
        yield
    finally:
        c.HF_HUB_OFFLINE, c.HF_HUB_DISABLE_XET = saved[0], saved[1]
        for name, value in (("HF_HUB_OFFLINE", saved[2]), ("HF_HUB_DISABLE_XET", saved[3])):
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


class HubProc:
    """A Hub-compatible server on 127.0.0.1 (random port) storing under `root`."""

    def __init__(self, root: Path, token: str | None = TOKEN):
        self.root = Path(root)
        args = [sys.executable, str(SERVER), "--port", "0", "--root", str(root)]
        if token:
            args += ["--token", token]
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, text=True)
        self.url = self.proc.stdout.readline().strip()
        assert self.url.startswith("http://127.0.0.1:"), self.url

    def test_api(self, path: str, body: dict | None = None, method: str | None = None) -> dict:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(
            self.url + path, data=data, method=method, headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(req, timeout=10) as r:
            return json.loads(r.read())

    def faults(self, **cfg) -> dict:
        return self.test_api("/_test/faults", cfg)

    def clear_faults(self) -> dict:
        return self.test_api("/_test/faults", method="DELETE")

    def stats(self) -> dict:
        return self.test_api("/_test/stats")

    def commits(self, repo: str) -> int:
        return self.stats()["commits"].get(repo, 0)

    def stop(self, sig=signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        rc = self.proc.wait(timeout=10)
        self.proc.stdout.close()
        return rc


@pytest.fixture(scope="session")
def hub(tmp_path_factory):
    """One token-protected server for the session; tests use their own repo names."""
    p = HubProc(tmp_path_factory.mktemp("hubroot"))
    yield p
    p.stop()


ONE_JOB = ["matrix.models=[tiny-bert]", "matrix.cast_types=[fp32]", "matrix.shapes=[{batch_size:1,sequence_length:16}]"]


@pytest.fixture(scope="session")
def one_entry(tiny_models, tmp_path_factory):
    """ONE compiled and verified entry (tiny-bert, b1 s16, fp32), in a cache under the test dir
    so that later sessions (and a second module importing this fixture) only get a cache hit.
    Tests that change the cache copy it first. Returns {cache, jobs, rows}."""
    from conftest import TEST_DIR, cli_env, latest_report, run_cli

    cache, runs = TEST_DIR / "publish-entry" / "cache", tmp_path_factory.mktemp("one-entry-runs")
    proc = run_cli(*ONE_JOB, f"cache.dir={cache}", f"report.dir={runs}", "publish=none", env=cli_env(), timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    jobs = json.loads((runs / "latest" / "plan.json").read_text())["jobs"]
    return {"cache": cache, "jobs": jobs, "rows": latest_report(runs)["jobs"]}


def fake_variant(job: dict, row: dict, cache: Path, batch_size: int) -> tuple[dict, dict]:
    """A second, distinct entry (its own spec and key) from a compiled entry's files: enough to
    publish, without paying for a second compile. Returns its (row, job), made from the given ones."""
    job = json.loads(json.dumps(job))
    c = Cache(cache)
    src = c.entry_dir(job["key"])
    manifest = json.loads((src / "manifest.json").read_text())
    spec = dict(manifest["spec"], shapes=dict(manifest["spec"]["shapes"], batch_size=batch_size))
    key = keys.key_of(spec)
    tmp = c.new_tmp(key)
    for p in src.iterdir():
        if p.is_file() and p.name != "manifest.json" and not p.name.startswith("."):
            shutil.copy(p, tmp / p.name)
    base = {k: v for k, v in manifest.items() if k not in ("key", "files", "created_at")}
    dest = c.commit(key, tmp, dict(base, spec=spec))
    job.update(key=key, spec=spec, shapes=spec["shapes"])
    return dict(row, key=key, shapes=spec["shapes"], artifact=str(dest)), job

