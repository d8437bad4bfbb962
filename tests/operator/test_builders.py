"""Table-driven tests of every builder: one row per spec variation, each checking what must follow from it."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import kubernetes_validate
import pytest
import yaml

from mtp_api import types as t
from mtp_operator import names
from mtp_operator.builders.common import BuildError
from mtp_operator.builders.configmap import build_config_map
from mtp_operator.builders.model_path import rollout_model_path
from mtp_operator.builders.rollout import build_rollout_deployment
from mtp_operator.builders.services import build_rollout_service, build_trainer_service
from mtp_operator.builders.trainer import build_trainer_disruption_budget, build_trainer_statefulset
from mtp_operator.children import Scale, desired_children
from tests.operator.conftest import job_manifest

Mutate = Callable[[dict[str, Any]], None]
K8S_VERSION = "1.33"  # as tests/chart


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
    assert cmd[-2:] == ["--output-dir", out_dir]  # no hold: a finished trainer exits 0 (batch semantics)
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
    # batch semantics: all ranks restart together (OnDelete + the attempt label), the completion reaches
    # the pod's status through the termination message, SIGTERM has the run policy's grace period
    assert sts["spec"]["updateStrategy"] == {"type": "OnDelete"}
    assert labels["mtp.io/restart-attempt"] == "0"
    assert got["MTP_TERMINATION_MESSAGE_PATH"] == "/dev/termination-log"
    assert container(sts)["terminationMessagePath"] == "/dev/termination-log"
    assert container(sts)["terminationMessagePolicy"] == "File"
    assert sts["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == 120


def test_trainer_disruption_budget_refuses_evicting_a_running_rank() -> None:
    pdb = build_trainer_disruption_budget(make(set_("spec.trainer.replicas", 4)))
    assert (pdb["apiVersion"], pdb["kind"], pdb["metadata"]["name"]) == (
        "policy/v1",
        "PodDisruptionBudget",
        "demo-trainer",
    )
    assert pdb["spec"] == {
        "maxUnavailable": 0,
        "selector": {"matchLabels": {"mtp.io/job-name": "demo", "app.kubernetes.io/component": "trainer"}},
        "unhealthyPodEvictionPolicy": "AlwaysAllow",
    }
    assert pdb["metadata"]["ownerReferences"][0]["uid"] == "u-1"
    kubernetes_validate.validate(pdb, K8S_VERSION, strict=True)
    kinds = [o["kind"] for o in desired_children(make())]
    assert "PodDisruptionBudget" in kinds
    for scale in (Scale(trainer=False), Scale(trainer=False, rollout=False)):  # suspended, finished
        assert "PodDisruptionBudget" not in [o["kind"] for o in desired_children(make(), scale)]


def test_group_restart_attempt_and_job_metadata_reach_the_pods() -> None:
    def meta(body: dict[str, Any]) -> None:
        body["metadata"]["labels"] = {"kueue.x-k8s.io/queue-name": "q", names.LABEL_COMPONENT: "mine"}
        body["metadata"]["annotations"] = {"team": "ml", "kubectl.kubernetes.io/last-applied-configuration": "{}"}
        body["spec"]["runPolicy"] = {"terminationGracePeriodSeconds": 600}

    job = make(meta)
    sts = build_trainer_statefulset(job, replicas=1, config_hash="h", attempt=3)
    template = sts["spec"]["template"]
    assert template["metadata"]["labels"] == {
        "kueue.x-k8s.io/queue-name": "q",
        "app.kubernetes.io/name": "mtptrainingjob",
        "app.kubernetes.io/instance": "demo",
        "app.kubernetes.io/component": "trainer",  # the operator's own label wins over the job's
        "app.kubernetes.io/managed-by": "mtp-operator",
        "app.kubernetes.io/part-of": "mtp",
        "mtp.io/job-name": "demo",
        "mtp.io/restart-attempt": "3",
    }
    assert template["metadata"]["annotations"] == {
        "team": "ml",
        "mtp.io/config-hash": "h",
        "kubectl.kubernetes.io/default-container": "trainer",
    }
    assert sts["metadata"]["annotations"] == {"team": "ml"}  # kubectl's bookkeeping is not copied
    assert template["spec"]["terminationGracePeriodSeconds"] == 600


def vllm_args(model: str, *device: str) -> list[str]:
    """The vLLM command line written out by hand, not taken from ``server_plan`` (which the builder calls)."""
    return [
        "-m",
        "mtp_rollout.runtime.serve",
        "--model",
        model,
        "--served-model-name",
        "demo",  # the job's name: vLLM's model_name label identifies the job in Prometheus
        "--host",
        "0.0.0.0",
        "--port",
        "8000",
        "--dtype",
        "float32",
        "--max-model-len",
        "512",
        "--seed",
        "1234",
        "--generation-config",
        "vllm",
        *device,
        "--speculative-config",
        '{"method":"mtp","num_speculative_tokens":1}',
    ]


CPU_ARGS = ("--enforce-eager",)
CPU_ENV = {"MTP_ROLLOUT_CHECK_MTP": "1", "MTP_ROLLOUT_CPU": "1", "VLLM_CPU_KVCACHE_SPACE": "1"}
# rlvr: vLLM's RL API (dev mode) and the shared-volume weight-transfer engine, after the speculative config
WEIGHT_SYNC_ARGS = ["--weight-transfer-config", '{"backend":"mtp_shared_fs"}']
WEIGHT_SYNC_ENV = {"VLLM_SERVER_DEV_MODE": "1"}
RLVR = both(set_("spec.pipeline", "rlvr"), set_("spec.reward", {}))

ROLLOUT_CASES = [
    # (id, mutate, model path, args, env, init container expected, gpus)
    ("sft-serves-export", None, "/ckpt/hf", vllm_args("/ckpt/hf", *CPU_ARGS), CPU_ENV, True, None),
    (
        "rlvr-on-gpus-serves-export-with-weight-sync",
        both(
            RLVR,
            set_("spec.model.source", {"huggingFace": {"id": "Qwen/Qwen3.5-0.8B"}}),
            set_("spec.rollout.gpusPerReplica", 2),
            set_("spec.rollout.tensorParallelSize", 2),
        ),
        "/ckpt/hf",  # rlvr serves the trainer's export of its initial policy, never the source model
        vllm_args("/ckpt/hf", "--tensor-parallel-size", "2", "--gpu-memory-utilization", "0.9") + WEIGHT_SYNC_ARGS,
        {"MTP_ROLLOUT_CHECK_MTP": "1"} | WEIGHT_SYNC_ENV,
        True,
        2,
    ),
    (
        "rlvr-pvc-source-serves-export-with-weight-sync",
        both(RLVR, set_("spec.model.source", {"pvc": {"claimName": "models", "path": "m"}})),
        "/ckpt/hf",
        vllm_args("/ckpt/hf", *CPU_ARGS) + WEIGHT_SYNC_ARGS,
        CPU_ENV | WEIGHT_SYNC_ENV,
        True,
        None,
    ),
]


@pytest.mark.parametrize(
    ("case", "mutate", "model", "args", "want_env", "init", "gpus"), ROLLOUT_CASES, ids=[c[0] for c in ROLLOUT_CASES]
)
def test_rollout_deployment(
    case: str,
    mutate: Mutate | None,
    model: str,
    args: list[str],
    want_env: dict[str, str],
    init: bool,
    gpus: int | None,
) -> None:
    job = make(mutate)
    dep = build_rollout_deployment(job, replicas=1, config_hash="h")
    c = container(dep)
    assert c["command"] == ["python"]
    assert c["args"] == args
    assert env(dep) == want_env | {"HF_HOME": "/var/cache/huggingface"}  # the cache volume, never the image's /tmp
    if gpus:
        assert c["resources"] == {"requests": {"nvidia.com/gpu": gpus}, "limits": {"nvidia.com/gpu": gpus}}
    else:
        assert "resources" not in c  # no GPU and no resources in the spec: no resources block at all
    assert c["readinessProbe"]["httpGet"] == {"path": "/health", "port": "http-metrics"}
    assert c["ports"] == [{"name": "http-metrics", "containerPort": 8000, "protocol": "TCP"}]
    assert volumes(dep)["dshm"]["emptyDir"] == {"medium": "Memory"}
    inits = dep["spec"]["template"]["spec"].get("initContainers", [])
    assert bool(inits) == init
    if init:
        assert inits[0]["command"][-1] == f"{model}/config.json"


def test_rollout_hugging_face_cache_is_a_volume() -> None:
    dep = build_rollout_deployment(make(), replicas=1, config_hash="h")
    assert volumes(dep)["hf-cache"] == {"name": "hf-cache", "emptyDir": {}}
    assert mounts(dep)["hf-cache"] == env(dep)["HF_HOME"] == "/var/cache/huggingface"
    claim = {"claimName": "hf", "subPath": "qwen"}
    dep = build_rollout_deployment(make(set_("spec.rollout.hfCache", claim)), replicas=1, config_hash="h")
    assert volumes(dep)["hf-cache"] == {"name": "hf-cache", "persistentVolumeClaim": {"claimName": "hf"}}
    (mount,) = [m for m in container(dep)["volumeMounts"] if m["name"] == "hf-cache"]
    assert mount == {"name": "hf-cache", "mountPath": "/var/cache/huggingface", "subPath": "qwen"}
    kubernetes_validate.validate(dep, K8S_VERSION, strict=True)


def test_rollout_probes_do_not_kill_a_busy_server() -> None:
    c = container(build_rollout_deployment(make(), replicas=1, config_hash="h"))
    live, ready, start = c["livenessProbe"], c["readinessProbe"], c["startupProbe"]
    # liveness: at least 2 minutes of unanswered /health, each try waiting 10 s, before a restart
    assert live["timeoutSeconds"] >= 10 and live["failureThreshold"] >= 6 and live["periodSeconds"] >= 20
    # startup: half an hour for a large model to load; readiness: out of the Service within 15 s
    assert start["periodSeconds"] * start["failureThreshold"] >= 1800
    assert ready["periodSeconds"] * ready["failureThreshold"] <= 15
    assert all(p["httpGet"] == {"path": "/health", "port": "http-metrics"} for p in (live, ready, start))


def test_rollout_without_shared_volume_cannot_serve_the_export() -> None:
    job = make(set_("spec.trainer.volumes", {}))
    with pytest.raises(BuildError, match=r"volumes\.checkpoints"):
        rollout_model_path(job)


def changed_paths(x: Any, y: Any, path: str = "") -> list[str]:
    """The paths of every leaf that differs between two objects (lists of equal length item by item)."""
    if isinstance(x, dict) and isinstance(y, dict):
        return [p for k in sorted(set(x) | set(y)) for p in changed_paths(x.get(k), y.get(k), f"{path}.{k}")]
    if isinstance(x, list) and isinstance(y, list) and len(x) == len(y):
        return [p for i, (u, v) in enumerate(zip(x, y, strict=True)) for p in changed_paths(u, v, f"{path}[{i}]")]
    return [] if x == y else [path]


def test_speculative_tokens_change_only_the_rollout_template() -> None:
    a = make()
    b = make(set_("spec.rollout.speculative.numSpeculativeTokens", 3))
    ca, cb = desired_children(a), desired_children(b)
    assert [(o["kind"], o["metadata"]["name"]) for o in ca] == [(o["kind"], o["metadata"]["name"]) for o in cb]
    changed = {(x["kind"], x["metadata"]["name"]): changed_paths(x, y) for x, y in zip(ca, cb, strict=True)}
    assert changed == {
        ("ConfigMap", "demo-config"): [
            ".data.job.yaml",  # the spec as the trainer reads it
            ".data.rollout.json",  # the server plan
            ".metadata.annotations.mtp.io/spec-hash",
        ],
        ("Service", "demo-trainer"): [],
        ("StatefulSet", "demo-trainer"): [],  # an SFT trainer never reads the rollout: it does not restart
        ("PodDisruptionBudget", "demo-trainer"): [],
        ("Service", "demo-rollout"): [],
        ("Deployment", "demo-rollout"): [
            ".metadata.annotations.mtp.io/spec-hash",
            ".spec.template.metadata.annotations.mtp.io/config-hash",
            ".spec.template.spec.containers[0].args[20]",  # the --speculative-config value
        ],
    }
    args = cb[5]["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[19:21] == ["--speculative-config", '{"method":"mtp","num_speculative_tokens":3}']


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


# The job as the trainer reads it: tests/operator/conftest.job_manifest() (examples/tiny-sft.yaml with a
# "ckpt" claim at /ckpt) with every default the API fills in, written out by hand.
TRAINER_JOB_DOC = {
    "apiVersion": "mtp.io/v1alpha1",
    "kind": "MTPTrainingJob",
    "metadata": {"name": "demo", "namespace": "team-a"},  # no uid: the trainer never needs it
    "spec": {
        "pipeline": "sft",
        "model": {
            "dtype": "float32",
            "family": "qwen3_next",
            "mtpNumLayers": 1,
            "source": {
                "tiny": {
                    "ffnHiddenSize": 384,
                    "hiddenSize": 128,
                    "numAttentionHeads": 4,
                    "numKeyValueHeads": 2,
                    "numLayers": 2,
                    "tieWordEmbeddings": False,
                    "vocabSize": 1024,
                }
            },
        },
        "rollout": {
            "generation": {"maxModelLen": 512, "maxTokens": 64, "temperature": 0.0, "topP": 1.0},
            "gpuMemoryUtilization": 0.9,
            "gpusPerReplica": 0,
            "image": "ghcr.io/mtp-io/mtp-rollout:0.1.0",
            "port": 8000,
            "replicas": 1,
            "resources": {"limits": {}, "requests": {}},
            "speculative": {"method": "mtp", "numSpeculativeTokens": 1},
            "tensorParallelSize": 1,
        },
        "runPolicy": {"backoffLimit": 3, "suspend": False, "terminationGracePeriodSeconds": 120},
        "trainer": {
            "data": {
                "answerKey": "ground_truth",
                "builtinTask": {"difficulty": 2, "seed": 1234, "trainSize": 20000, "validationSize": 256},
                "format": "messages",
                "promptKey": "prompt",
                "responseKey": "response",
                "trainFiles": ["builtin:pydoc-topics"],
                "validationFiles": [],
                "validationFraction": 0.05,
            },
            "gpusPerReplica": 0,
            "grpo": {
                "clipRatioHigh": 0.2,
                "clipRatioLow": 0.2,
                "klCoef": 0.0,
                "logKlToInitial": False,
                "miniBatches": 1,
                "promptsPerStep": 8,
                "samplesPerPrompt": 8,
                "validationPrompts": 32,
            },
            "hyperparameters": {
                "clipGrad": 1.0,
                "evalSteps": 50,
                "globalBatchSize": 8,
                "learningRate": 0.003,
                "maxSteps": 200,
                "microBatchSize": 8,
                "minLearningRate": 0.0003,
                "saveSteps": 100,
                "seed": 1234,
                "seqLength": 128,
                "warmupSteps": 10,
                "weightDecay": 0.0,
            },
            "image": "ghcr.io/mtp-io/mtp-trainer:0.1.0",
            "metricsPort": 9400,
            "mtp": {"lossScalingFactor": 0.3, "trainingMode": "joint"},
            "replicas": 1,
            "resources": {"limits": {}, "requests": {}},
            "strategy": {
                "distributedOptimizer": False,
                "expertParallelSize": 1,
                "pipelineParallelSize": 1,
                "recompute": "none",
                "sequenceParallel": False,
                "tensorParallelSize": 1,
            },
            "volumes": {"checkpoints": {"claimName": "ckpt", "mountPath": "/ckpt", "subPath": ""}},
        },
    },
}


def test_config_map_holds_the_job_the_trainer_reads() -> None:
    job = make()
    cm = build_config_map(job)
    assert cm["apiVersion"] == "v1" and cm["kind"] == "ConfigMap"
    assert cm["metadata"]["name"] == "demo-config" and cm["metadata"]["namespace"] == "team-a"
    assert cm["metadata"]["labels"] == {
        "app.kubernetes.io/component": "config",
        "app.kubernetes.io/instance": "demo",
        "app.kubernetes.io/managed-by": "mtp-operator",
        "app.kubernetes.io/name": "mtptrainingjob",
        "app.kubernetes.io/part-of": "mtp",
        "mtp.io/job-name": "demo",
    }
    assert set(cm["data"]) == {"job.yaml", "rollout.json"}
    doc = yaml.safe_load(cm["data"]["job.yaml"])
    assert doc == TRAINER_JOB_DOC
    assert t.MTPTrainingJob.model_validate(doc).spec == job.spec  # and it reads back as the same spec
    # The rollout's server plan: the SFT rollout serves the trainer's export (<checkpoints>/hf) on CPU.
    assert json.loads(cm["data"]["rollout.json"]) == {"args": vllm_args("/ckpt/hf", *CPU_ARGS), "env": CPU_ENV}


def test_builders_are_pure_and_render_without_uid() -> None:
    job = make(uid=None)
    first, second = desired_children(job), desired_children(job)
    assert first == second
    assert all("ownerReferences" not in o["metadata"] for o in first)
    assert all(o["metadata"]["annotations"][names.ANNOTATION_SPEC_HASH] for o in first)
    assert len({o["metadata"]["annotations"][names.ANNOTATION_SPEC_HASH] for o in first}) == len(first)


POD_BLOCK = {
    "labels": {"team": "ml", "app.kubernetes.io/component": "mine"},
    "annotations": {"sidecar.istio.io/inject": "false"},
    "nodeSelector": {"nvidia.com/gpu.product": "H100"},
    "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
    "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": []}}},
    "priorityClassName": "training-high",
    "schedulerName": "volcano",
    "imagePullSecrets": ["regcred"],
    "serviceAccountName": "trainer-sa",
    "env": [
        {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hf", "key": "token"}}},
        {"name": "MASTER_PORT", "value": "1"},  # the operator's: dropped
    ],
    "envFrom": [{"secretRef": {"name": "wandb"}}],
    "volumes": [
        {"name": "hf-cache", "persistentVolumeClaim": {"claimName": "hf-cache"}},
        {"name": "dshm", "emptyDir": {}},  # the operator's: dropped
    ],
    "volumeMounts": [
        {"name": "hf-cache", "mountPath": "/cache/hf"},
        {"name": "hf-cache", "mountPath": "/dev/shm"},  # the operator's path: dropped
    ],
}


def test_trainer_pod_customisation_with_the_operators_fields_winning() -> None:
    job = make(set_("spec.trainer.pod", POD_BLOCK))
    sts = build_trainer_statefulset(job, replicas=1, config_hash="h")
    template = sts["spec"]["template"]
    spec = template["spec"]
    assert template["metadata"]["labels"]["team"] == "ml"
    assert template["metadata"]["labels"]["app.kubernetes.io/component"] == "trainer"
    assert template["metadata"]["annotations"]["sidecar.istio.io/inject"] == "false"
    assert spec["nodeSelector"] == {"nvidia.com/gpu.product": "H100"}
    assert spec["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert spec["affinity"] == {
        "nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": []}}
    }
    assert (spec["priorityClassName"], spec["schedulerName"], spec["serviceAccountName"]) == (
        "training-high",
        "volcano",
        "trainer-sa",
    )
    assert spec["imagePullSecrets"] == [{"name": "regcred"}]
    assert volumes(sts)["hf-cache"] == {"name": "hf-cache", "persistentVolumeClaim": {"claimName": "hf-cache"}}
    assert volumes(sts)["dshm"] == {"name": "dshm", "emptyDir": {"medium": "Memory"}}
    assert mounts(sts)["hf-cache"] == "/cache/hf"
    assert mounts(sts)["dshm"] == "/dev/shm"
    assert [m["mountPath"] for m in container(sts)["volumeMounts"]].count("/dev/shm") == 1
    assert env(sts)["HF_TOKEN"] == {"secretKeyRef": {"name": "hf", "key": "token"}}
    assert env(sts)["MASTER_PORT"] == "29500"
    assert container(sts)["envFrom"] == [{"secretRef": {"name": "wandb"}}]


def test_rollout_keeps_no_service_account_token_whatever_the_pod_block_says() -> None:
    job = make(set_("spec.rollout.pod", {"serviceAccountName": "vllm", "nodeSelector": {"pool": "serving"}}))
    dep = build_rollout_deployment(job, replicas=1, config_hash="h")
    spec = dep["spec"]["template"]["spec"]
    assert spec["automountServiceAccountToken"] is False
    assert (spec["serviceAccountName"], spec["nodeSelector"]) == ("vllm", {"pool": "serving"})


def test_the_pod_block_passes_the_crd_schema_and_cel() -> None:
    from mtp_api import validation

    body = job_manifest()
    body["spec"]["trainer"]["pod"] = POD_BLOCK
    body["spec"]["rollout"]["pod"] = {"tolerations": [{"key": "serving", "operator": "Exists"}]}
    assert validation.validate_object(body).ok
    body["spec"]["trainer"]["pod"] = {
        "env": [{"name": "X", "value": "1", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}]
    }
    assert [e.message for e in validation.validate_object(body).errors] == ["set value or valueFrom, not both"]
