"""Tests of the unbinned engine behind ``tamm fit`` and ``tamm train --analysis``.

The inputs are ROOT trees of the Gaussian toy written by the tests: a few biased simulations
per process and the true densities as "nature" for pseudo-data. The networks are small and
train for a few epochs, so these tests check the plumbing: saving, reloading, matching models
to inputs, outputs and errors. test_ratios.py and test_mixture.py check the accuracy.
"""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import uproot
import yaml
from click.testing import CliRunner

from tamm.analysis import run_analysis
from tamm.cli.fit import fit as fit_command
from tamm.cli.train import train as train_command
from tamm.datasets import GaussianToy
from tamm.exceptions import ModelFileError
from tamm.io import ConfigError, load_config, write_tree
from tamm.unbinned_analysis import _as_scan_record

N_SIMULATIONS = 4
N_PER_SIMULATION = 6000
TRAINING = {
    "n_members": 2,
    "max_epochs": 3,
    "hidden_units": [16, 16],
    "batch_size": 1024,
}


def _write(path: Path, tree: str, events: np.ndarray, *, mode: str = "recreate") -> None:
    write_tree(path, tree, {"x1": events[:, 0], "x2": events[:, 1]}, mode=mode)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    """Simulation and nature trees of the Gaussian toy, with an unbinned configuration."""
    folder = tmp_path_factory.mktemp("unbinned")
    toy = GaussianToy()
    indices = toy.choose_simulations(N_SIMULATIONS, seed=11)
    for offset, process in enumerate(("signal", "background")):
        simulations = toy.simulations(process, indices, n_events=N_PER_SIMULATION, seed=20 + offset)
        for index, simulation in enumerate(simulations):
            mode = "recreate" if index == 0 else "update"
            _write(
                folder / f"sims_{process}.root", f"msd_{index:02d}", simulation.events, mode=mode
            )
        _write(
            folder / f"nature_{process}.root",
            "jets",
            toy.sample_truth(process, 4000, seed=30 + offset),
        )

    config = {
        "observables": ["x1", "x2"],
        "region": {"x1": {"range": [-2, 2], "bins": 5}, "x2": {"range": [-2, 2], "bins": 5}},
        "processes": {
            process: {"simulations": [{"file": f"sims_{process}.root", "trees": "msd_*"}]}
            for process in ("signal", "background")
        },
        "pseudo_data": {
            "signal": {"file": "nature_signal.root", "tree": "jets"},
            "background": {"file": "nature_background.root", "tree": "jets"},
            "kappa": 0.2,
            "n_events": 3000,
            "seed": 4,
        },
        "engines": ["unbinned"],
        "unbinned": {"seed": 5, "training": TRAINING},
        "baseline": {"simulation": 1},
        "scan": {"points": 21, "width": 3.0},
        "output_dir": "out",
    }
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    return folder


def _config(folder: Path, name: str, **changes) -> Path:
    """Write a copy of the base configuration with top-level entries replaced."""
    raw = yaml.safe_load((folder / "config.yaml").read_text())
    raw.update(changes)
    path = folder / name
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.fixture(scope="module")
def trained(inputs) -> dict:
    """Train with ``tamm train --analysis`` and return its JSON summary."""
    result = CliRunner().invoke(
        train_command, ["--analysis", str(inputs / "config.yaml"), "--quiet"]
    )
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def fitted(inputs, trained) -> dict:
    """Run ``tamm fit`` on the trained models and return results.json."""
    result = CliRunner().invoke(fit_command, [str(inputs / "config.yaml"), "--quiet"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["ratio_models_reloaded"] is True
    return json.loads((inputs / "out" / "results.json").read_text())


def test_train_saves_models(inputs, trained):
    folder = inputs / "out" / "ratio_models"
    assert trained["output_dir"] == str(folder)
    assert (folder / "ensemble" / "manifest.json").is_file()
    assert (folder / "baseline" / "manifest.json").is_file()
    assert trained["n_classes"] == 2 * N_SIMULATIONS
    assert trained["n_members"] == TRAINING["n_members"]
    assert trained["simulations"]["signal"] == [f"sims_signal:msd_{i:02d}" for i in range(4)]
    assert trained["training"]["baseline_simulations"] == {
        "signal": "sims_signal:msd_01",
        "background": "sims_background:msd_01",
    }
    # Every class has an acceptance of the configured region.
    assert all(0 < row["acceptance"] <= 1 for row in trained["classes"])


def test_train_needs_overwrite(inputs, trained):
    result = CliRunner().invoke(
        train_command, ["--analysis", str(inputs / "config.yaml"), "--quiet"]
    )
    assert result.exit_code == 2
    assert "pass --overwrite" in result.output


def test_fit_reports_both_unbinned_methods(fitted):
    assert set(fitted["fits"]) == {"tamm-unbinned", "baseline-unbinned"}
    assert fitted["ratio_models"]["reloaded"] is True
    assert fitted["seeds"]["unbinned"] == 5
    n_events = fitted["data"]["n_events"]
    for record in fitted["fits"].values():
        assert record["converged"] is True
        assert 0 < record["sigma"] < 0.5
        assert math.isfinite(record["pull"])
        # The fitted shapes are expected counts: each sums to its fitted yield.
        assert record["yields"]["signal"] == pytest.approx(record["kappa"] * n_events)
        assert record["yields"]["total"] == pytest.approx(n_events)


@pytest.mark.parametrize("method", ["tamm-unbinned", "baseline-unbinned"])
def test_profile_interval_matches_sigma(fitted, method):
    record = fitted["fits"][method]
    low, high = record["interval_68"]
    assert low < record["kappa"] < high
    # The scan contains q / lambda_corr, whose curvature at the minimum is 1 / sigma^2 of the
    # sandwich, so the 68.3 % half-width equals sigma up to the non-parabolic (cubic) part of
    # the profile. 15 % leaves room for that part, which is 3 % on this input. A scan on the
    # wrong scale, such as -log L instead of -2 log L, is off by 41 % or more and fails.
    assert 0.5 * (high - low) == pytest.approx(record["sigma"], rel=0.15)


def test_fit_reports_simulation_uncertainty(fitted):
    record = fitted["fits"]["tamm-unbinned"]
    extra = record["simulation_uncertainty"]
    assert len(extra["leave_one_out"]) == 2 * N_SIMULATIONS
    assert extra["sigma_simulations"] > 0
    assert extra["sigma_total"] == pytest.approx(
        math.hypot(record["sigma"], extra["sigma_simulations"])
    )


def test_fit_root_unbinned_shapes(inputs, fitted):
    with uproot.open(inputs / "out" / "fit.root") as file:
        for method in ("tamm_unbinned", "baseline_unbinned"):
            total = file[f"{method}/total"].values().sum()
            signal = file[f"{method}/signal"].values().sum()
            record = fitted["fits"][method.replace("_", "-")]
            assert total == pytest.approx(fitted["data"]["n_events"])
            assert signal == pytest.approx(record["yields"]["signal"])


def test_reloaded_models_give_the_same_kappa(inputs, fitted, tmp_path):
    # A second run from the saved models, into another output folder, repeats the numbers.
    config = load_config(inputs / "config.yaml").with_overrides(output_dir=tmp_path)
    unbinned = replace(config.unbinned, model_dir=inputs / "out" / "ratio_models")
    again = run_analysis(replace(config, unbinned=unbinned))
    assert not (tmp_path / "ratio_models").exists()
    assert again.ratio_models is not None
    assert again.ratio_models.reloaded
    for method in ("tamm-unbinned", "baseline-unbinned"):
        assert again.methods[method].fit.kappa == fitted["fits"][method]["kappa"]


def test_other_simulations_rejected(inputs, trained, tmp_path):
    fewer = {
        process: {"simulations": [{"file": f"sims_{process}.root", "trees": "msd_0[0-2]"}]}
        for process in ("signal", "background")
    }
    path = _config(
        inputs,
        "fewer.yaml",
        processes=fewer,
        output_dir=str(tmp_path),
        unbinned={"model_dir": str(inputs / "out" / "ratio_models"), "training": TRAINING},
    )
    with pytest.raises(
        ModelFileError,
        match=r"was trained on other simulations than this analysis lists.*tamm train --analysis",
    ):
        run_analysis(load_config(path))


def test_missing_model_dir_fails_before_reading(inputs, tmp_path):
    # The binned engine runs first; a wrong model_dir must fail before it, not after.
    path = _config(
        inputs,
        "missing_both.yaml",
        output_dir=str(tmp_path),
        engines=["binned", "unbinned"],
        binned={"n_topics": 2},
        unbinned={"model_dir": str(tmp_path / "nowhere")},
    )
    with pytest.raises(ModelFileError, match=r"no saved ratio ensemble is there"):
        run_analysis(load_config(path))
    assert not (tmp_path / "topics_signal.json").exists()


def test_missing_model_dir_is_an_error(inputs, tmp_path):
    path = _config(
        inputs,
        "missing.yaml",
        output_dir=str(tmp_path),
        unbinned={"model_dir": str(tmp_path / "nowhere")},
    )
    with pytest.raises(ModelFileError, match=r"no saved ratio ensemble is there"):
        run_analysis(load_config(path))


def test_damaged_model_is_an_error(inputs, trained, tmp_path):
    import shutil

    copy = tmp_path / "models"
    shutil.copytree(inputs / "out" / "ratio_models", copy)
    manifest = copy / "ensemble" / "manifest.json"
    manifest.write_text(manifest.read_text()[:-20])
    path = _config(
        inputs, "damaged.yaml", output_dir=str(tmp_path), unbinned={"model_dir": str(copy)}
    )
    with pytest.raises(ModelFileError):
        run_analysis(load_config(path))


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (
            {
                "processes": {
                    "signal": {
                        "simulations": [
                            {"file": "sims_signal.root", "tree": "msd_00", "weight": "x1"}
                        ]
                    },
                    "background": {
                        "simulations": [{"file": "sims_background.root", "trees": "msd_*"}]
                    },
                }
            },
            r"processes\.signal\.simulations\[0\]\.weight: has the weight branch 'x1'",
        ),
        (
            {"unbinned": {"n_reference": 10_000_000, "model_dir": "out/ratio_models"}},
            r"unbinned\.n_reference: asks for 10000000 reference",
        ),
        (
            {
                "processes": {
                    "signal": {"simulations": [{"file": "sims_signal.root", "histogram": "h"}]},
                    "background": {
                        "simulations": [{"file": "sims_background.root", "trees": "msd_*"}]
                    },
                }
            },
            (
                r"processes\.signal\.simulations\[0\]: is the histogram 'h', but the unbinned "
                r"engine learns from events"
            ),
        ),
        (
            {"pseudo_data": None, "data": {"file": "data.root", "histogram": "h_data"}},
            r"data: the unbinned engine fits data events; give the data as an unweighted tree",
        ),
    ],
)
def test_unbinned_input_errors(inputs, trained, tmp_path, changes, message):
    path = _config(
        inputs,
        "bad.yaml",
        output_dir=str(tmp_path),
        **{"unbinned": {"model_dir": str(inputs / "out" / "ratio_models")}, **changes},
    )
    if "pseudo_data" in changes:
        raw = yaml.safe_load(path.read_text())
        del raw["pseudo_data"]
        path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match=message):
        run_analysis(load_config(path))


def test_write_false_trains_in_memory(inputs, tmp_path):
    path = _config(inputs, "memory.yaml", output_dir=str(tmp_path / "unused"))
    result = run_analysis(load_config(path), write=False)
    assert result.ratio_models is not None
    assert result.ratio_models.directory is None
    assert not result.ratio_models.reloaded
    assert result.methods["tamm-unbinned"].fit.converged
    assert not (tmp_path / "unused").exists()


def test_scan_record_uses_lower_minimum(caplog):
    # A grid point below the fit (q < 0) means the fit stopped in a local minimum. The curve
    # is shifted so that this point is the minimum, and a warning is logged.
    kappa = np.array([0.1, 0.2, 0.3, 0.4])
    q = np.array([4.0, 1.0, -0.5, 3.5])
    with caplog.at_level("WARNING", logger="tamm.unbinned_analysis"):
        record = _as_scan_record(kappa, q, np.ones(4, dtype=bool), 0.25, 2.0)
    assert "stopped in a local minimum" in caplog.text
    assert record.kappa.tolist() == [0.1, 0.2, 0.25, 0.3, 0.4]
    np.testing.assert_allclose(record.delta_twice_nll, [2.25, 0.75, 0.25, 0.0, 2.0])
    assert record.converged.all()


def test_scan_record_drops_failed_points():
    kappa = np.array([0.1, 0.2, 0.3])
    q = np.array([np.inf, 1.0, 2.0])
    record = _as_scan_record(kappa, q, np.isfinite(q), 0.15, 1.0)
    assert record.converged.tolist() == [False, True, True, True]
    assert record.delta_twice_nll[1] == 0.0


def test_train_analysis_rejects_region_options(inputs):
    result = CliRunner().invoke(
        train_command,
        ["--analysis", str(inputs / "config.yaml"), "--observables", "a,b", "--quiet"],
    )
    assert result.exit_code == 2
    assert "--observables and --region-limits do not apply with --analysis" in result.output
