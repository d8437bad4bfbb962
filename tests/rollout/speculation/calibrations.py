"""Hand-made calibrations for the speculation tests: step times as multiples of the plain step.

Written as multiples so the expected gains can be computed by hand in the tests: the gain of k
drafts at batch b is E_k / multiple[k][b] (E_k = 1 + sum of the first k acceptances).
"""

from __future__ import annotations

from collections.abc import Mapping

from mtp_rollout.speculation.cost_model import Calibration

# Measured on the CPU machine: a speculative engine scheduled at k=0 runs at 0.75x of plain.
K0 = 1 / 0.75


def make_cal(plain: Mapping[int, float], multiple: Mapping[int, Mapping[int, float]]) -> Calibration:
    """``spec_step_s[k][b] = plain[b] * multiple[k][b]``; k=0 is the measured 1/0.75 unless given."""
    sizes = tuple(sorted(plain))
    max_k = max(multiple)
    mult = {0: dict.fromkeys(sizes, K0), **multiple}
    return Calibration(
        model="tiny",
        hardware="cpu",
        dtype="float32",
        max_k=max_k,
        batch_sizes=sizes,
        plain_step_s=dict(plain),
        spec_step_s={k: {b: plain[b] * mult[k][b] for b in sizes} for k in range(max_k + 1)},
        created="2025-06-01T12:00:00+00:00",
    )


# Spec steps cost 1.15x plain at b=1 and 1.6x at b=8 with one draft; a second draft adds 0.10x at
# b=1 (1.25x) but 0.80x at b=8 (2.4x), so the best k falls with the batch size.
TWO_SIZES = make_cal({1: 0.010, 8: 0.020}, {1: {1: 1.15, 8: 1.6}, 2: {1: 1.25, 8: 2.4}})
