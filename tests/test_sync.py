"""mode=sync through the real CLI against the loopback Hub-compatible server: it pushes exactly
the verified local entries (never a failed, unverified or broken one), the platform index in
the same commit, to a repo created private; a second sync makes no commit."""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

os.environ["HF_HUB_DISABLE_XET"] = "1"  # before huggingface_hub reads its constants

import pytest  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conftest import cli_env, run_cli  # noqa: E402
from hub_fixtures import TOKEN, fake_variant, hub, hub_client_online, one_entry  # noqa: E402,F401

from pipeline import shared_cache  # noqa: E402
from pipeline.cache import Cache  # noqa: E402

REPO_ID = "sync/cache"


@pytest.fixture(scope="module", autouse=True)
def _hub_client_online():
    with hub_client_online():
        yield


def _env(url: str, tmp: Path) -> dict:
    return cli_env(HF_ENDPOINT=url, HF_TOKEN=TOKEN, HF_HUB_DISABLE_XET="1", HF_HUB_OFFLINE="0",
                   HF_HOME=str(tmp / "hf_home"), PIPELINE_PUBLISH_BACKOFF_S="0.05")  # fmt: skip


def _edit_manifest(cache: Cache, key: str, **changes) -> None:
    path = cache.entry_dir(key) / "manifest.json"
    path.write_text(json.dumps(dict(json.loads(path.read_text()), **changes)))


def _sync(cache: Path, tmp: Path, url: str, *extra: str):
    return run_cli("mode=sync", f"cache.dir={cache}", f"report.dir={tmp / 'runs'}", "publish=hub",
                   f"publish.cache_repo={REPO_ID}", *extra, env=_env(url, tmp), timeout=300)  # fmt: skip


def test_sync_pushes_exactly_the_verified_entries_once(one_entry, hub, tmp_path):
    from huggingface_hub import HfApi

    cache_dir = tmp_path / "cache"
    shutil.copytree(one_entry["cache"], cache_dir, ignore=shutil.ignore_patterns(".locks", ".tmp"))
    cache = Cache(cache_dir)
    job, row = one_entry["jobs"][0], dict(one_entry["rows"][0], status="passed")
    good = [job["key"], fake_variant(job, row, cache_dir, 2)[0]["key"]]
    failed = fake_variant(job, row, cache_dir, 3)[0]["key"]
    _edit_manifest(cache, failed, verification={"status": "failed"})
    unverified = fake_variant(job, row, cache_dir, 4)[0]["key"]
    _edit_manifest(cache, unverified, verification={"status": "passed", "local": "skipped"})
    off_gate = fake_variant(job, row, cache_dir, 5)[0]["key"]
    _edit_manifest(cache, off_gate, metrics={"last_hidden_state": {"nonfinite": 3}})
    cache.record_failure("f" * 64, {"key": "f" * 64, "spec": job["spec"], "error": "compile failed"})

    before = hub.commits(REPO_ID)
    dry = _sync(cache_dir, tmp_path, hub.url, "publish.dry_run=true")
    assert dry.returncode == 0 and "2 would push" in dry.stdout, dry.stdout[-3000:] + dry.stderr[-3000:]
    assert hub.commits(REPO_ID) == before and f"{shared_cache.platform_tag(job['spec'])}/" in dry.stdout

    proc = _sync(cache_dir, tmp_path, hub.url)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert hub.commits(REPO_ID) == before + 1  # every entry and the index: one commit
    api = HfApi(endpoint=hub.url, token=TOKEN)
    assert api.repo_info(REPO_ID).private  # publish.private defaults to true
    files = api.list_repo_files(REPO_ID)
    tag = shared_cache.platform_tag(job["spec"])
    pushed = {f.split("/")[2] for f in files if f.endswith("/manifest.json")}
    assert pushed == set(good), (pushed, good)
    index = json.loads(Path(api.hf_hub_download(REPO_ID, f"{tag}/index.json", cache_dir=tmp_path / "dl")).read_text())
    assert set(index["entries"]) == set(good)
    for key, why in ((failed, "verification failed"), (unverified, "not re-verified"), (off_gate, "current gate")):
        line = next(x for x in proc.stdout.splitlines() if x.startswith("not pushed") and key[:12] in x)
        assert why in line, line
    assert "2 pushed" in proc.stdout and "3 not pushed" in proc.stdout, proc.stdout
    assert TOKEN not in proc.stdout + proc.stderr

    head = api.repo_info(REPO_ID).sha
    again = _sync(cache_dir, tmp_path, hub.url)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert hub.commits(REPO_ID) == before + 1 and api.repo_info(REPO_ID).sha == head  # no second commit
    assert "2 unchanged" in again.stdout, again.stdout

    public = run_cli("mode=sync", f"cache.dir={cache_dir}", "publish=hub", "publish.cache_repo=sync/public-cache",
                     "publish.private=false", env=_env(hub.url, tmp_path), timeout=300)  # fmt: skip
    assert public.returncode == 0, public.stdout[-3000:] + public.stderr[-3000:]
    assert not api.repo_info("sync/public-cache").private  # created public only when asked


def test_sync_without_a_cache_repo_is_a_usage_error(tmp_path):
    proc = run_cli("mode=sync", f"cache.dir={tmp_path / 'cache'}", "publish=hub", env=cli_env())
    assert proc.returncode == 2 and "publish.cache_repo" in proc.stderr, proc.stdout + proc.stderr
    proc = run_cli("mode=sync", "publish=hub", "publish.cache_repo=../x", env=cli_env())
    assert proc.returncode == 2 and "not a valid Hub repo id" in proc.stderr, proc.stdout + proc.stderr
