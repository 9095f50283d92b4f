"""Tests of tamm.analysis and ``tamm fit`` on small synthetic ROOT files written by the tests."""

from __future__ import annotations

import json
import math
from pathlib import Path

import hist
import numpy as np
import pytest
import uproot
import yaml
from click.testing import CliRunner

from tamm.analysis import ProfileScan, fit_hists, run_analysis
from tamm.cli.fit import fit as fit_command
from tamm.exceptions import InvalidSimulationError, ModelFileError
from tamm.io import ConfigError, InputFileError, load_config, write_tree
from tamm.io.config import ScanConfig

N_SIMULATIONS = 5
N_PER_SIMULATION = 3000
N_SIGNAL_DATA, N_BACKGROUND_DATA = 600, 1400


def _events(rng: np.random.Generator, mean: tuple[float, float], n: int) -> dict[str, np.ndarray]:
    """Gaussian blob clipped to stay mostly inside the unit square."""
    return {
        "x": rng.normal(mean[0], 0.15, n),
        "y": rng.normal(mean[1], 0.15, n),
    }


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    """Simulation, data and nature files in a folder, with a configuration using relative paths."""
    folder = tmp_path_factory.mktemp("analysis")
    rng = np.random.default_rng(2024)
    shifts = np.linspace(-0.08, 0.08, N_SIMULATIONS)
    for process, mean in (("signal", (0.35, 0.6)), ("background", (0.65, 0.4))):
        path = folder / f"sims_{process}.root"
        for index, shift in enumerate(shifts):
            events = _events(rng, (mean[0] + shift, mean[1] - shift), N_PER_SIMULATION)
            write_tree(
                path, f"msd_{index:02d}", events, mode="recreate" if index == 0 else "update"
            )
        write_tree(
            folder / f"nature_{process}.root", "jets", _events(rng, (mean[0] + 0.02, mean[1]), 4000)
        )

    signal = _events(rng, (0.37, 0.6), N_SIGNAL_DATA)
    background = _events(rng, (0.67, 0.4), N_BACKGROUND_DATA)
    data = {name: np.concatenate([signal[name], background[name]]) for name in ("x", "y")}
    write_tree(folder / "data.root", "events", data)
    nan_data = {name: values.copy() for name, values in data.items()}
    nan_data["y"][41] = np.nan
    write_tree(folder / "data_nan.root", "events", nan_data)

    config = {
        "observables": ["x", "y"],
        "region": {"x": {"range": [-0.5, 1.5], "bins": 6}, "y": {"range": [-0.5, 1.5], "bins": 5}},
        "processes": {
            process: {"simulations": [{"file": f"sims_{process}.root", "trees": "msd_*"}]}
            for process in ("signal", "background")
        },
        "data": {"file": "data.root", "tree": "events"},
        "engines": ["binned"],
        "binned": {"n_topics": 2, "seed": 3, "n_restarts": 1},
        "baseline": {"simulation": 2},
        "scan": {"points": 15, "width": 3.0},
        "output_dir": "out",
    }
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    return folder


def _config(folder: Path, name: str = "config.yaml", **changes) -> Path:
    """Write a copy of the base configuration with top-level entries replaced."""
    raw = yaml.safe_load((folder / "config.yaml").read_text())
    raw.update(changes)
    path = folder / name
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.fixture(scope="module")
def analysis(inputs):
    return run_analysis(load_config(inputs / "config.yaml"), retrain=True)


# ---------------------------------------------------------------------------------------------
# End to end


def test_run_analysis_writes_outputs(analysis, inputs):
    out = inputs / "out"
    for name in (
        "results.json",
        "fit.root",
        "fit.png",
        "kappa_scan.png",
        "topics_signal.json",
        "topics_background.json",
    ):
        assert (out / name).is_file(), name
    record = json.loads((out / "results.json").read_text())
    assert set(record["fits"]) == {"tamm-binned", "baseline"}
    assert record["seeds"] == {"binned": 3}
    assert record["versions"]["uproot"] == uproot.__version__
    assert record["kappa_true"] is None
    assert record["fits"]["baseline"]["simulations"] == {
        "signal": "sims_signal:msd_02",
        "background": "sims_background:msd_02",
    }
    assert [s["name"] for s in record["simulations"]["signal"]] == [
        f"sims_signal:msd_{i:02d}" for i in range(N_SIMULATIONS)
    ]
    assert record["data"]["n_events"] == N_SIGNAL_DATA + N_BACKGROUND_DATA
    for fit in record["fits"].values():
        assert fit["converged"]
        assert 0.0 <= fit["kappa"] <= 1.0


def test_binned_jackknife_in_results(analysis):
    extra = analysis.methods["tamm-binned"].details["simulation_uncertainty"]
    assert len(extra["leave_one_out"]) == 2 * N_SIMULATIONS
    assert extra["sigma_simulations"] > 0
    sigma = analysis.methods["tamm-binned"].fit.sigma
    assert extra["sigma_total"] == pytest.approx(math.hypot(sigma, extra["sigma_simulations"]))
    summary = analysis.summary()["fits"]["tamm-binned"]
    assert summary["sigma_total"] == extra["sigma_total"]
    assert "simulation_uncertainty" not in analysis.methods["baseline"].details


def test_kappa_near_data_fraction(analysis):
    # The simulations bracket the data, so both methods should land near 0.3; four sigma
    # leaves room for the shape mismatch of a single simulation.
    kappa_data = N_SIGNAL_DATA / (N_SIGNAL_DATA + N_BACKGROUND_DATA)
    for result in analysis.methods.values():
        assert abs(result.fit.kappa - kappa_data) < 4 * result.fit.sigma + 0.02


def test_fit_root_shapes_sum_to_yields(analysis, inputs):
    n_data = N_SIGNAL_DATA + N_BACKGROUND_DATA
    with uproot.open(inputs / "out" / "fit.root") as handle:
        classes = handle.classnames()
        assert classes["data;1"] == "TH2D"
        np.testing.assert_allclose(handle["data"].values().sum(), n_data)
        np.testing.assert_array_equal(handle["data"].variances(), handle["data"].values())
        for method, folder in (("tamm-binned", "tamm_binned"), ("baseline", "baseline")):
            result = analysis.methods[method]
            signal = handle[f"{folder}/signal"].values()
            background = handle[f"{folder}/background"].values()
            total = handle[f"{folder}/total"].values()
            assert classes[f"{folder}/signal;1"] == "TH2D"
            assert signal.shape == (6, 5)
            np.testing.assert_allclose(signal + background, total, rtol=1e-12)
            norm = result.fit.parameters["norm"]
            np.testing.assert_allclose(signal.sum(), norm * n_data * result.fit.kappa, rtol=1e-9)
            np.testing.assert_allclose(
                background.sum(), norm * n_data * (1 - result.fit.kappa), rtol=1e-9
            )
            record = json.loads((inputs / "out" / "results.json").read_text())["fits"][method]
            np.testing.assert_allclose(signal.sum(), record["yields"]["signal"], rtol=1e-12)
            np.testing.assert_allclose(total.sum(), record["yields"]["total"], rtol=1e-12)


def test_profile_interval_brackets_kappa(analysis):
    for result in analysis.methods.values():
        lower, upper = result.interval
        assert lower < result.fit.kappa < upper
        assert result.scan.converged.all()
        assert np.nanmin(result.scan.delta_twice_nll) == pytest.approx(0.0, abs=1e-6)


def test_baseline_profile_matches_sigma(analysis):
    # The baseline has only norm and kappa, and with 2000 events its likelihood is close to
    # parabolic, so the profile interval half-width should match the delta-method sigma within 10 %.
    result = analysis.methods["baseline"]
    lower, upper = result.interval
    assert 0.5 * (upper - lower) == pytest.approx(result.fit.sigma, rel=0.1)


def test_topics_reloaded_on_second_run(analysis, inputs):
    again = run_analysis(load_config(inputs / "config.yaml"))
    assert all(reloaded for _, reloaded in again.topics.values())
    assert again.methods["tamm-binned"].fit.kappa == pytest.approx(
        analysis.methods["tamm-binned"].fit.kappa, rel=1e-9
    )


def test_changed_settings_need_retrain(analysis, inputs):
    path = _config(inputs, "more_topics.yaml", binned={"n_topics": 3, "seed": 3, "n_restarts": 1})
    with pytest.raises(
        ModelFileError,
        match=r"learned from other inputs or settings \(n_topics: saved 2, now 3\).*--retrain",
    ):
        run_analysis(load_config(path))


def test_damaged_topics_file(inputs, tmp_path):
    path = _config(inputs, "damaged.yaml", output_dir=str(tmp_path))
    (tmp_path / "topics_signal.json").write_text("{not json")
    with pytest.raises(ModelFileError, match=r"could not read the saved topics .*--retrain"):
        run_analysis(load_config(path))


def test_write_false_keeps_results_in_memory(inputs, tmp_path):
    config = load_config(inputs / "config.yaml").with_overrides(output_dir=tmp_path / "unused")
    result = run_analysis(config, write=False)
    assert result.outputs == {}
    assert not (tmp_path / "unused").exists()


# ---------------------------------------------------------------------------------------------
# Input errors named by file, key and branch


@pytest.mark.parametrize(
    ("changes", "error", "message"),
    [
        (
            {"data": {"file": "absent.root", "tree": "events"}},
            InputFileError,
            r"data\.file: ROOT file .*absent\.root.* not found",
        ),
        (
            {"data": {"file": "data.root", "tree": "jets"}},
            InputFileError,
            r"data: tree 'jets' not found in .*data\.root.*\['events'\]",
        ),
        (
            {
                "processes": {
                    "signal": {"simulations": [{"file": "sims_signal.root", "trees": "nope_*"}]},
                    "background": {
                        "simulations": [{"file": "sims_background.root", "trees": "msd_*"}]
                    },
                }
            },
            InputFileError,
            r"processes\.signal\.simulations\[0\]\.trees: no tree in .* matches 'nope_\*'",
        ),
        (
            {
                "processes": {
                    "signal": {
                        "simulations": [
                            {"file": "sims_signal.root", "tree": "msd_00"},
                            {"file": "sims_signal.root", "tree": "msd_09"},
                        ]
                    },
                    "background": {
                        "simulations": [{"file": "sims_background.root", "trees": "msd_*"}]
                    },
                }
            },
            InputFileError,
            r"processes\.signal\.simulations\[1\]: tree 'msd_09' not found",
        ),
        (
            {
                "observables": ["x", "z"],
                "region": {"x": {"range": [0, 1], "bins": 2}, "z": {"range": [0, 1], "bins": 2}},
            },
            InputFileError,
            r"processes\.signal\.simulations\[0\]: branch 'z' not found in tree 'msd_00'.*\['x', 'y'\]",
        ),
        (
            {"region": {"x": {"range": [5, 6], "bins": 2}, "y": {"range": [0, 1], "bins": 2}}},
            InvalidSimulationError,
            r"processes\.signal\.simulations\[0\]: none of the 3000 entries of tree 'msd_00'",
        ),
        (
            {"data": {"file": "data_nan.root", "tree": "events"}},
            InvalidSimulationError,
            r"data: branch 'y' of tree 'events' .* nan at entry 41",
        ),
        (
            {"baseline": {"simulation": "msd_07"}},
            ConfigError,
            r"baseline\.simulation\.signal: no signal simulation is named 'msd_07'",
        ),
        (
            {"baseline": {"simulation": 9}},
            ConfigError,
            r"baseline\.simulation\.signal: simulation index 9 is out of range",
        ),
        (
            {"binned": {"n_topics": 6}},
            ConfigError,
            r"binned\.n_topics: asks for 6 topics .* 'signal' has only 5 simulations",
        ),
    ],
)
def test_input_errors_name_the_source(inputs, tmp_path, changes, error, message):
    path = _config(inputs, "bad.yaml", output_dir=str(tmp_path), **changes)
    with pytest.raises(error, match=message):
        run_analysis(load_config(path))


def test_pseudo_data_draw(inputs, tmp_path):
    pseudo = {
        "signal": {"file": "nature_signal.root", "tree": "jets"},
        "background": {"file": "nature_background.root", "tree": "jets"},
        "kappa": 0.25,
        "n_events": 1001,
        "seed": 5,
    }
    raw = yaml.safe_load((inputs / "config.yaml").read_text())
    del raw["data"]
    raw.update(pseudo_data=pseudo, output_dir=str(tmp_path), scan={"points": 5, "width": 1.0})
    path = inputs / "pseudo.yaml"
    path.write_text(yaml.safe_dump(raw))
    result = run_analysis(load_config(path))
    assert result.inputs.data["n_signal"] == 250
    assert result.inputs.kappa_true == 250 / 1001
    assert result.inputs.observed.sum() == 1001
    record = json.loads((tmp_path / "results.json").read_text())
    assert record["seeds"] == {"binned": 3, "pseudo_data": 5}
    assert math.isfinite(record["fits"]["tamm-binned"]["pull"])

    raw["pseudo_data"]["n_events"] = 9000
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(
        ConfigError,
        match=r"pseudo_data\.n_events: 6750 background events are needed .* only 4000 background events",
    ):
        run_analysis(load_config(path))


def test_histogram_inputs_in_one_dimension(inputs, tmp_path):
    # Simulations and data given as TH1D objects; a 1-D region writes TH1D shapes.
    edges = np.linspace(-0.5, 1.5, 9)
    histograms = {}
    for process in ("signal", "background"):
        with uproot.open(inputs / f"sims_{process}.root") as handle:
            for index in range(N_SIMULATIONS):
                values = handle[f"msd_{index:02d}"]["x"].array(library="np")
                histograms[f"{process}_{index}"] = hist.Hist(
                    hist.axis.Variable(edges, name="x")
                ).fill(values)
    with uproot.open(inputs / "data.root") as handle:
        histograms["data"] = hist.Hist(hist.axis.Variable(edges, name="x")).fill(
            handle["events"]["x"].array(library="np")
        )
    with uproot.recreate(tmp_path / "hists.root") as handle:
        for name, histogram in histograms.items():
            handle[name] = histogram

    config = {
        "observables": ["x"],
        "region": {"x": {"edges": edges.tolist()}},
        "processes": {
            process: {
                "simulations": [
                    {"file": "hists.root", "histogram": f"{process}_{i}"}
                    for i in range(N_SIMULATIONS)
                ]
            }
            for process in ("signal", "background")
        },
        "data": {"file": "hists.root", "histogram": "data"},
        "binned": {"n_topics": 2, "n_restarts": 1},
        "scan": {"points": 5, "width": 1.0},
        "output_dir": "out1d",
    }
    path = tmp_path / "hists.yaml"
    path.write_text(yaml.safe_dump(config))
    result = run_analysis(load_config(path))
    assert result.inputs.observed.sum() == N_SIGNAL_DATA + N_BACKGROUND_DATA
    with uproot.open(tmp_path / "out1d" / "fit.root") as handle:
        assert handle.classnames()["tamm_binned/total;1"] == "TH1D"
        np.testing.assert_allclose(
            handle["tamm_binned/total"].values().sum(), result.methods["tamm-binned"].total.sum()
        )

    config["region"] = {"x": {"range": [-0.5, 1.5], "bins": 4}}
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(
        InvalidSimulationError,
        match=r"processes\.signal\.simulations\[0\]\.histogram: axis 0 \('x'\) of histogram 'signal_0'",
    ):
        run_analysis(load_config(path))


# ---------------------------------------------------------------------------------------------
# hist objects in and out


def test_fit_hists_returns_named_hists(inputs):
    edges = [np.linspace(-0.5, 1.5, 6), np.linspace(-0.5, 1.5, 5)]
    axes = [hist.axis.Variable(edges[0], name="x"), hist.axis.Variable(edges[1], name="y")]
    per_process = {}
    for process in ("signal", "background"):
        with uproot.open(inputs / f"sims_{process}.root") as handle:
            per_process[process] = [
                hist.Hist(*axes, storage=hist.storage.Weight()).fill(
                    *(handle[f"msd_{i:02d}"][n].array(library="np") for n in ("x", "y"))
                )
                for i in range(N_SIMULATIONS)
            ]
    with uproot.open(inputs / "data.root") as handle:
        data = hist.Hist(*axes).fill(*(handle["events"][n].array(library="np") for n in ("x", "y")))

    results = fit_hists(
        per_process["signal"],
        per_process["background"],
        data,
        n_topics=2,
        seed=1,
        topic_options={"n_restarts": 1},
        scan=ScanConfig(points=5, width=1.0),
    )
    for result in results.values():
        shapes = result.to_hists()
        assert set(shapes) == {"signal", "background", "total"}
        for histogram in shapes.values():
            assert isinstance(histogram, hist.Hist)
            assert [axis.name for axis in histogram.axes] == ["x", "y"]
        assert shapes["total"].values().sum() == pytest.approx(
            result.fit.parameters["norm"] * data.values().sum(), rel=1e-9
        )
        assert shapes["signal"].values().sum() / shapes["total"].values().sum() == pytest.approx(
            result.fit.kappa, rel=1e-9
        )
        assert result.interval is not None


# ---------------------------------------------------------------------------------------------
# Profile intervals


def test_profile_interval_interpolates():
    kappa = np.linspace(0.1, 0.5, 9)
    scan = ProfileScan(kappa, ((kappa - 0.3) / 0.1) ** 2, np.ones(9, dtype=bool))
    lower, upper = scan.interval()
    assert lower == pytest.approx(0.2)
    assert upper == pytest.approx(0.4)


def test_profile_interval_one_sided_at_bound():
    kappa = np.linspace(0.0, 0.4, 9)
    scan = ProfileScan(kappa, (kappa / 0.2) ** 2, np.ones(9, dtype=bool))
    assert scan.interval() == (0.0, pytest.approx(0.2))


def test_profile_interval_nan_when_scan_too_narrow():
    kappa = np.linspace(0.25, 0.35, 5)
    scan = ProfileScan(kappa, ((kappa - 0.3) / 0.1) ** 2, np.ones(5, dtype=bool))
    lower, upper = scan.interval()
    assert math.isnan(lower)
    assert math.isnan(upper)


def test_profile_interval_skips_failed_points():
    kappa = np.linspace(0.1, 0.5, 9)
    values = ((kappa - 0.3) / 0.1) ** 2
    converged = np.ones(9, dtype=bool)
    values[7] = -50.0  # a failed point with a nonsense value must not be used
    converged[7] = False
    assert ProfileScan(kappa, values, converged).interval()[1] == pytest.approx(0.4)


# ---------------------------------------------------------------------------------------------
# Command line


def test_cli_fit_prints_json_summary(analysis, inputs, tmp_path):
    runner = CliRunner()
    result = runner.invoke(
        fit_command, [str(inputs / "config.yaml"), "--quiet", "--output-dir", str(inputs / "out")]
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert set(summary["fits"]) == {"tamm-binned", "baseline"}
    assert summary["topics_reloaded"] == {"signal": True, "background": True}
    assert summary["fits"]["baseline"]["kappa"] == pytest.approx(
        analysis.methods["baseline"].fit.kappa, rel=1e-9
    )

    output = tmp_path / "summary.json"
    result = runner.invoke(
        fit_command, [str(inputs / "config.yaml"), "--quiet", "--output-file", str(output)]
    )
    assert result.exit_code == 0, result.output
    assert json.loads(output.read_text())["n_events"] == N_SIGNAL_DATA + N_BACKGROUND_DATA


def test_cli_fit_seed_change_requires_retrain(analysis, inputs):
    runner = CliRunner()
    result = runner.invoke(fit_command, [str(inputs / "config.yaml"), "--quiet", "--seed", "11"])
    assert result.exit_code == 1
    assert "seed: saved 3, now 11" in result.output
    assert "--retrain" in result.output


def test_cli_fit_reports_config_errors(inputs, tmp_path):
    path = _config(inputs, "unbinned.yaml", engines=["binned", "unbinned"], unbinned={"seed": -1})
    result = CliRunner().invoke(fit_command, [str(path), "--quiet"])
    assert result.exit_code == 1
    assert "unbinned.seed: expected an integer >= 0" in result.output

    result = CliRunner().invoke(fit_command, [str(tmp_path / "missing.yaml"), "--quiet"])
    assert result.exit_code == 1
    assert "configuration file" in result.output


def test_fingerprint_change_names_list_entries():
    from tamm.analysis import _describe_change

    text = _describe_change("simulations", ["a:msd_00", "a:msd_01"], ["a:msd_01", "a:msd_02"])
    assert text == "simulations: 2 saved, 2 now (removed ['a:msd_00'], added ['a:msd_02'])"
    assert _describe_change("simulations", ["x", "y"], ["y", "x"]) == (
        "simulations: the same 2 entries in another order"
    )
    assert _describe_change("seed", 3, 11) == "seed: saved 3, now 11"
