"""Temporary alias of ``mtp_rollout.runtime.server`` for ``local_rlvr`` until the local runs move."""

from mtp_rollout.runtime.server import *  # noqa: F403
from mtp_rollout.runtime.server import VllmServer, free_port  # noqa: F401
