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
    """Scripted vLLM: each timed request generates ``tokens`` tokens in ``seconds`` on a fake clock,
    drafting ``drafts`` times and getting ``accepted`` draft tokens accepted (vLLM's counters)."""

    def __init__(self, clock: list[float], *, drafts: int, accepted: int, seconds: list[float]) -> None:
        self.clock, self.per_drafts, self.per_accepted, self.seconds = clock, drafts, accepted, seconds
        self.drafts = self.accepted = 0

    def complete(self, model: str, prompt: str, max_tokens: int, **_: Any) -> dict[str, Any]:
        if max_tokens == 8:  # warm-up: untimed, uncounted here
            return {"usage": {"completion_tokens": 8}}
        self.clock[0] += self.seconds.pop(0)
        self.drafts += self.per_drafts
        self.accepted += self.per_accepted
        return {"usage": {"completion_tokens": max_tokens}}

    def metrics_text(self) -> str:
        lines = [
            f'vllm:spec_decode_num_drafts_total{{engine="0",model_name="m"}} {self.drafts}',
            f'vllm:spec_decode_num_draft_tokens_total{{engine="0",model_name="m"}} {2 * self.drafts}',
            f'vllm:spec_decode_num_accepted_tokens_total{{engine="0",model_name="m"}} {self.accepted}',
        ]
        return "\n".join(lines) + "\n"


def test_effective_step_time_of_a_speculative_engine(monkeypatch: pytest.MonkeyPatch) -> None:
    """By hand: batch 4, 64 tokens each; per request 32 drafts with 32 accepted tokens, so E = 1 + 32/32
    = 2 tokens per step and 64 / 2 = 32 steps per request. Repeats take 4 x 0.4, 4 x 0.25, 4 x 0.3 s
    (requests run one after another on the fake clock): wall 1.6, 1.0, 1.2 s. Effective step time =
    b x E x wall / tokens = 4 x 2 x wall / 256 -> 0.05, 0.03125, 0.0375; the fastest: 0.03125 s."""
    clock = [0.0]
    monkeypatch.setattr(c.time, "perf_counter", lambda: clock[0])
    seconds = [0.4] * 4 + [0.25] * 4 + [0.3] * 4
    server = _Server(clock, drafts=32, accepted=32, seconds=seconds)
    got = c.step_seconds(server, "m", ["a", "b"], batch=4, tokens=64, repeats=3)  # type: ignore[arg-type]
    assert got == pytest.approx(0.03125)


def test_effective_step_time_without_drafts_is_wall_over_tokens_per_request(monkeypatch: pytest.MonkeyPatch) -> None:
    """A plain (or k=0) engine: E = 1, so the step time is b x wall / tokens = wall / 64 at batch 2
    with 64 tokens each: 2 x 0.5 s wall -> 1.0 x 2 / 128 = 0.015625 s."""
    clock = [0.0]
    monkeypatch.setattr(c.time, "perf_counter", lambda: clock[0])
    server = _Server(clock, drafts=0, accepted=0, seconds=[0.5, 0.5])
    got = c.step_seconds(server, "m", ["a"], batch=2, tokens=64, repeats=1)  # type: ignore[arg-type]
    assert got == pytest.approx(0.015625)


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
