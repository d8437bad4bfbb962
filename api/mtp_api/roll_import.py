"""Convert a ROLL pipeline YAML (alibaba/ROLL) into an MTPTrainingJob manifest.

Teams moving off a hand-written ROLL launch script bring their pipeline config with them. This
maps what has an equivalent (workers ``actor_train``/``sft_train`` and ``actor_infer``, Megatron
``strategy_config``, ``mtp_training_mode`` at the worker level or inside ``strategy_config``,
vLLM ``speculative_config``, ``rewards``, ``device_mapping`` strings such as
``list(range(0,32))``) after resolving hydra ``${var}`` and ``${oc.env:NAME,default}``
interpolation, and lists every key it read but could not map, so nothing is dropped silently.
"""

from __future__ import annotations

import ast
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mtp_api import types as t

_INTERP = re.compile(r"\$\{([^${}]+)\}")
_MISSING = object()

# Keys that configure ROLL's own process (logging, trackers, hydra) and have no job-level meaning.
_IGNORED_TOP = {
    "hydra", "defaults", "logging_dir", "output_dir", "track_with", "tracker_kwargs", "logging_steps",
    "system_envs", "checkpoint_config", "resume_from_checkpoint", "num_gpus_per_node", "exp_name",
}  # fmt: skip

_DTYPES = {"bf16": "bfloat16", "bfloat16": "bfloat16", "fp16": "float16", "float16": "float16",
           "fp32": "float32", "float32": "float32"}  # fmt: skip


class RollImportError(ValueError):
    """The ROLL file cannot be converted at all (unreadable, no training worker)."""


@dataclass
class ImportResult:
    manifest: dict[str, Any]
    unmapped: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


# ------------------------------------------------------------------------------------ hydra


def _lookup(root: dict[str, Any], dotted: str) -> Any:
    node: Any = root
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return _MISSING
        node = node[part]
    return node


def resolve_interpolations(root: dict[str, Any], notes: list[str]) -> dict[str, Any]:
    """Resolve ``${a.b}`` and ``${oc.env:NAME[,default]}`` the way OmegaConf does for the cases
    ROLL configs use. Unresolvable references are kept verbatim and noted."""

    def one(expr: str, depth: int) -> Any:
        if expr.startswith("oc.env:"):
            name, _, default = expr[len("oc.env:") :].partition(",")
            value = os.environ.get(name.strip())
            if value is None:
                if not default:
                    notes.append(f"${{{expr}}}: environment variable {name} is unset and has no default")
                    return "${" + expr + "}"
                value = default.strip()
            return value
        found = _lookup(root, expr.strip())
        if found is _MISSING:
            notes.append(f"${{{expr}}}: no such key in the file")
            return "${" + expr + "}"
        return walk(found, depth + 1)

    def walk(node: Any, depth: int = 0) -> Any:
        if depth > 20:
            raise RollImportError("interpolation loop: a ${...} reference refers back to itself")
        if isinstance(node, dict):
            return {k: walk(v, depth) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v, depth) for v in node]
        if isinstance(node, str):
            whole = _INTERP.fullmatch(node.strip())
            if whole:
                return one(whole.group(1), depth)
            return _INTERP.sub(lambda m: str(one(m.group(1), depth)), node)
        return node

    return walk(root)


def parse_device_mapping(value: Any) -> list[int]:
    """ROLL writes device_mapping as ``list(range(0,32))``, ``"[0, 1, 2]"`` or a real list."""
    if isinstance(value, list):
        return [int(v) for v in value]
    if not isinstance(value, str):
        raise RollImportError(f"device_mapping: expected a string or list, got {value!r}")
    text = value.strip()
    m = re.fullmatch(r"list\(\s*range\(\s*(-?\d+)\s*(?:,\s*(-?\d+)\s*)?(?:,\s*(-?\d+)\s*)?\)\s*\)", text)
    if m:
        a, b, c = m.groups()
        args = [int(a)] if b is None else [int(a), int(b)] + ([int(c)] if c else [])
        return list(range(*args))
    try:
        parsed = ast.literal_eval(text)
    except (ValueError, SyntaxError) as exc:
        raise RollImportError(
            f"device_mapping {value!r}: expected list(range(a,b)) or a literal list like [0, 1]"
        ) from exc
    if not isinstance(parsed, list | tuple):
        raise RollImportError(f"device_mapping {value!r}: expected a list of GPU indices")
    return [int(v) for v in parsed]


# ------------------------------------------------------------------------------------ reading


class _Reader:
    """Reads a nested config while recording which leaves were used, to report the rest."""

    def __init__(self, root: dict[str, Any]):
        self.root = root
        self.used: set[str] = set()

    def get(self, dotted: str, default: Any = None) -> Any:
        value = _lookup(self.root, dotted)
        if value is _MISSING:
            return default
        self.used.add(dotted)
        return value

    def mark(self, dotted: str) -> None:
        self.used.add(dotted)

    def leftovers(self) -> list[str]:
        out: list[str] = []

        def walk(node: Any, prefix: str) -> None:
            if prefix in self.used or prefix.split(".")[0] in _IGNORED_TOP:
                return
            if isinstance(node, dict) and node:
                for k, v in node.items():
                    walk(v, f"{prefix}.{k}" if prefix else str(k))
            else:
                out.append(f"{prefix} = {node!r}")

        walk(self.root, "")
        return out


def _name(raw: Any, fallback: str) -> str:
    text = re.sub(r"[^a-z0-9-]+", "-", str(raw or fallback).lower()).strip("-")
    text = text[:40].strip("-")
    return text or "roll-import"


def _family(model_ref: str) -> tuple[str, str | None]:
    low = model_ref.lower()
    if "qwen3-next" in low or "qwen3_next" in low:
        return t.ModelFamily.QWEN3_NEXT.value, None
    if re.search(r"qwen3[._-]?5", low):
        if re.search(r"a\d+b|moe", low):
            return t.ModelFamily.QWEN3_5_MOE.value, None
        return t.ModelFamily.QWEN3_5.value, None
    return t.ModelFamily.QWEN3_5.value, f"model family not recognised from {model_ref!r}; assumed qwen3_5"


def _source(model_ref: str) -> tuple[dict[str, Any], str | None]:
    if model_ref.startswith("/") or model_ref.startswith("."):
        return {"path": model_ref}, (
            f"model {model_ref!r} is a local path: kept as source.path, which must exist inside the trainer "
            "image; use source.pvc {claimName, path} if it lives on a volume"
        )
    if re.fullmatch(r"[A-Za-z0-9][\w.\-]*/[\w.\-]+", model_ref):
        return {"huggingFace": {"id": model_ref}}, None
    raise RollImportError(f"pretrain {model_ref!r}: neither a path nor a Hugging Face id (org/name)")


def _mtp_layers_from_checkpoint(model_ref: str, base: Path) -> int | None:
    from mtp_api.validation import read_checkpoint_mtp_layers

    p = Path(model_ref)
    p = p if p.is_absolute() else base / p
    return read_checkpoint_mtp_layers(p) if p.is_dir() else None


# ------------------------------------------------------------------------------------ convert


def convert(roll: dict[str, Any], *, base_dir: Path | None = None) -> ImportResult:
    """Map one ROLL pipeline config (already parsed) onto an MTPTrainingJob manifest."""
    notes: list[str] = []
    cfg = resolve_interpolations(roll, notes)
    r = _Reader(cfg)
    worker = "actor_train" if "actor_train" in cfg else "sft_train" if "sft_train" in cfg else None
    if worker is None:
        raise RollImportError("no training worker: expected an actor_train (RLVR) or sft_train (SFT) section")
    has_rewards = isinstance(cfg.get("rewards"), dict) and bool(cfg["rewards"])
    pipeline = "rlvr" if worker == "actor_train" and (has_rewards or "actor_infer" in cfg) else "sft"
    w = worker
    sc = f"{w}.strategy_args.strategy_config"

    strategy_name = r.get(f"{w}.strategy_args.strategy_name")
    if strategy_name not in (None, "megatron_train"):
        notes.append(f"{w}.strategy_args.strategy_name is {strategy_name!r}: the trainer uses Megatron-core")

    model_ref = r.get("pretrain") or r.get(f"{w}.model_args.model_name_or_path")
    if not model_ref:
        raise RollImportError("no model: set pretrain or actor_train.model_args.model_name_or_path")
    source, note = _source(str(model_ref))
    notes += [note] if note else []
    family, note = _family(str(model_ref))
    notes += [note] if note else []
    model: dict[str, Any] = {"source": source, "family": family}
    dtype = r.get(f"{w}.model_args.dtype")
    if dtype is not None:
        if str(dtype) not in _DTYPES:
            notes.append(f"{w}.model_args.dtype {dtype!r} unknown; left at the default")
        else:
            model["dtype"] = _DTYPES[str(dtype)]
    mtp_layers = r.get(f"{sc}.mtp_num_layers")
    if mtp_layers is None:
        mtp_layers = _mtp_layers_from_checkpoint(str(model_ref), base_dir or Path.cwd())
    if mtp_layers is not None:
        model["mtpNumLayers"] = int(mtp_layers)

    # ---- trainer layout
    gpn = int(r.get("num_gpus_per_node", 8) or 8)
    devices = parse_device_mapping(r.get(f"{w}.device_mapping")) if r.get(f"{w}.device_mapping") is not None else []
    n_gpus = len(devices) or gpn
    replicas = max(1, math.ceil(n_gpus / gpn))
    per_replica = min(n_gpus, gpn)
    tp = int(r.get(f"{sc}.tensor_model_parallel_size", 1) or 1)
    pp = int(r.get(f"{sc}.pipeline_model_parallel_size", 1) or 1)
    for key in ("context_parallel_size", "expert_model_parallel_size", "virtual_pipeline_model_parallel_size"):
        v = r.get(f"{sc}.{key}")
        if v not in (None, 1):
            notes.append(f"{sc}.{key}={v}: not supported by the trainer yet; dropped")
    strategy: dict[str, Any] = {"tensorParallelSize": tp, "pipelineParallelSize": pp}
    if r.get(f"{sc}.sequence_parallel") is not None:
        strategy["sequenceParallel"] = bool(r.get(f"{sc}.sequence_parallel")) and tp > 1
    gran = r.get(f"{sc}.recompute_granularity")
    if gran is not None:
        strategy["recompute"] = gran if gran in ("full", "selective") else "none"
    if r.get(f"{sc}.use_distributed_optimizer") is not None:
        strategy["distributedOptimizer"] = bool(r.get(f"{sc}.use_distributed_optimizer"))
    for flag in ("bf16", "fp16"):
        r.get(f"{sc}.{flag}")

    # mtp_training_mode lives either on the worker or inside strategy_config
    mode = r.get(f"{w}.mtp_training_mode", _MISSING)
    mode = r.get(f"{sc}.mtp_training_mode") if mode is _MISSING else mode
    scale = r.get(f"{w}.mtp_loss_scaling_factor", _MISSING)
    scale = r.get(f"{sc}.mtp_loss_scaling_factor") if scale is _MISSING else scale
    mtp: dict[str, Any] = {}
    if mode is not None:
        if mode not in ("disabled", "standalone", "joint"):
            notes.append(f"mtp_training_mode {mode!r} has no equivalent (disabled, standalone, joint); left disabled")
        else:
            mtp["trainingMode"] = mode
    if scale is not None:
        mtp["lossScalingFactor"] = float(scale)

    # ---- hyper-parameters
    ta = f"{w}.training_args"
    micro = int(r.get(f"{ta}.per_device_train_batch_size", 1) or 1)
    accum = int(r.get(f"{ta}.gradient_accumulation_steps", 1) or 1)
    dp = max(1, (replicas * per_replica) // (tp * pp))
    hp: dict[str, Any] = {
        "microBatchSize": micro,
        "gradientAccumulationSteps": accum,
        "globalBatchSize": micro * dp * accum,
    }
    for src, dst, cast in (
        (f"{ta}.learning_rate", "learningRate", float),
        (f"{ta}.weight_decay", "weightDecay", float),
        (f"{ta}.warmup_steps", "warmupSteps", int),
        ("max_steps", "maxSteps", int),
        ("save_steps", "saveSteps", int),
        ("eval_steps", "evalSteps", int),
        ("seed", "seed", int),
    ):
        v = r.get(src)
        if v is not None:
            hp[dst] = cast(v)
    if r.get(f"{ta}.lr_scheduler_type") == "constant" and "learningRate" in hp:
        hp["minLearningRate"] = hp["learningRate"]
    seq = r.get("sequence_length")
    if seq is None and r.get("prompt_length") is not None:
        seq = int(r.get("prompt_length")) + int(r.get("response_length", 0) or 0)
    if seq is not None:
        hp["seqLength"] = int(seq)
    if r.get(f"{ta}.num_train_epochs") is not None and "maxSteps" not in hp:
        notes.append(f"{ta}.num_train_epochs has no equivalent; set spec.trainer.hyperparameters.maxSteps")

    files = r.get(f"{w}.data_args.file_name")
    files = [files] if isinstance(files, str) else list(files or [])
    if not files:
        notes.append(f"{w}.data_args.file_name missing: trainFiles left as a placeholder to edit")
        files = ["/data/train.jsonl"]
    keyed = [r.get("prompt_key"), r.get("response_key")]
    fmt = "prompt_response" if any(keyed) else "messages"
    if r.get(f"{w}.use_sequence_packing") is False:
        notes.append(f"{w}.use_sequence_packing is false: the trainer always packs sequences")
    r.get(f"{w}.data_args.messages")
    data: dict[str, Any] = {"trainFiles": files, "format": fmt}
    val = r.get("validation.data_args.file_name")
    if val:
        data["validationFiles"] = [val] if isinstance(val, str) else list(val)
    trainer: dict[str, Any] = {
        "replicas": replicas,
        "gpusPerReplica": per_replica,
        "strategy": strategy,
        "hyperparameters": hp,
        "data": data,
    }
    if mtp:
        trainer["mtp"] = mtp

    spec: dict[str, Any] = {"pipeline": pipeline, "model": model, "trainer": trainer}

    # ---- rollout (actor_infer)
    if "actor_infer" in cfg:
        isc = "actor_infer.strategy_args.strategy_config"
        engine = r.get("actor_infer.strategy_args.strategy_name")
        if engine not in (None, "vllm"):
            notes.append(f"actor_infer.strategy_args.strategy_name is {engine!r}: the rollout uses vLLM")
        itp = int(r.get(f"{isc}.tensor_parallel_size", 1) or 1)
        per_worker = int(r.get("actor_infer.num_gpus_per_worker", itp) or itp)
        per_worker = max(per_worker, itp)
        idev = r.get("actor_infer.device_mapping")
        infer_devices = parse_device_mapping(idev) if idev is not None else []
        n_infer = len(infer_devices) or per_worker
        if set(infer_devices) & set(devices):
            notes.append(
                "actor_infer shares GPUs with the trainer in ROLL (colocation); here the rollout Deployment "
                f"gets its own {n_infer} GPUs: lower spec.rollout.replicas to use fewer"
            )
        rollout: dict[str, Any] = {
            "replicas": max(1, n_infer // per_worker),
            "tensorParallelSize": itp,
            "gpusPerReplica": per_worker,
        }
        gmu = r.get(f"{isc}.gpu_memory_utilization")
        if gmu is not None:
            rollout["gpuMemoryUtilization"] = float(gmu)
        spec_cfg = r.get(f"{isc}.speculative_config")
        if isinstance(spec_cfg, dict):
            method = spec_cfg.get("method", "mtp")
            if method != "mtp":
                notes.append(f"{isc}.speculative_config.method {method!r}: only mtp drafting is supported")
            rollout["speculative"] = {
                "method": "mtp" if method == "mtp" else "none",
                "numSpeculativeTokens": int(spec_cfg.get("num_speculative_tokens", 1)),
            }
        else:
            rollout["speculative"] = {"method": "none"}
        ga = "actor_infer.generating_args"
        gen: dict[str, Any] = {}
        if r.get(f"{ga}.max_new_tokens") is not None:
            gen["maxTokens"] = int(r.get(f"{ga}.max_new_tokens"))
        if r.get(f"{ga}.temperature") is not None:
            gen["temperature"] = float(r.get(f"{ga}.temperature"))
        if r.get(f"{ga}.top_p") is not None:
            gen["topP"] = float(r.get(f"{ga}.top_p"))
        if r.get("prompt_length") is not None:
            gen["maxModelLen"] = int(r.get("prompt_length")) + int(r.get("response_length", 0) or 0)
        if gen:
            rollout["generation"] = gen
        spec["rollout"] = rollout

    # ---- rewards
    if has_rewards:
        mapped = False
        for key, worker_cfg in cfg["rewards"].items():
            cls = str((worker_cfg or {}).get("worker_cls", ""))
            if key == "math" or "MathRule" in cls:
                r.mark(f"rewards.{key}")
                mapped = True
            else:
                notes.append(f"rewards.{key} ({cls or 'no worker_cls'}): only the math reward is supported; dropped")
                r.mark(f"rewards.{key}")
        if mapped:
            spec["reward"] = {"type": "math"}

    for k in ("adv_estimator", "rollout_batch_size", "num_return_sequences_in_group", "ppo_epochs"):
        if r.get(k) is not None:
            notes.append(f"{k}={r.get(k)!r}: RL algorithm settings arrive with the RLVR loop; not mapped yet")

    manifest = {
        "apiVersion": t.API_VERSION,
        "kind": t.KIND,
        "metadata": {"name": _name(cfg.get("exp_name"), "roll-import")},
        "spec": spec,
    }
    return ImportResult(manifest=manifest, unmapped=r.leftovers(), notes=notes)


def convert_file(path: str | Path) -> ImportResult:
    p = Path(path)
    if not p.is_file():
        raise RollImportError(f"{p}: no such file; pass a ROLL pipeline YAML")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as exc:
        raise RollImportError(f"{p}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise RollImportError(f"{p}: expected a mapping at the top level")
    return convert(data, base_dir=p.resolve().parent)
