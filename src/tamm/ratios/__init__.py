"""Unbinned engine: calibrated log density ratios of every biased simulation to their pool.

Which name to use:

* :func:`train_ratios` trains the multiclass ensemble on the simulations of all processes and
  calibrates it on held-out events. It returns a :class:`CalibratedEnsemble`, whose
  ``log_ratios(events, region)`` feed the unbinned mixture model.
* :class:`RatioEnsemble` and :meth:`CalibratedEnsemble.calibrate` are the two steps separately.
* :class:`BaselineRatio` is the single-simulation baseline (one signal against one background
  simulation), for comparisons.
* :func:`load` reads a model written by ``save()``; the format is described in
  :mod:`tamm.ratios.persistence`.

TensorFlow and Keras are imported on the first training, evaluation or load, so importing this
package stays cheap.
"""

from __future__ import annotations

from tamm.ratios.baseline import BaselineRatio
from tamm.ratios.calibration import (
    CalibratedEnsemble,
    CalibrationFit,
    fit_calibration,
    train_ratios,
)
from tamm.ratios.ensemble import ClassInfo, MemberRecord, RatioEnsemble, TrainingSettings
from tamm.ratios.persistence import load

__all__ = [
    "BaselineRatio",
    "CalibratedEnsemble",
    "CalibrationFit",
    "ClassInfo",
    "MemberRecord",
    "RatioEnsemble",
    "TrainingSettings",
    "fit_calibration",
    "load",
    "train_ratios",
]


def __dir__() -> list[str]:
    return __all__
