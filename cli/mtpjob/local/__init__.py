"""Local runs on this machine, on top of every component: ``mtpjob run`` (``local_run``; rlvr in
``local_rlvr``), ``mtpjob bench-rollout`` (``bench``) and their prompt sets (``prompts``). They start
the trainer as a process and the rollout's vLLM server from the same ``server_plan`` the operator uses."""
