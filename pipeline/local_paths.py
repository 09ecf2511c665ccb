"""No local path leaves this machine: rewrite this machine's absolute paths (home, checkout,
temp dir, Python prefixes, cache / model / publish dirs) in everything that is published.

JSON files get local model ids replaced by `local:<folder name>`; other files, compiled
libraries included (they hold compiler command lines), are rewritten byte for byte with a
same-length placeholder, and a zip's checksums are fixed up so the package still loads.
"""

from __future__ import annotations

import json
import mmap
import os
import re
import shutil
import struct
import sys
import tempfile
import zlib
from pathlib import Path
from typing import Any

_NOT_ROOTS = {"", "/", "/usr", "/usr/local", "/opt", "/home", "/var", "/lib", "/lib64", "/bin", "/etc", "/srv", "/mnt"}
_PATH_TAIL = r"(?![\w.+@~%=,#-])[\w.+@~%=,#/-]*"  # a root ends at a path boundary; then the rest of the path


def local_roots(*extra: str | Path | None) -> list[str]:
    """Absolute paths that belong to this machine (home, working dir, temp dir, Python prefixes,
    this package's folder, cache dirs in the environment, and `extra`: model, cache, publish dirs),
    as given and resolved, longest first. System dirs (/usr, /opt, ...) are not among them."""
    env = ("HF_HOME", "TORCHINDUCTOR_CACHE_DIR", "PIPELINE_CACHE_DIR", "TMPDIR", "XDG_CACHE_HOME")
    seeds = [Path.home(), Path.cwd(), tempfile.gettempdir(), sys.prefix, sys.base_prefix, *map(os.environ.get, env)]
    seeds.append(Path(__file__).resolve().parents[1])  # this checkout (where a dev build's caches live)
    roots = set()
    for seed in [*seeds, *extra]:
        if seed:
            p = os.path.abspath(os.path.expanduser(str(seed)))
            roots |= {r.rstrip("/") for r in (p, os.path.realpath(p))}
    return sorted((r for r in roots if r not in _NOT_ROOTS and len(r) >= 4), key=len, reverse=True)


def _path_re(roots: list[str], text: bool = False):
    pattern = "(?:" + ("|".join(re.escape(r) for r in roots) or "(?!x)x") + ")" + _PATH_TAIL
    return re.compile(pattern if text else pattern.encode())


def scrub_paths_text(text: str, roots: list[str]) -> str:
    """`text` with every local path (see local_roots) replaced by `local:<last part>`."""
    return _path_re(roots, text=True).sub(lambda m: "local:" + (m.group().rstrip("/").rsplit("/", 1)[-1]), text)


ID_KEYS = ("_name_or_path", "name_or_path", "model_id", "id")  # where a bare local model id is replaced too


def scrub_paths_json(obj: Any, roots: list[str], aliases: dict[str, str], key: str = "") -> Any:
    """JSON data with `aliases` (a local model's id/folder -> `local:<name>`) applied and every
    other local path scrubbed (scrub_paths_text)."""
    if isinstance(obj, dict):
        return {scrub_paths_json(k, roots, aliases): scrub_paths_json(v, roots, aliases, k) for k, v in obj.items()}
    if isinstance(obj, list):
        return [scrub_paths_json(v, roots, aliases, key) for v in obj]
    if isinstance(obj, str):
        hit = aliases.get(obj.rstrip("/")) if "/" in obj or key in ID_KEYS else None
        return hit or scrub_paths_text(obj, roots)
    return obj


def scrub_paths_json_file(src: Path, roots: list[str], aliases: dict[str, str]) -> bytes | None | bool:
    """A .json file's bytes through scrub_paths_json; None when unchanged; False when not JSON."""
    try:
        data = json.loads(src.read_bytes())
    except (ValueError, UnicodeDecodeError):
        return False
    cleaned = scrub_paths_json(data, roots, aliases)
    return None if cleaned == data else (json.dumps(cleaned, indent=2, ensure_ascii=False) + "\n").encode()


def scrub_paths_file(src: Path, dest: Path, roots: list[str]) -> bool:
    """Write `src` to `dest` with every local path overwritten by as many bytes ('/___'), so
    every offset stays valid (ELF string tables, zip members, whose CRC-32s are rewritten).
    False, writing nothing, when `src` holds no local path. Raises ValueError when a path sits
    in a compressed zip member (it cannot be rewritten in place)."""
    if not roots or src.stat().st_size == 0:
        return False
    pattern = _path_re(roots)
    with open(src, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        spans = [m.span() for m in pattern.finditer(mm)]
    if not spans:
        return False
    shutil.copyfile(src, dest)
    with open(dest, "r+b") as f, mmap.mmap(f.fileno(), 0) as mm:
        for a, b in spans:
            mm[a:b] = b"/" + b"_" * (b - a - 1)
        if mm[:4] == b"PK\x03\x04":
            _fix_zip_crcs(f, mm, spans)
        mm.flush()
    return True


def _fix_zip_crcs(f, mm, spans: list[tuple[int, int]]) -> None:
    """Rewrite the CRC-32 (local header, data descriptor, central directory) of every stored
    member whose data `spans` touched."""
    import zipfile

    zf = zipfile.ZipFile(f)
    central, pos = {}, zf.start_dir
    while mm[pos : pos + 4] == b"PK\x01\x02":
        n, m, k = struct.unpack("<HHH", mm[pos + 28 : pos + 34])
        central[bytes(mm[pos + 46 : pos + 46 + n])] = pos
        pos += 46 + n + m + k
    for info in zf.infolist():
        h = info.header_offset
        start = h + 30 + sum(struct.unpack("<HH", mm[h + 26 : h + 30]))
        end = start + info.compress_size
        if not any(a < end and b > start for a, b in spans):
            continue
        if info.compress_type != zipfile.ZIP_STORED:
            raise ValueError(f"zip member {info.filename} is compressed and holds a local path")
        crc = 0
        for i in range(start, end, 1 << 24):
            crc = zlib.crc32(mm[i : min(end, i + (1 << 24))], crc)
        packed = struct.pack("<I", crc & 0xFFFFFFFF)
        if not info.flag_bits & 0x08 or mm[h + 14 : h + 18] != b"\0\0\0\0":
            mm[h + 14 : h + 18] = packed
        if info.flag_bits & 0x08:
            d = end + 4 if mm[end : end + 4] == b"PK\x07\x08" else end
            mm[d : d + 4] = packed
        c = central[info.orig_filename.encode("utf-8" if info.flag_bits & 0x800 else "cp437")]
        mm[c + 16 : c + 20] = packed


