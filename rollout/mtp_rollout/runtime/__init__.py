"""The vLLM runtime: the server's command line (``launcher.server_plan``), its entry point
(``python -m mtp_rollout.runtime.serve``), the vLLM plugins (``vllm_compat``, ``weight_sync``), the
checkpoint checks before start, and a process wrapper for local runs and tests (``server``).

Nothing here imports vLLM at module import time except ``weight_sync_engine``, which only vLLM loads."""
