"""Tests of tamm.studies: settings and seeds, schedulers, resuming, summaries and plots."""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from scipy import stats

from tamm.exceptions import InvalidModelError, ModelFileError
from tamm.results import KappaFit
from tamm.studies import (
    Method,
    MethodOutcome,
    StudyConfig,
    format_table,
    plot_coverage,
    plot_pulls,
    read_results,
    register_method,
    run_study,
    summarize,
    unregister_method,
)
from tamm.studies.runner import RESULTS_FILE

# A study small enough to run in seconds: 2 draws x 3 pseudo-experiments x 4 methods.
SMALL = StudyConfig(
    n_draws=2,
    n_experiments=3,
    n_simulations=4,
    n_topics=2,
    n_components=2,
    n_events_per_simulation=20_000,
    bins=5,
)

# Fields that must agree exactly between runs; timings and messages may differ.
NUMBERS = (
    "kappa",
    "sigma",
    "converged",
    "z_interval",
    "intervals",
    "kappa_true",
    "hellinger_signal",
    "hellinger_background",
    "error",
)


def numbers(records):
    return {
        (r["draw"], r["experiment"], r["method"]): {key: r.get(key) for key in NUMBERS}
        for r in records
    }


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    folder = tmp_path_factory.mktemp("reference")
    return run_study(SMALL, output_dir=folder, scheduler="serial")


# ---------------------------------------------------------------------------------------------
# Settings and seeds


def test_config_round_trip():
    config = StudyConfig(n_draws=3, methods=("oracle", "baseline"), seed=7)

    again = StudyConfig.from_dict(json.loads(json.dumps(config.to_dict())))

    assert again == config
    assert again.fingerprint() == config.fingerprint()
    assert config.n_fits == 3 * 30 * 2


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"n_draws": 0}, "n_draws"),
        ({"methods": ()}, "distinct methods"),
        ({"methods": ("oracle", "oracle")}, "distinct methods"),
        ({"seed": -1}, "seed"),
        ({"dataset": "dihiggs"}, "dataset"),
        ({"n_signal": 0, "n_background": 0}, "n_signal"),
    ],
)
def test_config_rejects_invalid_settings(settings, message):
    with pytest.raises(InvalidModelError, match=message):
        StudyConfig(**settings)


def test_config_rejects_unknown_keys():
    with pytest.raises(InvalidModelError, match="Unknown study settings"):
        StudyConfig.from_dict({"n_draws": 2, "n_toys": 5})


def test_seeds_depend_only_on_their_key():
    config = StudyConfig(seed=3)

    first = config.experiment_seed(1, 2).generate_state(4)
    config.experiment_seed(0, 0).generate_state(4)  # another stream in between
    second = config.experiment_seed(1, 2).generate_state(4)

    np.testing.assert_array_equal(first, second)
    assert not np.array_equal(first, config.experiment_seed(2, 1).generate_state(4))
    assert not np.array_equal(first, StudyConfig(seed=4).experiment_seed(1, 2).generate_state(4))


# ---------------------------------------------------------------------------------------------
# Running


def test_study_records_every_fit_once(reference):
    keys = [(r["draw"], r["experiment"], r["method"]) for r in reference.fits]

    assert len(keys) == SMALL.n_fits
    assert len(set(keys)) == len(keys)
    assert {r["draw"] for r in reference.draws} == {0, 1}
    assert all(r["kappa_true"] == pytest.approx(1 / 11) for r in reference.fits)


def test_study_fits_carry_intervals_and_distances(reference):
    for record in reference.fits:
        assert record["error"] is None
        assert record["converged"]
        low, high = record["intervals"]["68.3"]
        assert low < record["kappa"] < high
        assert record["hellinger_signal"] >= 0
    oracle = [r for r in reference.fits if r["method"] == "oracle"]
    assert all(r["hellinger_signal"] == pytest.approx(0.0, abs=1e-12) for r in oracle)


def test_results_file_matches_returned_records(reference):
    config, fits, draws = read_results(reference.output_dir)

    assert config == SMALL
    assert numbers(fits) == numbers(reference.fits)
    assert len(draws) == SMALL.n_draws


# Seeds depend only on (seed, draw, experiment), so a study of the first draw alone must
# reproduce that draw of the reference exactly. One draw keeps the worker start-up short.
FIRST_DRAW = StudyConfig.from_dict(SMALL.to_dict() | {"n_draws": 1})


def first_draw(records):
    return numbers([record for record in records if record["draw"] == 0])


def test_process_pool_matches_serial(reference, tmp_path):
    run = run_study(FIRST_DRAW, output_dir=tmp_path, scheduler="local", workers=2)

    assert run.n_new_fits == FIRST_DRAW.n_fits
    assert numbers(run.fits) == first_draw(reference.fits)


def test_dask_cluster_matches_serial(reference, tmp_path):
    pytest.importorskip("distributed")

    run = run_study(FIRST_DRAW, output_dir=tmp_path, scheduler="dask-local", workers=2)

    assert run.n_new_fits == FIRST_DRAW.n_fits
    assert numbers(run.fits) == first_draw(reference.fits)


def copy_partial_results(reference, folder: Path, n_fits: int) -> None:
    """Write the header, the draws and the first n_fits fit lines, then half a line."""
    lines = (reference.output_dir / RESULTS_FILE).read_text().splitlines(keepends=True)
    header, rest = lines[0], lines[1:]
    draws = [line for line in rest if json.loads(line)["record"] == "draw"]
    fits = [line for line in rest if json.loads(line)["record"] == "fit"]
    folder.mkdir(parents=True, exist_ok=True)
    text = header + "".join(draws) + "".join(fits[:n_fits]) + fits[n_fits][: len(fits[n_fits]) // 2]
    (folder / RESULTS_FILE).write_text(text)
    shutil.copytree(reference.output_dir / "draws", folder / "draws")


def test_resume_runs_each_missing_fit_once(reference, tmp_path):
    copy_partial_results(reference, tmp_path, n_fits=5)

    run = run_study(SMALL, output_dir=tmp_path, scheduler="serial", resume=True)

    assert run.n_new_fits == SMALL.n_fits - 5
    assert numbers(run.fits) == numbers(reference.fits)
    _, fits, _ = read_results(tmp_path)
    keys = [(r["draw"], r["experiment"], r["method"]) for r in fits]
    assert len(keys) == len(set(keys)) == SMALL.n_fits
    lines = (tmp_path / RESULTS_FILE).read_text().splitlines()
    assert all(json.loads(line) for line in lines)  # the broken line was dropped


def test_resume_of_finished_study_runs_nothing(reference, tmp_path):
    shutil.copytree(reference.output_dir, tmp_path / "copy")

    run = run_study(SMALL, output_dir=tmp_path / "copy", scheduler="local", resume=True)

    assert run.n_new_fits == 0
    assert numbers(run.fits) == numbers(reference.fits)


def test_existing_results_need_resume(reference, tmp_path):
    shutil.copytree(reference.output_dir, tmp_path / "copy")

    with pytest.raises(ModelFileError, match="already exists"):
        run_study(SMALL, output_dir=tmp_path / "copy", scheduler="serial")


def test_resume_rejects_other_settings(reference, tmp_path):
    shutil.copytree(reference.output_dir, tmp_path / "copy")
    other = StudyConfig.from_dict(SMALL.to_dict() | {"seed": 1})

    with pytest.raises(ModelFileError, match="other settings"):
        run_study(other, output_dir=tmp_path / "copy", scheduler="serial", resume=True)


KILL_SCRIPT = """
import sys
from tamm.studies import StudyConfig, run_study

if __name__ == "__main__":
    config = StudyConfig.from_dict({config})
    run_study(config, output_dir=sys.argv[1], scheduler="local", workers=2)
"""


@pytest.mark.slow
def test_killed_study_resumes_without_duplicates(reference, tmp_path):
    script = tmp_path / "run.py"
    script.write_text(KILL_SCRIPT.format(config=SMALL.to_dict()))
    folder = tmp_path / "study"
    process = subprocess.Popen(
        [sys.executable, str(script), str(folder)],
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    results = folder / RESULTS_FILE
    deadline = time.monotonic() + 300
    try:
        while time.monotonic() < deadline and process.poll() is None:
            if results.exists():
                n_fits = results.read_text().count('"record": "fit"')
                if n_fits >= 8:
                    break
            time.sleep(0.2)
    finally:
        # The run and its pool workers share the new session, whose group id is its pid.
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    killed_with = results.read_text().count('"record": "fit"')
    assert 0 < killed_with < SMALL.n_fits, "the study was not killed midway"

    run = run_study(SMALL, output_dir=folder, scheduler="serial", resume=True)

    assert run.n_new_fits == SMALL.n_fits - killed_with
    assert numbers(run.fits) == numbers(reference.fits)
    _, fits, _ = read_results(folder)
    assert len(fits) == SMALL.n_fits


# ---------------------------------------------------------------------------------------------
# Methods


class EchoFitter:
    """A fake method: returns kappa_true with sigma 0.01 and no shapes."""

    def __call__(self, experiment):
        fit = KappaFit("echo", experiment.kappa_true + 0.005, 0.01, True)
        return MethodOutcome(fit, {"68.3": (0.0, 1.0), "95.4": (0.0, 1.0)}, 0.5, None)


def build_echo(draw):
    return EchoFitter()


class BrokenFitter:
    def __call__(self, _experiment):
        msg = "this method always fails"
        raise ValueError(msg)


def build_broken(draw):
    return BrokenFitter()


@pytest.fixture
def extra_methods():
    register_method(Method("echo", build_echo, description="test method"))
    register_method(Method("broken", build_broken, description="always fails"))
    yield
    unregister_method("echo")
    unregister_method("broken")


def test_registered_method_runs_in_study(extra_methods):
    config = StudyConfig.from_dict(SMALL.to_dict() | {"methods": ["echo", "broken"]})

    run = run_study(config, scheduler="serial")

    summaries = summarize(run.fits)
    echo = summaries["echo"]
    assert echo.n_finished == config.n_draws * config.n_experiments
    assert echo.mean_bias == pytest.approx(0.005)
    assert echo.coverage_wald["68.3"] == 1.0
    assert echo.coverage_interval["95.4"] == 1.0
    assert math.isnan(echo.hellinger_signal)
    broken = summaries["broken"]
    assert broken.n_failed == broken.n_fits == config.n_draws * config.n_experiments
    assert all("always fails" in r["error"] for r in run.fits if r["method"] == "broken")


def test_register_method_rejects_duplicates(extra_methods):
    with pytest.raises(InvalidModelError, match="already registered"):
        register_method(Method("echo", build_echo))


def test_unknown_method_is_rejected():
    config = StudyConfig.from_dict(SMALL.to_dict() | {"methods": ["no-such-method"]})

    with pytest.raises(InvalidModelError, match="Unknown method"):
        run_study(config, scheduler="serial")


# ---------------------------------------------------------------------------------------------
# Summaries


def synthetic_records(n_draws, n_experiments, within, between, sigma, seed):
    """Records with kappa = truth + draw offset + noise, all fits finished."""
    rng = np.random.default_rng(seed)
    offsets = rng.normal(0.0, between, n_draws)
    records = []
    for draw in range(n_draws):
        for experiment in range(n_experiments):
            kappa = 0.1 + offsets[draw] + rng.normal(0.0, within)
            records.append(
                {
                    "record": "fit",
                    "draw": draw,
                    "experiment": experiment,
                    "method": "synthetic",
                    "kappa_true": 0.1,
                    "kappa": kappa,
                    "sigma": sigma,
                    "converged": True,
                    "z_interval": (kappa - 0.1) / sigma,
                    "intervals": {"68.3": [kappa - sigma, kappa + sigma]},
                    "error": None,
                    "seconds": 0.1,
                }
            )
    return records, offsets


def test_summary_separates_within_and_between_draw_scatter():
    records, offsets = synthetic_records(400, 40, within=0.01, between=0.02, sigma=0.01, seed=1)

    summary = summarize(records)["synthetic"]

    # 400 draws: the relative error of a standard deviation estimate is about 1/sqrt(2 * 400)
    # = 3.5 %; 10 % is three of those.
    assert summary.within_draw_std == pytest.approx(0.01, rel=0.1)
    assert summary.between_draw_std == pytest.approx(0.02, rel=0.1)
    # A draw with offset o covers with probability P(|o / sigma + N(0, 1)| < 1); the binomial
    # error of the mean over 16 000 fits is below 0.004, so 0.015 is about four of those.
    shifts = offsets / 0.01
    expected = np.mean(stats.norm.cdf(1 - shifts) - stats.norm.cdf(-1 - shifts))
    assert summary.coverage_wald["68.3"] == pytest.approx(expected, abs=0.015)
    assert summary.coverage_interval["68.3"] == pytest.approx(summary.coverage_wald["68.3"])
    assert summary.pull_std == pytest.approx(math.sqrt(5), rel=0.1)


def test_summary_counts_failed_fits():
    records, _ = synthetic_records(3, 4, within=0.01, between=0.0, sigma=0.01, seed=2)
    records[0] = records[0] | {"converged": False}
    records[1] = {key: records[1][key] for key in ("record", "draw", "experiment", "method")} | {
        "kappa_true": 0.1,
        "converged": False,
        "error": "ValueError: broken",
    }
    records[2] = records[2] | {"sigma": None}

    summary = summarize(records)["synthetic"]

    assert summary.n_fits == 12
    assert summary.n_failed == 3
    assert summary.n_finished == 9


def test_format_table_lists_every_method(reference):
    table = format_table(summarize(reference.fits, SMALL.methods))

    for method in SMALL.methods:
        assert method in table
    assert "Wald 68.3" in table


def test_plots_are_written(reference, tmp_path):
    plot_coverage(reference.fits, path=tmp_path / "coverage.png")
    plot_pulls(reference.fits, path=tmp_path / "pulls.png")

    assert (tmp_path / "coverage.png").stat().st_size > 0
    assert (tmp_path / "pulls.png").stat().st_size > 0


def test_coverage_command_prints_table(tmp_path):
    from tamm.cli.coverage import coverage

    arguments = [
        "--n-draws", "1", "--n-experiments", "2", "--n-simulations", "2",
        "--methods", "baseline,oracle", "--scheduler", "serial",
        "--output-dir", str(tmp_path), "--quiet",
    ]  # fmt: skip
    result = CliRunner().invoke(coverage, arguments)

    assert result.exit_code == 0, result.output
    assert "oracle" in result.output
    for name in ("results.jsonl", "summary.json", "coverage.png", "pulls.png"):
        assert (tmp_path / name).exists()
    again = CliRunner().invoke(coverage, arguments)
    assert again.exit_code != 0
    assert "--resume" in again.output


def test_unbinned_exact_method_fits_and_intervals():
    config = StudyConfig(
        n_draws=1,
        n_experiments=2,
        methods=("tamm-unbinned-exact",),
        n_signal=1000,
        n_background=10_000,
        n_events_per_simulation=20_000,
    )
    run = run_study(config, scheduler="serial")
    assert len(run.fits) == 2
    for record in run.fits:
        assert record["error"] is None
        assert record["converged"]
        assert record["sigma"] > 0
        low, high = record["intervals"]["68.3"]
        assert low < record["kappa"] < high
        wide_low, wide_high = record["intervals"]["95.4"]
        assert wide_low < low
        assert wide_high > high
        assert math.isfinite(record["z_interval"])


@pytest.mark.parametrize(
    ("plain_method", "sizes"),
    [
        ("tamm-unbinned-exact", {}),
        ("tamm-binned", {"n_simulations": 4, "n_topics": 2}),
    ],
)
def test_jackknife_method_adds_spread(plain_method, sizes):
    jackknife_method = f"{plain_method}-jk"
    config = StudyConfig(
        n_draws=1,
        n_experiments=2,
        methods=(plain_method, jackknife_method),
        n_signal=1000,
        n_background=10_000,
        n_events_per_simulation=20_000,
        **sizes,
    )
    run = run_study(config, scheduler="serial")
    by_method = {(r["method"], r["experiment"]): r for r in run.fits}
    for experiment in range(2):
        plain = by_method[plain_method, experiment]
        total = by_method[jackknife_method, experiment]
        assert total["error"] is None
        assert total["kappa"] == pytest.approx(plain["kappa"], abs=1e-9)
        # The jackknife variance is a sum of squared shifts, positive unless every left-out
        # simulation moved kappa by the same amount.
        assert total["sigma"] > plain["sigma"]


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (
            {"methods": ("tamm-binned-jk",), "n_simulations": 2, "n_topics": 1},
            r"need at least 3 simulations per process; received n_simulations=2",
        ),
        (
            {"methods": ("tamm-binned-jk",), "n_simulations": 4, "n_topics": 4},
            r"learns 4 topics from 3 simulations .* use n_topics <= 3",
        ),
    ],
)
def test_jackknife_methods_check_sizes(changes, message):
    with pytest.raises(InvalidModelError, match=message):
        StudyConfig(**changes)
