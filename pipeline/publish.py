"""Publisher: verified cache entries -> Hub model repos + the shared compiled-model cache.

Two destinations per variant (a job that passed verification, status passed or cached): its
**variant repo** (``publish.repo_template``; or one repo per model and one branch per variant
with ``publish.revision_template``): the loadable folder (never logs/) plus a generated model
card README.md with the source model's license; and the **shared cache repo**
(``publish.cache_repo``), laid out as `pipeline.shared_cache` reads it.

Each variant is one atomic commit (`pipeline.hub.commit_files`) to a repo created private
(``publish.private``); ``publish=local`` writes the same layout into ``publish.dir``. Before
anything is pushed: no two variants may share a target; a gated source model is refused unless
``publish.allow_gated``; published files carry no path of this machine (rewritten copies, which
the published manifest describes). `publish_rows` returns the lines to show; it prints nothing.
"""

from __future__ import annotations

import json
import os
import shutil
import string
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from pipeline import keys, local_paths, source_card
from pipeline.cache import MANIFEST, Cache, check_integrity, is_artifact_file, sha256_file
from pipeline.hub import FileSpec, PublishError, PushResult, commit_files, hub_api, scrub
from pipeline.local_layout import local_repo_dir, write_local, write_local_index
from pipeline.model_entries import check_revision, is_hub_id, offline
from pipeline.shared_cache import cache_path, clean_name, index_row, index_update, local_cache_root, platform_tag
from pipeline.tasks import TASKS

README = "README.md"
DEFAULT_REPO_TEMPLATE = "{namespace}/{model_name}-{backend}-{cast_type}-b{batch_size}-s{sequence_length}"
PER_MODEL_REPO_TEMPLATE = "{namespace}/{model_name}"
MAX_FILES_PER_COMMIT = 100  # the Hub is happiest with commits well under a few hundred files
TEMPLATE_FIELDS = ("namespace", "model_name", "backend", "cast_type", "task", "batch_size", "sequence_length", "key")
_SAMPLE = dict(model_name="model", backend="inductor", cast_type="fp32", task="feature-extraction", batch_size=1,
               sequence_length=128, key="0123456789ab")  # fmt: skip
JSON_LIMIT = 64 << 20  # larger .json files are scrubbed as bytes


def _fields(job: dict, publish_cfg: dict) -> dict:
    shapes = job.get("shapes") or job["spec"]["shapes"]
    return dict(namespace=publish_cfg.get("namespace") or "compiled", model_name=clean_name(job["model"]["name"]),
                backend=job["backend"], cast_type=job["cast_type"], task=job["task"], key=job["key"][:12],
                batch_size=shapes.get("batch_size"), sequence_length=shapes.get("sequence_length"))  # fmt: skip


def _repo_template(publish_cfg: dict) -> str:
    template = publish_cfg.get("repo_template") or DEFAULT_REPO_TEMPLATE
    if publish_cfg.get("revision_template") and template == DEFAULT_REPO_TEMPLATE:
        return PER_MODEL_REPO_TEMPLATE  # one repo per model, one branch per variant
    return template


def _render(template: Any, fields: dict) -> tuple[str | None, str | None]:
    """(the template filled in, None) or (None, why it cannot be)."""
    try:
        unknown = [n for _, n, _, _ in string.Formatter().parse(template) if n is not None and n not in TEMPLATE_FIELDS]
        if unknown:
            return None, f"unknown placeholder {{{unknown[0]}}}; known: {', '.join(TEMPLATE_FIELDS)}"
        return template.format(**fields), None
    except (ValueError, KeyError, IndexError, AttributeError, TypeError) as e:
        return None, f"malformed template {template!r} ({type(e).__name__}: {e})"


def _target_of(pc: dict, fields: dict) -> tuple[str | None, str | None, list[str]]:
    """(repo_id, revision, the problems of the templates) for these fields."""
    errors, revision = [], None
    if pc.get("revision_template") is not None:
        revision, why = _render(pc["revision_template"], fields)
        if why or check_revision(revision):
            errors.append(f"publish.revision_template: {why or check_revision(revision)}")
    repo_id, why = _render(_repo_template(pc), fields)
    if why or not is_hub_id(repo_id):
        errors.append(f"publish.repo_template: {why or f'gives {repo_id!r}, which is not a valid Hub repo id'}")
    return repo_id, revision, errors


def check_templates(publish_cfg: dict) -> list[str]:
    """Every problem of publish.repo_template / revision_template / namespace / cache_repo, each
    as "publish.<field>: why" (pure: for validation; the publisher checks it again)."""
    pc = publish_cfg or {}
    errors, ns = [], pc.get("namespace") or "compiled"
    if not is_hub_id(ns) or "/" in ns:
        errors, ns = [f"publish.namespace: {ns!r} is not a valid Hub namespace"], "compiled"
    errors += _target_of(pc, dict(_SAMPLE, namespace=ns))[2]
    repo = pc.get("cache_repo")
    if repo is not None and pc.get("name") == "local":
        if not isinstance(repo, str) or not repo or repo.startswith(("/", "~", "\\")) or ".." in repo:
            errors.append(f"publish.cache_repo: {repo!r} would write outside publish.dir; use a relative name")
    elif repo is not None and not is_hub_id(repo):
        errors.append(f"publish.cache_repo: {repo!r} is not a valid Hub repo id (expected 'org/name')")
    return errors


def variant_target(job: dict, publish_cfg: dict) -> tuple[str, str | None]:
    """(repo_id, revision or None for main) of a job's variant; PublishError when the templates
    cannot give one."""
    repo_id, revision, errors = _target_of(publish_cfg, _fields(job, publish_cfg))
    if errors:
        raise PublishError("; ".join(errors))
    return repo_id, revision


def _published_files(manifest: dict) -> list[str]:
    return [rel for rel in manifest.get("files", {}) if is_artifact_file(rel, logs=False)]


def _aliases(job: dict) -> dict[str, str]:
    """A local model's id and folder (as given and resolved) -> `local:<folder name>`."""
    model, local_id = job["model"], str(job["spec"]["model"]["id"])
    if not model.get("local") or not local_id.startswith("local:"):
        return {}
    given = [model.get("id"), model.get("path")]
    paths = [os.path.abspath(os.path.expanduser(str(p))) for p in given if p]
    return {p.rstrip("/"): local_id for p in [*given, *paths, *map(os.path.realpath, paths)] if p}


def published_manifest(manifest: dict, files: dict | None = None, aliases=None, roots=None) -> dict:
    """The manifest as published: the published files (`files`: their sha256/size as published,
    after local paths were rewritten), nothing of this machine (no model.path, a local model id
    -> local:<name>, no timings or verification host) and, for an entry fetched from the shared
    cache and re-verified here, the metrics and created_at it was published with: so
    re-publishing a fetched entry gives the same bytes and makes no commit."""
    m = {k: v for k, v in manifest.items() if k not in ("fetched_from", "timings", "published_metrics")}
    m.update(created_at=(manifest.get("fetched_from") or {}).get("created_at") or m.get("created_at"))
    m.update(metrics=manifest.get("published_metrics") or m.get("metrics"))
    m["files"] = files or {rel: manifest["files"][rel] for rel in _published_files(manifest)}
    for part, local_only in (("model", ("path",)), ("verification", ("verified_on", "local"))):
        if isinstance(m.get(part), dict):
            m[part] = {k: v for k, v in m[part].items() if k not in local_only}
    return local_paths.scrub_paths_json(m, roots or [], aliases or {})


def publish_files(entry: Path, manifest: dict, job: dict, roots: list[str], scratch_dirs: list[Path]):
    """(files, published manifest): an entry's loadable folder (no logs/) and published
    manifest.json, with every local path rewritten (JSON: a local model -> `local:<name>`, other
    paths `local:<last part>`; other files, model.pt2 too, byte for byte in a copy under
    <cache>/.tmp/publish-*, a folder appended to `scratch_dirs`)."""
    files, table, tmp = [], {}, None
    aliases = _aliases(job)
    for rel in sorted(_published_files(manifest)):
        src, info = entry / rel, manifest["files"][rel]
        f = FileSpec(rel, info["sha256"], info["size"], local=src)
        is_json = rel.endswith(".json") and info["size"] <= JSON_LIMIT
        data = local_paths.scrub_paths_json_file(src, roots, aliases) if is_json else False
        if data:
            f = FileSpec.of_bytes(rel, data)
        elif data is False:
            if tmp is None:
                (entry.parent.parent / ".tmp").mkdir(parents=True, exist_ok=True)
                scratch_dirs.append(tmp := Path(tempfile.mkdtemp(prefix="publish-", dir=entry.parent.parent / ".tmp")))
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            if local_paths.scrub_paths_file(src, tmp / rel, roots):
                f = FileSpec(rel, sha256_file(tmp / rel), (tmp / rel).stat().st_size, local=tmp / rel)
        files.append(f)
        table[rel] = {"sha256": f.sha256, "size": f.size}
    m = published_manifest(manifest, table, aliases, roots)
    return files + [FileSpec.of_bytes(MANIFEST, _manifest_bytes(m))], m


def _manifest_bytes(manifest: dict) -> bytes:
    return (json.dumps(manifest, indent=1, sort_keys=True) + "\n").encode()


def model_class(task: str) -> str:
    if task == "sentence-embeddings":  # AutoModel underneath, but its own runtime class
        return "CompiledModelForSentenceTransformers"
    auto = TASKS[task].auto_class if task in TASKS else "AutoModel"
    return "CompiledModelFor" + (auto[12:] if auto.startswith("AutoModelFor") else "FeatureExtraction")


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.6g}"
    if isinstance(v, (dict, list)):
        return "`" + json.dumps(v, sort_keys=True) + "`"
    return str(v).replace("|", "\\|")


def model_card(
    job: dict, manifest: dict, repo_id: str, revision: str | None, cache_repo: str | None, facts: dict | None = None
) -> str:
    """README.md of a variant repo: YAML metadata (the source model's license from `facts`, see
    source_card.source_facts; `other` when unknown) + how to load, spec, toolchain, metrics, key.
    Deterministic (no timestamps of its own), so an unchanged variant gives the same card."""
    import yaml

    spec = manifest.get("spec") or job["spec"]
    model = manifest.get("model") or job["model"]
    task = spec["task"]
    facts = facts or {}
    meta: dict[str, Any] = {"license": facts.get("license") or "other"}
    meta.update({k: facts[k] for k in ("license_name", "license_link") if facts.get(k)})
    if not model.get("local") and not str(spec["model"]["id"]).startswith("local:"):
        meta["base_model"] = spec["model"]["id"]
    hub_tag = "sentence-similarity" if task == "sentence-embeddings" else task  # the Hub's name for it
    meta.update(library_name="pipeline", pipeline_tag=hub_tag,
                tags=["pipeline", "compiled", spec["backend"]["name"], spec["cast_type"], task])  # fmt: skip
    cls = model_class(task)
    rev_arg = f', revision="{revision}"' if revision else ""
    shapes = spec["shapes"]
    shape = f"b{shapes.get('batch_size')} s{shapes.get('sequence_length')}"
    title = f"{model.get('name') or spec['model']['id']}: {spec['backend']['name']} {spec['cast_type']} {shape}"
    lines = [
        *("---", yaml.safe_dump(meta, sort_keys=False).strip(), "---", "", f"# {title}", ""),
        f"A compiled `{task}` variant of `{spec['model']['id']}`, built and verified against the CPU fp32 "
        "reference by `pipeline`. It loads with no compile step and no model code.",
        "",
        f"License: `{meta['license']}`, the license of the base model, whose weights are in this artifact."
        if facts.get("license")
        else f"License: the license of `{spec['model']['id']}` could not be determined; check the base model's "
        "terms before you use or redistribute this artifact (its weights are in it).",
        *(["", f"The base model is gated ({facts['gated']}); published with publish.allow_gated=true."]
          if facts.get("gated") else []),  # fmt: skip
        "",
        *("## How to load", "", "```python", f"from pipeline.modeling import {cls}", ""),
        *(f'model = {cls}.from_pretrained("{repo_id}"{rev_arg})', "```", "", "## Spec", ""),
        *("| field | value |", "|---|---|"),
    ]
    rows = [("model", spec["model"]["id"]), ("model revision", spec["model"].get("revision")), ("task", task),
            *sorted(shapes.items()), ("cast_type", spec["cast_type"]), ("auto_cast", spec.get("auto_cast")),
            ("dynamic_batch_size", spec.get("dynamic_batch_size")), ("backend", spec["backend"]["name"]),
            ("backend options", spec["backend"].get("options")), ("recipe", spec.get("recipe"))]  # fmt: skip
    lines += [f"| {k} | {_fmt(v)} |" for k, v in rows]
    lines += ["", "## Toolchain", "", "| component | version |", "|---|---|"]
    lines += [f"| {k} | {_fmt(v)} |" for k, v in keys.flatten(spec.get("toolchain") or {}).items()]
    verification = manifest.get("verification") or {}
    lines += [
        *("", "## Verification", ""),
        f"Status: **{verification.get('status', 'passed')}** against the CPU fp32 eager reference"
        + (f", tolerance {_fmt(verification.get('tolerance'))}." if verification.get("tolerance") else "."),
        *("", "| output | metric | value |", "|---|---|---|"),
    ]
    for out, metrics in sorted((manifest.get("metrics") or {}).items()):
        for name, value in sorted(metrics.items()) if isinstance(metrics, dict) else [("value", metrics)]:
            lines.append(f"| {out} | {name} | {_fmt(value)} |")
    lines += [
        *("", "## Key", ""),
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
    for v in variants:
        if batch and sum(len(b.files) for b in batch) + len(v.files) > limit:
            yield batch
            batch = []
        batch.append(v)
    yield from [batch] if batch else []


def _distinct_targets(todo: list[tuple], pc: dict) -> list[tuple]:
    """Fail every row whose (repo, revision) another variant also maps to (each would overwrite
    the other); returns the rest."""
    by_target: dict[tuple, list[tuple]] = {}
    for item in todo:
        by_target.setdefault(item[2:], []).append(item)
    rev = pc.get("revision_template")
    how = f"publish.repo_template {_repo_template(pc)!r}" + (f" with publish.revision_template {rev!r}" if rev else
                                                             " and no publish.revision_template")  # fmt: skip
    for (repo_id, revision), items in ((t, i) for t, i in by_target.items() if len(i) > 1):
        for row, *_ in items:
            _fail_row(row, f"{how} maps {len(items)} variants (keys {', '.join(i[1]['key'][:12] for i in items)}) "
                      f"to {repo_id}{'@' + revision if revision else ''}; each would overwrite the other. Add the "
                      "fields that tell them apart ({backend}, {cast_type}, {batch_size}, {sequence_length} or "
                      "{key}) or set publish.revision_template; nothing was pushed")  # fmt: skip
    return [item for item in todo if len(by_target[item[2:]]) == 1]


def variants(rows: list[dict], jobs: list[dict], publish_cfg: dict, scratch_dirs: list[Path],
             repos: bool = True) -> list[Variant]:  # fmt: skip
    """The rows that passed verification, ready to push (files scrubbed of local paths, checked
    against their manifests, gated sources refused); the others are failed in place. `repos=False`
    (mode=sync: the shared cache only) computes no variant repo target and no model card."""
    by_key = {j["key"]: j for j in jobs}
    problems = check_templates(publish_cfg)
    todo = []
    seen: set[str] = set()
    for row in rows:
        if row.get("status") not in ("passed", "cached") or row["key"] in seen:
            continue  # failed / unverified / skipped: never published; a key twice (reuse_larger_shapes): once
        seen.add(row["key"])
        job = by_key.get(row["key"])
        try:
            if problems:
                raise PublishError("; ".join(problems))
            if job is None:
                raise PublishError(f"no job for key {row['key'][:12]}")
            todo.append((row, job, *(variant_target(job, publish_cfg) if repos else (None, None))))
        except PublishError as e:
            _fail_row(row, str(e))
    facts_of: dict[str, dict] = {}
    out = []
    for row, job, repo_id, revision in _distinct_targets(todo, publish_cfg) if repos else todo:
        try:
            entry = Path(row.get("artifact") or "")
            cache = Cache(entry.parent.parent) if row.get("artifact") else None
            manifest = cache.manifest(row["key"]) if cache else None
            if manifest is None or (manifest.get("verification") or {}).get("status", "passed") != "passed":
                raise PublishError(f"no verified cache entry for {row['key'][:12]} at {entry}")
            problem = check_integrity(entry, {"files": {r: manifest["files"][r] for r in _published_files(manifest)}})
            if problem:
                raise PublishError(f"cache entry {row['key'][:12]} failed its integrity check ({problem}); "
                                   "not published")  # fmt: skip
            model = job["model"]
            ident = f"{model.get('id')}@{model.get('revision')}"
            facts = facts_of[ident] = facts_of.get(ident) or source_card.source_facts(model, online=not offline())
            if facts["gated"] and not publish_cfg.get("allow_gated"):
                raise PublishError(
                    f"source model {facts['gated']} is gated; its weights are baked into the artifact, so publishing "
                    "would redistribute them: refused. Set publish.allow_gated=true only if its terms allow that"
                )
            roots = local_paths.local_roots(entry.parent.parent, model.get("path") if model.get("local") else None,
                                    publish_cfg.get("dir"))  # fmt: skip
            files, published = publish_files(entry, manifest, job, roots, scratch_dirs)
            v = Variant(row, job, entry, manifest, repo_id, revision, files, cache_path(job["spec"], job["key"]))
            cache_repo = publish_cfg.get("cache_repo") if publish_cfg.get("name") == "hub" else None
            if repos:
                card = model_card(job, published, repo_id, revision, cache_repo, facts)
                v.card = local_paths.scrub_paths_text(card, roots)
            out.append(v)
        except PublishError as e:
            _fail_row(row, str(e))
        except (OSError, ValueError) as e:
            _fail_row(row, f"preparing {row['key'][:12]} for publishing failed: {type(e).__name__}: {e}")
    return out


def _fail_row(row: dict, message: str) -> None:
    row["status"] = "failed-to-publish"
    row["error"] = scrub(message)
    row.setdefault("published", None)


def publish_rows(rows: list[dict], jobs: list[dict], cfg: dict) -> list[str]:
    """Publish every row that passed verification; mutates rows: `published` = {repo,
    revision, commit, ...}, or status `failed-to-publish` with the error (the local cache
    entry stays valid, the exit code becomes non-zero). Returns the lines to show the user."""
    pc, messages = cfg["publish"], []
    mode = pc.get("name", "none")
    if mode == "none":
        return messages
    scratch_dirs: list[Path] = []  # rewritten copies of published files, removed once pushed
    try:
        todo = variants(rows, jobs, pc, scratch_dirs)
        if not todo:
            return messages
        if pc.get("dry_run"):
            _dry_run(todo, pc, messages)
        elif mode == "local":
            _publish_local(todo, pc)
        elif mode == "hub":
            _publish_hub(todo, pc, messages)
        else:
            for v in todo:
                _fail_row(v.row, f"publish.name {mode!r} is not one of none, local, hub")
        return messages
    finally:
        for d in scratch_dirs:
            shutil.rmtree(d, ignore_errors=True)


def _target(v: Variant) -> str:
    return f"{v.repo_id}@{v.revision}" if v.revision else v.repo_id


def _dry_run(variants: list[Variant], pc: dict, messages: list[str]) -> None:
    endpoint = pc.get("endpoint") or os.environ.get("HF_ENDPOINT") or "https://huggingface.co"
    where = f"hub {endpoint}" if pc["name"] == "hub" else f"folder {pc.get('dir')}"
    cache_repo = pc.get("cache_repo") if pc["name"] == "hub" else str(local_cache_root(pc))
    messages.append(f"dry run: would publish {len(variants)} variant(s) to {where} (nothing is pushed)")
    for v in variants:
        files = v.repo_files()
        size = sum(f.size for f in files)
        names = ", ".join(f.path for f in files)
        key = v.job["key"][:12]
        messages.append(f"  would publish {key} -> {_target(v)}: {len(files)} files, {size} bytes ({names})")
        if cache_repo:
            messages.append(f"  would publish {key} -> {cache_repo}:{v.cache_dir}/ ({len(v.files)} files)")
        v.row["published"] = dict(status="would publish", repo=v.repo_id, revision=v.revision, commit=None,
                                  files=[f.path for f in files], bytes=size, cache_repo=cache_repo,
                                  cache_path=v.cache_dir if cache_repo else None)  # fmt: skip


def _publish_local(variants: list[Variant], pc: dict) -> None:
    root, cache_root = Path(pc.get("dir") or "artifacts/published"), local_cache_root(pc)
    for v in variants:
        try:
            cache_changed = write_local(cache_root / v.cache_dir, v.files, root)
            dest = local_repo_dir(root, v.repo_id, v.revision)
            changed = write_local(dest, v.repo_files(), root)
            v.row["published"] = dict(status="published" if changed or cache_changed else "unchanged", repo=v.repo_id,
                                      revision=v.revision, commit=None, path=str(dest), cache_repo=str(cache_root),
                                      cache_path=v.cache_dir)  # fmt: skip
        except OSError as e:
            _fail_row(v.row, f"writing {v.repo_id} under {root} failed: {e}")
    try:
        write_local_index(cache_root, _index_rows([v for v in variants if v.row["status"] != "failed-to-publish"]))
    except OSError as e:
        for v in variants:
            _fail_row(v.row, f"writing the shared cache index under {cache_root} failed: {e}")


def _index_rows(variants: list[Variant]) -> dict[str, list[dict]]:
    """platform tag -> the index rows of these variants (from the manifests as published)."""
    out: dict[str, list[dict]] = {}
    for v in variants:
        manifest = next(f for f in v.files if f.path == MANIFEST)
        out.setdefault(v.cache_dir.split("/")[0], []).append(index_row(json.loads(manifest.data)))
    return out


def push_cache(variants: list[Variant], api, pc: dict) -> dict[str, PushResult]:
    """Push the variants' entries to publish.cache_repo, whole variants per commit, each commit
    with the platform indexes naming them; key -> the commit's PushResult (no commit when the
    cache already holds them). A failed batch fails its rows. A repo it creates is private
    unless publish.private=false."""
    cache_repo, out = pc["cache_repo"], {}
    for batch in _batches(variants):
        files = [f for v in batch for f in v.cache_files()]
        names = ", ".join(f"{v.job['key'][:12]} ({v.job['model']['name']})" for v in batch)
        try:
            res = commit_files(
                api, cache_repo, files, private=bool(pc.get("private", True)),
                derived=index_update(api, cache_repo, _index_rows(batch)),
                commit_message=f"Add {len(batch)} compiled entr{'y' if len(batch) == 1 else 'ies'}",
                commit_description=f"pipeline: {names}\n\n"
                + "\n".join(f"- {platform_tag(v.job['spec'])}/{v.job['key']}" for v in batch),
            )  # fmt: skip
            out.update({v.job["key"]: res for v in batch})
        except PublishError as e:
            for v in batch:
                _fail_row(v.row, f"shared cache: {e}")
    return out


def _publish_hub(variants: list[Variant], pc: dict, messages: list[str]) -> None:
    if offline():
        for v in variants:
            _fail_row(v.row, "HF_HUB_OFFLINE is set: publish=hub needs the Hub; unset it, or use publish=local")
        return
    api, cache_repo, private = hub_api(pc), pc.get("cache_repo"), bool(pc.get("private", True))
    pushed = push_cache(variants, api, pc) if cache_repo else {}
    cache_commit = {k: res.oid for k, res in pushed.items()}
    for v in variants:
        if v.row["status"] == "failed-to-publish":
            continue
        try:
            res = commit_files(
                api, v.repo_id, v.repo_files(), revision=v.revision, prune=True, private=private,
                commit_message=f"Compiled {v.job['model']['name']} {v.job['backend']} {v.job['cast_type']} "
                f"b{v.job['shapes'].get('batch_size')} s{v.job['shapes'].get('sequence_length')} ({v.job['key'][:12]})",
                commit_description=f"pipeline key {v.job['key']}",
            )
        except PublishError as e:
            _fail_row(v.row, str(e))
            continue
        v.row["published"] = dict(status="published" if res.committed else "unchanged", repo=v.repo_id,
                                  revision=v.revision, commit=res.oid, cache_repo=cache_repo,
                                  cache_path=v.cache_dir if cache_repo else None,
                                  cache_commit=cache_commit.get(v.job["key"]), endpoint=api.endpoint)  # fmt: skip
        messages.append(
            f"published {v.job['key'][:12]} -> {_target(v)} (commit {res.oid[:10]})"
            if res.committed
            else f"unchanged {v.job['key'][:12]} -> {_target(v)} (already at {str(res.oid)[:10]}; no commit)"
        )
