"""Tests of the unbinned engine's ratio networks: training, calibration, baseline, persistence.

Unit tests train tiny networks (a few thousand events, one or two epochs), so the file runs in
well under a minute. Statistical accuracy checks against the Gaussian toy's exact densities are
marked slow.
"""

from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from scipy import stats

from tamm.exceptions import (
    InvalidModelError,
    InvalidRegionError,
    InvalidSimulationError,
    ModelFileError,
    TammWarning,
)
from tamm.ratios import (
    BaselineRatio,
    CalibratedEnsemble,
    RatioEnsemble,
    TrainingSettings,
    fit_calibration,
    load,
    train_ratios,
)
from tamm.ratios import calibration as calibration_module
from tamm.ratios import ensemble as ensemble_module
from tamm.samples import Region, Simulation, SimulationSet

TINY = TrainingSettings(n_members=2, hidden_units=(16, 16), max_epochs=2, batch_size=512)


@pytest.fixture(scope="module")
def toy_sets(gaussian_toy):
    indices = [3, 7]
    return [
        gaussian_toy.simulations("signal", indices, n_events=3000, seed=11),
        gaussian_toy.simulations("background", indices, n_events=3000, seed=12),
    ]


@pytest.fixture(scope="module")
def region(gaussian_toy):
    return gaussian_toy.region(bins=None)


@pytest.fixture(scope="module")
def calibrated(toy_sets, region):
    return train_ratios(toy_sets, region=region, settings=TINY, seed=5, progress=False)


@pytest.fixture(scope="module")
def events(gaussian_toy):
    return gaussian_toy.pseudo_data(40, 400, seed=9).events


@pytest.fixture(scope="module")
def saved(calibrated, tmp_path_factory):
    return calibrated.save(tmp_path_factory.mktemp("ratios") / "model")


def _copy_model(saved: Path, tmp_path: Path) -> Path:
    target = tmp_path / "copy"
    shutil.copytree(saved, target)
    return target


def _edit_manifest(directory: Path, edit) -> None:
    path = directory / "manifest.json"
    manifest = json.loads(path.read_text())
    edit(manifest)
    path.write_text(json.dumps(manifest))


# --- log ratios from logits -------------------------------------------------------------------


def _numpy_log_ratios(logits, log_priors, binary):
    """Apply the TensorFlow conversion member by member and return (M, n, n_outputs) float64."""
    return np.stack(
        [
            np.asarray(ensemble_module._log_ratios_from_logits(member, priors, binary=binary))
            for member, priors in zip(logits, log_priors, strict=True)
        ]
    )


@settings(max_examples=50, deadline=None)
@given(
    logits=hnp.arrays(
        np.float64,
        hnp.array_shapes(min_dims=3, max_dims=3, min_side=2, max_side=5),
        elements=st.floats(-50, 50),
    )
)
def test_log_ratios_average_to_one(logits):
    n_members, _, n_classes = logits.shape
    rng = np.random.default_rng(0)
    priors = rng.dirichlet(np.ones(n_classes), size=n_members)

    ratios = _numpy_log_ratios(logits, np.log(priors), binary=False)

    # The pool is the equal mixture of the classes, so the mean ratio over classes is 1.
    assert ratios.dtype == np.float64
    mean_ratio = np.mean(np.exp(ratios), axis=-1)
    np.testing.assert_allclose(mean_ratio, 1.0, rtol=1e-12)


def test_log_ratios_remove_class_priors():
    rng = np.random.default_rng(1)
    log_density = rng.normal(size=(1, 50, 4))
    priors = np.array([[0.1, 0.2, 0.3, 0.4]])
    common = rng.normal(size=(1, 50, 1))
    logits = log_density + np.log(priors)[:, None, :] + common

    ratios = _numpy_log_ratios(logits, np.log(priors), binary=False)

    reference = np.log(np.mean(np.exp(log_density), axis=-1, keepdims=True))
    np.testing.assert_allclose(ratios, log_density - reference, atol=1e-12)


def test_binary_log_ratio_removes_prior_odds():
    logits = np.array([[[0.5], [-1.0]]])
    log_priors = np.log(np.array([[0.25, 0.75]]))

    ratios = _numpy_log_ratios(logits, log_priors, binary=True)

    np.testing.assert_allclose(ratios[0, :, 0], [0.5 + math.log(3), -1.0 + math.log(3)])


# --- settings -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("n_members", 0),
        ("n_members", 1.5),
        ("batch_size", True),
        ("max_epochs", -1),
        ("patience", 0),
        ("hidden_units", (64, 0)),
        ("learning_rate", 0.0),
        ("learning_rate", math.nan),
        ("negative_slope", -0.1),
        ("validation_fraction", 1.0),
        ("calibration_fraction", 0.0),
        ("max_calibration_events", 0),
        ("standardize", "yes"),
    ],
)
def test_settings_reject_invalid_value(name, value):
    with pytest.raises(InvalidModelError, match=name):
        TrainingSettings(**{name: value})


def test_settings_reject_fractions_without_training_events():
    with pytest.raises(InvalidModelError, match="leave events"):
        TrainingSettings(validation_fraction=0.5, calibration_fraction=0.5)


def test_settings_dict_round_trip():
    original = TrainingSettings(n_members=3, hidden_units=(8, 4), max_calibration_events=None)

    restored = TrainingSettings.from_dict(json.loads(json.dumps(original.to_dict())))

    assert restored == original


def test_settings_reject_unknown_key():
    with pytest.raises(InvalidModelError, match="learning_rat"):
        TrainingSettings.from_dict({"learning_rat": 0.1})


# --- early stopping -------------------------------------------------------------------------------


def test_early_stopping_restores_a_copy():
    keras = ensemble_module._import_keras()
    model = ensemble_module._build_network(2, 3, TINY, seed=1, name="probe")
    stopper = ensemble_module._EarlyStopping(patience=5)
    snapshots = []
    for epoch, loss in enumerate([3.0, 1.0, 2.0, 5.0]):
        # Change every weight in place, as an optimiser step would.
        for variable in model.weights:
            variable.assign(variable + keras.ops.ones_like(variable) * (epoch + 1))
        snapshots.append([np.array(w) for w in model.get_weights()])
        stopper.update(epoch, loss, model)

    stopper.restore(model)

    assert stopper.best_epoch == 1
    for restored, best in zip(model.get_weights(), snapshots[1], strict=True):
        np.testing.assert_array_equal(restored, best)


def test_early_stopping_signals_after_patience():
    model = ensemble_module._build_network(2, 3, TINY, seed=1, name="probe")
    stopper = ensemble_module._EarlyStopping(patience=2)

    decisions = [stopper.update(epoch, loss, model) for epoch, loss in enumerate([1.0, 1.5, 1.2])]

    assert decisions == [False, False, True]


def test_early_stopping_raises_when_never_finite():
    model = ensemble_module._build_network(2, 3, TINY, seed=1, name="probe")
    stopper = ensemble_module._EarlyStopping(patience=2)
    stopper.update(0, math.nan, model)

    with pytest.raises(InvalidModelError, match="diverged"):
        stopper.restore(model)


def _scripted_training(monkeypatch, toy_sets, losses, settings):
    """Train with scripted validation losses and return the ensemble and per-epoch weights."""
    scripted = iter(losses)
    monkeypatch.setattr(ensemble_module, "_evaluate", lambda *_args: next(scripted))
    snapshots = []
    original_update = ensemble_module._EarlyStopping.update

    def recording_update(self, epoch, loss, model):
        snapshots.append([np.array(w) for w in model.get_weights()])
        return original_update(self, epoch, loss, model)

    monkeypatch.setattr(ensemble_module._EarlyStopping, "update", recording_update)
    ensemble = RatioEnsemble.train(toy_sets, settings=settings, seed=3, progress=False)
    return ensemble, snapshots


def test_training_restores_best_epoch(monkeypatch, toy_sets):
    settings = TrainingSettings(
        n_members=1, hidden_units=(8,), max_epochs=4, patience=10, batch_size=256
    )

    ensemble, snapshots = _scripted_training(monkeypatch, toy_sets, [0.9, 0.5, 0.7, 0.8], settings)

    record = ensemble.records[0]
    assert record.best_epoch == 1
    assert record.n_epochs == 4
    final = ensemble.members[0].get_weights()
    for restored, best in zip(final, snapshots[1], strict=True):
        np.testing.assert_array_equal(restored, best)
    differs_from_last = any(
        not np.array_equal(restored, last)
        for restored, last in zip(final, snapshots[-1], strict=True)
    )
    assert differs_from_last


def test_training_stops_after_patience(monkeypatch, toy_sets):
    settings = TrainingSettings(
        n_members=1, hidden_units=(8,), max_epochs=10, patience=2, batch_size=256
    )

    ensemble, _ = _scripted_training(monkeypatch, toy_sets, [0.5, 0.6, 0.7, 0.8], settings)

    assert ensemble.records[0].n_epochs == 3
    assert ensemble.records[0].best_epoch == 0


# --- ensemble ---------------------------------------------------------------------------------------


def test_ensemble_log_ratio_shape(calibrated, events):
    ratios = calibrated.ensemble.log_ratios(events)

    assert ratios.shape == (2, len(events), 4)
    assert ratios.dtype == np.float64


def test_ensemble_ratios_average_to_one(calibrated, events):
    ratios = calibrated.ensemble.log_ratios(events)

    np.testing.assert_allclose(np.mean(np.exp(ratios), axis=-1), 1.0, rtol=1e-10)


def test_ensemble_batches_agree(calibrated, events):
    whole = calibrated.ensemble.log_ratios(events)
    batched = calibrated.ensemble.log_ratios(events, batch_size=7)

    # TensorFlow's vectorised log-sum-exp may round the last bit differently per batch size.
    np.testing.assert_allclose(whole, batched, rtol=0, atol=1e-13)


def test_ensemble_accepts_empty_events(calibrated):
    assert calibrated.ensemble.log_ratios(np.empty((0, 2))).shape == (2, 0, 4)


def test_ensemble_records(calibrated):
    for index, record in enumerate(calibrated.ensemble.records):
        assert record.index == index
        assert 1 <= record.n_epochs <= TINY.max_epochs
        assert record.best_validation_loss == min(record.validation_loss)
        # Stratified bootstrap keeps the class sizes, which are equal here.
        np.testing.assert_allclose(record.log_priors, math.log(1 / 4), rtol=1e-12)


def test_split_keeps_calibration_events_apart(calibrated):
    ensemble = calibrated.ensemble
    for info in ensemble.classes:
        split = ensemble._splits[info.index]
        parts = [split.train, split.validation, split.calibration]
        assert sum(len(p) for p in parts) == info.n_events
        assert len(np.unique(np.concatenate(parts))) == info.n_events
        np.testing.assert_array_equal(ensemble.calibration_indices(info.index), split.calibration)
        assert info.n_calibration == round(0.1 * info.n_events)


def test_training_is_reproducible(toy_sets, events):
    settings = TrainingSettings(n_members=1, hidden_units=(8,), max_epochs=1, batch_size=512)

    first = RatioEnsemble.train(toy_sets, settings=settings, seed=17, progress=False)
    second = RatioEnsemble.train(toy_sets, settings=settings, seed=17, progress=False)
    other = RatioEnsemble.train(toy_sets, settings=settings, seed=18, progress=False)

    np.testing.assert_array_equal(first.log_ratios(events), second.log_ratios(events))
    assert not np.array_equal(first.log_ratios(events), other.log_ratios(events))


def test_unequal_class_sizes_use_priors(gaussian_toy):
    sizes = [1000, 3000]
    sims = [gaussian_toy.simulation("signal", i, n_events=n, seed=i) for i, n in enumerate(sizes)]
    settings = TrainingSettings(n_members=1, hidden_units=(8,), max_epochs=1, batch_size=256)

    ensemble = RatioEnsemble.train(
        SimulationSet(sims, process="signal"), settings=settings, seed=0, progress=False
    )

    n_train = np.array([info.n_train for info in ensemble.classes])
    np.testing.assert_allclose(ensemble.records[0].log_priors, np.log(n_train / n_train.sum()))


def test_weighted_simulations_set_priors(gaussian_toy):
    rng = np.random.default_rng(4)
    sims = [
        Simulation(
            gaussian_toy.simulation("signal", 0, n_events=2000, seed=1).events,
            weights=rng.uniform(0, 2, 2000),
        ),
        gaussian_toy.simulation("background", 0, n_events=2000, seed=2),
    ]
    settings = TrainingSettings(n_members=1, hidden_units=(8,), max_epochs=1, batch_size=256)

    ensemble = RatioEnsemble.train(
        SimulationSet(sims, process="mixed"), settings=settings, seed=0, progress=False
    )

    priors = np.exp(ensemble.records[0].log_priors)
    # Weights are scaled to a mean of 1 per simulation, so the priors stay near the event shares.
    np.testing.assert_allclose(priors.sum(), 1.0)
    np.testing.assert_allclose(priors, 0.5, atol=0.05)


# --- calibration kernel ---------------------------------------------------------------------------


def _kernel_inputs(seed=0, n=400, n_members=3):
    rng = np.random.default_rng(seed)
    positive = rng.normal(0.5, 1.0, size=(n, n_members))
    reference = rng.normal(0.0, 1.2, size=(2 * n, n_members))
    a = rng.uniform(0.5, 1.5, n)
    b = rng.uniform(0.5, 1.5, 2 * n)
    return positive, a / a.sum(), reference, b / b.sum()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_calibration_gradient_matches_differences(seed):
    positive, a, reference, b = _kernel_inputs(seed)
    params = np.random.default_rng(seed + 10).normal(size=positive.shape[1] + 1)

    _, gradient = calibration_module._calibration_loss(params, positive, a, reference, b)

    step = 1e-6
    numeric = np.empty_like(params)
    for i in range(len(params)):
        shift = np.zeros_like(params)
        shift[i] = step
        upper, _ = calibration_module._calibration_loss(params + shift, positive, a, reference, b)
        lower, _ = calibration_module._calibration_loss(params - shift, positive, a, reference, b)
        numeric[i] = (upper - lower) / (2 * step)
    np.testing.assert_allclose(gradient, numeric, rtol=1e-6, atol=1e-8)


def test_calibration_hessian_matches_differences():
    positive, a, reference, b = _kernel_inputs(3)
    params = np.array([0.2, -0.4, 0.7, 0.1])

    hessian = calibration_module._calibration_hessian(params, positive, a, reference, b)

    step = 1e-6
    numeric = np.empty_like(hessian)
    for i in range(len(params)):
        shift = np.zeros_like(params)
        shift[i] = step
        _, upper = calibration_module._calibration_loss(params + shift, positive, a, reference, b)
        _, lower = calibration_module._calibration_loss(params - shift, positive, a, reference, b)
        numeric[:, i] = (upper - lower) / (2 * step)
    np.testing.assert_allclose(hessian, numeric, rtol=1e-5, atol=1e-8)


def test_calibration_loss_matches_direct_formula():
    positive, a, reference, b = _kernel_inputs(4)
    params = np.array([0.3, 0.3, 0.4, -0.2])

    loss, _ = calibration_module._calibration_loss(params, positive, a, reference, b)

    def sigmoid(z):
        return 1 / (1 + np.exp(-z))

    direct = -a @ np.log(sigmoid(positive @ params[:-1] + params[-1])) - b @ np.log(
        1 - sigmoid(reference @ params[:-1] + params[-1])
    )
    assert loss == pytest.approx(direct, rel=1e-12)


def test_calibration_loss_finite_for_extreme_logits():
    positive = np.array([[-1000.0], [1000.0]])
    reference = np.array([[1000.0], [-1000.0]])
    half = np.array([0.5, 0.5])

    loss, gradient = calibration_module._calibration_loss(
        np.array([1.0, 0.0]), positive, half, reference, half
    )

    # Half the events sit at L = -1000 on the wrong side, each costing softplus(1000) = 1000.
    assert loss == pytest.approx(1000.0)
    assert np.all(np.isfinite(gradient))


@pytest.mark.parametrize("seed", [0, 1])
def test_calibration_recovers_gaussian_ratio(seed):
    rng = np.random.default_rng(seed)
    positive = rng.normal(1.0, 1.0, size=100_000)
    reference = rng.normal(0.0, 1.0, size=100_000)

    # Members 2x and x^2: the true log ratio x - 1/2 is 0.5 * (2x) + 0 * x^2 - 0.5.
    fit = fit_calibration(
        np.column_stack([2 * positive, positive**2]),
        np.column_stack([2 * reference, reference**2]),
    )

    # Standard errors with 1e5 events per side are about 0.005-0.01, so 0.05 is over 5 sigma.
    np.testing.assert_allclose(fit.weights, [0.5, 0.0], atol=0.05)
    assert fit.offset == pytest.approx(-0.5, abs=0.05)
    assert fit.converged
    assert fit.loss < fit.loss_initial


def test_calibration_weights_equal_repeated_events():
    positive, _, reference, _ = _kernel_inputs(5, n=300)
    counts = np.random.default_rng(6).integers(1, 4, size=len(positive))

    weighted = fit_calibration(positive, reference, weights_positive=counts)
    repeated = fit_calibration(np.repeat(positive, counts, axis=0), reference)

    np.testing.assert_allclose(weighted.weights, repeated.weights, atol=1e-5)
    assert weighted.offset == pytest.approx(repeated.offset, abs=1e-5)


def test_calibration_rejects_member_mismatch():
    with pytest.raises(InvalidModelError, match="members"):
        fit_calibration(np.zeros((5, 2)), np.zeros((5, 3)))


def test_calibration_rejects_nan_features():
    with pytest.raises(InvalidModelError, match="NaN"):
        fit_calibration(np.full((5, 2), np.nan), np.zeros((5, 2)))


# --- calibrated ensemble -------------------------------------------------------------------------


def test_calibrated_log_ratios_combine_members(calibrated, events):
    members = calibrated.ensemble.log_ratios(events)

    ratios = calibrated.log_ratios(events)

    expected = np.einsum("mnc,cm->nc", members, calibrated.weights) + calibrated.offsets
    assert ratios.shape == (len(events), 4)
    assert ratios.dtype == np.float64
    np.testing.assert_allclose(ratios, expected, rtol=1e-12, atol=1e-12)


def test_calibration_in_passes_matches_one_pass(calibrated, toy_sets):
    # One byte of budget forces a separate pass over the networks for every class.
    in_passes = CalibratedEnsemble.calibrate(
        calibrated.ensemble, toy_sets, progress=False, max_feature_bytes=1
    )

    np.testing.assert_array_equal(in_passes.weights, calibrated.weights)
    np.testing.assert_array_equal(in_passes.offsets, calibrated.offsets)


def test_calibration_rejects_invalid_budget(calibrated, toy_sets):
    with pytest.raises(InvalidModelError, match="max_feature_bytes"):
        CalibratedEnsemble.calibrate(calibrated.ensemble, toy_sets, max_feature_bytes=0)


def test_calibration_improves_held_out_loss(calibrated):
    for fit in calibrated.fits:
        assert fit.converged
        assert fit.loss <= fit.loss_initial


def test_acceptance_correction(calibrated, toy_sets, region, events):
    acceptances = np.array([sim.acceptance(region) for s in toy_sets for sim in s])

    shift = calibrated.log_ratios(events, region) - calibrated.log_ratios(events)

    np.testing.assert_allclose(calibrated.acceptances, acceptances)
    expected = np.log(acceptances.mean()) - np.log(acceptances)
    np.testing.assert_allclose(shift, np.broadcast_to(expected, shift.shape), atol=1e-12)


def test_other_region_is_rejected(calibrated, events):
    other = Region(["x1", "x2"], [(-1, 1), (-1, 1)])

    with pytest.raises(InvalidRegionError, match="with_region"):
        calibrated.log_ratios(events, other)


def test_with_region_recomputes_acceptances(calibrated, toy_sets, events):
    other = Region(["x1", "x2"], [(-1, 1), (-1, 1)])

    moved = calibrated.with_region(other, toy_sets)

    expected = [sim.acceptance(other) for s in toy_sets for sim in s]
    np.testing.assert_allclose(moved.acceptances, expected)
    assert moved.log_ratios(events, other).shape == (len(events), 4)


def test_region_with_other_observables_is_rejected(calibrated, toy_sets):
    other = Region(["y1", "y2"], [(-1, 1), (-1, 1)])

    with pytest.raises(InvalidRegionError, match="observables"):
        calibrated.with_region(other, toy_sets)


def test_class_metadata(calibrated):
    names = [(info.process, info.simulation) for info in calibrated.classes]

    assert names == [
        ("signal", "signal_003"),
        ("signal", "signal_007"),
        ("background", "background_003"),
        ("background", "background_007"),
    ]
    assert calibrated.processes == ("signal", "background")
    np.testing.assert_array_equal(calibrated.class_indices("background"), [2, 3])
    with pytest.raises(InvalidModelError, match="processes"):
        calibrated.class_indices("ttbar")


def test_describe_classes(calibrated):
    rows = json.loads(json.dumps(calibrated.describe_classes()))

    assert [row["process"] for row in rows] == ["signal", "signal", "background", "background"]
    assert [row["acceptance"] for row in rows] == calibrated.acceptances.tolist()
    assert rows[2]["calibration"]["weights"] == calibrated.weights[2].tolist()
    assert rows[2]["calibration"]["offset"] == calibrated.offsets[2]
    assert "fingerprint" not in rows[0]


def test_calibrate_rejects_other_simulations(calibrated, gaussian_toy):
    other = [
        gaussian_toy.simulations("signal", [3, 7], n_events=3000, seed=99),
        gaussian_toy.simulations("background", [3, 7], n_events=3000, seed=12),
    ]

    with pytest.raises(InvalidSimulationError, match="same simulations"):
        CalibratedEnsemble.calibrate(calibrated.ensemble, other, progress=False)


# --- input errors ----------------------------------------------------------------------------------


def test_single_simulation_is_rejected(gaussian_toy):
    single = gaussian_toy.simulations("signal", [0], n_events=500, seed=1)

    with pytest.raises(InvalidSimulationError, match="at least 2"):
        RatioEnsemble.train(single, settings=TINY, seed=0, progress=False)


def test_different_widths_are_rejected():
    rng = np.random.default_rng(0)
    sets = [
        SimulationSet([Simulation(rng.normal(size=(500, 2)))], process="signal"),
        SimulationSet([Simulation(rng.normal(size=(500, 3)))], process="background"),
    ]

    with pytest.raises(InvalidSimulationError, match="same number of observables"):
        RatioEnsemble.train(sets, settings=TINY, seed=0, progress=False)


def test_nan_events_are_rejected():
    events = np.zeros((10, 2))
    events[3, 1] = np.nan

    with pytest.raises(InvalidSimulationError, match="NaN"):
        Simulation(events)


def test_too_few_events_are_rejected(gaussian_toy):
    sets = [gaussian_toy.simulations(p, [0], n_events=5, seed=1) for p in ("signal", "background")]

    with pytest.raises(InvalidSimulationError, match="too few"):
        RatioEnsemble.train(sets, settings=TINY, seed=0, progress=False)


def test_duplicate_simulation_warns(gaussian_toy):
    sim = gaussian_toy.simulation("signal", 0, n_events=1000, seed=1)
    other = gaussian_toy.simulation("signal", 1, n_events=1000, seed=2)
    settings = TrainingSettings(n_members=1, hidden_units=(4,), max_epochs=1, batch_size=512)

    with pytest.warns(TammWarning, match="identical events"):
        RatioEnsemble.train(
            SimulationSet([sim, other, sim], process="signal"),
            settings=settings,
            seed=0,
            progress=False,
        )


def test_non_sets_are_rejected(gaussian_toy):
    sim = gaussian_toy.simulation("signal", 0, n_events=100, seed=1)

    with pytest.raises(InvalidSimulationError, match="SimulationSet"):
        RatioEnsemble.train([sim, sim], settings=TINY, seed=0, progress=False)


@pytest.mark.parametrize("seed", [-1, 1.5, True])
def test_invalid_seed_is_rejected(toy_sets, seed):
    with pytest.raises(InvalidModelError, match="seed"):
        RatioEnsemble.train(toy_sets, settings=TINY, seed=seed, progress=False)


def test_region_is_checked_before_training(toy_sets):
    wrong = Region(["x1"], [(-1, 1)])

    with pytest.raises(InvalidRegionError, match="1 observables"):
        train_ratios(toy_sets, region=wrong, settings=TINY, seed=0, progress=False)


@pytest.mark.parametrize("shape", [(5, 3), (5,), (2, 5, 2)])
def test_wrong_event_width_is_rejected(calibrated, shape):
    with pytest.raises(InvalidSimulationError, match="shape"):
        calibrated.log_ratios(np.zeros(shape))


def test_nan_in_evaluated_events_is_rejected(calibrated):
    events = np.zeros((4, 2))
    events[2, 0] = np.inf

    with pytest.raises(InvalidSimulationError, match="row 2"):
        calibrated.log_ratios(events)


def test_invalid_batch_size_is_rejected(calibrated, events):
    with pytest.raises(InvalidModelError, match="batch_size"):
        calibrated.log_ratios(events, batch_size=0)


def test_ensemble_needs_members():
    with pytest.raises(InvalidModelError, match="at least one trained member"):
        RatioEnsemble(
            members=[],
            records=[],
            classes=[],
            settings=TINY,
            seed=0,
            input_mean=[0.0, 0.0],
            input_scale=[1.0, 1.0],
            observables=None,
        )


# --- baseline -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def baseline(gaussian_toy, region):
    signal = gaussian_toy.simulation("signal", 2, n_events=3000, seed=21)
    background = gaussian_toy.simulation("background", 4, n_events=3000, seed=22)
    model = BaselineRatio.train(
        signal, background, region=region, settings=TINY, seed=1, progress=False
    )
    return model, signal, background


def test_baseline_log_ratio(baseline, region, events):
    model, signal, background = baseline

    uncut = model.log_ratio(events)
    cut = model.log_ratio(events, region)

    assert uncut.shape == (len(events),)
    assert uncut.dtype == np.float64
    e_s, e_b = signal.acceptance(region), background.acceptance(region)
    np.testing.assert_allclose(cut - uncut, math.log(e_b) - math.log(e_s), atol=1e-12)
    assert [info.process for info in model.classes] == ["signal", "background"]


def test_baseline_combines_members(baseline, events):
    model, _, _ = baseline

    members = model.ensemble.log_ratios(events)[:, :, 0]

    expected = model.fit.weights @ members + model.fit.offset
    np.testing.assert_allclose(model.log_ratio(events), expected, rtol=1e-12, atol=1e-12)


def test_baseline_round_trip(baseline, region, events, tmp_path):
    model, _, _ = baseline

    loaded = load(model.save(tmp_path / "baseline"))

    assert isinstance(loaded, BaselineRatio)
    np.testing.assert_array_equal(loaded.log_ratio(events, region), model.log_ratio(events, region))


def test_baseline_rejects_multiclass_ensemble(calibrated):
    with pytest.raises(InvalidModelError, match="binary"):
        BaselineRatio(calibrated.ensemble, calibrated.fits[0])


# --- persistence ----------------------------------------------------------------------------------


def test_round_trip_is_identical(calibrated, saved, region, events):
    loaded = CalibratedEnsemble.load(saved)

    np.testing.assert_array_equal(
        loaded.log_ratios(events, region), calibrated.log_ratios(events, region)
    )
    np.testing.assert_array_equal(
        loaded.ensemble.log_ratios(events), calibrated.ensemble.log_ratios(events)
    )
    assert loaded.classes == calibrated.classes
    assert loaded.ensemble.records == calibrated.ensemble.records
    assert loaded.region == calibrated.region
    assert loaded.ensemble.seed == calibrated.ensemble.seed


def test_manifest_lists_checksums(saved):
    manifest = json.loads((saved / "manifest.json").read_text())

    assert manifest["format_version"] == 1
    assert [m["index"] for m in manifest["members"]] == [0, 1]
    for member in manifest["members"]:
        assert member["file"] == f"member_{member['index']}.keras"
        assert re.fullmatch("[0-9a-f]{64}", member["sha256"])
    assert sorted(p.name for p in saved.iterdir()) == [
        "manifest.json",
        "member_0.keras",
        "member_1.keras",
    ]


def test_loaded_ensemble_cannot_recalibrate(saved):
    loaded = CalibratedEnsemble.load(saved)

    with pytest.raises(InvalidModelError, match="loaded from disk"):
        loaded.ensemble.calibration_indices(0)


def test_missing_member_file(saved, tmp_path):
    directory = _copy_model(saved, tmp_path)
    (directory / "member_1.keras").unlink()

    with pytest.raises(ModelFileError, match=r"member_1\.keras not found"):
        load(directory)


def test_changed_checksum(saved, tmp_path):
    directory = _copy_model(saved, tmp_path)
    with (directory / "member_0.keras").open("ab") as stream:
        stream.write(b"\0")

    with pytest.raises(ModelFileError, match=r"member_0\.keras has SHA-256"):
        load(directory)


def test_bad_json(saved, tmp_path):
    directory = _copy_model(saved, tmp_path)
    (directory / "manifest.json").write_text("{not json")

    with pytest.raises(ModelFileError, match="not valid JSON"):
        load(directory)


def test_unexpected_format_version(saved, tmp_path):
    directory = _copy_model(saved, tmp_path)
    _edit_manifest(directory, lambda m: m.update(format_version=99))

    with pytest.raises(ModelFileError, match="format version 99"):
        load(directory)


def test_missing_manifest(saved, tmp_path):
    directory = _copy_model(saved, tmp_path)
    (directory / "manifest.json").unlink()

    with pytest.raises(ModelFileError, match=r"manifest\.json not found"):
        load(directory)


def test_missing_directory(tmp_path):
    with pytest.raises(ModelFileError, match="does not exist"):
        load(tmp_path / "nowhere")


def test_repeated_member_index(saved, tmp_path):
    directory = _copy_model(saved, tmp_path)

    def repeat_first(manifest):
        manifest["members"][1]["index"] = 0

    _edit_manifest(directory, repeat_first)

    with pytest.raises(ModelFileError, match=r"indices \[0, 0\]"):
        load(directory)


def test_swapped_member_files(saved, tmp_path):
    directory = _copy_model(saved, tmp_path)
    first, second = directory / "member_0.keras", directory / "member_1.keras"
    first.rename(tmp_path / "swap")
    second.rename(first)
    (tmp_path / "swap").rename(second)

    def swap_checksums(manifest):
        members = manifest["members"]
        members[0]["sha256"], members[1]["sha256"] = members[1]["sha256"], members[0]["sha256"]

    _edit_manifest(directory, swap_checksums)

    with pytest.raises(
        ModelFileError, match=r"tamm_ratio_member_1.*expected 'tamm_ratio_member_0'"
    ):
        load(directory)


def test_unlisted_member_file(saved, tmp_path):
    directory = _copy_model(saved, tmp_path)
    shutil.copy(directory / "member_0.keras", directory / "member_2.keras")

    with pytest.raises(ModelFileError, match="does not list"):
        load(directory)


def test_manifest_with_fewer_classes(saved, tmp_path):
    directory = _copy_model(saved, tmp_path)
    _edit_manifest(directory, lambda m: m["classes"].pop())

    with pytest.raises(ModelFileError, match="4 outputs"):
        load(directory)


def test_manifest_missing_entry(saved, tmp_path):
    directory = _copy_model(saved, tmp_path)
    _edit_manifest(directory, lambda m: m.pop("input_scaling"))

    with pytest.raises(ModelFileError, match="input_scaling"):
        load(directory)


def test_wrong_kind_is_rejected(saved):
    with pytest.raises(ModelFileError, match=r"CalibratedEnsemble\.load"):
        BaselineRatio.load(saved)


def test_save_refuses_existing_directory(calibrated, saved):
    with pytest.raises(ModelFileError, match="already exists"):
        calibrated.save(saved)


def test_save_overwrites_model_directory(calibrated, saved, tmp_path, events):
    directory = _copy_model(saved, tmp_path)

    calibrated.save(directory, overwrite=True)

    np.testing.assert_array_equal(load(directory).log_ratios(events), calibrated.log_ratios(events))


def test_save_keeps_foreign_directory(calibrated, tmp_path):
    (tmp_path / "notes.txt").write_text("keep me")

    with pytest.raises(ModelFileError, match="not part of a tamm ratio model"):
        calibrated.save(tmp_path, overwrite=True)
    assert (tmp_path / "notes.txt").read_text() == "keep me"


def test_no_pickle_in_package():
    package = Path(__file__).resolve().parents[1] / "src" / "tamm"
    pattern = re.compile(
        r"^\s*(import|from)\s+(pickle|cPickle|cloudpickle|dill|joblib)\b|\bpickle\.(loads?|dumps?)\b|allow_pickle\s*=\s*True",
        re.MULTILINE,
    )

    offenders = [
        f"{path.relative_to(package)}: {match.group(0).strip()}"
        for path in sorted(package.rglob("*.py"))
        for match in pattern.finditer(path.read_text(encoding="utf-8"))
    ]

    assert offenders == []


# --- command line ----------------------------------------------------------------------------------


def _invoke(args):
    from click.testing import CliRunner

    from tamm.cli.train import train

    return CliRunner().invoke(train, args, catch_exceptions=False)


def test_cli_trains_toy(tmp_path, events):
    output = tmp_path / "model"

    result = _invoke(
        [
            "--toy",
            "--n-simulations",
            "2",
            "--n-events",
            "2000",
            "--n-members",
            "1",
            "--max-epochs",
            "1",
            "--hidden-units",
            "8",
            "--seed",
            "3",
            "--output-dir",
            str(output),
            "--quiet",
        ]
    )

    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["n_classes"] == 4
    assert summary["n_members"] == 1
    assert [c["process"] for c in summary["classes"]] == [
        "signal",
        "signal",
        "background",
        "background",
    ]
    assert all(0 < c["acceptance"] <= 1 for c in summary["classes"])
    assert load(output).log_ratios(events).shape == (len(events), 4)


def test_cli_reads_config(tmp_path, gaussian_toy):
    for process in ("signal", "background"):
        for index in (0, 1):
            sim = gaussian_toy.simulation(process, index, n_events=1500, seed=index)
            np.savez(tmp_path / f"{process}_{index}.npz", events=sim.events)
    config = tmp_path / "train.yaml"
    config.write_text(
        "seed: 4\n"
        "observables: [x1, x2]\n"
        "processes:\n"
        "  signal: [signal_0.npz, signal_1.npz]\n"
        "  background: [background_0.npz, {file: background_1.npz, name: bkg_one}]\n"
        "region: {observables: [x1, x2], limits: [[-2, 2], [-2, 2]]}\n"
        "training: {n_members: 1, max_epochs: 1, hidden_units: [8]}\n"
    )
    summary_file = tmp_path / "summary.json"

    result = _invoke(
        [
            "--config",
            str(config),
            "--output-dir",
            str(tmp_path / "model"),
            "--output-file",
            str(summary_file),
            "--quiet",
        ]
    )

    assert result.exit_code == 0, result.output
    summary = json.loads(summary_file.read_text())
    assert [c["simulation"] for c in summary["classes"]] == [
        "signal_0",
        "signal_1",
        "background_0",
        "bkg_one",
    ]
    assert summary["region"]["limits"] == [[-2.0, 2.0], [-2.0, 2.0]]
    assert summary["settings"]["hidden_units"] == [8]


def test_cli_needs_one_source(tmp_path):
    result = _invoke(["--output-dir", str(tmp_path / "model")])

    assert result.exit_code == 2
    assert "exactly one source" in result.output


def test_cli_reports_missing_file(tmp_path):
    result = _invoke(
        [
            "--simulation",
            f"signal={tmp_path / 'absent.npz'}",
            "--output-dir",
            str(tmp_path / "model"),
        ]
    )

    assert result.exit_code == 1
    assert "not found" in result.output


def test_cli_keeps_existing_output(tmp_path):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "manifest.json").write_text("{}")

    result = _invoke(["--toy", "--output-dir", str(tmp_path / "model")])

    assert result.exit_code == 2
    assert "--overwrite" in result.output


# --- accuracy on the Gaussian toy (slow) --------------------------------------------------------


def _true_log_ratios(toy, classes, events):
    """Exact log p_j/p_ref of the toy's simulation Gaussians, shape (n, n_classes)."""
    log_densities = np.column_stack(
        [
            stats.multivariate_normal(
                *toy.simulation_parameters(info.process, int(info.simulation[-3:]))
            ).logpdf(events)
            for info in classes
        ]
    )
    peak = log_densities.max(axis=1, keepdims=True)
    log_reference = peak + np.log(np.mean(np.exp(log_densities - peak), axis=1, keepdims=True))
    return log_densities - log_reference


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1])
def test_calibrated_ratios_match_toy_truth(gaussian_toy, region, seed):
    indices = gaussian_toy.choose_simulations(3, seed=seed)
    sets = [
        gaussian_toy.simulations("signal", indices, n_events=100_000, seed=seed + 100),
        gaussian_toy.simulations("background", indices, n_events=100_000, seed=seed + 200),
    ]
    settings = TrainingSettings(n_members=4, max_epochs=30, calibration_fraction=0.3)
    model = train_ratios(sets, settings=settings, seed=seed, progress=False)

    # Fresh events of every simulation (never trained on), inside the fiducial region.
    fresh = np.concatenate(
        [
            gaussian_toy.simulation(
                info.process,
                int(info.simulation[-3:]),
                n_events=10_000,
                seed=seed + 300 + info.index,
            ).events
            for info in model.classes
        ]
    )
    pool = fresh[region.contains(fresh)]
    truth = _true_log_ratios(gaussian_toy, model.classes, pool)
    before = model.ensemble.log_ratios(pool).mean(axis=0)
    after = model.log_ratios(pool)
    rms_before = float(np.sqrt(np.mean((before - truth) ** 2)))
    rms_after = float(np.sqrt(np.mean((after - truth) ** 2)))

    # benchmarks/bench_ratios.py measures an RMS of about 0.02 inside the region with 1e5
    # events per simulation, so 0.1 flags a broken training or calibration.
    assert rms_after < 0.1
    # Fitting M + 1 = 5 weights on 3e4 held-out events adds noise of about
    # sqrt(5 / 3e4) = 0.013 nats. Calibration may not cost more than three times that.
    assert rms_after < rms_before + 0.04
