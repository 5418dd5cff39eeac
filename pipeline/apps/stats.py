"""Error bars for experiments over seeds: the 95 % t-interval of a mean, and of a paired
difference (two arms matched by seed).

    mean_ci([0.90, 0.92, 0.97])   -> {"n": 3, "mean": 0.93, "sd": ..., "half": t * sd / sqrt(3), ...}
    paired_ci({0: 0.95, 1: 0.90}, {0: 0.91, 1: 0.89})   -> the interval of (0.04, 0.01)

The half-width is ``t_{(1+level)/2, n-1} * sd / sqrt(n)`` with the sample sd (n - 1 in the
denominator): the usual interval for a mean of a few seeds. With one value there is no interval
(``half`` is None); missing values (None, NaN: e.g. no HC when no head was found) are left out and
``n`` says how many remained.
"""
from __future__ import annotations

import math


def t_quantile(p: float, df: int) -> float:
    """The ``p`` quantile of Student's t with ``df`` degrees of freedom (scipy's)."""
    from scipy.stats import t
    if df < 1:
        raise ValueError(f"t quantile needs df >= 1, got {df}")
    return float(t.ppf(p, df))


def _clean(values) -> list[float]:
    return [float(v) for v in values
            if v is not None and not (isinstance(v, float) and math.isnan(v))]


def mean_ci(values, level: float = 0.95) -> dict:
    """n, mean, sd, half (the CI half-width; None when n < 2), lo, hi of the non-missing values."""
    xs = _clean(values)
    n = len(xs)
    if n == 0:
        return {"n": 0, "mean": None, "sd": None, "half": None, "lo": None, "hi": None}
    mean = sum(xs) / n
    if n == 1:
        return {"n": 1, "mean": mean, "sd": None, "half": None, "lo": None, "hi": None}
    sd = math.sqrt(sum((x - mean) ** 2 for x in xs) / (n - 1))
    half = t_quantile((1 + level) / 2, n - 1) * sd / math.sqrt(n)
    return {"n": n, "mean": mean, "sd": sd, "half": half, "lo": mean - half, "hi": mean + half}


def paired_ci(a: dict, b: dict, level: float = 0.95) -> dict:
    """The interval of a - b over the keys (seeds) both have a value for; ``pairs`` lists them."""
    keys = sorted(k for k in set(a) & set(b) if _clean([a[k]]) and _clean([b[k]]))
    return {**mean_ci([a[k] - b[k] for k in keys], level), "pairs": keys}


def fmt_ci(ci: dict, digits: int, signed: bool = False, interval: bool = False) -> str:
    """``0.912 ± 0.034`` (``[lo, hi]`` too with ``interval``); ``0.912 (n = 1: no CI)``; ``n/a``."""
    if ci["mean"] is None:
        return "n/a"
    f = (lambda v: f"{v:+.{digits}f}") if signed else (lambda v: f"{v:.{digits}f}")  # noqa: E731
    if ci["half"] is None:
        return f"{f(ci['mean'])} (n = 1: no CI)"
    text = f"{f(ci['mean'])} ± {ci['half']:.{digits}f}"
    return text + (f" [{f(ci['lo'])}, {f(ci['hi'])}]" if interval else "")
