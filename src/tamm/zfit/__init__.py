"""zfit adapter of tamm: the TAMM models as zfit PDFs, with kappa as a ``zfit.Parameter``.

The modules, by engine:

- :mod:`tamm.zfit.unbinned`: :class:`TammPDF` (the unbinned template-adapted mixture as a
  density relative to the reference sample), :func:`tamm_nll` and :func:`tamm_constraints`
  (its loss with the ridge and the equal-normalisation penalty), :func:`profile_scan`, and
  :func:`exact_gaussian_log_ratio_fn` for the Gaussian toy.
- :mod:`tamm.zfit.binned`: :class:`TopicMixturePDF`, the binned PDF of the topic engine.
- :mod:`tamm.zfit.hepstats`: upper limits and discovery tests on kappa with hepstats, around
  the bugs of hepstats 0.10.1. Import it explicitly; it needs the hepstats package.

Typical use::

    from tamm.zfit import TammPDF, tamm_nll

    pdf = TammPDF(region, log_ratio_fn, reference, n_data=len(data))  # extended, kappa = pdf.kappa
    loss = tamm_nll(pdf, data, penalty=penalty)                      # the standalone TAMM loss
    result = zfit.minimize.Minuit(gradient="zfit").minimize(loss)

Importing this package imports zfit and TensorFlow (several seconds). zfit emits a
``UserWarning`` on import unless the environment variable ``ZFIT_DISABLE_TF_WARNINGS`` is set;
tamm leaves that choice to the application.
"""

from __future__ import annotations

from tamm.zfit.binned import TopicMixturePDF, binned_data, binned_space, stick_breaking_weights
from tamm.zfit.unbinned import (
    BinnedTammPDF,
    KappaScan,
    LogRatioFunction,
    TammPDF,
    exact_gaussian_log_ratio_fn,
    profile_scan,
    region_space,
    tamm_constraints,
    tamm_nll,
)

__all__ = [
    "BinnedTammPDF",
    "KappaScan",
    "LogRatioFunction",
    "TammPDF",
    "TopicMixturePDF",
    "binned_data",
    "binned_space",
    "exact_gaussian_log_ratio_fn",
    "profile_scan",
    "region_space",
    "stick_breaking_weights",
    "tamm_constraints",
    "tamm_nll",
]


def __dir__() -> list[str]:
    return __all__
