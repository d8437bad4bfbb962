"""Test support, not shipped: a realistic Kubernetes API server built on kmock (a dev-only
dependency) and helpers that run it and the operator in background threads. The operator tests,
the e2e acceptance test and bench/bench_operator.py use it."""
