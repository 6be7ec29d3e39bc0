"""benchmarks/common.py's 95% intervals: the exact t quantile for any number of seeds (the
old table stopped at 9 degrees of freedom and used 1.96 beyond, 10% too narrow at 12 seeds)."""

from __future__ import annotations

import math
import statistics

import pytest

from benchmarks.common import mean_ci, t_quantile95

# two-sided 95% t quantiles as printed in statistical tables (3 decimals)
TABLE = {1: 12.706, 2: 4.303, 5: 2.571, 10: 2.228, 11: 2.201, 30: 2.042, 100: 1.984}


@pytest.mark.parametrize(("df", "value"), sorted(TABLE.items()))
def test_t_quantile_matches_the_table(df, value):
    assert round(t_quantile95(df), 3) == value


def test_t_quantile_approaches_the_normal_and_refuses_no_freedom():
    assert 1.959 < t_quantile95(10**6) < 1.9601
    with pytest.raises(ValueError):
        t_quantile95(0)


def test_mean_ci_uses_the_quantile_of_its_seed_count():
    values = [0.58, 0.5, 0.58, 0.62, 0.66, 0.61, 0.55, 0.6, 0.63, 0.57, 0.59, 0.64]  # 12 seeds
    ci = mean_ci(values)
    expected = TABLE[11] * statistics.stdev(values) / math.sqrt(len(values))
    assert ci["ci95"] == pytest.approx(expected, abs=1e-4)
    assert mean_ci([0.5])["ci95"] is None
