"""The built-in arithmetic task and the JSONL/Parquet prompt loader."""

from __future__ import annotations

import ast
import json
import operator
import re
from pathlib import Path

import pytest

from mtp_api.types import MathReward
from mtp_trainer.rl.reward import MathRewardFn
from mtp_trainer.rl.tasks import (
    BUILTIN_ARITHMETIC,
    Problem,
    ProblemDataError,
    arithmetic_problems,
    as_conversation,
    builtin_problems,
    load_problems,
    solution_for,
)

_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul}


def _eval(expr: str) -> int:
    """Python's own reading of the expression (precedence included), independent of the task code."""

    def walk(node: ast.AST) -> int:
        if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
            return int(_OPS[type(node.op)](walk(node.left), walk(node.right)))
        if isinstance(node, ast.Constant) and isinstance(node.value, int):
            return node.value
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            return -walk(node.operand)
        raise AssertionError(f"unexpected node in {expr!r}: {ast.dump(node)}")

    return walk(ast.parse(expr, mode="eval").body)


def _expression(problem: Problem) -> str:
    m = re.fullmatch(r"Compute (.+)\.", problem.prompt)
    assert m, problem.prompt
    return m.group(1)


def test_example_from_the_notes() -> None:
    p = solution_for("51 + 99 * 8")
    assert p == Problem(
        prompt="Compute 51 + 99 * 8.",
        answer="843",
        solution="First, 99 * 8 = 792. Then 51 + 792 = 843. The answer is \\boxed{843}.",
    )
    assert solution_for("Compute 51 + 99 * 8.") == p
    assert solution_for("7 - 9").solution == "First, 7 - 9 = -2. The answer is \\boxed{-2}."
    with pytest.raises(ValueError, match="not an arithmetic expression"):
        solution_for("2 / 3")


def test_deterministic_from_seed() -> None:
    a = arithmetic_problems(seed=7, n=200, difficulty=3, split="train")
    assert a == arithmetic_problems(seed=7, n=200, difficulty=3, split="train")
    assert a != arithmetic_problems(seed=8, n=200, difficulty=3, split="train")
    assert arithmetic_problems(seed=7, n=50, difficulty=3) == a[:50]  # a prefix: n does not reshuffle
    assert builtin_problems(BUILTIN_ARITHMETIC + "?n=300") == builtin_problems(BUILTIN_ARITHMETIC + "?n=300")


def test_problems_are_distinct() -> None:
    probs = arithmetic_problems(seed=0, n=3000, difficulty=1, split="train")
    assert len({p.prompt for p in probs}) == 3000


@pytest.mark.parametrize("difficulty", [1, 2, 3, 4, 5])
def test_splits_never_overlap(difficulty: int) -> None:
    # small operands, so that the draws cover most of the space (difficulty 1 has ~960 expressions)
    n_train, n_val = (700, 60) if difficulty == 1 else (1500, 150)
    train = {p.prompt for s in (0, 1, 2) for p in arithmetic_problems(s, n_train, difficulty, "train", max_operand=20)}
    val = {p.prompt for s in (0, 1, 2) for p in arithmetic_problems(s, n_val, difficulty, "validation", max_operand=20)}
    assert train and val and not train & val


def test_builtin_splits_never_overlap() -> None:
    train = {p.prompt for p in builtin_problems(BUILTIN_ARITHMETIC + "?n=6000&seed=3")}
    val = builtin_problems(BUILTIN_ARITHMETIC + "?n=6000&seed=3", split="validation")
    assert len(val) == 600 and not train & {p.prompt for p in val}
    assert len(builtin_problems(BUILTIN_ARITHMETIC + "?n=50&validation_n=256&difficulty=2", "validation")) == 256


@pytest.mark.parametrize("difficulty", [1, 2, 3, 4, 5])
def test_difficulty_is_the_number_of_operations(difficulty: int) -> None:
    for p in arithmetic_problems(seed=1, n=100, difficulty=difficulty, split="validation"):
        expr = _expression(p)
        assert len(re.findall(r" [-+*] ", expr)) == difficulty
        assert p.solution.count(" = ") == difficulty  # one worked step per operation
        assert p.solution.startswith("First, ")
        assert p.solution.count("Then ") == difficulty - 1


def test_operand_ranges() -> None:
    for p in arithmetic_problems(seed=2, n=300, difficulty=4, split="train", max_operand=30, max_factor=5):
        tokens = _expression(p).split()
        nums = [int(x) for x in tokens[0::2]]
        assert all(1 <= x <= 30 for x in nums)
        for op, x in zip(tokens[1::2], nums[1:], strict=True):
            if op == "*":
                assert 2 <= x <= 5


@pytest.mark.parametrize("difficulty", [1, 2, 3, 4, 5])
def test_answers_match_python_and_solutions_score_correct(difficulty: int) -> None:
    reward = MathRewardFn(MathReward(answer_format="boxed"))
    last = MathRewardFn(MathReward(answer_format="last_number"))
    for split in ("train", "validation"):
        for p in arithmetic_problems(seed=11, n=40, difficulty=difficulty, split=split):
            assert p.answer == str(_eval(_expression(p)))
            assert p.solution.endswith(f"The answer is \\boxed{{{p.answer}}}.")
            assert reward.score(p.solution, p.answer).correct, p
            assert last.score(p.solution.replace("\\boxed", ""), p.answer).correct, p
            assert not reward.score(p.solution, str(int(p.answer) + 1)).correct
            # every worked step is true arithmetic
            for x, op, y, z in re.findall(r"(-?\d+) ([-+*]) (-?\d+) = (-?\d+)\.", p.solution):
                assert _eval(f"({x}) {op} ({y})") == int(z)


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="difficulty"):
        arithmetic_problems(0, 1, 6)
    with pytest.raises(ValueError, match="split"):
        arithmetic_problems(0, 1, 1, "test")
    with pytest.raises(ValueError, match="lower n or raise max_operand"):
        arithmetic_problems(0, 10_000, 1, max_operand=5, max_factor=3)
    with pytest.raises(ValueError, match="unknown parameter 'size'"):
        builtin_problems(BUILTIN_ARITHMETIC + "?size=3")
    with pytest.raises(ValueError, match=r"within 1\.\.5"):
        builtin_problems(BUILTIN_ARITHMETIC + "?difficulty=2-9")


def test_builtin_defaults_and_mix() -> None:
    probs = builtin_problems(BUILTIN_ARITHMETIC + "?n=90&difficulty=1-3&seed=5")
    counts = [sum(1 for p in probs if p.solution.count(" = ") == d) for d in (1, 2, 3)]
    assert counts == [30, 30, 30]
    assert len(builtin_problems(BUILTIN_ARITHMETIC)) == 30000


# ------------------------------------------------------------------------------ SFT hook (data.py)


def test_sft_data_hook() -> None:
    from mtp_trainer import data
    from mtp_trainer.config import ConfigError, DataConfig

    name = BUILTIN_ARITHMETIC + "?n=200&difficulty=2"
    cfg = DataConfig(train_files=(name,), validation_files=(name,))
    train, val = data.split(cfg)
    assert len(train) == 200 and len(val) == 20
    assert train[0] == as_conversation(builtin_problems(name)[0])
    assert train[0][0]["role"] == "user" and train[0][0]["content"].startswith("Compute ")
    assert train[0][1]["role"] == "assistant" and "\\boxed{" in train[0][1]["content"]
    assert not {c[0]["content"] for c in train} & {c[0]["content"] for c in val}
    with pytest.raises(ConfigError, match=r"trainFiles\[0\].*unknown parameter"):
        data.split(DataConfig(train_files=(BUILTIN_ARITHMETIC + "?bogus=1",)))


# ------------------------------------------------------------------------------ datasets


def _write_jsonl(path: Path, records: list[object]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")


def test_jsonl_default_and_custom_keys(tmp_path: Path) -> None:
    _write_jsonl(tmp_path / "a.jsonl", [{"prompt": "1+1?", "ground_truth": "2"}, {"prompt": "2+2?", "ground_truth": 4}])
    assert load_problems(["a.jsonl"], tmp_path) == [Problem("1+1?", "2"), Problem("2+2?", "4")]
    _write_jsonl(
        tmp_path / "b.jsonl",
        [{"question": "3*3?", "final": "9", "worked": "3*3 = 9. \\boxed{9}"}],
    )
    got = load_problems(["b.jsonl"], tmp_path, prompt_key="question", answer_key="final", response_key="worked")
    assert got == [Problem("3*3?", "9", "3*3 = 9. \\boxed{9}")]


def test_globs_nested_keys_chat_prompts_and_parquet(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    # verl's layout: prompt as a chat list, the answer under reward_model.ground_truth
    rows = [
        {
            "prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": f"q{i}"}],
            "reward_model": {"style": "rule", "ground_truth": str(i)},
        }
        for i in range(3)
    ]
    (tmp_path / "data").mkdir()
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "data" / "train-0.parquet")
    _write_jsonl(tmp_path / "data" / "train-1.jsonl", [{"prompt": "q9", "reward_model": {"ground_truth": 9}}])
    got = load_problems(["data/train-*"], tmp_path, answer_key="reward_model.ground_truth")
    assert got == [Problem("q0", "0"), Problem("q1", "1"), Problem("q2", "2"), Problem("q9", "9")]
    # absolute paths work too, and a literal dotted key wins over the nested path
    _write_jsonl(tmp_path / "c.jsonl", [{"prompt": "p", "a.b": "literal", "a": {"b": "nested"}}])
    assert load_problems([str(tmp_path / "c.jsonl")], "/nonexistent", answer_key="a.b")[0].answer == "literal"


def test_json_array_and_builtin_name(tmp_path: Path) -> None:
    (tmp_path / "x.json").write_text(json.dumps([{"prompt": "p", "ground_truth": "1"}]))
    assert load_problems(["x.json"], tmp_path) == [Problem("p", "1")]
    name = BUILTIN_ARITHMETIC + "?n=10"
    assert load_problems([name], tmp_path, split="validation") == builtin_problems(name, "validation")


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ProblemDataError, match=r"'nope\.jsonl': no such file .*nope\.jsonl; fix the path"):
        load_problems(["nope.jsonl"], tmp_path)
    with pytest.raises(ProblemDataError, match=r"matches no file"):
        load_problems(["data/*.parquet"], tmp_path)


def test_missing_key_names_file_record_and_key(tmp_path: Path) -> None:
    _write_jsonl(tmp_path / "a.jsonl", [{"prompt": "p", "ground_truth": "1"}, {"prompt": "p2", "answer": "2"}])
    with pytest.raises(ProblemDataError) as err:
        load_problems(["a.jsonl"], tmp_path)
    msg = str(err.value)
    assert "a.jsonl: record 2 has no 'ground_truth'" in msg
    assert "['answer', 'prompt']" in msg and "set answer_key" in msg
    with pytest.raises(ProblemDataError, match=r"record 1 has no 'reward_model\.ground_truth'.*set answer_key"):
        load_problems(["a.jsonl"], tmp_path, answer_key="reward_model.ground_truth")
    with pytest.raises(ProblemDataError, match=r"record 1 has no 'sol'.*set response_key"):
        load_problems(["a.jsonl"], tmp_path, response_key="sol")


def test_missing_key_in_parquet(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist([{"question": "q", "ground_truth": "1"}]), tmp_path / "t.parquet")
    with pytest.raises(ProblemDataError, match=r"t\.parquet: record 1 has no 'prompt'.*set prompt_key"):
        load_problems(["t.parquet"], tmp_path)


def test_wrong_value_types(tmp_path: Path) -> None:
    _write_jsonl(tmp_path / "a.jsonl", [{"prompt": {"x": 1}, "ground_truth": "1"}])
    with pytest.raises(ProblemDataError, match=r"record 1: 'prompt' is a dict, expected a string or a list"):
        load_problems(["a.jsonl"], tmp_path)
    _write_jsonl(tmp_path / "b.jsonl", [{"prompt": "p", "ground_truth": [1]}])
    with pytest.raises(ProblemDataError, match=r"record 1: 'ground_truth' is a list, expected a string or a number"):
        load_problems(["b.jsonl"], tmp_path)
    _write_jsonl(tmp_path / "c.jsonl", [[1, 2]])
    with pytest.raises(ProblemDataError, match=r"record 1 is a list, expected an object"):
        load_problems(["c.jsonl"], tmp_path)


def test_not_json_not_utf8_bad_extension_bad_parquet(tmp_path: Path) -> None:
    (tmp_path / "a.jsonl").write_text('{"prompt": "p", "ground_truth": "1"}\n{not json\n')
    with pytest.raises(ProblemDataError, match=r"a\.jsonl: record 2 \(line 2\) is not JSON"):
        load_problems(["a.jsonl"], tmp_path)
    (tmp_path / "b.jsonl").write_bytes(b'{"prompt": "p", "ground_truth": "1"}\n{"prompt": "\xff"}\n')
    with pytest.raises(ProblemDataError, match=r"b\.jsonl: record 2 \(line 2\) is not UTF-8.*re-encode"):
        load_problems(["b.jsonl"], tmp_path)
    (tmp_path / "c.csv").write_text("prompt,ground_truth\n")
    with pytest.raises(ProblemDataError, match=r"c\.csv: unsupported file type '\.csv'; use \.jsonl"):
        load_problems(["c.csv"], tmp_path)
    (tmp_path / "d.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(ProblemDataError, match=r"d\.parquet: not a readable Parquet file"):
        load_problems(["d.parquet"], tmp_path)
    assert issubclass(ProblemDataError, ValueError)
