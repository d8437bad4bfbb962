"""rlvr's cluster topology: what the operator creates so that trainer rank 0 reaches every rollout replica.

Expected objects are written out by hand from docs/operator.md ("RLVR topology") and the contract in
``mtp_api.contracts``, not computed with the builders under test.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from mtp_api import types as t
from mtp_api.validation import semantic_checks
from mtp_operator.children import desired_children
from tests.apiserver.harness import wait_for
from tests.operator.backends import Backend

REPO = Path(__file__).resolve().parents[2]
NAME = "rl"


def rlvr_manifest(**trainer: Any) -> dict[str, Any]:
    """The tiny RLVR example (checkpoints at /checkpoints, rollout on port 8000), renamed."""
    body = copy.deepcopy(yaml.safe_load((REPO / "examples" / "tiny-rlvr.yaml").read_text()))
    body["metadata"] = {"name": NAME, "namespace": "team-a"}
    body["spec"]["trainer"].update(trainer)
    return body


def rlvr_job(**trainer: Any) -> t.MTPTrainingJob:
    return t.MTPTrainingJob.model_validate(rlvr_manifest(**trainer))


def by_kind_name(objs: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(o["kind"], o["metadata"]["name"]): o for o in objs}


def pod_spec(obj: dict[str, Any]) -> dict[str, Any]:
    return dict(obj["spec"]["template"]["spec"])


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


def test_rlvr_children_and_their_order() -> None:
    objs = desired_children(rlvr_job())
    assert [(o["kind"], o["metadata"]["name"]) for o in objs] == [
        ("ConfigMap", "rl-config"),
        ("Service", "rl-trainer"),
        ("StatefulSet", "rl-trainer"),
        ("PodDisruptionBudget", "rl-trainer"),
        ("Service", "rl-rollout"),
        ("Service", "rl-rollout-peers"),
        ("Deployment", "rl-rollout"),
    ]


def test_peers_service_is_headless_over_ready_rollout_pods() -> None:
    peers = by_kind_name(desired_children(rlvr_job()))[("Service", "rl-rollout-peers")]
    assert peers["metadata"]["namespace"] == "team-a"
    assert peers["metadata"]["labels"]["app.kubernetes.io/component"] == "rollout"
    assert peers["spec"] == {
        "clusterIP": "None",
        "publishNotReadyAddresses": False,
        "selector": {"mtp.io/job-name": "rl", "app.kubernetes.io/component": "rollout"},
        "ports": [{"name": "http", "port": 8000, "targetPort": "http-metrics", "protocol": "TCP"}],
    }


def test_trainer_env_names_the_peers_and_the_weight_sync_dir() -> None:
    sts = by_kind_name(desired_children(rlvr_job()))[("StatefulSet", "rl-trainer")]
    env = env_of(pod_spec(sts)["containers"][0])
    assert env["MTP_ROLLOUT_SERVICE"] == "rl-rollout-peers.team-a.svc:8000"
    assert env["MTP_WEIGHT_SYNC_DIR"] == "/checkpoints/weight-sync"
    assert "MTP_ROLLOUT_URLS" not in env  # the explicit list is for local runs
    assert "MTP_MODEL_PATH" not in env  # a tiny model made in code


def test_rollout_port_and_namespace_reach_the_trainer_env() -> None:
    body = rlvr_manifest()
    body["spec"]["rollout"]["port"] = 8100
    del body["metadata"]["namespace"]  # `mtpjob render` without -n: a name that resolves in the job's namespace
    sts = by_kind_name(desired_children(t.MTPTrainingJob.model_validate(body)))[("StatefulSet", "rl-trainer")]
    assert env_of(pod_spec(sts)["containers"][0])["MTP_ROLLOUT_SERVICE"] == "rl-rollout-peers:8100"


@pytest.mark.parametrize("source", [{"huggingFace": {"id": "Qwen/Qwen3.5-0.8B"}}, {"path": "/models/base"}])
def test_rollout_serves_the_trainers_export_with_weight_sync(source: dict[str, Any]) -> None:
    body = rlvr_manifest()
    body["spec"]["model"]["source"] = source
    dep = by_kind_name(desired_children(t.MTPTrainingJob.model_validate(body)))[("Deployment", "rl-rollout")]
    spec = pod_spec(dep)
    vllm = spec["containers"][0]
    args = vllm["args"]
    assert args[args.index("--model") + 1] == "/checkpoints/hf"
    assert args[args.index("--weight-transfer-config") + 1] == '{"backend":"mtp_shared_fs"}'
    assert env_of(vllm)["VLLM_SERVER_DEV_MODE"] == "1"
    assert [c["name"] for c in spec["initContainers"]] == ["wait-for-model"]
    assert spec["initContainers"][0]["command"][-1] == "/checkpoints/hf/config.json"
    assert spec["automountServiceAccountToken"] is False


def test_rollout_on_gpus_syncs_through_the_shared_volume_too() -> None:
    """No NCCL group between trainer and rollout yet, so no port from the rollout to the trainer."""
    body = rlvr_manifest()
    body["spec"]["rollout"]["gpusPerReplica"] = 1
    body["spec"]["model"]["dtype"] = "bfloat16"
    dep = by_kind_name(desired_children(t.MTPTrainingJob.model_validate(body)))[("Deployment", "rl-rollout")]
    args = pod_spec(dep)["containers"][0]["args"]
    assert args[args.index("--weight-transfer-config") + 1] == '{"backend":"mtp_shared_fs"}'


@pytest.mark.parametrize("sub_path", ["", "runs/1"])
def test_rollout_mounts_the_checkpoints_where_the_trainer_does(sub_path: str) -> None:
    job = rlvr_job(volumes={"checkpoints": {"claimName": "ckpt", "mountPath": "/ckpt", "subPath": sub_path}})
    kids = by_kind_name(desired_children(job))
    trainer_mount = next(m for m in pod_spec(kids[("StatefulSet", "rl-trainer")])["containers"][0]["volumeMounts"]
                         if m["name"] == "checkpoints")  # fmt: skip
    rollout_spec = pod_spec(kids[("Deployment", "rl-rollout")])
    rollout_mount = next(m for m in rollout_spec["containers"][0]["volumeMounts"] if m["name"] == "checkpoints")
    want = {"name": "checkpoints", "mountPath": "/ckpt"} | ({"subPath": sub_path} if sub_path else {})
    assert trainer_mount == want
    assert rollout_mount == want | {"readOnly": True}
    assert rollout_spec["initContainers"][0]["volumeMounts"] == [rollout_mount]
    claim = next(v for v in rollout_spec["volumes"] if v["name"] == "checkpoints")
    assert claim == {"name": "checkpoints", "persistentVolumeClaim": {"claimName": "ckpt", "readOnly": True}}
    env = env_of(pod_spec(kids[("StatefulSet", "rl-trainer")])["containers"][0])
    assert env["MTP_WEIGHT_SYNC_DIR"] == "/ckpt/weight-sync"


def test_sft_gets_none_of_it() -> None:
    body = rlvr_manifest()
    body["spec"]["pipeline"] = "sft"
    for key in ("grpo", "warmup"):
        body["spec"]["trainer"].pop(key)
    body["spec"].pop("reward")
    body["spec"]["trainer"]["data"] = {"trainFiles": ["/data/train.jsonl"]}
    kids = by_kind_name(desired_children(t.MTPTrainingJob.model_validate(body)))
    assert ("Service", "rl-rollout-peers") not in kids
    env = env_of(pod_spec(kids[("StatefulSet", "rl-trainer")])["containers"][0])
    assert "MTP_ROLLOUT_SERVICE" not in env and "MTP_WEIGHT_SYNC_DIR" not in env
    vllm = pod_spec(kids[("Deployment", "rl-rollout")])["containers"][0]
    assert "--weight-transfer-config" not in vllm["args"] and "VLLM_SERVER_DEV_MODE" not in env_of(vllm)


# ---------------------------------------------------------------------------------- the operator itself

RLVR_CHILDREN = [
    ("configmaps", f"{NAME}-config"),
    ("services", f"{NAME}-trainer"),
    ("statefulsets", f"{NAME}-trainer"),
    ("services", f"{NAME}-rollout"),
    ("services", f"{NAME}-rollout-peers"),
    ("deployments", f"{NAME}-rollout"),
]


def _status(backend: Backend) -> dict[str, Any]:
    return dict((backend.get(t.PLURAL, NAME) or {}).get("status") or {})


def test_operator_creates_the_rlvr_topology(backend: Backend) -> None:
    backend.apply(t.PLURAL, rlvr_manifest())
    with backend.operator():
        wait_for(lambda: all(backend.get(plural, name) is not None for plural, name in RLVR_CHILDREN))
        st = wait_for(lambda: (s := _status(backend)).get("state") == "Created" and s)
        assert {c["type"]: c["status"] for c in st["conditions"]}["Created"] == "True"
        assert "rl" not in st  # no RL step reported yet


def test_rlvr_job_the_semantic_checks_refuse_fails_before_any_child(backend: Backend) -> None:
    body = rlvr_manifest()
    body["spec"]["trainer"]["data"]["trainFiles"] = ["/data/prompts.txt"]  # rlvr reads JSONL or Parquet
    errors, _ = semantic_checks(t.MTPTrainingJob.model_validate(body))
    assert [e.path for e in errors] == ["spec.trainer.data.trainFiles[0]"]
    backend.apply(t.PLURAL, body)
    with backend.operator():
        st = wait_for(lambda: (s := _status(backend)).get("state") == "Failed" and s)
        failed = {c["type"]: c for c in st["conditions"]}["Failed"]
        assert failed["reason"] == "InvalidSpec"
        assert "spec.trainer.data.trainFiles[0]" in failed["message"] and "Parquet" in failed["message"]
        assert "startTime" not in st
        assert all(backend.get(plural, name) is None for plural, name in RLVR_CHILDREN)


def _trainer_pod(name: str) -> dict[str, Any]:
    """Rank 0 as the kubelet would report it once started; its exporter runs in this process."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": "team-a",
            "labels": {
                "app.kubernetes.io/managed-by": "mtp-operator",
                "mtp.io/job-name": NAME,
                "app.kubernetes.io/component": "trainer",
            },
        },
        "spec": {"containers": [{"name": "trainer", "image": "x"}]},
        "status": {"phase": "Running", "podIP": "127.0.0.1", "containerStatuses": [{"name": "trainer"}]},
    }


def test_rank_0s_rl_step_lands_in_status(tmp_path: Path) -> None:
    """The trainer's own RL exporter -> the scrape daemon -> the store -> a reconcile -> status.rl."""
    from prometheus_client import start_http_server

    from mtp_operator.settings import OperatorConfig
    from mtp_trainer.config import MetricsConfig
    from mtp_trainer.metrics import Metrics
    from mtp_trainer.rl.metrics import RLMetrics, RLStepRecord
    from tests.apiserver.harness import OperatorThread, ServerThread

    m = Metrics(MetricsConfig(job=NAME, namespace="team-a"), tmp_path)
    RLMetrics(m).record(
        RLStepRecord(
            step=7, weight_version=7, reward_mean=0.43751, reward_std=0.5, accuracy=0.4062, parse_failures=3,
            samples=64, response_length_mean=21.5, policy_loss=-0.01, entropy=0.9, clip_fraction=0.02,
            kl_old=0.001, kl_ref=None, mtp_loss=[1.5], mtp_agreement=[0.8], grad_norm=[1.0], learning_rate=5e-5,
            phase_seconds={"generate": 3.0, "reward": 0.1, "train": 2.0, "sync": 0.5}, generated_tokens=1376,
            generation_tokens_per_s=458.7, acceptance_rate=0.81234, mean_acceptance_length=2.62468,
        )
    )  # fmt: skip
    server, _ = start_http_server(0, addr="127.0.0.1", registry=m.registry)
    body = rlvr_manifest(metricsPort=server.server_port)
    config = OperatorConfig(
        standalone=True, metrics_port=0, health_port=0, resync_seconds=0.5, scrape_seconds=0.5,
        status_min_interval_seconds=0,
    )  # fmt: skip
    try:
        with ServerThread() as api, OperatorThread(api.url, config):
            srv = api.server
            api.call(lambda: srv.put_object(t.PLURAL, body))
            api.call(lambda: srv.put_object("pods", _trainer_pod(f"{NAME}-trainer-0")))

            def rl() -> dict[str, Any] | None:
                job = api.call(lambda: srv.get_object(t.PLURAL, "team-a", NAME)) or {}
                return (job.get("status") or {}).get("rl")

            assert wait_for(rl) == {
                "step": 7, "rewardMean": 0.438, "accuracy": 0.406, "acceptanceRate": 0.812,
                "meanAcceptanceLength": 2.625, "weightVersion": 7,
            }  # fmt: skip
    finally:
        server.shutdown()
