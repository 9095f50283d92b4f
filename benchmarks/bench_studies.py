"""Time pseudo-experiment studies: the binned engine on a process pool and on Dask.

Run with ``python benchmarks/bench_studies.py``. Three measurements, each printed with the
machine's load average before and after (other jobs on a shared machine slow every number):

1. ``tamm-binned`` alone, 10 draws x 100 pseudo-experiments (1000 fits, each with its 68.3 %
   and 95.4 % profile intervals and q at the true kappa) on a local process pool;
2. the same study on a Dask LocalCluster with the same number of workers, and whether its
   numbers equal those of the pool;
3. wall time per pseudo-experiment of every method, from a smaller study with all methods.

``--quick`` runs 2 draws x 20 pseudo-experiments instead. The script asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from tamm.studies import StudyConfig, run_study

NUMBERS = ("kappa", "sigma", "z_interval", "intervals", "hellinger_signal")


def load() -> str:
    one_minute, five_minutes, _ = os.getloadavg()
    return f"load average {one_minute:.2f} (1 min), {five_minutes:.2f} (5 min)"


def timed_study(config: StudyConfig, scheduler: str, workers: int, folder: Path):
    before = load()
    start = time.perf_counter()
    run = run_study(config, output_dir=folder, scheduler=scheduler, workers=workers)
    wall = time.perf_counter() - start
    fits = len(run.fits)
    prepare = run.timings.get("prepare_draws", float("nan"))
    print(
        f"  {scheduler:<11} {workers} workers: {fits} fits in {wall:7.1f} s wall "
        f"({wall / fits * 1e3:6.1f} ms per fit); draw preparation {prepare:6.1f} s of worker "
        f"time; {before} -> {load()}"
    )
    return run, wall


def same_numbers(first, second) -> bool:
    def key(record):
        return record["draw"], record["experiment"], record["method"]

    left = {key(r): [r.get(name) for name in NUMBERS] for r in first.fits}
    right = {key(r): [r.get(name) for name in NUMBERS] for r in second.fits}
    return left == right


def per_method_times(runs) -> None:
    by_method: dict[str, list[float]] = {}
    for run in runs:
        for record in run.fits:
            by_method.setdefault(record["method"], []).append(float(record["seconds"]))
    print("  wall time per pseudo-experiment and method (fit + profile intervals), in a worker:")
    for method, seconds in by_method.items():
        print(
            f"    {method:<15} median {statistics.median(seconds) * 1e3:7.1f} ms   "
            f"mean {np.mean(seconds) * 1e3:7.1f} ms   (n={len(seconds)})"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 draws x 20 experiments")
    parser.add_argument("--workers", type=int, default=2, help="worker processes")
    parser.add_argument("--skip-dask", action="store_true", help="only the process pool")
    options = parser.parse_args()

    n_draws, n_experiments = (2, 20) if options.quick else (10, 100)
    print(
        f"tamm study benchmark on {platform.machine()} with {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}; {load()}"
    )
    binned = StudyConfig(n_draws=n_draws, n_experiments=n_experiments, methods=("tamm-binned",))
    print(
        f"\n1-2. tamm-binned, {n_draws} draws x {n_experiments} pseudo-experiments "
        "(10 simulations and 4 topics per process, 10 x 10 bins):"
    )
    with tempfile.TemporaryDirectory() as folder:
        pool_run, pool_wall = timed_study(binned, "local", options.workers, Path(folder) / "pool")
        if not options.skip_dask:
            dask_run, dask_wall = timed_study(
                binned, "dask-local", options.workers, Path(folder) / "dask"
            )
            print(
                f"  Dask / pool wall time: {dask_wall / pool_wall:.3f}; identical numbers: "
                f"{same_numbers(pool_run, dask_run)}"
            )

    print("\n3. every method, 2 draws x 10 pseudo-experiments:")
    methods = StudyConfig(n_draws=2, n_experiments=10)
    posterior = StudyConfig(n_draws=1, n_experiments=6, methods=("tamm-posterior",))
    with tempfile.TemporaryDirectory() as folder:
        runs = [
            timed_study(methods, "local", options.workers, Path(folder) / "methods")[0],
            timed_study(posterior, "local", options.workers, Path(folder) / "posterior")[0],
        ]
    per_method_times(runs)
    print(
        "  (tamm-posterior: 4 chains x 1500 NUTS steps; the first fit in each worker also "
        "compiles the sampler with XLA)"
    )


if __name__ == "__main__":
    main()
