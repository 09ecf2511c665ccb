"""publish=local: the Hub layout (variant repos and the shared cache) in a local folder, each
folder written in a staging dir and renamed into place, so a reader never sees half of one."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

from filelock import FileLock

from pipeline.cache import artifact_files, sha256_file
from pipeline.hub import FileSpec
from pipeline.shared_cache import INDEX, merged_index


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
            (stage / f.path).parent.mkdir(parents=True, exist_ok=True)
            _ = (stage / f.path).write_bytes(f.data) if f.data is not None else shutil.copyfile(f.local, stage / f.path)
        dest.parent.mkdir(parents=True, exist_ok=True)
        old = root / ".tmp" / f"old-{dest.name}-{os.getpid()}-{time.time_ns()}"
        if dest.exists():
            os.rename(dest, old)
        os.rename(stage, dest)
        shutil.rmtree(old, ignore_errors=True)
        return True
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def local_repo_dir(root: Path, repo_id: str, revision: str | None) -> Path:
    return root / (f"{repo_id}@{revision}" if revision else repo_id)


def write_local_index(cache_root: Path, rows_by_tag: dict[str, list[dict]]) -> None:
    """Merge rows into each platform's index file of a local shared cache (locked, atomic)."""
    for tag, rows in rows_by_tag.items():
        path = cache_root / tag / INDEX
        path.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(path) + ".lock"):  # two local publishers merge, never overwrite
            data = merged_index(path.read_bytes() if path.is_file() else None, rows)
            tmp = path.with_name(f".{INDEX}.{os.getpid()}.tmp")
            tmp.write_bytes(data)
            os.replace(tmp, path)
