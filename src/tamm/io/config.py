"""The YAML configuration of a file-based analysis (``tamm fit CONFIG``): schema and loading.

Where this sits in the pipeline: :func:`load_config` reads and validates the file once, and
:mod:`tamm.analysis` runs the analysis from the resulting :class:`AnalysisConfig`. Validation
checks types, ranges and key names only. Whether files, trees and branches exist is checked
when they are read (:mod:`tamm.io.root`), and those errors name the same configuration keys.

Every error is a :class:`ConfigError` whose message starts with the key path of the offending
entry, such as ``processes.signal.simulations[2].tree``. Relative paths in the file are
resolved against the folder of the configuration file.

The schema, with defaults::

    observables: [nconst, ptd]            # branch names, in column order
    region:                               # one entry per observable
      nconst: {range: [0.5, 150.5], bins: 7}         # equal-width bins, or
      ptd: {edges: [0.0, 0.2, 0.3, 1.0]}             # explicit edges (range optional)
    processes:                            # exactly "signal" and "background"
      signal:
        simulations:                      # each entry one of:
          - {file: sims.root, tree: msd_00}          #   one tree
          - {file: sims.root, trees: "msd_*"}        #   every tree matching a glob, sorted
          - {file: hists.root, histogram: h_sig_00}  #   a TH1/TH2 with the region's binning
        # optional per entry: weight (branch name), name, settings (a mapping)
      background: {simulations: [...]}
    data: {file: data.root, tree: events}            # or {file, histogram}; or instead:
    pseudo_data:                          # draws without replacement from two trees
      signal: {file: nature_signal.root, tree: jets}
      background: {file: nature_background.root, tree: jets}
      kappa: 0.3
      n_events: 2000
      seed: 1
    engines: [binned]                     # and/or unbinned
    binned: {n_topics: 3, seed: 0}        # also n_restarts, max_iter, tol, doc_topic_prior,
                                          # topic_word_prior (see tamm.topics.TopicModel)
    unbinned:                             # settings of the unbinned engine
      model_dir: null                     # saved ratio models; default <output_dir>/ratio_models
      seed: 0                             # seed of training and of the reference split
      training: {n_members: 4}            # any tamm.ratios.TrainingSettings field
      n_reference: null                   # reference events; default min(K_s N, pool / 2)
      n_penalty: null                     # penalty events; default as n_reference
      ridge_strength: 1.0
      penalty_strength: 1.0
    baseline: {simulation: 0, prior: 1.0} # index or name; or {signal: 0, background: 2}
    scan: {points: 41, width: 4.0}        # profile scan of kappa: grid size, half-width in sigma
    reader: {step_size: "50 MB"}          # uproot chunk size (entries or memory)
    output_dir: tamm-output
"""

from __future__ import annotations

import difflib
import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from tamm.exceptions import ConfigError, InvalidRegionError
from tamm.samples import Region

__all__ = [
    "AVAILABLE_ENGINES",
    "KNOWN_ENGINES",
    "AnalysisConfig",
    "BaselineConfig",
    "BinnedConfig",
    "ConfigError",
    "PseudoDataConfig",
    "ScanConfig",
    "SourceConfig",
    "UnbinnedConfig",
    "load_config",
    "parse_config",
]


def __dir__() -> list[str]:
    return __all__


KNOWN_ENGINES = ("binned", "unbinned")
"""Engine names that tamm defines."""

AVAILABLE_ENGINES = ("binned", "unbinned")
"""Engines that ``tamm fit`` can run in this version."""

PROCESSES = ("signal", "background")

_TOPIC_OPTIONS = {
    "n_restarts": "int",
    "max_iter": "int",
    "tol": "float",
    "doc_topic_prior": "float",
    "topic_word_prior": "float",
}


# ---------------------------------------------------------------------------------------------
# Records


@dataclass(frozen=True)
class SourceConfig:
    """One input entry: a tree, a glob of trees, or a histogram in a ROOT file.

    Attributes:
        key: Key path of the entry in the configuration, for messages.
        file: The ROOT file, resolved to an absolute path. It may contain glob characters
            (``*``, ``?``, ``[``), which are expanded when the analysis reads the inputs.
        tree: Name of one tree.
        trees: Glob pattern of tree names (``"msd_*"``).
        histogram: Name of a TH1 or TH2.
        weight: Optional branch of per-event weights.
        name: Optional label, used only when the entry expands to a single tree or histogram;
            by default (and for globs) ``"<file stem>:<tree>"``.
        settings: Generator settings (free-form), stored with the results.
    """

    key: str
    file: Path
    tree: str | None = None
    trees: str | None = None
    histogram: str | None = None
    weight: str | None = None
    name: str | None = None
    settings: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Return the entry as written in a configuration, with the resolved file path."""
        out: dict[str, Any] = {"file": str(self.file)}
        for name in ("tree", "trees", "histogram", "weight", "name"):
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        if self.settings:
            out["settings"] = dict(self.settings)
        return out


@dataclass(frozen=True)
class PseudoDataConfig:
    """Pseudo-data drawn without replacement from a signal and a background tree.

    Attributes:
        signal: The tree of signal events.
        background: The tree of background events.
        kappa: Requested signal fraction; ``round(kappa * n_events)`` signal events are drawn.
        n_events: Events drawn in total, among those inside the region.
        seed: Seed of the draw.
    """

    signal: SourceConfig
    background: SourceConfig
    kappa: float
    n_events: int
    seed: int

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-friendly record."""
        return {
            "signal": self.signal.to_dict(),
            "background": self.background.to_dict(),
            "kappa": self.kappa,
            "n_events": self.n_events,
            "seed": self.seed,
        }


@dataclass(frozen=True)
class BinnedConfig:
    """Settings of the binned (topic) engine.

    Attributes:
        n_topics: Topics per process.
        seed: Seed of the topic model.
        options: Further :class:`~tamm.topics.TopicModel` options given in the file.
    """

    n_topics: int = 3
    seed: int = 0
    options: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-friendly record."""
        return {"n_topics": self.n_topics, "seed": self.seed, **self.options}


@dataclass(frozen=True)
class UnbinnedConfig:
    """Settings of the unbinned (ratio-network) engine.

    Attributes:
        model_dir: Folder of the saved ratio models (``ensemble/`` and ``baseline/``), or None
            for ``<output_dir>/ratio_models``. A folder named here must exist unless the models
            are trained (``tamm train --analysis`` or ``tamm fit --retrain``).
        seed: Master seed of the network training and of the split of the pooled simulation
            events into reference and penalty samples.
        training: :class:`~tamm.ratios.TrainingSettings` fields given in the file.
        n_reference: Events in the reference sample; None for ``min(K_s N, M / 2)`` with
            ``K_s`` signal simulations, ``N`` data events and ``M`` pooled events in the region.
        n_penalty: Events in the penalty sample; None for the same size as the reference.
        ridge_strength: Strength of the ridge on the mixture weights.
        penalty_strength: Strength of the equal-normalisation penalty.
    """

    model_dir: Path | None = None
    seed: int = 0
    training: dict[str, Any] = field(default_factory=dict)
    n_reference: int | None = None
    n_penalty: int | None = None
    ridge_strength: float = 1.0
    penalty_strength: float = 1.0

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-friendly record."""
        return {
            "model_dir": None if self.model_dir is None else str(self.model_dir),
            "seed": self.seed,
            "training": dict(self.training),
            "n_reference": self.n_reference,
            "n_penalty": self.n_penalty,
            "ridge_strength": self.ridge_strength,
            "penalty_strength": self.penalty_strength,
        }


@dataclass(frozen=True)
class BaselineConfig:
    """Which simulation of each process the single-simulation baseline uses.

    Attributes:
        signal: Index or name of the signal simulation.
        background: Index or name of the background simulation.
        prior: Pseudo-count added to every bin of the two baseline templates. The default 1 is
            the flat Dirichlet prior that the topic model also uses; it keeps a bin that is
            empty in the simulation but filled in the data from making the likelihood zero.
    """

    signal: int | str = 0
    background: int | str = 0
    prior: float = 1.0

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-friendly record."""
        return {"signal": self.signal, "background": self.background, "prior": self.prior}


@dataclass(frozen=True)
class ScanConfig:
    """Settings of the profile-likelihood scan of kappa.

    Attributes:
        points: Number of kappa values.
        width: Half-width of the scanned range around the fitted kappa, in units of its
            uncertainty; the range is clipped to [0, 1].
    """

    points: int = 41
    width: float = 4.0

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-friendly record."""
        return {"points": self.points, "width": self.width}


@dataclass(frozen=True)
class AnalysisConfig:
    """A validated analysis configuration.

    Attributes:
        path: The configuration file, or None when built from a mapping.
        observables: Observable (branch) names, in column order.
        region: The binned fiducial region.
        processes: The simulation entries per process (``"signal"``, ``"background"``).
        data: The observed data, or None when ``pseudo_data`` is used.
        pseudo_data: Pseudo-data settings, or None when ``data`` is used.
        engines: Engines to run.
        binned: Settings of the binned engine.
        unbinned: Settings of the unbinned engine.
        baseline: Settings of the single-simulation baseline.
        scan: Settings of the profile scan.
        output_dir: Folder for the outputs, resolved to an absolute path.
        step_size: uproot chunk size of the readers.
    """

    path: Path | None
    observables: tuple[str, ...]
    region: Region
    processes: dict[str, tuple[SourceConfig, ...]]
    data: SourceConfig | None
    pseudo_data: PseudoDataConfig | None
    engines: tuple[str, ...] = ("binned",)
    binned: BinnedConfig = field(default_factory=BinnedConfig)
    unbinned: UnbinnedConfig = field(default_factory=UnbinnedConfig)
    baseline: BaselineConfig = field(default_factory=BaselineConfig)
    scan: ScanConfig = field(default_factory=ScanConfig)
    output_dir: Path = Path("tamm-output")
    step_size: int | str = "50 MB"

    def with_overrides(
        self, *, seed: int | None = None, output_dir: str | Path | None = None
    ) -> AnalysisConfig:
        """Return a copy with the seeds of both engines and/or the output folder replaced."""
        config = self
        if seed is not None:
            value = _int(seed, "seed", 0)
            config = replace(
                config,
                binned=replace(config.binned, seed=value),
                unbinned=replace(config.unbinned, seed=value),
            )
        if output_dir is not None:
            config = replace(config, output_dir=Path(output_dir).resolve())
        return config

    @property
    def ratio_model_dir(self) -> Path:
        """Folder of the saved ratio models: ``unbinned.model_dir`` or ``<output_dir>/ratio_models``."""
        if self.unbinned.model_dir is not None:
            return self.unbinned.model_dir
        return self.output_dir / "ratio_models"

    def to_dict(self) -> dict[str, Any]:
        """Return the configuration as a JSON-friendly mapping, with resolved paths."""
        return {
            "config_file": None if self.path is None else str(self.path),
            "observables": list(self.observables),
            "region": self.region.to_dict(),
            "processes": {
                process: [source.to_dict() for source in sources]
                for process, sources in self.processes.items()
            },
            "data": None if self.data is None else self.data.to_dict(),
            "pseudo_data": None if self.pseudo_data is None else self.pseudo_data.to_dict(),
            "engines": list(self.engines),
            "binned": self.binned.to_dict(),
            "unbinned": self.unbinned.to_dict(),
            "baseline": self.baseline.to_dict(),
            "scan": self.scan.to_dict(),
            "output_dir": str(self.output_dir),
            "step_size": self.step_size,
        }


# ---------------------------------------------------------------------------------------------
# Primitive checks


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _mapping(value: Any, key: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        msg = f"expected a mapping (key: value entries), received {value!r} ({_type_name(value)})."
        raise ConfigError(key, msg)
    return value


def _check_keys(
    value: Mapping[str, Any], key: str, allowed: Sequence[str], required: Sequence[str] = ()
) -> None:
    for name in value:
        if name not in allowed:
            where = f"{key}.{name}" if key else str(name)
            close = difflib.get_close_matches(str(name), allowed, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            msg = f"unknown key; the allowed keys here are {sorted(allowed)}.{hint}"
            raise ConfigError(where, msg)
    for name in required:
        if name not in value:
            where = f"{key}.{name}" if key else name
            raise ConfigError(where, "missing required key.")


def _int(value: Any, key: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        msg = f"expected an integer >= {minimum}, received {value!r} ({_type_name(value)})."
        raise ConfigError(key, msg)
    if value < minimum:
        raise ConfigError(key, f"expected an integer >= {minimum}, received {value}.")
    return int(value)


def _float(value: Any, key: str, low: float = -math.inf, high: float = math.inf) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        msg = f"expected a number, received {value!r} ({_type_name(value)})."
        raise ConfigError(key, msg)
    number = float(value)
    if not math.isfinite(number) or not low <= number <= high:
        raise ConfigError(key, f"expected a finite number in [{low}, {high}], received {value}.")
    return number


def _str(value: Any, key: str) -> str:
    if not isinstance(value, str) or not value:
        msg = f"expected a non-empty string, received {value!r} ({_type_name(value)})."
        raise ConfigError(key, msg)
    return value


def _list(value: Any, key: str) -> list[Any]:
    if isinstance(value, str) or not isinstance(value, Sequence):
        msg = f"expected a list, received {value!r} ({_type_name(value)})."
        raise ConfigError(key, msg)
    return list(value)


def _path(value: Any, key: str, base_dir: Path) -> Path:
    path = Path(_str(value, key)).expanduser()
    return path if path.is_absolute() else (base_dir / path).resolve()


# ---------------------------------------------------------------------------------------------
# Sections


def _observables(raw: Mapping[str, Any]) -> tuple[str, ...]:
    names = [
        _str(name, f"observables[{i}]")
        for i, name in enumerate(_list(raw["observables"], "observables"))
    ]
    if not names:
        raise ConfigError("observables", "expected at least one observable name, received [].")
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ConfigError("observables", f"names must be unique; {repeated} repeat.")
    return tuple(names)


def _region(value: Any, observables: tuple[str, ...]) -> Region:
    entries = _mapping(value, "region")
    for name in observables:
        if name not in entries:
            msg = (
                f"observable {name!r} is listed in observables but has no entry here; add "
                f"region.{name}: {{range: [low, high], bins: n}}."
            )
            raise ConfigError("region", msg)
    for name in entries:
        if name not in observables:
            msg = (
                f"{name!r} is not one of the observables {list(observables)}; add it to "
                "observables or remove this entry."
            )
            raise ConfigError(f"region.{name}", msg)

    limits: dict[str, tuple[float, float]] = {}
    bins: dict[str, int | list[float]] = {}
    for name in observables:
        key = f"region.{name}"
        entry = _mapping(entries[name], key)
        _check_keys(entry, key, ("range", "bins", "edges"))
        if "edges" in entry:
            if "bins" in entry:
                raise ConfigError(key, "give either bins (with range) or edges, not both.")
            edges = [
                _float(e, f"{key}.edges[{i}]")
                for i, e in enumerate(_list(entry["edges"], f"{key}.edges"))
            ]
            if len(edges) < 2:
                raise ConfigError(f"{key}.edges", f"expected at least two edges, received {edges}.")
            bins[name] = edges
            limits[name] = (edges[0], edges[-1])
        else:
            _check_keys(entry, key, ("range", "bins"), required=("range", "bins"))
            bins[name] = _int(entry["bins"], f"{key}.bins", 1)
        if "range" in entry:
            pair = _list(entry["range"], f"{key}.range")
            if len(pair) != 2:
                msg = f"expected [low, high], received {entry['range']!r}."
                raise ConfigError(f"{key}.range", msg)
            limits[name] = (_float(pair[0], f"{key}.range[0]"), _float(pair[1], f"{key}.range[1]"))
    try:
        return Region(observables, limits, bins=bins)
    except InvalidRegionError as err:
        raise ConfigError("region", str(err)) from err


def _source(value: Any, key: str, base_dir: Path, *, kinds: Sequence[str]) -> SourceConfig:
    entry = _mapping(value, key)
    allowed = ("file", *kinds, "weight", "name", "settings")
    _check_keys(entry, key, allowed, required=("file",))
    given = [kind for kind in kinds if kind in entry]
    if len(given) != 1:
        choices = " or ".join(kinds)
        msg = f"expected exactly one of {choices}; received {given or 'none'}."
        raise ConfigError(key, msg)
    kind = given[0]
    settings = dict(_mapping(entry.get("settings", {}), f"{key}.settings"))
    if kind == "histogram" and "weight" in entry:
        raise ConfigError(f"{key}.weight", "a histogram entry carries its weights; remove weight.")
    return SourceConfig(
        key=key,
        file=_path(entry["file"], f"{key}.file", base_dir),
        **{kind: _str(entry[kind], f"{key}.{kind}")},
        weight=None if "weight" not in entry else _str(entry["weight"], f"{key}.weight"),
        name=None if "name" not in entry else _str(entry["name"], f"{key}.name"),
        settings=settings,
    )


def _processes(value: Any, base_dir: Path) -> dict[str, tuple[SourceConfig, ...]]:
    entries = _mapping(value, "processes")
    _check_keys(entries, "processes", PROCESSES, required=PROCESSES)
    processes = {}
    for process in PROCESSES:
        key = f"processes.{process}"
        entry = _mapping(entries[process], key)
        _check_keys(entry, key, ("simulations",), required=("simulations",))
        items = _list(entry["simulations"], f"{key}.simulations")
        if not items:
            raise ConfigError(f"{key}.simulations", "expected at least one simulation entry.")
        processes[process] = tuple(
            _source(item, f"{key}.simulations[{i}]", base_dir, kinds=("tree", "trees", "histogram"))
            for i, item in enumerate(items)
        )
    return processes


def _pseudo_data(value: Any, base_dir: Path) -> PseudoDataConfig:
    key = "pseudo_data"
    entry = _mapping(value, key)
    _check_keys(
        entry,
        key,
        ("signal", "background", "kappa", "n_events", "seed"),
        required=("signal", "background", "kappa", "n_events"),
    )
    return PseudoDataConfig(
        signal=_source(entry["signal"], f"{key}.signal", base_dir, kinds=("tree",)),
        background=_source(entry["background"], f"{key}.background", base_dir, kinds=("tree",)),
        kappa=_float(entry["kappa"], f"{key}.kappa", 0.0, 1.0),
        n_events=_int(entry["n_events"], f"{key}.n_events", 1),
        seed=_int(entry.get("seed", 0), f"{key}.seed", 0),
    )


def _engines(value: Any) -> tuple[str, ...]:
    names = [_str(name, f"engines[{i}]") for i, name in enumerate(_list(value, "engines"))]
    if not names:
        raise ConfigError("engines", f"expected at least one engine of {list(AVAILABLE_ENGINES)}.")
    for index, name in enumerate(names):
        if name not in KNOWN_ENGINES:
            msg = f"unknown engine {name!r}; the engines are {list(KNOWN_ENGINES)}."
            raise ConfigError(f"engines[{index}]", msg)
        if name not in AVAILABLE_ENGINES:
            msg = (
                f"the {name!r} engine is not available yet in this version of tamm; use "
                f"engines: {list(AVAILABLE_ENGINES)}."
            )
            raise ConfigError(f"engines[{index}]", msg)
    return tuple(dict.fromkeys(names))


def _binned(value: Any) -> BinnedConfig:
    key = "binned"
    entry = _mapping(value, key)
    _check_keys(entry, key, ("n_topics", "seed", *_TOPIC_OPTIONS))
    options: dict[str, Any] = {}
    for name, kind in _TOPIC_OPTIONS.items():
        if name in entry:
            where = f"{key}.{name}"
            options[name] = (
                _int(entry[name], where, 1) if kind == "int" else _float(entry[name], where, 0.0)
            )
            if kind == "float" and options[name] <= 0:
                raise ConfigError(where, f"expected a number > 0, received {entry[name]}.")
    return BinnedConfig(
        n_topics=_int(entry.get("n_topics", 3), f"{key}.n_topics", 1),
        seed=_int(entry.get("seed", 0), f"{key}.seed", 0),
        options=options,
    )


def _optional_size(value: Any, key: str) -> int | None:
    return None if value is None else _int(value, key, 1)


def _unbinned(value: Any, base_dir: Path) -> UnbinnedConfig:
    key = "unbinned"
    entry = _mapping(value, key)
    _check_keys(
        entry,
        key,
        (
            "model_dir",
            "seed",
            "training",
            "n_reference",
            "n_penalty",
            "ridge_strength",
            "penalty_strength",
        ),
    )
    training = dict(_mapping(entry.get("training", {}), f"{key}.training"))
    if training:
        from tamm.exceptions import InvalidModelError
        from tamm.ratios.ensemble import TrainingSettings

        try:
            TrainingSettings.from_dict(training)
        except (InvalidModelError, TypeError) as err:
            raise ConfigError(f"{key}.training", str(err)) from err
    model_dir = entry.get("model_dir")
    return UnbinnedConfig(
        model_dir=None if model_dir is None else _path(model_dir, f"{key}.model_dir", base_dir),
        seed=_int(entry.get("seed", 0), f"{key}.seed", 0),
        training=training,
        n_reference=_optional_size(entry.get("n_reference"), f"{key}.n_reference"),
        n_penalty=_optional_size(entry.get("n_penalty"), f"{key}.n_penalty"),
        ridge_strength=_float(entry.get("ridge_strength", 1.0), f"{key}.ridge_strength", 0.0),
        penalty_strength=_float(entry.get("penalty_strength", 1.0), f"{key}.penalty_strength", 0.0),
    )


def _simulation_choice(value: Any, key: str) -> int | str:
    if isinstance(value, str):
        return _str(value, key)
    return _int(value, key, 0)


def _baseline(value: Any) -> BaselineConfig:
    key = "baseline"
    entry = _mapping(value, key)
    _check_keys(entry, key, ("simulation", "prior"))
    choice = entry.get("simulation", 0)
    if isinstance(choice, Mapping):
        _check_keys(choice, f"{key}.simulation", PROCESSES)
        signal = _simulation_choice(choice.get("signal", 0), f"{key}.simulation.signal")
        background = _simulation_choice(choice.get("background", 0), f"{key}.simulation.background")
    else:
        signal = background = _simulation_choice(choice, f"{key}.simulation")
    return BaselineConfig(signal, background, _float(entry.get("prior", 1.0), f"{key}.prior", 0.0))


def _scan(value: Any) -> ScanConfig:
    entry = _mapping(value, "scan")
    _check_keys(entry, "scan", ("points", "width"))
    return ScanConfig(
        points=_int(entry.get("points", 41), "scan.points", 3),
        width=_float(entry.get("width", 4.0), "scan.width", 0.0),
    )


def _step_size(value: Any) -> int | str:
    entry = _mapping(value, "reader")
    _check_keys(entry, "reader", ("step_size",))
    step = entry.get("step_size", "50 MB")
    if isinstance(step, str):
        return _str(step, "reader.step_size")
    return _int(step, "reader.step_size", 1)


# ---------------------------------------------------------------------------------------------
# Entry points

_TOP_KEYS = (
    "observables",
    "region",
    "processes",
    "data",
    "pseudo_data",
    "engines",
    "binned",
    "unbinned",
    "baseline",
    "scan",
    "reader",
    "output_dir",
)


def parse_config(
    raw: Any, *, base_dir: str | Path = ".", path: str | Path | None = None
) -> AnalysisConfig:
    """Validate a configuration mapping (as loaded from YAML) and resolve its paths.

    Args:
        raw: The mapping.
        base_dir: Folder against which relative paths are resolved.
        path: The file the mapping came from, recorded in the result.

    Returns:
        The validated configuration.

    Raises:
        ConfigError: Naming the key path of the first invalid entry.

    Examples:
        >>> config = parse_config({
        ...     "observables": ["x"],
        ...     "region": {"x": {"range": [0, 1], "bins": 4}},
        ...     "processes": {p: {"simulations": [{"file": "s.root", "trees": "msd_*"}]}
        ...                   for p in ("signal", "background")},
        ...     "data": {"file": "data.root", "tree": "events"},
        ... }, base_dir="/analysis")
        >>> config.region.shape, str(config.data.file)
        ((4,), '/analysis/data.root')
        >>> parse_config({"observables": ["x"]})
        Traceback (most recent call last):
        ...
        tamm.exceptions.ConfigError: region: missing required key.
    """
    base = Path(base_dir).resolve()
    entries = _mapping(raw, "")
    _check_keys(entries, "", _TOP_KEYS, required=("observables", "region", "processes"))
    has_data, has_pseudo = "data" in entries, "pseudo_data" in entries
    if has_data == has_pseudo:
        msg = "give exactly one of data (observed events) and pseudo_data (drawn events)."
        raise ConfigError("data", msg)

    observables = _observables(entries)
    output_dir = _path(entries.get("output_dir", "tamm-output"), "output_dir", base)
    return AnalysisConfig(
        path=None if path is None else Path(path).resolve(),
        observables=observables,
        region=_region(entries["region"], observables),
        processes=_processes(entries["processes"], base),
        data=(
            _source(entries["data"], "data", base, kinds=("tree", "histogram"))
            if has_data
            else None
        ),
        pseudo_data=_pseudo_data(entries["pseudo_data"], base) if has_pseudo else None,
        engines=_engines(entries.get("engines", ["binned"])),
        binned=_binned(entries.get("binned", {})),
        unbinned=_unbinned(entries.get("unbinned", {}), base),
        baseline=_baseline(entries.get("baseline", {})),
        scan=_scan(entries.get("scan", {})),
        output_dir=output_dir,
        step_size=_step_size(entries.get("reader", {})),
    )


def load_config(path: str | Path) -> AnalysisConfig:
    """Read and validate a YAML analysis configuration file.

    Args:
        path: The YAML file. Relative paths inside it are resolved against its folder.

    Returns:
        The validated configuration.

    Raises:
        ConfigError: If the file is missing, unreadable or not valid YAML, or an entry is
            invalid (the message names its key path).
    """
    import yaml

    source = Path(path)
    try:
        text = source.read_text(encoding="utf-8")
    except FileNotFoundError as err:
        msg = f"configuration file {str(source)!r} not found; check the path."
        raise ConfigError("", msg) from err
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError("", f"could not read configuration file {str(source)!r}: {err}") from err
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        msg = f"configuration file {str(source)!r} is not valid YAML{where}: {err}"
        raise ConfigError("", msg) from err
    if raw is None:
        raise ConfigError("", f"configuration file {str(source)!r} is empty.")
    return parse_config(raw, base_dir=source.resolve().parent, path=source)
