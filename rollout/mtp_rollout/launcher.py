"""Temporary alias of ``mtp_rollout.runtime.launcher`` for ``local_rlvr`` until the local runs move."""

from mtp_rollout.runtime.launcher import *  # noqa: F403
from mtp_rollout.runtime.launcher import server_plan  # noqa: F401
