"""`mtpjob bench-rollout --calibrate`: which engines it times, how it turns vLLM's step counter
into seconds per step, and the ConfigMap it writes. (Starting vLLM is the e2e tier's and the
benchmark's job; here the server is a scripted stand-in for its HTTP surface.)"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest

from mtp_api import validation as v
from mtp_api.validation import load_job
from mtp_rollout.speculation.cost_model import Calibration
from mtpjob.local import calibrate as c

ROOT = Path(__file__).resolve().parents[2]
K8S_VERSION = "1.33"


def _spec_config(args: list[str]) -> Any:
    return json.loads(args[args.index("--speculative-config") + 1]) if "--speculative-config" in args else None


def test_engines_are_plain_zero_drafts_and_each_fixed_k() -> None:
    job = load_job(ROOT / "examples" / "tiny-rlvr.yaml")
    plans = c.engine_plans(job, "/m", 3, port=9000)
    assert [k for k, _ in plans] == [None, 0, 1, 2, 3]
    configs = [_spec_config(plan.args) for _, plan in plans]
    assert configs == [
        None,
        # k=0: an MTP engine that vLLM's batch-size schedule keeps at zero drafts
        {"method": "mtp", "num_speculative_tokens": 1, "num_speculative_tokens_per_batch_size": [[1, 1, 0]]},
        {"method": "mtp", "num_speculative_tokens": 1},
        {"method": "mtp", "num_speculative_tokens": 2},
        {"method": "mtp", "num_speculative_tokens": 3},
    ]
    # everything but the speculative config is the job's own command line
    base = plans[0][1].args
    for _, plan in plans[1:]:
        i = plan.args.index("--speculative-config")
        assert plan.args[:i] + plan.args[i + 2 :] == base


class _Server:
    """Each request adds ``steps_per_request`` engine steps and ``seconds`` to a fake clock."""

    def __init__(self, clock: list[float], steps_per_request: int, seconds: float) -> None:
        self.clock, self.steps, self.per_req, self.seconds = clock, 0, steps_per_request, seconds

    def complete(self, model: str, prompt: str, max_tokens: int, **_: Any) -> dict[str, Any]:
        self.steps += 1 if max_tokens == 8 else self.per_req
        if max_tokens != 8:
            self.clock[0] += self.seconds
        return {}

    def metrics_text(self) -> str:
        return (
            "# TYPE vllm:iteration_tokens_total histogram\n"
            f'vllm:iteration_tokens_total_count{{engine="0",model_name="m"}} {self.steps}\n'
            f'vllm:iteration_tokens_total_sum{{engine="0",model_name="m"}} {self.steps * 3}\n'
        )


def test_step_seconds_is_wall_time_over_vllm_steps_fastest_repeat(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [0.0]
    monkeypatch.setattr(c.time, "perf_counter", lambda: clock[0])
    # batch 4: 4 requests of 20 steps each (the server counts per request: 80 "steps") taking 0.5 s each -> 2 s
    server = _Server(clock, 20, 0.5)
    assert c.step_seconds(server, "m", ["a", "b"], batch=4, tokens=64, repeats=3) == pytest.approx(2.0 / 80)  # type: ignore[arg-type]
    # repeats disturbed by other processes: 0.5, 0.9, 0.7 s per request -> the fastest, 2.0 s / 80 steps
    slow = [0.5, 0.5, 0.5, 0.5, 0.9, 0.9, 0.9, 0.9, 0.7, 0.7, 0.7, 0.7]

    class _Varying(_Server):
        def complete(self, model: str, prompt: str, max_tokens: int, **kw: Any) -> dict[str, Any]:
            if max_tokens != 8:
                self.seconds = slow.pop(0)
            return super().complete(model, prompt, max_tokens, **kw)

    assert c.step_seconds(_Varying(clock, 20, 0.0), "m", ["a"], batch=4, tokens=64, repeats=3) == pytest.approx(  # type: ignore[arg-type]
        2.0 / 80
    )


def test_a_frozen_step_counter_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    server = _Server([0.0], 0, 0.1)
    with pytest.raises(RuntimeError, match="did not move"):
        c.step_seconds(server, "m", ["a"], batch=1, tokens=16, repeats=1)  # type: ignore[arg-type]


def test_written_calibration_round_trips_and_the_configmap_is_valid(tmp_path: Path) -> None:
    job = load_job(ROOT / "examples" / "tiny-rlvr.yaml")
    cal = Calibration(
        model="m", hardware="cpu", dtype="float32", max_k=1, batch_sizes=(1, 4),
        plain_step_s={1: 0.01, 4: 0.02}, spec_step_s={0: {1: 0.013, 4: 0.026}, 1: {1: 0.014, 4: 0.03}},
        created="2026-12-01T00:00:00+00:00",
    )  # fmt: skip
    beside, manifest = c.write_calibration(job, cal, tmp_path, tmp_path / "out")
    assert beside == tmp_path / "mtp_calibration.json" and Calibration.load(beside) == cal
    import yaml

    cm = yaml.safe_load(manifest.read_text())
    kubernetes_validate.validate(cm, K8S_VERSION, strict=True)
    assert cm["metadata"]["name"] == "tiny-rlvr-calibration"
    assert Calibration.from_json(json.loads(cm["data"]["calibration.json"])) == cal
    # the auto job names exactly that ConfigMap, and is a valid manifest
    auto = c.auto_job(job, 2)
    ref = auto.spec.rollout.speculative.calibration  # type: ignore[union-attr]
    assert ref is not None and (ref.config_map, ref.key) == (cm["metadata"]["name"], c.CONFIGMAP_KEY)
    assert v.validate_object(auto.wire()).ok
