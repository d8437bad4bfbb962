"""Entry point for vLLM's OpenAI server with our compatibility shim applied first.

Why a wrapper: the shim (``vllm_compat``) must be in place before vLLM builds the model, in the
API-server process *and* in the engine/worker processes. vLLM on CPU forces the ``spawn`` start
method, and a spawned child re-imports the parent's ``__main__`` module (as ``__mp_main__``). So
the shim is applied at import time here, and vLLM's server runs with ``alter_sys=False`` so that
this module stays ``__main__`` and is what children import.

``python -m mtp_rollout.serve ARGS`` takes exactly the arguments of
``python -m vllm.entrypoints.openai.api_server ARGS``.
"""

from __future__ import annotations

import runpy

from mtp_rollout import vllm_compat

VLLM_MODULE = "vllm.entrypoints.openai.api_server"

vllm_compat.apply()

if __name__ == "__main__":
    runpy.run_module(VLLM_MODULE, run_name="__main__", alter_sys=False)
