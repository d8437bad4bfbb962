"""Test support shipped with the operator because the benchmark uses it too: a realistic API server and
helpers that run it and the operator in background threads."""
