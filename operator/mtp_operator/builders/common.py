"""Pieces shared by several builders: metadata, owner references, the pod security context."""

from __future__ import annotations

from typing import Any

from mtp_api import types as t
from mtp_operator import names


class BuildError(ValueError):
    """The spec passed the schema but cannot be turned into children (reported as InvalidSpec)."""


def owner_reference(job: t.MTPTrainingJob) -> dict[str, Any] | None:
    """The job as controller owner, or None when the job has no uid yet (``mtpjob render``)."""
    extra = job.metadata.model_extra or {}
    uid = extra.get("uid")
    if not uid:
        return None
    return {
        "apiVersion": t.API_VERSION,
        "kind": t.KIND,
        "name": job.metadata.name,
        "uid": uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def metadata(job: t.MTPTrainingJob, name: str, component: str) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "labels": names.labels(job, component)}
    if names.job_annotations(job):
        meta["annotations"] = names.job_annotations(job)
    if job.metadata.namespace:
        meta["namespace"] = job.metadata.namespace
    ref = owner_reference(job)
    if ref is not None:
        meta["ownerReferences"] = [ref]
    return meta


def pod_security_context() -> dict[str, Any]:
    """Non-root by default: both images run as uid 1000 (see images/)."""
    return {
        "runAsNonRoot": True,
        "runAsUser": 1000,
        "runAsGroup": 1000,
        "fsGroup": 1000,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def container_security_context() -> dict[str, Any]:
    return {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}


def resources(spec: t.Resources, gpus: int) -> dict[str, Any]:
    """The user's requests/limits plus ``nvidia.com/gpu`` (requests must equal limits for GPUs)."""
    requests = {k: v for k, v in spec.requests.items()}
    limits = {k: v for k, v in spec.limits.items()}
    if gpus > 0:
        requests["nvidia.com/gpu"] = gpus
        limits["nvidia.com/gpu"] = gpus
    out: dict[str, Any] = {}
    if requests:
        out["requests"] = requests
    if limits:
        out["limits"] = limits
    return out


def shm_volume() -> tuple[dict[str, Any], dict[str, Any]]:
    """``/dev/shm`` as RAM: NCCL and vLLM's workers exchange tensors there; the 64 MiB default breaks them."""
    return {"name": "dshm", "emptyDir": {"medium": "Memory"}}, {"name": "dshm", "mountPath": "/dev/shm"}


def config_volume(job: t.MTPTrainingJob) -> tuple[dict[str, Any], dict[str, Any]]:
    return (
        {"name": "job-config", "configMap": {"name": names.config_map(job)}},
        {"name": "job-config", "mountPath": names.CONFIG_MOUNT_DIR, "readOnly": True},
    )


def pvc_volume(name: str, ref: t.VolumeRef, read_only: bool = False) -> tuple[dict[str, Any], dict[str, Any]]:
    mount: dict[str, Any] = {"name": name, "mountPath": ref.mount_path}
    if ref.sub_path:
        mount["subPath"] = ref.sub_path
    if read_only:
        mount["readOnly"] = True
    return {"name": name, "persistentVolumeClaim": {"claimName": ref.claim_name, "readOnly": read_only}}, mount


def model_source_volume(job: t.MTPTrainingJob) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """The source checkpoint's PVC, mounted read-only at ``names.MODEL_MOUNT_DIR``."""
    pvc = job.spec.model.source.pvc
    if pvc is None:
        return None
    return (
        {"name": "model-source", "persistentVolumeClaim": {"claimName": pvc.claim_name, "readOnly": True}},
        {"name": "model-source", "mountPath": names.MODEL_MOUNT_DIR, "readOnly": True},
    )


def customize_pod(template: dict[str, Any], custom: t.PodCustomization | None) -> dict[str, Any]:
    """Apply a role's ``pod`` block to a pod template, in place; the operator's own entries win.

    Labels and annotations the operator sets, env variables it sets, volumes it names and mount paths it
    uses are never replaced (the user's entry is dropped); scheduling fields the operator does not set
    (node selector, tolerations, affinity, priority class, scheduler, pull secrets, service account) are
    the user's. Only the first container (the workload) gets the env and mounts."""
    if custom is None:
        return template
    meta, spec = template["metadata"], template["spec"]
    meta["labels"] = custom.labels | meta.get("labels", {})
    meta["annotations"] = custom.annotations | meta.get("annotations", {})
    scheduling = {
        "nodeSelector": dict(custom.node_selector) or None,
        "tolerations": [x.wire() for x in custom.tolerations] or None,
        "affinity": custom.affinity,
        "priorityClassName": custom.priority_class_name,
        "schedulerName": custom.scheduler_name,
        "imagePullSecrets": [{"name": n} for n in custom.image_pull_secrets] or None,
        "serviceAccountName": custom.service_account_name,
    }
    for key, value in scheduling.items():
        if value is not None and key not in spec:
            spec[key] = value
    own_volumes = {v["name"] for v in spec.get("volumes", [])}
    spec["volumes"] = spec.get("volumes", []) + [v for v in custom.volumes if v.get("name") not in own_volumes]
    main = spec["containers"][0]
    own_env = {e["name"] for e in main.get("env", [])}
    extra_env = [e.wire() for e in custom.env if e.name not in own_env]
    if extra_env:
        main["env"] = main.get("env", []) + extra_env
    if custom.env_from:
        main["envFrom"] = [e.wire() for e in custom.env_from]
    own_paths = {m["mountPath"] for m in main.get("volumeMounts", [])}
    extra_mounts = [m.wire() for m in custom.volume_mounts if m.mount_path not in own_paths]
    if extra_mounts:
        main["volumeMounts"] = main.get("volumeMounts", []) + extra_mounts
    return template
