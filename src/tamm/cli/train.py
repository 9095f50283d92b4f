"""``tamm train``: train and calibrate the ratio ensemble of the unbinned engine, then save it.

For a ``tamm fit`` analysis, ``--analysis CONFIG`` reads the simulation trees that the analysis
configuration names, trains the ensemble and the baseline network with its ``unbinned``
settings, and saves both where ``tamm fit CONFIG`` looks for them (``unbinned.model_dir``, by
default ``<output_dir>/ratio_models``).

Otherwise the simulations come from ``.npz`` files (named in a YAML or JSON config, or with
``--simulation PROCESS=FILE``) or from the built-in Gaussian toy (``--toy``). Each ``.npz``
file contains one simulation: an ``events`` array of shape ``(n_events, n_observables)`` and,
optionally, a ``weights`` array of shape ``(n_events,)``. A config file looks like::

    seed: 1
    observables: [x1, x2]            # optional column names
    processes:                       # one class per file, in this order
      signal: [signal_000.npz, signal_001.npz]
      background:
        - background_000.npz
        - {file: background_001.npz, events: events, weights: weights, name: bkg_1}
    region:                          # optional: fiducial region for the acceptances
      observables: [x1, x2]
      limits: [[-2, 2], [-2, 2]]
    training: {n_members: 4, max_epochs: 100}   # any TrainingSettings field

Relative file names are resolved against the config file's directory. Options given on the
command line override the config.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import click

__all__ = ["train"]


def __dir__() -> list[str]:
    return __all__


_SETTING_OPTIONS = (
    "n_members",
    "max_epochs",
    "patience",
    "batch_size",
    "learning_rate",
    "hidden_units",
    "validation_fraction",
    "calibration_fraction",
    "max_calibration_events",
)


def _parse_hidden_units(
    _ctx: click.Context, _param: click.Parameter, value: str | None
) -> tuple[int, ...] | None:
    if value is None:
        return None
    try:
        units = tuple(int(part) for part in value.split(","))
    except ValueError as err:
        msg = f"expected comma-separated layer widths such as 64,64,64; received {value!r}."
        raise click.BadParameter(msg) from err
    return units


@click.command("train")
@click.option(
    "--config",
    "config_path",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="YAML or JSON file naming the .npz simulation files per process, the region, the seed and training settings.",
)
@click.option(
    "--simulation",
    "simulation_specs",
    multiple=True,
    metavar="PROCESS=FILE",
    help="Simulation file of PROCESS (.npz with an 'events' array). Repeat for every simulation.",
)
@click.option(
    "--analysis",
    "analysis_path",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Analysis configuration of `tamm fit`: train the unbinned engine's ratio models for it.",
)
@click.option("--toy", is_flag=True, help="Train on the built-in Gaussian toy instead of files.")
@click.option(
    "--n-simulations",
    type=click.IntRange(min=1, max=500),
    default=10,
    show_default=True,
    help="With --toy: biased simulations drawn per process.",
)
@click.option(
    "--n-events",
    type=click.IntRange(min=10),
    default=1_000_000,
    show_default=True,
    help="With --toy: events drawn per simulation (before any fiducial cut).",
)
@click.option(
    "--seed",
    type=click.IntRange(min=0),
    default=None,
    help="Master seed of every random step [default: the config's seed, else 0].",
)
@click.option(
    "--observables", default=None, help="Comma-separated observable names, in column order."
)
@click.option(
    "--region-limits",
    type=(float, float),
    multiple=True,
    metavar="LOW HIGH",
    help="Fiducial limits of one observable. Repeat once per observable, in column order.",
)
@click.option(
    "--n-members",
    type=click.IntRange(min=1),
    default=None,
    help="Bootstrap members of the ensemble [default: 4].",
)
@click.option(
    "--max-epochs",
    type=click.IntRange(min=1),
    default=None,
    help="Maximum training epochs per member [default: 100].",
)
@click.option(
    "--patience",
    type=click.IntRange(min=1),
    default=None,
    help="Epochs without improvement before stopping [default: 10].",
)
@click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    default=None,
    help="Events per gradient step [default: 4096].",
)
@click.option(
    "--learning-rate",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Adam learning rate [default: 0.001].",
)
@click.option(
    "--hidden-units",
    callback=_parse_hidden_units,
    default=None,
    help="Comma-separated widths of the hidden layers [default: 64,64,64].",
)
@click.option(
    "--validation-fraction",
    type=float,
    default=None,
    help="Share of each simulation's non-calibration events used for early stopping [default: 0.1].",
)
@click.option(
    "--calibration-fraction",
    type=float,
    default=None,
    help="Share of each simulation held out for the calibration [default: 0.1].",
)
@click.option(
    "--max-calibration-events",
    type=click.IntRange(min=1),
    default=None,
    help="Upper limit of held-out calibration events per simulation [default: 100000].",
)
@click.option(
    "--output-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Directory the model is saved to (manifest.json and member_<m>.keras). Required "
    "except with --analysis, whose default is the analysis's model folder.",
)
@click.option("--overwrite", is_flag=True, help="Replace an existing model in --output-dir.")
@click.option(
    "--output-file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write the JSON summary to this file instead of stdout.",
)
@click.option("--quiet", is_flag=True, help="Hide the progress bars.")
def train(
    config_path: Path | None,
    simulation_specs: tuple[str, ...],
    analysis_path: Path | None,
    toy: bool,
    n_simulations: int,
    n_events: int,
    seed: int | None,
    observables: str | None,
    region_limits: tuple[tuple[float, float], ...],
    output_dir: Path | None,
    overwrite: bool,
    output_file: Path | None,
    quiet: bool,
    **setting_options: Any,
) -> None:
    """Train and calibrate the ratio ensemble, save it, and print a JSON summary.

    One class per simulation of every process. The networks train on the uncut events and
    are calibrated on held-out events. With a region (from the config, --region-limits, or the
    toy's fiducial square), the acceptances for the fiducial correction are stored as well.
    """
    from tamm.exceptions import TammError

    sources = sum([config_path is not None, bool(simulation_specs), toy, analysis_path is not None])
    if sources != 1:
        msg = "Give exactly one source of simulations: --analysis CONFIG, --config FILE, --simulation PROCESS=FILE (repeated), or --toy."
        raise click.UsageError(msg)
    if analysis_path is not None:
        if observables is not None or region_limits:
            msg = "--observables and --region-limits do not apply with --analysis; the analysis configuration sets them."
            raise click.UsageError(msg)
        summary = _run_analysis_job(
            analysis_path,
            seed=seed,
            output_dir=output_dir,
            overwrite=overwrite,
            progress=not quiet,
            setting_options=setting_options,
        )
        _report(summary, output_file)
        return
    if output_dir is None:
        msg = "Missing option '--output-dir': name the directory to save the model to."
        raise click.UsageError(msg)
    occupied = output_dir.exists() and not (output_dir.is_dir() and not any(output_dir.iterdir()))
    if occupied and not overwrite:
        msg = f"{output_dir} already exists; pass --overwrite to replace the model there, or choose another --output-dir."
        raise click.UsageError(msg)

    try:
        if toy:
            job = _toy_job(
                n_simulations=n_simulations, n_events=n_events, seed=0 if seed is None else seed
            )
        elif config_path is not None:
            job = _config_job(config_path, seed=seed)
        else:
            job = _options_job(simulation_specs, seed=0 if seed is None else seed)
        names = (
            None if observables is None else tuple(name.strip() for name in observables.split(","))
        )
        job = _apply_overrides(
            job, names=names, region_limits=region_limits, setting_options=setting_options
        )
        summary = _run(job, output_dir=output_dir, overwrite=overwrite, progress=not quiet)
    except TammError as err:
        raise click.ClickException(str(err)) from err
    _report(summary, output_file)


def _report(summary: Mapping[str, Any], output_file: Path | None) -> None:
    text = json.dumps(summary, indent=2, allow_nan=False)
    if output_file is None:
        click.echo(text)
    else:
        output_file.write_text(text + "\n", encoding="utf-8")
        click.echo(f"Wrote {output_file}", err=True)
    if not summary["all_converged"]:
        click.echo(
            "Warning: the calibration of at least one class did not converge; see the summary.",
            err=True,
        )


def _run_analysis_job(
    path: Path,
    *,
    seed: int | None,
    output_dir: Path | None,
    overwrite: bool,
    progress: bool,
    setting_options: Mapping[str, Any],
) -> dict[str, Any]:
    """Train and save the ratio models of the unbinned engine for an analysis configuration."""
    from dataclasses import replace

    from tamm._version import __version__
    from tamm.exceptions import TammError
    from tamm.io.config import load_config
    from tamm.unbinned_analysis import read_simulations, train_ratio_models

    try:
        config = load_config(path).with_overrides(seed=seed)
        training = dict(config.unbinned.training)
        training.update(
            {name: value for name, value in setting_options.items() if value is not None}
        )
        unbinned = replace(config.unbinned, training=training)
        if output_dir is not None:
            unbinned = replace(unbinned, model_dir=output_dir.resolve())
        config = replace(config, unbinned=unbinned)
        directory = config.ratio_model_dir
        if directory.exists() and any(directory.iterdir()) and not overwrite:
            msg = f"{directory} already holds files; pass --overwrite to replace the models there, or choose another --output-dir."
            raise click.UsageError(msg)
        started = time.perf_counter()
        simulations = read_simulations(config)
        read = time.perf_counter() - started
        models = train_ratio_models(config, simulations, directory=directory, progress=progress)
    except TammError as err:
        raise click.ClickException(str(err)) from err
    return {
        "output_dir": str(directory),
        "tamm_version": __version__,
        "source": {"analysis": str(path)},
        "simulations": {process: sims.names for process, sims in simulations.items()},
        "region": config.region.to_dict(),
        "n_classes": models.ensemble.n_classes,
        "n_members": models.ensemble.n_members,
        "classes": models.ensemble.describe_classes(),
        "all_converged": all(fit.converged for fit in models.ensemble.fits)
        and models.baseline.fit.converged,
        "training": {**models.training, "read_seconds": read},
    }


def _toy_job(*, n_simulations: int, n_events: int, seed: int) -> dict[str, Any]:
    import numpy as np

    from tamm.datasets import GaussianToy

    gaussian = GaussianToy()
    choose_seed, signal_seed, background_seed, train_seed = np.random.SeedSequence(seed).spawn(4)
    indices = gaussian.choose_simulations(n_simulations, seed=choose_seed)
    sets = [
        gaussian.simulations("signal", indices, n_events=n_events, seed=signal_seed),
        gaussian.simulations("background", indices, n_events=n_events, seed=background_seed),
    ]
    return {
        "sets": sets,
        "region": gaussian.region(bins=None),
        "seed": int(train_seed.generate_state(1)[0]),
        "settings": {},
        "source": {
            "toy": True,
            "seed": seed,
            "simulation_indices": indices.tolist(),
            "n_events": n_events,
        },
    }


def _read_config(path: Path) -> dict[str, Any]:
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        msg = f"{path} is not valid YAML or JSON: {err}"
        raise click.ClickException(msg) from err
    if not isinstance(data, Mapping):
        msg = f"{path} must contain a mapping with a 'processes' entry; received {type(data).__name__}."
        raise click.ClickException(msg)
    unknown = sorted(set(data) - {"seed", "observables", "processes", "region", "training"})
    if unknown:
        msg = f"{path}: unknown entries {unknown}; valid entries are seed, observables, processes, region, training."
        raise click.ClickException(msg)
    return dict(data)


def _config_job(path: Path, *, seed: int | None) -> dict[str, Any]:
    from tamm.samples import Region

    config = _read_config(path)
    processes = config.get("processes")
    if not isinstance(processes, Mapping) or not processes:
        msg = f"{path}: 'processes' must map each process name to a list of .npz files."
        raise click.ClickException(msg)
    entries: list[tuple[str, Any]] = []
    for process, files in processes.items():
        if not isinstance(files, Sequence) or isinstance(files, str) or not files:
            msg = f"{path}: process {process!r} must list at least one .npz file."
            raise click.ClickException(msg)
        entries.extend((str(process), spec) for spec in files)

    settings = config.get("training") or {}
    if not isinstance(settings, Mapping):
        msg = f"{path}: 'training' must be a mapping of training settings."
        raise click.ClickException(msg)
    region = (
        None
        if config.get("region") is None
        else _region_from_config(path, config["region"], Region)
    )
    return {
        "sets": _load_sets(entries, base=path.parent, observables=config.get("observables")),
        "region": region,
        "seed": _config_seed(path, config.get("seed", 0)) if seed is None else seed,
        "settings": dict(settings),
        "source": {"config": str(path)},
    }


def _config_seed(path: Path, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        msg = f"{path}: 'seed' must be a non-negative integer; received {value!r}."
        raise click.ClickException(msg)
    return value


def _region_from_config(path: Path, data: Any, region_class: Any) -> Any:
    if not isinstance(data, Mapping) or "observables" not in data or "limits" not in data:
        msg = f"{path}: 'region' needs 'observables' and 'limits' entries."
        raise click.ClickException(msg)
    return region_class(data["observables"], [tuple(pair) for pair in data["limits"]])


def _options_job(specs: Sequence[str], *, seed: int) -> dict[str, Any]:
    entries = []
    for spec in specs:
        process, separator, file = spec.partition("=")
        if not separator or not process or not file:
            msg = f"--simulation expects PROCESS=FILE; received {spec!r}."
            raise click.BadParameter(msg, param_hint="--simulation")
        entries.append((process, file))
    return {
        "sets": _load_sets(entries, base=Path.cwd(), observables=None),
        "region": None,
        "seed": seed,
        "settings": {},
        "source": {"files": list(specs)},
    }


def _load_sets(entries: Sequence[tuple[str, Any]], *, base: Path, observables: Any) -> list[Any]:
    from tamm.samples import Simulation, SimulationSet

    by_process: dict[str, list[Simulation]] = {}
    for process, spec in entries:
        item = {"file": spec} if isinstance(spec, str) else spec
        if not isinstance(item, Mapping) or "file" not in item:
            msg = f"Simulation entry {spec!r} of {process!r} must be a file name or a mapping with a 'file' entry."
            raise click.ClickException(msg)
        file = Path(item["file"])
        file = file if file.is_absolute() else base / file
        events, weights = _read_npz(
            file, events_key=item.get("events"), weights_key=item.get("weights")
        )
        by_process.setdefault(process, []).append(
            Simulation(
                events,
                weights=weights,
                name=str(item.get("name", file.stem)),
                settings={"file": str(file)},
                observables=None if observables is None else tuple(observables),
            )
        )
    return [SimulationSet(sims, process=process) for process, sims in by_process.items()]


def _read_npz(file: Path, *, events_key: str | None, weights_key: str | None) -> tuple[Any, Any]:
    import numpy as np

    try:
        with np.load(file, allow_pickle=False) as archive:
            keys = list(archive.keys())
            key = events_key or ("events" if "events" in keys else None)
            if key is None and len(keys) == 1:
                key = keys[0]
            if key is None or key not in keys:
                msg = (
                    f"{file} has arrays {keys} but no events array {events_key or 'events'!r}; "
                    "name it 'events' or set 'events: NAME' in the config."
                )
                raise click.ClickException(msg)
            events = archive[key]
            if weights_key is not None and weights_key not in keys:
                msg = f"{file} has no weights array {weights_key!r}; its arrays are {keys}."
                raise click.ClickException(msg)
            wkey = weights_key or ("weights" if "weights" in keys else None)
            weights = None if wkey is None else archive[wkey]
    except FileNotFoundError as err:
        msg = f"Simulation file {file} not found."
        raise click.ClickException(msg) from err
    except (OSError, ValueError) as err:
        msg = f"Cannot read {file} as a .npz archive without pickle: {err}"
        raise click.ClickException(msg) from err
    return events, weights


def _apply_overrides(
    job: dict[str, Any],
    *,
    names: tuple[str, ...] | None,
    region_limits: tuple[tuple[float, float], ...],
    setting_options: Mapping[str, Any],
) -> dict[str, Any]:
    from tamm.samples import Region, Simulation, SimulationSet

    if names is not None:
        job["sets"] = [
            SimulationSet(
                [
                    Simulation(
                        s.events, s.weights, name=s.name, settings=s.settings, observables=names
                    )
                    for s in simulation_set
                ],
                process=simulation_set.process,
            )
            for simulation_set in job["sets"]
        ]
    if region_limits:
        observables = (
            names
            or job["sets"][0][0].observables
            or tuple(f"x{i}" for i in range(len(region_limits)))
        )
        job["region"] = Region(observables, list(region_limits))
    for name in _SETTING_OPTIONS:
        value = setting_options.get(name)
        if value is not None:
            job["settings"][name] = value
    return job


def _run(
    job: Mapping[str, Any], *, output_dir: Path, overwrite: bool, progress: bool
) -> dict[str, Any]:
    from tamm._version import __version__
    from tamm.ratios import CalibratedEnsemble, RatioEnsemble, TrainingSettings

    settings = TrainingSettings.from_dict(job["settings"])
    started = time.perf_counter()
    ensemble = RatioEnsemble.train(
        job["sets"], settings=settings, seed=job["seed"], progress=progress
    )
    trained = time.perf_counter()
    model = CalibratedEnsemble.calibrate(
        ensemble, job["sets"], region=job["region"], progress=progress
    )
    calibrated = time.perf_counter()
    model.save(output_dir, overwrite=overwrite)
    finished = time.perf_counter()

    classes = model.describe_classes()
    members = [
        {
            "index": record.index,
            "n_epochs": record.n_epochs,
            "best_epoch": record.best_epoch,
            "best_validation_loss": record.best_validation_loss,
            "seconds": sum(record.epoch_seconds),
        }
        for record in ensemble.records
    ]
    return {
        "output_dir": str(output_dir),
        "tamm_version": __version__,
        "source": job["source"],
        "seed": ensemble.seed,
        "settings": settings.to_dict(),
        "region": None if model.region is None else model.region.to_dict(),
        "n_classes": model.n_classes,
        "n_members": model.n_members,
        "classes": classes,
        "members": members,
        "all_converged": all(fit.converged for fit in model.fits),
        "timing_seconds": {
            "training": trained - started,
            "calibration": calibrated - trained,
            "saving": finished - calibrated,
        },
    }
