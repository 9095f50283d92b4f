"""``tamm coverage``: a pseudo-experiment study of bias, pulls and coverage on the Gaussian toy."""

from __future__ import annotations

import json
import signal
import sys
from pathlib import Path

import click

__all__ = ["coverage"]


def __dir__() -> list[str]:
    return __all__


def _method_list(value: str) -> tuple[str, ...]:
    return tuple(name.strip() for name in value.split(",") if name.strip())


def _exit_on_signal(signum: int, _frame: object) -> None:
    """Turn a termination signal into SystemExit, so ``finally`` blocks run."""
    raise SystemExit(128 + signum)


@click.command()
@click.option(
    "--n-draws",
    type=click.IntRange(min=1),
    default=10,
    show_default=True,
    help="Random draws of simulations.",
)
@click.option(
    "--n-experiments",
    type=click.IntRange(min=1),
    default=30,
    show_default=True,
    help="Pseudo-experiments per draw.",
)
@click.option(
    "--methods",
    default="baseline,histosys,tamm-binned,oracle",
    show_default=True,
    help="Comma-separated methods to compare (also: tamm-binned-jk, tamm-unbinned-exact, "
    "tamm-unbinned-exact-jk, tamm-posterior, and registered ones).",
)
@click.option(
    "--scheduler",
    default="local",
    show_default=True,
    help="'local' (process pool), 'dask-local' (Dask LocalCluster on 127.0.0.1), 'serial', or a Dask scheduler address.",
)
@click.option(
    "--workers", type=click.IntRange(min=1), default=2, show_default=True, help="Worker processes."
)
@click.option(
    "--output-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("coverage-output"),
    show_default=True,
    help="Directory for results.jsonl, summary.json, coverage.png and pulls.png.",
)
@click.option(
    "--resume", is_flag=True, help="Continue the study in --output-dir; finished fits are kept."
)
@click.option(
    "--seed",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Master seed of every random step.",
)
@click.option(
    "--n-simulations",
    type=click.IntRange(min=2, max=500),
    default=10,
    show_default=True,
    help="Simulations drawn per process.",
)
@click.option(
    "--n-topics",
    type=click.IntRange(min=1),
    default=4,
    show_default=True,
    help="Topics per process (tamm-binned).",
)
@click.option(
    "--n-components",
    type=click.IntRange(min=1),
    default=3,
    show_default=True,
    help="Principal shape components per process (histosys).",
)
@click.option("--no-profile", is_flag=True, help="Skip the profile-likelihood intervals (faster).")
@click.option("--quiet", is_flag=True, help="Hide the progress bar.")
def coverage(
    n_draws: int,
    n_experiments: int,
    methods: str,
    scheduler: str,
    workers: int,
    output_dir: Path,
    resume: bool,
    seed: int,
    n_simulations: int,
    n_topics: int,
    n_components: int,
    no_profile: bool,
    quiet: bool,
) -> None:
    """Run a pseudo-experiment study and print bias, pulls and coverage per method.

    Each of N_DRAWS draws picks simulations at random and prepares every method. Each of its
    N_EXPERIMENTS pseudo-datasets (5000 signal + 50 000 background events) is then fitted by
    every method. Every fit is appended to OUTPUT_DIR/results.jsonl as it finishes, so an
    interrupted study continues with --resume.
    """
    from tqdm.auto import tqdm

    from tamm.exceptions import TammError
    from tamm.studies import (
        StudyConfig,
        format_table,
        plot_coverage,
        plot_pulls,
        run_study,
        summarize,
    )

    try:
        config = StudyConfig(
            n_draws=n_draws,
            n_experiments=n_experiments,
            methods=_method_list(methods),
            seed=seed,
            n_simulations=n_simulations,
            n_topics=n_topics,
            n_components=n_components,
            profile=not no_profile,
        )
    except TammError as err:
        raise click.BadParameter(str(err)) from err

    with tqdm(
        total=config.n_fits, desc="tamm coverage", unit="fit", disable=quiet, file=sys.stderr
    ) as bar:

        def progress(done: int, total: int) -> None:
            bar.total = total
            bar.update(done - bar.n)

        # A termination signal (kill, a batch system's time limit) exits through the runner's
        # cleanup, which shuts the worker pool down, instead of leaving orphaned workers.
        previous_handler = signal.signal(signal.SIGTERM, _exit_on_signal)
        try:
            run = run_study(
                config,
                output_dir=output_dir,
                scheduler=scheduler,
                workers=workers,
                resume=resume,
                progress=progress,
            )
        except TammError as err:
            raise click.ClickException(str(err)) from err
        finally:
            signal.signal(signal.SIGTERM, previous_handler)

    summaries = summarize(run.fits, config.methods)
    click.echo(
        f"{config.n_draws} draws x {config.n_experiments} pseudo-experiments, "
        f"{config.n_simulations} simulations per process; {run.n_new_fits} new fits in "
        f"{run.seconds:.1f} s ({run.scheduler}, {run.workers} workers)"
    )
    click.echo(format_table(summaries))
    click.echo("\nseconds per fit (with its profile interval):")
    for name, summary in summaries.items():
        click.echo(f"  {name:<15} {summary.seconds_per_fit:.3f}")

    report = {
        "config": config.to_dict(),
        "methods": {name: summary.to_dict() for name, summary in summaries.items()},
        "wall_seconds": run.seconds,
        "scheduler": run.scheduler,
        "workers": run.workers,
    }
    (output_dir / "summary.json").write_text(json.dumps(report, indent=2) + "\n")
    plot_coverage(run.fits, methods=config.methods, path=output_dir / "coverage.png")
    plot_pulls(run.fits, methods=config.methods, path=output_dir / "pulls.png")
    click.echo(f"\nWrote {output_dir / 'results.jsonl'}, summary.json, coverage.png and pulls.png")
    failed = sum(summary.n_failed for summary in summaries.values())
    if failed:
        click.echo(
            f"Warning: {failed} fits failed or did not converge; see results.jsonl.", err=True
        )
