"""Figures for binned fits: observed data against the fitted mixture, and fitted shapes against
the spread of the biased simulations.

Matplotlib and mplhep are imported inside the functions, so ``import tamm`` stays light. The
figures use the non-interactive Agg canvas and never open a window.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import NDArray

from tamm.samples import Region

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["FittedShapes", "plot_binned_fit", "project"]


def __dir__() -> list[str]:
    return __all__


@dataclass(frozen=True)
class FittedShapes:
    """Expected counts of each process after a fit, flattened over the region's bins.

    Attributes:
        signal: Expected signal counts, shape ``(n_bins,)``.
        background: Expected background counts, shape ``(n_bins,)``.
        kappa: Fitted signal fraction.
        sigma: Its uncertainty.
    """

    signal: NDArray[np.float64]
    background: NDArray[np.float64]
    kappa: float
    sigma: float


def project(counts: NDArray[np.float64], region: Region, observable: str) -> NDArray[np.float64]:
    """Sum flattened bin contents over every observable but one.

    Args:
        counts: Flattened contents, shape ``(..., n_bins)``.
        region: The binned region the contents belong to.
        observable: Name of the observable to keep.

    Returns:
        Projected contents, shape ``(..., n_bins_of_observable)``.
    """
    axis = region.observables.index(observable)
    array = np.asarray(counts, dtype=np.float64)
    shaped = array.reshape(*array.shape[:-1], *region.shape)
    lead = array.ndim - 1
    other = tuple(lead + i for i in range(region.n_observables) if i != axis)
    projected: NDArray[np.float64] = shaped.sum(axis=other)
    return projected


def _normalise(values: NDArray[np.float64]) -> NDArray[np.float64]:
    normalised: NDArray[np.float64] = values / values.sum(axis=-1, keepdims=True)
    return normalised


def plot_binned_fit(
    region: Region,
    observed: NDArray[np.float64],
    fits: Mapping[str, FittedShapes],
    simulations: Mapping[str, NDArray[np.float64]],
    *,
    truth: Mapping[str, NDArray[np.float64]] | None = None,
    kappa_true: float | None = None,
    path: str | Path | None = None,
) -> Figure:
    """Draw the observed data, the fitted mixtures and the fitted shapes, per observable.

    The first row compares the observed counts with the expected counts of each fit. The next
    rows show, per process, the normalised projection of every biased simulation (grey), each
    fit's adapted shape and, where known, the true shape (dashed).

    Args:
        region: Binned region of all histograms.
        observed: Observed counts, shape ``(n_bins,)``.
        fits: Fitted shapes by method label; the first entry is drawn most prominently.
        simulations: Histograms of the simulations by process (``"signal"``, ``"background"``),
            each of shape ``(n_simulations, n_bins)``.
        truth: Optional true bin probabilities by process, shape ``(n_bins,)``.
        kappa_true: Optional true signal fraction, shown in the legend.
        path: Where to save the figure (PNG, PDF, ... by suffix); ``None`` to only return it.

    Returns:
        The matplotlib figure.

    Raises:
        ValueError: If ``fits`` has more than six entries (one colour each).
    """
    import matplotlib as mpl

    mpl.use("Agg")
    import matplotlib.pyplot as plt
    import mplhep

    processes = list(simulations)
    n_columns = region.n_observables
    colours = ["tab:red", "tab:blue", "tab:green", "tab:purple", "tab:orange", "tab:brown"]
    if len(fits) > len(colours):
        msg = f"plot_binned_fit draws at most {len(colours)} fits; received {len(fits)}."
        raise ValueError(msg)
    with plt.style.context(mplhep.style.ROOT):
        # One legend for the whole figure, above the panels: every panel uses the same colour
        # per method, and per-panel legends covered the histograms.
        fig, axes = plt.subplots(
            1 + len(processes),
            n_columns,
            figsize=(7 * n_columns, 5.2 * (1 + len(processes)) + 0.45 * (2 + len(fits))),
            squeeze=False,
            layout="constrained",
        )
        for column, name in enumerate(region.observables):
            edges = (region.edges or ())[column]
            top = axes[0, column]
            data = project(observed, region, name)
            mplhep.histplot(
                data,
                edges,
                yerr=np.sqrt(data),
                histtype="errorbar",
                color="black",
                label="observed",
                ax=top,
            )
            for colour, (label, fit) in zip(colours, fits.items(), strict=False):
                total = project(fit.signal + fit.background, region, name)
                text = f"{label}: $\\kappa$ = {fit.kappa:.4f} $\\pm$ {fit.sigma:.4f}"
                mplhep.histplot(total, edges, color=colour, label=text, ax=top)
            if kappa_true is not None:
                top.plot([], [], " ", label=f"true $\\kappa$ = {kappa_true:.4f}")
            top.set_xlabel(name)
            top.set_ylabel("events per bin")
            top.set_ylim(0, 1.15 * top.get_ylim()[1])

            for row, process in enumerate(processes, start=1):
                ax = axes[row, column]
                shapes = _normalise(project(simulations[process], region, name))
                for index, shape in enumerate(shapes):
                    spread_label = f"simulations ({len(shapes)})" if index == 0 else None
                    mplhep.histplot(shape, edges, color="0.65", lw=0.8, label=spread_label, ax=ax)
                for colour, fit in zip(colours, fits.values(), strict=False):
                    fitted = fit.signal if process == "signal" else fit.background
                    mplhep.histplot(
                        _normalise(project(fitted, region, name)), edges, color=colour, lw=2, ax=ax
                    )
                if truth is not None and process in truth:
                    true_shape = _normalise(project(truth[process], region, name))
                    mplhep.histplot(
                        true_shape, edges, color="black", ls="--", lw=2, label="true shape", ax=ax
                    )
                ax.set_xlabel(name)
                ax.set_ylabel("fraction per bin")
                ax.set_title(f"{process} shape", fontsize="medium")
                ax.set_ylim(0, 1.15 * ax.get_ylim()[1])

        handles, labels = axes[0, 0].get_legend_handles_labels()
        shape_handles, shape_labels = (
            axes[1, 0].get_legend_handles_labels() if processes else ([], [])
        )
        fig.legend(
            handles + shape_handles,
            labels + shape_labels,
            loc="outside upper center",
            ncol=2,
            fontsize="small",
            frameon=False,
        )
        if path is not None:
            fig.savefig(path, dpi=110)
        plt.close(fig)
    return fig
