r"""pyhf modifiers for topic mixtures and signal fractions.

This module is the bottom layer of tamm's pyhf adapter: it defines two pyhf modifier types, and
:mod:`tamm.pyhf.workspace` builds models that use them.

``topicmix`` (an additive modifier) replaces the shape of a sample by a mixture of K templates,

.. math::

    \nu_{cb} = N_c \sum_{k=1}^{K} \theta_k T_{kcb}, \qquad \sum_k \theta_k = 1,

where :math:`T_{kc}` is template k in channel c normalised to unit sum and :math:`N_c` is the
sample's nominal total in channel c. The weights :math:`\theta` live on the simplex and are
mapped from K - 1 free parameters (see :func:`topic_weights`). With K = 1 the modifier has no
parameters and sets the sample to :math:`N_c T_{1c}`. Modifier data::

    {"templates": [[...], ...],             # K lists of the channel's n_bins values
     "parametrization": "stickbreaking"}    # optional; or "alr"

``fraction`` (a multiplicative modifier) scales a sample by the signal fraction kappa
(``{"role": "signal"}``) or by 1 - kappa (``{"role": "background"}``). Its single parameter
is bounded to [0, 1] and starts at 0.1.

pyhf 0.7.6 has no registry for custom modifiers, so pass :data:`modifier_set` (the HistFactory
modifiers plus these two) to :class:`pyhf.Model` and switch off schema validation, because the
pyhf JSON schema lists only the HistFactory types::

    model = pyhf.Model(spec, modifier_set=modifier_set, poi_name="kappa", validate=False)

Both modifiers use only :data:`pyhf.tensorlib` operations and rebuild their tensors when the
backend changes, so they work on every pyhf backend. Batched models (``batch_size``) are not
supported.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import numpy as np
import pyhf

from tamm.exceptions import InvalidModelError

__all__ = [
    "FRACTION",
    "FRACTION_ROLES",
    "PARAMETRIZATIONS",
    "TOPICMIX",
    "FractionApplier",
    "FractionBuilder",
    "TopicMixApplier",
    "TopicMixBuilder",
    "modifier_set",
    "topic_weights",
]


def __dir__() -> list[str]:
    return __all__


log = logging.getLogger(__name__)

TOPICMIX = "topicmix"
"""Type name of the topic-mixture modifier in a pyhf specification."""

FRACTION = "fraction"
"""Type name of the signal-fraction modifier in a pyhf specification."""

PARAMETRIZATIONS = ("stickbreaking", "alr")
"""Supported maps from free parameters to topic weights; the first one is the default."""

FRACTION_ROLES = ("signal", "background")
"""Accepted values of ``role`` in the data of a ``fraction`` modifier."""

# Default range of the additive log-ratio parameters. exp(10) / exp(-10) spans about 2e8, so a
# weight can shrink to about 5e-9 of the largest one, which is zero for any binned fit.
_ALR_BOUND = 10.0

_KAPPA_INIT = 0.1


# ---------------------------------------------------------------------------------------------
# Topic weights on the simplex


def _stick_breaking_inits(n_topics: int) -> tuple[float, ...]:
    """Return the stick-breaking fractions v_j = 1 / (K - j) that give uniform weights."""
    return tuple(1.0 / (n_topics - j) for j in range(n_topics - 1))


def _topic_weights_tensor(
    tensorlib: Any,
    values: Any,
    parametrization: str,
    lower_mask: Any = None,
) -> Any:
    """Map K - 1 parameters to K topic weights with the active tensor backend.

    Args:
        tensorlib: A pyhf tensor backend.
        values: Tensor of shape (K - 1,) with the free parameters.
        parametrization: ``"stickbreaking"`` or ``"alr"``.
        lower_mask: Boolean tensor of shape (K, K - 1), true where column j < row k. Only the
            stick-breaking map uses it; callers that evaluate it often precompute it.

    Returns:
        Tensor of shape (K,) with non-negative weights that sum to one.
    """
    n_free = tensorlib.shape(values)[0]
    if parametrization == "alr":
        exponentials = tensorlib.exp(tensorlib.concatenate([values, tensorlib.zeros((1,))]))
        return exponentials / tensorlib.sum(exponentials)

    # Stick breaking: theta_k = v_k * prod_{j<k} (1 - v_j), and the last weight takes the rest.
    # The running product is a row-wise product over a lower-triangular matrix, which avoids a
    # Python loop and stays exact when some v_j equals 1.
    if lower_mask is None:
        lower_mask = tensorlib.astensor(np.tril(np.ones((n_free + 1, n_free)), k=-1), dtype="bool")
    complements = tensorlib.tile(tensorlib.reshape(1.0 - values, (1, n_free)), (n_free + 1, 1))
    ones = tensorlib.ones((n_free + 1, n_free))
    remaining = tensorlib.product(tensorlib.where(lower_mask, complements, ones), axis=1)
    fractions = tensorlib.concatenate([values, tensorlib.ones((1,))])
    return fractions * remaining


def topic_weights(
    values: Sequence[float] | np.ndarray, *, parametrization: str = "stickbreaking"
) -> np.ndarray:
    """Compute the topic weights theta from the free parameters of a ``topicmix`` modifier.

    Stick breaking (the default) maps v in [0, 1]^(K-1) to
    ``theta_1 = v_1``, ``theta_k = v_k * prod_{j<k} (1 - v_j)``,
    ``theta_K = prod_{j<K} (1 - v_j)``. It is a bijection from the unit cube onto the simplex,
    and v_j = 1 / (K - j) gives uniform weights. The additive log-ratio map (``"alr"``) sets
    ``theta = softmax([z_1, ..., z_{K-1}, 0])``; it is smooth but cannot reach a weight of zero.

    Args:
        values: The K - 1 fitted parameters of the modifier, shape (K - 1,). An empty sequence
            gives the single weight of a one-template modifier.
        parametrization: ``"stickbreaking"`` or ``"alr"``.

    Returns:
        Array of shape (K,) with the weights; they sum to one.

    Raises:
        InvalidModelError: If the parametrization is unknown or ``values`` is not 1-D.

    Examples:
        >>> topic_weights([1 / 3, 1 / 2])  # uniform weights for K = 3
        array([0.33333333, 0.33333333, 0.33333333])
        >>> topic_weights([0.0], parametrization="alr")  # K = 2
        array([0.5, 0.5])
    """
    _check_parametrization(parametrization, where="topic_weights")
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1:
        msg = (
            f"topic_weights expects a 1-D sequence of K - 1 parameters, but received an array of "
            f"shape {array.shape}. Pass the values of one topicmix modifier."
        )
        raise InvalidModelError(msg)
    if array.size == 0:
        return np.ones(1)
    weights = _topic_weights_tensor(pyhf.tensor.numpy_backend(), array, parametrization)
    return np.asarray(weights, dtype=np.float64)


def _check_parametrization(parametrization: object, *, where: str) -> None:
    if parametrization not in PARAMETRIZATIONS:
        msg = (
            f"{where}: received parametrization {parametrization!r}, expected one of "
            f"{list(PARAMETRIZATIONS)}. Set 'parametrization' to one of these or leave it out "
            "for stick breaking."
        )
        raise InvalidModelError(msg)


# ---------------------------------------------------------------------------------------------
# topicmix


@dataclass(frozen=True)
class _TopicMixEntry:
    """Data that the builder collected for one topicmix modifier name."""

    n_topics: int
    parametrization: str
    # sample name -> channel name -> (unit-sum templates (K, n_bins_c), nominal (n_bins_c,))
    per_sample: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]]


def _validated_templates(
    modifier: Mapping[str, Any], channel: str, sample: str, n_bins: int
) -> tuple[np.ndarray, str]:
    """Return the unit-sum templates (K, n_bins) and the parametrization of one modifier entry."""
    where = (
        f"topicmix modifier {modifier.get('name')!r} on sample {sample!r} in channel {channel!r}"
    )
    data = modifier.get("data")
    if not isinstance(data, Mapping) or "templates" not in data:
        msg = (
            f"{where}: received data {data!r}, expected a dict with a 'templates' entry "
            "(K lists of bin contents). Set the modifier data to {'templates': [[...], ...]}."
        )
        raise InvalidModelError(msg)
    parametrization = data.get("parametrization", PARAMETRIZATIONS[0])
    _check_parametrization(parametrization, where=where)

    try:
        templates = np.asarray(data["templates"], dtype=np.float64)
    except (TypeError, ValueError) as err:
        msg = (
            f"{where}: the templates are not a rectangular array of numbers ({err}). "
            f"Give K lists of {n_bins} bin contents each."
        )
        raise InvalidModelError(msg) from err
    if templates.ndim != 2 or templates.shape[0] < 1 or templates.shape[1] != n_bins:
        msg = (
            f"{where}: received templates of shape {templates.shape}, expected (K, {n_bins}) "
            f"with K >= 1 because the channel has {n_bins} bins. Give one list of {n_bins} "
            "bin contents per topic."
        )
        raise InvalidModelError(msg)
    if not np.all(np.isfinite(templates)):
        bad = np.argwhere(~np.isfinite(templates))[0]
        msg = (
            f"{where}: template {bad[0]} has the non-finite value {templates[tuple(bad)]} in bin "
            f"{bad[1]}. Remove NaN or infinite bin contents before building the model."
        )
        raise InvalidModelError(msg)
    if np.any(templates < 0):
        bad = np.argwhere(templates < 0)[0]
        msg = (
            f"{where}: template {bad[0]} has the negative value {templates[tuple(bad)]} in bin "
            f"{bad[1]}. Templates are densities and must be non-negative; clip or rebin them."
        )
        raise InvalidModelError(msg)
    totals = templates.sum(axis=1)
    if np.any(totals <= 0):
        empty = int(np.flatnonzero(totals <= 0)[0])
        msg = (
            f"{where}: template {empty} sums to zero, so it cannot be normalised. Drop the empty "
            "template or fill it."
        )
        raise InvalidModelError(msg)
    return templates / totals[:, np.newaxis], str(parametrization)


class TopicMixBuilder:
    """Collect the data of every ``topicmix`` modifier while pyhf walks the specification.

    pyhf calls :meth:`append` once for every (channel, sample, modifier name) combination and
    then :meth:`finalize`. A name may appear on several samples and channels: every occurrence
    shares the same weights, so it must have the same number of templates and parametrization.
    """

    is_shared = True

    def __init__(self, config: Any) -> None:
        self.config = config
        self.required_parsets: dict[str, list[dict[str, Any]]] = {}
        self._entries: dict[str, _TopicMixEntry] = {}

    def append(
        self,
        key: str,
        channel: str,
        sample: str,
        thismod: Mapping[str, Any] | None,
        defined_samp: Mapping[str, Any] | None,
    ) -> None:
        """Record one (channel, sample) occurrence; ``thismod`` is None where it is absent."""
        if thismod is None or defined_samp is None:
            return
        n_bins = self.config.channel_nbins[channel]
        templates, parametrization = _validated_templates(thismod, channel, sample, n_bins)
        n_topics = templates.shape[0]
        name = thismod["name"]

        entry = self._entries.get(key)
        if entry is None:
            entry = _TopicMixEntry(n_topics, parametrization, {})
            self._entries[key] = entry
            self._register_parameters(name, n_topics, parametrization)
        elif (entry.n_topics, entry.parametrization) != (n_topics, parametrization):
            msg = (
                f"topicmix modifier {name!r} on sample {sample!r} in channel {channel!r} has "
                f"{n_topics} templates with {parametrization!r}, but an earlier occurrence has "
                f"{entry.n_topics} with {entry.parametrization!r}. Occurrences of one name share "
                "their weights; give them the same K and parametrization or use distinct names."
            )
            raise InvalidModelError(msg)

        nominal = np.asarray(defined_samp["data"], dtype=np.float64)
        entry.per_sample.setdefault(sample, {})[channel] = (templates, nominal)

    def _register_parameters(self, name: str, n_topics: int, parametrization: str) -> None:
        if n_topics == 1:
            # NB: a single template has no free weight, so the modifier registers no parameter.
            return
        n_free = n_topics - 1
        if parametrization == "alr":
            inits: tuple[float, ...] = (0.0,) * n_free
            bounds = ((-_ALR_BOUND, _ALR_BOUND),) * n_free
        else:
            inits = _stick_breaking_inits(n_topics)
            bounds = ((0.0, 1.0),) * n_free
        self.required_parsets[name] = [
            {
                "paramset_type": "unconstrained",
                "n_parameters": n_free,
                "is_scalar": False,
                "inits": inits,
                "bounds": bounds,
                "fixed": False,
            }
        ]

    def finalize(self) -> dict[str, _TopicMixEntry]:
        """Return the collected data, keyed by ``"topicmix/<name>"``."""
        return self._entries


@dataclass
class _TopicMixComponent:
    """Dense arrays of one topicmix modifier over the model's samples and bins."""

    parameter_slice: slice | None
    parametrization: str
    scaled_templates: np.ndarray  # (K, n_samples, n_bins): N_c * T_kc where applied, else 0
    nominal: np.ndarray  # (n_samples, n_bins): the nominal rate where applied, else 0


class TopicMixApplier:
    """Compute the additive change that turns each sample into its topic mixture.

    ``apply(pars)`` returns a tensor of shape (n_modifiers, n_samples, 1, n_bins) holding
    ``N_c * sum_k theta_k T_kc - nominal`` where a sample carries the modifier and 0 elsewhere.
    """

    name = TOPICMIX
    op_code = "addition"

    def __init__(
        self,
        modifiers: Sequence[tuple[str, str]],
        pdfconfig: Any,
        builder_data: Mapping[str, _TopicMixEntry],
        batch_size: int | None = None,
    ) -> None:
        if modifiers and batch_size is not None:
            msg = (
                f"topicmix does not support batched models, but batch_size={batch_size} was "
                "requested. Build the model with batch_size=None."
            )
            raise InvalidModelError(msg)
        samples = list(pdfconfig.samples)
        n_bins = pdfconfig.nmaindata
        self._components: list[_TopicMixComponent] = []
        for name, _ in modifiers:
            entry = builder_data[f"{TOPICMIX}/{name}"]
            scaled = np.zeros((entry.n_topics, len(samples), n_bins))
            nominal = np.zeros((len(samples), n_bins))
            for sample_index, sample in enumerate(samples):
                for channel, (templates, sample_nominal) in entry.per_sample.get(
                    sample, {}
                ).items():
                    bins = pdfconfig.channel_slices[channel]
                    scaled[:, sample_index, bins] = sample_nominal.sum() * templates
                    nominal[sample_index, bins] = sample_nominal
            parameter_slice = pdfconfig.par_slice(name) if entry.n_topics > 1 else None
            self._components.append(
                _TopicMixComponent(parameter_slice, entry.parametrization, scaled, nominal)
            )
        self._precompute()
        pyhf.events.subscribe("tensorlib_changed")(self._precompute)

    def _precompute(self) -> None:
        tensorlib, _ = pyhf.get_backend()
        self._tensors = []
        for component in self._components:
            n_topics = component.scaled_templates.shape[0]
            lower_mask = tensorlib.astensor(
                np.tril(np.ones((n_topics, n_topics - 1)), k=-1), dtype="bool"
            )
            fixed_delta = None
            if component.parameter_slice is None:
                fixed_delta = tensorlib.astensor(component.scaled_templates[0] - component.nominal)
            self._tensors.append(
                (
                    tensorlib.astensor(component.scaled_templates),
                    tensorlib.astensor(component.nominal),
                    lower_mask,
                    fixed_delta,
                )
            )

    def apply(self, pars: Any) -> Any:
        """Return the additive changes, shape (n_modifiers, n_samples, 1, n_bins), or None."""
        if not self._components:
            return None
        tensorlib, _ = pyhf.get_backend()
        deltas = []
        for component, (scaled, nominal, lower_mask, fixed_delta) in zip(
            self._components, self._tensors, strict=True
        ):
            if fixed_delta is not None:
                deltas.append(fixed_delta)
                continue
            weights = _topic_weights_tensor(
                tensorlib, pars[component.parameter_slice], component.parametrization, lower_mask
            )
            deltas.append(tensorlib.einsum("k,ksb->sb", weights, scaled) - nominal)
        stacked = tensorlib.stack(deltas)
        n_modifiers, n_samples, n_bins = tensorlib.shape(stacked)
        return tensorlib.reshape(stacked, (n_modifiers, n_samples, 1, n_bins))


# ---------------------------------------------------------------------------------------------
# fraction


class FractionBuilder:
    """Collect the role (signal or background) of every sample that carries a ``fraction``."""

    is_shared = True

    def __init__(self, config: Any) -> None:
        self.config = config
        self.required_parsets: dict[str, list[dict[str, Any]]] = {}
        # "fraction/<name>" -> sample -> channel -> role
        self._roles: dict[str, dict[str, dict[str, str]]] = {}

    def append(
        self,
        key: str,
        channel: str,
        sample: str,
        thismod: Mapping[str, Any] | None,
        defined_samp: Mapping[str, Any] | None,
    ) -> None:
        """Record one (channel, sample) occurrence; ``thismod`` is None where it is absent."""
        self._roles.setdefault(key, {})
        if thismod is None or defined_samp is None:
            return
        data = thismod.get("data")
        role = data.get("role") if isinstance(data, Mapping) else None
        if role not in FRACTION_ROLES:
            msg = (
                f"fraction modifier {thismod.get('name')!r} on sample {sample!r} in channel "
                f"{channel!r}: received data {data!r}, expected {{'role': 'signal'}} or "
                "{'role': 'background'}. Set the role of the sample."
            )
            raise InvalidModelError(msg)
        self._roles[key].setdefault(sample, {})[channel] = role
        self.required_parsets.setdefault(
            thismod["name"],
            [
                {
                    "paramset_type": "unconstrained",
                    "n_parameters": 1,
                    "is_scalar": True,
                    "inits": (_KAPPA_INIT,),
                    "bounds": ((0.0, 1.0),),
                    "fixed": False,
                }
            ],
        )

    def finalize(self) -> dict[str, dict[str, dict[str, str]]]:
        """Return the roles, keyed by ``"fraction/<name>"``, then sample, then channel."""
        return self._roles


class FractionApplier:
    """Compute the factors kappa (signal) and 1 - kappa (background) for each sample.

    The factor is written as ``offset + slope * kappa`` with (offset, slope) = (0, 1) for
    signal, (1, -1) for background and (1, 0) where the sample does not carry the modifier, so
    both factors are exact in floating point.
    """

    name = FRACTION
    op_code = "multiplication"

    def __init__(
        self,
        modifiers: Sequence[tuple[str, str]],
        pdfconfig: Any,
        builder_data: Mapping[str, Mapping[str, Mapping[str, str]]],
        batch_size: int | None = None,
    ) -> None:
        if modifiers and batch_size is not None:
            msg = (
                f"fraction does not support batched models, but batch_size={batch_size} was "
                "requested. Build the model with batch_size=None."
            )
            raise InvalidModelError(msg)
        samples = list(pdfconfig.samples)
        n_bins = pdfconfig.nmaindata
        self._indices = [pdfconfig.par_slice(name).start for name, _ in modifiers]
        self._offsets = np.ones((len(modifiers), len(samples), n_bins))
        self._slopes = np.zeros((len(modifiers), len(samples), n_bins))
        for modifier_index, (name, _) in enumerate(modifiers):
            roles = builder_data[f"{FRACTION}/{name}"]
            for sample_index, sample in enumerate(samples):
                for channel, role in roles.get(sample, {}).items():
                    bins = pdfconfig.channel_slices[channel]
                    is_signal = role == "signal"
                    self._offsets[modifier_index, sample_index, bins] = 0.0 if is_signal else 1.0
                    self._slopes[modifier_index, sample_index, bins] = 1.0 if is_signal else -1.0
        self._precompute()
        pyhf.events.subscribe("tensorlib_changed")(self._precompute)

    def _precompute(self) -> None:
        if not self._indices:
            return
        tensorlib, _ = pyhf.get_backend()
        shape = self._offsets.shape
        self._offsets_tensor = tensorlib.astensor(
            np.reshape(self._offsets, (shape[0], shape[1], 1, shape[2]))
        )
        self._slopes_tensor = tensorlib.astensor(
            np.reshape(self._slopes, (shape[0], shape[1], 1, shape[2]))
        )
        self._indices_tensor = tensorlib.astensor(self._indices, dtype="int")

    def apply(self, pars: Any) -> Any:
        """Return the factors, shape (n_modifiers, n_samples, 1, n_bins), or None."""
        if not self._indices:
            return None
        tensorlib, _ = pyhf.get_backend()
        kappas = tensorlib.gather(pars, self._indices_tensor)
        return self._offsets_tensor + tensorlib.einsum("msab,m->msab", self._slopes_tensor, kappas)


modifier_set: Mapping[str, tuple[type, type]] = MappingProxyType(
    {
        **pyhf.modifiers.histfactory_set,
        TOPICMIX: (TopicMixBuilder, TopicMixApplier),
        FRACTION: (FractionBuilder, FractionApplier),
    }
)
"""The HistFactory modifiers plus ``topicmix`` and ``fraction``, for ``pyhf.Model``.

A read-only mapping. To add more custom modifiers, merge it into a new dict:
``{**modifier_set, "mytype": (builder, applier)}``.
"""
