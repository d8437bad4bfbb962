"""Weight sync proves itself: after a sync, a running vLLM serves exactly the trainer's weights, drafter included.

One tiny Megatron model (the trainer's own code) is trained for a few seconds on a cyclic token
pattern, so that its MTP head is mostly right and speculation both accepts and rejects drafts.
It is exported and served by vLLM (CPU, float32, MTP speculation k=2, ``server_plan(...,
weight_sync=True)``). Then:

1. every parameter is perturbed; before the sync vLLM still serves the old weights (its logprobs
   differ from the trainer's), after ``WeightSync.sync()`` its greedy tokens are the trainer's
   argmax, its logprobs equal the trainer's within fp32 tolerance, its per-request drafts and
   accepted drafts equal a replay of the trainer's MTP argmax, and the weight version is 1;
2. only the MTP parameters are perturbed; the replay with the new head differs from the old one's
   (so only a synced drafter can match it), and after the second sync vLLM matches the new replay,
   at weight version 2.

The k=2 replay follows vLLM's MTP proposer: draft 1 is the MTP layer at the last verified
position (the trainer's ordinary MTP argmax); draft 2 runs the same MTP layer one position later on
[embedding of draft 1, MTP output hidden state of draft 1], attending to the true positions before.

A fast-tier test drives ``WeightSync`` and ``RolloutClient`` against two stub replicas: route
order, payload, versions, pruning, the written tensors, and the client's request/response handling.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.e2e.conftest import job_with_k, needs_vllm

K = 2
GEN_TOKENS = 24
VLLM_LOGPROB_ATOL = 1e-4  # float32 vLLM CPU kernels vs Megatron (export parity measured 8.5e-7)
CYCLE = list(range(40, 80))  # token ids of the learned pattern (byte tokens: in every BPE vocab)
TRAIN_STEPS = 30  # partly trained: the head is right often, not always


def _model_config() -> Any:
    from mtp_trainer.config import ModelConfig

    # vLLM-CPU-friendly: head dim 32, float32; one MTP layer.
    return ModelConfig(
        hidden_size=64,
        num_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=32,
        ffn_hidden_size=128,
        vocab_size=512,
        mtp_num_layers=1,
        max_position_embeddings=512,
    )


def _successor() -> dict[int, int]:
    g = torch.Generator().manual_seed(7)
    perm = [CYCLE[i] for i in torch.randperm(len(CYCLE), generator=g).tolist()]
    return {a: b for a, b in zip(perm, perm[1:] + perm[:1], strict=True)}


def _walk(start: int, n: int, nxt: dict[int, int]) -> list[int]:
    out = [start]
    while len(out) < n:
        out.append(nxt[out[-1]])
    return out


@pytest.fixture(scope="module")
def dist() -> Iterator[None]:
    import torch.distributed as tdist

    from mtp_trainer import distributed

    owned = not tdist.is_initialized()
    distributed.init(1, 1, seed=1234)
    yield
    if owned:
        distributed.shutdown()


def _train(model: torch.nn.Module, nxt: dict[int, int]) -> float:
    from mtp_trainer import mtp_modes
    from mtp_trainer.data import causal_batch

    g = torch.Generator().manual_seed(0)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    loss = float("nan")
    for _ in range(TRAIN_STEPS):
        starts = [CYCLE[int(i)] for i in torch.randint(len(CYCLE), (8,), generator=g)]
        tokens = torch.tensor([_walk(s, 65, nxt) for s in starts])
        out = mtp_modes.forward(model, causal_batch(tokens, torch.ones(8, 64)), mtp_modes.JOINT, 0.3)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        loss = float(out.loss.detach())
    model.eval()
    return loss


@torch.no_grad()
def _perturb(model: torch.nn.Module, seed: int, scale: float, only_mtp: bool = False) -> None:
    from mtp_trainer import mtp_modes

    g = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        if only_mtp and not mtp_modes.is_mtp_param(name):
            continue
        p.add_(torch.randn(p.shape, generator=g) * scale * (float(p.std()) if p.numel() > 1 else 0.0))
        if p.numel() > 1 and float(p.std()) == 0.0:  # norm weights start constant
            p.add_(torch.randn(p.shape, generator=g) * 0.1 * scale)


class Trainer:
    """The trainer's view of one sequence: next-token logits, MTP argmax and the k=2 draft replay."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model

    @torch.no_grad()
    def _pass(self, seq: list[int]) -> dict[str, Any]:
        from mtp_trainer.data import causal_batch

        model: Any = self.model
        batch = causal_batch(torch.tensor([[*seq, 0]]), torch.ones(1, len(seq)))
        emb, rotary = model._preprocess(input_ids=batch.input_ids, position_ids=batch.position_ids)[:2]
        hidden = model.decoder(hidden_states=emb, attention_mask=batch.attention_mask, rotary_pos_emb=rotary)
        tied = model.shared_embedding_or_output_weight() if model.share_embeddings_and_output_weights else None
        logits, _ = model.output_layer(hidden, weight=tied)

        def mtp(ids: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            out, _, _ = model.mtp.layers[0](
                input_ids=ids,
                position_ids=batch.position_ids,
                hidden_states=h,
                attention_mask=batch.attention_mask,
                rotary_pos_emb=rotary,
                embedding=model.embedding,
            )
            return out, model.output_layer(out, weight=tied)[0][:, 0]

        g, mtp_logits = mtp(batch.input_ids, hidden)
        return {
            "ids": batch.input_ids,
            "hidden": hidden,
            "g": g,
            "logits": logits[:, 0],
            "mtp_logits": mtp_logits,
            "mtp": mtp,
        }

    def logprobs(self, seq: list[int], prompt_len: int) -> tuple[list[int], list[float]]:
        """(argmax token, log-probability of the actual token) at each generated position."""
        r = self._pass(seq)
        lp = torch.log_softmax(r["logits"].double(), dim=-1)
        pos = range(prompt_len - 1, len(seq) - 1)
        return [int(r["logits"][p].argmax()) for p in pos], [float(lp[p, seq[p + 1]]) for p in pos]

    def replay(self, seq: list[int], prompt_len: int) -> tuple[int, int]:
        """(drafts, accepted) of greedy k=2 MTP speculation over ``seq`` (prompt + greedy output)."""
        r = self._pass(seq)
        pred = r["mtp_logits"].argmax(-1).tolist()
        # vLLM verifies the last step's second draft against the target's next token even when
        # max_tokens then truncates the output: the trainer's greedy token after the end.
        ext = [*seq, int(r["logits"][-1].argmax())]
        drafts = accepted = 0
        j = prompt_len + 1  # the first token a draft is made for (token P comes from the prefill)
        while j < len(seq):
            drafts += 1
            d1 = pred[j - 2]  # MTP at position j-2: [emb(token j-1), trunk hidden j-2]
            if d1 != seq[j]:
                j += 1
                continue
            accepted += 1
            if self._draft2(r, j, d1) == ext[j + 1]:
                accepted += 1
                j += 3
            else:
                j += 2
        return drafts, accepted

    @torch.no_grad()
    def _draft2(self, r: dict[str, Any], j: int, d1: int) -> int:
        # The same MTP layer at position j-1 on [emb(d1), MTP output at j-2]; earlier positions are
        # true (causal attention keeps them unaffected by this position's inputs).
        ids = r["ids"].clone()
        ids[0, j] = d1  # the layer embeds the next token: position j-1 reads ids[j]
        h = r["hidden"].clone()
        h[j - 1] = r["g"][j - 2]
        _, logits = r["mtp"](ids, h)
        return int(logits[j - 1].argmax())


def _counter(text: str, name: str) -> float:
    from mtp_api.exposition import parse

    return sum(s.value for s in parse(text).samples if s.name == name)


def _probe(client: Any, prompts: list[list[int]]) -> list[dict[str, Any]]:
    """Greedy generation one prompt at a time, with that request's draft counters."""
    from mtp_rollout.metrics import metric_names as mn

    out = []
    for ids in prompts:
        before = client.metrics_text()[0]
        [[s]] = client.generate([ids], n=1, max_tokens=GEN_TOKENS, temperature=0.0, top_p=1.0, seed=0, ignore_eos=True)
        after = client.metrics_text()[0]
        out.append(
            {
                "tokens": s.token_ids,
                "logprobs": s.logprobs,
                "version": s.weight_version,
                "finish": s.finish_reason,
                "drafts": int(_counter(after, mn.VLLM_DRAFTS) - _counter(before, mn.VLLM_DRAFTS)),
                "accepted": int(_counter(after, mn.VLLM_ACCEPTED) - _counter(before, mn.VLLM_ACCEPTED)),
            }
        )
    return out


def _compare(trainer: Trainer, prompts: list[list[int]], got: list[dict[str, Any]]) -> dict[str, Any]:
    """How vLLM's results relate to the trainer's current weights."""
    max_diff, greedy_ok, replay = 0.0, True, []
    for ids, res in zip(prompts, got, strict=True):
        seq = ids + res["tokens"]
        argmax, want = trainer.logprobs(seq, len(ids))
        greedy_ok &= argmax == res["tokens"]
        max_diff = max(max_diff, max(abs(a - b) for a, b in zip(res["logprobs"], want, strict=True)))
        replay.append(trainer.replay(seq, len(ids)))
    counts = [(r["drafts"], r["accepted"]) for r in got]
    return {"max_diff": max_diff, "greedy": greedy_ok, "replay": replay, "counts": counts}


@pytest.mark.slow
@needs_vllm
def test_weight_sync_target_and_drafter(dist: None, tmp_path: Path) -> None:
    from mtp_rollout.runtime.launcher import server_plan
    from mtp_rollout.runtime.server import free_port, running
    from mtp_trainer import hf_export, tokenizer
    from mtp_trainer.model_provider import ModelProvider
    from mtp_trainer.rl.rollout_client import RolloutClient
    from mtp_trainer.rl.weight_sync import WeightSync
    from tests.e2e.procs import wait_gone

    t0 = time.monotonic()
    m = _model_config()
    torch.manual_seed(0)
    model = ModelProvider(m, mtp_loss_scaling_factor=0.3).provide()
    nxt = _successor()
    loss = _train(model, nxt)
    trainer = Trainer(model)
    prompts = [_walk(s, 6, nxt) for s in CYCLE[:4]]

    tok = tokenizer.train_bpe([" ".join(f"w{i}" for i in range(200))] * 4, m.vocab_size)
    hf = hf_export.export(model, m, tok, tmp_path / "hf")
    port = free_port()
    plan = server_plan(job_with_k(K), str(hf), host="127.0.0.1", port=port, weight_sync=True)
    assert plan.env["VLLM_SERVER_DEV_MODE"] == "1" and "--weight-transfer-config" in plan.args
    with running(plan, tmp_path / "vllm.log", port=port) as server:
        pgid = server.proc.pid if server.proc else 0
        client = RolloutClient([server.base_url], "tiny-sft")
        client.wait_ready(60)
        sync = WeightSync(model, m, client, tmp_path / "sync")
        t_up = time.monotonic()

        # Version 0: the export itself (export parity, here through the HTTP client).
        v0 = _probe(client, prompts)
        c0 = _compare(trainer, prompts, v0)
        assert c0["greedy"] and c0["max_diff"] < VLLM_LOGPROB_ATOL and c0["counts"] == c0["replay"], c0
        assert {r["version"] for r in v0} == {None} and client.weight_versions() == [None]

        # Sync 1: every parameter moves. Before the sync vLLM still serves the old weights.
        _perturb(model, seed=1, scale=1.0)
        stale = _compare(trainer, prompts, _probe(client, prompts))
        assert stale["max_diff"] > 1e-2, stale
        t_sync = time.monotonic()
        assert sync.sync() == 1
        sync1_s = time.monotonic() - t_sync
        v1 = _probe(client, prompts)
        c1 = _compare(trainer, prompts, v1)
        assert c1["greedy"] and c1["max_diff"] < VLLM_LOGPROB_ATOL, c1
        assert c1["counts"] == c1["replay"], c1
        assert {r["version"] for r in v1} == {1} and client.weight_versions() == [1]

        # Sync 2: only the MTP head moves; only a synced drafter can follow.
        _perturb(model, seed=2, scale=1.0, only_mtp=True)
        c_old = _compare(trainer, prompts, v1)
        assert c_old["max_diff"] < VLLM_LOGPROB_ATOL  # the trunk did not move ...
        assert c_old["replay"] != c1["counts"], (c_old, c1)  # ... the head's drafts did
        assert sync.sync() == 2
        v2 = _probe(client, prompts)
        c2 = _compare(trainer, prompts, v2)
        assert c2["greedy"] and c2["max_diff"] < VLLM_LOGPROB_ATOL, c2
        assert c2["counts"] == c2["replay"] != c1["counts"], (c2, c1)
        assert {r["version"] for r in v2} == {2} and client.weight_versions() == [2]
        # Not vacuous: drafts were both accepted and rejected, at both versions.
        for c in (c1, c2):
            acc, drafts = sum(a for _, a in c["counts"]), sum(d for d, _ in c["counts"])
            assert 0 < acc < K * drafts, c
        # Sampling (n > 1, temperature 1) through the client: shapes, the version, and vLLM's
        # sampled-token logprobs are the trainer's (what GRPO's old log-probabilities rely on).
        batch = client.generate(prompts[:2], n=3, max_tokens=8, temperature=1.0, top_p=1.0, seed=5)
        assert [len(b) for b in batch] == [3, 3]
        sampled_diff = 0.0
        for ids, samples in zip(prompts[:2], batch, strict=True):
            for smp in samples:
                assert len(smp.token_ids) == len(smp.logprobs) == 8 and smp.weight_version == 2
                assert smp.finish_reason == "length" and isinstance(smp.text, str)
                _, want = trainer.logprobs(ids + smp.token_ids, len(ids))
                sampled_diff = max(sampled_diff, *(abs(a - b) for a, b in zip(smp.logprobs, want, strict=True)))
        assert sampled_diff < VLLM_LOGPROB_ATOL, sampled_diff
        # Old versions are pruned (keep=2).
        assert sorted(p.name for p in (tmp_path / "sync").iterdir()) == ["v1", "v2"]
    assert wait_gone(pgid) == []
    print(
        f"\nweight sync: train loss {loss:.3f}; max |logprob diff| v0 {c0['max_diff']:.2e} v1 {c1['max_diff']:.2e} "
        f"v2 {c2['max_diff']:.2e}, sampled {sampled_diff:.2e}; stale {stale['max_diff']:.2e}; drafts/accepted v1 {c1['counts']} "
        f"v2 {c2['counts']} (a stale head: {c1['counts']}); sync {sync1_s:.2f}s; "
        f"server up {t_up - t0:.0f}s, total {time.monotonic() - t0:.0f}s"
    )


class _Stub(ThreadingHTTPServer):
    """A stand-in rollout replica that records the RL-API calls (fast tier: no vLLM)."""

    def __init__(self, drafter: bool = True) -> None:
        self.calls: list[tuple[str, Any]] = []
        outer = self
        # vLLM's /metrics has the speculative-decoding counters only when it runs a drafter
        metrics = (
            'vllm:spec_decode_num_drafts_total{engine="0"} 0.0\n' if drafter else "vllm:num_requests_running 0.0\n"
        )

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _reply(self, body: Any) -> None:
                raw = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            def do_GET(self) -> None:
                outer.calls.append((self.path, None))
                if self.path == "/metrics":
                    raw = metrics.encode()
                    self.send_response(200)
                    self.send_header("content-type", "text/plain")
                    self.send_header("content-length", str(len(raw)))
                    self.end_headers()
                    self.wfile.write(raw)
                    return
                self._reply({"weight_version": "default"} if self.path == "/weight_info" else {})

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["content-length"] or 0)) or b"{}")
                outer.calls.append((self.path, body))
                if self.path == "/v1/completions":
                    choices = [
                        {
                            "index": i,
                            "text": "ab",
                            "token_ids": [7, 8],
                            "finish_reason": "length",
                            "logprobs": {"token_logprobs": [-0.5, -0.25]},
                        }
                        for i in reversed(range(body["n"]))
                    ]
                    self._reply({"choices": choices})
                else:
                    self._reply({"success": True})

        super().__init__(("127.0.0.1", 0), Handler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


@pytest.fixture
def stubs() -> Iterator[list[_Stub]]:
    servers = [_Stub(), _Stub(drafter=False)]  # the second: a replica that auto k restarted as a plain engine
    threads = [threading.Thread(target=s.serve_forever, daemon=True) for s in servers]
    for t in threads:
        t.start()
    yield servers
    for s in servers:
        s.shutdown()
        s.server_close()


def test_weight_sync_protocol_against_stub_replicas(dist: None, tmp_path: Path, stubs: list[_Stub]) -> None:
    """Route order, payload, versions and pruning, on two replicas; and the client's parsing."""
    from safetensors import safe_open

    from mtp_trainer import hf_export
    from mtp_trainer.model_provider import ModelProvider
    from mtp_trainer.rl.rollout_client import RolloutClient
    from mtp_trainer.rl.weight_sync import WeightSync

    m = _model_config()
    torch.manual_seed(0)
    model = ModelProvider(m, mtp_loss_scaling_factor=0.3).provide()
    client = RolloutClient([s.url for s in stubs], "tiny")
    sync = WeightSync(model, m, client, tmp_path / "sync", keep=1)
    assert sync.sync() == 1 and sync.sync() == 2
    payload = {"update_info": {"path": str((tmp_path / "sync" / "v2").resolve()), "files": ["model.safetensors"]}}
    target = ["/start_weight_update", "/update_weights", "/finish_weight_update"]
    draft = ["/start_draft_weight_update", "/update_weights", "/finish_weight_update"]
    tail = ["/update_weight_version", "/reset_prefix_cache", "/resume"]
    for stub, drafts in zip(stubs, (True, False), strict=True):
        paths = [p for p, _ in stub.calls]
        one = ["/pause?mode=wait", *target, *(draft if drafts else []), *tail]
        # the first sync asks the replica whether it has a drafter, then initialises its engine
        assert paths == [one[0], "/metrics", "/init_weight_transfer_engine", *one[1:], *one]
        assert stub.calls[-(8 if drafts else 5)] == ("/update_weights", payload)
        assert stub.calls[-3] == ("/update_weight_version", {"new_version": "2"})
    # Only the newest version stays (keep=1), written whole, with the export's names and values.
    assert [p.name for p in (tmp_path / "sync").iterdir()] == ["v2"]
    want = hf_export.hf_tensors(model, m)
    with safe_open(str(tmp_path / "sync" / "v2" / "model.safetensors"), framework="pt") as f:
        assert set(f.keys()) == set(want) and any(k.startswith("mtp.") for k in f.keys())
        torch.testing.assert_close(f.get_tensor("mtp.fc.weight"), want["mtp.fc.weight"], atol=0, rtol=0)

    out = client.generate([[1, 2], [3], [4, 5, 6]], n=2, max_tokens=2, temperature=1.0, top_p=0.9, seed=10)
    assert [len(o) for o in out] == [2, 2, 2]
    assert out[0][0].token_ids == [7, 8] and out[0][0].logprobs == [-0.5, -0.25] and out[0][0].weight_version is None
    reqs = [b for s in stubs for p, b in s.calls if p == "/v1/completions"]
    assert sorted((r["prompt"], r["seed"]) for r in reqs) == [([1, 2], 10), ([3], 11), ([4, 5, 6], 12)]
    assert len([b for p, b in stubs[0].calls if p == "/v1/completions"]) == 2  # round-robin
    assert all(r["logprobs"] == 0 and r["return_token_ids"] and r["n"] == 2 for r in reqs)
