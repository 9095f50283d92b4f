"""The ``tamm`` command-line interface (click).

One subcommand per job, each in its own module of this package and registered at the end of
this file. Heavy imports (TensorFlow, pyhf, matplotlib) happen inside the subcommands, so
``tamm --help`` and ``tamm --version`` return at once.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import click

from tamm._version import __version__

__all__ = ["cli"]

log = logging.getLogger(__name__)


def __dir__() -> list[str]:
    return __all__


def _configure_logging(verbose: int) -> None:
    # NB: TensorFlow reads this variable once, at its import inside a subcommand. Set it only
    # where the user has not, so TensorFlow's C++ start-up messages stay visible on request.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2" if verbose < 2 else "0")
    level = logging.WARNING - 10 * verbose
    logging.basicConfig(
        level=max(level, logging.DEBUG), format="%(levelname)s %(name)s: %(message)s"
    )


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="tamm")
@click.option("-v", "--verbose", count=True, help="Log more (-v: milestones, -vv: internals).")
def cli(verbose: int) -> None:
    """Template-Adapted Mixture Models: signal fractions from many biased simulations."""
    _configure_logging(verbose)


@cli.command("show")
@click.argument("results", type=click.Path(exists=True, dir_okay=False, path_type=Path))
def show(results: Path) -> None:
    """Print the fits stored in a results.json written by `tamm demo` or `tamm fit`."""
    data = json.loads(results.read_text())
    kappa_true = data.get("kappa_true")
    click.echo(
        "kappa_true = unknown (observed data)"
        if kappa_true is None
        else f"kappa_true = {kappa_true:.5f}"
    )
    for name, fit in data["fits"].items():
        pull = fit.get("pull")
        pull_text = "" if pull is None else f"  pull {pull:6.2f}"
        click.echo(
            f"{name:<14} {fit['kappa']:8.5f} +- {fit['sigma']:.5f}{pull_text}  converged={fit['converged']}"
        )


def _register_commands() -> None:
    from tamm.cli.coverage import coverage
    from tamm.cli.demo import demo
    from tamm.cli.fit import fit
    from tamm.cli.limit import limit
    from tamm.cli.scan import scan
    from tamm.cli.train import train

    for command in (demo, fit, train, scan, limit, coverage):
        cli.add_command(command)


_register_commands()

if __name__ == "__main__":  # pragma: no cover
    cli()
