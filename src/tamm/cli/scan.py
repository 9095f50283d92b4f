"""``tamm scan``: the profile-likelihood curve of kappa for a workspace JSON file."""

from __future__ import annotations

import json
from pathlib import Path

import click

__all__ = ["scan"]


def __dir__() -> list[str]:
    return __all__


@click.command()
@click.argument("workspace", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--points",
    type=click.IntRange(min=3),
    default=41,
    show_default=True,
    help="Grid values of kappa.",
)
@click.option(
    "--range",
    "kappa_range",
    type=(float, float),
    default=None,
    help="Lowest and highest kappa of the grid [default: best fit +- 3 sigma, within the bounds].",
)
@click.option(
    "--plot",
    "plot_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=Path("scan.png"),
    show_default=True,
    help="Image file of the profile curve.",
)
@click.option(
    "--output-file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Also write the scan and intervals as JSON to this file.",
)
def scan(
    workspace: Path,
    points: int,
    kappa_range: tuple[float, float] | None,
    plot_path: Path,
    output_file: Path | None,
) -> None:
    """Scan the profile likelihood of kappa in WORKSPACE and print its intervals.

    Every nuisance parameter is refitted at each grid value. The 68.3 % and 95.4 % intervals
    are read from the crossings of -2 delta ln L = 1 and 4, truncated at the bounds of kappa.
    """
    import numpy as np
    from matplotlib.figure import Figure

    from tamm.exceptions import TammError
    from tamm.inference.profile import ONE_SIGMA, TWO_SIGMA, profile_interval, profile_scan
    from tamm.pyhf import fit_kappa, load_model

    try:
        model, data = load_model(workspace)
        fit = fit_kappa(model, data, method="scan")
        grid = None
        if kappa_range is not None:
            low, high = sorted(kappa_range)
            grid = np.linspace(low, high, points)
        curve = profile_scan(model, data, grid, n_points=points, fit=fit)
        # The interval ends come from root finding, which places fits at the crossings.
        ends = profile_interval(model, data, fit=fit)
    except TammError as err:
        raise click.ClickException(str(err)) from err

    click.echo(f"{curve.poi_name} = {fit.kappa:.6g} +- {fit.sigma:.3g} (fit: {fit.message})")
    intervals = {}
    for label, cl in (("68.3", ONE_SIGMA), ("95.4", TWO_SIGMA)):
        lower, upper = ends.interval(cl)
        intervals[label] = [lower, upper]
        click.echo(f"{label} % profile interval: [{lower:.6g}, {upper:.6g}]")
    if not curve.converged.all():
        click.echo(
            f"Warning: {int((~curve.converged).sum())} of {curve.converged.size} profile fits "
            "did not converge.",
            err=True,
        )

    figure = Figure(figsize=(6.4, 4.8))
    curve.plot(figure.add_subplot())
    figure.tight_layout()
    figure.savefig(plot_path, dpi=110)
    click.echo(f"Wrote {plot_path}")
    if output_file is not None:
        record = {
            "fit": fit.to_dict(),
            "intervals": intervals,
            "scan": curve.to_dict(),
        }
        output_file.write_text(json.dumps(record, indent=2, allow_nan=True) + "\n")
        click.echo(f"Wrote {output_file}")
