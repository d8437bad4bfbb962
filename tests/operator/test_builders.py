"""Table-driven tests of every builder: one row per spec variation, each checking what must follow from it."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
import yaml

from mtp_api import types as t
from mtp_operator import names
from mtp_operator.builders.common import BuildError
from mtp_operator.builders.configmap import build_config_map
from mtp_operator.builders.model_path import rollout_model_path
from mtp_operator.builders.rollout import build_rollout_deployment
from mtp_operator.builders.services import build_rollout_service, build_trainer_service
from mtp_operator.builders.trainer import build_trainer_statefulset
from mtp_operator.children import Scale, desired_children
from mtp_rollout.launcher import server_plan
from tests.operator.conftest import job_manifest

Mutate = Callable[[dict[str, Any]], None]


def make(mutate: Mutate | None = None, uid: str | None = "u-1") -> t.MTPTrainingJob:
    body = job_manifest()
    if uid:
        body["metadata"]["uid"] = uid
    if mutate:
        mutate(body)
    return t.MTPTrainingJob.model_validate(body)


def container(obj: dict[str, Any]) -> dict[str, Any]:
    return dict(obj["spec"]["template"]["spec"]["containers"][0])


def env(obj: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container(obj)["env"]}


def volumes(obj: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {v["name"]: v for v in obj["spec"]["template"]["spec"]["volumes"]}


def mounts(obj: dict[str, Any]) -> dict[str, str]:
    return {m["name"]: m["mountPath"] for m in container(obj)["volumeMounts"]}


def set_(path: str, value: Any) -> Mutate:
    def mutate(body: dict[str, Any]) -> None:
        node = body
        *parents, last = path.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = value

    return mutate


def both(*fns: Mutate) -> Mutate:
    def mutate(body: dict[str, Any]) -> None:
        for fn in fns:
            fn(body)

    return mutate


TRAINER_CASES = [
    # (id, mutate, expected env subset, expected gpu count, expected extra volumes)
    ("cpu-one-node", None, {"NNODES": "1", "NPROC_PER_NODE": "1"}, None, {"checkpoints"}),
    (
        "gpu-4-nodes",
        both(set_("spec.trainer.replicas", 4), set_("spec.trainer.gpusPerReplica", 8)),
        {"NNODES": "4", "NPROC_PER_NODE": "8"},
        8,
        {"checkpoints"},
    ),
    (
        "data-volume-and-pvc-model",
        both(
            set_("spec.trainer.volumes.data", {"claimName": "data", "mountPath": "/data"}),
            set_("spec.model.source", {"pvc": {"claimName": "models", "path": "qwen"}}),
        ),
        {"MTP_MODEL_PATH": "/models/source/qwen"},
        None,
        {"checkpoints", "data", "model-source"},
    ),
    (
        "no-checkpoints-volume-uses-emptydir",
        both(set_("spec.trainer.volumes", {}), lambda b: b["spec"].pop("rollout")),
        {"NNODES": "1"},
        None,
        {"output"},
    ),
]


@pytest.mark.parametrize(
    ("case", "mutate", "want_env", "gpus", "extra"), TRAINER_CASES, ids=[c[0] for c in TRAINER_CASES]
)
def test_trainer_statefulset(
    case: str, mutate: Mutate | None, want_env: dict[str, str], gpus: int | None, extra: set[str]
) -> None:
    job = make(mutate)
    sts = build_trainer_statefulset(job, replicas=job.spec.trainer.replicas, config_hash="h")
    got = env(sts)
    assert {k: got[k] for k in want_env} == want_env
    assert got["MASTER_ADDR"] == "demo-trainer-0.demo-trainer.team-a.svc"
    assert got["MASTER_PORT"] == "29500"
    assert got["NODE_RANK"] == {"fieldRef": {"fieldPath": "metadata.labels['apps.kubernetes.io/pod-index']"}}
    cmd = container(sts)["command"]
    out_dir = cmd[cmd.index("--output-dir") + 1]
    assert cmd[:8] == [
        "python",
        "-m",
        "mtp_trainer.launch",  # torchrun that keeps the trainer's exit status 2
        "--nnodes=$(NNODES)",
        "--nproc-per-node=$(NPROC_PER_NODE)",
        "--node-rank=$(NODE_RANK)",
        "--master-addr=$(MASTER_ADDR)",
        "--master-port=$(MASTER_PORT)",
    ]
    assert cmd[8:12] == ["-m", "mtp_trainer.main", "--job", "/etc/mtpjob/job.yaml"]
    assert cmd[-3:] == ["--output-dir", out_dir, "--hold-after-completion"]
    assert out_dir in mounts(sts).values()
    assert sts["spec"]["serviceName"] == "demo-trainer" and sts["spec"]["replicas"] == job.spec.trainer.replicas
    assert volumes(sts)["dshm"]["emptyDir"] == {"medium": "Memory"} and mounts(sts)["dshm"] == "/dev/shm"
    assert set(volumes(sts)) == {"job-config", "dshm"} | extra
    res = container(sts).get("resources", {})
    assert res.get("limits", {}).get("nvidia.com/gpu") == gpus and res.get("requests", {}).get("nvidia.com/gpu") == gpus
    ports = {p["name"]: p["containerPort"] for p in container(sts)["ports"]}
    assert ports == {"rdzv": 29500, "metrics": job.spec.trainer.metrics_port}
    labels = sts["spec"]["template"]["metadata"]["labels"]
    assert sts["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert sts["spec"]["template"]["metadata"]["annotations"][names.ANNOTATION_CONFIG_HASH] == "h"
    assert sts["metadata"]["ownerReferences"][0]["uid"] == "u-1"


ROLLOUT_CASES = [
    # (id, mutate, model path, init container expected, gpus)
    ("sft-serves-export", None, "/ckpt/hf", True, None),
    (
        "rlvr-serves-hf-source-on-gpus",
        both(
            set_("spec.pipeline", "rlvr"),
            set_("spec.model.source", {"huggingFace": {"id": "Qwen/Qwen3.5-0.8B"}}),
            set_("spec.reward", {}),
            set_("spec.rollout.gpusPerReplica", 2),
            set_("spec.rollout.tensorParallelSize", 2),
        ),
        "Qwen/Qwen3.5-0.8B",
        False,
        2,
    ),
    (
        "rlvr-serves-pvc-source",
        both(
            set_("spec.pipeline", "rlvr"),
            set_("spec.model.source", {"pvc": {"claimName": "models", "path": "m"}}),
            set_("spec.reward", {}),
        ),
        "/models/source/m",
        False,
        None,
    ),
]


@pytest.mark.parametrize(("case", "mutate", "model", "init", "gpus"), ROLLOUT_CASES, ids=[c[0] for c in ROLLOUT_CASES])
def test_rollout_deployment(case: str, mutate: Mutate | None, model: str, init: bool, gpus: int | None) -> None:
    job = make(mutate)
    dep = build_rollout_deployment(job, replicas=1, config_hash="h")
    c = container(dep)
    plan = server_plan(job, model)
    assert c["command"] == ["python"] and c["args"] == plan.args
    assert env(dep) == plan.env
    spec_cfg = c["args"][c["args"].index("--speculative-config") + 1]
    assert json.loads(spec_cfg) == {"method": "mtp", "num_speculative_tokens": 1}
    if gpus:
        assert c["args"][c["args"].index("--tensor-parallel-size") + 1] == "2"
        assert c["resources"]["limits"]["nvidia.com/gpu"] == gpus
    else:
        assert "resources" not in c or "nvidia.com/gpu" not in c["resources"].get("limits", {})
    assert c["readinessProbe"]["httpGet"] == {"path": "/health", "port": "http-metrics"}
    assert c["ports"] == [{"name": "http-metrics", "containerPort": 8000, "protocol": "TCP"}]
    assert volumes(dep)["dshm"]["emptyDir"] == {"medium": "Memory"}
    inits = dep["spec"]["template"]["spec"].get("initContainers", [])
    assert bool(inits) == init
    if init:
        assert inits[0]["command"][-1] == f"{model}/config.json"


def test_rollout_without_shared_volume_cannot_serve_the_export() -> None:
    job = make(set_("spec.trainer.volumes", {}))
    with pytest.raises(BuildError, match=r"volumes\.checkpoints"):
        rollout_model_path(job)


def test_speculative_tokens_change_only_the_rollout_template() -> None:
    a = make()
    b = make(set_("spec.rollout.speculative.numSpeculativeTokens", 3))
    ca, cb = desired_children(a), desired_children(b)
    kinds = [(o["kind"], o["metadata"]["name"]) for o in ca]
    changed = {k for k, x, y in zip(kinds, ca, cb, strict=True) if x != y}
    assert changed == {("ConfigMap", "demo-config"), ("Deployment", "demo-rollout")}


@pytest.mark.parametrize(
    ("scale", "trainer", "rollout"), [(Scale(), 1, 1), (Scale(trainer=False), 0, 1), (Scale(False, False), 0, 0)]
)
def test_scale_sets_replicas(scale: Scale, trainer: int, rollout: int) -> None:
    objs = {o["kind"]: o for o in desired_children(make(), scale)}
    assert objs["StatefulSet"]["spec"]["replicas"] == trainer
    assert objs["Deployment"]["spec"]["replicas"] == rollout
    assert objs["StatefulSet"]["spec"]["template"] == desired_children(make())[2]["spec"]["template"]


def test_services() -> None:
    job = make()
    svc = build_trainer_service(job)
    assert svc["spec"]["clusterIP"] == "None" and svc["spec"]["publishNotReadyAddresses"] is True
    assert svc["spec"]["selector"] == {"mtp.io/job-name": "demo", "app.kubernetes.io/component": "trainer"}
    ro = build_rollout_service(job)
    assert ro["spec"]["ports"] == [{"name": "http", "port": 8000, "targetPort": "http-metrics", "protocol": "TCP"}]
    assert ro["spec"]["selector"]["app.kubernetes.io/component"] == "rollout"


def test_config_map_holds_the_job_the_trainer_reads() -> None:
    job = make()
    cm = build_config_map(job)
    doc = yaml.safe_load(cm["data"]["job.yaml"])
    assert t.MTPTrainingJob.model_validate(doc).spec == job.spec
    assert "uid" not in doc["metadata"]
    assert json.loads(cm["data"]["rollout.json"])["args"] == server_plan(job, "/ckpt/hf").args


def test_builders_are_pure_and_render_without_uid() -> None:
    job = make(uid=None)
    first, second = desired_children(job), desired_children(job)
    assert first == second
    assert all("ownerReferences" not in o["metadata"] for o in first)
    assert all(o["metadata"]["annotations"][names.ANNOTATION_SPEC_HASH] for o in first)
    assert len({o["metadata"]["annotations"][names.ANNOTATION_SPEC_HASH] for o in first}) == len(first)
