"""Entry point for vLLM's OpenAI server: checks, a compatibility shim, then vLLM itself.

``python -m mtp_rollout.runtime.serve ARGS`` takes exactly the arguments of
``python -m vllm.entrypoints.openai.api_server ARGS``, and before handing over it:

1. on CPU (``MTP_ROLLOUT_CPU=1``) re-executes itself with ``<sys.prefix>/lib/libiomp5.so`` in
   ``LD_PRELOAD`` when missing (vLLM warns that CPU speculation is slow without it; found
   relative to the interpreter, so the same code works in a venv and in the image);
2. with ``MTP_ROLLOUT_CHECK_MTP=1`` checks that a local ``--model`` has MTP weights (and on CPU
   a supported head size) and exits 2 with a clear message otherwise;
3. applies ``vllm_compat`` (dense Qwen3-Next). vLLM on CPU forces the ``spawn`` start method and
   a spawned child re-imports the parent's ``__main__`` module (as ``__mp_main__``), so the shim
   is also applied when this module is imported, and vLLM runs with ``alter_sys=False``: this
   module stays ``__main__`` and is what children import.
"""

from __future__ import annotations

import os
import runpy
import sys
from pathlib import Path

from mtp_api import contracts
from mtp_rollout.runtime import vllm_compat
from mtp_rollout.runtime.launcher import ENV_CHECK_MTP, ENV_CPU, VLLM_MODULE, iomp_preload

if __name__ != "__main__":
    # A spawned vLLM engine or worker re-importing this module as ``__mp_main__``.
    vllm_compat.apply()


def _arg(argv: list[str], flag: str) -> str | None:
    for i, a in enumerate(argv):
        if a == flag and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith(flag + "="):
            return a.split("=", 1)[1]
    return None


def _preflight(argv: list[str]) -> None:
    from mtp_rollout.runtime.checkpoint_check import CheckpointError, check_cpu_head_size, check_mtp_checkpoint

    model = _arg(argv, "--model")
    if model is None or not Path(model).is_dir():
        return  # a hub id: vLLM downloads it, nothing local to check
    try:
        if os.environ.get(ENV_CHECK_MTP) == "1":
            check_mtp_checkpoint(model)
        if os.environ.get(ENV_CPU) == "1":
            check_cpu_head_size(model)
    except CheckpointError as exc:
        print(f"mtp_rollout.runtime.serve: cannot start vLLM: {exc}", file=sys.stderr, flush=True)
        raise SystemExit(contracts.EXIT_INVALID_SPEC) from None


if __name__ == "__main__":
    preload = iomp_preload()
    if os.environ.get(ENV_CPU) == "1" and preload and preload not in os.environ.get("LD_PRELOAD", ""):
        env = dict(os.environ, LD_PRELOAD=":".join(filter(None, [preload, os.environ.get("LD_PRELOAD")])))
        os.execve(sys.executable, [sys.executable, "-m", "mtp_rollout.runtime.serve", *sys.argv[1:]], env)
    _preflight(sys.argv[1:])
    vllm_compat.apply()
    runpy.run_module(VLLM_MODULE, run_name="__main__", alter_sys=False)
