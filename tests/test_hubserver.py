"""Tests of tests/hubserver.py driven by the real huggingface_hub client (no mocks).

Why: the pipeline's Hub-facing code is tested against this server, so the server itself
must be proven to speak the protocol the installed client expects (request shapes, error
codes -> exception classes, commit atomicity).
"""

from __future__ import annotations

import hashlib
import os
import signal
import sys
import threading
import time
import urllib.error
from pathlib import Path

# Client settings must be in the environment before huggingface_hub reads its constants.
os.environ["HF_HUB_DISABLE_XET"] = "1"
os.environ["HF_HUB_OFFLINE"] = "0"
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

import pytest  # noqa: E402
from huggingface_hub import (  # noqa: E402
    CommitOperationAdd,
    CommitOperationDelete,
    HfApi,
    hf_hub_download,
    snapshot_download,
)
from huggingface_hub.errors import (  # noqa: E402
    EntryNotFoundError,
    HfHubHTTPError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

sys.path.insert(0, str(Path(__file__).resolve().parent))
from hub_fixtures import TOKEN, hub_client_online  # noqa: E402  (the server as a subprocess)
from hub_fixtures import HubProc as Proc


@pytest.fixture(scope="module", autouse=True)
def _hub_client_online():
    with hub_client_online():
        yield


from hubserver import start_server  # noqa: E402

SERVER = Path(__file__).resolve().parent / "hubserver.py"


@pytest.fixture(autouse=True)
def _isolated_hf_home(tmp_path, monkeypatch):
    # Keep any real token / cache of the machine out of the tests.
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    monkeypatch.delenv("HF_TOKEN", raising=False)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    p = Proc(tmp_path_factory.mktemp("hubroot"))
    yield p
    p.stop()


@pytest.fixture
def api(server):
    return HfApi(endpoint=server.url, token=TOKEN)


_counter = iter(range(10**6))


@pytest.fixture
def repo(api):
    repo_id = f"org/repo-{next(_counter)}"
    api.create_repo(repo_id)
    return repo_id


def test_create_repo_exist_ok_and_whoami(api, server):
    url = api.create_repo("org/created")
    assert url.repo_id == "org/created" and url.startswith(server.url)
    with pytest.raises(HfHubHTTPError) as e:
        api.create_repo("org/created")
    assert e.value.response.status_code == 409
    assert api.create_repo("org/created", exist_ok=True).repo_id == "org/created"
    assert api.repo_exists("org/created") and not api.repo_exists("org/missing")
    assert api.whoami()["name"] == "tester"
    with pytest.raises(RepositoryNotFoundError):
        api.model_info("org/missing")


def test_commit_tree_paths_info_and_downloads(api, server, repo, tmp_path):
    big = os.urandom(5 * 1024 * 1024)
    files = {
        "README.md": b"---\nlicense: mit\n---\n# card\n",
        "config.json": b'{"a": 1}',
        "sub/dir/weights.bin": big,
        "sub/notes.txt": b"notes\n",
    }
    info = api.create_commit(repo, [CommitOperationAdd(p, c) for p, c in files.items()], commit_message="add")
    assert api.model_info(repo).sha == info.oid

    tree = {e.path: e for e in api.list_repo_tree(repo, recursive=True)}
    assert set(tree) == set(files) | {"sub", "sub/dir"}
    assert tree["sub/dir/weights.bin"].size == len(big)
    top = {e.path for e in api.list_repo_tree(repo)}
    assert top == {"README.md", "config.json", "sub"}
    assert {e.path for e in api.list_repo_tree(repo, "sub")} == {"sub/dir", "sub/notes.txt"}
    with pytest.raises(EntryNotFoundError):
        list(api.list_repo_tree(repo, "nope"))

    paths = api.get_paths_info(repo, ["config.json", "sub", "missing.txt"])
    assert {type(p).__name__: p.path for p in paths} == {"RepoFile": "config.json", "RepoFolder": "sub"}
    assert api.file_exists(repo, "sub/notes.txt") and not api.file_exists(repo, "sub/nope.txt")

    cache = tmp_path / "cache"
    for path, content in files.items():
        local = hf_hub_download(repo, path, endpoint=server.url, cache_dir=cache, token=TOKEN)
        assert Path(local).read_bytes() == content
    snap = Path(snapshot_download(repo, endpoint=server.url, cache_dir=tmp_path / "snap", token=TOKEN))
    assert {str(p.relative_to(snap)): p.read_bytes() for p in snap.rglob("*") if p.is_file()} == files
    with pytest.raises(EntryNotFoundError):
        hf_hub_download(repo, "missing.txt", endpoint=server.url, cache_dir=cache)
    with pytest.raises(RevisionNotFoundError):
        hf_hub_download(repo, "config.json", revision="nope", endpoint=server.url, cache_dir=cache)


def test_revision_by_sha_parent_commit_and_delete(api, server, repo, tmp_path):
    first = api.create_commit(repo, [CommitOperationAdd("w.txt", b"v1")], commit_message="v1")
    second = api.create_commit(repo, [CommitOperationAdd("w.txt", b"v2")], commit_message="v2", parent_commit=first.oid)
    old = hf_hub_download(repo, "w.txt", revision=first.oid, endpoint=server.url, cache_dir=tmp_path)
    assert Path(old).read_bytes() == b"v1"
    assert api.model_info(repo, revision=first.oid).sha == first.oid
    assert [c.title for c in api.list_repo_commits(repo)] == ["v2", "v1", "initial commit"]

    with pytest.raises(HfHubHTTPError) as e:
        api.create_commit(repo, [CommitOperationAdd("w.txt", b"v3")], commit_message="stale", parent_commit=first.oid)
    assert e.value.response.status_code == 412
    assert "A commit has happened since" in str(e.value)
    assert api.model_info(repo).sha == second.oid  # rejected commit changed nothing

    api.create_commit(repo, [CommitOperationDelete("w.txt")], commit_message="rm")
    assert api.list_repo_files(repo) == []
    with pytest.raises(EntryNotFoundError):
        api.create_commit(repo, [CommitOperationDelete("w.txt")], commit_message="rm again")


def test_branches_and_tags(api, server, repo, tmp_path):
    base = api.create_commit(repo, [CommitOperationAdd("a.txt", b"main")], commit_message="main")
    api.create_branch(repo, branch="dev")
    api.create_branch(repo, branch="dev", exist_ok=True)
    dev = api.create_commit(repo, [CommitOperationAdd("a.txt", b"dev")], commit_message="dev", revision="dev")
    refs = api.list_repo_refs(repo)
    assert {b.name: b.target_commit for b in refs.branches} == {"main": base.oid, "dev": dev.oid}
    local = hf_hub_download(repo, "a.txt", revision="dev", endpoint=server.url, cache_dir=tmp_path)
    assert Path(local).read_bytes() == b"dev"
    assert api.model_info(repo).sha == base.oid

    api.create_tag(repo, tag="v1", revision="dev")
    assert api.list_repo_refs(repo).tags[0].target_commit == dev.oid
    assert api.revision_exists(repo, "v1") and not api.revision_exists(repo, "nope")
    with pytest.raises(RevisionNotFoundError):
        api.create_commit(repo, [CommitOperationAdd("x", b"x")], commit_message="x", revision="nope")
    api.delete_branch(repo, branch="dev")
    assert [b.name for b in api.list_repo_refs(repo).branches] == ["main"]


def test_auth(server, repo):
    bad = HfApi(endpoint=server.url, token="wrong")
    with pytest.raises(HfHubHTTPError) as e:
        bad.create_commit(repo, [CommitOperationAdd("x", b"x")], commit_message="x")
    assert e.value.response.status_code == 401 and not isinstance(e.value, RepositoryNotFoundError)
    with pytest.raises(HfHubHTTPError) as e:
        bad.whoami()
    assert e.value.response.status_code == 401
    with pytest.raises(HfHubHTTPError) as e:
        HfApi(endpoint=server.url, token=False).create_repo("org/anon")
    assert e.value.response.status_code == 401
    # anonymous reads of public repos are fine
    assert HfApi(endpoint=server.url, token=False).model_info(repo).sha


def test_fault_injection_then_retry(api, server, repo):
    server.test_api("/_test/faults", {"commit_status": [500]})
    before = server.test_api("/_test/stats")
    with pytest.raises(HfHubHTTPError) as e:
        api.create_commit(repo, [CommitOperationAdd("f.txt", b"1")], commit_message="try 1")
    assert e.value.response.status_code == 500
    assert api.list_repo_files(repo) == []
    api.create_commit(repo, [CommitOperationAdd("f.txt", b"1")], commit_message="try 2")
    assert api.list_repo_files(repo) == ["f.txt"]
    stats = server.test_api("/_test/stats")
    assert stats["commits"][repo] == before["commits"].get(repo, 0) + 1
    assert stats["commit_requests"][repo] == before["commit_requests"].get(repo, 0) + 2

    # preupload goes through the client's own backoff: a 503 is retried transparently
    server.test_api("/_test/faults", {"preupload_status": [503]})
    api.create_commit(repo, [CommitOperationAdd("g.txt", b"2")], commit_message="after 503")
    assert api.list_repo_files(repo) == ["f.txt", "g.txt"]
    assert server.test_api("/_test/faults", method="DELETE") == {}


def test_killed_mid_commit_keeps_previous_state(tmp_path):
    root = tmp_path / "root"
    srv = Proc(root)
    api = HfApi(endpoint=srv.url, token=TOKEN)
    api.create_repo("org/crash")
    good = api.create_commit("org/crash", [CommitOperationAdd("a.txt", b"good")], commit_message="good")
    srv.test_api("/_test/faults", {"commit_delay_s": 5.0})
    errors = []

    def doomed_commit():
        try:
            api.create_commit(
                "org/crash",
                [CommitOperationAdd("a.txt", b"bad"), CommitOperationAdd("b.txt", b"bad")],
                commit_message="doomed",
            )
        except Exception as e:  # connection dropped by the kill
            errors.append(e)

    t = threading.Thread(target=doomed_commit)
    t.start()
    deadline = time.time() + 5
    while srv.test_api("/_test/stats")["commit_requests"].get("org/crash", 0) < 2:
        assert time.time() < deadline
        time.sleep(0.05)
    time.sleep(0.2)  # now inside the delay, blobs already stored
    srv.stop(signal.SIGKILL)
    t.join(timeout=10)
    assert errors, "the commit should have failed when the server died"
    # The kill landed mid-commit: the new blob was already stored, the state never pointed at it.
    bad_sha = hashlib.sha256(b"bad").hexdigest()
    assert (root / "blobs" / bad_sha[:2] / bad_sha).exists()

    srv2 = Proc(root)
    try:
        api2 = HfApi(endpoint=srv2.url, token=TOKEN)
        assert api2.model_info("org/crash").sha == good.oid
        assert api2.list_repo_files("org/crash") == ["a.txt"]
        local = hf_hub_download("org/crash", "a.txt", endpoint=srv2.url, cache_dir=tmp_path / "c")
        assert Path(local).read_bytes() == b"good"
        api2.create_commit(
            "org/crash", [CommitOperationAdd("a.txt", b"again")], commit_message="again", parent_commit=good.oid
        )
    finally:
        assert srv2.stop() == 0  # SIGTERM -> clean exit


def test_in_process_server_concurrent_commits(tmp_path):
    url, stop = start_server(str(tmp_path / "root"), token=TOKEN)
    try:
        api = HfApi(endpoint=url, token=TOKEN)
        api.create_repo("org/concurrent")

        def commit(i):
            api.create_commit(
                "org/concurrent", [CommitOperationAdd(f"f{i}.txt", str(i).encode())], commit_message=f"c{i}"
            )

        threads = [threading.Thread(target=commit, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(api.list_repo_files("org/concurrent")) == sorted(f"f{i}.txt" for i in range(8))
        assert len(api.list_repo_commits("org/concurrent")) == 9
    finally:
        stop()


def test_private_repos_and_gated_setting(api, server):
    api.create_repo("org/secret", private=True)
    api.create_repo("org/open", private=False)
    assert api.model_info("org/secret").private is True and api.model_info("org/open").private is False
    anon = HfApi(endpoint=server.url, token=False)
    with pytest.raises(RepositoryNotFoundError):
        anon.model_info("org/secret")
    assert anon.model_info("org/open").gated is False
    api.update_repo_settings("org/open", gated="manual")
    assert api.model_info("org/open").gated == "manual"
    api.update_repo_settings("org/open", private=True)
    assert api.model_info("org/open").private is True


def test_fault_kinds_slow_reset_race_retry_after(api, server, repo):
    import httpx2

    try:
        # slow: a client with a shorter timeout gives up
        server.faults(info_slow_s=[1.5])
        with pytest.raises(httpx2.TimeoutException):
            api.model_info(repo, timeout=0.3)
        # reset mid-body: the connection dies during the upload, nothing is committed
        server.faults(commit_reset=["mid-body"])
        with pytest.raises(httpx2.TransportError):
            api.create_commit(repo, [CommitOperationAdd("r.bin", os.urandom(1 << 20))], commit_message="reset")
        assert api.list_repo_files(repo) == []
        # reset after: the commit lands, the answer never comes
        server.faults(commit_reset=["after"])
        with pytest.raises(httpx2.TransportError):
            api.create_commit(repo, [CommitOperationAdd("a.txt", b"a")], commit_message="lands")
        assert api.list_repo_files(repo) == ["a.txt"]
        # race: another writer lands first, so the parent is stale for real
        head = api.model_info(repo).sha
        server.faults(commit_race=1)
        with pytest.raises(HfHubHTTPError) as e:
            api.create_commit(repo, [CommitOperationAdd("b.txt", b"b")], commit_message="b", parent_commit=head)
        assert e.value.response.status_code == 412
        assert [c.title for c in api.list_repo_commits(repo)][:2] == ["concurrent writer", "lands"]
        api.create_commit(repo, [CommitOperationAdd("b.txt", b"b")], commit_message="b", parent_commit=None)
        # 429 with the configured Retry-After (commit is not retried by the client itself)
        server.faults(commit_status=[429], retry_after=7)
        with pytest.raises(HfHubHTTPError) as e:
            api.create_commit(repo, [CommitOperationAdd("c.txt", b"c")], commit_message="c")
        assert e.value.response.status_code == 429 and e.value.response.headers["Retry-After"] == "7"
        with pytest.raises(urllib.error.HTTPError) as e:  # an unknown reset mode is refused
            server.faults(commit_reset=["sideways"])
        assert e.value.code == 400
    finally:
        server.test_api("/_test/faults", method="DELETE")
    assert sorted(api.list_repo_files(repo)) == ["a.txt", "b.txt"]
