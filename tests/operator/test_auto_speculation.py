"""numSpeculativeTokens: auto: the operator's closed loop (speculation.py), pure parts and scenarios.

The calibration is written by hand, and every expected outcome below follows from it by hand
(gain at batch b with k drafts = (1 + sum(per_position[:k])) x plain_step_s[b] / spec_step_s[k][b]):

- collapsed acceptance [0.02, 0.0]: at b=1 k=0 gives 10/11.5 = 0.870x, k=1 1.02 x 10/12 = 0.850x,
  k=2 1.02 x 10/13 = 0.785x; at b=8 k=0 12/14 = 0.857x, k=1 1.02 x 12/15 = 0.816x, k=2 0.765x.
  The best speculative schedule (k=0 everywhere) predicts (0.870 + 0.857) / 2 = 0.863x < 1.03:
  the plain engine (gain 1.0).
- healthy acceptance [0.9, 0.8]: at b=1 k=2 gives 2.7 x 10/13 = 2.077x (k=1 1.583x); at b=8 k=2
  2.7 x 12/16 = 2.025x (k=1 1.52x): k=2 for every batch size, (2.077 + 2.025) / 2 = 2.051x.
- measured gain: 3000 tokens in 10 s at 4 running requests on one replica; plain at b=4 is
  4 / (10 + 3/7 x 2) ms = 368.42 tokens/s, so 300 / 368.42 = 0.814.
"""

from __future__ import annotations

import asyncio
import copy
import datetime
import json
from typing import Any

import pytest
import yaml

from mtp_api import types as t
from mtp_api.acceptance import Increments, WindowFigures
from mtp_operator import speculation as sp
from mtp_operator.metrics_store import JobMetrics, RolloutWindow, SpeculationReport
from mtp_operator.observed import Observed
from mtp_operator.periodic import Periodic
from mtp_operator.settings import OperatorConfig
from mtp_operator.status import compute_status
from tests.apiserver.harness import wait_for
from tests.operator.backends import KmockBackend
from tests.operator.conftest import REPO, job_manifest

NOW = datetime.datetime(2026, 1, 1, 12, 0, tzinfo=datetime.UTC)
CM = "tiny-calibration"
CALIBRATION: dict[str, Any] = {
    "model": "tiny",
    "hardware": "cpu-test",
    "dtype": "float32",
    "max_k": 2,
    "batch_sizes": [1, 8],
    "plain_step_s": {"1": 0.010, "8": 0.012},
    "spec_step_s": {
        "0": {"1": 0.0115, "8": 0.014},
        "1": {"1": 0.012, "8": 0.015},
        "2": {"1": 0.013, "8": 0.016},
    },
    "created": "2026-01-01T00:00:00+00:00",
}
AUTO = {
    "method": "mtp",
    "numSpeculativeTokens": "auto",
    "maxSpeculativeTokens": 2,
    "calibration": {"configMap": CM},
    "auto": {"minDwellSeconds": 0, "hysteresis": 0.05, "minDrafts": 100},
}
FIXED_K2 = {"method": "mtp", "num_speculative_tokens": 2}


def auto_manifest(name: str = "demo") -> dict[str, Any]:
    body = job_manifest(name)
    body["spec"]["rollout"]["speculative"] = copy.deepcopy(AUTO)
    return body


def rlvr_auto_manifest() -> dict[str, Any]:
    body = copy.deepcopy(yaml.safe_load((REPO / "examples" / "tiny-rlvr.yaml").read_text()))
    body["metadata"] = {"name": "rl", "namespace": "team-a"}
    body["spec"]["rollout"]["speculative"] = copy.deepcopy(AUTO)
    return body


def typed(body: dict[str, Any]) -> t.MTPTrainingJob:
    return t.MTPTrainingJob.model_validate(body)


def calibration() -> sp.Calibration:
    return sp.Calibration.from_json(CALIBRATION)


def config_map(data: dict[str, str] | None = None) -> dict[str, Any]:
    if data is None:
        data = {"calibration.json": json.dumps(CALIBRATION)}
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": CM}, "data": data}


def window(
    per_position: list[float],
    drafts: float = 1000,
    *,
    generated: float = 0.0,
    batch: float | None = None,
    replicas: int = 1,
) -> RolloutWindow:
    accepted = {i: p * drafts for i, p in enumerate(per_position)}
    inc = Increments(
        drafts=drafts,
        draft_tokens=2 * drafts,
        accepted=sum(accepted.values()),
        per_position=accepted,
        generation_tokens=generated,
    )
    return RolloutWindow(WindowFigures(10.0, inc), replicas=replicas, batch_size=batch)


COLLAPSED = [0.02, 0.0]
HEALTHY = [0.9, 0.8]


# ----------------------------------------------------------------------------------------- pure


def test_collapsed_acceptance_goes_plain_at_the_first_decision() -> None:
    new, applied = sp.next_status(
        typed(auto_manifest()), None, window(COLLAPSED), calibration(), now=NOW, weight_version=None
    )
    assert applied
    assert new.engine == "plain" and new.schedule == [] and new.description == "plain decoding"
    assert new.since == "2026-01-01T12:00:00Z" and new.predicted_gain == 1.0
    assert new.smoothed_per_position == [0.02, 0.0]
    assert new.last_decision is not None and new.last_decision.predicted_gain_new == 1.0
    assert new.last_decision.predicted_gain_current is None  # nothing was scheduled before
    assert "applying it as the first schedule" in new.last_decision.reason
    assert new.calibration == t.CalibrationSummary(
        model="tiny", hardware="cpu-test", dtype="float32", batch_sizes=[1, 8], max_k=2, created=CALIBRATION["created"]
    )


def test_healthy_acceptance_speculates_at_k2() -> None:
    new, applied = sp.next_status(
        typed(auto_manifest()), None, window(HEALTHY), calibration(), now=NOW, weight_version=None
    )
    assert applied and new.engine == "speculative"
    assert [r.wire() for r in new.schedule] == [{"fromBatch": 1, "toBatch": 256, "k": 2}]
    assert new.predicted_gain == pytest.approx((2.7 * 10 / 13 + 2.7 * 12 / 16) / 2, abs=1e-3)
    schedule = sp.applied_schedule(typed(auto_manifest()), new)
    assert schedule is not None and schedule.engine == "speculative" and schedule.ranges == ((1, 256, 2),)


def test_the_first_decision_waits_for_min_drafts() -> None:
    new, applied = sp.next_status(
        typed(auto_manifest()), None, window(COLLAPSED, drafts=50), calibration(), now=NOW, weight_version=None
    )
    assert not applied and new.since is None and new.engine == "speculative"
    assert [r.wire() for r in new.schedule] == [{"fromBatch": 1, "toBatch": 256, "k": 2}]
    assert new.last_decision is not None and "50 drafts in the window < minDrafts 100" in new.last_decision.reason
    assert sp.applied_schedule(typed(auto_manifest()), new) is None  # the Deployment keeps the maximum k


def test_measured_gain_against_the_calibrated_plain_rate() -> None:
    cal = calibration()
    assert sp.measured_gain(window(COLLAPSED, generated=3000, batch=4), cal) == pytest.approx(
        300 / (4 / (0.010 + 3 / 7 * 0.002))
    )
    assert round(sp.measured_gain(window(COLLAPSED, generated=6000, batch=4, replicas=2), cal) or 0, 3) == 0.814
    assert sp.measured_gain(window(COLLAPSED, generated=0, batch=4), cal) is None  # no traffic
    assert sp.measured_gain(window(COLLAPSED, generated=3000, batch=None), cal) is None  # batch size unknown
    new, _ = sp.next_status(
        typed(auto_manifest()),
        None,
        window(COLLAPSED, generated=3000, batch=4),
        calibration(),
        now=NOW,
        weight_version=None,
    )
    assert new.measured_gain == 0.814


def test_rlvr_changes_only_at_a_newer_weight_version() -> None:
    job = typed(rlvr_auto_manifest())
    cal = calibration()
    first, applied = sp.next_status(job, None, window(COLLAPSED), cal, now=NOW, weight_version=1)
    assert not applied and first.since is None  # no recorded version yet: no boundary seen
    assert first.last_decision is not None and first.last_decision.weight_version == 1
    same, applied = sp.next_status(job, first, window(COLLAPSED), cal, now=NOW, weight_version=1)
    assert not applied and same.since is None
    unseen, applied = sp.next_status(job, same, window(COLLAPSED), cal, now=NOW, weight_version=None)
    assert not applied and unseen.last_decision is not None and unseen.last_decision.weight_version == 1
    assert unseen.smoothed_per_position == [0.02, 0.0]
    newer, applied = sp.next_status(job, unseen, window(COLLAPSED), cal, now=NOW, weight_version=2)
    assert applied and newer.engine == "plain" and newer.last_decision is not None
    assert newer.last_decision.weight_version == 2


def test_while_plain_the_trainers_agreement_brings_speculation_back() -> None:
    """A plain engine drafts nothing; the trainer's MTP agreement on the policy's samples is the evidence.

    By hand: smoothed [0.02, 0.0] (the collapse) and a trainer window [0.9] (depth 1 only) with
    alpha 0.5 -> [0.46, 0.0] (position 1 keeps its value). E_1 = E_2 = 1.46. Gains, uniform over
    batch sizes 1 and 8: k=1 1.46*10/12 = 1.2167 and 1.46*12/15 = 1.168 (mean 1.1923); k=2
    1.46*10/13 = 1.123 and 1.46*12/16 = 1.095 -> k=1 everywhere, 1.192 > plain's 1.0 by more than
    the 5% hysteresis."""
    job = typed(auto_manifest())
    plain, applied = sp.next_status(job, None, window(COLLAPSED), calibration(), now=NOW, weight_version=None)
    assert applied and plain.engine == "plain"
    later = NOW + datetime.timedelta(minutes=1)
    # no trainer figure: a plain engine's empty windows change nothing
    same, applied = sp.next_status(job, plain, window([], drafts=0), calibration(), now=later, weight_version=None)
    assert not applied and same.engine == "plain"
    back, applied = sp.next_status(job, same, window([], drafts=0), calibration(), now=later, weight_version=None,
                                   trainer_agreement=[0.9])  # fmt: skip
    assert applied and back.engine == "speculative"
    assert [r.wire() for r in back.schedule] == [{"fromBatch": 1, "toBatch": 256, "k": 1}]
    assert back.smoothed_per_position == [0.46, 0.0]
    assert back.predicted_gain == pytest.approx((1.46 * 10 / 12 + 1.46 * 12 / 15) / 2, abs=1e-3)
    # while the engine drafts, the rollout's own acceptance is the evidence, not the trainer's
    again, _ = sp.next_status(job, back, window(HEALTHY), calibration(), now=later, weight_version=None,
                              trainer_agreement=[0.0])  # fmt: skip
    assert again.smoothed_per_position == [round(0.5 * 0.9 + 0.5 * 0.46, 3), 0.4]


def test_status_is_the_controllers_memory() -> None:
    """A restarted operator rebuilds the state from status.speculation alone."""
    job = typed(auto_manifest())
    new, _ = sp.next_status(job, None, window(HEALTHY), calibration(), now=NOW, weight_version=None)
    stored = t.SpeculationStatus.model_validate(json.loads(json.dumps(new.wire())))
    state = sp.controller_state(job, stored)
    assert state.schedule is not None and state.schedule.ranges == ((1, 256, 2),)
    assert state.since_s == NOW.timestamp() and state.smoothed == (0.9, 0.8)
    assert sp.controller_state(job, stored.model_copy(update={"since": None})).schedule is None


@pytest.mark.parametrize(
    ("body", "reason", "words"),
    [
        (None, "CalibrationMissing", ["ConfigMap team-a/tiny-calibration not found", "bench-rollout --calibrate"]),
        (config_map({"other": "{}"}), "CalibrationMissing", ["no key 'calibration.json'", "bench-rollout --calibrate"]),
        (config_map({"calibration.json": "{not json"}), "CalibrationInvalid", ["is not JSON"]),
        (
            config_map({"calibration.json": json.dumps({k: v for k, v in CALIBRATION.items() if k != "plain_step_s"})}),
            "CalibrationInvalid",
            ["calibration.plain_step_s: missing", "bench-rollout --calibrate"],
        ),
    ],
)
def test_a_calibration_that_cannot_be_used_names_the_configmap_key_and_fix(
    body: dict[str, Any] | None, reason: str, words: list[str]
) -> None:
    cal, problem = sp.calibration_from_config_map(body, t.CalibrationRef(config_map=CM), "team-a")
    assert cal is None and problem is not None and problem[0] == reason
    assert all(w in problem[1] for w in words), problem[1]


def test_a_valid_configmap_gives_the_calibration() -> None:
    cal, problem = sp.calibration_from_config_map(config_map(), t.CalibrationRef(config_map=CM), "team-a")
    assert problem is None and cal == calibration()


def test_status_keeps_speculation_from_the_store_or_the_stored_status() -> None:
    job = typed(auto_manifest())
    new, _ = sp.next_status(job, None, window(COLLAPSED), calibration(), now=NOW, weight_version=None)
    report = SpeculationReport(new, True, "Calibrated", "tiny on cpu-test")
    first = compute_status(job, None, Observed(), JobMetrics(speculation=report), NOW, generation=1)
    assert first.speculation == new
    assert [(c.type, c.status, c.reason) for c in first.conditions][-1] == (
        "SpeculationCalibrated",
        "True",
        "Calibrated",
    )
    resumed = compute_status(job, first, Observed(), JobMetrics(), NOW, generation=1)  # a restarted operator
    assert resumed.speculation == new and resumed.conditions == first.conditions
    fixed = typed(job_manifest())  # numSpeculativeTokens: 1
    dropped = compute_status(fixed, first, Observed(), JobMetrics(speculation=report), NOW, generation=2)
    assert dropped.speculation is None
    assert all(c.type != "SpeculationCalibrated" for c in dropped.conditions)


def test_a_failing_speculation_round_does_not_stop_the_others() -> None:
    done: list[tuple[str, str]] = []

    class Quiet:
        async def round(self, job: Any, pods: Any) -> None:
            return None

        def close(self) -> None:
            return None

    async def speculate(key: tuple[str, str]) -> None:
        if key[1] == "bad":
            raise RuntimeError("boom")
        done.append(key)

    loop = Periodic(
        scrape_seconds=1,
        resync_seconds=3600,
        jobs={("ns", "bad"): [{}], ("ns", "good"): [{}]},
        pods={},
        typed_job=lambda key: object(),
        make_scraper=lambda key: Quiet(),  # type: ignore[arg-type,return-value]
        resync=speculate,
        after_scrape=speculate,
        clock=iter([0.0, 1.0, 1.0]).__next__,  # start, the tick, the end of the scrape round
    )
    asyncio.run(loop.tick())
    assert done == [("ns", "good")]


# ----------------------------------------------------------------------------------------- operator


def _config() -> OperatorConfig:
    return OperatorConfig(
        standalone=True,
        metrics_port=0,
        health_port=0,
        resync_seconds=3600,
        scrape_seconds=0.1,
        status_min_interval_seconds=0.2,
    )


def _status(backend: KmockBackend, name: str) -> dict[str, Any]:
    return dict((backend.get(t.PLURAL, name) or {}).get("status") or {})


def _args(backend: KmockBackend, name: str) -> list[str]:
    dep = backend.get("deployments", f"{name}-rollout") or {}
    containers = (((dep.get("spec") or {}).get("template") or {}).get("spec") or {}).get("containers") or [{}]
    return list(containers[0].get("args") or [])


def _speculative_config(args: list[str]) -> dict[str, Any] | None:
    return json.loads(args[args.index("--speculative-config") + 1]) if "--speculative-config" in args else None


def _condition(st: dict[str, Any]) -> dict[str, Any] | None:
    return next((c for c in st.get("conditions", []) if c["type"] == "SpeculationCalibrated"), None)


def _events(backend: KmockBackend, reason: str) -> list[dict[str, Any]]:
    return [e for e in backend.list("events") if e.get("reason") == reason]


def test_collapsed_acceptance_switches_the_rollout_to_plain() -> None:
    with KmockBackend() as backend:
        backend.apply("configmaps", config_map())
        backend.apply(t.PLURAL, auto_manifest())
        with backend.operator(_config()) as op:
            wait_for(lambda: _args(backend, "demo"))
            assert _speculative_config(_args(backend, "demo")) == FIXED_K2  # the maximum k until a decision
            op.runtime.metrics.put_window(backend.namespace, "demo", window(COLLAPSED, generated=3000, batch=4))
            st = wait_for(lambda: (s := _status(backend, "demo")).get("speculation", {}).get("engine") == "plain" and s)
            wait_for(lambda: _speculative_config(_args(backend, "demo")) is None)
            event = wait_for(lambda: _events(backend, "SpeculationScheduleChanged"))[0]
        spec = st["speculation"]
        assert spec["schedule"] == [] and spec["description"] == "plain decoding" and spec["predictedGain"] == 1.0
        assert spec["measuredGain"] == 0.814 and spec["smoothedPerPosition"] == [0.02, 0.0]
        assert spec["calibration"]["model"] == "tiny" and spec["calibration"]["maxK"] == 2
        assert spec["lastDecision"]["predictedGainNew"] == 1.0 and "since" in spec
        assert event["type"] == "Normal" and event["message"].startswith("plain decoding; predicted gain 1.00x")
        assert "acceptance by position [0.02, 0.00]" in event["message"]
        cond = _condition(st)
        assert cond is not None and (cond["status"], cond["reason"]) == ("True", "Calibrated")
        rollout_json = json.loads((backend.get("configmaps", "demo-config") or {})["data"]["rollout.json"])
        assert "--speculative-config" not in rollout_json["args"]

        # A restarted operator resumes from status: no window yet, the plain engine stays, no new Event.
        with backend.operator(_config()):
            wait_for(
                lambda: (
                    "window ignored"
                    in (_status(backend, "demo").get("speculation") or {}).get("lastDecision", {}).get("reason", "")
                )
            )
            assert _status(backend, "demo")["speculation"]["since"] == spec["since"]
            assert _speculative_config(_args(backend, "demo")) is None
            assert len(_events(backend, "SpeculationScheduleChanged")) == 1


def test_a_missing_calibration_is_a_condition_and_a_warning_and_the_rollout_keeps_max_k() -> None:
    with KmockBackend() as backend:
        backend.apply(t.PLURAL, auto_manifest())
        with backend.operator(_config()) as op:
            op.runtime.metrics.put_window(backend.namespace, "demo", window(COLLAPSED))
            st = wait_for(lambda: (s := _status(backend, "demo")) and _condition(s) and s)
            event = wait_for(lambda: _events(backend, "CalibrationMissing"))[0]
            cond = _condition(st)
            assert cond is not None and (cond["status"], cond["reason"]) == ("False", "CalibrationMissing")
            assert "ConfigMap team-a/tiny-calibration not found" in cond["message"]
            assert "bench-rollout --calibrate" in cond["message"]
            assert event["type"] == "Warning" and event["message"] == cond["message"]
            assert st["speculation"]["engine"] == "speculative" and "since" not in st["speculation"]
            assert _speculative_config(_args(backend, "demo")) == FIXED_K2
            assert len(_events(backend, "CalibrationMissing")) == 1  # one Event per transition, not per round

            backend.apply("configmaps", config_map())  # the fix: the loop picks it up, nothing was lost
            wait_for(lambda: (_condition(_status(backend, "demo")) or {}).get("status") == "True")
            wait_for(lambda: _speculative_config(_args(backend, "demo")) is None)


def test_rlvr_changes_k_only_after_the_weight_version_advances() -> None:
    with KmockBackend() as backend:
        backend.apply("configmaps", config_map())
        backend.apply(t.PLURAL, rlvr_auto_manifest())
        with backend.operator(_config()) as op:
            store = op.runtime.metrics
            store.put_rl(backend.namespace, "rl", t.RLStatus(step=1, weight_version=1))
            store.put_window(backend.namespace, "rl", window(COLLAPSED))
            wait_for(
                lambda: (
                    (_status(backend, "rl").get("speculation") or {}).get("lastDecision", {}).get("weightVersion") == 1
                )
            )
            st = _status(backend, "rl")
            assert st["speculation"]["engine"] == "speculative" and "since" not in st["speculation"]
            assert "waits for a safe point" in st["speculation"]["lastDecision"]["reason"]
            assert _speculative_config(_args(backend, "rl")) == FIXED_K2
            assert not _events(backend, "SpeculationScheduleChanged")

            store.put_rl(backend.namespace, "rl", t.RLStatus(step=2, weight_version=2))
            st = wait_for(lambda: (s := _status(backend, "rl")).get("speculation", {}).get("engine") == "plain" and s)
            assert st["speculation"]["lastDecision"]["weightVersion"] == 2
            wait_for(lambda: _speculative_config(_args(backend, "rl")) is None)
            wait_for(lambda: _events(backend, "SpeculationScheduleChanged"))
