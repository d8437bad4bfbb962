"""The job's ConfigMap: the file the trainer reads (``job.yaml``) and the rollout's server plan."""

from __future__ import annotations

import json
from typing import Any

import yaml

from mtp_api import types as t
from mtp_operator import names
from mtp_operator.builders import common
from mtp_operator.builders.model_path import rollout_model_path
from mtp_rollout.interface import Schedule, server_plan


def job_document(job: t.MTPTrainingJob) -> dict[str, Any]:
    """The job as the trainer reads it: apiVersion, kind, name/namespace and the defaulted spec."""
    meta: dict[str, Any] = {"name": job.metadata.name}
    if job.metadata.namespace:
        meta["namespace"] = job.metadata.namespace
    return {"apiVersion": t.API_VERSION, "kind": t.KIND, "metadata": meta, "spec": job.spec.wire()}


def build_config_map(job: t.MTPTrainingJob, schedule: Schedule | None = None) -> dict[str, Any]:
    # libyaml's dumper when present: the pure-Python one was most of a reconcile's CPU time.
    dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
    data = {names.CONFIG_FILE: yaml.dump(job_document(job), Dumper=dumper, sort_keys=True)}
    if job.spec.rollout is not None:
        plan = server_plan(job, rollout_model_path(job), schedule=schedule)
        data[names.ROLLOUT_PLAN_FILE] = json.dumps({"args": plan.args, "env": plan.env}, indent=2, sort_keys=True)
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": common.metadata(job, names.config_map(job), names.COMPONENT_CONFIG),
        "data": data,
    }
