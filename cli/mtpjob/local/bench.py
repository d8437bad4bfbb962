"""Speedup of MTP speculative decoding: the same prompts, model and server settings, with and without it.

Why this shape: speedup claims are only meaningful against plain decoding of the *same* model on
the *same* server settings (``server_plan(..., speculative=False)`` differs only by
``--speculative-config``). Requests run one at a time (the regime where speculation pays on CPU;
see docs/bench-rollout.md), greedy, ``ignore_eos`` so every request generates ``max_tokens``,
after one warm-up request that is excluded from time and counters. Acceptance comes from vLLM's
own counters over the timed requests; outputs are compared token text for token text.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from mtp_api import types as t
from mtp_api.acceptance import WindowFigures, counter_series, increments
from mtp_api.exposition import parse
from mtp_rollout.runtime.launcher import server_plan
from mtp_rollout.runtime.server import VllmServer, free_port, running


@dataclass
class DecodeRun:
    """One server's pass over the prompt set."""

    label: str
    k: int
    seconds: float
    completion_tokens: int
    outputs: list[str]
    acceptance_rate: float | None = None
    mean_acceptance_length: float | None = None
    per_position: list[float] = field(default_factory=list)
    expected_tokens_per_forward: float | None = None

    @property
    def tokens_per_second(self) -> float:
        return self.completion_tokens / self.seconds if self.seconds > 0 else 0.0


@dataclass
class BenchResult:
    model: str
    prompts: int
    max_tokens: int
    concurrency: int
    plain: DecodeRun
    speculative: list[DecodeRun]

    def speedup(self, run: DecodeRun) -> float:
        return run.tokens_per_second / self.plain.tokens_per_second if self.plain.tokens_per_second else 0.0

    def outputs_equal(self, run: DecodeRun) -> bool:
        return run.outputs == self.plain.outputs

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "model": self.model,
            "prompts": self.prompts,
            "max_tokens": self.max_tokens,
            "concurrency": self.concurrency,
            "plain": {**_run_json(self.plain)},
            "speculative": [],
        }
        for run in self.speculative:
            out["speculative"].append(
                {**_run_json(run), "speedup": self.speedup(run), "outputs_equal": self.outputs_equal(run)}
            )
        return out


def _run_json(run: DecodeRun) -> dict[str, Any]:
    d = asdict(run)
    d.pop("outputs")
    d["tokens_per_second"] = run.tokens_per_second
    return d


def with_k(job: t.MTPTrainingJob, k: int) -> t.MTPTrainingJob:
    """The job with ``rollout.speculative`` set to MTP with ``k`` draft tokens, greedy decoding."""
    rollout = job.spec.rollout or t.RolloutSpec()
    rollout = rollout.model_copy(
        update={"speculative": t.SpeculativeConfig(method=t.SpeculativeMethod.MTP, num_speculative_tokens=k)}
    )
    return job.model_copy(update={"spec": job.spec.model_copy(update={"rollout": rollout})})


def decode_pass(
    server: VllmServer,
    model_name: str,
    prompts: list[str],
    max_tokens: int,
    *,
    label: str,
    k: int,
    concurrency: int = 1,
    stop: list[str] | None = None,
) -> DecodeRun:
    """Warm up, then time the prompt set and read the speculative counters around it. ``stop``
    ends each answer at its turn's end (chat-trained models); without it every answer runs to
    ``max_tokens``."""
    server.complete(model_name, prompts[0], 8)
    before, _ = counter_series(parse(server.metrics_text()).samples)
    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        answers = list(pool.map(lambda p: server.complete(model_name, p, max_tokens, stop=stop), prompts))
    seconds = time.perf_counter() - start
    after, _ = counter_series(parse(server.metrics_text()).samples)
    fig = WindowFigures(seconds, increments(before, after))
    return DecodeRun(
        label=label,
        k=k,
        seconds=seconds,
        completion_tokens=sum(int(a["usage"]["completion_tokens"]) for a in answers),
        outputs=[str(a["choices"][0]["text"]) for a in answers],
        acceptance_rate=fig.acceptance_rate,
        mean_acceptance_length=fig.mean_acceptance_length,
        per_position=[fig.per_position[p] for p in sorted(fig.per_position)],
        expected_tokens_per_forward=fig.expected_tokens_per_forward,
    )


@dataclass
class PairedSpeed:
    """Speculative and plain passes over the same prompts, interleaved round by round.

    Why: one pass of each, minutes apart, measured 1.51x in one run and 1.22x in the next on the
    same weights (a 4-second pass is at the mercy of whatever else the machine does). Both servers
    stay up and the passes alternate (spec-plain, plain-spec, ...). Other processes can only slow a
    pass down, never speed it up, so the headline ``speedup`` compares each side's fastest pass
    (the ``timeit`` rule: the minimum is the least disturbed); ``median_ratio``, the median of the
    per-round ratios, is reported beside it.
    """

    spec: list[DecodeRun]
    plain: list[DecodeRun]

    @property
    def ratios(self) -> list[float]:
        return [s.tokens_per_second / p.tokens_per_second for s, p in zip(self.spec, self.plain, strict=True)]

    @property
    def median_ratio(self) -> float:
        return statistics.median(self.ratios)

    @property
    def spec_tokens_per_second(self) -> float:
        return max(r.tokens_per_second for r in self.spec)

    @property
    def plain_tokens_per_second(self) -> float:
        return max(r.tokens_per_second for r in self.plain)

    @property
    def speedup(self) -> float:
        return self.spec_tokens_per_second / self.plain_tokens_per_second

    @property
    def outputs_equal(self) -> bool:
        return all(s.outputs == p.outputs for s, p in zip(self.spec, self.plain, strict=True))

    def to_json(self) -> dict[str, Any]:
        return {
            "method": f"fastest of {len(self.spec)} interleaved passes per side, one request at a time",
            "speedup": self.speedup,
            "median_ratio": self.median_ratio,
            "speedup_rounds": self.ratios,
            "speculative_tokens_per_second": self.spec_tokens_per_second,
            "plain_tokens_per_second": self.plain_tokens_per_second,
            "speculative_tokens_per_second_rounds": [r.tokens_per_second for r in self.spec],
            "plain_tokens_per_second_rounds": [r.tokens_per_second for r in self.plain],
            "greedy_outputs_equal": self.outputs_equal,
        }


def paired_passes(
    spec_server: VllmServer,
    plain_server: VllmServer,
    model_name: str,
    prompts: list[str],
    max_tokens: int,
    *,
    k: int,
    rounds: int = 3,
    stop: list[str] | None = None,
    on_round: Callable[[int, float], None] = lambda _i, _r: None,
) -> PairedSpeed:
    """``rounds`` rounds of one speculative and one plain pass, the order alternating per round."""
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    spec: list[DecodeRun] = []
    plain: list[DecodeRun] = []
    for i in range(rounds):
        order = ("spec", "plain") if i % 2 == 0 else ("plain", "spec")
        for side in order:
            if side == "spec":
                spec.append(
                    decode_pass(spec_server, model_name, prompts, max_tokens, label=f"mtp k={k}", k=k, stop=stop)
                )
            else:
                plain.append(decode_pass(plain_server, model_name, prompts, max_tokens, label="plain", k=0, stop=stop))
        on_round(i, spec[-1].tokens_per_second / plain[-1].tokens_per_second)
    return PairedSpeed(spec, plain)


def run_bench(
    job: t.MTPTrainingJob,
    model_path: str,
    ks: list[int],
    prompts: list[str],
    *,
    max_tokens: int,
    workdir: Path,
    concurrency: int = 1,
    on_progress: Callable[[str], None] = lambda _: None,
) -> BenchResult:
    """Plain decoding once, then MTP speculation at each k, each on a fresh server."""
    name = job.metadata.name

    def one(speculative: bool, k: int) -> DecodeRun:
        port = free_port()
        label = f"mtp k={k}" if speculative else "plain"
        plan = server_plan(with_k(job, k), model_path, host="127.0.0.1", port=port, speculative=speculative)
        on_progress(f"starting vLLM ({label})")
        log = workdir / f"vllm-{'k' + str(k) if speculative else 'plain'}.log"
        with running(plan, log, port=port) as server:
            on_progress(f"decoding {len(prompts)} prompts ({label})")
            return decode_pass(
                server, name, prompts, max_tokens, label=label, k=k if speculative else 0, concurrency=concurrency
            )

    workdir.mkdir(parents=True, exist_ok=True)
    plain = one(False, ks[0])
    spec = [one(True, k) for k in ks]
    return BenchResult(model_path, len(prompts), max_tokens, concurrency, plain, spec)


def result_table(result: BenchResult) -> Any:
    """A rich table of the result (one row per k, plain first)."""
    from rich.table import Table

    table = Table(
        title=f"MTP speculative decoding vs plain ({result.prompts} prompts x {result.max_tokens} tokens, greedy)"
    )
    for col in (
        "decoding",
        "tok/s",
        "speedup",
        "acceptance",
        "mean length",
        "per position",
        "i.i.d. expected",
        "greedy equal",
    ):
        table.add_column(col, justify="right")
    p = result.plain
    table.add_row(p.label, f"{p.tokens_per_second:.1f}", "1.00", "-", "-", "-", "-", "-")
    for run in result.speculative:
        table.add_row(
            run.label,
            f"{run.tokens_per_second:.1f}",
            f"{result.speedup(run):.2f}",
            _fmt(run.acceptance_rate, "{:.1%}"),
            _fmt(run.mean_acceptance_length, "{:.2f}"),
            " ".join(f"{v:.2f}" for v in run.per_position) or "-",
            _fmt(run.expected_tokens_per_forward, "{:.2f}"),
            "yes" if result.outputs_equal(run) else "NO",
        )
    return table


def _fmt(value: float | None, pattern: str) -> str:
    return "-" if value is None else pattern.format(value)
