"""Where each workload finds its model: the one rule shared by the trainer, the rollout and the ConfigMap."""

from __future__ import annotations

from mtp_api import contracts
from mtp_api import types as t
from mtp_operator import names
from mtp_operator.builders.common import BuildError


def output_dir(job: t.MTPTrainingJob) -> str:
    """The trainer's ``--output-dir``: the checkpoints volume when there is one, else an emptyDir."""
    ckpt = job.spec.trainer.volumes.checkpoints
    return ckpt.mount_path if ckpt is not None else names.DEFAULT_OUTPUT_DIR


def source_model_path(job: t.MTPTrainingJob) -> str | None:
    """The starting checkpoint as a path or hub id; None for a tiny model made in code."""
    src = job.spec.model.source
    if src.pvc is not None:
        return contracts.pvc_model_path(src.pvc.path)
    if src.hugging_face is not None:
        return src.hugging_face.id
    if src.path is not None:
        return src.path
    return None


def serves_trainer_export(job: t.MTPTrainingJob) -> bool:
    """SFT serves what it trained; so does any job whose model only exists once the trainer made it.

    rlvr always does: the trainer exports its initial policy (after any warm-up) before the first RL
    step, so the rollout starts from exactly the weights rank 0 holds, and weight sync moves it on.
    """
    return job.spec.pipeline in (t.Pipeline.SFT, t.Pipeline.RLVR) or job.spec.model.source.tiny is not None


def rollout_model_path(job: t.MTPTrainingJob) -> str:
    """What vLLM loads: the trainer's Hugging Face export ``<checkpoints>/hf``, or the source model.

    The export is only reachable from the rollout pods through the shared checkpoints volume, so a
    job that needs the export and has no such volume cannot be served.
    """
    if serves_trainer_export(job):
        ckpt = job.spec.trainer.volumes.checkpoints
        if ckpt is None:
            raise BuildError(
                "spec.rollout serves the trainer's export, which the rollout pods can only read from "
                "spec.trainer.volumes.checkpoints (a ReadWriteMany claim); add it or remove spec.rollout"
            )
        return f"{ckpt.mount_path.rstrip('/')}/{contracts.EXPORT_SUBDIR}"
    path = source_model_path(job)
    assert path is not None  # tiny sources serve the export, above
    return path


def weight_sync_dir(job: t.MTPTrainingJob) -> str:
    """rlvr: where rank 0 writes each weight version for the rollout to load (``MTP_WEIGHT_SYNC_DIR``).

    On the checkpoints volume, which the rollout mounts at the same path, so a path the trainer names
    in an update is the same path in every rollout pod.
    """
    ckpt = job.spec.trainer.volumes.checkpoints
    if ckpt is None:
        raise BuildError(
            "pipeline rlvr syncs weights to the rollout through spec.trainer.volumes.checkpoints "
            "(a ReadWriteMany claim mounted by trainer and rollout); add it"
        )
    return f"{ckpt.mount_path.rstrip('/')}/{contracts.WEIGHT_SYNC_SUBDIR}"
