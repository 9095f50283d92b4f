"""Result records shared by every engine and host: one fitted signal fraction.

A :class:`KappaFit` is plain data (floats, strings, dicts), so it can be written to JSON, sent
between processes and compared across methods (TAMM, the single-simulation baseline, an oracle).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["KappaFit"]


def __dir__() -> list[str]:
    return __all__


@dataclass(frozen=True)
class KappaFit:
    """A fitted signal fraction kappa with its uncertainty and the optimiser's status.

    Attributes:
        method: Short label of the method (``"tamm-binned"``, ``"baseline"``, ...).
        kappa: Best-fit signal fraction.
        sigma: Symmetric (Hesse) uncertainty of kappa; NaN when it could not be computed.
        converged: Whether the optimiser reported success.
        nll: Value of the negative log-likelihood at the minimum (the host's convention).
        parameters: Best-fit values of every parameter, by name (list-valued for vectors).
        message: The optimiser's status message.
    """

    method: str
    kappa: float
    sigma: float
    converged: bool
    nll: float = math.nan
    parameters: dict[str, Any] = field(default_factory=dict)
    message: str = ""

    def pull(self, kappa_true: float) -> float:
        """Return ``(kappa - kappa_true) / sigma``; NaN when sigma is not positive."""
        if not self.sigma > 0:
            return math.nan
        return (self.kappa - kappa_true) / self.sigma

    def to_dict(self) -> dict[str, Any]:
        """Return the record as a JSON-serialisable dictionary."""
        return asdict(self)
