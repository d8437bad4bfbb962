"""The Helm chart: lint, render with several values files, validate every object, and check the pieces
that must agree with the rest of the repo (CRD, operator settings, metrics, rules)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from mtp_api import contracts
from mtp_api.crd import crd_yaml
from mtp_operator.settings import PREFIX, OperatorConfig
from tests.chart.conftest import CHART, REPO, VALUES, render

K8S_VERSION = "1.33"
CUSTOM_KINDS = {"ServiceMonitor", "PodMonitor", "PrometheusRule", "ClusterKopfPeering", "KopfPeering"}


def by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def test_helm_lint(helm: Path) -> None:
    for values in VALUES:
        subprocess.run([str(helm), "lint", "--strict", str(CHART), "-f", str(values)], check=True, capture_output=True)


def test_schema_rejects_unknown_and_wrong_values(helm: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    for text in ("replicaCuont: 2\n", "operator: {logLevel: LOUD}\n", "watchNamespaces: [Team_A]\n"):
        bad.write_text(text)
        out = subprocess.run([str(helm), "template", "x", str(CHART), "-f", str(bad)], capture_output=True, text=True)
        assert out.returncode != 0 and "values don't meet the specifications of the schema" in out.stderr


@pytest.mark.parametrize("values", VALUES, ids=lambda p: p.stem)
def test_every_rendered_object_is_valid(helm: Path, values: Path) -> None:
    docs = render(helm, values)
    crds = {d["spec"]["names"]["kind"]: d for d in by_kind(docs, "CustomResourceDefinition")}
    for doc in docs:
        if doc["kind"] in CUSTOM_KINDS:
            if doc["kind"] in crds:
                schema = crds[doc["kind"]]["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
                jsonschema.validate(doc, schema)
            assert doc["apiVersion"] in ("monitoring.coreos.com/v1", "kopf.dev/v1")
            continue
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_crd_in_chart_is_the_generated_one() -> None:
    name = "mtptrainingjobs.mtp.io.yaml"
    assert (CHART / "crds" / name).read_text() == (REPO / "crds" / name).read_text() == crd_yaml()


def test_operator_env_is_exactly_the_typed_settings(helm: Path) -> None:
    """Every MTP_OPERATOR_* the chart sets is a settings field, parsed without error."""
    for values in VALUES:
        dep = by_kind(render(helm, values), "Deployment")[0]
        env = {e["name"]: e.get("value") for e in dep["spec"]["template"]["spec"]["containers"][0]["env"]}
        ours = {k: v for k, v in env.items() if k.startswith(PREFIX)}
        assert {k[len(PREFIX) :].lower() for k in ours} <= set(OperatorConfig.model_fields)
        config = OperatorConfig.from_env(ours)
        assert config.standalone is False and config.peering_name == "mtp-operator"
        assert "POD_ID" in env  # Kopf's peering identity


def test_default_install_is_cluster_wide_with_cluster_peering(helm: Path) -> None:
    docs = render(helm)
    assert [d["metadata"]["name"] for d in by_kind(docs, "ClusterKopfPeering")] == ["mtp-operator"]
    assert not by_kind(docs, "Role")
    role = by_kind(docs, "ClusterRole")[0]
    verbs = {(g, r): set(rule["verbs"]) for rule in role["rules"] for g in rule["apiGroups"] for r in rule["resources"]}
    assert verbs[("apps", "statefulsets")] == {"get", "list", "watch", "create", "patch", "delete"}  # pruning
    assert verbs[("", "pods")] == {"get", "list", "watch", "delete"}  # group restarts, force-deleting lost pods
    assert "patch" in verbs[("", "configmaps")] and "patch" in verbs[("apps", "deployments")]  # server-side apply
    assert verbs[("mtp.io", "mtptrainingjobs/finalizers")] == {"update"}  # blockOwnerDeletion
    assert verbs[("policy", "poddisruptionbudgets")] == {"get", "list", "watch", "create", "patch", "delete"}
    assert verbs[("", "events")] == {"create"}  # restarts, failures and success are Events
    assert {"get", "list", "watch"} <= verbs[("", "configmaps")]  # auto k reads the calibration ConfigMap
    assert ("", "secrets") not in verbs
    dep = by_kind(docs, "Deployment")[0]
    assert dep["spec"]["template"]["spec"]["containers"][0]["image"] == "ghcr.io/mtp-io/mtp-operator:0.1.0"
    assert {d["kind"] for d in docs} >= {"ServiceAccount", "ClusterRoleBinding", "Service", "ConfigMap"}
    assert not by_kind(docs, "ServiceMonitor") and not by_kind(docs, "PrometheusRule")


def test_namespaced_install_uses_roles_and_namespaced_peering(helm: Path) -> None:
    docs = render(helm, CHART.parent.parent / "tests" / "chart" / "values" / "namespaced.yaml")
    assert sorted(r["metadata"]["namespace"] for r in by_kind(docs, "Role")) == ["team-a", "team-b"]
    assert sorted(p["metadata"]["namespace"] for p in by_kind(docs, "KopfPeering")) == ["team-a", "team-b"]
    cluster_role = by_kind(docs, "ClusterRole")[0]
    assert [r["resources"] for r in cluster_role["rules"]] == [["customresourcedefinitions"]]
    assert not by_kind(docs, "ConfigMap")  # dashboards disabled
    dep = by_kind(docs, "Deployment")[0]
    env = {e["name"]: e.get("value") for e in dep["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert OperatorConfig.from_env(env).namespaces == ("team-a", "team-b")


def test_dashboards_configmap_carries_every_dashboard(helm: Path) -> None:
    cm = by_kind(render(helm), "ConfigMap")[0]
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    files = sorted(p.name for p in (CHART / "dashboards").glob("*.json"))
    assert sorted(cm["data"]) == files
    for name in files:
        dash = json.loads(cm["data"][name])
        assert dash["uid"] and dash["panels"]


def test_operator_dashboard_queries_only_operator_metrics() -> None:
    from prometheus_client import generate_latest

    from mtp_operator import metrics

    exposed = generate_latest(metrics.REGISTRY).decode()
    names = {line.split()[2] for line in exposed.splitlines() if line.startswith("# TYPE")}
    dash = json.loads((CHART / "dashboards" / "operator.json").read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    for expr in exprs:
        assert any(n in expr for n in names), expr


def test_monitoring_objects(helm: Path) -> None:
    docs = render(helm, CHART.parent.parent / "tests" / "chart" / "values" / "monitoring.yaml")
    sm = by_kind(docs, "ServiceMonitor")[0]
    assert sm["spec"]["endpoints"][0]["port"] == "metrics"
    pods = {p["metadata"]["name"]: p for p in by_kind(docs, "PodMonitor")}
    rollout, trainer = pods["mtp-mtp-operator-rollout"], pods["mtp-mtp-operator-trainer"]
    # the port names the operator gives the containers (mtp_api.contracts)
    assert rollout["spec"]["podMetricsEndpoints"][0]["port"] == contracts.PORT_ROLLOUT == "http-metrics"
    assert trainer["spec"]["podMetricsEndpoints"][0]["port"] == contracts.PORT_TRAINER_METRICS == "metrics"
    assert trainer["spec"]["podMetricsEndpoints"][0]["interval"] == "1m"
    assert rollout["spec"]["selector"]["matchLabels"][contracts.LABEL_COMPONENT] == contracts.COMPONENT_ROLLOUT
    rule = by_kind(docs, "PrometheusRule")[0]
    groups = [g["name"] for g in rule["spec"]["groups"]]
    expected = [
        g["name"] for f in sorted((CHART / "rules").glob("*.yaml")) for g in yaml.safe_load(f.read_text())["groups"]
    ]
    assert groups == expected and "mtp-operator" in groups


def test_empty_dashboards_and_rules_render_nothing(helm: Path, tmp_path: Path) -> None:
    chart = tmp_path / "mtp-operator"
    shutil.copytree(CHART, chart)
    for folder in ("dashboards", "rules"):
        shutil.rmtree(chart / folder)
        (chart / folder).mkdir()
    out = subprocess.run(
        [str(helm), "template", "mtp", str(chart), "--set", "prometheusRule.enabled=true"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    kinds = [d["kind"] for d in yaml.safe_load_all(out) if d]
    assert "PrometheusRule" not in kinds and "ConfigMap" not in kinds


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed")
def test_rule_files_pass_promtool() -> None:
    files = sorted(str(p) for p in (CHART / "rules").glob("*.yaml"))
    subprocess.run(["promtool", "check", "rules", *files], check=True, capture_output=True)
    subprocess.run(
        ["promtool", "test", "rules", str(Path(__file__).parent / "operator_rules_test.yaml")],
        check=True,
        capture_output=True,
        cwd=Path(__file__).parent,
    )
