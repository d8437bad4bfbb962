"""The vLLM metric names we read and the metric names we export, in one place.

Why: the dashboard, the recording rules and the exporter all refer to these strings, and a test
checks mechanically that dashboards and rules use only names defined here (and so really
exported by vLLM or by our exporter).
"""

from __future__ import annotations

from mtp_api import contracts

# vLLM's counters and labels: a contract with the trainer and the operator, defined in mtp_api.contracts.
VLLM_DRAFTS = contracts.VLLM_DRAFTS
VLLM_DRAFT_TOKENS = contracts.VLLM_DRAFT_TOKENS
VLLM_ACCEPTED = contracts.VLLM_ACCEPTED
VLLM_ACCEPTED_PER_POS = contracts.VLLM_ACCEPTED_PER_POS
VLLM_GENERATION_TOKENS = contracts.VLLM_GENERATION_TOKENS
VLLM_COUNTERS = contracts.VLLM_COUNTERS
VLLM_MODEL_LABEL = contracts.VLLM_MODEL_LABEL
VLLM_POSITION_LABEL = contracts.VLLM_POSITION_LABEL

# Gauges exported by mtp_rollout.metrics.exporter (labels: namespace, job; per-position adds position).
PREFIX = "mtp_rollout_"
ACCEPTANCE_RATE = PREFIX + "acceptance_rate"
MEAN_ACCEPTANCE_LENGTH = PREFIX + "mean_acceptance_length"
POSITION_ACCEPTANCE_RATE = PREFIX + "position_acceptance_rate"
DRAFT_TOKENS_PER_SECOND = PREFIX + "draft_tokens_per_second"
ACCEPTED_TOKENS_PER_SECOND = PREFIX + "accepted_tokens_per_second"
GENERATION_TOKENS_PER_SECOND = PREFIX + "generation_tokens_per_second"
NUM_SPECULATIVE_TOKENS = PREFIX + "num_speculative_tokens"
EXPECTED_TOKENS_PER_FORWARD = PREFIX + "expected_tokens_per_forward"
SPEEDUP_BOUND = PREFIX + "speedup_bound"
WINDOW_SECONDS = PREFIX + "window_seconds"
PODS_SCRAPED = PREFIX + "pods_scraped"
SCRAPE_ERRORS = PREFIX + "scrape_errors_total"  # a Counter: exposed as ..._total

# Recording rules (charts/mtp-operator/rules/mtp-acceptance.yaml), grouped by namespace and model_name.
RULE_PREFIX = "mtp:spec_decode_"
RULE_ACCEPTANCE_RATE = RULE_PREFIX + "acceptance_rate:rate5m"
RULE_MEAN_ACCEPTANCE_LENGTH = RULE_PREFIX + "mean_acceptance_length:rate5m"
RULE_POSITION_ACCEPTANCE_RATE = RULE_PREFIX + "position_acceptance_rate:rate5m"
RULE_NUM_SPECULATIVE_TOKENS = RULE_PREFIX + "num_speculative_tokens:rate5m"
RULE_EXPECTED_TOKENS_PER_FORWARD = RULE_PREFIX + "expected_tokens_per_forward:rate5m"
RULE_DRAFT_TOKENS_PER_SECOND = RULE_PREFIX + "draft_tokens_per_second:rate5m"
RULE_ACCEPTED_TOKENS_PER_SECOND = RULE_PREFIX + "accepted_tokens_per_second:rate5m"
RULE_GENERATION_TOKENS_PER_SECOND = "mtp:generation_tokens_per_second:rate5m"
RULE_SPEEDUP_BOUND = RULE_PREFIX + "speedup_bound:rate5m"
