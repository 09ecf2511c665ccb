"""tests/hubserver.py as a subprocess (so a test can kill it mid-commit), and a session server.

Import the fixture into a test module: ``from hub_fixtures import hub, HubProc, TOKEN``.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

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
