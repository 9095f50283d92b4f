"""Exceptions and warnings raised by tamm.

Every error that tamm raises on purpose derives from :class:`TammError`, so an analysis script
can catch them all at once. Where an error is a kind of bad value, it also derives from the
matching built-in (``ValueError``), so generic ``except ValueError`` blocks keep working.

Messages follow one pattern: what was received, what was expected, and how to fix it.
"""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "ConvergenceWarning",
    "InputFileError",
    "InvalidModelError",
    "InvalidRegionError",
    "InvalidSimulationError",
    "ModelFileError",
    "TammError",
    "TammWarning",
]


def __dir__() -> list[str]:
    return __all__


class TammError(Exception):
    """Base class of every exception that tamm raises on purpose."""


class InvalidRegionError(TammError, ValueError):
    """Raised when a :class:`~tamm.samples.Region` is ill-defined.

    For example: a lower limit that is not below its upper limit, a binning whose edges do not
    cover the region, or observable names that repeat.
    """


class InvalidSimulationError(TammError, ValueError):
    """Raised when events or weights of a simulation (or of observed data) are unusable.

    For example: an empty sample, NaN or infinite values, the wrong number of columns,
    negative or NaN weights, or a set with fewer simulations than the requested topics.
    """


class InvalidModelError(TammError, ValueError):
    """Raised when a statistical model cannot be built from the given inputs.

    For example: templates with the wrong number of bins, observed counts that are negative,
    or a topic model that was asked for more topics than it has documents.
    """


class ConfigError(TammError, ValueError):
    """Raised when an analysis configuration is invalid.

    The message starts with the key path of the offending entry (for example
    ``binned.n_topics``) and states what was received and what is expected.

    Attributes:
        key: The key path, or an empty string for the file as a whole.
    """

    def __init__(self, key: str, message: str) -> None:
        self.key = key
        super().__init__(f"{key}: {message}" if key else message)


class InputFileError(TammError, OSError):
    """Raised when an input ROOT file, or a tree, branch or histogram in it, cannot be used.

    For example: a file that does not exist or is not a ROOT file, a tree or histogram name that
    the file lacks, or a branch that the tree lacks. The message names the file, the object and,
    where the request came from an analysis configuration, the configuration key.
    """


class ModelFileError(TammError, OSError):
    """Raised when a saved tamm model or workspace is missing, incomplete or was altered."""


class TammWarning(UserWarning):
    """Base class of the warnings that tamm emits."""


class ConvergenceWarning(TammWarning):
    """Emitted when an optimiser or a variational fit did not report convergence."""
