"""Test helpers for the rollout: tiny Qwen3-Next checkpoints with controlled MTP heads."""
