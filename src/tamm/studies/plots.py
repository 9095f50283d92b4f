"""Figures of a study: coverage curves and pull histograms, one entry per method.

Matplotlib is imported inside the functions. The figures are built on
:class:`matplotlib.figure.Figure` directly, so no pyplot state or window is involved.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from tamm.studies.summary import coverage_curves, pulls

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["plot_coverage", "plot_pulls"]


def __dir__() -> list[str]:
    return __all__


_PULL_RANGE = 6.0


def plot_coverage(
    records: Sequence[Mapping[str, Any]],
    *,
    methods: Sequence[str] | None = None,
    path: str | Path | None = None,
) -> Figure:
    """Plot coverage against nominal coverage, per method.

    The x-axis is the nominal coverage ``Phi(s) - Phi(-s)`` of an interval of +-s standard
    deviations, the y-axis the fraction of pseudo-experiments it covered. Solid lines use the
    Wald interval (kappa +- s sigma), and dashed lines the method's own interval (profile
    likelihood). The bands are +-1 standard error over draws.

    Args:
        records: Fit records of a study.
        methods: Methods to draw; by default every method in the records.
        path: Write the figure to this file when given.

    Returns:
        The figure.
    """
    from matplotlib.figure import Figure

    curves = coverage_curves(records, methods)
    figure = Figure(figsize=(6.4, 6.0))
    ax = figure.add_subplot()
    ax.plot([0, 1], [0, 1], color="0.4", lw=1, ls=":", label="nominal")
    for curve in curves.values():
        (line,) = ax.plot(curve.nominal, curve.wald, lw=1.6, label=f"{curve.method} (Wald)")
        ax.fill_between(
            curve.nominal,
            curve.wald - curve.wald_error,
            curve.wald + curve.wald_error,
            color=line.get_color(),
            alpha=0.2,
            lw=0,
        )
        if np.any(np.isfinite(curve.interval)):
            ax.plot(
                curve.nominal,
                curve.interval,
                lw=1.2,
                ls="--",
                color=line.get_color(),
                label=f"{curve.method} (profile)",
            )
    ax.set_xlabel(r"nominal coverage $\Phi(s) - \Phi(-s)$")
    ax.set_ylabel("fraction of pseudo-experiments covered")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.legend(fontsize="small", loc="upper left")
    figure.tight_layout()
    if path is not None:
        figure.savefig(path, dpi=110)
    return figure


def plot_pulls(
    records: Sequence[Mapping[str, Any]],
    *,
    methods: Sequence[str] | None = None,
    path: str | Path | None = None,
) -> Figure:
    """Plot the pull distribution of each method against a standard normal.

    Pulls beyond +-6 are counted in the outermost bins, and the panel reports how many.

    Args:
        records: Fit records of a study.
        methods: Methods to draw; by default every method in the records.
        path: Write the figure to this file when given.

    Returns:
        The figure.
    """
    from matplotlib.figure import Figure
    from scipy import stats

    if methods is None:
        methods = list(dict.fromkeys(str(record["method"]) for record in records))
    n_columns = min(len(methods), 3)
    n_rows = -(-len(methods) // n_columns)
    figure = Figure(figsize=(4.2 * n_columns, 3.6 * n_rows))
    edges = np.linspace(-_PULL_RANGE, _PULL_RANGE, 49)
    centres = np.linspace(-_PULL_RANGE, _PULL_RANGE, 241)
    for index, method in enumerate(methods, start=1):
        ax = figure.add_subplot(n_rows, n_columns, index)
        values = pulls(records, method)
        outside = int(np.sum(np.abs(values) > _PULL_RANGE))
        ax.hist(
            np.clip(values, edges[0] + 1e-9, edges[-1] - 1e-9),
            bins=edges.tolist(),
            density=True,
            histtype="stepfilled",
            alpha=0.5,
        )
        ax.plot(centres, stats.norm.pdf(centres), color="black", lw=1, label="N(0, 1)")
        text = f"n = {values.size}"
        if values.size > 1:
            text += f"\nmean {np.mean(values):+.2f}\nstd {np.std(values, ddof=1):.2f}"
        if outside:
            text += f"\n{outside} beyond +-{_PULL_RANGE:g}"
        ax.text(0.03, 0.97, text, transform=ax.transAxes, va="top", fontsize="small")
        ax.set_title(method)
        ax.set_xlabel(r"pull $(\hat\kappa - \kappa_\mathrm{true}) / \sigma$")
    figure.tight_layout()
    if path is not None:
        figure.savefig(path, dpi=110)
    return figure
