"""Content-addressed local store of verified compiled artifacts.

    <dir>/<key[:2]>/<key>/      an entry: the loadable folder + manifest.json + logs/
    <dir>/.tmp/<key>-<rand>/    entries being built (same filesystem, renamed into place)
    <dir>/.locks/<key>.lock     per-key filelock: one compile per key across processes
    <dir>/.failures/<key>.json  why a key failed last time (retried unless retry_failed=false)
    <dir>/.programs/<graph key>.json  weights: refit: the entry whose model.pt2 other fine-tunes refit

An entry only exists once it passed verification; it is written in a temp dir and renamed
into place, so a crash never leaves a half entry. Every file's sha256 is in the manifest
and checked before the entry is used.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

MANIFEST = "manifest.json"
LAST_USED = ".last_used"
_HEX64 = re.compile(r"[0-9a-f]{64}")


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def is_artifact_file(rel: str, logs: bool = True, manifest: bool = False) -> bool:
    """Whether a relative path belongs to an artifact: never dot files or folders (work dirs,
    `.last_used`), logs/ only when asked, manifest.json only when asked. The one filter."""
    parts = rel.split("/")
    if any(part.startswith(".") for part in parts):
        return False
    if rel == MANIFEST:
        return manifest
    return logs or parts[0] != "logs"


def artifact_files(folder: Path, logs: bool = True, manifest: bool = False) -> dict[str, Path]:
    """relative path -> path of the files of an artifact folder (see `is_artifact_file`)."""
    folder = Path(folder)
    return {
        rel: p
        for p in sorted(folder.rglob("*"))
        if p.is_file() and is_artifact_file(rel := p.relative_to(folder).as_posix(), logs, manifest)
    }


def file_table(folder: Path) -> dict[str, dict[str, Any]]:
    """relative path -> {sha256, size} for every file of an entry but the manifest (logs included)."""
    return {rel: {"sha256": sha256_file(p), "size": p.stat().st_size} for rel, p in artifact_files(folder).items()}


def safe_rel(rel: object) -> bool:
    """A relative path inside a folder: no absolute path, no `..`, no empty or `.` parts, no
    backslash or NUL. (Every reader of a file table from elsewhere checks its names with this.)"""
    if not isinstance(rel, str) or not rel or rel.startswith("/") or "\\" in rel or "\0" in rel:
        return False
    return all(part and part not in (".", "..") for part in rel.split("/"))


def check_integrity(folder: Path, manifest: dict) -> str | None:
    """None when every file listed in the manifest is present with its size and sha256; else
    what is wrong (a malformed manifest included: it never raises on what it reads)."""
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if not isinstance(files, dict):
        return f"{MANIFEST}: no file table"
    for rel, meta in files.items():
        if not safe_rel(rel):
            return f"{MANIFEST}: {rel!r} is not a path inside the entry"
        if not (isinstance(meta, dict) and isinstance(meta.get("size"), int) and isinstance(meta.get("sha256"), str)):
            return f"{MANIFEST}: malformed record for {rel}"
        p = folder / rel
        if not p.is_file():
            return f"{rel}: missing"
        if p.stat().st_size != meta["size"]:
            return f"{rel}: size {p.stat().st_size} != {meta['size']}"
        if sha256_file(p) != meta["sha256"]:
            return f"{rel}: sha256 mismatch"
    return None


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class Cache:
    def __init__(self, root: str | Path):
        self.root = Path(root)

    def inductor_env(self, env: dict | None = None) -> dict:
        """The environment for a process that compiles into this cache: Inductor's own cache
        (TORCHINDUCTOR_CACHE_DIR) under it unless the user chose one. Given to the worker
        processes; the calling process's own environment is left as it is."""
        env = dict(os.environ if env is None else env)
        env.setdefault("TORCHINDUCTOR_CACHE_DIR", str((self.root / ".inductor").resolve()))
        return env

    def full(self, min_free: int = 1 << 20) -> bool:
        """Whether this cache's filesystem has less than `min_free` bytes left. Compilers report
        a full disk in their own words (or die of it), so failures are checked against this."""
        try:
            return shutil.disk_usage(self.root).free < min_free
        except OSError:
            return False

    def entry_dir(self, key: str) -> Path:
        return self.root / key[:2] / key

    def lock(self, key: str, timeout: float = -1) -> FileLock:
        (self.root / ".locks").mkdir(parents=True, exist_ok=True)
        return FileLock(str(self.root / ".locks" / f"{key}.lock"), timeout=timeout)

    # ---- lookups
    def manifest(self, key: str) -> dict | None:
        """An entry's manifest, or None when it is missing or not a JSON object."""
        p = self.entry_dir(key) / MANIFEST
        try:
            data = json.loads(p.read_text())
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def status(self, key: str) -> str:
        """hit | failed-before | miss, from files only (fast; integrity is checked on use)."""
        if (self.entry_dir(key) / MANIFEST).is_file():
            return "hit"
        if (self.root / ".failures" / f"{key}.json").is_file():
            return "failed-before"
        return "miss"

    def lookup(self, key: str, locked: bool = False) -> tuple[Path | None, str | None]:
        """(entry folder, None) for a sound entry; (None, reason) when a broken entry was found
        (so it gets rebuilt); (None, None) when there is none. Only a caller holding the key's
        lock (`locked=True`) removes a broken entry: without the lock, what looks broken may be
        an entry another process is committing at this very moment."""
        folder = self.entry_dir(key)
        manifest = self.manifest(key)
        if manifest is None:
            return None, None
        problem = check_integrity(folder, manifest)
        if problem is not None:
            if locked:
                self.discard(folder)
            return None, f"cache entry {key[:12]} failed its integrity check ({problem}); rebuilding"
        (folder / LAST_USED).touch()
        return folder, None

    def find_prefix(self, prefix: str) -> list[str]:
        prefix = prefix.lower()
        if len(prefix) < 2:
            return []
        shard = self.root / prefix[:2]
        found = [p.name for p in shard.glob(f"{prefix}*") if (p / MANIFEST).is_file()] if shard.is_dir() else []
        fails = self.root / ".failures"
        found += [p.stem for p in fails.glob(f"{prefix}*.json")] if fails.is_dir() else []
        return sorted(set(found))

    # ---- building entries
    def new_tmp(self, key: str) -> Path:
        (self.root / ".tmp").mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=f"{key}-", dir=self.root / ".tmp"))

    def clear_stale_tmp(self, key: str) -> None:
        """Under the key's lock nobody else builds this key: leftovers are from a crash."""
        for p in (self.root / ".tmp").glob(f"{key}-*"):
            shutil.rmtree(p, ignore_errors=True)

    def clear_stale_tmp_locked(self, key: str, timeout: float = 30) -> bool:
        """Take the key's lock (a killed worker's lock is free at once) and clear its temp dirs;
        False when another process holds the lock (it is building the key: its dirs are not stale)."""
        try:
            with self.lock(key, timeout=timeout):
                self.clear_stale_tmp(key)
            return True
        except Timeout:
            return False

    def commit(self, key: str, tmp: Path, manifest: dict) -> Path:
        """Write the manifest (with the file table) and rename the temp dir into place."""
        manifest = dict(manifest, key=key, files=file_table(tmp), created_at=now_iso())
        with open(tmp / MANIFEST, "w") as f:
            json.dump(manifest, f, indent=1, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        dest = self.entry_dir(key)
        dest.parent.mkdir(parents=True, exist_ok=True)
        if dest.exists():
            self.discard(dest)
        os.rename(tmp, dest)
        self.clear_failure(key)
        return dest

    def discard(self, folder: Path) -> None:
        """Move aside first (atomic), then delete, so a reader never sees a half-deleted entry."""
        trash = self.root / ".tmp" / f"discard-{folder.name}-{os.getpid()}-{time.time_ns()}"
        trash.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.rename(folder, trash)
        except OSError:
            return
        shutil.rmtree(trash, ignore_errors=True)

    # ---- failures
    def record_failure(self, key: str, record: dict) -> None:
        d = self.root / ".failures"
        d.mkdir(parents=True, exist_ok=True)
        tmp = d / f".{key}.{os.getpid()}.tmp"
        tmp.write_text(json.dumps(dict(record, key=key, failed_at=now_iso()), indent=1, sort_keys=True))
        os.replace(tmp, d / f"{key}.json")

    def failure(self, key: str) -> dict | None:
        try:
            return json.loads((self.root / ".failures" / f"{key}.json").read_text())
        except (OSError, ValueError):
            return None

    def clear_failure(self, key: str) -> None:
        (self.root / ".failures" / f"{key}.json").unlink(missing_ok=True)

    # ---- programs (weights: refit): graph key -> an entry whose model.pt2 has no weights inside
    def record_program(self, graph_key: str, key: str) -> None:
        """Remember that entry `key` holds the program of `graph_key` (a refit-mode artifact:
        any of them does, their model.pt2 is the same program)."""
        d = self.root / ".programs"
        d.mkdir(parents=True, exist_ok=True)
        tmp = d / f".{graph_key}.{os.getpid()}.tmp"
        tmp.write_text(json.dumps({"key": key, "recorded_at": now_iso()}))
        os.replace(tmp, d / f"{graph_key}.json")

    def _program_key(self, graph_key: str) -> str | None:
        if not _HEX64.fullmatch(str(graph_key)):
            return None
        try:
            key = json.loads((self.root / ".programs" / f"{graph_key}.json").read_text())["key"]
        except (OSError, ValueError, KeyError, TypeError):
            return None
        return key if isinstance(key, str) and _HEX64.fullmatch(key) else None

    def has_program(self, graph_key: str) -> bool:
        """From files only, for planning: a recorded program whose entry is still there."""
        key = self._program_key(graph_key)
        return key is not None and self.status(key) == "hit"

    def program(self, graph_key: str) -> Path | None:
        """The entry folder holding `graph_key`'s program, integrity checked, or None (never
        recorded, or its entry was collected or broken)."""
        key = self._program_key(graph_key)
        return None if key is None else self.lookup(key)[0]

    # ---- garbage collection
    def entries(self) -> list[Path]:
        return [p.parent for p in self.root.glob(f"??/*/{MANIFEST}")]
