r"""The methods TAMM is compared with: a HistFactory shape-systematics fit, and the oracle fit.

Where this sits: :mod:`tamm.pyhf.workspace` builds the TAMM model and the single-simulation
baseline. This module builds the two other reference models of the studies
(:mod:`tamm.studies`), as pyhf workspace specifications with kappa as POI.

**The HistFactory way** (:func:`histosys_spec`). An analysis with several simulations of a
process usually takes their mean as the nominal template and turns their spread into shape
systematics. Here the spread is summarised by principal components: with the unit-normalised
histograms :math:`h_d` of the D simulations, their mean :math:`\bar h` and sample covariance
:math:`C = \frac{1}{D-1}\sum_d (h_d - \bar h)(h_d - \bar h)^T = \sum_j \lambda_j u_j u_j^T`,
component j becomes a ``histosys`` modifier with

.. math::

    \text{up}_j = N(\bar h + \sqrt{\lambda_j}\, u_j), \qquad
    \text{down}_j = N(\bar h - \sqrt{\lambda_j}\, u_j),

constrained by a unit Gaussian. Each :math:`u_j` sums to zero (the histograms all sum to one),
so the variations change shapes but not totals, and kappa stays the signal fraction.

**The oracle** (:func:`oracle_spec`) fits with nature's exact shapes. No method can do better,
so its sigma is the statistical floor (0.0076 for the Gaussian toy of arXiv 2604.02219 with
55 000 events, from the Fisher information).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from tamm.exceptions import InvalidModelError

__all__ = ["ShapeVariations", "histosys_spec", "oracle_spec", "principal_variations"]


def __dir__() -> list[str]:
    return __all__


log = logging.getLogger(__name__)

# Floor of the up and down templates, as a fraction of the nominal total, so that no
# variation predicts a negative count in a bin (pyhf's Poisson term is then undefined).
_MIN_BIN_FRACTION = 1e-9

# Eigenvalues below this fraction of the largest are numerical zeros (at most D - 1 of the
# D simulations' components are non-zero).
_EIGENVALUE_CUTOFF = 1e-12


def _is_integer(value: object) -> bool:
    """Return whether ``value`` is a Python or numpy integer (a bool is not)."""
    return isinstance(value, int | np.integer) and not isinstance(value, bool)


@dataclass(frozen=True)
class ShapeVariations:
    """Nominal shape and its leading principal variations, from a set of histograms.

    Attributes:
        nominal: Mean of the unit-normalised histograms, shape (V,).
        components: Leading principal directions, unit length, shape (J, V); each sums to 0.
        eigenvalues: Variance of the histograms along each direction, shape (J,), decreasing.
        explained: Fraction of the total variance that each component carries, shape (J,).
    """

    nominal: npt.NDArray[np.float64]
    components: npt.NDArray[np.float64]
    eigenvalues: npt.NDArray[np.float64]
    explained: npt.NDArray[np.float64]

    @property
    def up(self) -> npt.NDArray[np.float64]:
        """Nominal plus one standard deviation along each component, shape (J, V)."""
        shifts = np.sqrt(self.eigenvalues)[:, np.newaxis] * self.components
        up: npt.NDArray[np.float64] = self.nominal[np.newaxis, :] + shifts
        return up

    @property
    def down(self) -> npt.NDArray[np.float64]:
        """Nominal minus one standard deviation along each component, shape (J, V)."""
        shifts = np.sqrt(self.eigenvalues)[:, np.newaxis] * self.components
        down: npt.NDArray[np.float64] = self.nominal[np.newaxis, :] - shifts
        return down


def _as_histograms(values: npt.ArrayLike, name: str) -> npt.NDArray[np.float64]:
    try:
        histograms = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as err:
        msg = f"{name} must be a numeric array of shape (D, V); conversion failed: {err}"
        raise InvalidModelError(msg) from err
    if histograms.ndim != 2 or histograms.shape[0] < 2 or histograms.shape[1] < 2:
        msg = (
            f"{name} must have shape (D, V) with D >= 2 simulations and V >= 2 bins, but "
            f"received shape {histograms.shape}. Stack one histogram per simulation."
        )
        raise InvalidModelError(msg)
    if np.any(~np.isfinite(histograms)) or np.any(histograms < 0):
        msg = f"{name} must contain finite, non-negative bin contents."
        raise InvalidModelError(msg)
    totals = histograms.sum(axis=1, keepdims=True)
    if np.any(totals <= 0):
        row = int(np.flatnonzero(totals.ravel() <= 0)[0])
        msg = f"{name}[{row}] is empty inside the region; drop that simulation or widen the region."
        raise InvalidModelError(msg)
    normalised: npt.NDArray[np.float64] = histograms / totals
    return normalised


def principal_variations(histograms: npt.ArrayLike, n_components: int = 3) -> ShapeVariations:
    """Summarise the spread of simulation histograms by their leading principal components.

    Args:
        histograms: One histogram per simulation, shape (D, V); each is normalised to unit
            sum first, so only shapes count.
        n_components: Number of components J to keep. At most D - 1 are non-zero; asking for
            more keeps the non-zero ones.

    Returns:
        The nominal shape and the components.

    Raises:
        InvalidModelError: If the input is not (D, V) with D, V >= 2, has negative or
            non-finite values or an empty histogram, or ``n_components`` is not positive.

    Examples:
        >>> variations = principal_variations([[1, 2, 1], [1, 1, 2], [2, 1, 1]], n_components=2)
        >>> variations.nominal.round(3).tolist()
        [0.333, 0.333, 0.333]
        >>> variations.components.shape  # (J, V)
        (2, 3)
        >>> bool(abs(variations.components.sum(axis=1)).max() < 1e-12)  # shape changes only
        True
    """
    if not _is_integer(n_components) or n_components < 1:
        msg = f"n_components must be a positive integer, but received {n_components!r}."
        raise InvalidModelError(msg)
    shapes = _as_histograms(histograms, "histograms")
    nominal = shapes.mean(axis=0)
    centred = shapes - nominal
    covariance = centred.T @ centred / (shapes.shape[0] - 1)
    eigenvalues, eigenvectors = np.linalg.eigh(covariance)
    order = np.argsort(eigenvalues)[::-1]
    eigenvalues, eigenvectors = eigenvalues[order], eigenvectors[:, order]

    total = float(np.sum(np.maximum(eigenvalues, 0.0)))
    keep = eigenvalues > _EIGENVALUE_CUTOFF * max(float(eigenvalues[0]), 0.0)
    keep[n_components:] = False
    if keep.sum() < n_components:
        log.info(
            "principal_variations: %d of %d requested components are non-zero for %d histograms",
            int(keep.sum()),
            n_components,
            shapes.shape[0],
        )
    components = eigenvectors[:, keep].T
    # NB: fix the sign of each direction (largest entry positive), so that the result does not
    # depend on the sign convention of the eigensolver.
    signs = np.sign(
        components[np.arange(components.shape[0]), np.argmax(np.abs(components), axis=1)]
    )
    components = components * signs[:, np.newaxis]
    kept = eigenvalues[keep]
    return ShapeVariations(
        nominal=nominal,
        components=components,
        eigenvalues=kept,
        explained=kept / total if total > 0 else np.zeros_like(kept),
    )


def histosys_spec(
    signal_histograms: npt.ArrayLike,
    background_histograms: npt.ArrayLike,
    observed: npt.ArrayLike,
    *,
    n_components: int = 3,
    channel: str = "SR",
    poi: str = "kappa",
    kappa_init: float = 0.1,
) -> dict[str, Any]:
    """Build the HistFactory-style fit: mean templates with principal shape systematics.

    The model is the single-template fit of :func:`tamm.pyhf.baseline_spec` on the mean
    shapes, plus ``n_components`` ``histosys`` modifiers per process (named
    ``signal_pc1``, ..., ``background_pc1``, ...), each constrained by a unit Gaussian.

    Args:
        signal_histograms: Signal simulation histograms, shape (Ds, V).
        background_histograms: Background simulation histograms, shape (Db, V).
        observed: Observed counts per bin, shape (V,).
        n_components: Principal components kept per process (at most D - 1 are non-zero).
        channel: Name of the pyhf channel.
        poi: Name of the signal-fraction parameter.
        kappa_init: Starting value of kappa, in [0, 1].

    Returns:
        A pyhf workspace specification, usable with :func:`tamm.pyhf.build_workspace` and
        :func:`tamm.pyhf.model_and_data`.

    Raises:
        InvalidModelError: If the histograms or the observed counts are invalid or their
            numbers of bins differ.

    Examples:
        >>> from tamm.pyhf import build_model
        >>> signal = [[1, 2, 4, 2], [1, 3, 3, 1], [2, 3, 3, 2]]
        >>> background = [[4, 3, 2, 1], [5, 3, 1, 1], [4, 4, 2, 1]]
        >>> spec = histosys_spec(signal, background, [30, 30, 25, 15], n_components=1)
        >>> build_model(spec).config.par_names
        ['background_pc1', 'signal_pc1', 'norm', 'kappa']
    """
    from tamm.pyhf import baseline_spec

    variations = {
        "signal": principal_variations(
            _as_histograms(signal_histograms, "signal_histograms"), n_components
        ),
        "background": principal_variations(
            _as_histograms(background_histograms, "background_histograms"), n_components
        ),
    }
    spec = baseline_spec(
        variations["signal"].nominal,
        variations["background"].nominal,
        observed,
        channel=channel,
        poi=poi,
        kappa_init=kappa_init,
    )
    for sample in spec["channels"][0]["samples"]:
        process = "signal" if sample["name"] == "signal" else "background"
        shape = variations[process]
        total = float(np.sum(sample["data"]))
        floor = _MIN_BIN_FRACTION * total
        for index, (up, down) in enumerate(zip(shape.up, shape.down, strict=True), start=1):
            sample["modifiers"].append(
                {
                    "name": f"{process}_pc{index}",
                    "type": "histosys",
                    "data": {
                        "hi_data": np.maximum(total * up, floor).tolist(),
                        "lo_data": np.maximum(total * down, floor).tolist(),
                    },
                }
            )
    log.debug(
        "histosys_spec: %d signal and %d background components",
        variations["signal"].components.shape[0],
        variations["background"].components.shape[0],
    )
    return spec


def oracle_spec(
    signal_truth: npt.ArrayLike,
    background_truth: npt.ArrayLike,
    observed: npt.ArrayLike,
    *,
    channel: str = "SR",
    poi: str = "kappa",
    kappa_init: float = 0.1,
) -> dict[str, Any]:
    """Build the oracle fit: one template per process with nature's exact shape.

    This is :func:`tamm.pyhf.baseline_spec` given the true bin probabilities, for example
    from :meth:`tamm.datasets.GaussianToy.true_bin_probabilities`.

    Args:
        signal_truth: True signal bin probabilities (or any positive multiple), shape (V,).
        background_truth: True background bin probabilities, shape (V,).
        observed: Observed counts per bin, shape (V,).
        channel: Name of the pyhf channel.
        poi: Name of the signal-fraction parameter.
        kappa_init: Starting value of kappa, in [0, 1].

    Returns:
        A pyhf workspace specification with the parameters ``norm`` and ``kappa``.

    Raises:
        InvalidModelError: For the invalid inputs listed in :func:`tamm.pyhf.baseline_spec`.
    """
    from tamm.pyhf import baseline_spec

    return baseline_spec(
        signal_truth, background_truth, observed, channel=channel, poi=poi, kappa_init=kappa_init
    )
