"""Validate MTPTrainingJob manifests the way `kubectl apply` would, plus what CEL cannot say.

Order, as on the API server: structural defaulting, then the openAPIV3Schema (with kubectl's
strict field validation, so an unknown field is an error), then the CEL rules of every object.
After that come the semantic checks that need more than one manifest's worth of logic (batch
arithmetic, layer counts, a readable checkpoint's config.json) and the warnings.

Every finding names a field path (``spec.trainer.strategy.tensorParallelSize``) and says what is
allowed, because a platform user fixes YAML by hand.
"""

from __future__ import annotations

import copy
import json
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import celpy
import jsonschema
from pydantic import ValidationError

from mtp_api import crd as crd_gen
from mtp_api import types as t
from mtp_api.inputs import InputError, kind_of, read_json, read_yaml_documents

# Head sizes vLLM 0.32's CPU attention backend serves (smaller ones start, then fail on the first request);
# vllm/v1/attention/backends/cpu_attn.py, CPUAttentionBackend.get_supported_head_sizes().
VLLM_CPU_HEAD_DIMS = frozenset({32, 64, 80, 96, 112, 128, 160, 192, 224, 256, 512})
# Where Hugging Face configs of MTP families declare their MTP depth.
MTP_LAYER_KEYS = ("mtp_num_hidden_layers", "num_nextn_predict_layers", "mtp_num_layers")


@dataclass(frozen=True)
class Finding:
    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


@dataclass
class Report:
    errors: list[Finding] = field(default_factory=list)
    warnings: list[Finding] = field(default_factory=list)
    job: t.MTPTrainingJob | None = None

    @property
    def ok(self) -> bool:
        return not self.errors


class ManifestError(InputError):
    """A manifest that cannot be read at all (missing file, not UTF-8, broken YAML, wrong shape)."""


# ------------------------------------------------------------------------------------ loading


def load_documents(path: str | Path) -> list[dict[str, Any]]:
    """Every non-empty YAML document in a file, each checked to be a mapping."""
    p = Path(path)
    try:
        docs = read_yaml_documents(p, "an MTPTrainingJob YAML manifest")
    except InputError as exc:
        raise ManifestError(str(exc)) from None
    if not docs:
        raise ManifestError(f"{p}: the file holds no YAML document")
    for i, doc in enumerate(docs):
        if not isinstance(doc, dict):
            raise ManifestError(f"{p}: document {i} is {kind_of(doc)}, expected a mapping (apiVersion, kind, ...)")
    return docs


# ------------------------------------------------------------------------------------ schema


@lru_cache(maxsize=1)
def open_api_schema() -> dict[str, Any]:
    return crd_gen.open_api_schema()


def apply_defaults(schema: dict[str, Any], value: Any) -> Any:
    """Structural defaulting as the API server does it: fill absent properties that have a
    default, then recurse, so that a defaulted ``{}`` object gets its own defaults too."""
    if isinstance(value, dict) and "properties" in schema:
        out = dict(value)
        for name, child in schema["properties"].items():
            if name not in out and "default" in child:
                out[name] = copy.deepcopy(child["default"])
            if name in out:
                out[name] = apply_defaults(child, out[name])
        return out
    if isinstance(value, dict) and isinstance(schema.get("additionalProperties"), dict):
        return {k: apply_defaults(schema["additionalProperties"], v) for k, v in value.items()}
    if isinstance(value, list) and "items" in schema:
        return [apply_defaults(schema["items"], v) for v in value]
    return value


def _to_jsonschema(node: Any) -> Any:
    """OpenAPI v3 structural schema -> JSON Schema draft 4, with unknown fields forbidden
    (kubectl's default ``--validate=strict``)."""
    if isinstance(node, list):
        return [_to_jsonschema(v) for v in node]
    if not isinstance(node, dict):
        return node
    out = {k: _to_jsonschema(v) for k, v in node.items() if not k.startswith("x-kubernetes-") and k != "default"}
    if node.get("x-kubernetes-int-or-string"):
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if "properties" in node and "additionalProperties" not in node:
        out["additionalProperties"] = False
    return out


@lru_cache(maxsize=1)
def _validator() -> jsonschema.Draft4Validator:
    schema = _to_jsonschema(open_api_schema())
    schema["properties"]["metadata"] = {"type": "object"}
    return jsonschema.Draft4Validator(schema)


def _path(parts: Any) -> str:
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out or "<root>"


def _show(value: Any, limit: int = 80) -> str:
    """A value as JSON for a message, shortened: a user's mistake may be a whole pasted file."""
    text = json.dumps(value, default=str)
    return text if len(text) <= limit else f"{text[: limit - 3]}..."


def _describe(err: jsonschema.ValidationError) -> Finding:
    path = _path(err.absolute_path)
    v, s = err.validator, err.schema
    if v == "additionalProperties":
        extra = sorted(set(err.instance) - set(s.get("properties", {})))
        allowed = ", ".join(sorted(s.get("properties", {})))
        return Finding(
            ".".join(filter(None, [path if path != "<root>" else "", extra[0]])),
            f"unknown field {extra[0]!r}; allowed fields here: {allowed}",
        )
    if v == "required":
        missing = [r for r in s["required"] if r not in err.instance]
        name = missing[0] if missing else "?"
        return Finding(f"{path}.{name}" if path != "<root>" else name, "Required value: this field must be set")
    if v == "enum":
        allowed = ", ".join(json.dumps(x) for x in s["enum"])
        return Finding(path, f"Unsupported value {_show(err.instance)}: supported values: {allowed}")
    if v in ("type", "anyOf"):
        want = s.get("type") or "integer or string"
        return Finding(path, f"Invalid value {_show(err.instance)}: must be of type {want}")
    if v == "minimum":
        op = ">" if s.get("exclusiveMinimum") else ">="
        return Finding(path, f"Invalid value {err.instance!r}: must be {op} {s['minimum']}")
    if v == "maximum":
        op = "<" if s.get("exclusiveMaximum") else "<="
        return Finding(path, f"Invalid value {err.instance!r}: must be {op} {s['maximum']}")
    if v == "pattern":
        return Finding(path, f"Invalid value {_show(err.instance)}: must match {s['pattern']}")
    if v == "minLength":
        return Finding(path, f"Invalid value {_show(err.instance)}: must be at least {s['minLength']} characters")
    if v == "maxLength":
        return Finding(path, f"Too long: must have at most {s['maxLength']} characters")
    if v == "minItems":
        return Finding(path, f"Required value: must have at least {s['minItems']} item(s)")
    if v == "maxItems":
        return Finding(path, f"Too many: must have at most {s['maxItems']} items")
    if v == "multipleOf":
        return Finding(path, f"Invalid value {err.instance!r}: must be a multiple of {s['multipleOf']}")
    return Finding(path, err.message)


def schema_errors(obj: dict[str, Any]) -> list[Finding]:
    errs = sorted(_validator().iter_errors(obj), key=lambda e: list(map(str, e.absolute_path)))
    return [_describe(e) for e in errs]


# ------------------------------------------------------------------------------------ CEL


@lru_cache(maxsize=256)
def _cel_program(rule: str) -> Any:
    env = celpy.Environment()
    return env.program(env.compile(rule))


def _walk_cel(schema: dict[str, Any], value: Any, old: Any, path: str, out: list[Finding]) -> None:
    for rule in schema.get("x-kubernetes-validations", []):
        uses_old = "oldSelf" in rule["rule"]
        if uses_old and old is None:
            continue  # transition rules run on update only, as on the API server
        activation = {"self": celpy.json_to_cel(value)}
        if uses_old:
            activation["oldSelf"] = celpy.json_to_cel(old)
        try:
            result = _cel_program(rule["rule"]).evaluate(activation)
        except Exception as exc:  # noqa: BLE001 - a rule that cannot be evaluated is a finding, not a crash
            out.append(Finding(path, f"rule could not be evaluated ({exc}): {rule['message']}"))
            continue
        if isinstance(result, Exception) or not bool(result):
            where = path + rule.get("fieldPath", "")
            out.append(Finding(where or "metadata.name", rule["message"]))
    if isinstance(value, dict):
        for name, child in schema.get("properties", {}).items():
            if name in value:
                sub_old = old.get(name) if isinstance(old, dict) else None
                _walk_cel(child, value[name], sub_old, f"{path}.{name}" if path else name, out)
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict):
            for k, v in value.items():
                _walk_cel(extra, v, None, f"{path}.{k}", out)
    elif isinstance(value, list) and "items" in schema:
        for i, v in enumerate(value):
            _walk_cel(schema["items"], v, None, f"{path}[{i}]", out)


def cel_errors(obj: dict[str, Any], old: dict[str, Any] | None = None) -> list[Finding]:
    out: list[Finding] = []
    _walk_cel(open_api_schema(), obj, old, "", out)
    return out


# ------------------------------------------------------------------------------------ semantics


def mtp_layers_in_config(cfg: dict[str, Any]) -> int | None:
    """MTP depth from a parsed config.json (top level or ``text_config``), None when undeclared."""
    text_config = cfg.get("text_config")
    for scope in (cfg, text_config if isinstance(text_config, dict) else {}):
        for key in MTP_LAYER_KEYS:
            value = scope.get(key)
            if isinstance(value, int) and not isinstance(value, bool):
                return value
    return None


def read_checkpoint_mtp_layers(model_dir: Path) -> int | None:
    """MTP depth from a checkpoint directory's config.json, None when there is none or it is undeclared.

    A config.json that exists but cannot be used (not UTF-8, not JSON, not an object) raises an
    InputError naming the file: the checkpoint is broken, and guessing would hide it."""
    cfg_path = model_dir / "config.json"
    if not cfg_path.is_file():
        return None
    cfg = read_json(cfg_path, "a Hugging Face config.json")
    if not isinstance(cfg, dict):
        raise InputError(f"{cfg_path}: holds {kind_of(cfg)}, expected a JSON object of model settings")
    return mtp_layers_in_config(cfg)


def fill_mtp_num_layers(obj: dict[str, Any], base_dir: Path) -> tuple[dict[str, Any], Finding | None]:
    """Where ``model.source.path`` names a readable checkpoint, take mtpNumLayers from it."""
    spec = obj.get("spec")
    model = spec.get("model") if isinstance(spec, dict) else None
    source = model.get("source") if isinstance(model, dict) else None
    src = source.get("path") if isinstance(source, dict) else None
    if not isinstance(src, str) or not src or "\x00" in src:
        return obj, None
    model_dir = Path(src) if Path(src).is_absolute() else base_dir / src
    try:
        found = read_checkpoint_mtp_layers(model_dir)
    except InputError as exc:
        return obj, Finding("spec.model.source.path", f"{exc}; fix or replace the checkpoint's config.json")
    except OSError as exc:  # a path too long for the file system, a directory we may not read
        return obj, Finding("spec.model.source.path", f"{src!r} cannot be read ({exc.strerror or exc})")
    if found is None:
        return obj, None
    assert isinstance(model, dict)  # src was found inside it
    given = model.get("mtpNumLayers")
    if given is not None and given != found:
        return obj, Finding(
            "spec.model.mtpNumLayers",
            f"is {given} but {model_dir}/config.json says {found}; remove the field or set it to {found}",
        )
    if given is None:
        obj = copy.deepcopy(obj)
        obj["spec"]["model"]["mtpNumLayers"] = found
    return obj, None


def semantic_checks(job: t.MTPTrainingJob) -> tuple[list[Finding], list[Finding]]:
    """Constraints that CEL cannot express well, and advice that is not an error."""
    errors: list[Finding] = []
    warnings: list[Finding] = []
    tr = job.spec.trainer
    dp = tr.data_parallel_size()
    if dp < 1:  # CEL says so too; the operator reaches here without CEL (typed body from the API server)
        errors.append(
            Finding(
                "spec.trainer.strategy",
                f"tensorParallelSize x pipelineParallelSize = "
                f"{tr.strategy.tensor_parallel_size * tr.strategy.pipeline_parallel_size} exceeds the "
                f"{tr.world_size()} trainer processes (replicas x gpusPerReplica); lower them or add GPUs",
            )
        )
        return errors, warnings
    for check in (_batch_findings, _tiny_model_findings, _rollout_findings, _mtp_findings):
        check(job, errors, warnings)
    from mtp_api.capabilities import capability_findings  # imports Finding from here

    cap_errors, cap_warnings = capability_findings(job)
    return errors + cap_errors, warnings + cap_warnings


def _batch_findings(job: t.MTPTrainingJob, errors: list[Finding], warnings: list[Finding]) -> None:
    """The global batch against micro batch x data parallel, and the save cadence."""
    hp = job.spec.trainer.hyperparameters
    dp = job.spec.trainer.data_parallel_size()
    per_step = hp.micro_batch_size * dp
    if hp.global_batch_size % per_step != 0:
        errors.append(
            Finding(
                "spec.trainer.hyperparameters.globalBatchSize",
                f"{hp.global_batch_size} is not a multiple of microBatchSize x data-parallel size "
                f"= {hp.micro_batch_size} x {dp} = {per_step}; use a multiple of {per_step}",
            )
        )
    elif (
        hp.gradient_accumulation_steps is not None and hp.gradient_accumulation_steps * per_step != hp.global_batch_size
    ):
        errors.append(
            Finding(
                "spec.trainer.hyperparameters.gradientAccumulationSteps",
                f"{hp.gradient_accumulation_steps} x microBatchSize x data-parallel size ({per_step}) != "
                f"globalBatchSize {hp.global_batch_size}; set it to {hp.global_batch_size // per_step} or remove it",
            )
        )
    if hp.save_steps > hp.max_steps:
        warnings.append(
            Finding("spec.trainer.hyperparameters.saveSteps", "exceeds maxSteps: only the final checkpoint is saved")
        )


def _tiny_model_findings(job: t.MTPTrainingJob, errors: list[Finding], warnings: list[Finding]) -> None:
    """A tiny model's shape against the parallel layout and vLLM's attention kernels."""
    spec = job.spec
    tr = spec.trainer
    tiny = spec.model.source.tiny
    if tiny is not None:
        pp = tr.strategy.pipeline_parallel_size
        if tiny.num_layers % pp != 0:
            errors.append(
                Finding(
                    "spec.trainer.strategy.pipelineParallelSize",
                    f"{pp} does not divide model.source.tiny.numLayers {tiny.num_layers}; use a divisor of it",
                )
            )
        tp = tr.strategy.tensor_parallel_size
        if tiny.num_key_value_heads % tp != 0:
            errors.append(
                Finding(
                    "spec.trainer.strategy.tensorParallelSize",
                    f"{tp} does not divide model.source.tiny.numKeyValueHeads {tiny.num_key_value_heads}",
                )
            )
        head_dim = tiny.hidden_size // tiny.num_attention_heads
        rollout = spec.rollout
        if rollout is not None and rollout.gpus_per_replica == 0 and head_dim not in VLLM_CPU_HEAD_DIMS:
            errors.append(
                Finding(
                    "spec.model.source.tiny.hiddenSize",
                    f"head dim hiddenSize/numAttentionHeads = {head_dim} is not one vLLM's CPU attention serves "
                    f"(rollout.gpusPerReplica: 0); use one of {', '.join(map(str, sorted(VLLM_CPU_HEAD_DIMS)))}",
                )
            )
        elif head_dim % 8 != 0:
            errors.append(
                Finding(
                    "spec.model.source.tiny.hiddenSize",
                    f"head dim hiddenSize/numAttentionHeads = {head_dim} must be a multiple of 8 (rotary halves)",
                )
            )


def _rollout_findings(job: t.MTPTrainingJob, errors: list[Finding], warnings: list[Finding]) -> None:
    """The rollout against the trainer's sequences and the model's MTP depth."""
    spec = job.spec
    hp = spec.trainer.hyperparameters
    if spec.rollout is not None:
        gen = spec.rollout.generation
        if hp.seq_length > gen.max_model_len and spec.pipeline == t.Pipeline.RLVR:
            warnings.append(
                Finding(
                    "spec.rollout.generation.maxModelLen",
                    f"{gen.max_model_len} < trainer seqLength {hp.seq_length}: rollouts cannot fill a training sequence",
                )
            )
        k = spec.rollout.speculative.max_k
        n = spec.model.mtp_num_layers or 0
        if spec.rollout.speculative.method == t.SpeculativeMethod.MTP and 0 < n < k:
            warnings.append(
                Finding(
                    "spec.rollout.speculative.numSpeculativeTokens",
                    f"{k} drafts from {n} MTP layer(s): vLLM reuses the last layer for the extra positions, "
                    "whose acceptance is usually lower",
                )
            )
        if spec.rollout.gpus_per_replica > 0 and spec.rollout.gpus_per_replica < spec.rollout.tensor_parallel_size:
            errors.append(Finding("spec.rollout.gpusPerReplica", "must be at least tensorParallelSize"))


def _mtp_findings(job: t.MTPTrainingJob, errors: list[Finding], warnings: list[Finding]) -> None:
    """MTP depth of the family, and training modes that are allowed but unusual for the pipeline."""
    spec = job.spec
    tr = spec.trainer
    n_mtp = spec.model.mtp_num_layers or 0
    if spec.model.family in t.TRAINER_FAMILIES and n_mtp > 1:
        errors.append(
            Finding(
                "spec.model.mtpNumLayers",
                f"{n_mtp}: {spec.model.family} checkpoints carry one MTP layer (its projection and norms are "
                "shared across depths); set 1 and draft more tokens with rollout.speculative.numSpeculativeTokens",
            )
        )
    mode = tr.mtp.training_mode
    if mode == t.MTPTrainingMode.STANDALONE and spec.pipeline == t.Pipeline.SFT:
        warnings.append(
            Finding(
                "spec.trainer.mtp.trainingMode",
                "standalone with sft is allowed but unusual: joint lets MTP shape the trunk during SFT",
            )
        )
    if mode == t.MTPTrainingMode.JOINT and spec.pipeline == t.Pipeline.RLVR:
        warnings.append(
            Finding(
                "spec.trainer.mtp.trainingMode",
                "joint with rlvr lets the MTP loss move the policy; standalone is the usual choice for RL",
            )
        )
    if mode == t.MTPTrainingMode.DISABLED and spec.rollout is not None:
        if spec.rollout.speculative.method == t.SpeculativeMethod.MTP:
            warnings.append(
                Finding(
                    "spec.trainer.mtp.trainingMode",
                    "disabled while the rollout drafts with MTP: the head will drift from the trained policy",
                )
            )


def _pydantic_findings(exc: ValidationError) -> list[Finding]:
    out = []
    for e in exc.errors():
        out.append(Finding(_path(e["loc"]), e["msg"]))
    return out


# ------------------------------------------------------------------------------------ entry


def validate_object(obj: dict[str, Any], old: dict[str, Any] | None = None, base_dir: Path | None = None) -> Report:
    """Validate one manifest; on success ``report.job`` holds the typed, defaulted object."""
    report = Report()
    if obj.get("apiVersion") != t.API_VERSION or obj.get("kind") != t.KIND:
        report.errors.append(
            Finding(
                "apiVersion/kind",
                f"got {_show(obj.get('apiVersion'))}/{_show(obj.get('kind'))}; expected {t.API_VERSION!r}/{t.KIND!r}",
            )
        )
        return report
    meta = obj.get("metadata")
    name = meta.get("name") if isinstance(meta, dict) else None
    if not isinstance(name, str) or not re.fullmatch(t.DNS_LABEL, name):
        report.errors.append(
            Finding(
                "metadata.name",
                "Required value: a lowercase RFC 1123 label (a-z, 0-9, '-'; starts and ends alphanumeric)",
            )
        )
        return report
    if base_dir is not None:
        obj, mismatch = fill_mtp_num_layers(obj, base_dir)
        if mismatch:
            report.errors.append(mismatch)
    defaulted = apply_defaults(open_api_schema(), obj)
    report.errors.extend(schema_errors(defaulted))
    if report.errors:
        return report
    report.errors.extend(cel_errors(defaulted, apply_defaults(open_api_schema(), old) if old else None))
    if report.errors:
        return report
    try:
        job = t.MTPTrainingJob.model_validate(defaulted)
    except ValidationError as exc:
        report.errors.extend(_pydantic_findings(exc))
        return report
    errors, warnings = semantic_checks(job)
    report.errors.extend(errors)
    report.warnings.extend(warnings)
    if not report.errors:
        report.job = job
    return report


def validate_file(path: str | Path) -> list[Report]:
    p = Path(path)
    return [validate_object(doc, base_dir=p.resolve().parent) for doc in load_documents(p)]


def load_job(path: str | Path) -> t.MTPTrainingJob:
    """The one valid MTPTrainingJob in a file, or a ManifestError listing every finding."""
    reports = validate_file(path)
    if len(reports) != 1:
        raise ManifestError(f"{path}: expected one MTPTrainingJob document, found {len(reports)}")
    report = reports[0]
    if report.job is None:
        raise ManifestError(f"{path} is not a valid MTPTrainingJob:\n" + "\n".join(f"  {e}" for e in report.errors))
    return report.job
