"""evaluate's serving recommendation: expected speed-up per k from τ_k and timed steps, and vLLM's schedule."""

import pytest

from spectrain.components.evaluate import costs

TAUS = [1.30, 1.40, 1.43]  # τ_k for k = 1, 2, 3: each extra draft token is accepted less often


def row(batch: int, base: float, verify: list[float], draft: list[float]) -> dict:
    return {"batch": batch, "base_s": base, "verify_s": verify, "draft_s": draft}


def test_the_speedup_is_tokens_per_step_times_the_ratio_of_step_costs():
    single = row(1, 0.010, [0.010, 0.010, 0.011], [0.001, 0.002, 0.003])
    assert costs.speedups(TAUS, single) == pytest.approx([1.30 / 1.1, 1.40 / 1.2, 1.43 * 10 / 14])
    assert costs.speedups(TAUS, single, free_draft=True) == pytest.approx([1.30, 1.40, 1.43 * 10 / 11])
    assert costs.best_k(costs.speedups(TAUS, single), allow_none=False) == 1  # more τ, but not faster


def test_the_schedule_gives_smaller_k_as_verification_gets_dearer_and_none_where_it_never_pays():
    measured = [
        row(1, 0.010, [0.010, 0.010, 0.010], [0.0001, 0.0002, 0.0003]),  # memory-bound: more tokens verify free
        row(4, 0.020, [0.021, 0.022, 0.028], [0.0002, 0.0004, 0.0006]),
        row(16, 0.040, [0.060, 0.080, 0.100], [0.0004, 0.0008, 0.0012]),  # compute-bound: verification costs
        row(64, 0.100, [0.180, 0.260, 0.340], [0.0008, 0.0016, 0.0024]),
    ]
    assert costs.schedule(measured, TAUS) == [[1, 3, 3], [4, 15, 2], [16, 64, 0]]  # 16 and 64 merged: no k pays
    assert costs.schedule(measured[2:], TAUS) is None  # nothing to speculate with at any measured size


def test_batch_sizes_must_start_at_one_and_increase():
    from spectrain import config as configs
    from spectrain.errors import SpectrainError

    from spectrain.components.evaluate.config import EvaluateConfig

    for sizes, why in (("4,16", "the list must start at 1"), ("1,16,4", "the sizes must increase")):
        with pytest.raises(SpectrainError, match=why):
            configs.from_dict(EvaluateConfig, {"checkpoint": ".", "cost_batch_sizes": sizes})
