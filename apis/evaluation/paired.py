"""Paired comparisons over seeds: the per-seed differences of two settings, their mean, a 95 % t-interval and
the verdict on a claim.

Conventions used everywhere in APIS's reports: a standard deviation over seeds is the *sample* standard
deviation (``ddof=1``, divisor n - 1); the interval is Student's t-interval of the mean difference,
``mean ± t(0.975, n - 1) · sd / sqrt(n)``, over the seeds both settings have. The difference is always
``a - b`` with ``a`` the setting the claim favours (the paper's direction), so the verdict reads:

* ``reproduced``: the interval lies above 0;
* ``contradicted``: the interval lies below 0;
* ``unresolved``: the interval contains 0, or fewer than two seeds give no interval.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

# Student's t quantile t(0.975, df), from the standard tables; between two tabulated df the smaller df's
# (larger) value is used, which makes the interval a little wider, never narrower.
T_975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228,
         11: 2.201, 12: 2.179, 13: 2.160, 14: 2.145, 15: 2.131, 16: 2.120, 17: 2.110, 18: 2.101, 19: 2.093,
         20: 2.086, 21: 2.080, 22: 2.074, 23: 2.069, 24: 2.064, 25: 2.060, 26: 2.056, 27: 2.052, 28: 2.048,
         29: 2.045, 30: 2.042, 40: 2.021, 60: 2.000, 120: 1.980}
INTERVAL = "95 % t-interval over seeds (sample sd, n - 1)"
VERDICTS = ("reproduced", "contradicted", "unresolved")


def t_975(df: int) -> float:
    """The 0.975 quantile of Student's t with ``df`` >= 1 degrees of freedom (1.960 beyond 120)."""
    if df < 1:
        raise ValueError(f"t quantile needs at least 1 degree of freedom, got {df}")
    tabulated = [d for d in T_975 if d <= df]
    return T_975[max(tabulated)] if df <= 120 else 1.960


def sample_sd(values: list[float]) -> float:
    """The sample standard deviation (divisor n - 1); NaN for fewer than two values."""
    n = len(values)
    if n < 2:
        return math.nan
    mean = sum(values) / n
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))


@dataclass(frozen=True)
class PairedComparison:
    """``a - b`` of ``metric`` at ``step`` over the seeds both have; ``low``/``high`` None for fewer than two."""

    metric: str
    step: int | None
    a: str
    b: str
    seeds: list[int]
    differences: list[float]
    mean: float | None
    sd: float | None
    low: float | None
    high: float | None
    verdict: str
    interval: str = INTERVAL

    def as_dict(self) -> dict:
        return asdict(self)

    def cell(self, digits: int = 2) -> str:
        """``+0.31 [-0.12, +0.74]`` (or ``+0.31 (1 seed)``, ``–`` for none): the mean and its interval."""
        if self.mean is None:
            return "–"
        if self.low is None:
            return f"{self.mean:+.{digits}f} (1 seed)"
        return f"{self.mean:+.{digits}f} [{self.low:+.{digits}f}, {self.high:+.{digits}f}]"


def verdict(low: float | None, high: float | None) -> str:
    """``reproduced`` when the interval is above 0, ``contradicted`` below 0, ``unresolved`` otherwise."""
    if low is None or high is None:
        return "unresolved"
    if low > 0:
        return "reproduced"
    if high < 0:
        return "contradicted"
    return "unresolved"


def paired_comparison(a: dict[int, float], b: dict[int, float], *, metric: str, a_name: str, b_name: str,
                      step: int | None = None) -> PairedComparison:
    """Compare ``a`` and ``b`` (``{seed: value}``) on the seeds both have (values that are None or NaN leave
    their seed out); ``a`` is the setting the claim favours."""
    def usable(value) -> bool:
        return value is not None and not (isinstance(value, float) and math.isnan(value))

    seeds = sorted(s for s in a.keys() & b.keys() if usable(a[s]) and usable(b[s]))
    differences = [float(a[s]) - float(b[s]) for s in seeds]
    n = len(differences)
    mean = sum(differences) / n if n else None
    sd = sample_sd(differences) if n >= 2 else None
    low = high = None
    if n >= 2:
        half = t_975(n - 1) * sd / math.sqrt(n)
        low, high = mean - half, mean + half
    return PairedComparison(metric, step, a_name, b_name, seeds, differences, mean, sd, low, high, verdict(low, high))
