"""Dashboards and alerting/recording rules as code: ``python -m mtp_rollout.observability.dashboard``
and ``python -m mtp_rollout.observability.rules`` rewrite the chart's JSON and YAML from
``metrics.metric_names``."""
