"""``tamm demo``: the binned pipeline on the built-in Gaussian toy."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from tamm.demo import ENGINES, DemoConfig

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
@click.option(
    "--engine",
    type=click.Choice(ENGINES),
    default=DemoConfig.engine,
    show_default=True,
    help="binned: topics and pyhf; unbinned: ratio networks and the geometric mixture.",
)
@click.option("--quiet", is_flag=True, help="Hide the progress bar.")
def demo(
    seed: int, n_topics: int, n_simulations: int, output_dir: Path, engine: str, quiet: bool
) -> None:
    """Run TAMM on the built-in Gaussian toy and compare it with single-simulation fits.

    Generates one pseudo-dataset from nature. The binned engine learns topics per process and
    fits kappa with pyhf; the unbinned engine trains a ratio-network ensemble over the
    simulations and fits the geometric mixture. Each engine also fits a single simulation per
    process (baseline); the binned engine adds the true shapes (oracle). Prints a table and
    writes results.json and demo.png (binned shapes).
    """
    from tqdm.auto import tqdm

    from tamm.demo import run_demo
    from tamm.exceptions import TammError

    try:
        config = DemoConfig(
            seed=seed, n_topics=n_topics, n_simulations=n_simulations, engine=engine
        )
        output_dir.mkdir(parents=True, exist_ok=True)
    except TammError as err:
        raise click.BadParameter(str(err)) from err
    except OSError as err:
        msg = f"cannot create the output directory {str(output_dir)!r}: {err.strerror}"
        raise click.BadParameter(msg, param_hint="--output-dir") from err

    n_steps = {"binned": 4, "unbinned": 4, "both": 7}[engine]
    with tqdm(total=n_steps, desc="tamm demo", disable=quiet, file=sys.stderr, leave=False) as bar:
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
    if result.hellinger:
        click.echo("\nHellinger distance of the fitted binned shapes to the true shapes:")
        for process, row in result.hellinger.items():
            cells = ", ".join(f"{name} {value:.4f}" for name, value in row.items())
            click.echo(f"  {process}: {cells}")
    written = [output_dir / "results.json"]
    if engine != "unbinned":
        written.append(output_dir / "demo.png")
    click.echo("\nWrote " + " and ".join(str(path) for path in written))
    if not all(fit.converged for fit in result.fits.values()):
        click.echo("Warning: at least one fit did not converge; see the status column.", err=True)
