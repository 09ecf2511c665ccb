"""Publisher: verified cache entries -> Hub model repos + the shared compiled-model cache.

Two destinations per variant (a job that passed verification, status passed or cached):

* its **variant repo** (``publish.repo_template``; or one repo per model and one branch per
  variant with ``publish.revision_template``): the loadable folder (config.json, model.pt2,
  tokenizer files, manifest.json; never logs/) plus a generated model card README.md;
* the **shared cache repo** (``publish.cache_repo``), laid out as `pipeline.shared_cache`
  reads it.

Each variant is one atomic commit (`pipeline.hub.commit_files`); ``publish=local`` writes the
same layout into ``publish.dir`` (temp dir + rename) for offline demos. `publish_rows` updates
the rows and returns the lines to show; it prints nothing.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from pipeline import keys
from pipeline.cache import MANIFEST, Cache, artifact_files, check_integrity, is_artifact_file, sha256_file
from pipeline.hub import FileSpec, PublishError, commit_files, hub_api, scrub
from pipeline.model_entries import HUB_ID, check_revision, offline
from pipeline.shared_cache import cache_path, clean_name, local_cache_root, platform_tag
from pipeline.tasks import TASKS

README = "README.md"

DEFAULT_REPO_TEMPLATE = "{namespace}/{model_name}-{backend}-{cast_type}-b{batch_size}-s{sequence_length}"

PER_MODEL_REPO_TEMPLATE = "{namespace}/{model_name}"

MAX_FILES_PER_COMMIT = 100  # the Hub is happiest with commits well under a few hundred files


def _fields(job: dict, publish_cfg: dict) -> dict:
    shapes = job.get("shapes") or job["spec"]["shapes"]
    return {
        "namespace": publish_cfg.get("namespace") or "compiled",
        "model_name": clean_name(job["model"]["name"]),
        "backend": job["backend"],
        "cast_type": job["cast_type"],
        "task": job["task"],
        "batch_size": shapes.get("batch_size"),
        "sequence_length": shapes.get("sequence_length"),
        "key": job["key"][:12],
    }


def variant_target(job: dict, publish_cfg: dict) -> tuple[str, str | None]:
    """(repo_id, revision or None for main) of a job's variant."""
    fields = _fields(job, publish_cfg)
    template = publish_cfg.get("repo_template") or DEFAULT_REPO_TEMPLATE
    revision = None
    if publish_cfg.get("revision_template"):
        if template == DEFAULT_REPO_TEMPLATE:
            template = PER_MODEL_REPO_TEMPLATE  # one repo per model, one branch per variant
        revision = publish_cfg["revision_template"].format(**fields)
        problem = check_revision(revision)
        if problem:
            raise PublishError(f"publish.revision_template gives {problem}")
    repo_id = template.format(**fields)
    if not HUB_ID.match(repo_id) or ".." in repo_id or "--" in repo_id:
        raise PublishError(f"publish.repo_template gives {repo_id!r}, which is not a valid Hub repo id")
    return repo_id, revision


def _published_files(manifest: dict) -> list[str]:
    return [rel for rel in manifest.get("files", {}) if is_artifact_file(rel, logs=False)]


def published_manifest(manifest: dict) -> dict:
    """The manifest as published: only the files that are published (no logs/), no local
    paths, and the original created_at (an entry fetched from the shared cache keeps it), so
    re-publishing a fetched entry gives the same bytes and makes no commit."""
    m = {k: v for k, v in manifest.items() if k != "fetched_from"}
    origin = manifest.get("fetched_from") or {}
    if origin.get("created_at"):
        m["created_at"] = origin["created_at"]
    m["files"] = {rel: manifest["files"][rel] for rel in _published_files(manifest)}
    if isinstance(m.get("model"), dict):
        m["model"] = {k: v for k, v in m["model"].items() if k != "path"}
    return m


def _manifest_bytes(manifest: dict) -> bytes:
    return (json.dumps(manifest, indent=1, sort_keys=True) + "\n").encode()


def entry_files(entry: Path, manifest: dict) -> list[FileSpec]:
    """The loadable folder of an entry (no logs/) with its published manifest.json."""
    files = [
        FileSpec(rel, manifest["files"][rel]["sha256"], manifest["files"][rel]["size"], local=entry / rel)
        for rel in sorted(_published_files(manifest))
    ]
    files.append(FileSpec.of_bytes(MANIFEST, _manifest_bytes(published_manifest(manifest))))
    return files


def model_class(task: str) -> str:
    auto = TASKS[task].auto_class if task in TASKS else "AutoModel"
    return "CompiledModelFor" + (
        auto[len("AutoModelFor") :] if auto.startswith("AutoModelFor") else "FeatureExtraction"
    )


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.6g}"
    if isinstance(v, (dict, list)):
        return "`" + json.dumps(v, sort_keys=True) + "`"
    return str(v).replace("|", "\\|")


def model_card(job: dict, manifest: dict, repo_id: str, revision: str | None, cache_repo: str | None) -> str:
    """README.md of a variant repo: YAML metadata + how to load, spec, toolchain, metrics, key.
    Deterministic (no timestamps of its own), so an unchanged variant gives the same card."""
    import yaml

    spec = manifest.get("spec") or job["spec"]
    model = manifest.get("model") or job["model"]
    task = spec["task"]
    meta: dict[str, Any] = {}
    if not model.get("local") and not str(spec["model"]["id"]).startswith("local:"):
        meta["base_model"] = spec["model"]["id"]
    meta["library_name"] = "pipeline"
    meta["pipeline_tag"] = task
    meta["tags"] = ["pipeline", "compiled", spec["backend"]["name"], spec["cast_type"], task]
    cls = model_class(task)
    rev_arg = f', revision="{revision}"' if revision else ""
    shapes = spec["shapes"]
    shape = f"b{shapes.get('batch_size')} s{shapes.get('sequence_length')}"
    title = f"{model.get('name') or spec['model']['id']}: {spec['backend']['name']} {spec['cast_type']} {shape}"
    lines = [
        "---",
        yaml.safe_dump(meta, sort_keys=False).strip(),
        "---",
        "",
        f"# {title}",
        "",
        f"A compiled `{task}` variant of `{spec['model']['id']}`, built and verified against the CPU fp32 "
        "reference by `pipeline`. It loads with no compile step and no model code.",
        "",
        "## How to load",
        "",
        "```python",
        f"from pipeline.modeling import {cls}",
        "",
        f'model = {cls}.from_pretrained("{repo_id}"{rev_arg})',
        "```",
        "",
        "## Spec",
        "",
        "| field | value |",
        "|---|---|",
    ]
    rows = [
        ("model", spec["model"]["id"]),
        ("model revision", spec["model"].get("revision")),
        ("task", task),
        *[(k, v) for k, v in sorted(shapes.items())],
        ("cast_type", spec["cast_type"]),
        ("auto_cast", spec.get("auto_cast")),
        ("dynamic_batch_size", spec.get("dynamic_batch_size")),
        ("backend", spec["backend"]["name"]),
        ("backend options", spec["backend"].get("options")),
        ("recipe", spec.get("recipe")),
    ]
    lines += [f"| {k} | {_fmt(v)} |" for k, v in rows]
    lines += ["", "## Toolchain", "", "| component | version |", "|---|---|"]
    lines += [f"| {k} | {_fmt(v)} |" for k, v in keys.flatten(spec.get("toolchain") or {}).items()]
    verification = manifest.get("verification") or {}
    lines += [
        "",
        "## Verification",
        "",
        f"Status: **{verification.get('status', 'passed')}** against the CPU fp32 eager reference"
        + (f", tolerance {_fmt(verification.get('tolerance'))}." if verification.get("tolerance") else "."),
        "",
        "| output | metric | value |",
        "|---|---|---|",
    ]
    for out, metrics in sorted((manifest.get("metrics") or {}).items()):
        for name, value in sorted(metrics.items()) if isinstance(metrics, dict) else [("value", metrics)]:
            lines.append(f"| {out} | {name} | {_fmt(value)} |")
    lines += [
        "",
        "## Key",
        "",
        f"`{job['key']}` (sha256 of the canonical JSON of the spec; `python -m pipeline mode=explain "
        f"key={job['key'][:12]}`).",
    ]
    if cache_repo:
        lines += ["", f"Also in the shared cache `{cache_repo}` at `{cache_path(spec, job['key'])}/`."]
    return "\n".join(lines) + "\n"


@dataclass
class Variant:
    row: dict
    job: dict
    entry: Path
    manifest: dict
    repo_id: str
    revision: str | None
    files: list[FileSpec]  # entry files + manifest (no README)
    cache_dir: str  # <platform-tag>/<kk>/<key>
    card: str = ""

    def repo_files(self) -> list[FileSpec]:
        return self.files + [FileSpec.of_bytes(README, self.card.encode())]

    def cache_files(self) -> list[FileSpec]:
        return [f.with_path(f"{self.cache_dir}/{f.path}") for f in self.files]


def _batches(variants: list[Variant], limit: int = MAX_FILES_PER_COMMIT) -> Iterable[list[Variant]]:
    """Whole variants per batch (a variant is never split across commits), <= limit files."""
    batch: list[Variant] = []
    n = 0
    for v in variants:
        k = len(v.files)
        if batch and n + k > limit:
            yield batch
            batch, n = [], 0
        batch.append(v)
        n += k
    if batch:
        yield batch


def _local_tree(folder: Path) -> dict[str, tuple[str, int]]:
    return {rel: (sha256_file(p), p.stat().st_size) for rel, p in artifact_files(folder, manifest=True).items()}


def write_local(dest: Path, files: list[FileSpec], root: Path) -> bool:
    """Make `dest` hold exactly `files` (staged in <root>/.tmp, then renamed into place).
    False when it already did (nothing written)."""
    if dest.is_dir() and _local_tree(dest) == {f.path: (f.sha256, f.size) for f in files}:
        return False
    (root / ".tmp").mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix="stage-", dir=root / ".tmp"))
    try:
        for f in files:
            target = stage / f.path
            target.parent.mkdir(parents=True, exist_ok=True)
            if f.data is not None:
                target.write_bytes(f.data)
            else:
                shutil.copyfile(f.local, target)
        dest.parent.mkdir(parents=True, exist_ok=True)
        old = None
        if dest.exists():
            old = root / ".tmp" / f"old-{dest.name}-{os.getpid()}-{time.time_ns()}"
            os.rename(dest, old)
        os.rename(stage, dest)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return True
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def local_repo_dir(root: Path, repo_id: str, revision: str | None) -> Path:
    return root / (f"{repo_id}@{revision}" if revision else repo_id)


def _variants(rows: list[dict], jobs: list[dict], publish_cfg: dict) -> list[Variant]:
    by_key = {j["key"]: j for j in jobs}
    out = []
    for row in rows:
        if row.get("status") not in ("passed", "cached"):
            continue  # failed / unverified / skipped: never published
        job = by_key.get(row["key"])
        try:
            if job is None:
                raise PublishError(f"no job for key {row['key'][:12]}")
            entry = Path(row.get("artifact") or "")
            cache = Cache(entry.parent.parent) if row.get("artifact") else None
            manifest = cache.manifest(row["key"]) if cache else None
            if manifest is None or (manifest.get("verification") or {}).get("status", "passed") != "passed":
                raise PublishError(f"no verified cache entry for {row['key'][:12]} at {entry}")
            problem = check_integrity(entry, {"files": {r: manifest["files"][r] for r in _published_files(manifest)}})
            if problem:
                raise PublishError(
                    f"cache entry {row['key'][:12]} failed its integrity check ({problem}); not published"
                )
            repo_id, revision = variant_target(job, publish_cfg)
            v = Variant(
                row,
                job,
                entry,
                manifest,
                repo_id,
                revision,
                entry_files(entry, manifest),
                cache_path(job["spec"], job["key"]),
            )
            v.card = model_card(
                job,
                manifest,
                repo_id,
                revision,
                publish_cfg.get("cache_repo") if publish_cfg.get("name") == "hub" else None,
            )
            out.append(v)
        except PublishError as e:
            row.update(status="failed-to-publish", error=str(e))
    return out


def _fail_row(row: dict, message: str) -> None:
    row["status"] = "failed-to-publish"
    row["error"] = scrub(message)
    row.setdefault("published", None)


def publish_rows(rows: list[dict], jobs: list[dict], cfg: dict) -> list[str]:
    """Publish every row that passed verification; mutates rows: `published` = {repo,
    revision, commit, ...}, or status `failed-to-publish` with the error (the local cache
    entry stays valid, the exit code becomes non-zero). Returns the lines to show the user."""
    pc = cfg["publish"]
    mode = pc.get("name", "none")
    messages: list[str] = []
    if mode == "none":
        return messages
    variants = _variants(rows, jobs, pc)
    if not variants:
        return messages
    if pc.get("dry_run"):
        _dry_run(variants, pc, messages)
    elif mode == "local":
        _publish_local(variants, pc)
    elif mode == "hub":
        _publish_hub(variants, pc, messages)
    else:
        for v in variants:
            _fail_row(v.row, f"publish.name {mode!r} is not one of none, local, hub")
    return messages


def _dry_run(variants: list[Variant], pc: dict, messages: list[str]) -> None:
    where = (
        "hub " + (pc.get("endpoint") or os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
        if pc["name"] == "hub"
        else f"folder {pc.get('dir')}"
    )
    cache_repo = pc.get("cache_repo") if pc["name"] == "hub" else str(local_cache_root(pc))
    messages.append(f"dry run: would publish {len(variants)} variant(s) to {where} (nothing is pushed)")
    for v in variants:
        files = v.repo_files()
        size = sum(f.size for f in files)
        target = f"{v.repo_id}@{v.revision}" if v.revision else v.repo_id
        messages.append(
            f"  would publish {v.job['key'][:12]} -> {target}: {len(files)} files, {size} bytes "
            f"({', '.join(f.path for f in files)})"
        )
        if cache_repo:
            messages.append(
                f"  would publish {v.job['key'][:12]} -> {cache_repo}:{v.cache_dir}/ ({len(v.files)} files)"
            )
        v.row["published"] = {
            "status": "would publish",
            "repo": v.repo_id,
            "revision": v.revision,
            "commit": None,
            "files": [f.path for f in files],
            "bytes": size,
            "cache_repo": cache_repo,
            "cache_path": v.cache_dir if cache_repo else None,
        }


def _publish_local(variants: list[Variant], pc: dict) -> None:
    root = Path(pc.get("dir") or "artifacts/published")
    cache_root = local_cache_root(pc)
    for v in variants:
        try:
            cache_changed = write_local(cache_root / v.cache_dir, v.files, root)
            dest = local_repo_dir(root, v.repo_id, v.revision)
            changed = write_local(dest, v.repo_files(), root)
            v.row["published"] = {
                "status": "published" if changed or cache_changed else "unchanged",
                "repo": v.repo_id,
                "revision": v.revision,
                "commit": None,
                "path": str(dest),
                "cache_repo": str(cache_root),
                "cache_path": v.cache_dir,
            }
        except OSError as e:
            _fail_row(v.row, f"writing {v.repo_id} under {root} failed: {e}")


def _publish_hub(variants: list[Variant], pc: dict, messages: list[str]) -> None:
    if offline():
        for v in variants:
            _fail_row(v.row, "HF_HUB_OFFLINE is set: publish=hub needs the Hub; unset it, or use publish=local")
        return
    api = hub_api(pc)
    cache_repo = pc.get("cache_repo")
    cache_commit: dict[str, str | None] = {}
    if cache_repo:
        for batch in _batches(variants):
            files = [f for v in batch for f in v.cache_files()]
            names = ", ".join(f"{v.job['key'][:12]} ({v.repo_id})" for v in batch)
            try:
                res = commit_files(
                    api,
                    cache_repo,
                    files,
                    commit_message=f"Add {len(batch)} compiled entr{'y' if len(batch) == 1 else 'ies'}",
                    commit_description=f"pipeline: {names}\n\n"
                    + "\n".join(f"- {platform_tag(v.job['spec'])}/{v.job['key']}" for v in batch),
                )
                for v in batch:
                    cache_commit[v.job["key"]] = res.oid
            except PublishError as e:
                for v in batch:
                    _fail_row(v.row, f"shared cache: {e}")
    for v in variants:
        if v.row["status"] == "failed-to-publish":
            continue
        try:
            res = commit_files(
                api,
                v.repo_id,
                v.repo_files(),
                revision=v.revision,
                prune=True,
                commit_message=f"Compiled {v.job['model']['name']} {v.job['backend']} {v.job['cast_type']} "
                f"b{v.job['shapes'].get('batch_size')} s{v.job['shapes'].get('sequence_length')} ({v.job['key'][:12]})",
                commit_description=f"pipeline key {v.job['key']}",
            )
        except PublishError as e:
            _fail_row(v.row, str(e))
            continue
        v.row["published"] = {
            "status": "published" if res.committed else "unchanged",
            "repo": v.repo_id,
            "revision": v.revision,
            "commit": res.oid,
            "cache_repo": cache_repo,
            "cache_path": v.cache_dir if cache_repo else None,
            "cache_commit": cache_commit.get(v.job["key"]),
            "endpoint": api.endpoint,
        }
        target = f"{v.repo_id}@{v.revision}" if v.revision else v.repo_id
        messages.append(
            f"published {v.job['key'][:12]} -> {target} (commit {res.oid[:10]})"
            if res.committed
            else f"unchanged {v.job['key'][:12]} -> {target} (already at {str(res.oid)[:10]}; no commit)"
        )
