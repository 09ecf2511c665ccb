"""Where a compiled artifact named by the user is: a local folder, a key (or key prefix) in the
local cache, or a Hub repo (downloaded). Every miss is an ArtifactNotFoundError naming what was tried."""

from __future__ import annotations

import re
from pathlib import Path

from pipeline.cache import Cache
from pipeline.model_entries import check_model_id, is_dir, is_local_id
from pipeline.validate import ArtifactError, ArtifactNotFoundError


def resolve_folder(name: str, revision: str | None, cache_dir: Path, token: str | None) -> tuple[Path, bool]:
    """(folder, integrity already checked) for a local folder, a key (or key prefix) in the
    local cache, or a Hub repo (downloaded)."""
    try:
        p = Path(name).expanduser()
    except RuntimeError:  # ~user that does not exist
        p = Path(name)
    if is_dir(p):
        return p, False
    if re.fullmatch(r"[0-9a-fA-F]{2,64}", name):  # a key prefix, never a Hub id
        cache = Cache(cache_dir)
        found = [k for k in cache.find_prefix(name) if cache.status(k) == "hit"]
        if not found:
            raise ArtifactNotFoundError(f"no cache entry starts with {name} in {cache_dir}")
        if len(found) > 1:
            raise ArtifactError(f"{name} is ambiguous in {cache_dir}: {', '.join(k[:12] for k in found)}")
        folder, why = cache.lookup(found[0])
        if folder is None:
            raise ArtifactError(f"cache entry {found[0]} in {cache_dir}: {why or 'not usable'}")
        return folder, True
    if is_local_id(name):
        raise ArtifactNotFoundError(f"{name}: no such artifact folder")
    if check_model_id(name) is not None:
        raise ArtifactNotFoundError(
            f"{name!r} is not an artifact folder, a key prefix in {cache_dir} or a valid Hub repo id"
        )
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(name, revision=revision, token=token)), False
    except Exception as e:  # offline, not found, auth: name the repo and the cause
        first = (str(e).strip().splitlines() or [""])[0]
        raise ArtifactNotFoundError(
            f"{name}: not a local folder or a key in {cache_dir}, and the Hub repo cannot be fetched: "
            f"{type(e).__name__}: {first}"
        ) from None
