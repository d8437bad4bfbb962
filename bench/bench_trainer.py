"""Trainer step time with MTP in each mode, relative to no MTP, against the expected FLOPs ratio.

    python bench/bench_trainer.py [--steps 12] [--warmup 3] [--sizes tiny,60m] [--out docs/bench-trainer.md]

For each model size it times full optimizer steps (forward, backward, AdamW) of the real trainer
code (``mtp_modes.forward`` on a Megatron GPTModel, CPU, float32) in four configurations:
no MTP (a model built with ``mtpNumLayers: 0``), and one MTP layer in ``disabled``, ``standalone``
and ``joint`` mode. The reported figure is the median step time over ``--steps`` steps after
``--warmup`` (steps interleaved across the configurations), and its ratio to no-MTP. The expected ratio counts matmul FLOPs per token: one MTP
depth adds one transformer layer, the ``eh_proj`` (2H -> H) and one more output-head pass.
Not a test: the numbers depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import replace
from pathlib import Path

import torch

from mtp_trainer import distributed, mtp_modes
from mtp_trainer.config import ModelConfig, OptimConfig, TrainerConfig
from mtp_trainer.data import causal_batch
from mtp_trainer.model_provider import ModelProvider
from mtp_trainer.train_loop import build_optimizer

SIZES = {
    # The example job's model (examples/tiny-sft.yaml).
    "tiny": (
        ModelConfig(
            hidden_size=128,
            num_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=32,
            ffn_hidden_size=384,
            vocab_size=1024,
        ),
        8,
        128,
    ),
    # About 60M parameters (untied, 32k vocabulary).
    "60m": (
        ModelConfig(
            hidden_size=512,
            num_layers=8,
            num_attention_heads=8,
            num_key_value_heads=2,
            head_dim=64,
            ffn_hidden_size=1536,
            vocab_size=32000,
        ),
        2,
        256,
    ),
}


def layer_flops(m: ModelConfig, s: int) -> float:
    """Forward matmul FLOPs per token of one transformer layer (causal attention: s/2 keys on average)."""
    q = m.num_attention_heads * m.head_dim
    kv = m.num_key_value_heads * m.head_dim
    proj = m.hidden_size * (2 * q + 2 * kv) + q * m.hidden_size + 3 * m.hidden_size * m.ffn_hidden_size
    return 2.0 * proj + 2.0 * 2 * (s / 2) * q


def expected_ratio(m: ModelConfig, s: int, depth: int = 1) -> float:
    head = 2.0 * m.vocab_size * m.hidden_size
    trunk = m.num_layers * layer_flops(m, s) + head
    mtp = layer_flops(m, s) + 2.0 * 2 * m.hidden_size * m.hidden_size + head
    return (trunk + depth * mtp) / trunk


class Runner:
    """One model + optimizer in one configuration; ``step()`` times one full optimizer step."""

    def __init__(self, cfg: TrainerConfig, batch: mtp_modes.Batch) -> None:
        torch.manual_seed(0)
        self.cfg, self.batch = cfg, batch
        self.model = ModelProvider(cfg.model).provide()
        mtp_modes.prepare(self.model, cfg.mtp.mode)
        self.opt = build_optimizer(self.model, cfg)
        self.times: list[float] = []

    def step(self, record: bool) -> None:
        mode = self.cfg.mtp.mode
        t0 = time.perf_counter()
        self.opt.zero_grad(set_to_none=True)
        out = mtp_modes.forward(self.model, self.batch, mode, self.cfg.mtp.loss_scaling_factor)
        out.loss.backward()
        for group in mtp_modes.clip_groups(self.model, mode):
            torch.nn.utils.clip_grad_norm_([p for p in group if p.grad is not None], 1.0)
        self.opt.step()
        if record:
            self.times.append(time.perf_counter() - t0)


def bench(size: str, steps: int, warmup: int) -> list[tuple[str, float, float]]:
    """Steps are interleaved round-robin across the four configurations, so background load on a
    shared machine hits all of them alike; the figure is the median per configuration."""
    m, b, s = SIZES[size]
    g = torch.Generator().manual_seed(0)
    batch = causal_batch(torch.randint(0, m.vocab_size, (b, s + 1), generator=g), torch.ones(b, s))
    base = TrainerConfig(model=m, optim=OptimConfig(learning_rate=1e-4))
    runners = {
        "no MTP": Runner(
            replace(base, model=replace(m, mtp_num_layers=0), mtp=replace(base.mtp, mode="disabled")), batch
        )
    }
    for mode in (mtp_modes.DISABLED, mtp_modes.STANDALONE, mtp_modes.JOINT):
        runners[mode] = Runner(replace(base, mtp=replace(base.mtp, mode=mode)), batch)
    for i in range(warmup + steps):
        for r in runners.values():
            r.step(record=i >= warmup)
    med = {k: statistics.median(r.times) for k, r in runners.items()}
    return [(k, t, t / med["no MTP"]) for k, t in med.items()]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--sizes", default="tiny,60m")
    ap.add_argument("--out", type=Path, default=None, help="also write a markdown table here")
    args = ap.parse_args()
    distributed.init()
    torch.set_num_threads(max(torch.get_num_threads(), 1))
    lines = []
    for size in args.sizes.split(","):
        m, b, s = SIZES[size]
        params = ModelProvider(m).model.num_parameters()
        exp = expected_ratio(m, s)
        lines.append(f"\n### {size}: {params / 1e6:.1f}M parameters (with one MTP layer), batch {b} x {s} tokens\n")
        lines.append(f"Expected step-time ratio with one MTP depth (matmul FLOPs): **{exp:.2f}x**\n")
        lines.append("| configuration | median step (ms) | ratio to no MTP |")
        lines.append("|---|---|---|")
        for name, t, r in bench(size, args.steps, args.warmup):
            lines.append(f"| {name} | {t * 1e3:.1f} | {r:.2f}x |")
            print(f"{size:5s} {name:11s} {t * 1e3:8.1f} ms  {r:.2f}x  (expected MTP {exp:.2f}x)", flush=True)
    text = "\n".join(lines) + "\n"
    if args.out:
        args.out.write_text(text)
    distributed.shutdown()


if __name__ == "__main__":
    main()
