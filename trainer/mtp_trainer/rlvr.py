"""RLVR: GRPO against a verifiable reward, generating on the job's vLLM rollout and pushing every
new policy (MTP drafter included) back into it.

Choices, stated once:

- **Who drives.** Trainer rank 0. It reaches every rollout replica over HTTP (``$MTP_ROLLOUT_URLS``,
  or the headless Service in ``$MTP_ROLLOUT_SERVICE``), generates, scores, and broadcasts the
  samples; every data-parallel rank trains its shard. The rollout needs no Kubernetes API.
- **Samples.** ``promptsPerStep`` prompts a step, ``samplesPerPrompt`` samples each, at the
  rollout's temperature, with vLLM's MTP speculation on. The prompt is the ChatML user turn plus the
  assistant header, exactly as the SFT data renders it; generation stops at ``<|im_end|>``.
- **Advantages.** Group-normalised (``(r - mean) / std``); a group whose rewards are all equal
  gets 0 and so contributes nothing but its MTP cross-entropy.
- **Old log-probabilities** are recomputed by the trainer, with no gradient, before the update
  (``policy_step.rl_step``): exact for the policy that generated the samples, since the rollout
  serves exactly the trainer's weights (the sync is proven bit-for-bit in tests) and the update
  only happens after generation. vLLM's sampled log-probs are kept in the samples, unused.
- **MTP.** ``standalone``: the head learns from the policy's own rollouts by cross-entropy,
  through the three cuts, so no MTP gradient reaches the policy. ``disabled``: frozen, forward
  skipped. ``joint`` is allowed (validate warns).
- **Weight sync** after every update (``rl.weight_sync``), before the next generation: the rollout
  serves weight version = number of RL updates so far, and each sample records the version it came
  from.
- **Warm-up.** ``spec.trainer.warmup.steps`` SFT steps (joint by default) on the data's worked
  answers first, in ``OUT/warmup``; a job that resumes after the warm-up skips it.

The run, top to bottom: problems -> tokenizer -> model -> warm-up -> export version 0 to
``OUT/hf`` (what the rollout starts from) -> wait for the rollout -> per step: generate, reward,
train, sync, metrics -> held-out accuracy every ``evalSteps`` -> checkpoints every ``saveSteps`` ->
final export.
"""

from __future__ import annotations

import json
import os
import random
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from megatron.core import parallel_state as ps

from mtp_api import contracts
from mtp_api.acceptance import figures_between
from mtp_trainer import checkpoint, data, hf_export, mtp_modes, pipeline
from mtp_trainer.config import ConfigError, RLConfig, TrainerConfig
from mtp_trainer.metrics import Metrics
from mtp_trainer.rl import grpo, policy_step
from mtp_trainer.rl.metrics import RLMetrics, RLStepRecord, RLValidationRecord
from mtp_trainer.rl.reward import MathRewardFn, RewardResult
from mtp_trainer.rl.rollout_client import RolloutClient, Sample
from mtp_trainer.rl.tasks import Problem, as_conversation, builtin_problems, is_builtin, load_problems
from mtp_trainer.rl.weight_sync import WeightSync
from mtp_trainer.tokenizer import IM_START, im_end_id
from mtp_trainer.train_loop import Trainer, any_rank, build_optimizer, lr_at, sigterm_flag

WARMUP_DIR = "warmup"


# ------------------------------------------------------------------------------------ problems


def _load(files: tuple[str, ...], cfg: TrainerConfig, split: str) -> list[Problem]:
    rl = cfg.rl
    assert rl is not None
    out: list[Problem] = []
    for name in files:
        if is_builtin(name):
            out += builtin_problems(name, split)
        else:
            out += load_problems(
                [name], cfg.data.base_dir, rl.prompt_key, rl.answer_key, rl.response_key or None, split=split
            )
    return out


def problem_sets(cfg: TrainerConfig) -> tuple[list[Problem], list[Problem]]:
    """(train, validation) problems: validationFiles when given; the built-in task's own split for
    built-in train files; otherwise a seeded share of the train files (validationFraction)."""
    train = _load(cfg.data.train_files, cfg, "train")
    if not train:
        raise ConfigError("spec.trainer.data.trainFiles: no prompts found; point it at JSONL/Parquet prompt files")
    if cfg.data.validation_files:
        return train, _load(cfg.data.validation_files, cfg, "validation")
    if all(is_builtin(f) for f in cfg.data.train_files):
        return train, _load(cfg.data.train_files, cfg, "validation")
    order = list(range(len(train)))
    random.Random(cfg.data.seed).shuffle(order)
    n_val = round(len(train) * cfg.data.validation_fraction) if cfg.data.validation_fraction > 0 else 0
    held = set(order[:n_val])
    return [p for i, p in enumerate(train) if i not in held], [train[i] for i in sorted(held)]


def warmup_conversations(problems: list[Problem], field: str) -> list[list[dict[str, str]]]:
    convs = [as_conversation(p) for p in problems if p.solution]
    if not convs:
        raise ConfigError(
            f"{field}: the warm-up trains on worked answers, and no prompt record has one; add the answers "
            "under spec.trainer.data.responseKey or remove spec.trainer.warmup"
        )
    return convs


def prompt_ids(problem: Problem, tok: Any) -> list[int]:
    """The user turn and the assistant header, as ``data.encode`` renders SFT conversations."""
    user, _ = data.encode([{"role": "user", "content": problem.prompt}], tok)
    return user + tok.encode(f"{IM_START}assistant\n", add_special_tokens=False)


# ------------------------------------------------------------------------------------ rollout


def rollout_urls(env: dict[str, str] | None = None, want: int = 1, timeout_s: float = 600.0) -> list[str]:
    """The replicas: the explicit list, else every address of the headless Service (waiting until
    ``want`` of them exist, so rank 0 does not start with half a rollout)."""
    env = dict(os.environ) if env is None else env
    explicit = env.get(contracts.ENV_ROLLOUT_URLS, "").strip()
    if explicit:
        return [u.strip() for u in explicit.split(",") if u.strip()]
    service = env.get(contracts.ENV_ROLLOUT_SERVICE, "").strip()
    if not service:
        raise ConfigError(
            f"an rlvr trainer needs the rollout's address: set {contracts.ENV_ROLLOUT_URLS} (comma-separated "
            f"base URLs) or {contracts.ENV_ROLLOUT_SERVICE} (headless Service host:port); the operator sets it"
        )
    host, _, port = service.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"{contracts.ENV_ROLLOUT_SERVICE}={service!r}: expected host:port")
    return [f"http://{addr}:{port}" for addr in resolve_all(host, int(port), want, timeout_s)]


def resolve_all(host: str, port: int, want: int = 1, timeout_s: float = 600.0) -> list[str]:
    """Every address behind a headless Service (sorted, so every retry sees the same order); waits
    up to ``timeout_s`` for ``want`` of them, then goes on with what there is (at least one)."""
    deadline = time.monotonic() + timeout_s
    addrs: list[str] = []
    while True:
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
            addrs = sorted({str(i[4][0]) for i in infos})
        except socket.gaierror:
            addrs = []
        if len(addrs) >= want or (addrs and time.monotonic() > deadline):
            return [f"[{a}]" if ":" in a else a for a in addrs]
        if time.monotonic() > deadline:
            raise ConfigError(f"{contracts.ENV_ROLLOUT_SERVICE}: {host} has no addresses after {timeout_s:.0f}s")
        time.sleep(2.0)


def acceptance(before: list[str], after: list[str], model_name: str) -> tuple[Any, int]:
    """vLLM counter increments over the generate phase, summed over replicas (reset-aware)."""
    figures = figures_between(before, after, model_name)
    return figures, int(figures.inc.generation_tokens)


# ------------------------------------------------------------------------------------ the run


@dataclass
class RLState:
    """What rank 0 tells every rank each step (``broadcast_object_list``)."""

    sequences: list[policy_step.RolloutSequence]
    advantages: list[float]
    record: dict[str, Any]


def _broadcast(obj: Any) -> Any:
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


class RLVRRun:
    """The RL phase for one trainer process; rank 0 talks to the rollout."""

    def __init__(
        self,
        cfg: TrainerConfig,
        model: Any,
        tok: Any,
        out_dir: Path,
        metrics: Metrics,
        device: torch.device,
        problems: tuple[list[Problem], list[Problem]],
        rl_metrics: RLMetrics,
        build_model: Callable[[], Any] | None = None,
    ) -> None:
        assert cfg.rl is not None
        self.cfg = cfg
        self.rl: RLConfig = cfg.rl
        self.model = model
        self.tok = tok
        self.out = out_dir
        self.metrics = metrics
        self.rl_metrics = rl_metrics
        self.device = device
        self.train_problems, self.val_problems = problems
        self.reward = MathRewardFn(self.rl.reward)
        self.is_main = not dist.is_initialized() or dist.get_rank() == 0
        end = im_end_id(tok)
        self.stop_ids = [end] if end is not None else []
        self.pad_id = tok.pad_token_id if tok.pad_token_id is not None else 0
        self.client: RolloutClient | None = None
        self.sync: WeightSync | None = None
        # The starting policy, frozen: the KL penalty's reference, and how far RL has moved.
        self.reference: Any = None
        if self.rl.log_kl_to_initial:
            if build_model is None:
                raise ConfigError("spec.trainer.grpo: a KL to the starting policy needs the model builder")
            self.reference = policy_step.frozen_reference(model, build_model)

    # -- rollout -------------------------------------------------------------------------------

    def connect(self, start_version: int) -> None:
        """Rank 0 waits for every replica; all ranks set up the sync (writing is collective)."""
        urls = rollout_urls(want=self.rl.rollout_replicas) if self.is_main else ["http://unused"]
        self.client = RolloutClient(urls, self.rl.served_model_name)
        if self.is_main:
            self.client.wait_ready(timeout_s=float(os.environ.get("MTP_ROLLOUT_READY_TIMEOUT_S", "1800")))
        sync_dir = os.environ.get(contracts.ENV_WEIGHT_SYNC_DIR) or str(self.out / contracts.WEIGHT_SYNC_SUBDIR)
        self.sync = WeightSync(
            self.model,
            self.cfg.model,
            self.client,
            sync_dir,
            start_version=start_version,
            drafter=self.rl.rollout_drafts,
        )

    def catch_up(self) -> None:
        """Rank 0, before generating: pick up replicas that joined or restarted (a Service's addresses
        change with its pods) and load the current version into any that serves another one."""
        assert self.client is not None and self.sync is not None
        if not os.environ.get(contracts.ENV_ROLLOUT_URLS, "").strip():
            self.client.urls = rollout_urls(want=self.rl.rollout_replicas, timeout_s=60.0)
        self.client.wait_ready(timeout_s=float(os.environ.get("MTP_ROLLOUT_READY_TIMEOUT_S", "1800")))
        versions = self.client.weight_versions()
        behind = [u for u, v in zip(self.client.urls, versions, strict=True) if (v or 0) != self.sync.version]
        if behind and self.sync.version > 0:
            self.sync.reload(behind)

    def _score(self, samples: list[list[Sample]], problems: list[Problem]) -> list[list[RewardResult]]:
        return [
            [self.reward.score(s.text, p.answer) for s in group] for group, p in zip(samples, problems, strict=True)
        ]

    def generate_step(self, step: int) -> RLState:
        """Rank 0: sample, score and compute advantages for ``step``."""
        assert self.client is not None
        rl = self.rl
        self.catch_up()
        rng = random.Random(self.cfg.seed * 1_000_003 + step)
        problems = rng.sample(self.train_problems, min(rl.prompts_per_step, len(self.train_problems)))
        prompts = [prompt_ids(p, self.tok) for p in problems]
        before = self.client.metrics_text()
        t0 = time.perf_counter()
        samples = self.client.generate(
            prompts,
            n=rl.samples_per_prompt,
            max_tokens=rl.max_tokens,
            temperature=rl.temperature,
            top_p=rl.top_p,
            seed=self.cfg.seed * 7919 + step * rl.prompts_per_step,
            stop_token_ids=self.stop_ids,
        )
        t_gen = time.perf_counter() - t0
        fig, _ = acceptance(before, self.client.metrics_text(), rl.served_model_name)
        t1 = time.perf_counter()
        scores = self._score(samples, problems)
        t_reward = time.perf_counter() - t1
        rewards = torch.tensor([[r.score for r in g] for g in scores], dtype=torch.float64)
        adv = grpo.group_advantages(rewards)
        flat = [r for g in scores for r in g]
        seqs = [
            policy_step.RolloutSequence(prompt=prompts[i], response=s.token_ids)
            for i, group in enumerate(samples)
            for s in group
        ]
        n_tokens = sum(len(s.token_ids) for g in samples for s in g)
        versions = {s.weight_version for g in samples for s in g}
        record = {
            "reward_mean": float(rewards.mean()),
            "reward_std": float(rewards.std(unbiased=False)),
            "accuracy": sum(r.correct for r in flat) / len(flat),
            "parse_failures": sum(r.parse_failed for r in flat),
            "samples": len(flat),
            "zero_advantage_groups": int((rewards.max(dim=1).values == rewards.min(dim=1).values).sum()),
            "generated_tokens": n_tokens,
            "generation_tokens_per_s": n_tokens / t_gen if t_gen > 0 else 0.0,
            "acceptance_rate": fig.acceptance_rate,
            "mean_acceptance_length": fig.mean_acceptance_length,
            "per_position_acceptance": [fig.per_position[p] for p in sorted(fig.per_position)],
            "phase_seconds": {"generate": t_gen, "reward": t_reward},
            "sample_weight_versions": sorted({0 if v is None else v for v in versions}),
        }
        return RLState(seqs, [float(a) for a in adv.flatten()], record)

    def validate(self, step: int) -> RLValidationRecord | None:
        """Greedy answers to held-out prompts (rank 0); accuracy is what RL is meant to raise."""
        n = min(self.rl.validation_prompts, len(self.val_problems))
        if n == 0 or not self.is_main:
            return None
        assert self.client is not None
        problems = self.val_problems[:n]
        samples = self.client.generate(
            [prompt_ids(p, self.tok) for p in problems],
            n=1,
            max_tokens=self.rl.max_tokens,
            temperature=0.0,
            stop_token_ids=self.stop_ids,
        )
        flat = [g[0] for g in self._score(samples, problems)]
        rec = RLValidationRecord(
            step=step,
            accuracy=sum(r.correct for r in flat) / n,
            reward_mean=sum(r.score for r in flat) / n,
            parse_failures=sum(r.parse_failed for r in flat),
            prompts=n,
        )
        self.rl_metrics.record_validation(rec)
        return rec

    # -- training ------------------------------------------------------------------------------

    def step(self, step: int, optimizer: torch.optim.Optimizer) -> None:
        cfg, rl = self.cfg, self.rl
        state = _broadcast(self.generate_step(step) if self.is_main else None)
        dp_rank, dp_size = ps.get_data_parallel_rank(), ps.get_data_parallel_world_size()
        mine = list(range(dp_rank, len(state.sequences), dp_size))
        lr = lr_at(step, cfg.optim)
        for g in optimizer.param_groups:
            g["lr"] = lr
        gcfg = grpo.GRPOConfig(
            samples_per_prompt=rl.samples_per_prompt,
            clip_low=rl.clip_low,
            clip_high=rl.clip_high,
            kl_coef=rl.kl_coef,
            mini_batches=rl.mini_batches,
            micro_batch_size=cfg.data.micro_batch_size,
        )
        t0 = time.perf_counter()
        kl_initial = self._kl_to_initial([state.sequences[i] for i in mine]) if rl.kl_coef == 0 else None
        stats = policy_step.rl_step(
            self.model,
            optimizer,
            [state.sequences[i] for i in mine],
            [state.advantages[i] for i in mine],
            None,
            gcfg,
            mode=cfg.mtp.mode,
            mtp_loss_scaling_factor=cfg.mtp.loss_scaling_factor,
            clip_grad=cfg.optim.clip_grad,
            pad_id=self.pad_id,
            ref_model=self.reference if rl.kl_coef > 0 else None,
            dp_group=ps.get_data_parallel_group() if dist.is_initialized() else None,
        )
        if rl.kl_coef > 0:
            kl_initial = stats.get("kl_ref")
        t_train = time.perf_counter() - t0
        assert self.sync is not None
        t1 = time.perf_counter()
        version = self.sync.sync()
        t_sync = time.perf_counter() - t1
        rec = state.record
        rec_obj = RLStepRecord(
            step=step + 1,
            weight_version=version,
            reward_mean=rec["reward_mean"],
            reward_std=rec["reward_std"],
            accuracy=rec["accuracy"],
            parse_failures=rec["parse_failures"],
            samples=rec["samples"],
            response_length_mean=float(stats["response_length_mean"]),
            policy_loss=float(stats["policy_loss"]),
            entropy=float(stats["entropy"]),
            clip_fraction=float(stats["clip_fraction"]),
            kl_old=float(stats["kl_old"]),
            kl_ref=stats.get("kl_ref"),
            mtp_loss=list(stats["mtp_loss"]),
            mtp_agreement=list(stats["mtp_agreement"]),
            grad_norm=list(stats["grad_norm"]),
            learning_rate=lr,
            phase_seconds={**rec["phase_seconds"], "train": t_train, "sync": t_sync},
            generated_tokens=rec["generated_tokens"],
            generation_tokens_per_s=rec["generation_tokens_per_s"],
            acceptance_rate=rec["acceptance_rate"],
            mean_acceptance_length=rec["mean_acceptance_length"],
            per_position_acceptance=rec["per_position_acceptance"],
            zero_advantage_groups=rec["zero_advantage_groups"],
            kl_initial=kl_initial,
            sample_weight_versions=rec["sample_weight_versions"],
        )
        self.rl_metrics.record(rec_obj)

    def _kl_to_initial(self, sequences: list[policy_step.RolloutSequence]) -> float | None:
        """Mean k3 KL(policy || starting policy) over this step's response tokens, all ranks."""
        if self.reference is None:
            return None
        cur = policy_step.sequence_logprobs(self.model, sequences, self.pad_id, self.cfg.data.micro_batch_size)
        ref = policy_step.sequence_logprobs(self.reference, sequences, self.pad_id, self.cfg.data.micro_batch_size)
        mask = policy_step.build_batch(sequences, self.pad_id, policy_step.sequence_multiple(self.model)).loss_mask
        # With pipeline parallel the log-probs are the last stage's (zeros elsewhere): its sums count.
        here = (
            [float((grpo.k3_kl(cur, ref) * mask).sum()), float(mask.sum())] if pipeline.is_last_stage() else [0.0, 0.0]
        )
        sums = torch.tensor(pipeline.sum_over_stages(here), dtype=torch.float64)
        if dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(sums, group=ps.get_data_parallel_group())
        return float(sums[0] / sums[1].clamp(min=1.0))

    def save(self, step: int, optimizer: torch.optim.Optimizer) -> None:
        assert self.sync is not None
        extra = {"weight_version": self.sync.version}
        checkpoint.save(self.out, step, self.model, optimizer, self.cfg, self.tok, extra=extra)

    def run(self, start: int, optimizer: torch.optim.Optimizer) -> int | None:
        """RL steps from ``start`` to maxSteps. On SIGTERM (agreed over ranks) the finished step is
        checkpointed and its number returned, so the trainer exits for a restart that resumes there."""
        cfg = self.cfg
        if start == 0:
            self.validate(0)
        with sigterm_flag() as stop:
            for step in range(start, cfg.optim.max_steps):
                self.step(step, optimizer)
                done = step + 1
                last = done == cfg.optim.max_steps
                if any_rank(stop[0], self.device) and not last:
                    self.save(done, optimizer)
                    return done
                if done % cfg.schedule.eval_steps == 0 or last:
                    self.validate(done)
                if done % cfg.schedule.save_steps == 0 or last:
                    self.save(done, optimizer)
        return None


# ------------------------------------------------------------------------------------ phases


def warm_up(
    cfg: TrainerConfig,
    model: Any,
    tok: Any,
    out_dir: Path,
    metrics: Metrics,
    device: torch.device,
    problems: tuple[list[Problem], list[Problem]],
) -> int | None:
    """SFT on the worked answers (``spec.trainer.warmup``) in ``OUT/warmup``; resumable like SFT.
    Returns the step a SIGTERM stopped it at (checkpointed), else None."""
    assert cfg.rl is not None and cfg.rl.warmup is not None
    w = cfg.rl.warmup
    wcfg = replace(
        cfg,
        mtp=replace(cfg.mtp, mode=w.mode),
        optim=replace(
            cfg.optim,
            learning_rate=w.learning_rate,
            min_learning_rate=w.min_learning_rate,
            warmup_steps=w.warmup_steps,
            max_steps=w.steps,
        ),
        data=replace(cfg.data, micro_batch_size=w.micro_batch_size, grad_accum_steps=w.grad_accum_steps),
        schedule=replace(cfg.schedule, save_steps=max(w.steps // 2, 1), eval_steps=max(w.steps // 4, 1)),
    )
    train = warmup_conversations(problems[0], "spec.trainer.data.trainFiles")
    val = [as_conversation(p) for p in problems[1] if p.solution]
    rows = data.pack(train, tok, cfg.data.seq_length, cfg.data.seed)
    val_rows = data.pack(val, tok, cfg.data.seq_length, cfg.data.seed) if val else None
    mtp_modes.prepare(model, w.mode)
    optimizer = build_optimizer(model, wcfg)
    wdir = out_dir / WARMUP_DIR
    start = 0
    latest = checkpoint.latest(wdir)
    if latest is not None:
        start = int(checkpoint.load(latest, model, optimizer)["step"])
    schedule = data.BatchSchedule(
        rows=rows,
        micro_batch_size=wcfg.data.micro_batch_size,
        grad_accum_steps=wcfg.data.grad_accum_steps,
        dp_rank=ps.get_data_parallel_rank(),
        dp_size=ps.get_data_parallel_world_size(),
        seed=cfg.data.seed,
    )
    metrics.phase = "warmup"
    trainer = Trainer(wcfg, model, optimizer, schedule, val_rows, metrics, device, wdir, tok)
    try:
        trainer.run(start)
    finally:
        metrics.phase = None
    return trainer.stopped_at


def warmup_done(out_dir: Path, steps: int) -> Path | None:
    """The finished warm-up's checkpoint, if the warm-up ran to the end."""
    latest = checkpoint.latest(out_dir / WARMUP_DIR)
    if latest is None:
        return None
    meta = json.loads((latest / "meta.json").read_text())
    return latest if int(meta["step"]) >= steps else None


def run(
    cfg: TrainerConfig,
    model: Any,
    tok: Any,
    out_dir: Path,
    metrics: Metrics,
    device: torch.device,
    problems: tuple[list[Problem], list[Problem]],
    resume_from: Path | None,
    build_model: Callable[[], Any] | None = None,
) -> int | None:
    """Warm-up (unless done or resuming RL), export version 0, then the RL steps. Returns the step a
    SIGTERM stopped the run at (checkpointed; the next start resumes there), else None."""
    assert cfg.rl is not None
    rl_events = RLMetrics(metrics)
    start = 0
    meta: dict[str, Any] = {}
    if resume_from is None and cfg.rl.warmup is not None:
        done = warmup_done(out_dir, cfg.rl.warmup.steps)
        if done is None:
            rl_events.event(event="warmup_start", steps=cfg.rl.warmup.steps)
            stopped = warm_up(cfg, model, tok, out_dir, metrics, device, problems)
            if stopped is not None:
                return stopped
        else:
            checkpoint.load(done, model, None)
    mtp_modes.prepare(model, cfg.mtp.mode)
    optimizer = build_optimizer(model, cfg)
    if resume_from is not None:
        meta = checkpoint.load(resume_from, model, optimizer)
        start = int(meta["step"])
    # Version ``start`` is what the rollout must serve first: the export it starts from.
    hf_export.export(model, cfg.model, tok, out_dir / contracts.EXPORT_SUBDIR)
    rl_events.event(event="export", weight_version=start, path=str(out_dir / contracts.EXPORT_SUBDIR))
    runner = RLVRRun(cfg, model, tok, out_dir, metrics, device, problems, rl_events, build_model)
    runner.connect(start_version=start)
    if start > 0:
        # A rollout that outlived the trainer still serves an older version: bring it up to date.
        assert runner.sync is not None
        runner.sync.version = start - 1
        runner.sync.sync()
    rl_events.event(event="rl_start", step=start, steps=cfg.optim.max_steps)
    return runner.run(start, optimizer)
