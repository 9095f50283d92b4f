"""pyhf adapter of tamm's binned engine: custom modifiers, workspaces and kappa fits.

The modules, from the bottom up:

- :mod:`tamm.pyhf.modifiers`: the ``topicmix`` and ``fraction`` modifiers and
  :data:`modifier_set`, the HistFactory modifiers plus these two.
- :mod:`tamm.pyhf.workspace`: specifications of TAMM and single-template models, pyhf models
  and workspaces built from them, and JSON files.
- :mod:`tamm.pyhf.fit`: maximum-likelihood fits of kappa and CLs tests.

Typical use::

    from tamm.pyhf import tamm_spec, build_workspace, model_and_data, fit_kappa

    spec = tamm_spec(signal_topics, background_topics, observed)  # (Ks, V), (Kb, V), (V,)
    model, data = model_and_data(build_workspace(spec))
    result = fit_kappa(model, data)                                # a tamm.results.KappaFit
"""

from __future__ import annotations

from tamm.pyhf.fit import (
    KappaHypotest,
    fit_kappa,
    hypotest_kappa,
    initial_parameters,
    use_numpy_backend,
)
from tamm.pyhf.modifiers import FRACTION, TOPICMIX, modifier_set, topic_weights
from tamm.pyhf.workspace import (
    baseline_spec,
    build_model,
    build_workspace,
    load_model,
    model_and_data,
    read_workspace,
    tamm_spec,
    write_workspace,
)

__all__ = [
    "FRACTION",
    "TOPICMIX",
    "KappaHypotest",
    "baseline_spec",
    "build_model",
    "build_workspace",
    "fit_kappa",
    "hypotest_kappa",
    "initial_parameters",
    "load_model",
    "model_and_data",
    "modifier_set",
    "read_workspace",
    "tamm_spec",
    "topic_weights",
    "use_numpy_backend",
    "write_workspace",
]


def __dir__() -> list[str]:
    return __all__
