"""The prompt set for benchmarks and local runs: in-distribution for the tiny SFT example.

Why these: examples/tiny-sft.yaml trains on ``builtin:pydoc-topics`` (Python's own documentation,
ChatML-rendered questions "Python documentation, topic 'X', part N."). Asking the same kind of
question measures acceptance where the MTP head was trained, deterministically and offline.
"""

from __future__ import annotations

CHATML = "<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n"


def pydoc_prompts(n: int = 16) -> list[str]:
    """``n`` ChatML prompts over topics spread evenly through Python's documentation."""
    from pydoc_data.topics import topics

    names = sorted(topics)
    step = max(len(names) // max(n, 1), 1)
    chosen = names[::step][:n]
    return [CHATML.format(question=f"Python documentation, topic '{name}', part 1.") for name in chosen]
