"""Statistics for comparing configurations (seed 002): means with error bars over seeds, paired
t-tests, power-law fits against parameter count, correlations, and the baseline checks."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np
from scipy import stats


@dataclass
class MeanCI:
    mean: float
    std: float
    n: int
    ci_low: float  # 95 % Student-t interval of the mean
    ci_high: float

    def to_dict(self) -> dict:
        return asdict(self)


def mean_ci(values: Sequence[float], level: float = 0.95) -> MeanCI:
    x = np.asarray(values, dtype=float)
    if len(x) == 0:
        raise ValueError("no values")
    mean = float(x.mean())
    if len(x) == 1:
        return MeanCI(mean, 0.0, 1, mean, mean)
    std = float(x.std(ddof=1))
    half = float(stats.t.ppf(0.5 + level / 2, len(x) - 1) * std / np.sqrt(len(x)))
    return MeanCI(mean, std, len(x), mean - half, mean + half)


@dataclass
class TTest:
    mean_difference: float  # a - b
    t: float
    p: float
    n: int
    significant: bool  # p < alpha

    def to_dict(self) -> dict:
        return asdict(self)


def wilson_interval(successes: float, n: int, level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a proportion (successes / n): unlike the normal approximation it
    stays inside [0, 1] and is honest at small n and at 0 or n successes."""
    if n <= 0:
        raise ValueError(f"n must be positive, got {n}")
    if not 0 <= successes <= n:
        raise ValueError(f"successes must be in [0, {n}], got {successes}")
    z = float(stats.norm.ppf(0.5 + level / 2))
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return float(max(0.0, centre - half)), float(min(1.0, centre + half))


def paired_ttest(a: Sequence[float], b: Sequence[float], alpha: float = 0.05) -> TTest:
    """Two-sided paired t-test of a against b (pairs: the same seed, or the same task)."""
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if x.shape != y.shape or len(x) < 2:
        raise ValueError(f"need two paired samples of the same length >= 2, got {len(x)}, {len(y)}")
    diff = x - y
    if np.allclose(diff, diff[0]):  # zero variance: t is infinite (or undefined when equal)
        t = 0.0 if diff[0] == 0 else float(np.sign(diff[0]) * np.inf)
        p = 1.0 if diff[0] == 0 else 0.0
    else:
        res = stats.ttest_rel(x, y)
        t, p = float(res.statistic), float(res.pvalue)
    return TTest(float(diff.mean()), t, p, len(x), p < alpha)


@dataclass
class PowerLaw:
    """y = a * x^(-b) (+ c when fitted with an irreducible term)."""

    a: float
    b: float
    c: float
    r2: float  # in log space for the pure power law, in linear space with c

    def __call__(self, x: np.ndarray | float) -> np.ndarray:
        return self.a * np.power(x, -self.b) + self.c

    def to_dict(self) -> dict:
        return asdict(self)


def power_law_fit(x: Sequence[float], y: Sequence[float], irreducible: bool = False) -> PowerLaw:
    """Fit y = a x^-b by least squares on log y = log a - b log x, or y = a x^-b + c (Kaplan et al.
    / Hoffmann et al.'s form) by nonlinear least squares started from the log fit."""
    xs, ys = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if len(xs) != len(ys) or len(xs) < 2 + irreducible:
        raise ValueError(f"need at least {2 + irreducible} (x, y) pairs, got {len(xs)}")
    if np.any(xs <= 0) or np.any(ys <= 0):
        raise ValueError("a power law needs positive x and y")
    slope, intercept = np.polyfit(np.log(xs), np.log(ys), 1)
    pred = intercept + slope * np.log(xs)
    ss_res = float(((np.log(ys) - pred) ** 2).sum())
    ss_tot = float(((np.log(ys) - np.log(ys).mean()) ** 2).sum())
    fit = PowerLaw(
        float(np.exp(intercept)), float(-slope), 0.0, 1 - ss_res / ss_tot if ss_tot else 1.0
    )
    if not irreducible:
        return fit
    from scipy.optimize import curve_fit

    def model(v, a, b, c):
        return a * np.power(v, -b) + c

    params, _ = curve_fit(model, xs, ys, p0=[fit.a, fit.b, 0.0], maxfev=20000)
    resid = ys - model(xs, *params)
    r2 = 1 - float((resid**2).sum()) / float(((ys - ys.mean()) ** 2).sum())
    return PowerLaw(float(params[0]), float(params[1]), float(params[2]), r2)


def correlations(table: Mapping[str, Sequence[float]]) -> tuple[list[str], np.ndarray]:
    """Pearson correlation matrix between the columns of {name: values}, each pair over the rows
    where both are finite (NaN where fewer than 3 such rows, or a column is constant there)."""
    names = list(table)
    data = [np.asarray(table[n], dtype=float) for n in names]
    matrix = np.full((len(names), len(names)), np.nan)
    for i, x in enumerate(data):
        for j, y in enumerate(data):
            ok = np.isfinite(x) & np.isfinite(y)
            if ok.sum() >= 3 and x[ok].std() > 0 and y[ok].std() > 0:
                matrix[i, j] = float(np.corrcoef(x[ok], y[ok])[0, 1])
    return names, matrix


# ------------------------------------------------------------------------------ baseline checks
def baseline_checks(
    scores: Mapping[str, Mapping[str, Sequence[float]]],
    random: Mapping[str, float],
    max_spread: float = 0.02,
    order: Sequence[str] = ("trained", "untrained"),
    majority: float = 0.5,
) -> dict:
    """Seed 002's checks of the baselines. `scores[kind][task]` holds one score per seed for
    kind in `order` (best first); `random[task]` is the analytic random score.
    - consistency: for each kind and task, the spread (max - min) over seeds is < max_spread;
    - monotonicity: trained > untrained > random on more than `majority` of the tasks."""
    spread = {
        kind: {t: float(np.ptp(v)) for t, v in by_task.items()} for kind, by_task in scores.items()
    }
    inconsistent = [(k, t, s) for k, v in spread.items() for t, s in v.items() if s >= max_spread]
    tasks = sorted(set.intersection(*(set(v) for v in scores.values())) & set(random))
    ordered = []
    for t in tasks:
        means = [float(np.mean(scores[kind][t])) for kind in order] + [random[t]]
        ordered.append(all(a > b for a, b in zip(means, means[1:], strict=False)))
    share = float(np.mean(ordered)) if ordered else 0.0
    return {
        "spread": spread,
        "consistent": not inconsistent,
        "inconsistent": inconsistent,
        "monotonic_share": share,
        "monotonic_tasks": [t for t, ok in zip(tasks, ordered, strict=True) if ok],
        "monotonic": share > majority,
    }
