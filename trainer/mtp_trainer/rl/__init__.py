"""RLVR building blocks: the built-in verifiable task, prompt datasets, the math reward, GRPO and weight sync."""
