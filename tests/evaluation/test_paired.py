"""Paired comparisons over seeds: differences, sample sd, the 95 % t-interval and the verdict, against intervals
computed by hand (t quantiles from the printed tables)."""

import math

import pytest

from apis.evaluation.paired import paired_comparison, sample_sd, t_975, verdict


def compare(differences):
    """``differences`` as ``a - b`` over seeds 0..n-1 (b all zero)."""
    return paired_comparison(dict(enumerate(differences)), dict.fromkeys(range(len(differences)), 0.0),
                             metric="mask_AP", a_name="entropy", b_name="random", step=3)


def test_an_interval_above_zero_reproduces_the_claim():
    # 0.5 0.7 0.6 0.8: mean 0.65, squared deviations sum 0.05, sd sqrt(0.05 / 3) = 0.129099,
    # se 0.064550, t(0.975, 3) = 3.182: half-width 0.205397.
    found = compare([0.5, 0.7, 0.6, 0.8])
    assert found.mean == pytest.approx(0.65)
    assert found.sd == pytest.approx(0.129099, abs=1e-6)
    assert (found.low, found.high) == (pytest.approx(0.444603, abs=1e-6), pytest.approx(0.855397, abs=1e-6))
    assert found.verdict == "reproduced"
    assert found.cell() == "+0.65 [+0.44, +0.86]"


def test_an_interval_below_zero_contradicts_it():
    # -1.0 -1.2 -0.8 -1.1 -0.9: mean -1, sd sqrt(0.1 / 4) = 0.158114, se 0.070711, t(4) = 2.776: half 0.196293.
    found = compare([-1.0, -1.2, -0.8, -1.1, -0.9])
    assert (found.low, found.high) == (pytest.approx(-1.196293, abs=1e-6), pytest.approx(-0.803707, abs=1e-6))
    assert found.verdict == "contradicted"


def test_an_interval_holding_zero_leaves_it_unresolved():
    # 1 2 3: mean 2, sd 1, se 1 / sqrt(3), t(2) = 4.303: [2 - 2.484338, 2 + 2.484338].
    found = compare([1.0, 2.0, 3.0])
    assert (found.low, found.high) == (pytest.approx(-0.484338, abs=1e-6), pytest.approx(4.484338, abs=1e-6))
    assert found.verdict == "unresolved"


def test_one_seed_gives_no_interval_and_no_verdict():
    found = compare([0.9])
    assert found.low is None and found.high is None and found.sd is None
    assert found.verdict == "unresolved" and found.cell() == "+0.90 (1 seed)"
    assert compare([]).cell() == "–"


def test_only_the_seeds_both_sides_have_are_paired():
    found = paired_comparison({0: 10.0, 1: 12.0, 2: 11.0, 4: math.nan}, {0: 9.0, 1: 10.0, 3: 5.0, 4: 1.0},
                              metric="mask_AP", a_name="a", b_name="b")
    assert found.seeds == [0, 1] and found.differences == [1.0, 2.0]
    # 1 and 2: mean 1.5, sd sqrt(0.5), se 0.5, t(1) = 12.706.
    assert (found.low, found.high) == (pytest.approx(1.5 - 6.353), pytest.approx(1.5 + 6.353))


def test_the_sample_standard_deviation_divides_by_n_minus_one():
    assert sample_sd([14.0, 16.0]) == pytest.approx(math.sqrt(2))  # population sd would be 1
    assert math.isnan(sample_sd([3.0]))


def test_t_quantiles_come_from_the_table_and_round_towards_wider():
    assert t_975(1) == 12.706 and t_975(5) == 2.571 and t_975(30) == 2.042
    assert t_975(35) == 2.042 and t_975(100) == 2.000 and t_975(1000) == 1.960
    with pytest.raises(ValueError):
        t_975(0)


def test_an_interval_touching_zero_is_unresolved():
    assert verdict(0.0, 1.0) == "unresolved" and verdict(-1.0, 0.0) == "unresolved"
    assert verdict(1e-9, 1.0) == "reproduced" and verdict(-1.0, -1e-9) == "contradicted"
