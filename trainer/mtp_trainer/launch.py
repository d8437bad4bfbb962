"""``torchrun`` that keeps the trainer's bad-input status: ``python -m mtp_trainer.launch <torchrun args>``.

torchrun exits 1 whenever a worker fails, whatever the worker's own status, so the pod would never
show the trainer's exit status 2 (bad input: the log names the field), and the operator could not
tell a spec error from a crash. This wrapper runs torchrun's own ``main`` and exits 2 when any
worker exited 2; every other outcome is torchrun's.
"""

from __future__ import annotations

import sys

from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
from torch.distributed.run import main as torchrun_main

from mtp_api import contracts

BAD_INPUT = contracts.EXIT_INVALID_SPEC


def main(argv: list[str] | None = None) -> int:
    try:
        torchrun_main(argv)
    except ChildFailedError as exc:
        codes = {failure.exitcode for failure in exc.failures.values()}
        return BAD_INPUT if BAD_INPUT in codes else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
