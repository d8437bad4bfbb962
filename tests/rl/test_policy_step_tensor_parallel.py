"""The GRPO policy step under tensor parallel 2 (two gloo processes), with and without sequence
parallel, and under pipeline parallel 2 (one stage per process, two micro-batches per mini-batch,
tied embeddings), against the 1-process step, in each MTP mode: the same statistics (policy loss, entropy, MTP loss, the clip groups' gradient norms)
and the same weights after two mini-batch updates, gathered to full tensors.

Why this is the test: an RL step under TP has three places to go wrong that the SFT TP test does not
reach: log-probabilities and entropy from vocab-parallel logits, the old log-probabilities recomputed
before the first update (the second mini-batch is then off-policy and the ratio clip acts), and the
per-shard clipping (each TP rank must scale its shard by the one global norm). SGD makes the update
linear in the clipped gradient, so a wrong clip scale or a missing tensor-parallel gradient sum shows
up in the weights. Pipeline parallel adds its own: the log-probs, the GRPO loss and every statistic
live on the last stage only, the embedding's gradient is split between the first stage and the last
stage's copy, and the clip norm spans both stages. The reference is this process's one-rank model,
which uses torch's own functions.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mtp_trainer import mtp_modes
from mtp_trainer.config import ModelConfig
from mtp_trainer.model_provider import ModelProvider
from mtp_trainer.rl.grpo import GRPOConfig
from mtp_trainer.rl.policy_step import RolloutSequence, rl_step
from mtp_trainer.sharding import full_state_dict
from tests.gloo_ranks import run_ranks

from ..trainer.conftest import dist_env  # noqa: F401  (the session's process group)

pytestmark = pytest.mark.usefixtures("dist_env")

VOCAB = 256
MODEL = dict(vocab_size=VOCAB, num_attention_heads=4, num_key_value_heads=2, head_dim=16, mtp_num_layers=1)
MODES = (mtp_modes.JOINT, mtp_modes.STANDALONE, mtp_modes.DISABLED)
CLIP = 0.05  # below the measured norms: clipping scales every gradient, so its global norm matters
LR = 0.5  # SGD: the weights after the step are linear in the clipped gradients
CFG = GRPOConfig(mini_batches=2, clip_low=0.2, clip_high=0.28, log_entropy=True)
# Pipeline parallel: two micro-batches per mini-batch (the schedule's sends in both directions) and tied
# embeddings (the last stage's copy is the MTP embedding and the output weight).
MODEL_PP = {**MODEL, "tie_word_embeddings": True}
CFG_PP = GRPOConfig(mini_batches=2, clip_low=0.2, clip_high=0.28, log_entropy=True, micro_batch_size=1)


def _sequences() -> list[RolloutSequence]:
    g = torch.Generator().manual_seed(5)
    prompts = [torch.randint(0, VOCAB, (5,), generator=g).tolist(), torch.randint(0, VOCAB, (7,), generator=g).tolist()]
    return [
        RolloutSequence(prompts[k % 2], torch.randint(0, VOCAB, (7 + 3 * (k % 3),), generator=g).tolist())
        for k in range(4)
    ]


ADV = [1.0, -0.5, -1.0, 0.5]


def _step(model: torch.nn.Module, mode: str, cfg: GRPOConfig = CFG) -> dict[str, object]:
    mtp_modes.prepare(model, mode)
    sgd = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=LR)
    stats = rl_step(model, sgd, _sequences(), ADV, None, cfg, mode=mode, clip_grad=CLIP)
    return {"stats": stats, "weights": full_state_dict(model)}


_WORKER = """
import sys, torch
from mtp_trainer import distributed, mtp_modes
from mtp_trainer.config import ModelConfig
from mtp_trainer.model_provider import ModelProvider
from mtp_trainer.sharding import shard_state_dict
sys.path.insert(0, sys.argv[3])
from tests.rl import test_policy_step_tensor_parallel as case

layout = sys.argv[4]
info = distributed.init(*((2, 1) if layout == "tp" else (1, 2)), seed=1234)
full = torch.load(sys.argv[1])
out = {}
if layout == "tp":
    for sp in (False, True):
        for mode in case.MODES:
            model = ModelProvider(ModelConfig(**case.MODEL), tensor_parallel_size=2, sequence_parallel=sp).provide()
            assert model.config.sequence_parallel == sp
            model.load_state_dict(shard_state_dict(model, full), strict=False)
            out[mode, layout + ("-sp" if sp else "")] = case._step(model, mode)
else:
    for mode in case.MODES:
        model = ModelProvider(ModelConfig(**case.MODEL_PP), pipeline_parallel_size=2).provide()
        model.load_state_dict(shard_state_dict(model, full), strict=False)
        out[mode, layout] = case._step(model, mode, case.CFG_PP)
if info.rank == 0:
    torch.save(out, sys.argv[2])
distributed.shutdown()
"""


def _runs(layout: str, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, dict, dict]:
    """(one-process results, two-rank results, start weights) for ``layout`` (tp: TP 2 with and
    without sequence parallel; pp: PP 2)."""
    model_kw, cfg = (MODEL, CFG) if layout == "tp" else (MODEL_PP, CFG_PP)
    tmp = tmp_path_factory.mktemp(f"rl-{layout}")
    torch.manual_seed(3)
    start = full_state_dict(ModelProvider(ModelConfig(**model_kw)).provide())
    torch.save(start, tmp / "start.pt")
    one = {}
    for mode in MODES:
        model = ModelProvider(ModelConfig(**model_kw)).provide()
        model.load_state_dict(start, strict=False)
        one[mode] = _step(model, mode, cfg)
    (tmp / "worker.py").write_text(_WORKER)
    out = tmp / "two.pt"
    run_ranks(tmp / "worker.py", [str(tmp / "start.pt"), str(out), str(Path(__file__).parents[2]), layout])
    return one, torch.load(out), start


@pytest.fixture(scope="module")
def tp_runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, dict, dict]:
    return _runs("tp", tmp_path_factory)


@pytest.fixture(scope="module")
def pp_runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, dict, dict]:
    return _runs("pp", tmp_path_factory)


@pytest.mark.parametrize("case", ["tp", "tp-sp", "pp"])
@pytest.mark.parametrize("mode", MODES)
def test_rl_step_two_ranks_match_one_process(request: pytest.FixtureRequest, mode: str, case: str) -> None:
    """TP 2 with and without sequence parallel (with it the batch is right-padded to an even length,
    the responses having odd and even lengths: the padding must change nothing), and PP 2."""
    runs = request.getfixturevalue("pp_runs" if case == "pp" else "tp_runs")
    one, two = runs[0][mode], runs[1][mode, case]
    s1, s2 = one["stats"], two["stats"]
    for key in ("policy_loss", "pg_loss", "entropy", "kl_old", "clip_fraction", "ratio_mean", "tokens"):
        assert s2[key] == pytest.approx(s1[key], rel=1e-5, abs=1e-7), key
    assert s2["mtp_loss"] == pytest.approx(s1["mtp_loss"], rel=1e-5)
    assert s2["grad_norm"] == pytest.approx(s1["grad_norm"], rel=1e-5)
    assert all(n > CLIP for n in s1["grad_norm"])  # the clip acted in every group
    assert s1["kl_old"] > 0  # the second mini-batch was off-policy: the old log-probs mattered
    moved = 0
    for name, w in one["weights"].items():
        torch.testing.assert_close(two["weights"][name], w, atol=2e-6, rtol=1e-4, msg=name)
        moved += int(not torch.equal(w, runs[2][name]))
    assert moved > 0
