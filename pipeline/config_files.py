"""Reading the files a config is made of (config.json, configs/model/*.yaml) with errors that
name the file, line and column: one line a user can act on, never a traceback.
"""

from __future__ import annotations

import json
from pathlib import Path


class ModelConfigError(ValueError):
    """A file a model entry is read from (config.json, configs/model/*.yaml) that cannot be
    read: not UTF-8, not valid JSON/YAML, or not a mapping. The message names the file."""


def _not_utf8(shown: str, data: bytes, e: UnicodeDecodeError) -> str:
    """'<file> is not UTF-8 text (byte 0x.. at line L column C)', 1-based."""
    line, start = data.count(b"\n", 0, e.start) + 1, data.rfind(b"\n", 0, e.start) + 1
    return f"{shown} is not UTF-8 text (byte 0x{data[e.start]:02x} at line {line} column {e.start - start + 1})"


def not_utf8(path: Path | str, shown: str | None = None) -> str:
    """The `_not_utf8` line for a file that does not decode."""
    try:
        data = Path(path).read_bytes()
        data.decode("utf-8")
    except UnicodeDecodeError as e:
        return _not_utf8(shown or str(path), data, e)
    except (OSError, ValueError):
        pass
    return f"{shown or path} is not UTF-8 text"


def read_json_object(path: Path, shown: str | None = None) -> dict:
    """The JSON object in a file; ModelConfigError naming the file (`shown`) and the cause."""
    shown = shown or str(path)
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise ModelConfigError(f"{shown} cannot be read: {e.strerror or e}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ModelConfigError(_not_utf8(shown, data, e)) from None
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise ModelConfigError(f"{shown} is not valid JSON (line {e.lineno} column {e.colno}: {e.msg})") from None
    except (RecursionError, ValueError) as e:
        raise ModelConfigError(f"{shown} is not valid JSON ({type(e).__name__}: {e})") from None
    if not isinstance(obj, dict):
        kind = {list: "an array", str: "a string", bool: "a boolean", type(None): "null"}.get(type(obj), "a number")
        raise ModelConfigError(f"{shown} is not a JSON object (it holds {kind})")
    return obj


def yaml_problem(e: Exception, path: str | None = None) -> str:
    """'<file>, line L, column C: YAML syntax error: <problem> (<context> at ...)' in one line."""
    mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
    name = path or getattr(mark, "name", None) or getattr(e, "name", None) or "a YAML file"
    where = f", line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    problem = getattr(e, "problem", None)
    if problem is None and isinstance(getattr(e, "character", None), (str, int)):  # a ReaderError
        try:  # its position is a character index of the file's text
            text, pos = Path(path or e.name).read_text(encoding="utf-8")[: e.position], e.position
            where = f", line {text.count(chr(10)) + 1}, column {pos - text.rfind(chr(10))}"
        except (OSError, ValueError, TypeError, AttributeError):
            pass
        char = e.character if isinstance(e.character, str) else chr(e.character)
        return f"{name}{where}: YAML error: unacceptable character #x{ord(char):04x} ({e.reason})"
    if problem is None:
        return f"{name}{where}: YAML error: {' '.join(str(e).split())}"
    context, cmark = getattr(e, "context", None), getattr(e, "context_mark", None)
    if context and cmark is not None and cmark is not mark:
        problem += f" ({context} at line {cmark.line + 1}, column {cmark.column + 1})"
    elif context:
        problem += f" ({context})"
    return f"{name}{where}: YAML syntax error: {' '.join(problem.split())}"


def _file_in_traceback(exc: BaseException) -> str | None:
    """The config file being read where an exception was raised (a local `full_path`, or an
    open file's name), innermost frame first."""
    frames = []
    tb = exc.__traceback__
    while tb is not None:
        frames.append(tb.tb_frame)
        tb = tb.tb_next
    for frame in reversed(frames):
        for k, v in frame.f_locals.items():
            if k == "full_path" and isinstance(v, str):
                return v
            name = getattr(v, "name", None) if hasattr(v, "readable") else None
            if isinstance(name, str) and name.endswith((".yaml", ".yml")):
                return name
    return None


def config_file_problem(exc: BaseException) -> str | None:
    """One line (file, line, column, problem) for a YAML syntax or encoding error anywhere in
    an exception's chain; None when the chain holds neither."""
    import yaml

    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, yaml.YAMLError):
            mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
            name = getattr(mark, "name", None) or getattr(e, "name", None)
            real = name if isinstance(name, str) and Path(name).is_file() else None
            return yaml_problem(e, real or _file_in_traceback(e) or _file_in_traceback(exc))
        if isinstance(e, UnicodeDecodeError):
            path = _file_in_traceback(e) or _file_in_traceback(exc)
            return not_utf8(path) if path else f"a config file is not UTF-8 text ({e})"
        e = e.__cause__ or e.__context__
    return None
