"""``tamm fit CONFIG``: run a configured analysis (binned and/or unbinned engine) on ROOT files."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

__all__ = ["fit"]


def __dir__() -> list[str]:
    return __all__


# Steps that run_analysis reports per engine (binned: topics, two fits and the jackknife;
# unbinned: events, ratio models and two fits), plus reading and writing.
_ENGINE_STEPS = {"binned": 4, "unbinned": 4}


@click.command()
@click.argument("config", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--output-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Folder for results.json, fit.root, the plots and the saved topics (created if "
    "missing). Overrides output_dir of the configuration.",
)
@click.option(
    "--seed",
    type=click.IntRange(min=0),
    default=None,
    help="Seed of both engines. Overrides binned.seed and unbinned.seed of the configuration.",
)
@click.option(
    "--retrain",
    is_flag=True,
    help="Learn the topics and train the ratio models again even if saved ones exist.",
)
@click.option(
    "--output-file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write the JSON summary to this file instead of standard output.",
)
@click.option("--quiet", is_flag=True, help="Hide the progress bar.")
def fit(
    config: Path,
    output_dir: Path | None,
    seed: int | None,
    retrain: bool,
    output_file: Path | None,
    quiet: bool,
) -> None:
    """Fit the signal fraction kappa of the data that CONFIG (a YAML file) describes.

    Reads the simulations and the data. The binned engine learns topics per process, or
    reloads those that an earlier run with the same inputs saved in the output folder. The
    unbinned engine reloads the ratio models that `tamm train --analysis CONFIG` (or an earlier
    run) saved, or trains them. Each engine fits kappa with TAMM and with a single simulation
    per process, and scans the profile likelihood of kappa. Prints a JSON summary; the full
    record is results.json in the output folder.
    """
    from tqdm.auto import tqdm

    from tamm.analysis import run_analysis
    from tamm.exceptions import TammError
    from tamm.io.config import load_config

    try:
        settings = load_config(config).with_overrides(seed=seed, output_dir=output_dir)
    except TammError as err:
        raise click.ClickException(str(err)) from err
    total = 2 + sum(_ENGINE_STEPS[engine] for engine in settings.engines)
    with tqdm(total=total, desc="tamm fit", disable=quiet, file=sys.stderr, leave=False) as bar:
        started = False

        def progress(text: str) -> None:
            nonlocal started
            if started:
                bar.update(1)
            started = True
            bar.set_postfix_str(text)

        try:
            result = run_analysis(
                settings, retrain=retrain, progress=progress, show_training=not quiet
            )
        except TammError as err:
            raise click.ClickException(str(err)) from err
        bar.update(bar.total - bar.n)

    text = json.dumps(result.summary(), indent=2)
    if output_file is None:
        click.echo(text)
    else:
        output_file.write_text(text + "\n", encoding="utf-8")
        click.echo(f"Wrote the summary to {output_file}", err=True)
    if not all(method.fit.converged for method in result.methods.values()):
        click.echo("Warning: at least one fit did not converge; see results.json.", err=True)
