"""``tamm limit``: the CLs upper limit on kappa and the discovery significance of a workspace."""

from __future__ import annotations

import json
from pathlib import Path

import click

__all__ = ["limit"]


def __dir__() -> list[str]:
    return __all__


@click.command()
@click.argument("workspace", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--toys",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Pseudo-experiments per hypothesis and tested value; 0 uses the asymptotic formulae.",
)
@click.option(
    "--cl",
    type=click.FloatRange(0, 1, min_open=True, max_open=True),
    default=0.95,
    show_default=True,
    help="Confidence level of the limit.",
)
@click.option(
    "--points",
    type=click.IntRange(min=2),
    default=26,
    show_default=True,
    help="Tested values of kappa.",
)
@click.option(
    "--max-kappa",
    type=click.FloatRange(0, 1, min_open=True),
    default=None,
    help="Highest tested kappa [default: best fit + 5 sigma].",
)
@click.option(
    "--seed", type=click.IntRange(min=0), default=0, show_default=True, help="Seed of the toys."
)
@click.option(
    "--output-file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Also write the results as JSON to this file.",
)
def limit(
    workspace: Path,
    toys: int,
    cl: float,
    points: int,
    max_kappa: float | None,
    seed: int,
    output_file: Path | None,
) -> None:
    """Compute the CLs upper limit on kappa and the discovery significance for WORKSPACE.

    The limit uses the qtilde statistic on a linear scan of kappa from 0; the significance
    tests kappa = 0 with q0. Both use pyhf.infer on the numpy backend.
    """
    import numpy as np

    from tamm.exceptions import TammError
    from tamm.inference.limits import discovery_significance, upper_limit
    from tamm.pyhf import load_model

    calctype = "toybased" if toys > 0 else "asymptotics"
    try:
        model, data = load_model(workspace)
        scan = None if max_kappa is None else np.linspace(0.0, max_kappa, points)
        result = upper_limit(
            model,
            data,
            cl=cl,
            scan=scan,
            n_points=points,
            calctype=calctype,
            ntoys=max(toys, 1),
            seed=seed,
        )
        discovery = discovery_significance(
            model, data, calctype=calctype, ntoys=max(toys, 1), seed=seed
        )
    except TammError as err:
        raise click.ClickException(str(err)) from err

    method = f"{toys} toys" if toys else "asymptotic"
    click.echo(f"CLs upper limit on {model.config.poi_name} at {100 * cl:g} % CL ({method}):")
    click.echo(f"  observed  {result.observed:.5g}")
    labels = ("-2 sigma", "-1 sigma", "median", "+1 sigma", "+2 sigma")
    for label, value in zip(labels, result.expected, strict=True):
        click.echo(f"  expected {label:>8}  {value:.5g}")
    significance = discovery.significance
    note = ""
    if toys and discovery.p_value <= 0:
        note = f" (no toy exceeded the data: p < {1 / toys:.2g})"
    click.echo(
        f"Discovery test of {model.config.poi_name} = 0: p = {discovery.p_value:.3g}, "
        f"Z = {significance:.2f}{note}"
    )
    if output_file is not None:
        record = {"upper_limit": result.to_dict(), "discovery": discovery.to_dict()}
        output_file.write_text(json.dumps(record, indent=2, allow_nan=True) + "\n")
        click.echo(f"Wrote {output_file}")
