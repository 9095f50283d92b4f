r"""Summaries of a study: bias, spread, pulls, coverage, and where the scatter of kappa comes from.

Where this sits: :func:`tamm.studies.run_study` produces one record per fit; this module turns
them into one :class:`MethodSummary` per method and the coverage curves that
:mod:`tamm.studies.plots` draws.

Conventions (as in the paper's coverage study, arXiv 2604.02219):

- A fit is *finished* when it converged with a finite kappa and a positive sigma. The others
  are *failed*, and every statistic except the counts uses finished fits only.
- The pull is :math:`(\hat\kappa - \kappa_\mathrm{true}) / \sigma`. Wald coverage at
  :math:`s` standard deviations is the fraction of finished fits with :math:`|\text{pull}| <
  s`; its nominal value is :math:`\Phi(s) - \Phi(-s)`.
- Interval coverage uses each method's own interval (profile likelihood, or highest density
  for posteriors). An interval end that could not be computed (NaN) counts as not covering.
- Uncertainties of coverages are the standard deviation over draws of the per-draw coverage,
  divided by the square root of the number of draws, because fits of one draw share its
  simulations and are not independent.

The scatter of kappa splits by the law of total variance into a *within-draw* part (the
spread of the pseudo-experiments of one draw, which sigma is meant to describe) and a
*between-draw* part (the spread of the per-draw means, caused by which simulations were
drawn, which no per-fit sigma contains). Between-draw variance is estimated as the variance of
the draw means minus the within-draw variance divided by the number of fits per draw.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray
from scipy import stats

__all__ = [
    "CoverageCurve",
    "MethodSummary",
    "coverage_curves",
    "finished_fits",
    "format_table",
    "pulls",
    "summarize",
]


def __dir__() -> list[str]:
    return __all__


LEVELS = {"68.3": 1.0, "95.4": 2.0}
"""Reported coverage levels: label and number of standard deviations s."""


def _value(record: Mapping[str, Any], key: str) -> float:
    value = record.get(key)
    return math.nan if value is None else float(value)


def _is_finished(record: Mapping[str, Any]) -> bool:
    kappa, sigma = _value(record, "kappa"), _value(record, "sigma")
    return (
        record.get("error") is None
        and bool(record.get("converged"))
        and math.isfinite(kappa)
        and sigma > 0
    )


def finished_fits(records: Iterable[Mapping[str, Any]], method: str) -> list[Mapping[str, Any]]:
    """Return the finished fits of ``method``: converged, finite kappa, positive sigma."""
    return [record for record in records if record["method"] == method and _is_finished(record)]


def pulls(records: Iterable[Mapping[str, Any]], method: str) -> NDArray[np.float64]:
    """Return the pulls ``(kappa - kappa_true) / sigma`` of the finished fits of ``method``."""
    return np.array(
        [
            (_value(record, "kappa") - float(record["kappa_true"])) / _value(record, "sigma")
            for record in finished_fits(records, method)
        ],
        dtype=np.float64,
    )


def _covers(record: Mapping[str, Any], label: str) -> float:
    """Return 1 if kappa_true lies inside the stored interval, 0 if not, NaN if none stored."""
    intervals = record.get("intervals") or {}
    if label not in intervals:
        return math.nan
    low, high = intervals[label]
    if low is None or high is None:
        return 0.0
    return float(low < record["kappa_true"] < high)


def _clustered(values: NDArray[np.float64], draws: NDArray[np.int64]) -> tuple[float, float]:
    """Return the mean of per-draw means and its standard error over draws."""
    per_draw = np.array([np.mean(values[draws == draw]) for draw in np.unique(draws)])
    per_draw = per_draw[np.isfinite(per_draw)]
    if per_draw.size == 0:
        return math.nan, math.nan
    error = (
        float(np.std(per_draw, ddof=1) / math.sqrt(per_draw.size))
        if per_draw.size > 1
        else math.nan
    )
    return float(np.mean(per_draw)), error


@dataclass(frozen=True)
class MethodSummary:
    """Statistics of one method over all pseudo-experiments of a study.

    Attributes:
        method: Method name.
        n_fits: Records of the method.
        n_finished: Converged fits with finite kappa and positive sigma.
        n_failed: The other records (errors, unconverged fits, invalid sigma).
        n_draws: Draws with at least one finished fit.
        mean_bias: Mean of kappa - kappa_true.
        rmse: Root mean square of kappa - kappa_true.
        mean_sigma: Mean of the fitted sigma.
        pull_mean: Mean pull.
        pull_std: Standard deviation of the pulls.
        coverage_wald: Fraction with |pull| < s per level label (``"68.3"``, ``"95.4"``).
        coverage_wald_error: Standard error over draws of ``coverage_wald``.
        coverage_interval: Fraction whose stored interval contains kappa_true, per label;
            NaN when the method stored no intervals.
        coverage_interval_error: Standard error over draws of ``coverage_interval``.
        within_draw_std: Square root of the mean within-draw variance of kappa.
        between_draw_std: Standard deviation of the true per-draw mean of kappa, corrected for
            the within-draw noise of the draw means (0 if that correction exceeds it).
        hellinger_signal: Mean Hellinger distance of the fitted signal shape to nature's.
        hellinger_background: Mean Hellinger distance of the fitted background shape.
        seconds_per_fit: Mean wall time of one fit (with its interval), in seconds.
    """

    method: str
    n_fits: int
    n_finished: int
    n_failed: int
    n_draws: int
    mean_bias: float
    rmse: float
    mean_sigma: float
    pull_mean: float
    pull_std: float
    coverage_wald: dict[str, float]
    coverage_wald_error: dict[str, float]
    coverage_interval: dict[str, float]
    coverage_interval_error: dict[str, float]
    within_draw_std: float
    between_draw_std: float
    hellinger_signal: float
    hellinger_background: float
    seconds_per_fit: float

    def to_dict(self) -> dict[str, Any]:
        """Return the summary as a JSON-serialisable dictionary (NaN becomes None)."""
        record: dict[str, Any] = _without_nan(asdict(self))
        return record


def _without_nan(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _without_nan(item) for key, item in value.items()}
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _decomposition(kappa: NDArray[np.float64], draws: NDArray[np.int64]) -> tuple[float, float]:
    """Return (within-draw std, between-draw std) of kappa by the law of total variance."""
    groups = [kappa[draws == draw] for draw in np.unique(draws)]
    groups = [group for group in groups if group.size >= 2]
    if not groups:
        return math.nan, math.nan
    within = float(np.mean([np.var(group, ddof=1) for group in groups]))
    if len(groups) < 2:
        return math.sqrt(within), math.nan
    means = np.array([np.mean(group) for group in groups])
    sizes = np.array([group.size for group in groups], dtype=np.float64)
    # The mean of n fits scatters by within / n around the true draw mean, so the variance of
    # the draw means exceeds the between-draw variance by within * mean(1 / n).
    noise = within * float(np.mean(1.0 / sizes))
    between = max(float(np.var(means, ddof=1)) - noise, 0.0)
    return math.sqrt(within), math.sqrt(between)


def _summarize_method(method: str, records: Sequence[Mapping[str, Any]]) -> MethodSummary:
    finished = [record for record in records if _is_finished(record)]
    kappa = np.array([_value(record, "kappa") for record in finished])
    truth = np.array([float(record["kappa_true"]) for record in finished])
    sigma = np.array([_value(record, "sigma") for record in finished])
    draws = np.array([int(record["draw"]) for record in finished], dtype=np.int64)
    error = kappa - truth
    pulls = error / sigma

    coverage_wald: dict[str, float] = {}
    coverage_wald_error: dict[str, float] = {}
    coverage_interval: dict[str, float] = {}
    coverage_interval_error: dict[str, float] = {}
    for label, n_sigma in LEVELS.items():
        covered = (np.abs(pulls) < n_sigma).astype(np.float64)
        coverage_wald[label], coverage_wald_error[label] = _clustered(covered, draws)
        inside = np.array([_covers(record, label) for record in finished])
        if inside.size and np.all(np.isfinite(inside)):
            coverage_interval[label], coverage_interval_error[label] = _clustered(inside, draws)
        else:
            coverage_interval[label] = coverage_interval_error[label] = math.nan

    within, between = _decomposition(kappa, draws)
    n = len(finished)
    return MethodSummary(
        method=method,
        n_fits=len(records),
        n_finished=n,
        n_failed=len(records) - n,
        n_draws=int(np.unique(draws).size),
        mean_bias=float(np.mean(error)) if n else math.nan,
        rmse=float(np.sqrt(np.mean(error**2))) if n else math.nan,
        mean_sigma=float(np.mean(sigma)) if n else math.nan,
        pull_mean=float(np.mean(pulls)) if n else math.nan,
        pull_std=float(np.std(pulls, ddof=1)) if n > 1 else math.nan,
        coverage_wald=coverage_wald,
        coverage_wald_error=coverage_wald_error,
        coverage_interval=coverage_interval,
        coverage_interval_error=coverage_interval_error,
        within_draw_std=within,
        between_draw_std=between,
        hellinger_signal=_mean_of(finished, "hellinger_signal"),
        hellinger_background=_mean_of(finished, "hellinger_background"),
        seconds_per_fit=_mean_of(records, "seconds"),
    )


def _mean_of(records: Iterable[Mapping[str, Any]], key: str) -> float:
    values = [_value(record, key) for record in records if record.get(key) is not None]
    return float(np.mean(values)) if values else math.nan


def summarize(
    records: Sequence[Mapping[str, Any]], methods: Sequence[str] | None = None
) -> dict[str, MethodSummary]:
    """Summarise the fit records of a study per method.

    Args:
        records: Fit records, as in :attr:`tamm.studies.StudyRun.fits` or from
            :func:`tamm.studies.read_results`.
        methods: Methods to summarise, in this order; by default every method in the records
            in order of first appearance.

    Returns:
        One summary per method, keyed by name.
    """
    if methods is None:
        methods = list(dict.fromkeys(str(record["method"]) for record in records))
    return {
        method: _summarize_method(method, [r for r in records if r["method"] == method])
        for method in methods
    }


def _table_row(summary: MethodSummary) -> str:
    return (
        f"{summary.method:<20}{summary.n_fits:>6d}{summary.n_failed:>5d}"
        f"{summary.mean_bias:>+9.4f}{summary.rmse:>8.4f}{summary.mean_sigma:>8.4f}"
        f"{summary.pull_mean:>+10.2f}{summary.pull_std:>9.2f}"
        f"{summary.coverage_wald['68.3']:>10.3f}{summary.coverage_wald['95.4']:>10.3f}"
        f"{summary.coverage_interval['68.3']:>10.3f}{summary.coverage_interval['95.4']:>10.3f}"
        f"{summary.within_draw_std:>8.4f}{summary.between_draw_std:>8.4f}"
        f"{summary.hellinger_signal:>7.3f}{summary.hellinger_background:>7.3f}"
    )


def format_table(summaries: Mapping[str, MethodSummary]) -> str:
    """Format the summaries as a fixed-width text table, one row per method."""
    header = (
        f"{'method':<20}{'fits':>6}{'fail':>5}{'bias':>9}{'RMSE':>8}{'sigma':>8}"
        f"{'pull mean':>10}{'pull std':>9}{'Wald 68.3':>10}{'Wald 95.4':>10}"
        f"{'prof 68.3':>10}{'prof 95.4':>10}{'within':>8}{'between':>8}{'H(s)':>7}{'H(b)':>7}"
    )
    lines = [header, "-" * len(header)]
    lines.extend(_table_row(summary) for summary in summaries.values())
    lines.append(
        "bias, RMSE, sigma, within, between: in kappa; coverage: fraction of fits whose Wald "
        "(|pull| < 1, 2) or profile interval contains kappa_true; H: mean Hellinger distance "
        "of the fitted shapes to nature's; nan: the method computes no such interval or shape."
    )
    return "\n".join(lines)


@dataclass(frozen=True)
class CoverageCurve:
    """Coverage as a function of the nominal level for one method.

    Attributes:
        method: Method name.
        nominal: Nominal coverage ``Phi(s) - Phi(-s)`` at each s, shape (n,).
        wald: Mean over draws of the fraction with |pull| < s, shape (n,).
        wald_error: Standard deviation over draws divided by sqrt(draws), shape (n,).
        interval: The same with ``|z_interval| < s``; NaN where not stored, shape (n,).
        interval_error: Its standard error over draws, shape (n,).
    """

    method: str
    nominal: NDArray[np.float64]
    wald: NDArray[np.float64]
    wald_error: NDArray[np.float64]
    interval: NDArray[np.float64]
    interval_error: NDArray[np.float64]


def coverage_curves(
    records: Sequence[Mapping[str, Any]],
    methods: Sequence[str] | None = None,
    n_sigma: NDArray[np.float64] | None = None,
) -> dict[str, CoverageCurve]:
    """Compute Wald and interval coverage curves per method, averaged over draws.

    Args:
        records: Fit records of a study.
        methods: Methods to include; by default all in the records.
        n_sigma: Values of s, shape (n,); by default 71 values from 0 to 3.5.

    Returns:
        One curve per method.
    """
    grid = np.linspace(0.0, 3.5, 71) if n_sigma is None else np.asarray(n_sigma, dtype=np.float64)
    nominal = stats.norm.cdf(grid) - stats.norm.cdf(-grid)
    if methods is None:
        methods = list(dict.fromkeys(str(record["method"]) for record in records))
    curves = {}
    for method in methods:
        finished = finished_fits(records, method)
        pull_values = pulls(records, method)
        z_values = np.array([_value(r, "z_interval") for r in finished])
        draws = np.array([int(r["draw"]) for r in finished], dtype=np.int64)
        wald = [_clustered((np.abs(pull_values) < s).astype(np.float64), draws) for s in grid]
        has_z = finished and np.any(np.isfinite(z_values))
        interval = [
            _clustered((np.abs(np.nan_to_num(z_values, nan=np.inf)) < s).astype(np.float64), draws)
            if has_z
            else (math.nan, math.nan)
            for s in grid
        ]
        curves[method] = CoverageCurve(
            method=method,
            nominal=nominal,
            wald=np.array([value for value, _ in wald]),
            wald_error=np.array([error for _, error in wald]),
            interval=np.array([value for value, _ in interval]),
            interval_error=np.array([error for _, error in interval]),
        )
    return curves
