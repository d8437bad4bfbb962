"""Data path (masking, packing, sources), metrics output and the entry point's bad-input errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from prometheus_client import generate_latest

from mtp_trainer import data, main, tokenizer
from mtp_trainer.config import ConfigError, DataConfig, MetricsConfig
from mtp_trainer.metrics import Metrics, StepRecord


@pytest.fixture(scope="module")
def tok():
    return tokenizer.train_bpe(data.corpus_text(data.pydoc_examples()[:200]), 400)


def test_pydoc_corpus_is_real_text() -> None:
    ex = data.pydoc_examples()
    assert len(ex) > 500
    assert any("assert" in c[1]["content"] for c in ex)
    assert all(c[0]["role"] == "user" and c[1]["role"] == "assistant" and len(c[1]["content"]) <= 400 for c in ex)


def test_loss_mask_covers_response_only(tok) -> None:
    conv = [{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "four"}]
    ids, learn = data.encode(conv, tok)
    learned = tok.decode([i for i, f in zip(ids, learn, strict=True) if f])
    assert learned == "four" + tokenizer.IM_END
    text = tok.apply_chat_template(conv, tokenize=False)
    assert tok.decode(ids) == text  # training rendering == the chat template vLLM applies


def test_packing_blocks_attention_across_documents(tok) -> None:
    convs = [[{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"answer {i}"}] for i in range(6)]
    rows = data.pack(convs, tok, seq_length=64, seed=0)
    assert len(rows) < len(convs)  # several examples share a row
    b = data.causal_batch(rows.tokens[:1], rows.target_mask[:1], rows.doc_ids[:1])
    docs = rows.doc_ids[0, :-1]
    hidden = b.attention_mask[0, 0]
    for i in range(64):
        for j in range(64):
            visible = j <= i and docs[i] == docs[j]
            assert bool(hidden[i, j]) == (not visible)
    starts = torch.nonzero(docs[1:] != docs[:-1]).flatten() + 1
    assert all(int(b.position_ids[0, s]) == 0 for s in starts)
    # No target crosses a document boundary.
    assert all(b.loss_mask[0, s - 1] == 0 for s in starts)


def test_missing_train_file_names_the_field(tmp_path: Path) -> None:
    cfg = DataConfig(train_files=("nope/*.jsonl",), base_dir=str(tmp_path))
    with pytest.raises(ConfigError, match=r"spec\.trainer\.data\.trainFiles\[0\]"):
        data.split(cfg)


def test_bad_record_names_file_and_line(tmp_path: Path) -> None:
    (tmp_path / "d.jsonl").write_text('{"prompt": "a", "response": "b"}\n{"text": "x"}\n')
    with pytest.raises(ConfigError, match=r"d\.jsonl:2"):
        data.split(DataConfig(train_files=("d.jsonl",), base_dir=str(tmp_path)))


def test_entry_point_exits_2_with_field_on_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    job = tmp_path / "job.yaml"
    job.write_text(
        "apiVersion: mtp.io/v1alpha1\nkind: MTPTrainingJob\nmetadata: {name: bad}\nspec:\n  pipeline: sft\n"
        "  model: {source: {tiny: {}}, family: qwen3_next, dtype: float32, mtpNumLayers: 1}\n"
        "  trainer:\n    gpusPerReplica: 0\n    strategy: {pipelineParallelSize: 2}\n"
        "    hyperparameters: {globalBatchSize: 8, microBatchSize: 8}\n"
        "    data: {trainFiles: [missing.jsonl]}\n"
    )
    assert main.main(["--job", str(job), "--output-dir", str(tmp_path / "out"), "--metrics-port", "0"]) == 2
    err = capsys.readouterr().err
    assert "spec.trainer.strategy" in err or "pipelineParallelSize" in err


def test_metrics_jsonl_and_prometheus_names(tmp_path: Path) -> None:
    m = Metrics(MetricsConfig(port=0, job="j", namespace="ns"), tmp_path)
    m.record(StepRecord(3, 2.5, [2.7], [0.25], 0.3, 1000.0, 0.1, 1e-3, [1.0]))
    m.record(StepRecord(3, 2.4, [2.6], [0.3], 0.3, 0.0, 0.2, 1e-3, split="validation"))
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert lines[0]["step"] == 3 and lines[0]["mtp_loss"] == [2.7] and "split" not in lines[0]
    assert lines[1]["split"] == "validation"
    text = generate_latest(m.registry).decode()
    for needle in (
        'mtp_trainer_step{job="j",namespace="ns"} 3.0',
        'mtp_trainer_mtp_loss{depth="1",job="j",namespace="ns",split="train"} 2.7',
        'mtp_trainer_mtp_agreement{depth="1",job="j",namespace="ns",split="validation"} 0.3',
        "mtp_trainer_tokens_per_second",
        "mtp_trainer_step_seconds",
        'mtp_trainer_lm_loss{job="j",namespace="ns",split="train"} 2.5',
    ):
        assert needle in text, needle


def test_prompt_response_records_use_the_spec_keys(tmp_path: Path) -> None:
    f = tmp_path / "alpaca.jsonl"
    f.write_text(json.dumps({"instruction": "Say hi.", "output": "Hi!"}) + "\n")
    cfg = DataConfig(train_files=(str(f),), format="prompt_response", prompt_key="instruction", response_key="output")
    assert data.load_conversations(cfg.train_files, cfg, "spec.trainer.data.trainFiles") == [
        [{"role": "user", "content": "Say hi."}, {"role": "assistant", "content": "Hi!"}]
    ]
    default = DataConfig(train_files=(str(f),), format="prompt_response")
    with pytest.raises(ConfigError, match=r"'prompt' \+ 'response'.*promptKey/responseKey"):
        data.load_conversations(default.train_files, default, "spec.trainer.data.trainFiles")
