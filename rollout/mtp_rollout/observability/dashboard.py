"""The "MTP acceptance" Grafana dashboard, as code (grafana-foundation-sdk).

Why code: every query is built from ``metric_names`` (and the trainer's and operator's exported
names), so a renamed metric breaks a test instead of a panel. ``python -m mtp_rollout.observability.dashboard``
rewrites charts/mtp-operator/dashboards/mtp-acceptance.json, which the chart ships in a
ConfigMap labelled ``grafana_dashboard: "1"``; a test fails when the file is stale, another
runs every query against a real Prometheus and requires data, and another type-checks the JSON
against Grafana's own schema (npm ``@grafana/schema``).

Rows: acceptance from the operator's collector (``mtp_rollout_*``), the same from Prometheus
recording rules over raw vLLM counters (``mtp:*``), the trainer (``mtp_trainer_*``), RLVR (trainer
rank 0's ``mtp_trainer_rl_*`` gauges, one value per RL step), and job states (``mtptrainingjob_*``).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from grafana_foundation_sdk.builders import common as cb
from grafana_foundation_sdk.builders import dashboard as db
from grafana_foundation_sdk.builders import prometheus, stat, statetimeline, timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.common import StackingMode
from grafana_foundation_sdk.models.dashboard import DataSourceRef, VariableRefresh

from mtp_api import contracts as c
from mtp_rollout.metrics import metric_names as mn

DASHBOARD_PATH = Path(__file__).resolve().parents[3] / "charts" / "mtp-operator" / "dashboards" / "mtp-acceptance.json"
UID = "mtp-acceptance"
DS = DataSourceRef(type_val="prometheus", uid="${datasource}")
SEL = 'namespace=~"$namespace", job=~"$job"'
RULE_SEL = 'namespace=~"$namespace", model_name=~"$job"'
OP_SEL = 'namespace=~"$namespace", name=~"$job"'

# Names exported by the trainer (mtp_api.contracts) and the operator (operator/mtp_operator/metrics.py).
TRAINER_LM_LOSS = c.TRAINER_LM_LOSS
TRAINER_MTP_LOSS = c.TRAINER_MTP_LOSS
TRAINER_MTP_AGREEMENT = c.TRAINER_MTP_AGREEMENT
TRAINER_STEP = c.TRAINER_STEP
TRAINER_TOKENS_PER_SECOND = c.TRAINER_TOKENS_PER_SECOND
RL_REWARD_MEAN = c.RL_REWARD_MEAN
RL_ACCURACY = c.RL_ACCURACY
RL_ACCEPTANCE_RATE = c.RL_ACCEPTANCE_RATE
RL_MEAN_ACCEPTANCE_LENGTH = c.RL_MEAN_ACCEPTANCE_LENGTH
RL_KL = c.RL_KL
RL_ENTROPY = c.RL_ENTROPY
RL_RESPONSE_LENGTH = c.RL_RESPONSE_LENGTH
RL_PHASE_SECONDS = c.RL_PHASE_SECONDS
RL_WEIGHT_VERSION = c.RL_WEIGHT_VERSION
RL_GENERATION_TOKENS_PER_SECOND = c.RL_GENERATION_TOKENS_PER_SECOND
OPERATOR_JOB_INFO = "mtptrainingjob_info"
OPERATOR_JOB_CONDITION = "mtptrainingjob_condition"
OPERATOR_MEASURED_GAIN = "mtptrainingjob_speculation_measured_gain"
OPERATOR_PREDICTED_GAIN = "mtptrainingjob_speculation_predicted_gain"
OPERATOR_MAX_K = "mtptrainingjob_speculation_max_k"


def _query(expr: str, legend: str, ref: str = "A") -> prometheus.Dataquery:
    return prometheus.Dataquery().expr(expr).legend_format(legend).ref_id(ref).range()


def _series(
    title: str, description: str, queries: list[prometheus.Dataquery], unit: str = "short", **limits: float
) -> timeseries.Panel:
    panel = timeseries.Panel().title(title).description(description).datasource(DS).unit(unit).height(8).span(12)
    if "min" in limits:
        panel = panel.min(limits["min"])
    if "max" in limits:
        panel = panel.max(limits["max"])
    for q in queries:
        panel = panel.with_target(q)
    return panel


def _variables(d: db.Dashboard) -> db.Dashboard:
    d = d.with_variable(db.DatasourceVariable("datasource").label("Data source").type("prometheus"))
    for name, label, query in (
        ("namespace", "Namespace", f"label_values({mn.VLLM_DRAFTS}, namespace)"),
        ("job", "Job", f"label_values({mn.VLLM_DRAFTS}, model_name)"),
    ):
        d = d.with_variable(
            db.QueryVariable(name)
            .label(label)
            .datasource(DS)
            .query(query)
            .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED)
            .include_all(True)
            .all_value(".*")
            .multi(True)
        )
    return d


def build() -> dict[str, Any]:
    job = "{{namespace}}/{{job}}"
    rule_job = "{{namespace}}/{{model_name}}"
    d = (
        db.Dashboard("MTP acceptance")
        .uid(UID)
        .tags(["mtp", "vllm", "speculative-decoding"])
        .refresh("30s")
        .time("now-1h", "now")
        .timezone("browser")
    )
    d = _variables(d)
    d = _collector_row(d, job)
    d = _rules_row(d, rule_job)
    d = _trainer_row(d, job)
    d = _rlvr_row(d, job)
    d = _jobs_row(d)
    return _schema_clean(json.loads(json.dumps(d.build(), cls=JSONEncoder)))


def _collector_row(d: db.Dashboard, job: str) -> db.Dashboard:
    """The operator's collector gauges (``mtp_rollout_*``), per job."""
    d = d.with_row(db.Row("Speculative decoding (operator collector)"))
    d = _collector_acceptance_panels(d, job)
    return _collector_speed_panels(d, job)


def _collector_acceptance_panels(d: db.Dashboard, job: str) -> db.Dashboard:
    """Acceptance rate, mean acceptance length and per-position acceptance over the collector window."""
    d = d.with_panel(
        _series(
            "Acceptance rate",
            "Accepted / drafted tokens over the collector window. Below ~30% speculation costs more than it saves.",
            [_query(f"{mn.ACCEPTANCE_RATE}{{{SEL}}}", job)],
            unit="percentunit",
            min=0,
            max=1,
        )
    )
    d = d.with_panel(
        _series(
            "Mean acceptance length",
            "Tokens emitted per target forward: 1 + accepted / drafts (the 1 is the bonus token). At most k + 1.",
            [
                _query(f"{mn.MEAN_ACCEPTANCE_LENGTH}{{{SEL}}}", job),
                _query(f"{mn.NUM_SPECULATIVE_TOKENS}{{{SEL}}} + 1", job + " k+1 (ceiling)", "B"),
            ],
            min=1,
        )
    )
    d = d.with_panel(
        _series(
            "Per-position acceptance",
            "Accepted at draft position i / drafts (unconditional): falls with i; sums to length - 1.",
            [_query(f"{mn.POSITION_ACCEPTANCE_RATE}{{{SEL}}}", job + " pos {{position}}")],
            unit="percentunit",
            min=0,
            max=1,
        )
    )
    return d


def _collector_speed_panels(d: db.Dashboard, job: str) -> db.Dashboard:
    """Throughput against the speedup bound, the i.i.d. expectation, and the scrape's health."""
    d = d.with_panel(
        _series(
            "Throughput and the speedup bound",
            "Generated, drafted and accepted tokens/s; the bound is mean length / (k·c + 1) with c = 0, "
            "and the i.i.d. expectation (1-α^(k+1))/(1-α). Measured speedup: `mtpjob bench-rollout`.",
            [
                _query(f"{mn.GENERATION_TOKENS_PER_SECOND}{{{SEL}}}", job + " generated tok/s"),
                _query(f"{mn.DRAFT_TOKENS_PER_SECOND}{{{SEL}}}", job + " drafted tok/s", "B"),
                _query(f"{mn.ACCEPTED_TOKENS_PER_SECOND}{{{SEL}}}", job + " accepted tok/s", "C"),
            ],
        )
    )
    d = d.with_panel(
        _series(
            "Speedup bound vs i.i.d. expectation",
            "Tokens per target forward measured (bound) and expected for i.i.d. acceptance at the same α and k.",
            [
                _query(f"{mn.SPEEDUP_BOUND}{{{SEL}}}", job + " bound"),
                _query(f"{mn.EXPECTED_TOKENS_PER_FORWARD}{{{SEL}}}", job + " i.i.d.", "B"),
            ],
            min=1,
        )
    )
    d = d.with_panel(
        _series(
            "auto k: measured gain, predicted gain and the bound",
            "numSpeculativeTokens: auto (docs/speculation.md). Measured: generated tokens/s over the calibrated "
            "plain-decoding rate at the same batch size; predicted: the cost model's gain of the running schedule; "
            "the bound assumes a speculative step costs a plain one. Below 1 speculation is slower than plain.",
            [
                _query(f"{OPERATOR_MEASURED_GAIN}{{{OP_SEL}}}", "{{name}} measured gain"),
                _query(f"{OPERATOR_PREDICTED_GAIN}{{{OP_SEL}}}", "{{name}} predicted gain", "B"),
                _query(f"{mn.SPEEDUP_BOUND}{{{SEL}}}", job + " bound", "C"),
            ],
        )
    )
    d = d.with_panel(
        _series(
            "auto k: largest k of the running schedule",
            "0: the rollout decodes without speculation (the plain engine). Changes are Events "
            "SpeculationScheduleChanged.",
            [_query(f"{OPERATOR_MAX_K}{{{OP_SEL}}}", "{{name}} k")],
            min=0,
        )
    )
    d = d.with_panel(
        stat.Panel()
        .title("Rollout pods scraped")
        .description("Pods that answered the collector's last scrape, and scrape failures per minute.")
        .datasource(DS)
        .height(8)
        .span(12)
        .with_target(_query(f"{mn.PODS_SCRAPED}{{{SEL}}}", job + " pods"))
        .with_target(_query(f"rate({mn.SCRAPE_ERRORS}{{{SEL}}}[5m]) * 60", job + " failures/min", "B"))
    )
    return d


def _rules_row(d: db.Dashboard, rule_job: str) -> db.Dashboard:
    """The same figures from the recording rules over vLLM's counters, per served model."""
    d = d.with_row(db.Row("Speculative decoding (Prometheus recording rules on vLLM counters)"))
    d = d.with_panel(
        _series(
            "Acceptance rate (rules)",
            "mtp:spec_decode_acceptance_rate:rate5m: the same definition as the collector, computed by Prometheus.",
            [
                _query(f"{mn.RULE_ACCEPTANCE_RATE}{{{RULE_SEL}}}", rule_job),
                _query(f"{mn.RULE_MEAN_ACCEPTANCE_LENGTH}{{{RULE_SEL}}} - 1", rule_job + " length - 1", "B"),
            ],
            unit="short",
            min=0,
        )
    )
    d = d.with_panel(
        _series(
            "Per-position acceptance (rules)",
            "mtp:spec_decode_position_acceptance_rate:rate5m per draft position.",
            [_query(f"{mn.RULE_POSITION_ACCEPTANCE_RATE}{{{RULE_SEL}}}", rule_job + " pos {{position}}")],
            unit="percentunit",
            min=0,
            max=1,
        )
    )
    d = d.with_panel(
        _series(
            "Generation throughput vs bound (rules)",
            "Generated tokens/s, and the speedup bound and i.i.d. expectation from the recording rules.",
            [
                _query(f"{mn.RULE_GENERATION_TOKENS_PER_SECOND}{{{RULE_SEL}}}", rule_job + " tok/s"),
                _query(f"{mn.RULE_SPEEDUP_BOUND}{{{RULE_SEL}}}", rule_job + " bound", "B"),
                _query(f"{mn.RULE_EXPECTED_TOKENS_PER_FORWARD}{{{RULE_SEL}}}", rule_job + " i.i.d.", "C"),
                _query(f"{mn.RULE_DRAFT_TOKENS_PER_SECOND}{{{RULE_SEL}}}", rule_job + " drafted tok/s", "D"),
                _query(f"{mn.RULE_ACCEPTED_TOKENS_PER_SECOND}{{{RULE_SEL}}}", rule_job + " accepted tok/s", "E"),
            ],
        )
    )
    return d


def _trainer_row(d: db.Dashboard, job: str) -> db.Dashboard:
    """Rank 0's ``mtp_trainer_*`` gauges."""
    d = d.with_row(db.Row("Trainer"))
    d = d.with_panel(
        _series(
            "LM loss",
            "Next-token cross-entropy, train and validation.",
            [_query(f"{TRAINER_LM_LOSS}{{{SEL}}}", job + " {{split}}")],
        )
    )
    d = d.with_panel(
        _series(
            "MTP loss per depth",
            "Cross-entropy of each MTP depth (depth 1 predicts token t+2).",
            [_query(f"{TRAINER_MTP_LOSS}{{{SEL}}}", job + " depth {{depth}} {{split}}")],
        )
    )
    d = d.with_panel(
        _series(
            "MTP agreement per depth",
            "Top-1 agreement of each MTP depth with the actual token: the offline proxy of rollout acceptance.",
            [_query(f"{TRAINER_MTP_AGREEMENT}{{{SEL}}}", job + " depth {{depth}} {{split}}")],
            unit="percentunit",
            min=0,
            max=1,
        )
    )
    d = d.with_panel(
        _series(
            "Training progress",
            "Optimizer step and training tokens per second.",
            [
                _query(f"{TRAINER_STEP}{{{SEL}}}", job + " step"),
                _query(f"{TRAINER_TOKENS_PER_SECOND}{{{SEL}}}", job + " tok/s", "B"),
            ],
        )
    )
    return d


def _jobs_row(d: db.Dashboard) -> db.Dashboard:
    """Job state and conditions from the operator."""
    d = d.with_row(db.Row("Jobs"))
    d = d.with_panel(
        statetimeline.Panel()
        .title("Job state")
        .description("MTPTrainingJob state from the operator (mtptrainingjob_info).")
        .datasource(DS)
        .height(6)
        .span(12)
        .with_target(_query(f"{OPERATOR_JOB_INFO}{{{OP_SEL}}}", "{{namespace}}/{{name}} {{state}}"))
    )
    d = d.with_panel(
        statetimeline.Panel()
        .title("Job conditions")
        .description("1 when the condition is True (mtptrainingjob_condition).")
        .datasource(DS)
        .height(6)
        .span(12)
        .with_target(_query(f"{OPERATOR_JOB_CONDITION}{{{OP_SEL}}}", "{{namespace}}/{{name}} {{condition}}"))
    )
    return d


def _rlvr_row(d: db.Dashboard, job: str) -> db.Dashboard:
    """One value per RL step, set by trainer rank 0 when the step ends; empty for SFT jobs."""
    d = d.with_row(db.Row("RLVR"))
    d = _rlvr_outcome_panels(d, job)
    return _rlvr_cost_panels(d, job)


def _rlvr_outcome_panels(d: db.Dashboard, job: str) -> db.Dashboard:
    """What each RL step achieved: reward, accuracy, and the drafter's acceptance during its generation."""
    d = d.with_panel(
        _series(
            "Reward mean",
            "Mean reward of the step's samples (train) and of the held-out prompts decoded greedily (validation).",
            [_query(f"{RL_REWARD_MEAN}{{{SEL}}}", job + " {{split}}")],
        )
    )
    d = d.with_panel(
        _series(
            "Accuracy",
            "Share of answers the verifier accepted: the step's samples (train) and held-out prompts (validation).",
            [_query(f"{RL_ACCURACY}{{{SEL}}}", job + " {{split}}")],
            unit="percentunit",
            min=0,
            max=1,
        )
    )
    d = d.with_panel(
        _series(
            "Acceptance rate per RL step",
            "MTP draft acceptance during the step's generation phase (vLLM counter deltas), so it belongs to "
            "the samples the step trained on. A drafter left behind by the policy shows here first.",
            [_query(f"{RL_ACCEPTANCE_RATE}{{{SEL}}}", job)],
            unit="percentunit",
            min=0,
            max=1,
        )
    )
    d = d.with_panel(
        _series(
            "Mean acceptance length per RL step",
            "Tokens per target forward during the step's generation, 1 + accepted / drafts; at most k + 1.",
            [_query(f"{RL_MEAN_ACCEPTANCE_LENGTH}{{{SEL}}}", job)],
            min=1,
        )
    )
    return d


def _rlvr_cost_panels(d: db.Dashboard, job: str) -> db.Dashboard:
    """How each RL step ran: KL and entropy, time by phase, the weight version, generation speed."""
    d = d.with_panel(
        _series(
            "KL",
            "k3 estimate of the KL to the policy that generated the samples (old) and to the initial policy (ref).",
            [_query(f"{RL_KL}{{{SEL}}}", job + " {{kind}}")],
            min=0,
        )
    )
    d = d.with_panel(
        _series(
            "Entropy and response length",
            "Mean per-token policy entropy on the responses, and mean response length in tokens.",
            [
                _query(f"{RL_ENTROPY}{{{SEL}}}", job + " entropy"),
                _query(f"{RL_RESPONSE_LENGTH}{{{SEL}}}", job + " response tokens", "B"),
            ],
            min=0,
        )
    )
    d = d.with_panel(
        _series(
            "Step time by phase",
            "Wall time of the last step's phases, stacked: generate (rollout), reward, train, sync (weights "
            "into every rollout replica).",
            [_query(f"{RL_PHASE_SECONDS}{{{SEL}}}", job + " {{phase}}")],
            unit="s",
            min=0,
        )
        .stacking(cb.StackingConfig().mode(StackingMode.NORMAL))
        .fill_opacity(30)
    )
    d = d.with_panel(
        _series(
            "RL step and weight version",
            "The last RL step and the weight version the rollout serves after its sync; they move together, "
            "a gap means the sync is failing.",
            [
                _query(f"{TRAINER_STEP}{{{SEL}}}", job + " step"),
                _query(f"{RL_WEIGHT_VERSION}{{{SEL}}}", job + " weight version", "B"),
            ],
            min=0,
        )
    )
    d = d.with_panel(
        _series(
            "Generation throughput in the loop",
            "Generated tokens per second of the step's generate phase, over every rollout replica.",
            [_query(f"{RL_GENERATION_TOKENS_PER_SECOND}{{{SEL}}}", job + " tok/s")],
            min=0,
        )
    )
    return d


def _drop_nulls(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _drop_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_drop_nulls(v) for v in value]
    return value


def _schema_clean(dash: dict[str, Any]) -> dict[str, Any]:
    """Two quirks of grafana-foundation-sdk 10.1's encoder that Grafana's schema rejects: unset
    fields encoded as ``null`` (e.g. panel ``options``), and the interval-variable fields
    ``auto``/``auto_count``/``auto_min`` (and a placeholder ``id``) written on every variable,
    and the dashboard ``style`` field that newer schemas dropped."""
    out: dict[str, Any] = _drop_nulls(dash)
    out.pop("style", None)  # removed from the schema after Grafana 10
    for var in out.get("templating", {}).get("list", []):
        if var.get("type") != "interval":
            for key in ("auto", "auto_count", "auto_min", "id"):
                var.pop(key, None)
    return out


def render() -> str:
    return json.dumps(build(), indent=2, sort_keys=True) + "\n"


def panel_queries(dash: dict[str, Any]) -> list[tuple[str, str]]:
    """(panel title, expr) for every query of every panel, rows included."""
    out = []
    panels = list(dash.get("panels", []))
    while panels:
        p = panels.pop(0)
        panels.extend(p.get("panels", []))
        for target in p.get("targets", []):
            out.append((p.get("title", ""), target["expr"]))
    return out


if __name__ == "__main__":
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else DASHBOARD_PATH
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render())
    print(f"wrote {out}")
