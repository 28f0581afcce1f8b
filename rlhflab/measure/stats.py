"""Intervals and summaries: bootstrap (plain and paired), Wilson interval for proportions, correlation, the
length-controlled gain."""
from __future__ import annotations

import math

import numpy as np


def bootstrap_ci(values, statistic=np.mean, samples: int = 2000, level: float = 0.95, seed: int = 0):
    """(estimate, low, high): percentile bootstrap interval of statistic(values)."""
    x = np.asarray(values, dtype=float)
    if x.size == 0:
        return float("nan"), float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, x.size, size=(samples, x.size))
    stats = np.apply_along_axis(statistic, 1, x[idx]) if statistic is not np.mean else x[idx].mean(axis=1)
    alpha = (1 - level) / 2
    return float(statistic(x)), float(np.quantile(stats, alpha)), float(np.quantile(stats, 1 - alpha))


def paired_bootstrap_diff(a, b, samples: int = 2000, level: float = 0.95, seed: int = 0):
    """(mean(a - b), low, high) resampling prompts jointly, so a and b stay paired."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape:
        raise ValueError("paired samples must have the same shape")
    return bootstrap_ci(a - b, samples=samples, level=level, seed=seed)


def ratio_bootstrap_ci(numerators, denominators, samples: int = 2000, level: float = 0.95, seed: int = 0):
    """(Σ numerators / Σ denominators, low, high), resampling the units (e.g. responses) with both parts together:
    a per-token rate over responses of different lengths (total KL ÷ total tokens)."""
    num, den = np.asarray(numerators, dtype=float), np.asarray(denominators, dtype=float)
    if num.size == 0 or den.sum() == 0:
        return float("nan"), float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, num.size, size=(samples, num.size))
    ratios = num[idx].sum(1) / np.maximum(den[idx].sum(1), 1e-12)
    alpha = (1 - level) / 2
    return float(num.sum() / den.sum()), float(np.quantile(ratios, alpha)), float(np.quantile(ratios, 1 - alpha))


def wilson_interval(successes: int, n: int, level: float = 0.95):
    """(proportion, low, high): Wilson score interval, sensible for small n and extreme proportions."""
    if n == 0:
        return float("nan"), float("nan"), float("nan")
    z = {0.95: 1.959963984540054, 0.9: 1.6448536269514722, 0.99: 2.5758293035489004}[level]
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return p, max(0.0, centre - half), min(1.0, centre + half)


def win_rate_with_ties(a, b, samples: int = 2000, level: float = 0.95, seed: int = 0) -> dict:
    """How often a beats b, pair by pair: wins, ties and losses, and the win rate with ties counting half (a tie is
    no evidence either way; counted as a loss, a policy that often answers like the base would look worse than it
    is), with a percentile bootstrap interval over pairs."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape:
        raise ValueError("paired samples must have the same shape")
    points = np.where(a > b, 1.0, np.where(a == b, 0.5, 0.0))
    return {"wins": int((a > b).sum()), "ties": int((a == b).sum()), "losses": int((a < b).sum()),
            "rate": list(bootstrap_ci(points, samples=samples, level=level, seed=seed))}


def length_controlled_gain(policy_scores, base_scores, policy_len, base_len, samples: int = 2000,
                           level: float = 0.95, seed: int = 0) -> tuple[float, float, float, float]:
    """(gain, low, high, slope): the policy's gain over the base with the part explained by response length removed.

    One OLS fit over the base and policy responses together, score = a + gain·[policy] + slope·tokens: the policy
    indicator keeps a real gain from being credited to length (a slope fitted on score ~ tokens alone would absorb
    it whenever the policy is also longer), so the slope comes from how score varies with length inside each
    policy's responses. gain = raw paired gain − slope × mean length change. The interval resamples prompts (both
    responses of a prompt together) and refits the slope in each resample. Slope in score units per token; nan
    (and the raw gain) when no length varies within either policy, nan gain when length and policy cannot be
    told apart."""
    r1, r0 = np.asarray(policy_scores, dtype=float), np.asarray(base_scores, dtype=float)
    l1, l0 = np.asarray(policy_len, dtype=float), np.asarray(base_len, dtype=float)
    if not r1.shape == r0.shape == l1.shape == l0.shape:
        raise ValueError("policy and base scores and lengths must be paired by prompt (same shape)")
    if r1.size == 0:
        return float("nan"), float("nan"), float("nan"), float("nan")

    def fit(r1, r0, l1, l0):  # rows are resamples; the within-policy centring is the OLS with an indicator
        c1, c0 = l1 - l1.mean(-1, keepdims=True), l0 - l0.mean(-1, keepdims=True)
        sxx = (c1 * c1).sum(-1) + (c0 * c0).sum(-1)
        sxy = (c1 * r1).sum(-1) + (c0 * r0).sum(-1)
        dr, dl = r1.mean(-1) - r0.mean(-1), l1.mean(-1) - l0.mean(-1)
        with np.errstate(invalid="ignore", divide="ignore"):
            slope = np.where(sxx > 1e-12, sxy / np.where(sxx > 1e-12, sxx, 1.0), np.nan)
        gain = np.where(np.isnan(slope), np.where(np.abs(dl) < 1e-12, dr, np.nan), dr - slope * dl)
        return gain, slope

    gain, slope = fit(r1, r0, l1, l0)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, r1.size, size=(samples, r1.size))
    boot, _ = fit(r1[idx], r0[idx], l1[idx], l0[idx])
    boot = boot[~np.isnan(boot)]
    alpha = (1 - level) / 2
    if boot.size == 0 or np.isnan(gain):
        return float(gain), float("nan"), float("nan"), float(slope)
    return float(gain), float(np.quantile(boot, alpha)), float(np.quantile(boot, 1 - alpha)), float(slope)


def order_agreement(a_first, a_second, b_first, b_second) -> dict:
    """How often two scorers order the same pairs the same way: pair i is (first[i], second[i]) under scorer a and
    under scorer b. Pairs either scorer ties are left out (no order to agree on). {"agree", "n", "rate": [p, low,
    high]} with a Wilson interval."""
    da = np.asarray(a_first, dtype=float) - np.asarray(a_second, dtype=float)
    db = np.asarray(b_first, dtype=float) - np.asarray(b_second, dtype=float)
    if da.shape != db.shape:
        raise ValueError("both scorers must score the same pairs")
    ordered = (da != 0) & (db != 0)
    agree, n = int((np.sign(da) == np.sign(db))[ordered].sum()), int(ordered.sum())
    return {"agree": agree, "n": n, "rate": list(wilson_interval(agree, n))}


def pearson(x, y) -> float:
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if x.size < 2 or x.std() == 0 or y.std() == 0:
        return float("nan")
    return float(np.corrcoef(x, y)[0, 1])


def format_interval(est: float, low: float, high: float, digits: int = 3, pct: bool = False, signed: bool = False,
                    unit: str = "") -> str:
    """The one way every report, card and app tab writes an estimate with its interval:

    '0.412 [0.301, 0.520]'; signed=True: '+0.110 [-0.020, +0.240]' (gains and differences);
    pct=True, for proportions given as fractions: '72.0 % [58.0, 83.0]'; unit follows the estimate:
    '25.3 tokens [22.0, 28.0]'.
    """
    if pct:
        est, low, high, unit = 100 * est, 100 * low, 100 * high, unit or "%"
    spec = f"{'+' if signed else ''}.{digits}f"
    u = f" {unit}" if unit else ""
    return f"{est:{spec}}{u} [{low:{spec}}, {high:{spec}}]"


def histogram(values, bins: int = 20) -> dict:
    counts, edges = np.histogram(np.asarray(values, dtype=float), bins=bins)
    return {"counts": counts.tolist(), "edges": edges.tolist()}


def _rank_rows(x: np.ndarray) -> np.ndarray:
    from scipy.stats import rankdata

    return rankdata(x, axis=-1)


def _pearson_rows(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Pearson r of each row of x with the same row of y (nan where either row is constant)."""
    cx, cy = x - x.mean(-1, keepdims=True), y - y.mean(-1, keepdims=True)
    den = np.sqrt((cx * cx).sum(-1) * (cy * cy).sum(-1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 1e-12, (cx * cy).sum(-1) / np.where(den > 1e-12, den, 1.0), np.nan)


def _residual_rows(y: np.ndarray, z: np.ndarray) -> np.ndarray:
    """y minus its OLS fit on z (with an intercept), row by row; y itself where z is constant in a row."""
    cz, cy = z - z.mean(-1, keepdims=True), y - y.mean(-1, keepdims=True)
    szz = (cz * cz).sum(-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        slope = np.where(szz > 1e-12, (cz * cy).sum(-1, keepdims=True) / np.where(szz > 1e-12, szz, 1.0), 0.0)
    return cy - slope * cz


def correlation_ci(x, y, method: str = "pearson", control=None, samples: int = 2000, level: float = 0.95,
                   seed: int = 0) -> tuple[float, float, float]:
    """(r, low, high): the correlation of two scorers' scores of the same outputs, with a percentile bootstrap
    interval that resamples rows together (rows = prompts, columns = the policies' answers to that prompt, so the
    answers to one prompt are never split; 1-D inputs are one answer per row).

    method: "pearson" or "spearman" (Pearson of the ranks, ranked afresh in each resample). control: a covariate
    of the same shape (e.g. response length) regressed out of both scores by OLS before correlating (the partial
    correlation; for Spearman, of the ranks of all three). nan where a score is constant."""
    if method not in ("pearson", "spearman"):
        raise ValueError(f"method must be pearson or spearman, got {method!r}")
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if x.shape != y.shape:
        raise ValueError("both scorers must score the same outputs (same shape)")
    if x.ndim == 1:
        x, y = x[:, None], y[:, None]
    z = None if control is None else np.asarray(control, dtype=float).reshape(x.shape)
    nan3 = (float("nan"),) * 3
    if x.shape[0] < 2 or x.size < 3:
        return nan3

    def corr(xs, ys, zs):  # xs: (resamples, outputs)
        if method == "spearman":
            xs, ys = _rank_rows(xs), _rank_rows(ys)
            zs = None if zs is None else _rank_rows(zs)
        if zs is not None:
            xs, ys = _residual_rows(xs, zs), _residual_rows(ys, zs)
        return _pearson_rows(xs, ys)

    flat = lambda a: a.reshape(1, -1)  # noqa: E731
    r = float(corr(flat(x), flat(y), None if z is None else flat(z))[0])
    if r != r:
        return nan3
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, x.shape[0], size=(samples, x.shape[0]))
    pick = lambda a: a[idx].reshape(samples, -1)  # noqa: E731
    boot = corr(pick(x), pick(y), None if z is None else pick(z))
    boot = boot[~np.isnan(boot)]
    if boot.size == 0:
        return r, float("nan"), float("nan")
    alpha = (1 - level) / 2
    return r, float(np.quantile(boot, alpha)), float(np.quantile(boot, 1 - alpha))
