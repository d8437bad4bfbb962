"""Export parity: the trainer's Megatron model vs the exported checkpoint in transformers and vLLM.

All on the weights of one real SFT run (``sft_run`` fixture): the final checkpoint is loaded into
a Megatron GPTModel here, and its ``hf/`` export into transformers (in process) and vLLM (CPU,
float32, MTP speculative decoding, in a subprocess started once).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from mtp_trainer import checkpoint, hf_export, hf_import, mtp_modes
from mtp_trainer.data import causal_batch
from mtp_trainer.tokenizer import load as load_tokenizer

from .conftest import build_model

# Every test here shares a ~1 min training run (the sft_run fixture).
pytestmark = pytest.mark.slow

HF_LOGIT_ATOL = 2e-5  # float32; measured max |diff| 1.7e-6 on the trained run
VLLM_LOGPROB_ATOL = 1e-4  # float32, vLLM CPU kernels; measured max |diff| 8.5e-7
GEN_TOKENS = 32
QUESTIONS = [
    "Python documentation, topic 'assert', part 1.",
    "Python documentation, topic 'for', part 1.",
    "Python documentation, topic 'lambda', part 1.",
    "Python documentation, topic 'with', part 2.",
]


@pytest.fixture(scope="module")
def trained(dist_env, sft_run: Path):
    """(Megatron model with the final checkpoint's weights, model config, tokenizer, prompts)."""
    m = hf_import.model_config_from_dir(sft_run / "hf", "qwen3_next", "float32", 512)
    model = build_model(m, seed=0)
    ckpt = checkpoint.latest(sft_run)
    assert ckpt is not None and ckpt.name == "step_150"
    checkpoint.load(ckpt, model, None)
    model.eval()
    tok = load_tokenizer(sft_run / "hf")
    texts = [
        tok.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True, tokenize=False)
        for q in QUESTIONS
    ]
    prompts = [tok.encode(t, add_special_tokens=False) for t in texts]
    return model, m, tok, prompts


@torch.no_grad()
def megatron_logits(model, ids: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """(next-token logits [s, V], depth-1 MTP logits [s, V]) for one sequence."""
    tokens = torch.tensor([[*ids, 0]])
    out = mtp_modes.forward(
        model, causal_batch(tokens, torch.ones(1, len(ids))), mtp_modes.JOINT, 0.3, keep_logits=True
    )
    assert out.lm_logits is not None
    return out.lm_logits[:, 0], out.mtp_logits[0][:, 0]


@torch.no_grad()
def megatron_greedy(model, prompt: list[int], n: int) -> list[int]:
    seq = list(prompt)
    for _ in range(n):
        seq.append(int(megatron_logits(model, seq)[0][-1].argmax()))
    return seq[len(prompt) :]


def simulate_acceptance(mtp_pred: list[int], seq: list[int], prompt_len: int) -> tuple[int, int]:
    """Drafts and accepted drafts of greedy k=1 MTP speculation, replayed from the trainer's MTP
    argmax: the draft for token j comes from position j-2 and is accepted iff it equals token j;
    after an acceptance the next draft is for j+2 (draft + bonus token), else for j+1."""
    drafts = accepted = 0
    j = prompt_len + 1
    while j < len(seq):
        drafts += 1
        if mtp_pred[j - 2] == seq[j]:
            accepted += 1
            j += 2
        else:
            j += 1
    return drafts, accepted


def test_sft_run_lowers_both_losses(sft_run: Path) -> None:
    recs = [json.loads(line) for line in (sft_run / "metrics.jsonl").read_text().splitlines()]
    val = [r for r in recs if r.get("split") == "validation"]
    train = [r for r in recs if "split" not in r]
    assert [r["step"] for r in val] == [0, 75, 150]
    assert len(train) == 150 and all(len(r["mtp_loss"]) == 1 and len(r["mtp_agreement"]) == 1 for r in train)
    first, last = val[0], val[-1]
    assert last["lm_loss"] < first["lm_loss"] - 2.0, (first, last)
    assert last["mtp_loss"][0] < first["mtp_loss"][0] - 1.5, (first, last)
    assert last["mtp_agreement"][0] > first["mtp_agreement"][0] + 0.05
    assert (sft_run / "hf" / "model.safetensors").is_file() and (sft_run / "checkpoints" / "step_75").is_dir()


def test_transformers_trunk_logits_match(trained, sft_run: Path) -> None:
    model, _, _, prompts = trained
    hf = AutoModelForCausalLM.from_pretrained(str(sft_run / "hf"), dtype=torch.float32)
    assert type(hf).__name__ == "Qwen3NextForCausalLM"
    for ids in prompts:
        ref = megatron_logits(model, ids)[0]
        got = hf(torch.tensor([ids])).logits[0]
        torch.testing.assert_close(got, ref, atol=HF_LOGIT_ATOL, rtol=0)


@pytest.mark.parametrize(
    ("family", "arch", "key", "value"),
    [
        ("qwen3_5", "Qwen3_5ForCausalLM", "mtp_num_hidden_layers", 1),  # the GPU flavour, dense
        ("qwen3_next_one_expert", "Qwen3NextForCausalLM", "num_experts", 1),  # for stock vLLM
    ],
)
def test_other_flavours_match_in_transformers(
    trained, tmp_path: Path, family: str, arch: str, key: str, value: int
) -> None:
    """The other export flavours carry the same function, and import back to the same weights."""
    model, m, tok, prompts = trained
    out = hf_export.export(model, replace(m, family=family), tok, tmp_path / family)
    assert json.loads((out / "config.json").read_text())[key] == value
    hf = AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32)
    assert type(hf).__name__ == arch
    ids = prompts[0]
    torch.testing.assert_close(
        hf(torch.tensor([ids])).logits[0], megatron_logits(model, ids)[0], atol=HF_LOGIT_ATOL, rtol=0
    )
    again = build_model(m, seed=98)
    hf_import.load_into(again, out, m)
    ref = model.state_dict()
    for name, t in again.state_dict().items():
        if "_extra_state" not in name:
            torch.testing.assert_close(t, ref[name], atol=1e-7, rtol=0, msg=name)


def test_import_round_trip(trained, sft_run: Path) -> None:
    model, m, _, _ = trained
    again = build_model(m, seed=99)
    hf_import.load_into(again, sft_run / "hf", m)
    ref = model.state_dict()
    for name, t in again.state_dict().items():
        if "_extra_state" not in name:
            torch.testing.assert_close(t, ref[name], atol=1e-7, rtol=0, msg=name)


def _run_vllm_probe(model_dir: Path, prompts: list[list[int]], workdir: Path, plugins: str) -> list[dict]:
    pfile = workdir / "prompts.json"
    pfile.write_text(json.dumps(prompts))
    venv = Path(sys.executable).resolve().parent.parent
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_PLUGINS": plugins}
    iomp = venv / "lib" / "libiomp5.so"
    if iomp.exists():
        env["LD_PRELOAD"] = str(iomp)
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.run(
        [sys.executable, "-m", "tests.trainer.vllm_probe", str(model_dir), str(pfile), str(GEN_TOKENS)],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        cwd=root,
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("VLLM_PROBE_RESULT ")]
    assert proc.returncode == 0 and lines, (proc.stdout[-3000:], proc.stderr[-6000:])
    return list(json.loads(lines[-1].split(" ", 1)[1]))


@pytest.fixture(scope="module")
def vllm_dense(trained, sft_run: Path, tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    """The run's own export (dense qwen3_next), served with the rollout's vLLM plugin, as in production."""
    return _run_vllm_probe(sft_run / "hf", trained[3], tmp_path_factory.mktemp("vllm"), "mtp_dense_qwen3_next")


@pytest.fixture(scope="module")
def vllm_stock(trained, tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    """The one-expert export of the same weights, served by stock vLLM (no plugins at all)."""
    model, m, tok, prompts = trained
    work = tmp_path_factory.mktemp("vllm_stock")
    out = hf_export.export(model, replace(m, family="qwen3_next_one_expert"), tok, work / "hf")
    assert json.loads((out / "config.json").read_text())["num_experts"] == 1
    return _run_vllm_probe(out, prompts, work, "")


VLLM_FLAVOURS = ["vllm_dense", "vllm_stock"]


@pytest.mark.parametrize("flavour", VLLM_FLAVOURS)
def test_vllm_trunk_matches(trained, flavour: str, request: pytest.FixtureRequest) -> None:
    """Greedy tokens identical; vLLM's logprob of each generated token = Megatron's."""
    model, _, _, prompts = trained
    vllm_results = request.getfixturevalue(flavour)
    for ids, res in zip(prompts, vllm_results, strict=True):
        assert res["tokens"] == megatron_greedy(model, ids, GEN_TOKENS)
        lm = megatron_logits(model, ids + res["tokens"])[0]
        ref = torch.log_softmax(lm.double(), dim=-1)
        pos = range(len(ids) - 1, len(ids) - 1 + len(res["tokens"]))
        want = torch.tensor([float(ref[p, t]) for p, t in zip(pos, res["tokens"], strict=True)])
        torch.testing.assert_close(
            torch.tensor(res["logprobs"], dtype=torch.float64), want.double(), atol=VLLM_LOGPROB_ATOL, rtol=0
        )


@pytest.mark.parametrize("flavour", VLLM_FLAVOURS)
def test_vllm_mtp_drafter_matches_trainer_mtp_argmax(trained, flavour: str, request: pytest.FixtureRequest) -> None:
    """vLLM's draft acceptance per request equals a replay of the trainer's MTP argmax."""
    model, _, _, prompts = trained
    vllm_results = request.getfixturevalue(flavour)
    total_acc = total_drafts = 0
    for ids, res in zip(prompts, vllm_results, strict=True):
        seq = ids + res["tokens"]
        mtp_pred = megatron_logits(model, seq)[1].argmax(-1).tolist()
        drafts, accepted = simulate_acceptance(mtp_pred, seq, len(ids))
        assert (res["drafts"], res["accepted"]) == (drafts, accepted), (ids, res, drafts, accepted)
        total_acc += accepted
        total_drafts += drafts
    # Not vacuous: some drafts accepted and some rejected across the prompts.
    assert 0 < total_acc < total_drafts
