"""Settings of a pseudo-experiment study, and the seeds derived from them.

A study repeats the whole analysis: ``n_draws`` random choices of biased simulations (a
"draw"), each followed by ``n_experiments`` pseudo-datasets from nature, each fitted by every
method. The configuration is plain data, so it is written to the results file, compared on
resume and sent to worker processes.

Every random number comes from :class:`numpy.random.SeedSequence` streams keyed by
``(master seed, stream, draw[, experiment])``, never from the order in which tasks run. A study
therefore gives identical numbers on one process, a process pool or a Dask cluster.
"""

from __future__ import annotations

import hashlib
import json
import zlib
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np

from tamm.exceptions import InvalidModelError

__all__ = ["DEFAULT_METHODS", "StudyConfig"]


def __dir__() -> list[str]:
    return __all__


DEFAULT_METHODS = ("baseline", "histosys", "tamm-binned", "oracle")
"""Methods that a study runs by default."""

# Stream numbers of the seed sequences; changing one changes every study result.
_DRAW_STREAM = 0
_EXPERIMENT_STREAM = 1
_METHOD_STREAM = 2

_DATASETS = ("gaussian-toy",)


def _is_integer(value: object) -> bool:
    """Return whether ``value`` is a Python or numpy integer (a bool is not)."""
    return isinstance(value, int | np.integer) and not isinstance(value, bool)


@dataclass(frozen=True)
class StudyConfig:
    """Settings of a pseudo-experiment study.

    The defaults follow the coverage protocol of arXiv 2604.02219 for the Gaussian toy: fixed
    counts of 5000 signal and 50 000 background events inside the region, so kappa_true is
    1/11. The binned settings are those of ``tamm demo``: 10 simulations and 4 topics per
    process, 10 x 10 bins.

    Attributes:
        n_draws: Number of independent draws of simulations (D).
        n_experiments: Pseudo-experiments per draw (P).
        methods: Names of the registered methods to run (see :mod:`tamm.studies.methods`).
        seed: Master seed of every random step.
        dataset: The toy the simulations and pseudo-data come from (``"gaussian-toy"``).
        n_simulations: Biased simulations drawn per process in each draw.
        n_events_per_simulation: Events sampled per simulation, before the region's cut.
        n_topics: Topics learned per process by ``tamm-binned``.
        n_components: Principal shape components per process of ``histosys``.
        n_signal: Signal events inside the region per pseudo-experiment.
        n_background: Background events inside the region per pseudo-experiment.
        poisson: Draw the two counts from Poisson distributions instead of fixing them.
        bins: Bins per observable of the histograms.
        profile: Compute profile-likelihood intervals (68.3 % and 95.4 %) and the signed
            root of q at the true kappa for every fit.
    """

    n_draws: int = 10
    n_experiments: int = 30
    methods: tuple[str, ...] = DEFAULT_METHODS
    seed: int = 0
    dataset: str = "gaussian-toy"
    n_simulations: int = 10
    n_events_per_simulation: int = 400_000
    n_topics: int = 4
    n_components: int = 3
    n_signal: int = 5000
    n_background: int = 50_000
    poisson: bool = False
    bins: int = 10
    profile: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "methods", tuple(self.methods))
        positive = {
            "n_draws": self.n_draws,
            "n_experiments": self.n_experiments,
            "n_simulations": self.n_simulations,
            "n_events_per_simulation": self.n_events_per_simulation,
            "n_topics": self.n_topics,
            "n_components": self.n_components,
            "bins": self.bins,
        }
        for name, value in positive.items():
            if not _is_integer(value) or value < 1:
                msg = f"StudyConfig.{name} must be a positive integer, but received {value!r}."
                raise InvalidModelError(msg)
        for name, value in (("n_signal", self.n_signal), ("n_background", self.n_background)):
            if not _is_integer(value) or value < 0:
                msg = f"StudyConfig.{name} must be an integer >= 0, but received {value!r}."
                raise InvalidModelError(msg)
        if self.n_signal + self.n_background == 0:
            msg = "StudyConfig needs n_signal + n_background > 0 events per pseudo-experiment."
            raise InvalidModelError(msg)
        if not _is_integer(self.seed) or self.seed < 0:
            msg = f"StudyConfig.seed must be an integer >= 0, but received {self.seed!r}."
            raise InvalidModelError(msg)
        if self.dataset not in _DATASETS:
            msg = f"StudyConfig.dataset must be one of {list(_DATASETS)}, not {self.dataset!r}."
            raise InvalidModelError(msg)
        if not self.methods or len(set(self.methods)) != len(self.methods):
            msg = f"StudyConfig.methods must name distinct methods, but received {self.methods!r}."
            raise InvalidModelError(msg)
        jackknife = [method for method in self.methods if method.endswith("-jk")]
        if jackknife and self.n_simulations < 3:
            msg = (
                f"The methods {jackknife} leave one simulation out at a time and need at least 3 "
                f"simulations per process; received n_simulations={self.n_simulations}."
            )
            raise InvalidModelError(msg)
        if "tamm-binned-jk" in self.methods and self.n_topics > self.n_simulations - 1:
            msg = (
                f"tamm-binned-jk learns {self.n_topics} topics from {self.n_simulations - 1} "
                f"simulations when it leaves one out; use n_topics <= {self.n_simulations - 1}."
            )
            raise InvalidModelError(msg)

    @property
    def n_fits(self) -> int:
        """Number of fits of a complete study: draws x experiments x methods."""
        return self.n_draws * self.n_experiments * len(self.methods)

    def to_dict(self) -> dict[str, Any]:
        """Return the settings as a JSON-serialisable dictionary."""
        data = asdict(self)
        data["methods"] = list(self.methods)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StudyConfig:
        """Rebuild settings written by :meth:`to_dict`.

        Raises:
            InvalidModelError: If a key is unknown or a value is invalid.
        """
        known = {field.name for field in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            msg = f"Unknown study settings {unknown}; the known settings are {sorted(known)}."
            raise InvalidModelError(msg)
        values = dict(data)
        if "methods" in values:
            values["methods"] = tuple(values["methods"])
        return cls(**values)

    def fingerprint(self) -> str:
        """Return a short hash of the settings; workers key their model caches by it."""
        text = json.dumps(self.to_dict(), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def draw_seed(self, draw: int) -> np.random.SeedSequence:
        """Return the seed sequence of draw ``draw`` (simulation choice, samples, topics)."""
        return np.random.SeedSequence(self.seed, spawn_key=(_DRAW_STREAM, int(draw)))

    def experiment_seed(self, draw: int, experiment: int) -> np.random.SeedSequence:
        """Return the seed sequence of pseudo-experiment ``experiment`` of draw ``draw``."""
        return np.random.SeedSequence(
            self.seed, spawn_key=(_EXPERIMENT_STREAM, int(draw), int(experiment))
        )

    def method_seed(self, draw: int, experiment: int, method: str) -> np.random.SeedSequence:
        """Return the seed sequence a method may use for its own randomness in one fit."""
        method_key = zlib.crc32(method.encode())
        return np.random.SeedSequence(
            self.seed, spawn_key=(_METHOD_STREAM, int(draw), int(experiment), method_key)
        )
