"""Metric names referenced by a PromQL expression, for the "only real metrics" checks.

Why not a PromQL parser: our expressions use a small subset (selectors, ``rate``, aggregations
with ``by``/``on``/``group_left``, arithmetic, ``offset``, ``label_values``); stripping label
matchers, ranges, grouping clauses and string literals leaves function names, keywords, numbers
and metric names, and the first three are a short list.
"""

from __future__ import annotations

import re

FUNCTIONS = frozenset(
    {
        "sum", "avg", "max", "min", "count", "rate", "increase", "irate", "clamp_max", "clamp_min",
        "avg_over_time", "max_over_time", "min_over_time", "round", "label_values", "by", "without",
        "on", "ignoring", "group_left", "group_right", "offset", "and", "or", "unless", "bool", "abs",
    }
)  # fmt: skip
_STRIP = [
    re.compile(r'"(?:[^"\\]|\\.)*"'),  # string literals
    re.compile(r"\{[^{}]*\}"),  # label matchers
    re.compile(r"\[[^\]]*\]"),  # range selectors
    re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)"),  # grouping label lists
    re.compile(r"\boffset\s+\w+"),
]
_IDENT = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")


def metric_names(expr: str) -> set[str]:
    text = expr
    for pattern in _STRIP:
        text = pattern.sub(" ", text)
    # label_values(metric, label): the label is not a metric.
    text = re.sub(r"label_values\s*\(\s*([a-zA-Z_:][a-zA-Z0-9_:]*)\s*,\s*\w+\s*\)", r" \1 ", text)
    return {m for m in _IDENT.findall(text) if m not in FUNCTIONS and not re.fullmatch(r"[eE]\d*|Inf|NaN", m)}
