"""The two kinds of study tasks, as run inside a worker process (or in the main process).

- :func:`prepare_draw_task` samples the simulations of one draw, histograms them and runs
  every method's ``prepare``; it returns the draw as plain data.
- :func:`run_experiment_task` fits one pseudo-experiment with the requested methods and
  returns one result record per method.

Tasks receive and return only plain data (settings as a dict, numpy arrays, lists), never
pyhf or zfit objects. A worker keeps the fitters it built for the last few draws
(:data:`_FITTER_CACHE`, keyed by the settings' fingerprint, the draw and the method), so each
model is built once per draw and worker and then reused for every pseudo-experiment.
"""

from __future__ import annotations

import logging
import math
import time
import warnings
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from tamm.exceptions import TammWarning
from tamm.metrics import hellinger
from tamm.studies._threads import limit_threads
from tamm.studies.config import StudyConfig
from tamm.studies.methods import (
    PROCESSES,
    Draw,
    Experiment,
    Fitter,
    Method,
    MethodOutcome,
    make_draw,
    make_experiment,
    run_method,
)

__all__ = ["fit_record", "prepare_draw_task", "run_experiment_task"]


def __dir__() -> list[str]:
    return __all__


log = logging.getLogger(__name__)

# Draws whose fitters a worker keeps. Tasks arrive draw by draw, so two suffice when each
# worker moves on to the next draw; one more absorbs the overlap at draw boundaries.
_CACHED_DRAWS = 3

_FITTER_CACHE: OrderedDict[tuple[str, int], tuple[Draw, dict[str, Fitter]]] = OrderedDict()


def prepare_draw_task(
    config_data: Mapping[str, Any], index: int, methods: Sequence[Method], *, in_worker: bool = True
) -> dict[str, Any]:
    """Sample and histogram draw ``index`` and run each method's ``prepare``.

    Args:
        config_data: The study settings from :meth:`StudyConfig.to_dict`.
        index: The draw.
        methods: The methods of the study.
        in_worker: Limit this process to one thread per library first (for pool workers).

    Returns:
        The draw as plain data (:meth:`Draw.to_payload`), with ``seconds`` (the wall time)
        and ``warnings`` (the warnings of the methods' ``prepare``, as text).
    """
    if in_worker:
        limit_threads()
    config = StudyConfig.from_dict(dict(config_data))
    start = time.perf_counter()
    draw = make_draw(config, index)
    notes = []
    for method in methods:
        if method.prepare is None:
            continue
        # tamm's warnings (such as a topic model that did not converge) are logged and kept
        # with the draw, the same way on every scheduler, instead of going to the worker's
        # stderr. Other warnings follow the process's filters and are logged if shown.
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", TammWarning)
            prepared = method.prepare(draw)
        for item in caught:
            log.warning("preparing %s for draw %d: %s", method.name, index, item.message)
            notes.append(f"{method.name}: {item.category.__name__}: {item.message}")
        draw.artifacts[method.name] = {
            key: np.asarray(value, dtype=np.float64) for key, value in prepared.items()
        }
    payload = draw.to_payload()
    payload["warnings"] = notes
    payload["seconds"] = time.perf_counter() - start
    log.info("prepared draw %d in %.1f s", index, payload["seconds"])
    return payload


def _fitters(
    config: StudyConfig, payload: Mapping[str, Any], methods: Sequence[Method]
) -> tuple[Draw, dict[str, Fitter]]:
    """Return the cached draw and its fitters, building the missing ones."""
    key = (config.fingerprint(), int(payload["index"]))
    if key in _FITTER_CACHE:
        _FITTER_CACHE.move_to_end(key)
        draw, fitters = _FITTER_CACHE[key]
    else:
        draw, fitters = Draw.from_payload(config, payload), {}
        _FITTER_CACHE[key] = (draw, fitters)
        while len(_FITTER_CACHE) > _CACHED_DRAWS:
            _FITTER_CACHE.popitem(last=False)
    for method in methods:
        if method.name not in fitters:
            start = time.perf_counter()
            try:
                fitters[method.name] = method.build(draw)
            # NB: a method that cannot be built for one draw must not stop the study, so each
            # of its fits on that draw is recorded as failed with this error.
            except Exception as err:  # noqa: BLE001
                log.warning(
                    "building %s for draw %d failed: %s: %s",
                    method.name,
                    draw.index,
                    type(err).__name__,
                    err,
                )
                fitters[method.name] = _FailedBuild(f"building the method failed: {err!r}")
            log.debug(
                "built %s for draw %d in %.2f s",
                method.name,
                draw.index,
                time.perf_counter() - start,
            )
    return draw, fitters


class _FailedBuild:
    """Stands in for a fitter whose build raised; every call raises that error again."""

    def __init__(self, message: str) -> None:
        self.message = message

    def __call__(self, experiment: Experiment) -> MethodOutcome:
        del experiment  # every call fails the same way
        raise RuntimeError(self.message)


def _finite_or_none(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


def fit_record(
    draw: Draw,
    experiment_index: int,
    kappa_true: float,
    method: str,
    outcome: MethodOutcome | None,
    message: str,
    seconds: float,
) -> dict[str, Any]:
    """Build the JSON record of one fit; NaN and infinite values become None."""
    record: dict[str, Any] = {
        "record": "fit",
        "draw": draw.index,
        "experiment": experiment_index,
        "method": method,
        "kappa_true": kappa_true,
        "seconds": round(seconds, 6),
    }
    if outcome is None:
        return record | {"converged": False, "error": message}
    fit = outcome.fit
    record |= {
        "kappa": _finite_or_none(fit.kappa),
        "sigma": _finite_or_none(fit.sigma),
        "converged": bool(fit.converged),
        "z_interval": _finite_or_none(outcome.z_interval),
        "intervals": {
            label: [_finite_or_none(low), _finite_or_none(high)]
            for label, (low, high) in outcome.intervals.items()
        },
        "message": "; ".join(part for part in (fit.message, message) if part),
        "error": None,
    }
    if outcome.shapes is not None:
        for process, shape in zip(PROCESSES, outcome.shapes, strict=True):
            record[f"hellinger_{process}"] = float(hellinger(shape, draw.truth[process]))
    return record


def run_experiment_task(
    config_data: Mapping[str, Any],
    payload: Mapping[str, Any],
    experiment_index: int,
    methods: Sequence[Method],
    *,
    in_worker: bool = True,
) -> list[dict[str, Any]]:
    """Fit pseudo-experiment ``experiment_index`` of a draw with each of ``methods``.

    Args:
        config_data: The study settings from :meth:`StudyConfig.to_dict`.
        payload: The draw from :func:`prepare_draw_task`.
        experiment_index: The pseudo-experiment within the draw.
        methods: The methods to run (a failed fit gives a record with ``error`` set).
        in_worker: Limit this process to one thread per library first (for pool workers).

    Returns:
        One record per method (see :func:`fit_record`).
    """
    if in_worker:
        limit_threads()
    config = StudyConfig.from_dict(dict(config_data))
    draw, fitters = _fitters(config, payload, methods)
    experiment = make_experiment(draw, experiment_index)
    records = []
    for method in methods:
        start = time.perf_counter()
        outcome, message = run_method(fitters[method.name], experiment, method.name)
        seconds = time.perf_counter() - start
        records.append(
            fit_record(
                draw,
                experiment_index,
                experiment.kappa_true,
                method.name,
                outcome,
                message,
                seconds,
            )
        )
    return records
