"""``python -m mtp_trainer.main --job FILE --check``: the plan, or exit 2 naming the field, with
nothing downloaded or built; and the config.json check a huggingFace source gets before its weights."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from mtp_trainer import hub, main
from mtp_trainer.check import model_from_hf_config
from mtp_trainer.config import ConfigError, SourceConfig, from_job
from mtp_trainer.model_provider import ModelProvider

from .conftest import SFT_JOB

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((REPO / "examples").glob("*.yaml"))
# What this release refuses of the shipped examples, and the fields the refusal names.


def _check(job: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, dict[str, Any] | None, str]:
    rc = main.main(["--job", str(job), "--check"])
    out, err = capsys.readouterr()
    return rc, (json.loads(out) if rc == 0 else None), err


@pytest.fixture(autouse=True)
def _no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """--check must never download: any Hub call fails the test."""
    import huggingface_hub

    def refuse(*a: object, **k: object) -> None:
        raise AssertionError("--check downloaded something")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", refuse)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", refuse)


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_every_example_passes(path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Every shipped example, the 27B one with pipeline parallel 2 included, passes ``--check``."""
    rc, plan, err = _check(path, capsys)
    assert rc == 0, err
    assert plan is not None
    tr = yaml.safe_load(path.read_text())["spec"]["trainer"]
    world = tr.get("replicas", 1) * max(tr.get("gpusPerReplica", 8), 1)
    par = plan["parallel"]
    assert par["world_size"] == world
    assert par["tensor"] * par["pipeline"] * par["data"] == world


def test_7b_plan_defers_the_claim_it_cannot_read(capsys: pytest.CaptureFixture[str]) -> None:
    rc, plan, err = _check(REPO / "examples" / "qwen3.5-7b-sft.yaml", capsys)
    assert rc == 0, err
    assert plan is not None
    assert plan["parallel"] == {
        "world_size": 8,
        "device": "gpu",
        "tensor": 2,
        "pipeline": 1,
        "data": 4,
        "expert": 1,
        "sequence_parallel": True,
        "recompute": "none",
        "distributed_optimizer": True,
    }
    assert plan["model"]["source"] == "pvc:base-models/Qwen3.5-7B"
    assert "checked at start-up" in plan["model"]["config"]
    assert plan["data"]["grad_accum_steps"] == 8  # 64 / (2 micro x 4 DP)
    assert all("mounted volume" in f["where"] for f in plan["data"]["files"])
    said = " ".join(plan["warnings"])
    # Both applied (norms.SequenceParallelRMSNorm; optimizer.py shards AdamW over the 4 DP ranks).
    assert "spec.trainer.strategy.distributedOptimizer" not in said
    assert "spec.trainer.strategy.sequenceParallel" not in said


def test_tiny_plan_counts_the_parameters_of_the_model_it_would_build(
    dist_env: object, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    job = tmp_path / "job.yaml"
    job.write_text(SFT_JOB)
    rc, plan, err = _check(job, capsys)
    assert rc == 0, err
    assert plan is not None
    cfg = from_job(main.load_job(job), base_dir=tmp_path)
    built = ModelProvider(cfg.model).provide()  # the independent count: the real model's tensors
    assert plan["model"]["parameters"] == sum(p.numel() for p in built.parameters())
    assert (plan["model"]["layers"], plan["model"]["mtp_layers"], plan["mode"]) == (2, 1, "joint")
    assert not (tmp_path / "out").exists()


def _job(tmp_path: Path, edit: Any) -> Path:
    body = yaml.safe_load(SFT_JOB)
    edit(body["spec"])
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump(body))
    return job


def _checkpoint(tmp_path: Path, **over: Any) -> Path:
    cfg = {
        "model_type": "qwen3_5_text",
        "hidden_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "head_dim": 32,
        "intermediate_size": 128,
        "vocab_size": 512,
        "mtp_num_hidden_layers": 1,
        "layer_types": ["full_attention", "full_attention"],
    }
    cfg.update(over)
    d = tmp_path / "ckpt"
    d.mkdir(exist_ok=True)
    (d / "config.json").write_text(json.dumps(cfg))
    return d


def _path_source(spec: dict[str, Any]) -> None:
    spec["model"]["source"] = {"path": "ckpt"}


REFUSALS = [
    # id, job edit, checkpoint config.json overrides (None: no checkpoint), field the error names
    ("missing-data", lambda s: s["trainer"]["data"].update(trainFiles=["nope/*.jsonl"]), None,
     "spec.trainer.data.trainFiles[0]"),
    ("parquet-for-sft", lambda s: s["trainer"]["data"].update(trainFiles=["d.parquet"]), None,
     "spec.trainer.data.trainFiles[0]"),
    ("tp-over-vocab", lambda s: (s["trainer"].update(gpusPerReplica=0, replicas=3),
                                 s["trainer"].update(strategy={"tensorParallelSize": 3}),
                                 s["model"]["source"]["tiny"].update(numKeyValueHeads=3, numAttentionHeads=3,
                                                                     hiddenSize=96)),
     None, "spec.model.source.tiny.vocabSize"),
    ("checkpoint-moe", _path_source, {"num_experts": 8}, "spec.model.source"),
    ("checkpoint-mtp-depth", _path_source, {"mtp_num_hidden_layers": 0}, "spec.model.mtpNumLayers"),
    ("checkpoint-tp-split", lambda s: (_path_source(s), s["trainer"].update(replicas=2),
                                       s["trainer"].update(strategy={"tensorParallelSize": 2})),
     {}, "spec.trainer.strategy.tensorParallelSize"),
    ("checkpoint-missing", _path_source, None, "spec.model.source.path"),
]  # fmt: skip


@pytest.mark.parametrize(("case", "edit", "ckpt", "field"), REFUSALS, ids=[r[0] for r in REFUSALS])
def test_refusals_name_the_field(
    case: str, edit: Any, ckpt: dict | None, field: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    if ckpt is not None:
        _checkpoint(tmp_path, **ckpt)
    rc, _, err = _check(_job(tmp_path, edit), capsys)
    assert rc == 2
    assert field in err, err


def test_readable_checkpoint_plan(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _checkpoint(tmp_path)
    rc, plan, err = _check(_job(tmp_path, _path_source), capsys)
    assert rc == 0, err
    assert plan is not None
    assert (plan["model"]["layers"], plan["model"]["hidden_size"], plan["model"]["mtp_layers"]) == (2, 64, 1)


# ------------------------------------------------------------------ huggingFace: config.json first


class _Hub:
    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config
        self.full: list[str] = []

    def config_only(self, repo_id: str, revision: str, local_dir: Path) -> None:
        (local_dir / "config.json").write_text(json.dumps(self.config))

    def everything(self, repo_id: str, revision: str, local_dir: Path) -> None:
        self.full.append(repo_id)
        (local_dir / "model.safetensors").write_bytes(b"")


def _hf_check(tmp_path: Path) -> Any:
    cfg = from_job(main.load_job(_job(tmp_path, lambda s: None)), base_dir=tmp_path)
    return lambda hf_cfg: model_from_hf_config(hf_cfg, cfg, 1)


@pytest.mark.parametrize(
    ("over", "field"),
    [({"num_experts": 8}, "spec.model.source"), ({"mtp_num_hidden_layers": 2}, "spec.model.mtpNumLayers")],
)
def test_hub_checks_config_before_any_weights(tmp_path: Path, over: dict, field: str) -> None:
    cfg = json.loads((_checkpoint(tmp_path, **over) / "config.json").read_text())
    fake = _Hub(cfg)
    src = SourceConfig(kind="huggingFace", repo_id="org/model", revision="main")
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        hub.fetch(
            src,
            tmp_path / "out",
            local_rank=0,
            download=fake.everything,
            download_config=fake.config_only,
            check_config=_hf_check(tmp_path),
        )
    assert fake.full == []  # refused on config.json alone


def test_hub_downloads_weights_after_a_good_config(tmp_path: Path) -> None:
    fake = _Hub(json.loads((_checkpoint(tmp_path) / "config.json").read_text()))
    src = SourceConfig(kind="huggingFace", repo_id="org/model", revision="main")
    got = hub.fetch(
        src,
        tmp_path / "out",
        local_rank=0,
        download=fake.everything,
        download_config=fake.config_only,
        check_config=_hf_check(tmp_path),
    )
    assert fake.full == ["org/model"]
    assert got.path is not None and (Path(got.path) / "model.safetensors").is_file()
