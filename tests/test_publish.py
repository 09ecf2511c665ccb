"""The publisher against a real Hub-compatible server (tests/hubserver.py) and the real
huggingface_hub client: no mocks, never huggingface.co.

One tiny variant is compiled once (module fixture `built`, through the CLI with publish=hub);
every other test copies its cache entry or calls the publisher's functions on it directly.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

# Client settings must be in the environment before huggingface_hub reads its constants.
os.environ["HF_HUB_DISABLE_XET"] = "1"
os.environ["HF_HUB_OFFLINE"] = "0"
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

import pytest  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conftest import REPO, cli_env, latest_report, run_cli  # noqa: E402
from hub_fixtures import TOKEN, HubProc, fake_variant, hub, hub_client_online  # noqa: E402,F401


@pytest.fixture(scope="module", autouse=True)
def _hub_client_online():
    with hub_client_online():
        yield


from pipeline import hub as hub_client  # noqa: E402
from pipeline import publish, shared_cache  # noqa: E402
from pipeline.cache import Cache  # noqa: E402

ONE_JOB = ["matrix.models=[tiny-bert]", "matrix.cast_types=[fp32]", "matrix.shapes=[{batch_size:1,sequence_length:16}]"]
NS = "org"
CACHE_REPO = "org/pipeline-cache"
VARIANT_REPO = "org/tiny-bert-inductor-fp32-b1-s16"


def hub_env(url: str, tmp: Path, token: str = TOKEN, **extra) -> dict:
    return cli_env(
        HF_ENDPOINT=url,
        HF_TOKEN=token,
        HF_HUB_DISABLE_XET="1",
        HF_HUB_OFFLINE="0",
        HF_HOME=str(tmp / "hf_home"),
        PIPELINE_PUBLISH_BACKOFF_S="0.05",
        **extra,
    )


def cli(cache: Path, runs: Path, *extra: str, env: dict) -> subprocess.CompletedProcess:
    return run_cli(*ONE_JOB, f"cache.dir={cache}", f"report.dir={runs}", *extra, env=env, timeout=900)


def hub_args(namespace: str = NS, cache_repo: str = CACHE_REPO) -> list[str]:
    return ["publish=hub", f"publish.namespace={namespace}", f"publish.cache_repo={cache_repo}"]


@pytest.fixture(autouse=True)
def _env(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    monkeypatch.setenv("PIPELINE_PUBLISH_BACKOFF_S", "0.01")


@pytest.fixture(scope="module")
def built(tiny_models, hub, tmp_path_factory):
    """ONE real compile, published with publish=hub by the CLI."""
    tmp = tmp_path_factory.mktemp("built")
    cache, runs = tmp / "cache", tmp / "runs"
    proc = cli(cache, runs, *hub_args(), env=hub_env(hub.url, tmp))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = latest_report(runs)
    jobs = json.loads((runs / "latest" / "plan.json").read_text())["jobs"]
    return {
        "cache": cache,
        "runs": runs,
        "report": report,
        "jobs": jobs,
        "stdout": proc.stdout + proc.stderr,
        "tmp": tmp,
    }


def copy_cache(built, dest: Path) -> Path:
    shutil.copytree(built["cache"], dest, ignore=shutil.ignore_patterns(".locks", ".tmp"))
    return dest


def rows_for(built, cache: Path | None = None) -> list[dict]:
    rows = json.loads(json.dumps(built["report"]["jobs"]))
    for r in rows:
        r.pop("published", None)
        r["status"] = "passed"
        if cache is not None:
            r["artifact"] = str(Cache(cache).entry_dir(r["key"]))
    return rows


def hub_cfg(url: str, namespace: str, cache_repo: str | None, **kw) -> dict:
    pc = {
        "name": "hub",
        "dry_run": False,
        "dir": "unused",
        "namespace": namespace,
        "repo_template": publish.DEFAULT_REPO_TEMPLATE,
        "revision_template": None,
        "cache_repo": cache_repo,
        "endpoint": url,
    }
    pc.update(kw)
    return {"publish": pc}


def api_for(url: str, token: str = TOKEN):
    from huggingface_hub import HfApi

    return HfApi(endpoint=url, token=token)


# --------------------------------------------------------------------------- end to end


def test_publish_hub_end_to_end_and_load_in_fresh_process(built, hub, tmp_path):
    row = built["report"]["jobs"][0]
    assert row["status"] == "passed" and built["report"]["summary"]["ok"]
    pub = row["published"]
    assert pub["repo"] == VARIANT_REPO and pub["revision"] is None and len(pub["commit"]) == 40
    api = api_for(hub.url)
    assert api.repo_info(VARIANT_REPO).sha == pub["commit"]
    assert api.repo_info(VARIANT_REPO).private and api.repo_info(CACHE_REPO).private  # publish.private defaults true
    files = set(api.list_repo_files(VARIANT_REPO))
    assert {"README.md", "config.json", "model.pt2", "manifest.json", "tokenizer.json"} <= files
    assert not any(f.startswith("logs/") for f in files)
    prefix = shared_cache.cache_path(built["jobs"][0]["spec"], row["key"])
    assert prefix.startswith("inductor-cpu-") and prefix.endswith(f"/{row['key'][:2]}/{row['key']}")
    assert api.file_exists(CACHE_REPO, f"{prefix}/manifest.json") and api.file_exists(CACHE_REPO, f"{prefix}/model.pt2")

    card = Path(api.hf_hub_download(VARIANT_REPO, "README.md", cache_dir=tmp_path / "dl")).read_text()
    assert card.startswith("---\n") and "library_name: pipeline" in card and "tags:" in card
    assert "license: other" in card and "could not be determined" in card  # tiny-bert has no card of its own
    assert 'CompiledModelForFeatureExtraction.from_pretrained("org/tiny-bert-inductor-fp32-b1-s16")' in card
    assert row["key"] in card and "## Toolchain" in card and "max_abs" in card
    assert TOKEN not in card and TOKEN not in built["stdout"]

    # A fresh process, empty HF and pipeline caches: load the variant repo by its id (the
    # runtime class downloads it) and run it on the verification inputs.
    ref = next((built["cache"] / ".refs").glob("*.safetensors"))
    script = (
        "import sys, torch\n"
        "from pathlib import Path\n"
        "from pipeline import verify\n"
        "from pipeline.modeling import CompiledModelForFeatureExtraction\n"
        "model = CompiledModelForFeatureExtraction.from_pretrained(sys.argv[1], revision=sys.argv[2], "
        "cache_dir=Path(sys.argv[4]) / 'pc')\n"
        "saved = verify.load_tensors(Path(sys.argv[3]))\n"
        "inputs = {k[3:]: v for k, v in saved.items() if k.startswith('in.')}\n"
        "got = model(**inputs).last_hidden_state\n"
        "want = saved['ref.last_hidden_state']\n"
        "print('max_abs', (got - want).abs().max().item(), 'from', model.folder)\n"
        "assert torch.allclose(got, want, atol=1e-4, rtol=1e-4)\n"
    )
    env = hub_env(hub.url, tmp_path / "fresh")
    proc = subprocess.run(
        [sys.executable, "-c", script, VARIANT_REPO, pub["commit"], str(ref), str(tmp_path)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "max_abs" in proc.stdout and str(tmp_path / "fresh" / "hf_home") in proc.stdout, proc.stdout


def test_ls_lists_what_a_publish_pushed_from_the_cache_index(built, hub, tmp_path):
    """The shared cache's per-platform index.json was committed with the entries: mode=ls reads
    it (one download per platform tag) and lists the published variant."""
    row = built["report"]["jobs"][0]
    api = api_for(hub.url)
    tag = shared_cache.cache_path(built["jobs"][0]["spec"], row["key"]).split("/")[0]
    index_file = api.hf_hub_download(CACHE_REPO, f"{tag}/index.json", cache_dir=tmp_path / "dl")
    index = json.loads(Path(index_file).read_text())
    assert row["key"] in index["entries"] and index["entries"][row["key"]]["platform"] == tag
    env = hub_env(hub.url, tmp_path)
    proc = run_cli("mode=ls", "+model=tiny-bert", *hub_args(), f"cache.dir={tmp_path / 'empty'}", env=env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert row["key"][:12] in proc.stdout and CACHE_REPO in proc.stdout, proc.stdout[-3000:]


def test_push_folder_is_one_idempotent_commit(built, hub):
    folder = Cache(built["cache"]).entry_dir(built["jobs"][0]["key"])
    api = api_for(hub.url)
    first = hub_client.push_folder(folder, "push/tiny", api=api, commit_message="push")
    assert first.committed and "model.pt2" in first.added and not any(p.startswith("logs/") for p in first.added)
    assert api.repo_info("push/tiny").sha == first.oid
    again = hub_client.push_folder(folder, "push/tiny", api=api)
    assert not again.committed and again.oid == first.oid and hub.commits("push/tiny") == 1
    with pytest.raises(hub_client.PublishError) as e:
        hub_client.push_folder(folder, "push/tiny2", api=api_for(hub.url, "hf_bad_token_value_999"))
    assert (
        "hf auth login" in str(e.value)
        and "push/tiny2" in str(e.value)
        and "hf_bad_token_value_999" not in str(e.value)
    )


def test_second_run_with_empty_cache_takes_the_shared_cache_and_commits_nothing(built, hub, tmp_path):
    before = hub.stats()["commits"]
    cache, runs = tmp_path / "cache", tmp_path / "runs"
    proc = cli(cache, runs, *hub_args(), env=hub_env(hub.url, tmp_path))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = latest_report(runs)
    (row,) = report["jobs"]
    assert row["status"] == "cached" and "compile_s" not in (row["timings"] or {})  # no compile (re-verified only)
    entry = Path(row["artifact"])
    assert entry.parent.parent == cache
    compile_log = entry / "logs" / "compile.log"  # logs/ here are this machine's re-verification's only
    assert not compile_log.exists() or not compile_log.read_text().strip()
    manifest = json.loads((entry / "manifest.json").read_text())
    assert manifest["fetched_from"]["path"] == shared_cache.cache_path(manifest["spec"], row["key"])
    assert Cache(cache).lookup(row["key"])[0] == entry
    # re-publishing the unchanged (fetched) variant makes no commit anywhere
    assert (
        row["published"]["status"] == "unchanged"
        and row["published"]["commit"] == built["report"]["jobs"][0]["published"]["commit"]
    )
    assert hub.stats()["commits"] == before


# --------------------------------------------------------------------------- idempotence, layout


def test_republish_unchanged_makes_no_commit_and_revision_template(built, hub):
    api = api_for(hub.url)
    cfg = hub_cfg(hub.url, "idem", "idem/cache")
    rows = rows_for(built)
    publish.publish_rows(rows, built["jobs"], cfg)
    assert rows[0]["status"] == "passed" and rows[0]["published"]["status"] == "published"
    repo = rows[0]["published"]["repo"]
    n = len(api.list_repo_commits(repo)), len(api.list_repo_commits("idem/cache"))
    requests = hub.stats()["commit_requests"]
    rows = rows_for(built)
    publish.publish_rows(rows, built["jobs"], cfg)
    assert rows[0]["published"]["status"] == "unchanged"
    assert (len(api.list_repo_commits(repo)), len(api.list_repo_commits("idem/cache"))) == n
    assert hub.stats()["commit_requests"] == requests  # not even attempted

    # one repo per model, one branch per variant
    cfg = hub_cfg(hub.url, "idem", None, revision_template="{backend}-{cast_type}-b{batch_size}-s{sequence_length}")
    rows = rows_for(built)
    publish.publish_rows(rows, built["jobs"], cfg)
    pub = rows[0]["published"]
    assert (pub["repo"], pub["revision"]) == ("idem/tiny-bert", "inductor-fp32-b1-s16")
    assert "model.pt2" in api.list_repo_files("idem/tiny-bert", revision="inductor-fp32-b1-s16")
    assert api.list_repo_files("idem/tiny-bert") == []  # main untouched
    card = Path(api.hf_hub_download("idem/tiny-bert", "README.md", revision="inductor-fp32-b1-s16")).read_text()
    assert 'revision="inductor-fp32-b1-s16"' in card


def test_dry_run_pushes_nothing_and_local_writes_the_layout(built, hub, tmp_path):
    cache = copy_cache(built, tmp_path / "cache")
    before = hub.stats()
    proc = cli(cache, tmp_path / "runs", *hub_args("dry"), "publish.dry_run=true", env=hub_env(hub.url, tmp_path))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "would publish" in proc.stdout and "dry/tiny-bert-inductor-fp32-b1-s16" in proc.stdout
    (row,) = latest_report(tmp_path / "runs")["jobs"]
    assert row["published"]["status"] == "would publish" and row["published"]["commit"] is None
    after = hub.stats()
    assert after["commits"] == before["commits"]
    assert after["requests"].get("create_repo", 0) == before["requests"].get("create_repo", 0)

    out = tmp_path / "published"
    proc = cli(cache, tmp_path / "runs2", "publish=local", f"publish.dir={out}", env=cli_env())
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (row,) = latest_report(tmp_path / "runs2")["jobs"]
    key = row["key"]
    repo_dir = out / "compiled" / "tiny-bert-inductor-fp32-b1-s16"
    assert {p.name for p in repo_dir.iterdir()} >= {"README.md", "config.json", "model.pt2", "manifest.json"}
    entry = out / "cache" / shared_cache.cache_path(built["jobs"][0]["spec"], key)
    assert (entry / "manifest.json").is_file() and (entry / "model.pt2").is_file() and not (entry / "logs").exists()
    assert row["published"]["path"] == str(repo_dir)
    # and the local shared cache serves an empty local cache
    dest = tmp_path / "empty" / "dl"
    dest.mkdir(parents=True)
    manifest, why = shared_cache.download(
        key, built["jobs"][0]["spec"], dest, {"name": "local", "dir": str(out), "cache_repo": None}
    )
    assert why is None and manifest is not None
    assert (dest / "model.pt2").read_bytes() == (entry / "model.pt2").read_bytes()


# --------------------------------------------------------------------------- faults


def test_500_then_412_on_commit_are_retried(built, hub):
    hub.faults(commit_status=[500, 412])
    try:
        before = hub.stats()
        rows = rows_for(built)
        publish.publish_rows(rows, built["jobs"], hub_cfg(hub.url, "retry", "retry/cache"))
        assert rows[0]["status"] == "passed", rows[0]["error"]
        after = hub.stats()
        assert after["faults_injected"] == before["faults_injected"] + 2
        assert after["commits"]["retry/cache"] == 1 and after["commit_requests"]["retry/cache"] == 3
        assert after["commits"][rows[0]["published"]["repo"]] == 1
    finally:
        hub.test_api("/_test/faults", method="DELETE")


def test_wrong_token_fails_clearly_without_leaking_it(built, hub, tmp_path):
    wrong = "hf_WrongSecretToken_abcdefghijklmnop"
    cache = copy_cache(built, tmp_path / "cache")
    runs = tmp_path / "runs"
    proc = cli(cache, runs, *hub_args("auth"), env=hub_env(hub.url, tmp_path, token=wrong))
    assert proc.returncode != 0
    (row,) = latest_report(runs)["jobs"]
    assert row["status"] == "failed-to-publish"
    assert "401" in row["error"] and "hf auth login" in row["error"] and "HF_TOKEN" in row["error"]
    assert CACHE_REPO in row["error"] or "auth/tiny-bert" in row["error"]  # names the repo
    run_dir = (runs / "latest").resolve()
    for text in (proc.stdout, proc.stderr, *(p.read_text() for p in run_dir.rglob("*") if p.is_file())):
        assert wrong not in text
    assert Cache(cache).lookup(row["key"])[0] is not None  # the local entry stays valid
    assert hub.stats()["commits"].get("auth/tiny-bert-inductor-fp32-b1-s16") is None


def test_scrub_hides_the_token(monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_secret_value_42")
    err = RuntimeError("401 for url with Authorization: Bearer hf_secret_value_42 and hf_secret_value_42")
    text = hub_client.scrub(err)
    assert "hf_secret_value_42" not in text and "***" in text


def test_server_killed_mid_publish_then_rerun_completes(built, tmp_path):
    root = tmp_path / "root"
    srv = HubProc(root)
    cache = copy_cache(built, tmp_path / "cache")
    key = built["jobs"][0]["key"]
    prefix = shared_cache.cache_path(built["jobs"][0]["spec"], key)
    srv.faults(commit_delay_s=5.0)
    env = hub_env(srv.url, tmp_path)
    args = [
        sys.executable,
        "-m",
        "pipeline",
        *ONE_JOB,
        f"cache.dir={cache}",
        f"report.dir={tmp_path / 'runs'}",
        *hub_args("kill", "kill/cache"),
    ]
    proc = subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 120
        while srv.stats()["commit_requests"].get("kill/cache", 0) < 1:
            assert time.time() < deadline and proc.poll() is None, (
                proc.stdout.read() if proc.poll() is not None else "timeout"
            )
            time.sleep(0.05)
        time.sleep(0.3)  # inside the commit: blobs stored, state not yet replaced
        assert srv.commits("kill/cache") == 0
        srv.stop(signal.SIGKILL)
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0, out
    (row,) = latest_report(tmp_path / "runs")["jobs"]
    assert row["status"] == "failed-to-publish" and TOKEN not in out

    srv2 = HubProc(root)  # same storage, new port
    try:
        api = api_for(srv2.url)
        # nothing half-visible: the entry is fully there or absent
        present = [
            f
            for f in (api.list_repo_files("kill/cache") if api.repo_exists("kill/cache") else [])
            if f.startswith(prefix)
        ]
        assert present == [] or {f.rsplit("/", 1)[1] for f in present} >= {"manifest.json", "model.pt2", "config.json"}
        assert not api.repo_exists(VARIANT_REPO.replace("org/", "kill/")) or "model.pt2" in api.list_repo_files(
            VARIANT_REPO.replace("org/", "kill/")
        )
        env = hub_env(srv2.url, tmp_path)
        proc = subprocess.run(
            args[:-3] + [f"report.dir={tmp_path / 'runs2'}"] + args[-3:],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        (row,) = latest_report(tmp_path / "runs2")["jobs"]
        assert row["published"]["status"] == "published"
        assert api.file_exists("kill/cache", f"{prefix}/model.pt2") and api.file_exists(
            "kill/cache", f"{prefix}/manifest.json"
        )
        assert "model.pt2" in api.list_repo_files("kill/tiny-bert-inductor-fp32-b1-s16")
    finally:
        srv2.stop()


def test_two_publishers_same_cache_repo_at_once(built, hub, tmp_path):
    cache = copy_cache(built, tmp_path / "cache")
    variants = [fake_variant(built["jobs"][0], rows_for(built)[0], cache, b) for b in (3, 4)]
    hub.faults(commit_delay_s=0.5)  # both read the same head, so one commit meets a stale parent
    results: list[dict] = []
    try:
        cfg = hub_cfg(hub.url, "conc", "conc/cache")

        def go(row, job):
            publish.publish_rows([row], [job], cfg)
            results.append(row)

        threads = [threading.Thread(target=go, args=v) for v in variants]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
    finally:
        hub.test_api("/_test/faults", method="DELETE")
    assert len(results) == 2 and all(r["status"] == "passed" for r in results), [r.get("error") for r in results]
    files = set(api_for(hub.url).list_repo_files("conc/cache"))
    for row, job in variants:
        assert f"{shared_cache.cache_path(job['spec'], job['key'])}/manifest.json" in files
    stats = hub.stats()
    assert stats["commits"]["conc/cache"] == 2
    assert stats["commit_requests"]["conc/cache"] >= 2
    print(
        "conc/cache commit requests:",
        stats["commit_requests"]["conc/cache"],
        "commits:",
        stats["commits"]["conc/cache"],
    )


def test_tampered_shared_entry_is_detected_and_not_used(built, hub, tmp_path):
    from huggingface_hub import CommitOperationAdd

    rows = rows_for(built)
    cfg = hub_cfg(hub.url, "tamper", "tamper/cache")
    publish.publish_rows(rows, built["jobs"], cfg)
    assert rows[0]["status"] == "passed"
    job = built["jobs"][0]
    prefix = shared_cache.cache_path(job["spec"], job["key"])
    good = (Cache(built["cache"]).entry_dir(job["key"]) / "model.pt2").read_bytes()
    bad = bytearray(good)
    bad[len(bad) // 2] ^= 0xFF
    api_for(hub.url).create_commit(
        "tamper/cache", [CommitOperationAdd(f"{prefix}/model.pt2", bytes(bad))], commit_message="evil"
    )

    dest = tmp_path / "empty" / "dl"
    dest.mkdir(parents=True)
    manifest, why = shared_cache.download(job["key"], job["spec"], dest, cfg["publish"])
    assert manifest is None and "model.pt2" in why and "integrity" in why
    assert not (tmp_path / "empty" / "dl.download").exists()  # the download folder is cleaned up

    # and a key the shared cache does not have is a plain miss
    assert shared_cache.download("0" * 64, job["spec"], tmp_path / "empty" / "dl2", cfg["publish"]) == (None, None)


def test_platform_tag_and_batches():
    spec = {
        "backend": {"name": "inductor", "options": {"device": "cuda"}},
        "toolchain": {
            "torch": "2.13.0+cu128",
            "platform": {"arch": "x86_64", "cpu_capability": "AVX512", "gpu_arch": "sm_90 NVIDIA H100"},
        },
    }
    assert shared_cache.platform_tag(spec) == "inductor-cuda-x86_64-sm_90-torch2.13.0"
    spec = {"backend": {"name": "neuron", "options": {}}, "toolchain": {"neuronx-cc": "2.21.33363.0", "target": "trn1"}}
    assert shared_cache.platform_tag(spec) == "neuron-trn1-neuronx-cc2.21.33363.0"
    assert shared_cache.cache_path(spec, "ab" + "0" * 62) == f"neuron-trn1-neuronx-cc2.21.33363.0/ab/ab{'0' * 62}"

    class V:  # a variant is never split across commits; <= 100 files per commit
        def __init__(self, n):
            self.files = [None] * n

    sizes = [[len(v.files) for v in b] for b in publish._batches([V(7)] * 30)]
    assert all(sum(b) <= publish.MAX_FILES_PER_COMMIT for b in sizes) and sum(map(len, sizes)) == 30 and len(sizes) == 3
