"""An rlvr job is refused by this trainer release with a message that names the field, instead of
silently training supervised cross-entropy on RL prompts."""

from __future__ import annotations

from pathlib import Path

import pytest

from mtp_api.validation import load_job
from mtp_trainer.config import ConfigError, from_job

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def test_rlvr_is_refused_with_the_field_named() -> None:
    job = load_job(EXAMPLES / "tiny-rlvr.yaml")
    with pytest.raises(ConfigError, match=r"spec.pipeline rlvr: .*no RLVR \(GRPO\) loop"):
        from_job(job, base_dir=EXAMPLES)


def test_sft_is_accepted() -> None:
    cfg = from_job(load_job(EXAMPLES / "tiny-sft.yaml"), base_dir=EXAMPLES)
    assert cfg.mtp.mode == "joint"
