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

from mtp_api import types as t
from mtp_api.inputs import INT64_MAX, MAX_NODES, InputError, kind_of, read_yaml_documents

_INTERP = re.compile(r"\$\{([^${}]+)\}")
_MISSING = object()

# Keys that configure ROLL's own process (logging, trackers, hydra) and have no job-level meaning.
_IGNORED_TOP = {
    "hydra", "defaults", "logging_dir", "output_dir", "track_with", "tracker_kwargs", "logging_steps",
    "system_envs", "checkpoint_config", "resume_from_checkpoint", "num_gpus_per_node", "exp_name",
}  # fmt: skip

_DTYPES = {"bf16": "bfloat16", "bfloat16": "bfloat16", "fp16": "float16", "float16": "float16",
           "fp32": "float32", "float32": "float32"}  # fmt: skip


class RollImportError(InputError):
    """The ROLL file cannot be converted (unreadable, no training worker, a value of the wrong kind);
    the message names the ROLL key and the fix."""


# GPU indices one device_mapping may list: 4096 trainer pods x 16 GPUs, the API's own ceiling.
MAX_DEVICES = 4096 * 16


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

    produced = 0

    def walk(node: Any, depth: int = 0) -> Any:
        nonlocal produced
        produced += 1
        if produced > MAX_NODES:
            raise RollImportError(
                f"${{...}} references expand to more than {MAX_NODES} values; write the values out instead"
            )
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


def _gpu_indices(values: Any, key: str, shown: Any) -> list[int]:
    if len(values) > MAX_DEVICES:
        raise RollImportError(f"{key}: {len(values)} GPUs is more than the {MAX_DEVICES} a job may use")
    if not all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= INT64_MAX for v in values):
        raise RollImportError(f"{key} {shown!r}: GPU indices are integers >= 0, such as [0, 1, 2, 3]")
    return list(values)


def parse_device_mapping(value: Any, key: str = "device_mapping") -> list[int]:
    """ROLL writes device_mapping as ``list(range(0,32))``, ``"[0, 1, 2]"`` or a real list.

    The size is checked before anything is expanded: ``list(range(0, 2000000000))`` is an error,
    not two billion integers in memory."""
    if isinstance(value, list):
        return _gpu_indices(value, key, value)
    if not isinstance(value, str):
        raise RollImportError(f"{key}: expected a string such as list(range(0,8)) or a list, got {value!r}")
    text = value.strip()
    m = re.fullmatch(r"list\(\s*range\(\s*(-?\d+)\s*(?:,\s*(-?\d+)\s*)?(?:,\s*(-?\d+)\s*)?\)\s*\)", text)
    if m:
        args = [int(a) for a in m.groups() if a is not None]
        try:
            span = range(*args)
        except ValueError as exc:  # a zero step
            raise RollImportError(f"{key} {value!r}: {exc}") from None
        return _gpu_indices(span, key, value)
    if len(text) > 1_000_000:
        raise RollImportError(f"{key}: a literal of {len(text)} characters; use list(range(a,b))")
    try:
        parsed = ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, RecursionError, MemoryError):
        raise RollImportError(f"{key} {value!r}: expected list(range(a,b)) or a literal list like [0, 1]") from None
    if not isinstance(parsed, list | tuple):
        raise RollImportError(f"{key} {value!r}: expected a list of GPU indices")
    return _gpu_indices(parsed, key, value)


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

    def integer(self, dotted: str, default: int, *, minimum: int = 0, zero_means_default: bool = False) -> int:
        """An integer setting; words, fractions, unresolved ``${...}`` and out-of-range values are
        errors naming the key. ``zero_means_default``: ROLL's own ``x or default`` reading of 0."""
        value = self.get(dotted)
        if value is None:
            return default
        number = _as_int(value)
        if number is None:
            raise RollImportError(f"{dotted}: expected an integer, got {_shown(value)}{_unresolved_hint(value)}")
        if number == 0 and zero_means_default:
            return default
        if not minimum <= number <= INT64_MAX:
            raise RollImportError(f"{dotted}: {number} is out of range; use an integer from {minimum} to {INT64_MAX}")
        return number

    def number(self, dotted: str) -> float | None:
        """A number setting, or None when absent; anything but a finite number is an error naming the key."""
        value = self.get(dotted)
        if value is None:
            return None
        number: float | None = None
        if isinstance(value, int | float) and not isinstance(value, bool):
            number = float(value)
        elif isinstance(value, str):
            try:
                number = float(value.strip())
            except ValueError:
                number = None
        if number is None or not math.isfinite(number):
            raise RollImportError(f"{dotted}: expected a number, got {_shown(value)}{_unresolved_hint(value)}")
        return number

    def strings(self, dotted: str) -> list[str]:
        """A file name or a list of them; anything else is an error naming the key."""
        value = self.get(dotted)
        if value is None:
            return []
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, list) or not all(isinstance(v, str) for v in items):
            raise RollImportError(f"{dotted}: expected a file name or a list of file names, got {_shown(value)}")
        return list(items)

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


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else f"{text[:57]}..."


def _unresolved_hint(value: Any) -> str:
    if isinstance(value, str) and "${" in value:
        return " (an unresolved ${...}: set the environment variable or give a default, ${oc.env:NAME,1})"
    return ""


def _as_int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return int(value) if math.isfinite(value) and value.is_integer() else None
    if isinstance(value, str):
        text = value.strip()
        if re.fullmatch(r"[+-]?\d{1,25}", text):
            return int(text)
    return None


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
    try:
        return read_checkpoint_mtp_layers(p) if p.is_dir() else None
    except InputError as exc:
        raise RollImportError(f"pretrain: {exc}; fix the checkpoint or set mtp_num_layers") from None
    except (OSError, ValueError) as exc:  # a name too long for the file system, a NUL byte
        raise RollImportError(f"pretrain {_shown(model_ref)}: not a usable path ({exc})") from None


# ------------------------------------------------------------------------------------ convert


def convert(roll: dict[str, Any], *, base_dir: Path | None = None) -> ImportResult:
    """Map one ROLL pipeline config (already parsed) onto an MTPTrainingJob manifest."""
    notes: list[str] = []
    cfg = resolve_interpolations(roll, notes)
    r = _Reader(cfg)
    w = "actor_train" if "actor_train" in cfg else "sft_train" if "sft_train" in cfg else None
    if w is None:
        raise RollImportError("no training worker: expected an actor_train (RLVR) or sft_train (SFT) section")
    rewards = cfg.get("rewards")
    has_rewards = isinstance(rewards, dict) and bool(rewards)
    pipeline = "rlvr" if w == "actor_train" and (has_rewards or "actor_infer" in cfg) else "sft"

    strategy_name = r.get(f"{w}.strategy_args.strategy_name")
    if strategy_name not in (None, "megatron_train"):
        notes.append(f"{w}.strategy_args.strategy_name is {strategy_name!r}: the trainer uses Megatron-core")
    spec: dict[str, Any] = {
        "pipeline": pipeline,
        "model": _model(r, w, base_dir or Path.cwd(), notes),
        "trainer": _trainer(r, w, notes, pipeline),
    }
    if "actor_infer" in cfg:
        devices = _devices(r, f"{w}.device_mapping")
        spec["rollout"] = _rollout(r, devices, notes)
    if has_rewards:
        assert isinstance(rewards, dict)
        reward = _rewards(r, rewards, notes)
        if reward:
            spec["reward"] = reward
    if pipeline == "rlvr":
        grpo = _grpo(r, notes)
        # ROLL trains a step's rollouts in optimizer steps of the actor's global batch: mini-batches here.
        per_step = grpo.get("promptsPerStep", 8) * grpo.get("samplesPerPrompt", 8)
        gbs = spec["trainer"].get("hyperparameters", {}).get("globalBatchSize")
        if isinstance(gbs, int) and 0 < gbs < per_step and per_step % gbs == 0:
            grpo["miniBatches"] = per_step // gbs
        if grpo:
            spec["trainer"]["grpo"] = grpo

    manifest = {
        "apiVersion": t.API_VERSION,
        "kind": t.KIND,
        "metadata": {"name": _name(cfg.get("exp_name"), "roll-import")},
        "spec": spec,
    }
    return ImportResult(manifest=manifest, unmapped=r.leftovers(), notes=notes)


def _model(r: _Reader, w: str, base_dir: Path, notes: list[str]) -> dict[str, Any]:
    model_ref = r.get("pretrain") or r.get(f"{w}.model_args.model_name_or_path")
    if not model_ref:
        raise RollImportError("no model: set pretrain or actor_train.model_args.model_name_or_path")
    if not isinstance(model_ref, str):
        raise RollImportError(
            f"pretrain: expected a local path or a Hugging Face id (org/name), got {_shown(model_ref)}"
        )
    source, note = _source(model_ref)
    notes += [note] if note else []
    family, note = _family(model_ref)
    notes += [note] if note else []
    model: dict[str, Any] = {"source": source, "family": family}
    dtype = r.get(f"{w}.model_args.dtype")
    if dtype is not None:
        if str(dtype) not in _DTYPES:
            notes.append(f"{w}.model_args.dtype {_shown(dtype)} unknown; left at the default")
        else:
            model["dtype"] = _DTYPES[str(dtype)]
    sc = f"{w}.strategy_args.strategy_config"
    mtp_layers: int | None = r.integer(f"{sc}.mtp_num_layers", -1)
    if mtp_layers == -1:
        mtp_layers = _mtp_layers_from_checkpoint(model_ref, base_dir)
    if mtp_layers is not None:
        model["mtpNumLayers"] = mtp_layers
    return model


def _devices(r: _Reader, key: str) -> list[int]:
    value = r.get(key)
    return parse_device_mapping(value, key) if value is not None else []


def _trainer(r: _Reader, w: str, notes: list[str], pipeline: str) -> dict[str, Any]:
    sc = f"{w}.strategy_args.strategy_config"
    gpn = r.integer("num_gpus_per_node", 8, minimum=1, zero_means_default=True)
    n_gpus = len(_devices(r, f"{w}.device_mapping")) or gpn
    replicas = max(1, math.ceil(n_gpus / gpn))
    per_replica = min(n_gpus, gpn)
    tp = r.integer(f"{sc}.tensor_model_parallel_size", 1, minimum=1)
    pp = r.integer(f"{sc}.pipeline_model_parallel_size", 1, minimum=1)
    cp = r.integer(f"{sc}.context_parallel_size", 1, minimum=1)
    if cp > 1:
        notes.append(
            f"{sc}.context_parallel_size={cp}: not supported by the trainer yet; dropped (each sequence stays on "
            "one rank; the global batch is ROLL's, whose data-parallel size counts CP)"
        )
    vpp = r.get(f"{sc}.virtual_pipeline_model_parallel_size")
    if vpp not in (None, 1):
        notes.append(
            f"{sc}.virtual_pipeline_model_parallel_size={_shown(vpp)}: the trainer runs one chunk per pipeline "
            "stage (GPipe); dropped"
        )
    strategy: dict[str, Any] = {"tensorParallelSize": tp, "pipelineParallelSize": pp}
    ep = r.integer(f"{sc}.expert_model_parallel_size", 1, minimum=1)
    if ep > 1 and tp > 1:
        notes.append(
            f"{sc}.expert_model_parallel_size={ep}: the trainer splits experts over expert-parallel ranks at "
            f"tensor_model_parallel_size 1 only, and over the {tp} TP ranks here; dropped"
        )
    elif ep > 1:
        strategy["expertParallelSize"] = ep
    if r.get(f"{sc}.sequence_parallel") is not None:
        strategy["sequenceParallel"] = bool(r.get(f"{sc}.sequence_parallel")) and tp > 1
    gran = r.get(f"{sc}.recompute_granularity")
    if gran is not None:
        strategy["recompute"] = gran if gran in ("full", "selective") else "none"
    if r.get(f"{sc}.use_distributed_optimizer") is not None:
        strategy["distributedOptimizer"] = bool(r.get(f"{sc}.use_distributed_optimizer"))
        if strategy["distributedOptimizer"] and "expertParallelSize" in strategy:
            strategy["distributedOptimizer"] = False
            notes.append(
                f"{sc}.use_distributed_optimizer=true with expert_model_parallel_size={ep}: the trainer's sharded "
                "optimizer cannot partition expert-parallel weights; set to false (the AdamW state is replicated)"
            )
    for flag in ("bf16", "fp16"):
        r.get(f"{sc}.{flag}")
    trainer: dict[str, Any] = {
        "replicas": replicas,
        "gpusPerReplica": per_replica,
        "strategy": strategy,
        # ROLL's data-parallel size is GPUs / (TP x PP x CP) (expert parallel splits within it); ours has no CP.
        "hyperparameters": _hyperparameters(
            r, w, max(1, n_gpus // (tp * pp * cp)), max(1, (replicas * per_replica) // (tp * pp)), notes
        ),
        "data": _data(r, w, notes, pipeline),
    }
    mtp = _mtp(r, w, notes)
    if mtp:
        trainer["mtp"] = mtp
    return trainer


def _mtp(r: _Reader, w: str, notes: list[str]) -> dict[str, Any]:
    """mtp_training_mode and the loss scale live either on the worker or inside strategy_config."""
    sc = f"{w}.strategy_args.strategy_config"
    mode = r.get(f"{w}.mtp_training_mode", _MISSING)
    mode = r.get(f"{sc}.mtp_training_mode") if mode is _MISSING else mode
    scale_key = f"{w}.mtp_loss_scaling_factor" if r.get(f"{w}.mtp_loss_scaling_factor") is not None else None
    scale = r.number(scale_key or f"{sc}.mtp_loss_scaling_factor")
    mtp: dict[str, Any] = {}
    if mode is not None:
        if mode not in ("disabled", "standalone", "joint"):
            notes.append(
                f"mtp_training_mode {_shown(mode)} has no equivalent (disabled, standalone, joint); left disabled"
            )
        else:
            mtp["trainingMode"] = mode
    if scale is not None:
        mtp["lossScalingFactor"] = scale
    return mtp


def _hyperparameters(r: _Reader, w: str, roll_dp: int, dp: int, notes: list[str]) -> dict[str, Any]:
    """ROLL's global batch (micro x accumulation x ROLL's data-parallel size) is kept; the accumulation
    steps are recomputed for this job's data-parallel size ``dp`` (which differs with context parallel)."""
    ta = f"{w}.training_args"
    micro = r.integer(f"{ta}.per_device_train_batch_size", 1, minimum=1, zero_means_default=True)
    accum = r.integer(f"{ta}.gradient_accumulation_steps", 1, minimum=1, zero_means_default=True)
    global_batch = micro * roll_dp * accum
    if global_batch % (micro * dp) == 0:
        accum = global_batch // (micro * dp)
    else:
        notes.append(
            f"{ta}: ROLL's global batch {global_batch} (data parallel {roll_dp}) is not a multiple of micro batch "
            f"{micro} x data parallel {dp} here; the global batch is {micro * dp * accum}"
        )
        global_batch = micro * dp * accum
    hp: dict[str, Any] = {
        "microBatchSize": micro,
        "gradientAccumulationSteps": accum,
        "globalBatchSize": global_batch,
    }
    for src, dst in ((f"{ta}.learning_rate", "learningRate"), (f"{ta}.weight_decay", "weightDecay")):
        value = r.number(src)
        if value is not None:
            hp[dst] = value
    for src, dst in (
        (f"{ta}.warmup_steps", "warmupSteps"),
        ("max_steps", "maxSteps"),
        ("save_steps", "saveSteps"),
        ("eval_steps", "evalSteps"),
        ("seed", "seed"),
    ):
        if r.get(src) is not None:
            hp[dst] = r.integer(src, 0)
    if r.get(f"{ta}.lr_scheduler_type") == "constant" and "learningRate" in hp:
        hp["minLearningRate"] = hp["learningRate"]
    seq = _sequence_length(r)
    if seq is not None:
        hp["seqLength"] = seq
    if r.get(f"{ta}.num_train_epochs") is not None and "maxSteps" not in hp:
        notes.append(f"{ta}.num_train_epochs has no equivalent; set spec.trainer.hyperparameters.maxSteps")
    return hp


def _grpo(r: _Reader, notes: list[str]) -> dict[str, Any]:
    """ROLL's RL algorithm settings onto spec.trainer.grpo (GRPO is what the trainer runs)."""
    grpo: dict[str, Any] = {}
    estimator = r.get("adv_estimator")
    if estimator is not None:
        r.mark("adv_estimator")
        if str(estimator).lower() != "grpo":
            notes.append(f"adv_estimator={_shown(estimator)}: the trainer runs GRPO (group-normalised advantages)")
    if r.get("rollout_batch_size") is not None:
        grpo["promptsPerStep"] = r.integer("rollout_batch_size", 8, minimum=1)
    if r.get("num_return_sequences_in_group") is not None:
        grpo["samplesPerPrompt"] = r.integer("num_return_sequences_in_group", 8, minimum=1)
    if r.get("ppo_epochs") is not None:
        epochs = r.integer("ppo_epochs", 1, minimum=1)
        if epochs != 1:
            notes.append(
                f"ppo_epochs={epochs}: each RL step's samples are trained on once; split them with grpo.miniBatches"
            )
    for src, dst in (("pg_clip", ("clipRatioLow", "clipRatioHigh")), ("pg_clip_low", ("clipRatioLow",)),
                     ("pg_clip_high", ("clipRatioHigh",))):  # fmt: skip
        value = r.number(src)
        if value is not None:
            grpo.update(dict.fromkeys(dst, value))
    use_kl = r.get("use_kl_loss")
    coef = r.number("kl_loss_coef")
    if use_kl is not None:
        r.mark("use_kl_loss")
    if coef is not None and use_kl is not False:
        grpo["klCoef"] = coef
    return grpo


def _sequence_length(r: _Reader) -> int | None:
    if r.get("sequence_length") is not None:
        return r.integer("sequence_length", 0)
    if r.get("prompt_length") is not None:
        return r.integer("prompt_length", 0) + r.integer("response_length", 0)
    return None


def _data(r: _Reader, w: str, notes: list[str], pipeline: str) -> dict[str, Any]:
    files = r.strings(f"{w}.data_args.file_name")
    if not files:
        notes.append(f"{w}.data_args.file_name missing: trainFiles left as a placeholder to edit")
        files = ["/data/train.jsonl"]
    keyed = [r.get("prompt_key"), r.get("response_key")]
    fmt = "prompt_response" if any(keyed) else "messages"
    if r.get(f"{w}.use_sequence_packing") is False:
        notes.append(f"{w}.use_sequence_packing is false: the trainer always packs sequences")
    data: dict[str, Any] = {"trainFiles": files, "format": fmt}
    messages = r.get(f"{w}.data_args.messages")  # ROLL: the field holding each record's messages
    if isinstance(messages, str) and messages:
        if pipeline == "rlvr" and not r.get("prompt_key"):
            data["promptKey"] = messages  # rlvr prompts: the messages of the prompt
        elif pipeline == "sft" and fmt == "messages" and messages != "messages":
            notes.append(
                f"{w}.data_args.messages={_shown(messages)}: sft records are read from their 'messages' field; "
                "rename the field in the data files"
            )
    for src, dst in (("prompt_key", "promptKey"), ("response_key", "responseKey"), ("answer_key", "answerKey")):
        value = r.get(src)
        if isinstance(value, str) and value:
            data[dst] = value
    val = r.strings("validation.data_args.file_name")
    if val:
        data["validationFiles"] = val
    return data


def _rollout(r: _Reader, train_devices: list[int], notes: list[str]) -> dict[str, Any]:
    """actor_infer: the vLLM workers."""
    isc = "actor_infer.strategy_args.strategy_config"
    engine = r.get("actor_infer.strategy_args.strategy_name")
    if engine not in (None, "vllm"):
        notes.append(f"actor_infer.strategy_args.strategy_name is {_shown(engine)}: the rollout uses vLLM")
    itp = r.integer(f"{isc}.tensor_parallel_size", 1, minimum=1)
    gpn = r.integer("num_gpus_per_node", 8, minimum=1, zero_means_default=True)
    if itp > gpn:
        raise RollImportError(
            f"{isc}.tensor_parallel_size {itp} is wider than one node (num_gpus_per_node {gpn}): a rollout replica "
            f"is one pod on one node here; set tensor_parallel_size to at most {gpn} (more replicas for more GPUs)"
        )
    per_worker = max(r.integer("actor_infer.num_gpus_per_worker", itp, minimum=1, zero_means_default=True), itp)
    infer_devices = _devices(r, "actor_infer.device_mapping")
    n_infer = len(infer_devices) or per_worker
    if set(infer_devices) & set(train_devices):
        notes.append(
            "actor_infer shares GPUs with the trainer in ROLL (colocation); here the rollout Deployment "
            f"gets its own {n_infer} GPUs: lower spec.rollout.replicas to use fewer"
        )
    rollout: dict[str, Any] = {
        "replicas": max(1, n_infer // per_worker),
        "tensorParallelSize": itp,
        "gpusPerReplica": per_worker,
    }
    gmu = r.number(f"{isc}.gpu_memory_utilization")
    if gmu is not None:
        rollout["gpuMemoryUtilization"] = gmu
    spec_cfg = r.get(f"{isc}.speculative_config")
    if isinstance(spec_cfg, dict):
        method = spec_cfg.get("method", "mtp")
        if method != "mtp":
            notes.append(f"{isc}.speculative_config.method {_shown(method)}: only mtp drafting is supported")
        rollout["speculative"] = {
            "method": "mtp" if method == "mtp" else "none",
            "numSpeculativeTokens": r.integer(f"{isc}.speculative_config.num_speculative_tokens", 1),
        }
    else:
        rollout["speculative"] = {"method": "none"}
    ga = "actor_infer.generating_args"
    gen: dict[str, Any] = {}
    if r.get(f"{ga}.max_new_tokens") is not None:
        gen["maxTokens"] = r.integer(f"{ga}.max_new_tokens", 0)
    for src, dst in ((f"{ga}.temperature", "temperature"), (f"{ga}.top_p", "topP")):
        value = r.number(src)
        if value is not None:
            gen[dst] = value
    if r.get(f"{isc}.max_model_len") is not None:  # vLLM's own setting wins over prompt + response length
        gen["maxModelLen"] = r.integer(f"{isc}.max_model_len", 0, minimum=1)
    elif r.get("prompt_length") is not None:
        gen["maxModelLen"] = r.integer("prompt_length", 0) + r.integer("response_length", 0)
    if gen:
        rollout["generation"] = gen
    return rollout


def _rewards(r: _Reader, rewards: dict[str, Any], notes: list[str]) -> dict[str, Any] | None:
    mapped = False
    for key, worker_cfg in rewards.items():
        if worker_cfg is not None and not isinstance(worker_cfg, dict):
            raise RollImportError(
                f"rewards.{key}: expected a mapping (worker_cls, ...), got {_shown(worker_cfg)}; "
                "write it as a reward worker section or remove it"
            )
        cls = str((worker_cfg or {}).get("worker_cls", ""))
        r.mark(f"rewards.{key}")
        if key == "math" or "MathRule" in cls:
            mapped = True
        else:
            notes.append(f"rewards.{key} ({cls or 'no worker_cls'}): only the math reward is supported; dropped")
    return {"type": "math"} if mapped else None


def convert_file(path: str | Path) -> ImportResult:
    p = Path(path)
    try:
        docs = read_yaml_documents(p, "a ROLL pipeline YAML")
    except InputError as exc:
        raise RollImportError(str(exc)) from None
    if len(docs) != 1 or not isinstance(docs[0], dict):
        found = f"{len(docs)} YAML documents" if len(docs) != 1 else kind_of(docs[0])
        raise RollImportError(f"{p}: expected one mapping at the top level (a ROLL pipeline config), found {found}")
    return convert(docs[0], base_dir=p.resolve().parent)
