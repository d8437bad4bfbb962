"""Run the operator: ``python -m mtp_operator`` (the image's entry point).

Settings are read once from the environment; peering is mandatory unless ``standalone`` is set,
so two replicas never both act: the one with the lower priority pauses.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Any

import kopf

from mtp_operator.handlers import make_registry, make_settings
from mtp_operator.settings import OperatorConfig


async def run_operator(
    config: OperatorConfig,
    *,
    registry: kopf.OperatorRegistry | None = None,
    ready_flag: threading.Event | asyncio.Event | None = None,
    stop_flag: threading.Event | asyncio.Event | None = None,
    memo: kopf.Memo | None = None,
    settings: kopf.OperatorSettings | None = None,
) -> None:
    """The operator until ``stop_flag``; ``registry``/``settings`` default to the ones built from ``config``."""
    clusterwide = not config.namespaces
    liveness = f"http://0.0.0.0:{config.health_port}/healthz" if config.health_port else None
    kwargs: dict[str, Any] = {}
    if not config.standalone:
        kwargs["peering_name"] = config.peering_name
        kwargs["priority"] = config.peering_priority
    await kopf.operator(
        registry=registry or make_registry(config),
        settings=settings or make_settings(config),
        standalone=config.standalone,
        clusterwide=clusterwide,
        namespaces=list(config.namespaces),
        liveness_endpoint=liveness,
        ready_flag=ready_flag,
        stop_flag=stop_flag,
        memo=memo,
        **kwargs,
    )


def main() -> None:
    config = OperatorConfig.from_env()
    logging.basicConfig(level=config.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    asyncio.run(run_operator(config))


if __name__ == "__main__":
    main()
