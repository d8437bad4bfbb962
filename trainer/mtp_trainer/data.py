"""SFT data: JSONL conversations -> tokenised, response-masked, packed rows -> micro-batches.

- Input: JSONL with ``messages`` ([{"role", "content"}, ...]) or ``prompt``/``response``; plus the
  name ``builtin:pydoc-topics``, a real corpus that ships with CPython (``pydoc_data.topics``:
  the ~80 help() topics of the Python docs, ~465 kB of text), cut into paragraph-sized
  prompt/response examples so a CPU run trains on real language without downloads; and
  ``builtin:arithmetic[?n=..&difficulty=..]``, the generated RLVR task's worked solutions
  (``mtp_trainer.rl.tasks``; validationFiles get its validation split).
- Rendering is ChatML (the tokenizer's chat template); the loss covers assistant content and its
  ``<|im_end|>`` only.
- Packing: examples are laid end to end into rows of ``seq_length + 1`` tokens. Attention is
  block-diagonal (a document never sees the previous one) and positions restart per document.
- Order: the row order of epoch ``e`` is a permutation seeded by ``seed + e``, so the batch of any
  step is a pure function of the step; resuming needs nothing but the step number.
"""

from __future__ import annotations

import glob
import json
import random
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from mtp_trainer.config import ConfigError, DataConfig
from mtp_trainer.mtp_modes import Batch
from mtp_trainer.rl import tasks as rl_tasks
from mtp_trainer.tokenizer import IM_END, IM_START

BUILTIN_PYDOC = "builtin:pydoc-topics"
Message = dict[str, str]


# ------------------------------------------------------------------------------------- sources


def pydoc_examples(max_chars: int = 400) -> list[list[Message]]:
    """Each topic of Python's own documentation, cut at paragraph boundaries into answers of at
    most ``max_chars`` characters; the question names the topic and the part."""
    from pydoc_data.topics import topics

    out: list[list[Message]] = []
    for name in sorted(topics):
        paragraphs = [p.strip() for p in re.split(r"\n\s*\n", topics[name]) if p.strip()]
        chunk, part = "", 1
        for para in paragraphs:
            if chunk and len(chunk) + 2 + len(para) > max_chars:
                out.append(_qa(name, part, chunk))
                chunk, part = "", part + 1
            chunk = f"{chunk}\n\n{para}" if chunk else para[:max_chars]
        if chunk:
            out.append(_qa(name, part, chunk))
    return out


def _qa(topic: str, part: int, text: str) -> list[Message]:
    return [
        {"role": "user", "content": f"Python documentation, topic '{topic}', part {part}."},
        {"role": "assistant", "content": text},
    ]


def _resolve(pattern: str, base: Path, field: str) -> list[Path]:
    p = Path(pattern)
    full = str(p if p.is_absolute() else base / p)
    hits = sorted(Path(x) for x in glob.glob(full))
    if not hits:
        raise ConfigError(
            f"{field}: {pattern!r} matches no file (looked for {full}); fix the path, mount the data "
            f"volume, or use {BUILTIN_PYDOC!r}"
        )
    return hits


def _record_to_messages(
    rec: dict[str, Any], fmt: str, where: str, prompt_key: str = "prompt", response_key: str = "response"
) -> list[Message]:
    """One conversation from a ``messages`` record, or from ``promptKey`` + ``responseKey``."""
    if not isinstance(rec, dict):
        raise ConfigError(f"{where}: a record must be a JSON object, found {type(rec).__name__}")
    if "messages" in rec and (fmt == "messages" or prompt_key not in rec):
        msgs = rec["messages"]
        if not isinstance(msgs, list) or not all(isinstance(m, dict) and "role" in m and "content" in m for m in msgs):
            raise ConfigError(f"{where}: 'messages' must be a list of {{role, content}} objects")
        return [{"role": str(m["role"]), "content": str(m["content"])} for m in msgs]
    if prompt_key in rec and response_key in rec:
        return [
            {"role": "user", "content": str(rec[prompt_key])},
            {"role": "assistant", "content": str(rec[response_key])},
        ]
    raise ConfigError(
        f"{where}: a record needs 'messages' or {prompt_key!r} + {response_key!r} (spec.trainer.data.format is "
        f"{fmt!r}, promptKey/responseKey name the fields); found keys {sorted(rec)}"
    )


def load_conversations(files: tuple[str, ...], cfg: DataConfig, field: str) -> list[list[Message]]:
    out: list[list[Message]] = []
    for i, name in enumerate(files):
        if name == BUILTIN_PYDOC:
            out.extend(pydoc_examples())
            continue
        if rl_tasks.is_builtin(name):
            split_name = "validation" if field.endswith("validationFiles") else "train"
            try:
                out.extend(rl_tasks.as_conversation(p) for p in rl_tasks.builtin_problems(name, split_name))
            except ValueError as exc:
                raise ConfigError(f"{field}[{i}]: {exc}") from exc
            continue
        for path in _resolve(name, Path(cfg.base_dir), f"{field}[{i}]"):
            with path.open() as fh:
                for line_no, line in enumerate(fh, start=1):
                    if line.strip():
                        where = f"{field}[{i}] {path}:{line_no}"
                        try:
                            rec = json.loads(line)
                        except json.JSONDecodeError as exc:
                            raise ConfigError(f"{where}: not JSON ({exc})") from exc
                        out.append(_record_to_messages(rec, cfg.format, where, cfg.prompt_key, cfg.response_key))
    if not out:
        raise ConfigError(f"{field}: no examples found; add JSONL records or use {BUILTIN_PYDOC!r}")
    return out


def split(cfg: DataConfig) -> tuple[list[list[Message]], list[list[Message]]]:
    """Train / validation conversations: validation files if given, else a seeded held-out share."""
    train = load_conversations(cfg.train_files, cfg, "spec.trainer.data.trainFiles")
    if cfg.validation_files:
        return train, load_conversations(cfg.validation_files, cfg, "spec.trainer.data.validationFiles")
    order = list(range(len(train)))
    random.Random(cfg.seed).shuffle(order)
    n_val = max(1, round(len(train) * cfg.validation_fraction)) if cfg.validation_fraction > 0 else 0
    val_idx = set(order[:n_val])
    return [c for i, c in enumerate(train) if i not in val_idx], [train[i] for i in sorted(val_idx)]


def corpus_text(convs: list[list[Message]]) -> Iterator[str]:
    """Text for tokenizer training (the rendered conversations, special tokens aside)."""
    for conv in convs:
        for m in conv:
            yield f"{m['role']}\n{m['content']}\n"


# ------------------------------------------------------------------------------------- tokens


def encode(conv: list[Message], tok: PreTrainedTokenizerBase) -> tuple[list[int], list[int]]:
    """ChatML tokens and a per-token flag: 1 for tokens the model must learn to produce."""
    ids: list[int] = []
    learn: list[int] = []
    for m in conv:
        head = tok.encode(f"{IM_START}{m['role']}\n", add_special_tokens=False)
        body = tok.encode(m["content"], add_special_tokens=False) + tok.encode(IM_END, add_special_tokens=False)
        tail = tok.encode("\n", add_special_tokens=False)
        flag = 1 if m["role"] == "assistant" else 0
        ids += head + body + tail
        learn += [0] * len(head) + [flag] * len(body) + [0] * len(tail)
    return ids, learn


@dataclass
class PackedRows:
    """``tokens`` [n, s+1]; ``target_mask`` [n, s] (1 where token i+1 is learned, same document);
    ``doc_ids`` [n, s+1] (-1 for padding)."""

    tokens: torch.Tensor
    target_mask: torch.Tensor
    doc_ids: torch.Tensor

    def __len__(self) -> int:
        return int(self.tokens.shape[0])


def pack(convs: list[list[Message]], tok: PreTrainedTokenizerBase, seq_length: int, seed: int) -> PackedRows:
    """Greedy in-order packing of (seeded-shuffled) examples; long examples are truncated."""
    width = seq_length + 1
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    order = list(range(len(convs)))
    random.Random(seed).shuffle(order)
    rows: list[tuple[list[int], list[int], list[int]]] = []
    cur: tuple[list[int], list[int], list[int]] = ([], [], [])
    doc = 0
    for i in order:
        ids, learn = encode(convs[i], tok)
        ids, learn = ids[:width], learn[:width]
        if len(cur[0]) + len(ids) > width:
            rows.append(cur)
            cur = ([], [], [])
        cur[0].extend(ids)
        cur[1].extend(learn)
        cur[2].extend([doc] * len(ids))
        doc += 1
    if cur[0]:
        rows.append(cur)
    n = len(rows)
    tokens = torch.full((n, width), pad, dtype=torch.long)
    learn_t = torch.zeros((n, width), dtype=torch.long)
    docs = torch.full((n, width), -1, dtype=torch.long)
    for r, (ids, learn, dids) in enumerate(rows):
        tokens[r, : len(ids)] = torch.tensor(ids)
        learn_t[r, : len(ids)] = torch.tensor(learn)
        docs[r, : len(ids)] = torch.tensor(dids)
    same_doc = (docs[:, 1:] == docs[:, :-1]) & (docs[:, 1:] >= 0)
    target_mask = (learn_t[:, 1:].bool() & same_doc).float()
    return PackedRows(tokens=tokens, target_mask=target_mask, doc_ids=docs)


def causal_batch(tokens: torch.Tensor, target_mask: torch.Tensor, doc_ids: torch.Tensor | None = None) -> Batch:
    """A Megatron micro-batch from rows of ``s + 1`` tokens: block-diagonal causal mask (True =
    hidden), positions restarting per document."""
    inputs, labels = tokens[:, :-1], tokens[:, 1:]
    b, s = inputs.shape
    causal = torch.ones(s, s, dtype=torch.bool).tril()
    if doc_ids is None:
        allowed = causal.expand(b, s, s)
        position_ids = torch.arange(s).expand(b, s)
    else:
        d = doc_ids[:, :-1]
        allowed = causal & (d[:, :, None] == d[:, None, :])
        starts = torch.ones_like(d, dtype=torch.bool)
        starts[:, 1:] = d[:, 1:] != d[:, :-1]
        idx = torch.arange(s).expand(b, s)
        last_start = torch.cummax(torch.where(starts, idx, torch.zeros_like(idx)), dim=1).values
        position_ids = idx - last_start
    return Batch(
        input_ids=inputs.contiguous(),
        position_ids=position_ids.contiguous(),
        labels=labels.contiguous(),
        loss_mask=target_mask.float().contiguous(),
        attention_mask=(~allowed).unsqueeze(1).contiguous(),
    )


@dataclass
class BatchSchedule:
    """Which rows make the micro-batch ``(step, micro)`` on data-parallel rank ``dp_rank``."""

    rows: PackedRows
    micro_batch_size: int
    grad_accum_steps: int
    dp_rank: int = 0
    dp_size: int = 1
    seed: int = 1234

    def global_batch_size(self) -> int:
        return self.micro_batch_size * self.grad_accum_steps * self.dp_size

    def _order(self, epoch: int) -> list[int]:
        order = list(range(len(self.rows)))
        random.Random(self.seed + epoch).shuffle(order)
        return order

    def micro_batch(self, step: int, micro: int) -> Batch:
        gbs = self.global_batch_size()
        n = len(self.rows)
        start = step * gbs + (micro * self.dp_size + self.dp_rank) * self.micro_batch_size
        idx = []
        for k in range(start, start + self.micro_batch_size):
            epoch, pos = divmod(k, n)
            idx.append(self._order(epoch)[pos])
        sel = torch.tensor(idx)
        return causal_batch(self.rows.tokens[sel], self.rows.target_mask[sel], self.rows.doc_ids[sel])


def eval_batches(rows: PackedRows, micro_batch_size: int, max_batches: int) -> Iterator[Batch]:
    """Validation micro-batches in fixed order (the whole split, up to ``max_batches``)."""
    for b in range(min(max_batches, (len(rows) + micro_batch_size - 1) // micro_batch_size)):
        sel = torch.arange(b * micro_batch_size, min((b + 1) * micro_batch_size, len(rows)))
        yield causal_batch(rows.tokens[sel], rows.target_mask[sel], rows.doc_ids[sel])
