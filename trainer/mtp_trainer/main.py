"""Train an MTP model from an MTPTrainingJob: ``python -m mtp_trainer.main --job FILE --output-dir DIR``
(``--check``: validate the plan only, see ``check.py``).

The run, top to bottom:

1. Read and validate the job (``mtp_api.validation.load_job``) and derive the typed config. The
   model source is ``$MTP_MODEL_PATH`` when set (the operator sets it); a ``huggingFace`` repo is
   downloaded once into ``DIR/source-model`` (``hub.fetch``) and reused on restart.
2. Join torch.distributed from torchrun's environment (or run as one local process): gloo on
   CPU, nccl on GPU; build Megatron's tensor/pipeline/data-parallel groups from the spec.
3. Tokenizer: from the checkpoint being resumed, else the imported checkpoint's, else a byte-level
   BPE trained on the training split with ``tiny.vocabSize`` entries.
4. Data: JSONL conversations (or ``builtin:pydoc-topics``), response-only loss mask, packed rows,
   a held-out validation split.
5. Model: the family's Megatron GPTModel with its MTP block; weights random (``tiny``, seeded) or
   imported from a Hugging Face directory. The MTP mode freezes or cuts what it must.
6. Resume from ``DIR/checkpoints/step_N`` (``--resume``, the default, when one exists) or start
   fresh (``--fresh``). Train, evaluating and checkpointing on schedule; metrics go to Prometheus
   and ``DIR/metrics.jsonl``.
7. Export the final weights to ``DIR/hf`` (safetensors, config.json, tokenizer) atomically, then
   write the completion marker ``DIR/COMPLETE`` and (rank 0, when ``$MTP_TERMINATION_MESSAGE_PATH``
   is set, as the operator sets it) the container's termination message ``mtp-complete {...}``,
   and exit 0: the operator reads success from that pod state. A restarted trainer that finds the
   marker (with the export) reports it again and exits 0 at once.
8. SIGTERM during training (SFT, the rlvr warm-up and RL steps): every rank finishes its step, a checkpoint of it is saved,
   and the trainer exits 143; the next start resumes from it. ``--hold-after-completion`` (local
   use) keeps serving the metrics after the export until SIGTERM or SIGINT, then exits 0.

Exit status: 0 on success, 2 on bad input (the message names the field and the fix), 143 when
stopped by SIGTERM after a checkpoint.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import torch
import torch.distributed as dist
from megatron.core import parallel_state as ps

from mtp_api import contracts
from mtp_api.validation import ManifestError, load_job
from mtp_trainer import (
    check,
    checkpoint,
    data,
    distributed,
    families,
    hf_export,
    hf_import,
    hub,
    mtp_modes,
    rlvr,
    tokenizer,
)
from mtp_trainer.config import ConfigError, TrainerConfig, from_job
from mtp_trainer.metrics import Metrics
from mtp_trainer.rl.tasks import as_conversation
from mtp_trainer.train_loop import Trainer, build_optimizer


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="mtp_trainer.main", description=__doc__.split("\n")[0])
    p.add_argument("--job", required=True, type=Path, help="MTPTrainingJob YAML")
    p.add_argument("--output-dir", type=Path, help="checkpoints/, hf/ and metrics.jsonl go here (required to train)")
    p.add_argument(
        "--check",
        action="store_true",
        help="validate the whole plan without downloading or allocating anything, print it as JSON, exit 0 or 2",
    )
    g = p.add_mutually_exclusive_group()
    g.add_argument("--resume", dest="resume", action="store_true", default=True, help="resume the latest checkpoint")
    g.add_argument("--fresh", dest="resume", action="store_false", help="ignore existing checkpoints")
    p.add_argument("--metrics-port", type=int, default=None, help="override spec.trainer.metricsPort; 0 disables")
    p.add_argument("--max-steps", type=int, default=None, help="override hyperparameters.maxSteps (smoke runs)")
    p.add_argument(
        "--hold-after-completion",
        action="store_true",
        help="after the export, keep serving metrics until SIGTERM/SIGINT, then exit 0 (the operator's mode)",
    )
    args = p.parse_args(argv)
    if args.output_dir is None and not args.check:
        p.error("--output-dir is required (unless --check)")
    return args


def _tokenizer(cfg: TrainerConfig, out_dir: Path, resume_from: Path | None, train_convs: list) -> object:
    if resume_from is not None:
        return tokenizer.load(resume_from)
    if cfg.source.kind == "path":
        assert cfg.source.path is not None
        return tokenizer.load(cfg.source.path)
    tok_dir = out_dir / "tokenizer"
    if dist.get_rank() == 0:
        tok = tokenizer.train_bpe(data.corpus_text(train_convs), cfg.model.vocab_size)
        with checkpoint.atomic_dir(tok_dir, is_writer=True) as tmp:
            tokenizer.save(tok, tmp)
    else:
        with checkpoint.atomic_dir(tok_dir, is_writer=False):
            pass
    return tokenizer.load(tok_dir)


def run(args: argparse.Namespace) -> int:
    job = load_job(args.job)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    cfg = from_job(job, base_dir=args.job.resolve().parent, world_size=world)
    if args.metrics_port is not None:
        cfg = replace(cfg, metrics=replace(cfg.metrics, port=args.metrics_port))
    if args.max_steps is not None:
        cfg = replace(cfg, optim=replace(cfg.optim, max_steps=args.max_steps))
    out_dir: Path = args.output_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    done = completed(out_dir, cfg.optim.max_steps) if args.resume else None
    if done is not None:  # restarted after it finished: say so again (pod state), redo nothing
        report_complete(done)
        return 0
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    node_rank = int(os.environ.get("GROUP_RANK") or os.environ.get("NODE_RANK") or "0")
    spec_mtp = job.spec.model.mtp_num_layers

    def check_config(hf_cfg: dict) -> None:  # a Hub source: config.json alone, before any weights
        check.model_from_hf_config(hf_cfg, cfg, spec_mtp)

    fetched = hub.fetch(cfg.source, out_dir, local_rank=local_rank, node_rank=node_rank, check_config=check_config)
    cfg = replace(cfg, source=fetched)
    if cfg.source.kind == "path":
        assert cfg.source.path is not None
        hf_cfg = hf_import.read_config(Path(cfg.source.path))
        m = check.model_from_hf_config(hf_cfg, cfg, spec_mtp)
        if "vision_config" in hf_cfg and m.family in ("qwen3_5", "qwen3_5_moe"):  # keep the (untrained) vision tower
            m = replace(m, vision_source=cfg.source.path)
        cfg = replace(cfg, model=m)
    family = families.get(cfg.model.family)
    check.check_model(cfg.model, cfg, None)

    par = cfg.parallel
    info = distributed.init(par.tensor_parallel_size, par.pipeline_parallel_size, cfg.seed, par.expert_parallel_size)
    resume_from = checkpoint.latest(out_dir) if args.resume else None

    problems = None
    val_convs: list[list[dict[str, str]]] = []
    if cfg.rl is not None:
        problems = rlvr.problem_sets(cfg)
        train_convs = [as_conversation(p) for p in problems[0]]
    else:
        train_convs, val_convs = data.split(cfg.data)
    tok = _tokenizer(cfg, out_dir, resume_from, train_convs)
    if len(tok) > cfg.model.vocab_size:  # type: ignore[arg-type]
        raise ConfigError(
            f"the tokenizer has {len(tok)} entries but the model vocabulary is {cfg.model.vocab_size}; "  # type: ignore[arg-type]
            "use the checkpoint's own tokenizer or raise spec.model.source.tiny.vocabSize"
        )

    torch.manual_seed(cfg.seed)
    provider = family.provider(
        cfg.model,
        par.tensor_parallel_size,
        cfg.mtp.loss_scaling_factor,
        par.recompute,
        par.expert_parallel_size,
        par.sequence_parallel,
        par.pipeline_parallel_size,
    )
    model = provider.provide()
    if cfg.source.kind == "path" and resume_from is None:
        assert cfg.source.path is not None
        hf_import.load_into(model, Path(cfg.source.path), cfg.model)
    if problems is not None:
        metrics = Metrics(cfg.metrics, out_dir, enabled=info.is_main)
        _announce(cfg, model, info, metrics, resume_from, 0, problems=(len(problems[0]), len(problems[1])))
        stopped = rlvr.run(cfg, model, tok, out_dir, metrics, info.device, problems, resume_from, provider.provide)
        if stopped is not None:  # SIGTERM: that step is checkpointed; the next start resumes from it
            distributed.shutdown()
            return contracts.EXIT_STOPPED
        return _finish(cfg, model, tok, out_dir, metrics, info)

    rows = data.pack(train_convs, tok, cfg.data.seq_length, cfg.data.seed)  # type: ignore[arg-type]
    val_rows = data.pack(val_convs, tok, cfg.data.seq_length, cfg.data.seed) if val_convs else None  # type: ignore[arg-type]
    mtp_modes.prepare(model, cfg.mtp.mode)
    optimizer = build_optimizer(model, cfg)
    start = 0
    if resume_from is not None:
        start = int(checkpoint.load(resume_from, model, optimizer)["step"])

    schedule = data.BatchSchedule(
        rows=rows,
        micro_batch_size=cfg.data.micro_batch_size,
        grad_accum_steps=cfg.data.grad_accum_steps,
        dp_rank=ps.get_data_parallel_rank(),
        dp_size=ps.get_data_parallel_world_size(),
        seed=cfg.data.seed,
    )
    metrics = Metrics(cfg.metrics, out_dir, enabled=info.is_main)
    metrics.set_step(start)  # a restarted trainer reports where it is before its first step
    _announce(cfg, model, info, metrics, resume_from, start, rows=(len(rows), len(val_rows) if val_rows else 0))
    trainer = Trainer(cfg, model, optimizer, schedule, val_rows, metrics, info.device, out_dir, tok)
    trainer.run(start)
    if trainer.stopped_at is not None:  # SIGTERM: a checkpoint of that step is saved; the next start resumes
        distributed.shutdown()
        return contracts.EXIT_STOPPED
    return _finish(cfg, model, tok, out_dir, metrics, info)


def _announce(
    cfg: TrainerConfig,
    model: torch.nn.Module,
    info: distributed.DistInfo,
    metrics: Metrics,
    resume_from: Path | None,
    step: int,
    **counts: tuple[int, int],
) -> None:
    """The first JSON line of a run: what it trains, on what, from where."""
    if not info.is_main:
        return
    summary: dict[str, object] = {
        "event": "start",
        "pipeline": "rlvr" if cfg.rl is not None else "sft",
        "step": step,  # completed steps at start (rlvr: of the RL phase; the warm-up reports its own)
        "resume_from": str(resume_from) if resume_from else None,
        "mode": cfg.mtp.mode,
        "family": cfg.model.family,
        "parameters": sum(p.numel() for p in model.parameters()),
        "world_size": info.world_size,
        "device": str(info.device),
        "metrics_port": metrics.port,
    }
    for name, (train, val) in counts.items():
        summary[f"train_{name}"], summary[f"validation_{name}"] = train, val
    print(json.dumps(summary), flush=True)


def _finish(
    cfg: TrainerConfig, model: torch.nn.Module, tok: object, out_dir: Path, metrics: Metrics, info: distributed.DistInfo
) -> int:
    """Export the final weights, report the last step, leave the process group."""
    export_dir = out_dir / contracts.EXPORT_SUBDIR
    hf_export.export(model, cfg.model, tok, export_dir)
    metrics.set_step(cfg.optim.max_steps)
    if info.is_main:
        done = {"step": cfg.optim.max_steps, "export": str(export_dir)}
        _write_atomic(out_dir / contracts.COMPLETION_MARKER, json.dumps(done))  # after the export: durable
        report_complete(done)
        print(json.dumps({"event": "done", **done}), flush=True)
    distributed.shutdown()
    return 0


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def completed(out_dir: Path, max_steps: int) -> dict[str, object] | None:
    """The completion marker's content when this run already finished ``max_steps`` and exported."""
    try:
        done = json.loads((out_dir / contracts.COMPLETION_MARKER).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(done, dict) or done.get("step") != max_steps or not Path(str(done.get("export"))).is_dir():
        return None
    return done


def report_complete(done: dict[str, object]) -> None:
    """Rank 0 puts the completion into its container's termination message, which the kubelet copies
    into the pod's status: the operator's proof that the final checkpoint and export are on the volume."""
    path = os.environ.get(contracts.ENV_TERMINATION_MESSAGE_PATH)
    if path and os.environ.get("RANK", "0") == "0":
        Path(path).write_text(contracts.COMPLETION_MESSAGE_PREFIX + json.dumps(done, sort_keys=True))


class _Stop(Exception):
    """Raised by the SIGTERM/SIGINT handler to end :func:`hold_until_signalled`."""


def hold_until_signalled(ready: Callable[[], None] = lambda: None) -> int:
    """Block until SIGTERM or SIGINT, then return 0. The metrics server thread keeps serving meanwhile.

    The wait is a read on the signal wakeup pipe rather than a sleep or an Event: a signal that the
    kernel hands to another thread (the metrics server, torch's pools) still writes to the pipe, which
    wakes this thread to run the handler. ``ready`` runs once the handlers are in place (tests).
    """

    def stop(signum: int, frame: object) -> None:
        raise _Stop

    r, w = os.pipe()
    os.set_blocking(w, False)
    previous_fd = signal.set_wakeup_fd(w)
    previous = {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        ready()
        while True:
            os.read(r, 1)
    except _Stop:
        return 0
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        signal.set_wakeup_fd(previous_fd)
        os.close(r)
        os.close(w)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        if args.check:
            print(json.dumps(check.plan(args.job), indent=2), flush=True)
            return 0
        rc = run(args)
    except (ConfigError, ManifestError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return contracts.EXIT_INVALID_SPEC
    if rc != 0 or not args.hold_after_completion:
        return rc

    def announce() -> None:  # once SIGTERM is handled: a stop from here on exits 0
        if os.environ.get("RANK", "0") == "0":
            print(json.dumps({"event": "hold"}), flush=True)

    return hold_until_signalled(ready=announce)


if __name__ == "__main__":
    sys.exit(main())
