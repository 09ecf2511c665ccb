"""What the publisher must never do, each produced for real (real compile, real server, real
huggingface_hub client): create public repos unasked, publish without the source license,
redistribute a gated model's weights, let two variants overwrite each other, or leak a path of
the publishing machine into what it publishes.

One tiny variant is compiled once (`one_entry`, a cache hit in later sessions); a local source
model is a copy of the tiny model folder plus a README.md: README.md is not part of a local
model's content hash, so the copy plans to the same key and the compiled entry serves it.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

# Client settings must be in the environment before huggingface_hub reads its constants.
os.environ["HF_HUB_DISABLE_XET"] = "1"
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

import pytest  # noqa: E402
import yaml  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from conftest import REPO, cli_env, latest_report, run_cli  # noqa: E402
from hub_fixtures import TOKEN, fake_variant, hub, hub_client_online, one_entry  # noqa: E402,F401

from pipeline import hub as hub_client  # noqa: E402
from pipeline import publish, shared_cache, source_card  # noqa: E402
from pipeline.cache import Cache, sha256_file  # noqa: E402

APACHE = "---\nlicense: apache-2.0\ntags: [tiny]\n---\n# tiny-bert\n"
GATED = "---\nlicense: llama3\ngated: true\n---\n# gated\n"
GATED_PROMPT = "---\nextra_gated_prompt: Accept the terms to get access\nextra_gated_fields:\n  Name: text\n---\n"
VARIANT = "tiny-bert-inductor-fp32-b1-s16"
SHAPE = ["matrix.cast_types=[fp32]", "matrix.shapes=[{batch_size:1,sequence_length:16}]"]


@pytest.fixture(scope="module", autouse=True)
def _hub_client_online():
    with hub_client_online():
        yield


@pytest.fixture(autouse=True)
def _env(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    monkeypatch.setenv("PIPELINE_PUBLISH_BACKOFF_S", "0.01")


def copy_cache(one_entry, dest: Path) -> Path:
    shutil.copytree(one_entry["cache"], dest, ignore=shutil.ignore_patterns(".locks", ".tmp"))
    return dest


def source_model(tmp: Path, readme: str | None) -> Path:
    """A local source model: the tiny model folder (same name, so the same key) + README.md."""
    folder = tmp / "src" / "tiny-bert"
    shutil.copytree(REPO / "artifacts" / "models" / "tiny-bert", folder)
    if readme is not None:
        (folder / "README.md").write_text(readme)
    return folder


def rows_jobs(one_entry, cache: Path, model: Path | dict | None = None) -> tuple[list[dict], list[dict]]:
    """Rows and jobs as a run produces them, on `cache`, optionally for another source model."""
    jobs = json.loads(json.dumps(one_entry["jobs"]))
    rows = json.loads(json.dumps(one_entry["rows"]))
    for row in rows:
        row.update(status="passed", artifact=str(Cache(cache).entry_dir(row["key"])), published=None)
    if isinstance(model, Path):
        jobs[0]["model"] = dict(jobs[0]["model"], id=str(model), path=str(model.resolve()))
    elif model is not None:
        jobs[0]["model"] = model
    return rows, jobs


def hub_cfg(url: str, namespace: str, cache_repo: str | None = None, **kw) -> dict:
    pc = {"name": "hub", "dry_run": False, "dir": "unused", "namespace": namespace, "endpoint": url}
    pc.update(repo_template=publish.DEFAULT_REPO_TEMPLATE, revision_template=None, cache_repo=cache_repo)
    return {"publish": {**pc, **kw}}


def local_cfg(out: Path, **kw) -> dict:
    return {"publish": {**hub_cfg("", "compiled")["publish"], "name": "local", "dir": str(out), **kw}}


def api_for(url: str):
    from huggingface_hub import HfApi

    return HfApi(endpoint=url, token=TOKEN)


def card_meta(text: str) -> dict:
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n")[1])


# --------------------------------------------------------------------------- private by default


def test_repos_are_created_private_unless_asked(one_entry, hub, tmp_path, capsys):
    cache = copy_cache(one_entry, tmp_path / "cache")
    api = api_for(hub.url)
    rows, jobs = rows_jobs(one_entry, cache)
    messages = publish.publish_rows(rows, jobs, hub_cfg(hub.url, "priv", "priv/cache"))
    assert capsys.readouterr().out == ""  # publish_rows returns its lines, prints nothing
    assert rows[0]["status"] == "passed", rows[0].get("error")
    commit = rows[0]["published"]["commit"]
    assert messages == [f"published {rows[0]['key'][:12]} -> priv/{VARIANT} (commit {commit[:10]})"]
    assert api.repo_info("priv/tiny-bert-inductor-fp32-b1-s16").private is True
    assert api.repo_info("priv/cache").private is True
    from huggingface_hub import HfApi
    from huggingface_hub.errors import RepositoryNotFoundError

    with pytest.raises(RepositoryNotFoundError):  # invisible without the token
        HfApi(endpoint=hub.url, token=False).repo_info("priv/tiny-bert-inductor-fp32-b1-s16")

    rows, jobs = rows_jobs(one_entry, cache)
    publish.publish_rows(rows, jobs, hub_cfg(hub.url, "pub", "pub/cache", private=False))
    assert rows[0]["status"] == "passed", rows[0].get("error")
    assert api.repo_info("pub/tiny-bert-inductor-fp32-b1-s16").private is False
    assert api.repo_info("pub/cache").private is False

    # the runtime classes' push_to_hub path
    res = hub_client.push_folder(Cache(cache).entry_dir(rows[0]["key"]), "priv/pushed", api=api)
    assert res.committed and api.repo_info("priv/pushed").private is True


# --------------------------------------------------------------------------- license in the card


def test_card_carries_the_source_license_cli_publish_local(one_entry, tmp_path):
    """End to end: a local model folder whose README says apache-2.0, publish=local by the CLI."""
    folder = source_model(tmp_path, APACHE)
    cache, out, runs = copy_cache(one_entry, tmp_path / "cache"), tmp_path / "published", tmp_path / "runs"
    model = f"matrix.models=[{{id:'{folder}',task:feature-extraction}}]"
    proc = run_cli(model, *SHAPE, f"cache.dir={cache}", f"report.dir={runs}", "publish=local", f"publish.dir={out}",
                   env=cli_env(), timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (row,) = latest_report(runs)["jobs"]
    assert row["status"] == "cached" and row["key"] == one_entry["rows"][0]["key"]  # no compile
    card = (out / "compiled" / "tiny-bert-inductor-fp32-b1-s16" / "README.md").read_text()
    assert card_meta(card)["license"] == "apache-2.0"
    assert "License: `apache-2.0`" in card and "could not be determined" not in card


def test_unknown_license_is_other_with_a_warning_line(one_entry, tmp_path):
    cache = copy_cache(one_entry, tmp_path / "cache")
    rows, jobs = rows_jobs(one_entry, cache, source_model(tmp_path, None))
    publish.publish_rows(rows, jobs, local_cfg(tmp_path / "out"))
    assert rows[0]["status"] == "passed", rows[0].get("error")
    card = (tmp_path / "out" / "compiled" / "tiny-bert-inductor-fp32-b1-s16" / "README.md").read_text()
    assert card_meta(card)["license"] == "other"
    assert "could not be determined" in card and "check the base model's terms" in card


def test_hub_model_license_and_gate_from_its_cached_card_offline(hub, tmp_path, monkeypatch):
    """A Hub source model: its README.md in the local HF cache is read, offline, never fetched."""
    import huggingface_hub.constants

    api = api_for(hub.url)
    shas = {}
    for repo, card in (("upstream/licensed", "---\nlicense: mit\n---\n"), ("upstream/prompted", GATED_PROMPT)):
        api.create_repo(repo, private=False)
        shas[repo] = api.upload_file(path_or_fileobj=card.encode(), path_in_repo="README.md", repo_id=repo).oid
        api.hf_hub_download(repo, "README.md", revision=shas[repo], cache_dir=tmp_path / "hf-cache")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    facts = source_card.source_facts({"id": "upstream/licensed", "local": False, "revision": shas["upstream/licensed"]},
                                    online=False)  # fmt: skip
    assert facts == {"license": "mit", "license_name": None, "license_link": None, "gated": None}
    facts = source_card.source_facts({"id": "upstream/prompted", "local": False, "revision": shas["upstream/prompted"]},
                                    online=False)  # fmt: skip
    assert facts["license"] is None and "extra_gated_prompt" in facts["gated"]
    # not in the cache, offline: unknown (the card then says `license: other`), nothing fetched
    facts = source_card.source_facts({"id": "upstream/elsewhere", "local": False, "revision": "main"}, online=False)
    assert facts == {"license": None, "license_name": None, "license_link": None, "gated": None}


# --------------------------------------------------------------------------- gated models


def test_gated_model_is_refused_unless_allowed_cli(one_entry, tmp_path):
    folder = source_model(tmp_path, GATED)
    cache, out = copy_cache(one_entry, tmp_path / "cache"), tmp_path / "published"
    model = f"matrix.models=[{{id:'{folder}',task:feature-extraction}}]"
    args = [model, *SHAPE, f"cache.dir={cache}", "publish=local", f"publish.dir={out}"]
    proc = run_cli(*args, f"report.dir={tmp_path / 'runs'}", env=cli_env(), timeout=600)
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    (row,) = latest_report(tmp_path / "runs")["jobs"]
    assert row["status"] == "failed-to-publish"
    assert "gated" in row["error"] and "publish.allow_gated" in row["error"]
    written = [p for p in out.rglob("*") if p.is_file() and ".tmp" not in p.parts] if out.exists() else []
    assert written == []  # nothing published, not even to the shared cache folder

    proc = run_cli(*args, "publish.allow_gated=true", f"report.dir={tmp_path / 'runs2'}", env=cli_env(), timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    card = (out / "compiled" / "tiny-bert-inductor-fp32-b1-s16" / "README.md").read_text()
    assert card_meta(card)["license"] == "llama3" and "gated" in card and "publish.allow_gated=true" in card


def test_extra_gated_prompt_refused_and_hub_gating_checked_online(one_entry, hub, tmp_path, monkeypatch):
    cache = copy_cache(one_entry, tmp_path / "cache")
    rows, jobs = rows_jobs(one_entry, cache, source_model(tmp_path, GATED_PROMPT))
    publish.publish_rows(rows, jobs, hub_cfg(hub.url, "gate1", "gate1/cache"))
    assert rows[0]["status"] == "failed-to-publish" and "extra_gated_prompt" in rows[0]["error"]
    assert "publish.allow_gated" in rows[0]["error"]

    # A Hub source model the Hub gates (no card in the local HF cache): model_info says so.
    import huggingface_hub.constants

    api = api_for(hub.url)
    api.create_repo("upstream/gated-tiny", private=False)
    sha = api.upload_file(path_or_fileobj=b"{}", path_in_repo="config.json", repo_id="upstream/gated-tiny").oid
    api.update_repo_settings("upstream/gated-tiny", gated="auto")
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", hub.url)  # where source models come from
    model = {"name": "gated-tiny", "id": "upstream/gated-tiny", "local": False, "revision": sha}
    rows, jobs = rows_jobs(one_entry, cache, model)
    publish.publish_rows(rows, jobs, hub_cfg(hub.url, "gate2", "gate2/cache"))
    assert rows[0]["status"] == "failed-to-publish"
    assert "the Hub gates it (auto)" in rows[0]["error"] and "publish.allow_gated" in rows[0]["error"]
    assert not api.repo_exists("gate1/cache") and not api.repo_exists("gate2/cache")
    assert not api.repo_exists("gate2/gated-tiny-inductor-fp32-b1-s16")


# --------------------------------------------------------------------------- templates and targets


def test_two_variants_on_one_target_fail_before_any_push(one_entry, hub, tmp_path):
    cache = copy_cache(one_entry, tmp_path / "cache")
    rows, jobs = rows_jobs(one_entry, cache)
    row2, job2 = fake_variant(one_entry["jobs"][0], dict(one_entry["rows"][0], status="passed"), cache, 3)
    rows, jobs = rows + [row2], jobs + [job2]
    before = hub.stats()
    cfg = hub_cfg(hub.url, "dup", "dup/cache", repo_template="{namespace}/{model_name}")
    assert publish.publish_rows(rows, jobs, cfg) == []
    for row in rows:
        assert row["status"] == "failed-to-publish"
        assert "{namespace}/{model_name}" in row["error"] and "dup/tiny-bert" in row["error"]
        assert rows[0]["key"][:12] in row["error"] and row2["key"][:12] in row["error"]
    after = hub.stats()
    assert after["requests"].get("create_repo", 0) == before["requests"].get("create_repo", 0)
    assert after["commit_requests"] == before["commit_requests"]  # nothing pushed anywhere

    # with a revision_template that tells them apart, both publish (one repo, two branches)
    rows = [dict(r, status="passed", published=None, error=None) for r in rows]
    cfg = hub_cfg(hub.url, "dup", None, repo_template="{namespace}/{model_name}", revision_template="b{batch_size}")
    publish.publish_rows(rows, jobs, cfg)
    assert [r["status"] for r in rows] == ["passed", "passed"], [r.get("error") for r in rows]
    assert {r["published"]["revision"] for r in rows} == {"b1", "b3"}

    # publish=local: same check, nothing written
    rows = [dict(r, status="passed", published=None, error=None) for r in rows]
    publish.publish_rows(rows, jobs, local_cfg(tmp_path / "out", repo_template="{namespace}/{model_name}"))
    assert all(r["status"] == "failed-to-publish" for r in rows) and not (tmp_path / "out").exists()


def test_check_templates_and_variant_target_errors(one_entry, tmp_path):
    ok = {"name": "hub", "namespace": "org", "repo_template": publish.DEFAULT_REPO_TEMPLATE, "cache_repo": "org/cache"}
    assert publish.check_templates(ok) == []
    assert publish.check_templates({**ok, "revision_template": "{backend}-b{batch_size}"}) == []
    known = ", ".join(publish.TEMPLATE_FIELDS)
    assert publish.check_templates({**ok, "repo_template": "{namespace}/{model}-{dtype}"}) == [
        f"publish.repo_template: unknown placeholder {{model}}; known: {known}"
    ]
    assert publish.check_templates({**ok, "revision_template": "{precision}"}) == [
        f"publish.revision_template: unknown placeholder {{precision}}; known: {known}"
    ]
    assert publish.check_templates({**ok, "repo_template": "{model_name}"}) == []  # 'model' is a valid id
    assert "not a valid Hub repo id" in publish.check_templates({**ok, "repo_template": "a/b/{model_name}"})[0]
    assert publish.check_templates({**ok, "repo_template": "{namespace}/{model_name"})[0].startswith(
        "publish.repo_template: malformed template"
    )
    for bad in ("not valid!", "a/b/c", "org/../x", "org/a--b"):
        assert publish.check_templates({**ok, "cache_repo": bad}) == [
            f"publish.cache_repo: {bad!r} is not a valid Hub repo id (expected 'org/name')"
        ]
    local = {**ok, "name": "local", "dir": str(tmp_path / "out")}
    assert publish.check_templates({**local, "cache_repo": "my-cache"}) == []
    for bad in ("../outside", "/abs/cache", "a/../../b"):
        (msg,) = publish.check_templates({**local, "cache_repo": bad})
        assert msg.startswith("publish.cache_repo:") and "outside publish.dir" in msg

    job = one_entry["jobs"][0]
    with pytest.raises(publish.PublishError, match=r"unknown placeholder \{model\}"):
        publish.variant_target(job, {**ok, "repo_template": "{namespace}/{model}"})
    # publish_rows: a clear failure row, no KeyError, nothing written
    cache = copy_cache(one_entry, tmp_path / "cache")
    rows, jobs = rows_jobs(one_entry, cache)
    publish.publish_rows(rows, jobs, local_cfg(tmp_path / "out2", repo_template="{org}/{model_name}"))
    assert rows[0]["status"] == "failed-to-publish" and "unknown placeholder {org}" in rows[0]["error"]
    rows, jobs = rows_jobs(one_entry, cache)
    publish.publish_rows(rows, jobs, local_cfg(tmp_path / "out3", cache_repo="../escape"))
    assert rows[0]["status"] == "failed-to-publish" and "outside publish.dir" in rows[0]["error"]
    assert not (tmp_path / "escape").exists() and not (tmp_path / "out3").exists()


# --------------------------------------------------------------------------- no local path


def machine_paths(tmp_path: Path) -> list[bytes]:
    return [str(tmp_path).encode(), str(REPO).encode(), str(Path.home()).encode()]


def assert_no_local_path(files: dict[str, bytes], tmp_path: Path) -> None:
    assert files
    leaks = {rel: p.decode() for rel, data in files.items() for p in machine_paths(tmp_path) if p in data}
    assert not leaks, leaks


def assert_published_entry(files: dict[str, bytes]) -> None:
    """config.json / manifest.json name the model local:tiny-bert; the manifest lists the bytes published."""
    config = json.loads(files["config.json"])
    assert config["_name_or_path"] == "local:tiny-bert" and config["pipeline"]["model_id"] == "local:tiny-bert"
    manifest = json.loads(files["manifest.json"])
    assert manifest["model"]["id"] == "local:tiny-bert" and "path" not in manifest["model"]
    assert "timings" not in manifest and "verified_on" not in manifest["verification"]
    import hashlib

    for rel, info in manifest["files"].items():
        assert hashlib.sha256(files[rel]).hexdigest() == info["sha256"] and len(files[rel]) == info["size"], rel


def test_no_local_path_in_anything_published_local_and_hub(one_entry, hub, tmp_path):
    cache = copy_cache(one_entry, tmp_path / "cache")
    key = one_entry["rows"][0]["key"]
    entry = Cache(cache).entry_dir(key)
    original = {p.name: p.read_bytes() for p in entry.iterdir() if p.is_file()}
    assert any(p in original["model.pt2"] for p in machine_paths(tmp_path))  # the fault is real
    assert str(REPO).encode() in original["config.json"] or b"artifacts/models" in original["config.json"]

    # publish=local (the CLI, a cache hit)
    out = tmp_path / "published"
    proc = run_cli("matrix.models=[tiny-bert]", *SHAPE, f"cache.dir={cache}", f"report.dir={tmp_path / 'runs'}",
                   "publish=local", f"publish.dir={out}", env=cli_env(), timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    published = {str(p.relative_to(out)): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert_no_local_path(published, tmp_path)
    repo_dir = out / "compiled" / "tiny-bert-inductor-fp32-b1-s16"
    assert_published_entry({p.name: p.read_bytes() for p in repo_dir.iterdir()})
    cache_dir = out / "cache" / shared_cache.cache_path(one_entry["jobs"][0]["spec"], key)
    assert_published_entry({p.name: p.read_bytes() for p in cache_dir.iterdir()})
    assert {p.name for p in entry.iterdir() if p.is_file()} >= set(original)  # the local entry is untouched
    assert all((entry / n).read_bytes() == b for n, b in original.items())
    assert not list((cache / ".tmp").glob("publish-*"))  # scratch copies removed

    # the rewritten artifact still loads and gives the entry's outputs
    import torch

    from pipeline.modeling import CompiledModelForFeatureExtraction

    ones = torch.ones(1, 16, dtype=torch.long)
    inputs = {"input_ids": torch.arange(16).view(1, 16) * 7, "attention_mask": ones, "token_type_ids": 0 * ones}
    got = CompiledModelForFeatureExtraction.from_pretrained(str(repo_dir))(**inputs).last_hidden_state
    want = CompiledModelForFeatureExtraction.from_pretrained(str(entry))(**inputs).last_hidden_state
    assert torch.allclose(got, want, atol=1e-6, rtol=0)

    # publish=hub on the loopback server: every file of both repos
    rows, jobs = rows_jobs(one_entry, cache)
    publish.publish_rows(rows, jobs, hub_cfg(hub.url, "nopath", "nopath/cache"))
    assert rows[0]["status"] == "passed", rows[0].get("error")
    api = api_for(hub.url)
    for repo in ("nopath/tiny-bert-inductor-fp32-b1-s16", "nopath/cache"):
        folder = Path(api.snapshot_download(repo, cache_dir=tmp_path / "dl"))
        files = {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}
        assert_no_local_path(files, tmp_path)
        assert_published_entry({k.rsplit("/", 1)[-1]: v for k, v in files.items() if not k.endswith("README.md")})
    # and an unchanged re-publish makes no commit (the rewrite is deterministic)
    commits = hub.commits("nopath/tiny-bert-inductor-fp32-b1-s16")
    rows, jobs = rows_jobs(one_entry, cache)
    publish.publish_rows(rows, jobs, hub_cfg(hub.url, "nopath", "nopath/cache"))
    assert rows[0]["published"]["status"] == "unchanged"
    assert hub.commits("nopath/tiny-bert-inductor-fp32-b1-s16") == commits
    assert sha256_file(entry / "model.pt2") == hub_client.FileSpec.of_bytes("m", original["model.pt2"]).sha256
