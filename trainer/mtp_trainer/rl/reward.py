"""The verifiable math reward (``spec.reward.math``), compared with ``math-verify`` as ROLL's math reward does.

Extraction (what of the response is the answer):

- ``boxed``: the content of the LAST ``\\boxed{...}`` (or ``\\fbox{...}``) in the response, braces
  balanced. A response with several boxes is judged by its last one only; a response with none is a
  parse failure.
- ``last_number``: the last number in the text: an optional sign (``-`` or ``−``), digits with
  optional thousands separators (``1,234``), an optional decimal part, or a fraction ``a/b`` or
  ``\\frac{a}{b}``. A response with no number is a parse failure.

Comparison: the extracted text and the reference answer (a plain value such as ``843``, ``1/2``,
``\\frac{1}{2}``, ``$-3$``, or a text whose last ``\\boxed{}`` holds it) are parsed by
``math_verify.parse`` and compared by ``math_verify.verify``, so ``0.5``, ``1/2`` and ``\\frac{1}{2}``
are equal, ``−3`` equals ``-3``, ``1,234`` equals ``1234``, and units or words inside the box that
math-verify knows (``843 \\text{ apples}``, ``5 cm``, ``\\$5``) are dropped.

Scores: ``correct_reward`` if equal, ``incorrect_reward`` if not, and ``incorrect_reward +
format_penalty`` with ``parse_failed`` set if no answer could be extracted or parsed. :meth:`score`
never raises.

Timeouts: math-verify bounds each parse and comparison with ``signal.alarm``, which works only in the
main thread. In the main thread every call gets ``timeout_s``; in any other thread signals are off,
and instead answers longer than ``max_answer_chars`` or with costly constructs (nested or long
exponents, factorials) are refused as parse failures before sympy sees them.

No torch here: the CLI (``mtpjob score``) imports this module.
"""

from __future__ import annotations

import logging
import re
import threading
from dataclasses import asdict, dataclass
from typing import Any

from math_verify import LatexExtractionConfig, parse, verify
from math_verify.errors import TimeoutException

from mtp_api.types import MathReward, RewardSpec

MAX_ANSWER_CHARS = 256

_BOX_OPEN = re.compile(r"\\(?:boxed|fbox)\s*\{")
_NUMBER = re.compile(
    r"(?<![\w.])[-−]?(?:"
    r"\\d?frac\{\s*\d+\s*\}\{\s*\d+\s*\}"  # \frac{a}{b}
    r"|\d+\s*/\s*\d+(?!\d|\.\d)"  # a/b
    r"|\d{1,3}(?:,\d{3})+(?:\.\d+)?(?!\d)"  # 1,234.5
    r"|\d+(?:\.\d+)?"  # 42, 3.14
    r"|\.\d+"  # .5
    r")"
)
# Constructs whose evaluation can run away without a timeout: nested or multi-digit exponents, factorials.
_COSTLY = re.compile(r"\^\s*\{[^}]*\^|\^\s*\(?\d+\)?\s*\^|\^\s*\{?\s*\(?\s*\d{3,}|!|\\exp|\*\*")


@dataclass(frozen=True)
class RewardResult:
    score: float
    correct: bool
    parsed: str | None  # the extracted answer text, None if none was found
    parse_failed: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def last_boxed(text: str) -> str | None:
    """The content of the last ``\\boxed{...}`` / ``\\fbox{...}`` whose braces balance, or None.
    One pass over the text, however many boxes it opens."""
    opens = [m.end() - 1 for m in _BOX_OPEN.finditer(text)]
    if not opens:
        return None
    close: dict[int, int] = {}
    stack: list[int] = []
    for i in range(opens[0], len(text)):
        c = text[i]
        if c == "{":
            stack.append(i)
        elif c == "}" and stack:
            close[stack.pop()] = i
    for brace in reversed(opens):
        if brace in close:
            return text[brace + 1 : close[brace]]
    return None


def last_number(text: str) -> str | None:
    """The last number in ``text`` (see the module docstring), normalised: ``−`` to ``-``, no
    thousands separators, no spaces around ``/``."""
    found = None
    for m in _NUMBER.finditer(text):
        found = m.group(0)
    if found is None:
        return None
    found = found.replace("−", "-")
    if "frac" not in found:
        found = found.replace(",", "").replace(" ", "")
    return found


def _strip_math(text: str) -> str:
    s = text.strip()
    while len(s) >= 2 and s[0] == s[-1] == "$":
        s = s[1:-1].strip()
    if s.startswith("\\(") and s.endswith("\\)"):
        s = s[2:-2].strip()
    return s


class MathRewardFn:
    """``MathRewardFn(spec).score(response, answer) -> RewardResult`` for a ``MathReward`` spec."""

    def __init__(self, spec: MathReward | None = None, timeout_s: int = 3, max_answer_chars: int = MAX_ANSWER_CHARS):
        self.spec = spec or MathReward()
        self.timeout_s = timeout_s
        self.max_answer_chars = max_answer_chars
        # math-verify warns once per process when its timeouts are off; that is a choice made here.
        logging.getLogger("math_verify").setLevel(logging.ERROR)

    @classmethod
    def from_reward_spec(cls, spec: RewardSpec | None) -> MathRewardFn:
        """The reward of a job's ``spec.reward`` (the default ``MathReward`` when absent)."""
        return cls(spec.math if spec is not None else None)

    def extract(self, response: str) -> str | None:
        if self.spec.answer_format == "boxed":
            found = last_boxed(response)
            return None if found is None else found.strip()
        return last_number(response)

    def _timeout(self) -> int | None:
        return self.timeout_s if threading.current_thread() is threading.main_thread() else None

    def _parse(self, text: str) -> list[Any]:
        """math-verify's parse of one answer, [] if it has no mathematical value (or is too costly)."""
        if not text or len(text) > self.max_answer_chars:
            return []
        timeout = self._timeout()
        if timeout is None and _COSTLY.search(text):
            return []
        try:
            parsed = parse(
                f"\\boxed{{{text}}}",
                extraction_config=[LatexExtractionConfig(boxed_match_priority=0)],
                fallback_mode="no_fallback",
                parsing_timeout=timeout,  # type: ignore[arg-type]  # None turns the signal off
            )
        except (Exception, TimeoutException):  # noqa: BLE001 - a reward never crashes the step
            return []
        return list(parsed)

    def _gold(self, answer: str) -> str:
        s = _strip_math(answer)
        boxed = last_boxed(s)
        return (boxed if boxed is not None else s).strip()

    def score(self, response: str, answer: str) -> RewardResult:
        """Compare the answer extracted from ``response`` with the reference ``answer``; never raises."""
        spec = self.spec
        failed = RewardResult(spec.incorrect_reward + spec.format_penalty, False, None, True)
        try:
            extracted = self.extract(response if isinstance(response, str) else str(response))
        except (Exception, TimeoutException):  # noqa: BLE001 - a reward never crashes the step
            return failed
        if extracted is None:
            return failed
        pred = self._parse(extracted)
        if not pred:
            return RewardResult(failed.score, False, extracted, True)
        correct = False
        try:
            gold_text = self._gold(str(answer))
            gold = self._parse(gold_text)
            if gold:
                correct = bool(verify(gold, pred, timeout_seconds=self._timeout()))
            else:  # a reference without a mathematical value: compare the texts
                correct = " ".join(gold_text.split()) == " ".join(extracted.split())
        except (Exception, TimeoutException):  # noqa: BLE001 - a reward never crashes the step
            correct = False
        return RewardResult(spec.correct_reward if correct else spec.incorrect_reward, correct, extracted, False)
