"""The math reward: extraction, math-verify equivalences, parse failures; expected scores written by hand."""

from __future__ import annotations

import threading
import time

import pytest

from mtp_api.types import MathReward, RewardSpec
from mtp_trainer.rl.reward import MathRewardFn, RewardResult, last_boxed, last_number

# correct 1, incorrect -1, parse failure -1 + -0.5 = -1.5: every outcome has its own score.
SPEC = dict(correct_reward=1.0, incorrect_reward=-1.0, format_penalty=-0.5)
BOXED = MathRewardFn(MathReward(answer_format="boxed", **SPEC))
LAST = MathRewardFn(MathReward(answer_format="last_number", **SPEC))


@pytest.mark.parametrize(
    ("response", "answer", "expected"),
    [
        # fractions and decimals, LaTeX \frac
        ("The answer is \\boxed{0.5}.", "1/2", 1.0),
        ("The answer is \\boxed{1/2}.", "0.5", 1.0),
        ("The answer is \\boxed{\\frac{1}{2}}.", "0.5", 1.0),
        ("The answer is \\boxed{\\dfrac{3}{4}}.", "0.75", 1.0),
        ("The answer is \\boxed{\\frac12}.", "\\frac{1}{2}", 1.0),
        ("The answer is \\boxed{0.50}.", "$\\frac{1}{2}$", 1.0),
        ("The answer is \\boxed{0.51}.", "1/2", -1.0),
        ("The answer is \\boxed{\\frac{1}{3}}.", "0.5", -1.0),
        # negative numbers, the Unicode minus included
        ("The answer is \\boxed{-3}.", "-3", 1.0),
        ("The answer is \\boxed{−3}.", "-3", 1.0),
        ("The answer is \\boxed{3}.", "-3", -1.0),
        ("The answer is \\boxed{-\\frac{1}{2}}.", "-0.5", 1.0),
        # several boxes: the last one counts
        ("Maybe \\boxed{5}. No, \\boxed{6}.", "6", 1.0),
        ("Maybe \\boxed{5}. No, \\boxed{6}.", "5", -1.0),
        ("\\boxed{\\frac{1}{2}} and then \\boxed{0.25}", "1/4", 1.0),
        # units and trailing text
        ("The answer is \\boxed{843 apples}.", "843", 1.0),
        ("The answer is \\boxed{843\\text{ apples}}.", "843", 1.0),
        ("The answer is \\boxed{5 cm}.", "5", 1.0),
        ("The answer is \\boxed{\\$5}.", "5", 1.0),
        ("The answer is \\boxed{843}. I hope this helps, 12 more words 99.", "843", 1.0),
        ("The answer is \\boxed{1,234}.", "1234", 1.0),
        ("The answer is \\boxed{x = 5}.", "5", 1.0),
        # the reference may itself be boxed or in $...$
        ("\\boxed{843}", "The answer is \\boxed{843}.", 1.0),
        ("\\boxed{-3}", "$-3$", 1.0),
        # unparsable: incorrect + penalty
        ("The answer is 843.", "843", -1.5),  # no box at all
        ("The answer is \\boxed{}.", "843", -1.5),  # empty box
        ("The answer is \\boxed{843.", "843", -1.5),  # unbalanced braces
        ("", "843", -1.5),  # empty response
        ("The answer is \\boxed{???}.", "843", -1.5),
    ],
)
def test_boxed_scores(response: str, answer: str, expected: float) -> None:
    assert BOXED.score(response, answer).score == expected


@pytest.mark.parametrize(
    ("response", "answer", "expected"),
    [
        ("So the total is 843 apples.", "843", 1.0),
        ("First 2, then 3, finally 843.", "843", 1.0),
        ("so it is -3.", "-3", 1.0),
        ("so it is −3", "-3", 1.0),
        ("5 - 3", "3", 1.0),  # the last number is 3, not -3
        ("That makes 1,234 in total", "1234", 1.0),
        ("a half: 1/2.", "0.5", 1.0),
        ("a half: \\frac{1}{2}", "0.5", 1.0),
        ("0.50", "1/2", 1.0),
        ("pi is about 3.14.", "3.14", 1.0),
        ("2 and 3", "2", -1.0),
        ("\\boxed{7} is wrong, it is 8", "7", -1.0),
        ("no digits here", "1", -1.5),
        ("", "1", -1.5),
    ],
)
def test_last_number_scores(response: str, answer: str, expected: float) -> None:
    assert LAST.score(response, answer).score == expected


def test_result_fields() -> None:
    ok = BOXED.score("First, 99 * 8 = 792. Then 51 + 792 = 843. The answer is \\boxed{843}.", "843")
    assert ok == RewardResult(score=1.0, correct=True, parsed="843", parse_failed=False)
    wrong = BOXED.score("The answer is \\boxed{842}.", "843")
    assert wrong == RewardResult(score=-1.0, correct=False, parsed="842", parse_failed=False)
    none = BOXED.score("I give up", "843")
    assert none == RewardResult(score=-1.5, correct=False, parsed=None, parse_failed=True)
    assert none.to_dict() == {"score": -1.5, "correct": False, "parsed": None, "parse_failed": True}
    assert LAST.score("total: 1,234", "1234").parsed == "1234"


def test_defaults_score_zero_on_parse_failure() -> None:
    """The issue's rule: an unparsable answer scores 0 with the default spec."""
    fn = MathRewardFn.from_reward_spec(None)
    assert fn.spec == MathReward()
    assert fn.score("no answer", "1") == RewardResult(0.0, False, None, True)
    assert fn.score("\\boxed{1}", "1").score == 1.0
    custom = MathRewardFn.from_reward_spec(RewardSpec(math=MathReward(answer_format="last_number", correct_reward=2)))
    assert custom.score("it is 1", "1").score == 2.0


@pytest.mark.parametrize(
    "garbage",
    [
        "x" * 200_000,
        "\\boxed{" * 50_000,
        "}" * 10_000 + "\\boxed{" + "{" * 10_000,
        "\\boxed{" + "9" * 5_000 + "}",  # longer than max_answer_chars
        "\\boxed{" + "(" * 300 + "1" + ")" * 300 + "}",
        "".join(chr(c) for c in range(32, 5000)) * 20,
        "\x00\ud800\\boxed{\x00}",
    ],
)
def test_garbage_never_raises_and_is_fast(garbage: str) -> None:
    start = time.perf_counter()
    result = BOXED.score(garbage, "843")
    assert result.score == -1.5 and result.parse_failed and not result.correct
    LAST.score(garbage, "843")
    assert time.perf_counter() - start < 5.0


def test_non_string_inputs_do_not_raise() -> None:
    assert BOXED.score(None, "1").parse_failed  # type: ignore[arg-type]
    assert BOXED.score("\\boxed{1}", 1).correct  # type: ignore[arg-type]


def test_unparsable_reference_compares_text() -> None:
    assert BOXED.score("\\boxed{???}", "???").parse_failed  # the response is still unparsable
    assert not BOXED.score("\\boxed{1}", "???").correct


def test_works_from_threads() -> None:
    """math-verify's signal timeouts only work in the main thread; from a thread they are off and
    costly answers are refused instead of hanging."""
    out: list[RewardResult] = []

    def work() -> None:
        out.append(BOXED.score("\\boxed{\\frac{1}{2}}", "0.5"))
        out.append(BOXED.score("\\boxed{9^{9^{9}}}", "5"))
        out.append(BOXED.score("\\boxed{x^2}", "x^2"))

    start = time.perf_counter()
    th = threading.Thread(target=work)
    th.start()
    th.join(timeout=30)
    assert not th.is_alive()
    assert [r.score for r in out] == [1.0, -1.5, 1.0]
    assert time.perf_counter() - start < 10.0


def test_main_thread_timeout_bounds_costly_answers() -> None:
    fn = MathRewardFn(MathReward(), timeout_s=1)
    start = time.perf_counter()
    result = fn.score("\\boxed{9^{9^{9}}}", "5")
    assert not result.correct
    assert time.perf_counter() - start < 5.0


def test_extractors() -> None:
    assert last_boxed("a \\boxed{1} b \\boxed{\\frac{1}{2}} c") == "\\frac{1}{2}"
    assert last_boxed("\\boxed{1} then \\boxed{2") == "1"  # the last box is unbalanced
    assert last_boxed("\\fbox{7}") == "7"
    assert last_boxed("nothing") is None
    assert last_number("x = -1,234.5 units") == "-1234.5"
    assert last_number("ratio 3 / 4") == "3/4"
    assert last_number("step2 is done") is None
    assert last_number("") is None
