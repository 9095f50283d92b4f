r"""Build, save and load pyhf workspaces for a signal fraction kappa.

This module sits between tamm's binned engine, which produces topic templates, and pyhf. It
writes the pyhf JSON specification of a two-process model, turns it into a
:class:`pyhf.Model` or :class:`pyhf.Workspace` with tamm's modifiers, and stores it as JSON.

Which function do I need?

- :func:`tamm_spec`: K topic templates per process, mixed by fitted weights (TAMM).
- :func:`baseline_spec`: one fixed template per process, as in a classic template fit.
- :func:`build_model` / :func:`build_workspace`: a specification to pyhf objects.
- :func:`model_and_data`: a workspace to the model and the data vector that pyhf fits.
- :func:`write_workspace`, :func:`read_workspace`, :func:`load_model`: JSON files.

The model of one channel with V bins is

.. math::

    \nu_b = \mathrm{norm} \cdot N \left[\kappa \sum_k \theta^s_k S_{kb}
        + (1 - \kappa) \sum_k \theta^b_k B_{kb}\right],

where N is the observed total, S and B are the signal and background templates normalised to
unit sum, and the weights :math:`\theta` lie on the simplex. Its parameters are, in pyhf's
order (by modifier type, then by sample name): ``norm`` (total rate, init 1, bounds [0, 10]),
``background_topics`` (Kb - 1 values), ``signal_topics`` (Ks - 1 values) and the POI
``kappa`` (bounds [0, 1]). A process with a single template has no topic parameters, and the
baseline model has only ``norm`` and ``kappa``.

pyhf's JSON schema lists only the HistFactory modifiers, so every object here is built with
``validate=False``. The checks in this module and in the modifier builders take the place of
schema validation.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pyhf

from tamm.exceptions import InvalidModelError, ModelFileError
from tamm.pyhf.modifiers import FRACTION, PARAMETRIZATIONS, TOPICMIX, modifier_set

__all__ = [
    "BACKGROUND_SAMPLE",
    "MEASUREMENT_NAME",
    "NORM_NAME",
    "SIGNAL_SAMPLE",
    "baseline_spec",
    "build_model",
    "build_workspace",
    "load_model",
    "model_and_data",
    "read_workspace",
    "tamm_spec",
    "write_workspace",
]


def __dir__() -> list[str]:
    return __all__


log = logging.getLogger(__name__)

SIGNAL_SAMPLE = "signal"
"""Name of the signal sample in the specifications built here."""

BACKGROUND_SAMPLE = "background"
"""Name of the background sample in the specifications built here."""

NORM_NAME = "norm"
"""Name of the normfactor that carries the total rate of both samples."""

MEASUREMENT_NAME = "tamm"
"""Name of the measurement written into the specifications built here."""

# A norm of 1 reproduces the observed total, so pyhf's default normfactor range [0, 10]
# (pyhf 0.7.6) leaves ample room.
_NORM_BOUNDS = (0.0, 10.0)


# ---------------------------------------------------------------------------------------------
# Input checks


def _as_observed(observed: npt.ArrayLike) -> np.ndarray:
    """Return observed counts as a float64 array of shape (V,), or raise InvalidModelError."""
    try:
        counts = np.asarray(observed, dtype=np.float64)
    except (TypeError, ValueError) as err:
        msg = (
            "observed must be a 1-D array of bin counts, but it could not be read as numbers "
            f"({err})."
        )
        raise InvalidModelError(msg) from err
    if counts.ndim != 1 or counts.size == 0:
        msg = (
            f"observed must be a 1-D array of bin counts with at least one bin, but received "
            f"shape {counts.shape}. Flatten the histogram contents before building the model."
        )
        raise InvalidModelError(msg)
    bad = np.flatnonzero(~np.isfinite(counts) | (counts < 0))
    if bad.size:
        msg = (
            f"observed has the invalid count {counts[bad[0]]} in bin {bad[0]}; counts must be "
            "finite and non-negative. Check the histogram filling."
        )
        raise InvalidModelError(msg)
    if counts.sum() <= 0:
        msg = (
            "observed has a total of zero events, so the model has no normalisation. Fit a "
            "region that contains events."
        )
        raise InvalidModelError(msg)
    return counts


def _as_templates(values: npt.ArrayLike, argument: str, n_bins: int) -> np.ndarray:
    """Return templates normalised to unit sum, shape (K, V), or raise InvalidModelError.

    A 1-D input is one template. ``argument`` names the input in error messages.
    """
    try:
        templates = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as err:
        msg = (
            f"{argument} must be an array of shape (K, {n_bins}), but it could not be read as "
            f"numbers ({err})."
        )
        raise InvalidModelError(msg) from err
    if templates.ndim == 1:
        templates = templates[np.newaxis, :]
    if templates.ndim != 2 or templates.shape[0] == 0 or templates.shape[1] != n_bins:
        msg = (
            f"{argument} has shape {np.shape(values)}, but observed has {n_bins} bins, so the "
            f"expected shape is (K, {n_bins}) with K >= 1. Histogram every template with the "
            "binning of the observed data."
        )
        raise InvalidModelError(msg)
    for topic, template in enumerate(templates):
        bad = np.flatnonzero(~np.isfinite(template) | (template < 0))
        if bad.size:
            msg = (
                f"{argument}[{topic}] has the invalid value {template[bad[0]]} in bin {bad[0]}; "
                "templates must be finite and non-negative. Clip negative weights or rebin."
            )
            raise InvalidModelError(msg)
        if template.sum() <= 0:
            msg = (
                f"{argument}[{topic}] sums to zero, so it cannot be normalised. Drop the empty "
                "template or widen the binning."
            )
            raise InvalidModelError(msg)
    normalised: np.ndarray = templates / templates.sum(axis=1, keepdims=True)
    return normalised


def _is_number_between(value: object, low: float, high: float) -> bool:
    """Return whether ``value`` is a real number (not a bool) in [low, high]."""
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        return False
    return bool(low <= value <= high)


def _check_options(channel: object, poi: object, kappa_init: object) -> None:
    if not isinstance(channel, str) or not channel:
        msg = f"channel must be a non-empty string, but received {channel!r}."
        raise InvalidModelError(msg)
    reserved = {NORM_NAME, f"{SIGNAL_SAMPLE}_topics", f"{BACKGROUND_SAMPLE}_topics"}
    if not isinstance(poi, str) or not poi or poi in reserved:
        msg = (
            f"poi must be a non-empty string other than {sorted(reserved)}, because those name "
            f"other parameters, but received {poi!r}."
        )
        raise InvalidModelError(msg)
    if not _is_number_between(kappa_init, 0.0, 1.0):
        msg = (
            f"kappa_init must be a number in [0, 1], but received {kappa_init!r}. Give a "
            "starting signal fraction such as 0.1."
        )
        raise InvalidModelError(msg)


# ---------------------------------------------------------------------------------------------
# Specifications


def _sample(
    name: str,
    nominal: np.ndarray,
    role: str,
    poi: str,
    topics: np.ndarray | None,
    parametrization: str,
) -> dict[str, Any]:
    modifiers: list[dict[str, Any]] = [
        {"name": poi, "type": FRACTION, "data": {"role": role}},
        {"name": NORM_NAME, "type": "normfactor", "data": None},
    ]
    if topics is not None:
        modifiers.append(
            {
                "name": f"{name}_topics",
                "type": TOPICMIX,
                "data": {"templates": topics.tolist(), "parametrization": parametrization},
            }
        )
    return {"name": name, "data": nominal.tolist(), "modifiers": modifiers}


def _workspace_spec(
    samples: list[dict[str, Any]], observed: np.ndarray, channel: str, poi: str, kappa_init: float
) -> dict[str, Any]:
    parameters = [
        {"name": poi, "inits": [float(kappa_init)], "bounds": [[0.0, 1.0]]},
        {"name": NORM_NAME, "inits": [1.0], "bounds": [list(_NORM_BOUNDS)]},
    ]
    return {
        "channels": [{"name": channel, "samples": samples}],
        "observations": [{"name": channel, "data": observed.tolist()}],
        "measurements": [
            {"name": MEASUREMENT_NAME, "config": {"poi": poi, "parameters": parameters}}
        ],
        "version": pyhf.schema.version,
    }


def tamm_spec(
    signal_topics: npt.ArrayLike,
    background_topics: npt.ArrayLike,
    observed: npt.ArrayLike,
    *,
    channel: str = "SR",
    poi: str = "kappa",
    kappa_init: float = 0.1,
    parametrization: str = "stickbreaking",
) -> dict[str, Any]:
    """Build the pyhf workspace specification of a topic-mixture (TAMM) fit of kappa.

    Each process gets a ``topicmix`` modifier over its topics, so its shape is fitted as a
    mixture. The ``fraction`` modifier splits the total into kappa and 1 - kappa, and the
    normfactor ``norm`` carries the total rate. The nominal of each sample is N times the mean of its
    normalised topics, with N the observed total, so ``norm = 1`` reproduces the observed total.

    Args:
        signal_topics: Signal templates, shape (Ks, V), or (V,) for one template. Any
            normalisation; each is scaled to unit sum.
        background_topics: Background templates, shape (Kb, V), or (V,).
        observed: Observed counts per bin, shape (V,). Non-integer counts (Asimov data) are
            allowed.
        channel: Name of the pyhf channel.
        poi: Name of the signal-fraction parameter.
        kappa_init: Starting value of kappa, in [0, 1].
        parametrization: Map from free parameters to topic weights, ``"stickbreaking"`` or
            ``"alr"`` (see :func:`tamm.pyhf.modifiers.topic_weights`).

    Returns:
        A pyhf workspace specification (``channels``, ``observations``, ``measurements``,
        ``version``) of plain Python lists and floats, ready for :func:`build_workspace`,
        :func:`build_model` or :func:`json.dumps`.

    Raises:
        InvalidModelError: If the bin counts differ, a template or count is negative or not
            finite, a template sums to zero, the observed total is zero, or an option is
            invalid. The message names the offending input and value.

    Examples:
        >>> spec = tamm_spec([[1, 2, 3], [3, 2, 1]], [[1, 1, 1], [2, 1, 1]], [10, 12, 9])
        >>> model = build_model(spec)
        >>> model.config.par_names
        ['norm', 'background_topics[0]', 'signal_topics[0]', 'kappa']
    """
    _check_options(channel, poi, kappa_init)
    if parametrization not in PARAMETRIZATIONS:
        msg = (
            f"parametrization must be one of {list(PARAMETRIZATIONS)}, but received "
            f"{parametrization!r}."
        )
        raise InvalidModelError(msg)
    counts = _as_observed(observed)
    signal = _as_templates(signal_topics, "signal_topics", counts.size)
    background = _as_templates(background_topics, "background_topics", counts.size)

    total = counts.sum()
    samples = [
        _sample(SIGNAL_SAMPLE, total * signal.mean(axis=0), "signal", poi, signal, parametrization),
        _sample(
            BACKGROUND_SAMPLE,
            total * background.mean(axis=0),
            "background",
            poi,
            background,
            parametrization,
        ),
    ]
    log.debug(
        "tamm_spec: %d signal and %d background topics over %d bins, %g observed events",
        signal.shape[0],
        background.shape[0],
        counts.size,
        total,
    )
    return _workspace_spec(samples, counts, channel, poi, kappa_init)


def baseline_spec(
    signal_template: npt.ArrayLike,
    background_template: npt.ArrayLike,
    observed: npt.ArrayLike,
    *,
    channel: str = "SR",
    poi: str = "kappa",
    kappa_init: float = 0.1,
) -> dict[str, Any]:
    """Build the specification of a classic template fit: one fixed shape per process.

    This is what an analysis does with a single simulation per process. The model equals
    :func:`tamm_spec` with one topic per process, so it has only the parameters ``norm`` and
    ``kappa``, and its bias shows how far that simulation is from the data.

    Args:
        signal_template: Signal histogram, shape (V,); any normalisation.
        background_template: Background histogram, shape (V,).
        observed: Observed counts per bin, shape (V,).
        channel: Name of the pyhf channel.
        poi: Name of the signal-fraction parameter.
        kappa_init: Starting value of kappa, in [0, 1].

    Returns:
        A pyhf workspace specification, as for :func:`tamm_spec`.

    Raises:
        InvalidModelError: For the same invalid inputs as :func:`tamm_spec`, or a template
            that is not 1-D.

    Examples:
        >>> spec = baseline_spec([1, 2, 3], [3, 2, 1], [10, 12, 9])
        >>> build_model(spec).config.par_names
        ['norm', 'kappa']
    """
    _check_options(channel, poi, kappa_init)
    counts = _as_observed(observed)
    for argument, template in (
        ("signal_template", signal_template),
        ("background_template", background_template),
    ):
        if np.ndim(template) != 1:
            msg = (
                f"{argument} must be one histogram of shape ({counts.size},), but received "
                f"shape {np.shape(template)}. Use tamm_spec for several templates per process."
            )
            raise InvalidModelError(msg)
    signal = _as_templates(signal_template, "signal_template", counts.size)[0]
    background = _as_templates(background_template, "background_template", counts.size)[0]

    total = counts.sum()
    samples = [
        _sample(SIGNAL_SAMPLE, total * signal, "signal", poi, None, PARAMETRIZATIONS[0]),
        _sample(
            BACKGROUND_SAMPLE, total * background, "background", poi, None, PARAMETRIZATIONS[0]
        ),
    ]
    return _workspace_spec(samples, counts, channel, poi, kappa_init)


# ---------------------------------------------------------------------------------------------
# pyhf objects

# pyhf raises these for specifications that its model builder cannot use.
_PYHF_MODEL_ERRORS = (
    pyhf.exceptions.InvalidModel,
    pyhf.exceptions.InvalidModifier,
    pyhf.exceptions.InvalidNameReuse,
    pyhf.exceptions.InvalidMeasurement,
    pyhf.exceptions.Unsupported,
)


def _unknown_modifier_types(spec: Mapping[str, Any]) -> list[str]:
    """Return 'type (modifier on sample in channel)' for each modifier pyhf cannot build."""
    return [
        f"{modifier.get('type')!r} (modifier {modifier.get('name')!r} on sample "
        f"{sample.get('name')!r} in channel {channel.get('name')!r})"
        for channel in spec.get("channels", [])
        for sample in channel.get("samples", [])
        for modifier in sample.get("modifiers", [])
        if modifier.get("type") not in modifier_set
    ]


def _check_structure(spec: Any, required: tuple[str, ...]) -> None:
    if not isinstance(spec, Mapping):
        msg = f"A pyhf specification must be a dict, but received {type(spec).__name__}."
        raise InvalidModelError(msg)
    missing = [key for key in required if not spec.get(key)]
    if missing:
        msg = (
            f"The specification is missing the non-empty entries {missing}; its keys are "
            f"{sorted(spec)}. Build it with tamm_spec or baseline_spec, or add the entries."
        )
        raise InvalidModelError(msg)
    unknown = _unknown_modifier_types(spec)
    if unknown:
        msg = (
            f"Unknown modifier types: {', '.join(unknown)}. Supported types are "
            f"{sorted(modifier_set)}."
        )
        raise InvalidModelError(msg)


def _fraction_names(spec: Mapping[str, Any]) -> list[str]:
    names = {
        modifier["name"]
        for channel in spec["channels"]
        for sample in channel.get("samples", [])
        for modifier in sample.get("modifiers", [])
        if modifier.get("type") == FRACTION
    }
    return sorted(names)


def build_model(spec: Mapping[str, Any]) -> pyhf.Model:
    """Build a :class:`pyhf.Model` with tamm's modifiers from a specification.

    Args:
        spec: A workspace specification (with ``measurements``, as returned by
            :func:`tamm_spec`) or a model specification (``channels`` and optional
            ``parameters``). The first measurement of a workspace specification sets the POI
            and the parameter settings. In a model specification, the single ``fraction``
            modifier name is the POI.

    Returns:
        The model, built with :data:`~tamm.pyhf.modifiers.modifier_set` and ``validate=False``.

    Raises:
        InvalidModelError: If the specification is incomplete, uses an unknown modifier type,
            has no unique POI, or pyhf or a modifier rejects it.
    """
    _check_structure(spec, ("channels",))
    if "measurements" in spec:
        return model_and_data(build_workspace(spec))[0]

    poi_names = _fraction_names(spec)
    if len(poi_names) != 1:
        msg = (
            f"A model specification without measurements needs exactly one fraction modifier "
            f"name to use as POI, but it has {poi_names}. Add a measurement with a 'poi', or "
            "use a single fraction name."
        )
        raise InvalidModelError(msg)
    try:
        return pyhf.Model(
            dict(spec), modifier_set=dict(modifier_set), poi_name=poi_names[0], validate=False
        )
    except _PYHF_MODEL_ERRORS as err:
        msg = f"pyhf could not build the model: {err}"
        raise InvalidModelError(msg) from err


def build_workspace(spec: Mapping[str, Any]) -> pyhf.Workspace:
    """Build a :class:`pyhf.Workspace` from a workspace specification.

    For a model built elsewhere, use ``pyhf.Workspace.build(model, data, validate=False)``.

    Args:
        spec: A workspace specification with ``channels``, ``observations`` and
            ``measurements``, as returned by :func:`tamm_spec` or :func:`baseline_spec`.

    Returns:
        The workspace, created with ``validate=False``.

    Raises:
        InvalidModelError: If an entry is missing, a modifier type is unknown, or an
            observation does not match its channel.
    """
    _check_structure(spec, ("channels", "observations", "measurements"))
    try:
        n_bins = {
            channel["name"]: len(channel["samples"][0]["data"]) for channel in spec["channels"]
        }
        observations = {
            observation["name"]: observation["data"] for observation in spec["observations"]
        }
    except (KeyError, IndexError, TypeError) as err:
        msg = (
            f"The specification has a channel or observation without a name, samples or data "
            f"({err!r}). Every channel needs 'name' and 'samples' with 'data', and every "
            "observation 'name' and 'data'."
        )
        raise InvalidModelError(msg) from err
    for channel, bins in n_bins.items():
        if channel not in observations:
            msg = (
                f"Channel {channel!r} has no observation; the observations are for "
                f"{sorted(observations)}. Add {{'name': {channel!r}, 'data': [...]}}."
            )
            raise InvalidModelError(msg)
        if len(observations[channel]) != bins:
            msg = (
                f"The observation of channel {channel!r} has {len(observations[channel])} bins, "
                f"but its samples have {bins}. Use the same binning for data and templates."
            )
            raise InvalidModelError(msg)
    try:
        return pyhf.Workspace(dict(spec), validate=False)
    except (KeyError, TypeError, *_PYHF_MODEL_ERRORS) as err:
        msg = f"pyhf could not build the workspace: {err!r}"
        raise InvalidModelError(msg) from err


def model_and_data(workspace: pyhf.Workspace) -> tuple[pyhf.Model, list[float]]:
    """Build the model of a workspace's first measurement and the data vector to fit.

    Args:
        workspace: A workspace, for example from :func:`build_workspace` or
            :func:`read_workspace`.

    Returns:
        ``(model, data)``: the model with tamm's modifiers, and the observed counts in the
        model's channel order followed by the auxiliary data, shape (n_bins + n_aux,).

    Raises:
        InvalidModelError: If pyhf or a modifier rejects the specification.
    """
    try:
        model = workspace.model(modifier_set=dict(modifier_set), validate=False)
        data = [float(value) for value in workspace.data(model)]
    except (KeyError, TypeError, *_PYHF_MODEL_ERRORS) as err:
        msg = f"pyhf could not build the model of the workspace: {err!r}"
        raise InvalidModelError(msg) from err
    return model, data


# ---------------------------------------------------------------------------------------------
# JSON files


def write_workspace(path: str | Path, workspace: pyhf.Workspace | Mapping[str, Any]) -> Path:
    """Write a workspace, or a workspace specification, to a JSON file.

    The floats are written with Python's shortest round-trip representation, so
    :func:`load_model` rebuilds a model with bit-identical templates.

    Args:
        path: Destination file; an existing file is replaced.
        workspace: A :class:`pyhf.Workspace` or a specification dict.

    Returns:
        The path written.

    Raises:
        InvalidModelError: If the workspace contains values that JSON cannot hold (NaN,
            infinity, or objects other than numbers, strings, lists and dicts).
        ModelFileError: If the file cannot be written.
    """
    destination = Path(path)
    try:
        text = json.dumps(dict(workspace), indent=1, sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as err:
        msg = (
            f"The workspace cannot be written as JSON ({err}). Convert arrays to lists and "
            "remove NaN or infinite values."
        )
        raise InvalidModelError(msg) from err
    try:
        destination.write_text(text + "\n", encoding="utf-8")
    except OSError as err:
        msg = (
            f"Could not write the workspace to {destination}: {err.strerror or err}. Check "
            "that the folder exists and is writable."
        )
        raise ModelFileError(msg) from err
    log.info("wrote pyhf workspace to %s (%d bytes)", destination, len(text) + 1)
    return destination


def read_workspace(path: str | Path) -> pyhf.Workspace:
    """Read a workspace JSON file written by :func:`write_workspace` or pyhf.

    Args:
        path: The JSON file.

    Returns:
        The workspace, created with ``validate=False``.

    Raises:
        ModelFileError: If the file is missing or unreadable, is not valid JSON, lacks
            workspace entries, or uses modifier types that neither pyhf nor tamm define.
    """
    source = Path(path)
    try:
        text = source.read_text(encoding="utf-8")
    except FileNotFoundError as err:
        msg = (
            f"Workspace file {source} not found. Check the path, or create the file with "
            "tamm.pyhf.write_workspace."
        )
        raise ModelFileError(msg) from err
    except (OSError, UnicodeDecodeError) as err:
        msg = (
            f"Could not read the workspace file {source}: {err}. Check its permissions and "
            "encoding."
        )
        raise ModelFileError(msg) from err
    try:
        spec = json.loads(text)
    except json.JSONDecodeError as err:
        msg = (
            f"Workspace file {source} is not valid JSON: {err.msg} at line {err.lineno}, "
            f"column {err.colno}. The file may be truncated or edited; write it again with "
            "tamm.pyhf.write_workspace."
        )
        raise ModelFileError(msg) from err
    try:
        return build_workspace(spec)
    except InvalidModelError as err:
        msg = (
            f"Workspace file {source} is not a usable workspace: {err} If it was written by "
            "another tool, check that it is a pyhf workspace with HistFactory or tamm modifiers."
        )
        raise ModelFileError(msg) from err


def load_model(path: str | Path) -> tuple[pyhf.Model, list[float]]:
    """Read a workspace JSON file and build its model and data vector.

    Args:
        path: The JSON file.

    Returns:
        ``(model, data)`` as for :func:`model_and_data`.

    Raises:
        ModelFileError: For the reasons listed in :func:`read_workspace`, or if the stored
            specification is rejected when the model is built (for example altered
            templates).

    Examples:
        >>> import tempfile
        >>> spec = baseline_spec([1, 2, 3], [3, 2, 1], [10, 12, 9])
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     path = write_workspace(f"{folder}/fit.json", build_workspace(spec))
        ...     model, data = load_model(path)
        >>> model.config.poi_name, data
        ('kappa', [10.0, 12.0, 9.0])
    """
    workspace = read_workspace(path)
    try:
        return model_and_data(workspace)
    except InvalidModelError as err:
        msg = f"Workspace file {path} does not describe a valid model: {err}"
        raise ModelFileError(msg) from err
