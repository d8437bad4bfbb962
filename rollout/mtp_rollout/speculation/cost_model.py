"""What speculation is worth: calibrated engine step times x measured acceptance -> tokens/s.

Why a measured table and not a formula: the cost of a speculative step depends on the model, the
hardware, the dtype, the batch size and k in ways no closed form captures (on the CPU machine a
speculative engine scheduled at k=0 still runs the drafter and measured 0.75x of a plain engine).
So ``Calibration`` holds seconds per decode step, measured for the plain engine and for the
speculative engine at every k in 0..max_k, at a few batch sizes; acceptance comes from vLLM's
counters as ``per_position[i]`` = accepted at position i / drafts (unconditional, non-increasing).

Expected tokens per speculative step with k drafts = 1 + sum(per_position[:k]); tokens/s =
b * that / step seconds; the gain is the ratio to the plain engine at the same batch size.
"""

from __future__ import annotations

import json
import math
from bisect import bisect_left
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

RECALIBRATE = "re-run `mtpjob bench-rollout --calibrate`"
_REQUIRED = ("model", "hardware", "dtype", "max_k", "batch_sizes", "plain_step_s", "spec_step_s", "created")


class CalibrationError(ValueError):
    """A calibration that cannot be used; the message names the field path and how to fix it."""


@dataclass(frozen=True)
class Calibration:
    """Measured seconds per engine decode step; constructing one validates it (``CalibrationError``).

    ``plain_step_s[b]``: the engine without any speculative config at batch size b.
    ``spec_step_s[k][b]``: the speculative engine running k drafts per step (k=0 included: the
    engine is configured for speculation but scheduled at zero drafts, which is not free).
    """

    model: str
    hardware: str
    dtype: str
    max_k: int
    batch_sizes: tuple[int, ...]
    plain_step_s: dict[int, float]
    spec_step_s: dict[int, dict[int, float]]
    created: str
    notes: str = ""

    def __post_init__(self) -> None:
        # One validator for both ways in: the JSON form names the fields as a user sees them in the file.
        _parse(self.to_json(), "calibration")

    def to_json(self) -> dict[str, Any]:
        """JSON-ready dict; table keys become strings (JSON object keys), in ascending order."""
        return {
            "model": self.model,
            "hardware": self.hardware,
            "dtype": self.dtype,
            "max_k": self.max_k,
            "batch_sizes": list(self.batch_sizes),
            "plain_step_s": {str(b): t for b, t in sorted(self.plain_step_s.items())},
            "spec_step_s": {
                str(k): {str(b): t for b, t in sorted(row.items())} for k, row in sorted(self.spec_step_s.items())
            },
            "created": self.created,
            "notes": self.notes,
        }

    @classmethod
    def from_json(cls, d: Mapping[str, Any], source: str = "calibration") -> Calibration:
        """Parse and validate; ``source`` prefixes every field path in error messages."""
        return cls(**_parse(d, source))

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_json(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> Calibration:
        p = Path(path)
        try:
            text = p.read_text()
        except FileNotFoundError:
            raise CalibrationError(f"{p}: no calibration file; {RECALIBRATE} to create it") from None
        try:
            d = json.loads(text)
        except json.JSONDecodeError as e:
            raise CalibrationError(f"{p}: not valid JSON ({e}); {RECALIBRATE}") from None
        try:
            return cls.from_json(d)
        except CalibrationError as e:
            raise CalibrationError(f"{p}: {e}") from None


def _show(v: object) -> str:
    try:
        return json.dumps(v)
    except (TypeError, ValueError):
        return repr(v)


def _fail(path: str, problem: str, v: object = None, *, got: bool = True) -> CalibrationError:
    return CalibrationError(f"{path}: {problem}{f', got {_show(v)}' if got else ''}; {RECALIBRATE}")


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _table(raw: object, path: str, sizes: tuple[int, ...]) -> dict[int, float]:
    """{batch size: positive finite seconds} with exactly the calibrated batch sizes."""
    if not isinstance(raw, Mapping):
        raise _fail(path, "must be an object of batch size -> seconds", raw)
    out: dict[int, float] = {}
    for key, t in raw.items():
        where = f"{path}[{str(key)!r}]"
        try:
            b = int(key)
        except (TypeError, ValueError):
            raise _fail(where, "key must be a batch size (an integer)", got=False) from None
        if b not in sizes:
            raise _fail(where, f"batch size not in calibration.batch_sizes {list(sizes)}", got=False)
        if isinstance(t, bool) or not isinstance(t, int | float) or not math.isfinite(t) or t <= 0:
            raise _fail(where, "must be a positive number of seconds", t)
        out[b] = float(t)
    for b in sizes:
        if b not in out:
            raise _fail(f"{path}[{str(b)!r}]", f"missing; every table needs all batch sizes {list(sizes)}", got=False)
    return out


def _parse(d: object, source: str) -> dict[str, Any]:
    """The constructor arguments of a valid calibration, or ``CalibrationError`` naming the field."""
    if not isinstance(d, Mapping):
        raise _fail(source, "must be a JSON object", d)
    for key in _REQUIRED:
        if key not in d:
            raise _fail(f"{source}.{key}", "missing", got=False)
    for key in ("model", "hardware", "dtype", "created"):
        if not isinstance(d[key], str) or not d[key]:
            raise _fail(f"{source}.{key}", "must be a non-empty string", d[key])
    try:
        datetime.fromisoformat(d["created"])
    except ValueError:
        raise _fail(f"{source}.created", "must be an ISO 8601 time", d["created"]) from None
    notes = d.get("notes", "")
    if not isinstance(notes, str):
        raise _fail(f"{source}.notes", "must be a string", notes)
    max_k = d["max_k"]
    if not _is_int(max_k) or max_k < 1:
        raise _fail(f"{source}.max_k", "must be an integer >= 1 (the most drafts calibrated)", max_k)
    raw_sizes = d["batch_sizes"]
    if not isinstance(raw_sizes, list | tuple) or not raw_sizes:
        raise _fail(f"{source}.batch_sizes", "must be a non-empty list of batch sizes", raw_sizes)
    for i, b in enumerate(raw_sizes):
        if not _is_int(b) or b < 1:
            raise _fail(f"{source}.batch_sizes[{i}]", "must be an integer >= 1", b)
        if i and b <= raw_sizes[i - 1]:
            raise _fail(f"{source}.batch_sizes[{i}]", "must be sorted ascending without repeats", b)
    sizes = tuple(raw_sizes)
    plain = _table(d["plain_step_s"], f"{source}.plain_step_s", sizes)
    raw_spec = d["spec_step_s"]
    if not isinstance(raw_spec, Mapping):
        raise _fail(f"{source}.spec_step_s", "must be an object of k -> batch size -> seconds", raw_spec)
    spec: dict[int, dict[int, float]] = {}
    for key, row in raw_spec.items():
        where = f"{source}.spec_step_s[{str(key)!r}]"
        try:
            k = int(key)
        except (TypeError, ValueError):
            raise _fail(where, "key must be a number of drafts k (an integer)", got=False) from None
        if not 0 <= k <= max_k:
            raise _fail(where, f"k outside 0..max_k (max_k={max_k})", got=False)
        spec[k] = _table(row, where, sizes)
    for k in range(max_k + 1):
        if k not in spec:
            raise _fail(
                f"{source}.spec_step_s[{str(k)!r}]", f"missing; the table needs every k in 0..{max_k}", got=False
            )
    return {
        "model": d["model"],
        "hardware": d["hardware"],
        "dtype": d["dtype"],
        "max_k": max_k,
        "batch_sizes": sizes,
        "plain_step_s": plain,
        "spec_step_s": dict(sorted(spec.items())),
        "created": d["created"],
        "notes": notes,
    }


def _interpolate(sizes: tuple[int, ...], table: Mapping[int, float], b: float) -> float:
    """Linear in b between calibrated sizes; clamped to the nearest end outside them.

    Clamping (rather than extrapolating) keeps the time positive and the gain at the edge's value:
    a batch above the largest calibrated size is predicted to gain what the largest one gains.
    """
    if b <= sizes[0]:
        return table[sizes[0]]
    if b >= sizes[-1]:
        return table[sizes[-1]]
    i = bisect_left(sizes, b)
    lo, hi = sizes[i - 1], sizes[i]
    if b == hi:
        return table[hi]
    return table[lo] + (b - lo) / (hi - lo) * (table[hi] - table[lo])


def step_seconds(cal: Calibration, k: int | None, b: float) -> float:
    """Seconds per decode step at batch size b; ``k=None`` is the plain engine."""
    if not math.isfinite(b):
        raise ValueError(f"batch size must be finite, got {b}")
    if k is None:
        return _interpolate(cal.batch_sizes, cal.plain_step_s, b)
    if not 0 <= k <= cal.max_k:
        raise ValueError(f"k={k} is outside the calibrated 0..{cal.max_k}")
    return _interpolate(cal.batch_sizes, cal.spec_step_s[k], b)


def sanitize(per_position: Sequence[object]) -> tuple[float, ...]:
    """Entries as floats in [0, 1], non-increasing: garbage (NaN, non-numbers, >1, <0) never crashes.

    Non-increasing because vLLM accepts position i only when 0..i-1 were accepted; a measured rise is
    noise, and the running minimum is the conservative reading of it.
    """
    out: list[float] = []
    prev = 1.0
    for x in per_position:
        try:
            v = float(x)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            v = 0.0
        v = 0.0 if math.isnan(v) else min(max(v, 0.0), 1.0)
        prev = min(v, prev)
        out.append(prev)
    return tuple(out)


def acceptance_profile(per_position: Sequence[object], k: int) -> tuple[float, ...]:
    """The first k unconditional acceptances, extrapolating unmeasured positions geometrically.

    Past the measured list each position is the previous one times r, r = the last conditional ratio
    (``p[-1] / p[-2]``; ``p[0]`` when one position is measured; 0 when none): a head asked for one
    more draft than measured is assumed to keep its last per-step accuracy.
    """
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    p = list(sanitize(per_position))
    if k <= len(p):
        return tuple(p[:k])
    if not p:
        r = 0.0
    elif len(p) == 1:
        r = p[0]
    else:
        r = p[-1] / p[-2] if p[-2] > 0 else 0.0
    last = p[-1] if p else 0.0
    while len(p) < k:
        last *= r
        p.append(last)
    return tuple(p)


def expected_tokens_per_step(per_position: Sequence[object], k: int) -> float:
    """1 (the verified token every step yields) + the expected accepted drafts of k positions."""
    return 1.0 + sum(acceptance_profile(per_position, k))


def predicted_tokens_per_s(cal: Calibration, per_position: Sequence[object], k: int | None, b: float) -> float:
    """Tokens/s of the whole batch: b requests, each emitting E_k tokens per step (1 when plain)."""
    if not (math.isfinite(b) and b > 0):
        raise ValueError(f"batch size must be a positive number, got {b}")
    tokens = 1.0 if k is None else expected_tokens_per_step(per_position, k)
    return b * tokens / step_seconds(cal, k, b)


def predicted_gain(cal: Calibration, per_position: Sequence[object], k: int | None, b: float) -> float:
    """Speculative (k drafts) tokens/s over plain tokens/s at batch size b; exactly 1.0 for ``k=None``."""
    if k is None:
        return 1.0
    return predicted_tokens_per_s(cal, per_position, k, b) / predicted_tokens_per_s(cal, per_position, None, b)
