"""Speed, memory and accuracy of the ratio ensemble on the Gaussian toy.

Prints, for K biased simulations per process (2K classes):

1. the time of one training epoch of one member (training pass plus validation pass), with
   ``--events`` events per simulation (1e6 by default, the size used for arXiv 2604.02219);
2. the wall time and peak resident memory of the calibration of an ensemble of ``--members``
   members, with ``--calibration-events`` held-out events per simulation (all classes pooled
   form the reference);
3. the time of ``CalibratedEnsemble.log_ratios`` on 55 000 data events and 500 000 reference
   events inside the fiducial region;
4. the RMS difference between the log ratios and the exact log(p_j / p_ref) of the toy's
   Gaussians, before calibration (the member average) and after, on pooled uncut events, and
   with the acceptance correction on pooled events inside the region. This is reported for the
   speed ensemble (``--speed-epochs`` epochs) and for an ensemble trained to early stopping
   on ``--accuracy-events`` events per simulation.

For comparison, timings have been quoted for the authors' reference implementation of arXiv
2604.02219, which were not measured here. One training epoch of one member on 20 x 1e6 events
took about 280 s on one thread, and the calibration took 490 s with 12.6 GB resident.

Run: ``python benchmarks/bench_ratios.py [--threads N] [--quick]``. Timings depend on the
machine and on other load; the script prints the CPU count and the thread setting.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Self

import numpy as np
from scipy import integrate, stats


def _parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--k", type=int, default=10, help="simulations per process (default 10)")
    parser.add_argument(
        "--events", type=int, default=1_000_000, help="events per simulation, speed run"
    )
    parser.add_argument("--members", type=int, default=4, help="ensemble members (default 4)")
    parser.add_argument(
        "--speed-epochs", type=int, default=1, help="epochs per member in the speed run"
    )
    parser.add_argument(
        "--calibration-events",
        type=int,
        default=100_000,
        help="held-out events per simulation (default 1e5)",
    )
    parser.add_argument(
        "--accuracy-events",
        type=int,
        default=100_000,
        help="events per simulation, accuracy run (0 skips it)",
    )
    parser.add_argument(
        "--accuracy-max-epochs", type=int, default=100, help="epoch limit of the accuracy run"
    )
    parser.add_argument(
        "--threads", type=int, default=None, help="TensorFlow intra- and inter-op threads"
    )
    parser.add_argument("--seed", type=int, default=2024, help="master seed")
    parser.add_argument(
        "--quick", action="store_true", help="small sizes, for a smoke test of this script"
    )
    parser.add_argument("--output", default=None, help="also write the numbers to this JSON file")

    args = parser.parse_args()
    if args.quick:
        args.k, args.events, args.calibration_events = 3, 20_000, 2_000
        args.accuracy_events, args.accuracy_max_epochs = 20_000, 3
    return args


class _PeakMemory:
    """Sample the resident set size of this process every 20 ms; report the peak."""

    def __init__(self) -> None:
        import psutil

        self._process = psutil.Process()
        self.start = self._process.memory_info().rss
        self.peak = self.start
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._process.memory_info().rss)
            self._stop.wait(0.02)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._process.memory_info().rss)


@contextmanager
def _timer(results: dict, key: str):
    started = time.perf_counter()
    yield
    results[key] = time.perf_counter() - started


def _box_acceptance(mean: np.ndarray, cov: np.ndarray, limits) -> float:
    """Exact probability of a bivariate normal inside a box (1-D quadrature of the conditional)."""
    (low_x, high_x), (low_y, high_y) = limits
    sigma_x, sigma_y = math.sqrt(cov[0, 0]), math.sqrt(cov[1, 1])
    rho = cov[0, 1] / (sigma_x * sigma_y)
    conditional_sigma = sigma_y * math.sqrt(1 - rho**2)

    def integrand(x: float) -> float:
        centre = mean[1] + rho * sigma_y / sigma_x * (x - mean[0])
        inside = stats.norm.cdf((high_y - centre) / conditional_sigma) - stats.norm.cdf(
            (low_y - centre) / conditional_sigma
        )
        return float(stats.norm.pdf(x, mean[0], sigma_x) * inside)

    value, _ = integrate.quad(integrand, low_x, high_x, epsabs=1e-12, epsrel=1e-10)
    return value


def _true_log_ratios(toy, classes, events: np.ndarray) -> np.ndarray:
    log_densities = np.column_stack(
        [
            stats.multivariate_normal(
                *toy.simulation_parameters(info.process, _index(info))
            ).logpdf(events)
            for info in classes
        ]
    )
    peak = log_densities.max(axis=1, keepdims=True)
    return log_densities - (
        peak + np.log(np.mean(np.exp(log_densities - peak), axis=1, keepdims=True))
    )


def _index(info) -> int:
    return int(info.simulation.rsplit("_", 1)[1])


def _accuracy(toy, model, region, seed: int) -> dict:
    """RMS of (estimated - true) log ratios before and after calibration, uncut and in the region."""
    rng = np.random.default_rng(seed)
    classes = model.classes
    # 1e5 fresh events from the equal pool of the simulations (independent of training).
    per_class = 100_000 // len(classes)
    pool = np.concatenate(
        [
            rng.multivariate_normal(
                *toy.simulation_parameters(info.process, _index(info)), size=per_class
            )
            for info in classes
        ]
    )
    truth = _true_log_ratios(toy, classes, pool)
    members = model.ensemble.log_ratios(pool)
    before = members.mean(axis=0)
    after = model.log_ratios(pool)

    inside = region.contains(pool)
    limits = region.limits
    exact_acceptance = np.array(
        [
            _box_acceptance(*toy.simulation_parameters(info.process, _index(info)), limits)
            for info in classes
        ]
    )
    truth_cut = truth[inside] + np.log(exact_acceptance.mean()) - np.log(exact_acceptance)
    after_cut = model.log_ratios(pool[inside], region)
    before_cut = before[inside] + model.acceptance_correction()

    def rms(a: np.ndarray, b: np.ndarray) -> float:
        return float(np.sqrt(np.mean((a - b) ** 2)))

    return {
        "n_events": len(pool),
        "n_events_inside": int(inside.sum()),
        "rms_uncut_before": rms(before, truth),
        "rms_uncut_after": rms(after, truth),
        "rms_uncut_single_member": float(np.mean([rms(m, truth) for m in members])),
        "rms_region_before": rms(before_cut, truth_cut),
        "rms_region_after": rms(after_cut, truth_cut),
        "max_acceptance_error": float(np.max(np.abs(model.acceptances - exact_acceptance))),
    }


def main() -> None:
    args = _parse_args()
    results: dict = {"settings": vars(args).copy()}

    import tensorflow as tf

    if args.threads is not None:
        tf.config.threading.set_intra_op_parallelism_threads(args.threads)
        tf.config.threading.set_inter_op_parallelism_threads(args.threads)

    from tamm.datasets import GaussianToy
    from tamm.ratios import CalibratedEnsemble, RatioEnsemble, TrainingSettings

    results["machine"] = {
        "cpu_count": os.cpu_count(),
        "affinity": len(os.sched_getaffinity(0)),
        "tensorflow_threads": args.threads or "default (all cores)",
        "load_average_at_start": round(os.getloadavg()[0], 2),
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "numpy": np.__version__,
    }
    print(f"machine: {results['machine']}")

    toy = GaussianToy()
    region = toy.region(bins=None)
    choose_seed, signal_seed, background_seed, data_seed, accuracy_seed = np.random.SeedSequence(
        args.seed
    ).spawn(5)
    indices = toy.choose_simulations(args.k, seed=choose_seed)
    n_total = args.events + args.calibration_events
    with _timer(results, "sampling_seconds"):
        sets = [
            toy.simulations("signal", indices, n_events=n_total, seed=signal_seed),
            toy.simulations("background", indices, n_events=n_total, seed=background_seed),
        ]
    n_classes = 2 * args.k
    print(
        f"\n{n_classes} classes, {n_total:,} uncut events per simulation ({args.calibration_events:,} held out)"
    )

    # 1. Training speed.
    fraction = args.calibration_events / n_total
    speed_settings = TrainingSettings(
        n_members=args.members,
        max_epochs=args.speed_epochs,
        calibration_fraction=fraction,
        max_calibration_events=args.calibration_events,
    )
    with _timer(results, "training_seconds"):
        ensemble = RatioEnsemble.train(sets, settings=speed_settings, seed=args.seed, progress=True)
    epoch_seconds = [s for record in ensemble.records for s in record.epoch_seconds]
    n_train = sum(info.n_train for info in ensemble.classes)
    results["epoch_seconds"] = epoch_seconds
    print("\n1. training")
    print(
        f"   training events per epoch: {n_train:,} (+ {sum(i.n_validation for i in ensemble.classes):,} validation)"
    )
    print(
        f"   one epoch of one member: mean {np.mean(epoch_seconds):.1f} s, min {np.min(epoch_seconds):.1f} s"
    )
    print(
        f"   total training of {args.members} members x {args.speed_epochs} epoch(s): {results['training_seconds']:.1f} s"
    )
    print(
        "   reference implementation (quoted): about 280 s per epoch on 20 x 1e6 events, one thread"
    )

    # 2. Calibration time and memory.
    with _PeakMemory() as memory, _timer(results, "calibration_seconds"):
        model = CalibratedEnsemble.calibrate(ensemble, sets, region=region, progress=True)
    results["calibration_rss_before_gib"] = memory.start / 2**30
    results["calibration_rss_peak_gib"] = memory.peak / 2**30
    results["process_max_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print("\n2. calibration")
    print(
        f"   {n_classes} classes x {args.members} members, reference = pool of "
        f"{n_classes * args.calibration_events:,} held-out events"
    )
    print(
        f"   wall time {results['calibration_seconds']:.1f} s (network evaluation and {n_classes} BFGS fits)"
    )
    print(
        f"   resident memory: {results['calibration_rss_before_gib']:.2f} GiB before, "
        f"{results['calibration_rss_peak_gib']:.2f} GiB peak during calibration "
        f"(includes the {n_classes * n_total * 2 * 8 / 2**30:.2f} GiB of simulated events and TensorFlow)"
    )
    print(f"   BFGS iterations per class: {[fit.n_iterations for fit in model.fits]}")
    print(f"   all converged: {all(fit.converged for fit in model.fits)}")
    print("   reference implementation (quoted): 490 s and 12.6 GB resident")

    # 3. Evaluation speed.
    data = toy.pseudo_data(5000, 50_000, seed=data_seed).events
    pooled_inside = np.concatenate(
        [sim.events[region.contains(sim.events)][:25_000] for s in sets for sim in s]
    )
    reference = pooled_inside[:500_000]
    model.log_ratios(data[:10], region)  # trace the evaluation functions once
    with _timer(results, "log_ratios_data_seconds"):
        model.log_ratios(data, region)
    with _timer(results, "log_ratios_reference_seconds"):
        model.log_ratios(reference, region)
    print("\n3. log_ratios")
    print(f"   {len(data):,} data events: {results['log_ratios_data_seconds']:.2f} s")
    print(
        f"   {len(reference):,} reference events: {results['log_ratios_reference_seconds']:.2f} s"
    )

    # 4. Accuracy against the exact Gaussian ratios.
    print("\n4. accuracy (RMS of estimated minus exact log ratio, nats)")
    results["accuracy_speed_ensemble"] = _accuracy(
        toy, model, region, seed=int(accuracy_seed.generate_state(1)[0])
    )
    _print_accuracy(
        f"speed ensemble ({args.speed_epochs} epoch(s), {args.events:,} training+validation events)",
        results["accuracy_speed_ensemble"],
    )
    del model, ensemble, sets

    if args.accuracy_events > 0:
        small_seed_s, small_seed_b = accuracy_seed.spawn(2)
        small_sets = [
            toy.simulations("signal", indices, n_events=args.accuracy_events, seed=small_seed_s),
            toy.simulations(
                "background", indices, n_events=args.accuracy_events, seed=small_seed_b
            ),
        ]
        from tamm.ratios import train_ratios

        settings = TrainingSettings(n_members=args.members, max_epochs=args.accuracy_max_epochs)
        with _timer(results, "accuracy_training_seconds"):
            accurate = train_ratios(
                small_sets, region=region, settings=settings, seed=args.seed + 1, progress=True
            )
        epochs = [record.n_epochs for record in accurate.ensemble.records]
        best = [record.best_epoch + 1 for record in accurate.ensemble.records]
        results["accuracy_epochs"] = {"run": epochs, "best": best}
        results["accuracy_early_stopped"] = _accuracy(toy, accurate, region, seed=args.seed + 2)
        _print_accuracy(
            f"early-stopped ensemble ({args.accuracy_events:,} events per simulation, epochs run {epochs}, "
            f"best {best}, {results['accuracy_training_seconds']:.0f} s)",
            results["accuracy_early_stopped"],
        )

    results["load_average_at_end"] = round(os.getloadavg()[0], 2)
    print(f"\nload average (1 min) at the end: {results['load_average_at_end']}")
    if args.output:
        Path(args.output).write_text(json.dumps(results, indent=2), encoding="utf-8")
        print(f"\nwrote {args.output}")


def _print_accuracy(title: str, numbers: dict) -> None:
    print(f"   {title}:")
    print(
        f"     uncut, {numbers['n_events']:,} pooled events: member average {numbers['rms_uncut_before']:.4f}, "
        f"calibrated {numbers['rms_uncut_after']:.4f} (single member {numbers['rms_uncut_single_member']:.4f})"
    )
    print(
        f"     inside the region, {numbers['n_events_inside']:,} events, acceptance-corrected: member average "
        f"{numbers['rms_region_before']:.4f}, calibrated {numbers['rms_region_after']:.4f}"
    )
    print(f"     largest |acceptance - exact acceptance|: {numbers['max_acceptance_error']:.2e}")


if __name__ == "__main__":
    main()
