"""Topic models of simulation histograms for the binned engine.

See :mod:`tamm.topics.vb` for the model and where it sits in the pipeline.
"""

from __future__ import annotations

from tamm.topics.vb import TopicFit, TopicModel, learn_topics

__all__ = ["TopicFit", "TopicModel", "learn_topics"]


def __dir__() -> list[str]:
    return __all__
