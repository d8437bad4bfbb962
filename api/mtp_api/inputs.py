"""Reading files a user hands us: bytes -> UTF-8 text -> YAML or JSON -> plain JSON-shaped data.

Every command and the trainer read their input files through here, so each bad input is refused
once, at the boundary, with an :class:`InputError` that names the file (and the field, where there
is one) and says how to fix it, instead of a traceback from deep inside:

- not a regular file, larger than :data:`MAX_INPUT_BYTES`, not UTF-8 (Latin-1, UTF-16, binary);
- YAML that does not parse, or nests deeper than :data:`MAX_DEPTH` (which would exhaust the
  parser's recursion), or whose aliases expand to more than :data:`MAX_NODES` values;
- values JSON (and so the Kubernetes API) cannot carry: mapping keys that are not strings
  (``1:``, unquoted ``yes:``), ``!!binary``, ``!!set``, ``!!omap``, NaN or infinite numbers, and
  integers outside int64.

YAML timestamps (``2024-01-01``) are kept as the text written, as the Kubernetes API's YAML to
JSON conversion does; a field that needs a number or a mapping then rejects them by name.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import yaml

MAX_INPUT_BYTES = 4 * 1024 * 1024  # a manifest or pipeline config; etcd's object limit is 1.5 MiB
MAX_DEPTH = 64  # mappings/lists inside one another; real manifests use under 10
MAX_NODES = 200_000  # values after YAML aliases are expanded (a "billion laughs" file stops here)
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


class InputError(ValueError):
    """An input that cannot be used; the message names the file or field and the fix."""


# ------------------------------------------------------------------------------------ bytes -> text


def _utf16_like(data: bytes) -> bool:
    """A UTF-16/32 byte-order mark, or ASCII text with a NUL after (or before) every character."""
    if data[:2] in (b"\xff\xfe", b"\xfe\xff"):
        return True
    head = data[:64] if len(data) % 2 == 0 else data[:63]
    if len(head) < 4:
        return False
    for zeros, chars in ((head[1::2], head[0::2]), (head[0::2], head[1::2])):
        if not any(zeros) and all(0 < c < 0x80 for c in chars):
            return True
    return False


def decode_text(data: bytes, where: str) -> str:
    """UTF-8 text (an optional BOM dropped), or an InputError saying what the bytes look like."""
    if _utf16_like(data):
        raise InputError(f"{where}: looks like UTF-16 text; save it as UTF-8 (e.g. iconv -f UTF-16 -t UTF-8)")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(
            f"{where}: not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start}); "
            "save it as UTF-8 (e.g. iconv -f LATIN1 -t UTF-8), or pass the right file if this one is binary"
        ) from None
    if "\x00" in text:
        raise InputError(f"{where}: holds NUL bytes, so it is binary, not text; pass a YAML/JSON text file")
    return text.removeprefix("\ufeff")


def read_text(path: str | Path, what: str) -> str:
    """A user's file as text. ``what`` says what the file should be, for the messages."""
    p = Path(path)
    if not p.exists():
        raise InputError(f"{p}: no such file; pass the path of {what}")
    if not p.is_file():
        raise InputError(f"{p}: not a regular file; pass the path of {what}")
    try:
        size = p.stat().st_size
        if size > MAX_INPUT_BYTES:
            raise InputError(
                f"{p}: {size} bytes is larger than the {MAX_INPUT_BYTES} a {what} may have; is it the right file?"
            )
        data = p.read_bytes()
    except OSError as exc:
        raise InputError(f"{p}: cannot be read ({exc.strerror or exc}); check its permissions") from None
    return decode_text(data, str(p))


# ------------------------------------------------------------------------------------ shape


def kind_of(value: Any) -> str:
    """How a parsed value reads in a message: "a string", "a list", "null"."""
    if value is None:
        return "null"
    names = {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "a list"}
    return names.get(type(value), "a mapping" if isinstance(value, dict) else f"a {type(value).__name__}")


def _path(parts: list[str | int]) -> str:
    if len(parts) > 12:  # deep nesting: the start and the end say where
        return f"{_path(parts[:4])}...{_path(parts[-2:])} ({len(parts)} levels)"
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out or "<top level>"


class _Shaper:
    """Copies parsed data into plain JSON types, refusing what JSON cannot carry."""

    def __init__(self, where: str, *, finite: bool) -> None:
        self.where = where
        self.finite = finite
        self.nodes = 0

    def fail(self, parts: list[str | int], message: str) -> InputError:
        return InputError(f"{self.where}: {_path(parts)}: {message}")

    def copy(self, value: Any, parts: list[str | int]) -> Any:
        self.nodes += 1
        if self.nodes > MAX_NODES:
            raise InputError(
                f"{self.where}: more than {MAX_NODES} values (YAML aliases expanding?); write the values out, "
                "or pass the right file"
            )
        if len(parts) > MAX_DEPTH:
            raise self.fail(parts, f"nested more than {MAX_DEPTH} levels deep; no manifest field nests like this")
        if value is None or isinstance(value, bool | str):
            return value
        if isinstance(value, int):
            if not INT64_MIN <= value <= INT64_MAX:
                raise self.fail(parts, f"integer {_short(value)} does not fit in 64 bits (at most {INT64_MAX})")
            return value
        if isinstance(value, float):
            if self.finite and not math.isfinite(value):
                raise self.fail(parts, f"{value} is not a finite number; write a number")
            return value
        if isinstance(value, dict):
            out: dict[str, Any] = {}
            for key, child in value.items():
                if not isinstance(key, str):
                    raise self.fail(parts, _bad_key(key))
                out[key] = self.copy(child, [*parts, key])
            return out
        if isinstance(value, list):
            return [self.copy(child, [*parts, i]) for i, child in enumerate(value)]
        if isinstance(value, bytes):
            raise self.fail(parts, "a !!binary value; write the text itself (no !!binary tag)")
        kinds: dict[type, str] = {set: "a !!set", tuple: "an !!omap/!!pairs entry"}
        kind = kinds.get(type(value), type(value).__name__)
        raise self.fail(parts, f"{kind} is not a JSON value; use a plain mapping or list")


def _short(value: int) -> str:
    text = str(value)
    return text if len(text) <= 24 else f"{text[:10]}...({len(text)} digits)"


def _short_repr(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else f"{text[:37]}..."


def _bad_key(key: Any) -> str:
    if isinstance(key, bool):
        return (
            f"key {key!r} is a boolean (unquoted yes/no/on/off/true/false are booleans in YAML); "
            "quote the key or use a field name"
        )
    return f"key {_short_repr(key)} is {kind_of(key)}; field names are strings (quote the key)"


def to_json_shape(value: Any, where: str, *, finite: bool = True) -> Any:
    """A copy of parsed data in plain JSON types (aliases expanded), or an InputError naming the path."""
    return _Shaper(where, finite=finite).copy(value, [])


# ------------------------------------------------------------------------------------ YAML / JSON


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader with timestamps kept as written (as the Kubernetes API's YAML->JSON does)."""


def _timestamp_as_text(loader: yaml.SafeLoader, node: yaml.Node) -> str:
    return str(loader.construct_scalar(node))  # type: ignore[arg-type]


_Loader.add_constructor("tag:yaml.org,2002:timestamp", _timestamp_as_text)


def parse_yaml_documents(text: str, where: str) -> list[Any]:
    """Every non-empty YAML document in ``text``, each in plain JSON shape."""
    try:
        docs = list(yaml.load_all(text, Loader=_Loader))  # a SafeLoader subclass
    except yaml.YAMLError as exc:
        raise InputError(f"{where}: not valid YAML: {exc}") from None
    except RecursionError:
        raise InputError(f"{where}: YAML nested too deeply to parse; no manifest field nests like this") from None
    return [to_json_shape(d, where) for d in docs if d is not None]


def read_yaml_documents(path: str | Path, what: str) -> list[Any]:
    return parse_yaml_documents(read_text(path, what), str(path))


def read_json(path: str | Path, what: str) -> Any:
    """One JSON file (for example a checkpoint's config.json) in plain JSON shape."""
    text = read_text(path, what)
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(f"{path}: not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})") from None
    except RecursionError:
        raise InputError(f"{path}: JSON nested too deeply to parse") from None
    return to_json_shape(value, str(path), finite=False)
