"""Hub faults produced for real on the loopback server (tests/hubserver.py fault injection) with
the real huggingface_hub client: 5xx, 429 + Retry-After, a stale parent from a concurrent
writer, a response slower than the client timeout, a connection reset during the upload.

Each publish is retried within MAX_ATTEMPTS and ends as a published row or a clear
failed-to-publish row, and a repo never shows part of a variant: at the end each repo's file
list holds the whole variant or none of it.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path

# Client settings must be in the environment before huggingface_hub reads its constants.
os.environ["HF_HUB_DISABLE_XET"] = "1"
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

import pytest  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from hub_fixtures import TOKEN, HubProc, hub_client_online, one_entry  # noqa: E402,F401

from pipeline import hub as hub_client  # noqa: E402
from pipeline import publish, shared_cache  # noqa: E402
from pipeline.cache import Cache  # noqa: E402

pytestmark = pytest.mark.reliability
VARIANT = "tiny-bert-inductor-fp32-b1-s16"


@pytest.fixture(scope="module", autouse=True)
def _hub_client_online():
    with hub_client_online():
        yield


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    p = HubProc(tmp_path_factory.mktemp("faults-hubroot"))
    yield p
    p.stop()


@pytest.fixture(autouse=True)
def _env(tmp_path, monkeypatch, server):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    monkeypatch.setenv("PIPELINE_PUBLISH_BACKOFF_S", "0.01")
    yield
    server.clear_faults()


@pytest.fixture
def cache(one_entry, tmp_path) -> Path:
    ignore = shutil.ignore_patterns(".locks", ".tmp")
    return Path(shutil.copytree(one_entry["cache"], tmp_path / "cache", ignore=ignore))


def publish_once(one_entry, cache: Path, server: HubProc, ns: str, cache_repo: bool = True) -> tuple[dict, float]:
    rows = json.loads(json.dumps(one_entry["rows"]))
    for row in rows:
        row.update(status="passed", artifact=str(Cache(cache).entry_dir(row["key"])), published=None)
    pc = {"name": "hub", "dry_run": False, "dir": "unused", "namespace": ns, "endpoint": server.url}
    pc.update(repo_template=publish.DEFAULT_REPO_TEMPLATE, cache_repo=f"{ns}/cache" if cache_repo else None)
    start = time.monotonic()
    publish.publish_rows(rows, json.loads(json.dumps(one_entry["jobs"])), {"publish": pc})
    return rows[0], time.monotonic() - start


def api_for(server: HubProc):
    from huggingface_hub import HfApi

    return HfApi(endpoint=server.url, token=TOKEN)


def whole_or_nothing(one_entry, server: HubProc, ns: str) -> dict[str, bool]:
    """Assert each repo holds the whole variant or none of it; return which repos hold it."""
    job = one_entry["jobs"][0]
    manifest = json.loads((Cache(one_entry["cache"]).entry_dir(job["key"]) / "manifest.json").read_text())
    entry = {rel for rel in manifest["files"] if not rel.startswith("logs/")} | {"manifest.json"}
    api, out = api_for(server), {}
    variant = f"{ns}/{VARIANT}"
    files = set(api.list_repo_files(variant)) if api.repo_exists(variant) else set()
    assert files in (set(), entry | {"README.md"}), files
    out["variant"] = bool(files)
    if api.repo_exists(f"{ns}/cache"):
        prefix = shared_cache.cache_path(job["spec"], job["key"]) + "/"
        files = {f[len(prefix) :] for f in api.list_repo_files(f"{ns}/cache") if f.startswith(prefix)}
        assert files in (set(), entry), files
        out["cache"] = bool(files)
    return out


def test_500_then_success(one_entry, cache, server, capsys):
    server.faults(commit_status=[500])
    before = server.stats()
    row, _ = publish_once(one_entry, cache, server, "f500")
    assert capsys.readouterr().out == ""  # retries print nothing either
    assert row["status"] == "passed" and row["published"]["status"] == "published", row.get("error")
    stats = server.stats()
    assert stats["faults_injected"] == before["faults_injected"] + 1
    assert stats["commit_requests"]["f500/cache"] == 2 and stats["commits"]["f500/cache"] == 1
    assert stats["commits"][f"f500/{VARIANT}"] == 1
    assert whole_or_nothing(one_entry, server, "f500") == {"variant": True, "cache": True}


def test_500_every_time_fails_after_max_attempts_and_shows_nothing(one_entry, cache, server):
    server.faults(commit_status=[500] * hub_client.MAX_ATTEMPTS)
    row, elapsed = publish_once(one_entry, cache, server, "f500x")
    assert row["status"] == "failed-to-publish"
    assert f"after {hub_client.MAX_ATTEMPTS} attempts" in row["error"] and "500" in row["error"]
    assert "f500x/cache" in row["error"] and TOKEN not in row["error"]
    assert server.stats()["commit_requests"]["f500x/cache"] == hub_client.MAX_ATTEMPTS
    assert elapsed < 10
    assert whole_or_nothing(one_entry, server, "f500x") == {"variant": False, "cache": False}
    assert Cache(cache).lookup(row["key"])[0] is not None  # the local entry stays valid


def test_429_waits_for_retry_after_then_succeeds(one_entry, cache, server):
    server.faults(commit_status=[429], retry_after=1)
    row, _ = publish_once(one_entry, cache, server, "f429")
    assert row["status"] == "passed", row.get("error")
    first, second = server.stats()["commit_request_times"]["f429/cache"]
    assert 1.0 <= second - first < 2.0, second - first  # waited what the server asked (backoff alone: ~0.01 s)
    assert whole_or_nothing(one_entry, server, "f429") == {"variant": True, "cache": True}


def test_429_asking_for_longer_than_the_cap_fails_at_once(one_entry, cache, server):
    server.faults(commit_status=[429], retry_after=3600)
    row, elapsed = publish_once(one_entry, cache, server, "f429x", cache_repo=False)
    assert row["status"] == "failed-to-publish" and "rate limited (HTTP 429)" in row["error"]
    assert "3600 s" in row["error"] and elapsed < 5
    assert server.stats()["commit_requests"][f"f429x/{VARIANT}"] == 1
    assert whole_or_nothing(one_entry, server, "f429x") == {"variant": False}


def test_stale_parent_from_a_concurrent_writer_then_success(one_entry, cache, server):
    server.faults(commit_race=1)  # another commit lands between our head read and our commit: a real 412
    row, _ = publish_once(one_entry, cache, server, "f412")
    assert row["status"] == "passed", row.get("error")
    stats = server.stats()
    assert stats["commit_requests"]["f412/cache"] == 2 and stats["commits"]["f412/cache"] == 1
    titles = [c.title for c in api_for(server).list_repo_commits("f412/cache")]
    assert titles[:2] == ["Add 1 compiled entry", "concurrent writer"], titles
    assert whole_or_nothing(one_entry, server, "f412") == {"variant": True, "cache": True}


def test_response_slower_than_the_client_timeout(one_entry, cache, server, monkeypatch):
    monkeypatch.setenv("PIPELINE_HUB_TIMEOUT_S", "1")
    server.faults(commit_slow_s=[3.0])
    row, elapsed = publish_once(one_entry, cache, server, "fslow", cache_repo=False)
    assert row["status"] == "passed", row.get("error")
    first, second = server.stats()["commit_request_times"][f"fslow/{VARIANT}"]
    assert 1.0 <= second - first < 2.0 and elapsed < 2.9, (second - first, elapsed)  # gave up after ~1 s, not 3
    time.sleep(max(0.0, 3.5 - elapsed))  # the abandoned request now runs: its parent is stale
    stats = server.stats()
    assert stats["commit_requests"][f"fslow/{VARIANT}"] == 2 and stats["commits"][f"fslow/{VARIANT}"] == 1
    assert whole_or_nothing(one_entry, server, "fslow") == {"variant": True}


def test_connection_reset_mid_upload_then_success(one_entry, cache, server):
    server.faults(commit_reset=["mid-body"])
    row, _ = publish_once(one_entry, cache, server, "freset")
    assert row["status"] == "passed", row.get("error")
    stats = server.stats()
    assert stats["commit_requests"]["freset/cache"] == 2 and stats["commits"]["freset/cache"] == 1
    assert whole_or_nothing(one_entry, server, "freset") == {"variant": True, "cache": True}


def test_connection_reset_every_time_fails_and_shows_nothing(one_entry, cache, server):
    server.faults(commit_reset=["mid-body"] * hub_client.MAX_ATTEMPTS)
    row, _ = publish_once(one_entry, cache, server, "fresetx", cache_repo=False)
    assert row["status"] == "failed-to-publish"
    assert f"after {hub_client.MAX_ATTEMPTS} attempts" in row["error"] and f"fresetx/{VARIANT}" in row["error"]
    assert whole_or_nothing(one_entry, server, "fresetx") == {"variant": False}


def test_connection_reset_after_the_commit_landed(one_entry, cache, server):
    server.faults(commit_reset=["after"])  # applied, but the answer is lost: the retry finds it there
    row, _ = publish_once(one_entry, cache, server, "flost", cache_repo=False)
    assert row["status"] == "passed" and row["published"]["status"] == "published", row.get("error")
    stats = server.stats()
    assert stats["commit_requests"][f"flost/{VARIANT}"] == 1 and stats["commits"][f"flost/{VARIANT}"] == 1
    assert row["published"]["commit"] == api_for(server).repo_info(f"flost/{VARIANT}").sha
    assert whole_or_nothing(one_entry, server, "flost") == {"variant": True}
