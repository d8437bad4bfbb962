"""The acceptance metrics pipeline: scrape the rollout pods' ``/metrics`` (``collector``), publish the
windowed figures as ``mtp_rollout_*`` gauges (``exporter``), summarise them for
``status.rollout`` (``status``), and the metric names dashboards and rules may use
(``metric_names``, ``promql_names``). Parsing an exposition body and the acceptance arithmetic are
in ``mtp_api.exposition`` and ``mtp_api.acceptance``, which the trainer reads too."""
