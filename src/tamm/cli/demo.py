"""``tamm demo``: the binned pipeline on the built-in Gaussian toy."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from tamm.demo import DemoConfig

__all__ = ["demo"]


@click.command()
@click.option(
    "--seed",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Master seed of every random step (a non-negative integer).",
)
@click.option(
    "--n-topics",
    type=click.IntRange(min=1),
    default=DemoConfig.n_topics,
    show_default=True,
    help="Topics learned per process.",
)
@click.option(
    "--n-simulations",
    type=click.IntRange(min=1, max=500),
    default=DemoConfig.n_simulations,
    show_default=True,
    help="Biased simulations drawn per process (the topic documents).",
)
@click.option(
    "--output-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("demo-output"),
    show_default=True,
    help="Directory for results.json and demo.png (created if missing).",
)
@click.option("--quiet", is_flag=True, help="Hide the progress bar.")
def demo(seed: int, n_topics: int, n_simulations: int, output_dir: Path, quiet: bool) -> None:
    """Run the binned TAMM pipeline on the built-in Gaussian toy.

    Draws biased simulations, learns topics per process, generates one pseudo-dataset and fits
    kappa with TAMM, with a single simulation per process (baseline) and with the true shapes
    (oracle). Prints a table and writes results.json and demo.png.
    """
    from tqdm.auto import tqdm

    from tamm.demo import run_demo
    from tamm.exceptions import TammError

    try:
        config = DemoConfig(seed=seed, n_topics=n_topics, n_simulations=n_simulations)
        output_dir.mkdir(parents=True, exist_ok=True)
    except TammError as err:
        raise click.BadParameter(str(err)) from err
    except OSError as err:
        msg = f"cannot create the output directory {str(output_dir)!r}: {err.strerror}"
        raise click.BadParameter(msg, param_hint="--output-dir") from err

    with tqdm(total=5, desc="tamm demo", disable=quiet, file=sys.stderr, leave=False) as bar:
        started = False

        def progress(text: str) -> None:
            nonlocal started
            if started:
                bar.update(1)
            started = True
            bar.set_postfix_str(text)

        try:
            result = run_demo(config, output_dir=output_dir, progress=progress)
        except TammError as err:
            raise click.ClickException(str(err)) from err
        bar.update(bar.total - bar.n)

    click.echo(result.table())
    click.echo("")
    click.echo("Hellinger distance of the fitted shapes to the true shapes:")
    for process, row in result.hellinger.items():
        cells = ", ".join(f"{name} {value:.4f}" for name, value in row.items())
        click.echo(f"  {process}: {cells}")
    click.echo(f"\nWrote {output_dir / 'results.json'} and {output_dir / 'demo.png'}")
    if not all(fit.converged for fit in result.fits.values()):
        click.echo("Warning: at least one fit did not converge; see the status column.", err=True)
