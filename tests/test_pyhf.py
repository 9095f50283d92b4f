"""Tests of tamm.pyhf: the topicmix and fraction modifiers, workspaces, JSON files and fits."""

from __future__ import annotations

import json
import math

import numpy as np
import pyhf
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tamm.pyhf
from tamm.exceptions import ConvergenceWarning, InvalidModelError, ModelFileError
from tamm.pyhf import (
    baseline_spec,
    build_model,
    build_workspace,
    fit_kappa,
    hypotest_kappa,
    initial_parameters,
    load_model,
    model_and_data,
    modifier_set,
    read_workspace,
    tamm_spec,
    topic_weights,
    use_numpy_backend,
    write_workspace,
)
from tamm.results import KappaFit

N_BINS = 40
CENTERS = (np.arange(N_BINS) + 0.5) / N_BINS


def gaussian_shape(mean: float, width: float) -> np.ndarray:
    """Return a smooth histogram over N_BINS bins on [0, 1], normalised to unit sum."""
    shape = np.exp(-0.5 * ((CENTERS - mean) / width) ** 2)
    return shape / shape.sum()


def exponential_shape(slope: float) -> np.ndarray:
    """Return exp(-slope * x) over N_BINS bins on [0, 1], normalised to unit sum."""
    shape = np.exp(-slope * CENTERS)
    return shape / shape.sum()


SIGNAL = gaussian_shape(0.5, 0.08)
BACKGROUND_FALLING = exponential_shape(3.0)
BACKGROUND_RISING = exponential_shape(-2.0)


# Reference maps from free parameters to topic weights, written independently of the modifier
# code: a loop for stick breaking and a direct softmax for ALR.
def reference_stick_breaking(values: np.ndarray) -> np.ndarray:
    weights = []
    remaining = 1.0
    for value in values:
        weights.append(remaining * value)
        remaining *= 1.0 - value
    weights.append(remaining)
    return np.array(weights)


def reference_alr(values: np.ndarray) -> np.ndarray:
    exponentials = np.exp(np.append(values, 0.0))
    return exponentials / exponentials.sum()


REFERENCE_WEIGHTS = {"stickbreaking": reference_stick_breaking, "alr": reference_alr}


def random_topics(rng: np.random.Generator, n_topics: int, n_bins: int) -> np.ndarray:
    topics = rng.gamma(2.0, size=(n_topics, n_bins))
    return topics / topics.sum(axis=1, keepdims=True)


def random_point(model: pyhf.Model, rng: np.random.Generator) -> np.ndarray:
    """Return a random parameter point, 5 % of each range away from the bounds."""
    bounds = np.asarray(model.config.suggested_bounds())
    low = bounds[:, 0] + 0.05 * (bounds[:, 1] - bounds[:, 0])
    high = bounds[:, 1] - 0.05 * (bounds[:, 1] - bounds[:, 0])
    point = rng.uniform(low, high)
    if "norm" in model.config.par_map:
        point[model.config.par_slice("norm")] = rng.uniform(0.5, 2.0)
    return point


# ---------------------------------------------------------------------------------------------
# Modifiers


def test_pyhf_name_is_the_real_package():
    assert tamm.pyhf.modifiers.pyhf is pyhf
    assert hasattr(tamm.pyhf.modifiers.pyhf, "Model")


def test_modifier_set_extends_histfactory():
    assert set(pyhf.modifiers.histfactory_set) < set(modifier_set)
    assert {"topicmix", "fraction"} <= set(modifier_set)
    with pytest.raises(TypeError):
        modifier_set["extra"] = modifier_set["topicmix"]  # type: ignore[index]


@pytest.mark.parametrize("parametrization", ["stickbreaking", "alr"])
def test_expected_data_matches_formula(parametrization):
    rng = np.random.default_rng(11)
    signal, background = random_topics(rng, 3, 12), random_topics(rng, 4, 12)
    observed = rng.poisson(80, size=12).astype(float)
    model = build_model(tamm_spec(signal, background, observed, parametrization=parametrization))
    to_weights = REFERENCE_WEIGHTS[parametrization]
    total = observed.sum()

    for _ in range(5):
        point = random_point(model, rng)
        norm = point[model.config.par_slice("norm")][0]
        kappa = point[model.config.poi_index]
        theta_signal = to_weights(point[model.config.par_slice("signal_topics")])
        theta_background = to_weights(point[model.config.par_slice("background_topics")])
        expected = (
            norm
            * total
            * (kappa * theta_signal @ signal + (1 - kappa) * theta_background @ background)
        )

        np.testing.assert_allclose(model.expected_actualdata(point), expected, rtol=1e-12)


def test_parameter_names_and_order():
    rng = np.random.default_rng(3)
    spec = tamm_spec(random_topics(rng, 3, 8), random_topics(rng, 2, 8), np.full(8, 10.0))
    model = build_model(spec)

    assert model.config.par_order == ["norm", "background_topics", "signal_topics", "kappa"]
    assert model.config.par_names == [
        "norm",
        "background_topics[0]",
        "signal_topics[0]",
        "signal_topics[1]",
        "kappa",
    ]
    assert model.config.poi_name == "kappa"


def test_inits_give_uniform_weights():
    rng = np.random.default_rng(5)
    signal, background = random_topics(rng, 5, 10), random_topics(rng, 2, 10)
    observed = np.full(10, 20.0)
    model = build_model(tamm_spec(signal, background, observed, kappa_init=0.3))
    init = np.asarray(model.config.suggested_init())

    np.testing.assert_allclose(
        topic_weights(init[model.config.par_slice("signal_topics")]), np.full(5, 0.2)
    )
    assert init[model.config.poi_index] == 0.3
    nominal = observed.sum() * (0.3 * signal.mean(axis=0) + 0.7 * background.mean(axis=0))
    np.testing.assert_allclose(model.expected_actualdata(init), nominal, rtol=1e-12)


@settings(max_examples=50, deadline=None)
@given(
    st.lists(st.floats(0.0, 1.0), min_size=1, max_size=12),
    st.sampled_from(["stickbreaking", "alr"]),
)
def test_topic_weights_lie_on_simplex(values, parametrization):
    if parametrization == "alr":
        values = [20.0 * value - 10.0 for value in values]
    weights = topic_weights(values, parametrization=parametrization)

    assert weights.shape == (len(values) + 1,)
    assert np.all(weights >= 0)
    assert math.isclose(weights.sum(), 1.0, rel_tol=1e-12)
    np.testing.assert_allclose(
        weights, REFERENCE_WEIGHTS[parametrization](np.array(values)), atol=1e-15
    )


def test_single_topic_has_no_parameters():
    rng = np.random.default_rng(8)
    signal, background = random_topics(rng, 1, 9), random_topics(rng, 3, 9)
    observed = rng.poisson(30, size=9).astype(float)
    model = build_model(tamm_spec(signal, background, observed))

    assert model.config.par_order == ["norm", "background_topics", "kappa"]
    point = random_point(model, rng)
    kappa = point[model.config.poi_index]
    by_sample = model.main_model.expected_data(point, return_by_sample=True)
    signal_index = model.config.samples.index("signal")
    norm = point[model.config.par_slice("norm")][0]
    np.testing.assert_allclose(
        by_sample[signal_index], norm * kappa * observed.sum() * signal[0], rtol=1e-12
    )


def test_shared_topicmix_across_channels():
    # One topicmix name on the background of two channels: one set of weights, with the
    # templates and nominal total of each channel.
    rng = np.random.default_rng(21)
    templates = {"A": random_topics(rng, 3, 5), "B": random_topics(rng, 3, 7)}
    totals = {"A": 100.0, "B": 40.0}
    channels = []
    for name in ("A", "B"):
        n_bins = templates[name].shape[1]
        channels.append(
            {
                "name": name,
                "samples": [
                    {
                        "name": "signal",
                        "data": [totals[name] / n_bins] * n_bins,
                        "modifiers": [
                            {"name": "kappa", "type": "fraction", "data": {"role": "signal"}}
                        ],
                    },
                    {
                        "name": "background",
                        "data": (totals[name] * templates[name].mean(axis=0)).tolist(),
                        "modifiers": [
                            {"name": "kappa", "type": "fraction", "data": {"role": "background"}},
                            {
                                "name": "mix",
                                "type": "topicmix",
                                "data": {"templates": templates[name].tolist()},
                            },
                        ],
                    },
                ],
            }
        )
    model = build_model({"channels": channels})

    point = random_point(model, rng)
    kappa = point[model.config.poi_index]
    theta = reference_stick_breaking(point[model.config.par_slice("mix")])
    expected = np.concatenate(
        [
            totals[name]
            * (kappa / templates[name].shape[1] + (1 - kappa) * theta @ templates[name])
            for name in ("A", "B")
        ]
    )
    assert model.config.par_order == ["mix", "kappa"]
    np.testing.assert_allclose(model.expected_actualdata(point), expected, rtol=1e-12)


def test_model_survives_pickle():
    # Worker processes receive models by pickle; the modifiers must rebuild their tensors.
    import pickle

    rng = np.random.default_rng(6)
    model = build_model(
        tamm_spec(random_topics(rng, 3, 6), random_topics(rng, 2, 6), np.full(6, 9.0))
    )
    point = random_point(model, rng)

    copy = pickle.loads(pickle.dumps(model))

    np.testing.assert_array_equal(copy.expected_actualdata(point), model.expected_actualdata(point))


def test_tensorflow_backend_matches_numpy():
    pytest.importorskip("tensorflow")
    rng = np.random.default_rng(4)
    model = build_model(
        tamm_spec(random_topics(rng, 3, 6), random_topics(rng, 2, 6), np.full(6, 9.0))
    )
    point = random_point(model, rng)
    pyhf.set_backend("numpy")
    on_numpy = model.expected_actualdata(point)

    pyhf.set_backend("tensorflow", precision="64b")
    on_tensorflow = pyhf.tensorlib.to_numpy(
        model.expected_actualdata(pyhf.tensorlib.astensor(point))
    )

    np.testing.assert_allclose(on_tensorflow, on_numpy, rtol=1e-12)


# ---------------------------------------------------------------------------------------------
# Invalid inputs


GOOD_TOPICS = np.array([[1.0, 2.0, 3.0], [3.0, 2.0, 1.0]])
GOOD_OBSERVED = np.array([5.0, 6.0, 7.0])


@pytest.mark.parametrize(
    ("signal", "background", "observed", "options", "message"),
    [
        (np.ones((2, 4)), GOOD_TOPICS, GOOD_OBSERVED, {}, r"signal_topics has shape \(2, 4\)"),
        (GOOD_TOPICS, np.ones((2, 2)), GOOD_OBSERVED, {}, r"background_topics has shape \(2, 2\)"),
        (
            [[1.0, -0.5, 1.0]],
            GOOD_TOPICS,
            GOOD_OBSERVED,
            {},
            r"signal_topics\[0\] has the invalid value -0.5 in bin 1",
        ),
        (
            GOOD_TOPICS,
            [[1.0, 1.0, 1.0], [1.0, np.nan, 1.0]],
            GOOD_OBSERVED,
            {},
            r"background_topics\[1\] has the invalid value nan",
        ),
        (
            [[1.0, 1.0, 1.0], [0.0, 0.0, 0.0]],
            GOOD_TOPICS,
            GOOD_OBSERVED,
            {},
            r"signal_topics\[1\] sums to zero",
        ),
        (GOOD_TOPICS, GOOD_TOPICS, [5.0, -1.0, 7.0], {}, r"invalid count -1.0 in bin 1"),
        (GOOD_TOPICS, GOOD_TOPICS, [5.0, np.inf, 7.0], {}, r"invalid count inf in bin 1"),
        (GOOD_TOPICS, GOOD_TOPICS, [0.0, 0.0, 0.0], {}, r"total of zero events"),
        (GOOD_TOPICS, GOOD_TOPICS, GOOD_OBSERVED, {"kappa_init": 1.5}, r"received 1.5"),
        (GOOD_TOPICS, GOOD_TOPICS, GOOD_OBSERVED, {"parametrization": "softmax"}, r"'softmax'"),
        (GOOD_TOPICS, GOOD_TOPICS, GOOD_OBSERVED, {"poi": "norm"}, r"received 'norm'"),
    ],
)
def test_tamm_spec_rejects_invalid_input(signal, background, observed, options, message):
    with pytest.raises(InvalidModelError, match=message):
        tamm_spec(signal, background, observed, **options)


def test_baseline_spec_rejects_several_templates():
    with pytest.raises(
        InvalidModelError, match=r"signal_template must be one histogram of shape \(3,\)"
    ):
        baseline_spec(GOOD_TOPICS, GOOD_TOPICS[0], GOOD_OBSERVED)


def test_invalid_errors_are_value_errors():
    with pytest.raises(ValueError, match="sums to zero"):
        baseline_spec([0.0, 0.0, 0.0], [1.0, 1.0, 1.0], GOOD_OBSERVED)


def edit_first_modifier(spec: dict, sample_index: int, modifier_type: str, data: object) -> dict:
    for modifier in spec["channels"][0]["samples"][sample_index]["modifiers"]:
        if modifier["type"] == modifier_type:
            modifier["data"] = data
    return spec


@pytest.mark.parametrize(
    ("sample_index", "modifier_type", "data", "message"),
    [
        (
            0,
            "topicmix",
            {"templates": [[1.0, 2.0]]},
            r"received templates of shape \(1, 2\), expected \(K, 3\)",
        ),
        (0, "topicmix", {"templates": [[1.0, 2.0, 3.0]], "parametrization": "probit"}, r"'probit'"),
        (1, "topicmix", {"templates": [[1.0, -2.0, 3.0]]}, r"negative value -2.0 in bin 1"),
        (1, "topicmix", [[1.0, 2.0, 3.0]], r"expected a dict with a 'templates' entry"),
        (1, "fraction", {"role": "sig"}, r"received data \{'role': 'sig'\}"),
    ],
)
def test_modifier_rejects_invalid_data(sample_index, modifier_type, data, message):
    spec = edit_first_modifier(
        tamm_spec(GOOD_TOPICS, GOOD_TOPICS, GOOD_OBSERVED), sample_index, modifier_type, data
    )

    with pytest.raises(InvalidModelError, match=message):
        build_model(spec)


def test_build_workspace_requires_observations():
    spec = tamm_spec(GOOD_TOPICS, GOOD_TOPICS, GOOD_OBSERVED)
    del spec["observations"]

    with pytest.raises(
        InvalidModelError, match=r"missing the non-empty entries \['observations'\]"
    ):
        build_workspace(spec)


def test_build_workspace_checks_observation_length():
    spec = tamm_spec(GOOD_TOPICS, GOOD_TOPICS, GOOD_OBSERVED)
    spec["observations"][0]["data"] = [1.0, 2.0]

    with pytest.raises(InvalidModelError, match="has 2 bins, but its samples have 3"):
        build_workspace(spec)


def test_model_spec_without_measurement_takes_fraction_as_poi():
    spec = tamm_spec(GOOD_TOPICS, GOOD_TOPICS, GOOD_OBSERVED, poi="signal_fraction")
    model = build_model({"channels": spec["channels"]})

    assert model.config.poi_name == "signal_fraction"


# ---------------------------------------------------------------------------------------------
# JSON files


@pytest.mark.parametrize("builder", ["tamm", "baseline"])
def test_json_round_trip_is_exact(tmp_path, builder):
    rng = np.random.default_rng(17)
    signal, background = random_topics(rng, 4, 15), random_topics(rng, 3, 15)
    observed = rng.poisson(40, size=15).astype(float)
    if builder == "tamm":
        spec = tamm_spec(signal, background, observed, parametrization="alr")
    else:
        spec = baseline_spec(signal[0], background[0], observed)
    model, data = model_and_data(build_workspace(spec))

    path = write_workspace(tmp_path / "workspace.json", build_workspace(spec))
    reloaded, reloaded_data = load_model(path)

    assert reloaded_data == data
    assert reloaded.config.par_names == model.config.par_names
    assert reloaded.config.poi_name == "kappa"
    assert reloaded.config.suggested_bounds() == model.config.suggested_bounds()
    for _ in range(5):
        point = random_point(model, rng)
        np.testing.assert_allclose(
            reloaded.expected_actualdata(point),
            model.expected_actualdata(point),
            rtol=1e-12,
            atol=0,
        )


def test_pyhf_built_workspace_round_trip(tmp_path):
    rng = np.random.default_rng(2)
    spec = tamm_spec(random_topics(rng, 3, 6), random_topics(rng, 3, 6), np.full(6, 12.0))
    model, data = model_and_data(build_workspace(spec))
    workspace = pyhf.Workspace.build(model, data, validate=False)

    reloaded, reloaded_data = load_model(write_workspace(tmp_path / "built.json", workspace))

    point = random_point(model, rng)
    assert reloaded_data == data
    np.testing.assert_allclose(
        reloaded.expected_actualdata(point), model.expected_actualdata(point), rtol=1e-12
    )


def test_read_missing_file(tmp_path):
    path = tmp_path / "absent.json"

    with pytest.raises(ModelFileError, match=r"absent\.json not found.*write_workspace"):
        read_workspace(path)


def test_read_invalid_json(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('{"channels": [', encoding="utf-8")

    with pytest.raises(ModelFileError, match=r"broken\.json is not valid JSON.*line 1"):
        load_model(path)


def test_read_unknown_modifier_type(tmp_path):
    spec = tamm_spec(GOOD_TOPICS, GOOD_TOPICS, GOOD_OBSERVED)
    spec["channels"][0]["samples"][0]["modifiers"][0]["type"] = "fracshun"
    path = tmp_path / "unknown.json"
    path.write_text(json.dumps(spec), encoding="utf-8")

    with pytest.raises(ModelFileError, match=r"unknown\.json.*Unknown modifier types: 'fracshun'"):
        read_workspace(path)


def test_load_altered_templates(tmp_path):
    spec = tamm_spec(GOOD_TOPICS, GOOD_TOPICS, GOOD_OBSERVED)
    path = write_workspace(tmp_path / "altered.json", spec)
    stored = json.loads(path.read_text(encoding="utf-8"))
    for modifier in stored["channels"][0]["samples"][1]["modifiers"]:
        if modifier["type"] == "topicmix":
            modifier["data"]["templates"][0].append(1.0)
    path.write_text(json.dumps(stored), encoding="utf-8")

    with pytest.raises(
        ModelFileError,
        match=r"altered\.json does not describe a valid model: topicmix modifier "
        r"'background_topics'.*not a rectangular array",
    ):
        load_model(path)


def test_write_into_missing_folder(tmp_path):
    target = tmp_path / "no" / "such" / "folder" / "fit.json"

    with pytest.raises(ModelFileError, match=r"Could not write the workspace to .*fit\.json"):
        write_workspace(target, tamm_spec(GOOD_TOPICS, GOOD_TOPICS, GOOD_OBSERVED))


def test_write_rejects_nan(tmp_path):
    spec = tamm_spec(GOOD_TOPICS, GOOD_TOPICS, GOOD_OBSERVED)
    spec["observations"][0]["data"][0] = math.nan

    with pytest.raises(InvalidModelError, match="NaN or infinite"):
        write_workspace(tmp_path / "nan.json", spec)


# ---------------------------------------------------------------------------------------------
# Fits


def draw_counts(
    rng: np.random.Generator,
    signal_events: float,
    background_shape: np.ndarray,
    background_events: float,
) -> tuple[np.ndarray, float]:
    """Draw Poisson counts per process; return the observed counts and the true kappa.

    The true kappa is the signal fraction of the drawn events, not of the means.
    """
    signal_counts = rng.poisson(signal_events * SIGNAL)
    background_counts = rng.poisson(background_events * background_shape)
    kappa_true = signal_counts.sum() / (signal_counts.sum() + background_counts.sum())
    return (signal_counts + background_counts).astype(float), float(kappa_true)


def test_oracle_fit_pulls():
    pulls, expected_widths = [], []
    for seed in range(40):
        rng = np.random.default_rng(seed)
        observed, kappa_true = draw_counts(rng, 300.0, BACKGROUND_FALLING, 1700.0)
        model, data = model_and_data(
            build_workspace(baseline_spec(SIGNAL, BACKGROUND_FALLING, observed))
        )
        result = fit_kappa(model, data, method="oracle")

        assert result.converged
        pulls.append(result.pull(kappa_true))
        # kappa_true already contains the binomial split of the drawn events, so the pull of
        # an efficient fit has variance 1 - kappa (1 - kappa) / (n sigma^2) instead of 1.
        n_events = observed.sum()
        expected_widths.append(
            math.sqrt(max(0.0, 1 - kappa_true * (1 - kappa_true) / (n_events * result.sigma**2)))
        )
    pulls_array = np.array(pulls)
    expected_width = float(np.mean(expected_widths))

    # 40 pulls of width w: the mean has a standard error w / sqrt(40) ~ 0.15 w and the sample
    # standard deviation a relative standard error 1 / sqrt(78) ~ 0.11; allow 3 of each.
    assert abs(pulls_array.mean()) < 3 * expected_width / math.sqrt(40)
    assert abs(pulls_array.std(ddof=1) / expected_width - 1) < 3 / math.sqrt(78)
    # With pulls narrower than unit width, |pull| < 2 holds for about 98 % of the fits.
    assert np.mean(np.abs(pulls_array) < 2) >= 0.9


def test_oracle_fit_single_seed():
    observed, kappa_true = draw_counts(
        np.random.default_rng(2604), 300.0, BACKGROUND_FALLING, 1700.0
    )
    model, data = model_and_data(
        build_workspace(baseline_spec(SIGNAL, BACKGROUND_FALLING, observed))
    )
    result = fit_kappa(model, data, method="oracle")

    assert isinstance(result, KappaFit)
    assert result.method == "oracle"
    assert result.converged
    assert abs(result.kappa - kappa_true) < 2 * result.sigma
    assert set(result.parameters) == {"norm", "kappa"}
    assert result.parameters["kappa"] == result.kappa


def test_topic_mixture_beats_single_template():
    # The true background is 40 % falling and 60 % rising. The baseline uses only the falling
    # shape, while TAMM gets both shapes but not their mixture.
    background_true = 0.4 * BACKGROUND_FALLING + 0.6 * BACKGROUND_RISING
    observed, kappa_true = draw_counts(np.random.default_rng(7), 2000.0, background_true, 18000.0)
    topics = np.array([BACKGROUND_FALLING, BACKGROUND_RISING])

    model, data = model_and_data(build_workspace(tamm_spec(SIGNAL, topics, observed)))
    tamm_fit = fit_kappa(model, data)
    base_model, base_data = model_and_data(
        build_workspace(baseline_spec(SIGNAL, BACKGROUND_FALLING, observed))
    )
    baseline_fit = fit_kappa(base_model, base_data, method="baseline")

    assert tamm_fit.converged
    assert baseline_fit.converged
    assert abs(tamm_fit.pull(kappa_true)) < 2
    assert abs(baseline_fit.pull(kappa_true)) > 5
    np.testing.assert_allclose(
        topic_weights(tamm_fit.parameters["background_topics"]), [0.4, 0.6], atol=0.05
    )


def test_two_channel_fit_matches_pyhf():
    # Two channels that share kappa, norm and the topic weights. The start values and sigma
    # come from tamm's mixture layout, the reference from pyhf's own Minuit fit with Hesse.
    rng = np.random.default_rng(31)
    signal_topics = np.array([SIGNAL, gaussian_shape(0.6, 0.1)])
    background_topics = np.array([BACKGROUND_FALLING, BACKGROUND_RISING])
    channels, observations = [], []
    for name, events in (("low", 4000.0), ("high", 2500.0)):
        shape = 0.3 * signal_topics.mean(axis=0) + 0.7 * background_topics.mean(axis=0)
        spec = tamm_spec(
            signal_topics, background_topics, rng.poisson(events * shape), channel=name
        )
        channels += spec["channels"]
        observations += spec["observations"]
    spec |= {"channels": channels, "observations": observations}
    model, data = model_and_data(build_workspace(spec))

    result = fit_kappa(model, data)
    with use_numpy_backend(pyhf.optimize.minuit_optimizer(strategy=2)):
        reference = pyhf.infer.mle.fit(data, model, return_uncertainties=True)

    assert model.config.channels == ["high", "low"]
    assert result.converged
    assert "observed information" in result.message
    assert result.kappa == pytest.approx(reference[model.config.poi_index, 0], abs=1e-3)
    assert result.sigma == pytest.approx(reference[model.config.poi_index, 1], rel=0.02)


def test_fit_parameters_by_name():
    rng = np.random.default_rng(9)
    observed = rng.poisson(2000 * (0.3 * SIGNAL + 0.7 * BACKGROUND_FALLING)).astype(float)
    spec = tamm_spec(
        [SIGNAL, gaussian_shape(0.45, 0.1)],
        [BACKGROUND_FALLING, BACKGROUND_RISING, SIGNAL[::-1]],
        observed,
    )
    model, data = model_and_data(build_workspace(spec))
    result = fit_kappa(model, data)

    assert list(result.parameters) == ["norm", "background_topics", "signal_topics", "kappa"]
    assert len(result.parameters["background_topics"]) == 2
    assert len(result.parameters["signal_topics"]) == 1
    assert isinstance(result.parameters["norm"], float)
    assert result.nll == pytest.approx(
        -model.logpdf(
            np.concatenate(
                [
                    [result.parameters["norm"]],
                    result.parameters["background_topics"],
                    result.parameters["signal_topics"],
                    [result.kappa],
                ]
            ),
            data,
        )[0]
    )
    json.dumps(result.to_dict())


def test_initial_parameters_near_minimum():
    rng = np.random.default_rng(12)
    signal, background = random_topics(rng, 6, 30), random_topics(rng, 6, 30)
    observed = rng.poisson(3000 * (0.25 * signal[0] + 0.75 * background[:2].mean(axis=0))).astype(
        float
    )
    model, data = model_and_data(build_workspace(tamm_spec(signal, background, observed)))

    start = initial_parameters(model, data)
    result = fit_kappa(model, data)

    assert -model.logpdf(np.array(start), data)[0] - result.nll < 0.05
    assert abs(start[model.config.poi_index] - result.kappa) < 0.2 * result.sigma


def test_initial_parameters_of_other_model():
    model = pyhf.simplemodels.uncorrelated_background(
        signal=[5.0, 6.0], bkg=[50.0, 52.0], bkg_uncertainty=[3.0, 7.0]
    )

    assert (
        initial_parameters(model, [51.0, 48.0, *model.config.auxdata])
        == model.config.suggested_init()
    )


def test_fit_histfactory_model_with_auxdata():
    model = pyhf.simplemodels.uncorrelated_background(
        signal=[5.0, 6.0], bkg=[50.0, 52.0], bkg_uncertainty=[3.0, 7.0]
    )
    result = fit_kappa(model, [58.0, 60.0, *model.config.auxdata], method="histfactory")

    assert result.converged
    assert set(result.parameters) == {"mu", "uncorr_bkguncrt"}
    assert result.sigma > 0
    assert result.message.startswith("Migrad converged")
    assert "Sigma" not in result.message


def test_fit_restores_backend():
    optimizer = pyhf.optimize.scipy_optimizer()
    pyhf.set_backend("numpy", optimizer, precision="32b")
    before = pyhf.get_backend()
    model, data = model_and_data(
        build_workspace(
            baseline_spec(SIGNAL, BACKGROUND_FALLING, 100 * (SIGNAL + BACKGROUND_FALLING))
        )
    )

    result = fit_kappa(model, data)

    assert pyhf.get_backend() == before
    assert pyhf.tensorlib.precision == "32b"
    assert result.kappa == pytest.approx(0.5, abs=1e-3)


def test_backend_restored_after_error():
    before = pyhf.get_backend()

    def fail_inside() -> None:
        with use_numpy_backend("scipy"):
            assert pyhf.get_backend()[1].name == "scipy"
            raise RuntimeError("inside")

    with pytest.raises(RuntimeError, match="inside"):
        fail_inside()

    assert pyhf.get_backend() == before


def profile_sigma(model: pyhf.Model, data: list[float], kappa_hat: float, step: float) -> float:
    """Return the mean of step / sqrt(delta(2 NLL)) at kappa_hat -+ step, profiling the rest."""
    import iminuit

    def twice_nll(pars: np.ndarray) -> float:
        return float(pyhf.infer.mle.twice_nll(pars, np.array(data), model)[0])

    def profiled(kappa: float | None) -> float:
        minuit = iminuit.Minuit(
            twice_nll, initial_parameters(model, data), name=model.config.par_names
        )
        minuit.errordef = 1.0
        minuit.strategy = 2
        minuit.limits = model.config.suggested_bounds()
        if kappa is not None:
            minuit.values["kappa"] = kappa
            minuit.fixed["kappa"] = True
        minuit.migrad()
        return minuit.fval

    pyhf.set_backend("numpy")
    minimum = profiled(None)
    return float(
        np.mean([step / math.sqrt(profiled(kappa_hat + sign * step) - minimum) for sign in (-1, 1)])
    )


def test_mixture_sigma_matches_profile():
    # Many topic weights end at the simplex edge here, where Minuit's Hesse is unreliable and
    # Minos loses one side of its interval. The reference is therefore a profile scan.
    rng = np.random.default_rng(2604)
    signal, background = random_topics(rng, 20, 100), random_topics(rng, 20, 100)
    observed = rng.poisson(5000 * rng.dirichlet(np.ones(20)) @ background).astype(float)
    model, data = model_and_data(build_workspace(tamm_spec(signal, background, observed)))

    result = fit_kappa(model, data)
    reference = profile_sigma(model, data, result.kappa, 0.04)

    assert result.converged
    assert "observed information" in result.message
    # The delta method is a local, symmetric approximation of the profile likelihood. The two
    # sides of the profile differ by 15 % here, so allow 15 %.
    assert result.sigma == pytest.approx(reference, rel=0.15)


def test_fit_at_bound_uses_minos():
    # A deficit where the signal peaks pushes kappa to 0, where only the upper error is
    # meaningful.
    observed = np.round(3000 * BACKGROUND_FALLING * (1 - 0.5 * SIGNAL / SIGNAL.max()))
    model, data = model_and_data(
        build_workspace(baseline_spec(SIGNAL, BACKGROUND_FALLING, observed))
    )

    result = fit_kappa(model, data)

    assert result.converged
    assert result.kappa < 1e-3
    assert "upper Minos error" in result.message
    assert 0 < result.sigma < 0.05


def test_fit_failure_warns(monkeypatch):
    import iminuit

    original_migrad = iminuit.Minuit.migrad

    def short_migrad(self, ncall=None, iterate=5, use_simplex=True):
        return original_migrad(self, ncall=5, iterate=1)

    monkeypatch.setattr(iminuit.Minuit, "migrad", short_migrad)
    model, data = model_and_data(
        build_workspace(tamm_spec(GOOD_TOPICS, GOOD_TOPICS, GOOD_OBSERVED))
    )

    with pytest.warns(ConvergenceWarning, match="did not converge"):
        result = fit_kappa(model, data, init_pars=model.config.suggested_init())

    assert not result.converged
    assert "call limit" in result.message


def test_fit_rejects_wrong_data_length():
    model, data = model_and_data(
        build_workspace(tamm_spec(GOOD_TOPICS, GOOD_TOPICS, GOOD_OBSERVED))
    )

    with pytest.raises(
        InvalidModelError, match=r"data has shape \(4,\), but the model expects \(3,\)"
    ):
        fit_kappa(model, [*data, 1.0])
    with pytest.raises(InvalidModelError, match="init_pars has 2 values, but the model has 4"):
        fit_kappa(model, data, init_pars=[1.0, 0.1])


def test_fit_rejects_model_without_poi():
    spec = tamm_spec(GOOD_TOPICS, GOOD_TOPICS, GOOD_OBSERVED)
    model = pyhf.Model(
        {"channels": spec["channels"]},
        modifier_set=dict(modifier_set),
        poi_name=None,
        validate=False,
    )

    with pytest.raises(InvalidModelError, match="no parameter of interest"):
        fit_kappa(model, GOOD_OBSERVED.tolist())


# ---------------------------------------------------------------------------------------------
# Hypothesis tests


@pytest.fixture(scope="module")
def small_tamm_model():
    observed = (
        np.random.default_rng(5)
        .poisson(400 * (0.2 * SIGNAL + 0.8 * BACKGROUND_FALLING))
        .astype(float)
    )
    spec = tamm_spec(
        [SIGNAL, gaussian_shape(0.55, 0.1)], [BACKGROUND_FALLING, BACKGROUND_RISING], observed
    )
    return model_and_data(build_workspace(spec))


def test_hypotest_asymptotic_cls(small_tamm_model):
    model, data = small_tamm_model
    before = pyhf.get_backend()

    result = hypotest_kappa(model, data, 0.35)

    assert pyhf.get_backend() == before
    assert 0.0 <= result.cls_observed <= 1.0
    assert len(result.cls_expected) == 5
    assert all(0.0 <= value <= 1.0 for value in result.cls_expected)
    assert list(result.cls_expected) == sorted(result.cls_expected)
    assert result.to_dict()["test_stat"] == "qtilde"


def test_hypotest_excludes_large_kappa(small_tamm_model):
    model, data = small_tamm_model

    assert hypotest_kappa(model, data, 0.9).cls_observed < 0.05


def test_hypotest_toys_on_new_numpy(small_tamm_model):
    # pyhf 0.7.6 passes np.percentile(interpolation=...), which numpy 2.4 removed; without
    # tamm's replacement backend this raises TypeError.
    model, data = small_tamm_model

    result = hypotest_kappa(model, data, 0.45, calctype="toybased", ntoys=40, seed=3)
    again = hypotest_kappa(model, data, 0.45, calctype="toybased", ntoys=40, seed=3)

    assert 0.0 <= result.cls_observed <= 1.0
    assert all(0.0 <= value <= 1.0 for value in result.cls_expected)
    assert again == result


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"kappa_test": 1.5}, r"inside the POI bounds \[0.0, 1.0\], but received 1.5"),
        ({"kappa_test": 0.2, "test_stat": "q0"}, r"received 'q0'"),
        ({"kappa_test": 0.2, "calctype": "bayes"}, r"received 'bayes'"),
        ({"kappa_test": 0.2, "calctype": "toybased", "ntoys": 0}, r"received 0"),
    ],
)
def test_hypotest_rejects_invalid_options(small_tamm_model, options, message):
    model, data = small_tamm_model

    with pytest.raises(InvalidModelError, match=message):
        hypotest_kappa(model, data, **options)
