"""Input and output: ROOT files through uproot, histogram objects, and analysis configurations.

The modules:

- :mod:`tamm.io.root`: chunked reading of TTree/RNTuple branches inside a region, histograms
  and trees written to ROOT files.
- :mod:`tamm.io.hists`: :class:`hist.Hist` objects in (simulations and data as histograms) and
  out (fitted shapes with named axes).
- :mod:`tamm.io.config`: the YAML configuration of ``tamm fit``.

uproot, hist and PyYAML are imported by the functions that need them.
"""

from __future__ import annotations

from tamm.io.config import AnalysisConfig, ConfigError, load_config, parse_config
from tamm.io.hists import (
    HistogramSet,
    counts_from_hist,
    flatten_hist,
    hist_from_counts,
    region_from_hist,
)
from tamm.io.root import (
    InputFileError,
    TreeHistogram,
    TreeSelection,
    histogram_tree,
    list_trees,
    read_histogram,
    read_tree,
    write_histograms,
    write_tree,
)

__all__ = [
    "AnalysisConfig",
    "ConfigError",
    "HistogramSet",
    "InputFileError",
    "TreeHistogram",
    "TreeSelection",
    "counts_from_hist",
    "flatten_hist",
    "hist_from_counts",
    "histogram_tree",
    "list_trees",
    "load_config",
    "parse_config",
    "read_histogram",
    "read_tree",
    "region_from_hist",
    "write_histograms",
    "write_tree",
]


def __dir__() -> list[str]:
    return __all__
