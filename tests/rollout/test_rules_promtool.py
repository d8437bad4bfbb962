"""`promtool test rules` on the generated recording and alerting rules.

Cases: steady traffic (every figure against hand-computed values), counter resets in the
window, a missing position series, the drift alert firing after a drop and not firing for a
job that was always at its level, and the floor alert. The test file is built here from
``metric_names`` so that it exercises the names the rules really use.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from mtp_rollout.metrics import metric_names as mn
from mtp_rollout.observability import rules

PROMTOOL = shutil.which("promtool")
pytestmark = pytest.mark.skipif(PROMTOOL is None, reason="promtool not installed (apt-get install prometheus)")


def counters(job: str, *, drafts: str, draft_tokens: str, accepted: str, pos: dict[str, str], gen: str) -> list[dict]:
    lab = f'namespace="ns",model_name="{job}",engine="0",instance="{job}-0"'
    out = [
        {"series": f"{mn.VLLM_DRAFTS}{{{lab}}}", "values": drafts},
        {"series": f"{mn.VLLM_DRAFT_TOKENS}{{{lab}}}", "values": draft_tokens},
        {"series": f"{mn.VLLM_ACCEPTED}{{{lab}}}", "values": accepted},
        {"series": f"{mn.VLLM_GENERATION_TOKENS}{{{lab}}}", "values": gen},
    ]
    out += [{"series": f'{mn.VLLM_ACCEPTED_PER_POS}{{{lab},position="{p}"}}', "values": v} for p, v in pos.items()]
    return out


def sample(record: str, job: str, value: float, **extra: str) -> dict[str, Any]:
    labels = {"namespace": "ns", "model_name": job, **extra}
    # round() drops the metric name, so ``record`` only documents which series is meant.
    return {"labels": "{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}", "value": value}


def recording_case() -> dict[str, Any]:
    # Per minute: 10 drafts of k=2 (20 draft tokens), 12 accepted (8 at position 0, 4 at 1), 32 generated.
    steady = counters(
        "steady",
        drafts="0+10x30",
        draft_tokens="0+20x30",
        accepted="0+12x30",
        pos={"0": "0+8x30", "1": "0+4x30"},
        gen="0+32x30",
    )
    # The same traffic, but the pod restarts at minute 10 (counters restart at a proportional value).
    reset = counters(
        "reset",
        drafts="0+10x9 5+10x20",
        draft_tokens="0+20x9 10+20x20",
        accepted="0+12x9 6+12x20",
        pos={"0": "0+8x9 4+8x20", "1": "0+4x9 2+4x20"},
        gen="0+32x9 16+32x20",
    )
    # Position 1 was never exported for this pod.
    missing = counters(
        "missing", drafts="0+10x30", draft_tokens="0+20x30", accepted="0+12x30", pos={"0": "0+8x30"}, gen="0+32x30"
    )

    def check(record: str, job: str, *expected: dict[str, Any]) -> dict[str, Any]:
        # round() to 1e-6: Prometheus' float arithmetic gives 0.7999999999999999 for 0.8.
        return {
            "expr": f'round({record}{{model_name="{job}"}}, 0.000001)',
            "eval_time": "12m",
            "exp_samples": list(expected),
        }

    tests: list[dict[str, Any]] = []
    for job in ("steady", "reset"):
        tests += [
            check(mn.RULE_ACCEPTANCE_RATE, job, sample(mn.RULE_ACCEPTANCE_RATE, job, 0.6)),
            check(mn.RULE_MEAN_ACCEPTANCE_LENGTH, job, sample(mn.RULE_MEAN_ACCEPTANCE_LENGTH, job, 2.2)),
            check(mn.RULE_NUM_SPECULATIVE_TOKENS, job, sample(mn.RULE_NUM_SPECULATIVE_TOKENS, job, 2)),
            check(
                mn.RULE_POSITION_ACCEPTANCE_RATE,
                job,
                sample(mn.RULE_POSITION_ACCEPTANCE_RATE, job, 0.8, position="0"),
                sample(mn.RULE_POSITION_ACCEPTANCE_RATE, job, 0.4, position="1"),
            ),
            check(mn.RULE_EXPECTED_TOKENS_PER_FORWARD, job, sample(mn.RULE_EXPECTED_TOKENS_PER_FORWARD, job, 1.96)),
            check(mn.RULE_SPEEDUP_BOUND, job, sample(mn.RULE_SPEEDUP_BOUND, job, 2.2)),
        ]
    tests += [
        check(
            mn.RULE_POSITION_ACCEPTANCE_RATE,
            "missing",
            sample(mn.RULE_POSITION_ACCEPTANCE_RATE, "missing", 0.8, position="0"),
        ),
        check(mn.RULE_ACCEPTANCE_RATE, "missing", sample(mn.RULE_ACCEPTANCE_RATE, "missing", 0.6)),
        check(
            mn.RULE_GENERATION_TOKENS_PER_SECOND,
            "steady",
            sample(mn.RULE_GENERATION_TOKENS_PER_SECOND, "steady", 0.533333),
        ),
        # An idle window (no drafts) gives no acceptance sample, not NaN.
        check(mn.RULE_ACCEPTANCE_RATE, "idle"),
    ]
    idle = counters("idle", drafts="0x30", draft_tokens="0x30", accepted="0x30", pos={"0": "0x30"}, gen="0+5x30")
    return {"interval": "1m", "input_series": steady + reset + missing + idle, "promql_expr_test": tests}


def alert_case() -> dict[str, Any]:
    # "drift": 80% for 90 minutes, then 40%. "level": always 40% (its own level: no drift, above the floor).
    # "low": always 20%.
    drift = counters(
        "drift",
        drafts="0+10x150",
        draft_tokens="0+20x150",
        accepted="0+16x90 1448+8x59",
        pos={"0": "0+16x90 1448+8x59"},
        gen="0+30x150",
    )
    level = counters(
        "level", drafts="0+10x150", draft_tokens="0+20x150", accepted="0+8x150", pos={"0": "0+8x150"}, gen="0+30x150"
    )
    low = counters(
        "low", drafts="0+10x150", draft_tokens="0+20x150", accepted="0+4x150", pos={"0": "0+4x150"}, gen="0+30x150"
    )
    drift_alert = {
        "exp_labels": {"severity": "warning", "namespace": "ns", "model_name": "drift"},
        "exp_annotations": annotations("MTPAcceptanceDrift", "drift", "40%"),
    }
    low_alert = {
        "exp_labels": {"severity": "warning", "namespace": "ns", "model_name": "low"},
        "exp_annotations": annotations("MTPAcceptanceLow", "low", "20%"),
    }
    return {
        "interval": "1m",
        "input_series": drift + level + low,
        "alert_rule_test": [
            {"eval_time": "85m", "alertname": "MTPAcceptanceDrift", "exp_alerts": []},
            {"eval_time": "98m", "alertname": "MTPAcceptanceDrift", "exp_alerts": []},  # pending, not yet 10m
            {"eval_time": "120m", "alertname": "MTPAcceptanceDrift", "exp_alerts": [drift_alert]},
            {"eval_time": "120m", "alertname": "MTPAcceptanceLow", "exp_alerts": [low_alert]},
            {"eval_time": "10m", "alertname": "MTPAcceptanceLow", "exp_alerts": []},
        ],
    }


def annotations(alert: str, job: str, value: str) -> dict[str, str]:
    (rule,) = [r for r in rules.alerting_rules() if r["alert"] == alert]
    out = {}
    for k, v in rule["annotations"].items():
        out[k] = (
            v.replace("{{ $labels.namespace }}", "ns")
            .replace("{{ $labels.model_name }}", job)
            .replace("{{ $value | humanizePercentage }}", value)
        )
    return out


def run_promtool(tmp_path: Path, case: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    rules_file = tmp_path / "rules.yaml"
    rules_file.write_text(rules.render())
    test_file = tmp_path / "test.yaml"
    test_file.write_text(
        yaml.safe_dump({"rule_files": [str(rules_file)], "evaluation_interval": "1m", "tests": [case]})
    )
    assert PROMTOOL is not None
    return subprocess.run([PROMTOOL, "test", "rules", str(test_file)], capture_output=True, text=True, timeout=120)


def test_chart_rules_pass_promtool_check():
    assert PROMTOOL is not None
    out = subprocess.run(
        [PROMTOOL, "check", "rules", str(rules.RULES_PATH)], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_chart_rules_file_is_not_stale():
    assert rules.RULES_PATH.read_text() == rules.render(), "run: python -m mtp_rollout.observability.rules"


def test_recording_rules(tmp_path):
    out = run_promtool(tmp_path, recording_case())
    assert out.returncode == 0, out.stdout + out.stderr


def test_alerts(tmp_path):
    out = run_promtool(tmp_path, alert_case())
    assert out.returncode == 0, out.stdout + out.stderr


def test_promtool_catches_a_wrong_expectation(tmp_path):
    """The harness can fail: a wrong expected value makes promtool exit non-zero."""
    case = recording_case()
    case["promql_expr_test"][0]["exp_samples"][0]["value"] = 0.61
    assert run_promtool(tmp_path, case).returncode != 0
