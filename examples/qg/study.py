"""Pseudo-experiment study of the quark/gluon analysis: bias, pulls and coverage of kappa.

For each true signal fraction, the study draws ``--n-datasets`` pseudo-datasets of
``--n-events`` jets without replacement from the "nature" trees (inside the region of the
configuration), fits each with the engines of the configuration (or ``--engines``): TAMM
binned and its single-simulation baseline, and TAMM unbinned and its baseline network. It
reports per method:

- bias: the mean of ``kappa_hat - kappa_true``, with its standard error;
- the mean and standard deviation of the pull ``(kappa_hat - kappa_true) / sigma``;
- coverage: the fraction of datasets with ``|kappa_hat - kappa_true| < sigma``, and with
  ``--profile`` also the fraction whose 68.27 % profile-likelihood interval contains
  ``kappa_true``; the target is 68.27 % for both.

Each TAMM method also appears as ``<method>+sim``: the same fits with sigma replaced by
``sigma_total``, the fit's sigma and the jackknife over the simulations in quadrature.

With ``--all-baselines`` the baseline is also fitted with every other simulation index
``i`` (simulation ``i`` of both processes), as ``baseline[i]``, to show how much the baseline
depends on which simulation it happens to use.

``kappa_true`` is ``n_signal / n_events`` of each drawn dataset. The composition is fixed:
``round(kappa * n_events)`` signal jets in every dataset, so the binomial spread of the
composition is absent and an unbiased method with correct sigma covers somewhat more than
68.27 %. The datasets of one kappa share jets (each draws 2000 of the same 5000), so they are
not independent and the quoted standard errors are lower bounds.

The topics and the ratio networks are learned once from the simulations, because they do not
depend on the data. The networks are trained in memory with the configuration's ``unbinned``
settings; the study does not read or write saved models.

Run from the repository root::

    .venv/bin/python examples/qg/study.py --n-datasets 50 --output study-output/study.json
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from tamm.analysis import fit_binned, learn_or_load_topics, prepare_inputs
from tamm.inference import jackknife_from_topics, leave_one_out_topics
from tamm.io import load_config, read_tree
from tamm.io.config import ScanConfig
from tamm.pyhf import baseline_spec, build_workspace, fit_kappa, model_and_data
from tamm.unbinned_analysis import (
    fit_unbinned_methods,
    load_or_train_ratio_models,
    read_simulations,
)

log = logging.getLogger("qg-study")

HERE = Path(__file__).resolve().parent
# Fraction covered by +-1 sigma of a normal distribution.
TARGET_COVERAGE = 0.6827


def draw_dataset(
    pools: dict[str, np.ndarray], kappa: float, n_events: int, rng: np.random.Generator
) -> tuple[np.ndarray, float]:
    """Draw one pseudo-dataset without replacement; return its events and true kappa."""
    n_signal = round(kappa * n_events)
    signal = pools["signal"][rng.choice(len(pools["signal"]), n_signal, replace=False)]
    background = pools["background"][
        rng.choice(len(pools["background"]), n_events - n_signal, replace=False)
    ]
    return np.concatenate([signal, background]), n_signal / n_events


def fit_other_baselines(
    simulations: dict[str, Any], observed: np.ndarray, prior: float
) -> dict[str, Any]:
    """Fit the baseline with simulation ``i`` of both processes, for every index ``i``."""
    signal, background = simulations["signal"], simulations["background"]
    fits = {}
    for index in range(min(len(signal), len(background))):
        spec = baseline_spec(
            signal.counts[index] + prior, background.counts[index] + prior, observed
        )
        model, data = model_and_data(build_workspace(spec))
        method = f"baseline[{index}]"
        fits[method] = fit_kappa(model, data, method=method)
    return fits


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Bias, pull mean and width, and coverage of one method at one kappa."""
    valid = [row for row in rows if row["converged"] and math.isfinite(row["sigma"])]
    residuals = np.array([row["kappa"] - row["kappa_true"] for row in valid])
    pulls = residuals / np.array([row["sigma"] for row in valid])
    n = len(valid)
    covered = float(np.mean(np.abs(pulls) < 1.0)) if n else math.nan
    summary = {
        "n_datasets": len(rows),
        "n_valid": n,
        "bias": float(residuals.mean()) if n else math.nan,
        "bias_error": float(residuals.std(ddof=1) / math.sqrt(n)) if n > 1 else math.nan,
        "rms_residual": float(np.sqrt(np.mean(residuals**2))) if n else math.nan,
        "mean_sigma": float(np.mean([row["sigma"] for row in valid])) if n else math.nan,
        "pull_mean": float(pulls.mean()) if n else math.nan,
        "pull_std": float(pulls.std(ddof=1)) if n > 1 else math.nan,
        "coverage": covered,
        "coverage_error": math.sqrt(covered * (1 - covered) / n) if n else math.nan,
    }
    intervals = [row["interval"] for row in valid if row.get("interval") is not None]
    if intervals:
        inside = [
            lo <= row["kappa_true"] <= hi
            for row, (lo, hi) in zip(valid, intervals, strict=True)
            if math.isfinite(lo) and math.isfinite(hi)
        ]
        summary["profile_coverage"] = float(np.mean(inside)) if inside else math.nan
        summary["profile_n"] = len(inside)
    return summary


def format_table(summaries: dict[str, dict[str, dict[str, Any]]]) -> str:
    """Format the summaries as a fixed-width text table."""
    header = (
        f"{'kappa':>5} {'method':<17} {'n':>3} {'bias':>17} {'sigma':>7} {'pull mean':>9} "
        f"{'pull std':>8} {'cov(sigma)':>14} {'cov(profile)':>12}"
    )
    lines = [header, "-" * len(header)]
    for kappa, methods in summaries.items():
        for method, s in methods.items():
            profile = s.get("profile_coverage")
            profile_text = "-" if profile is None else f"{profile:.3f}"
            lines.append(
                f"{float(kappa):5.2f} {method:<17} {s['n_valid']:>3} "
                f"{s['bias']:+8.4f} +- {s['bias_error']:.4f} {s['mean_sigma']:7.4f} "
                f"{s['pull_mean']:+9.2f} {s['pull_std']:8.2f} "
                f"{s['coverage']:6.3f} +- {s['coverage_error']:.3f} {profile_text:>12}"
            )
    lines.append(f"target coverage: {TARGET_COVERAGE}")
    return "\n".join(lines)


def run_study(
    config_path: Path,
    kappas: list[float],
    n_datasets: int,
    n_events: int,
    seed: int,
    *,
    profile: bool,
    all_baselines: bool = False,
    engines: list[str] | None = None,
) -> dict[str, Any]:
    """Run the study; return the per-dataset rows, the summaries and the settings."""
    config = load_config(config_path)
    if engines is not None:
        config = replace(config, engines=tuple(engines))
    if config.pseudo_data is None:
        msg = f"{config_path} has no pseudo_data section naming the nature trees."
        raise SystemExit(msg)
    started = time.perf_counter()

    inputs = prepare_inputs(config)
    topic_fits = {}
    if "binned" in config.engines:
        topics = learn_or_load_topics(
            inputs.simulations,
            n_topics=config.binned.n_topics,
            seed=config.binned.seed,
            options=config.binned.options,
        )
        topic_fits = {process: fit for process, (fit, _) in topics.items()}
        # The leave-one-out topics of the jackknife do not depend on the data either.
        leave_one_out = {
            process: leave_one_out_topics(
                inputs.simulations[process].counts,
                fit.topics,
                seed=fit.seed,
                options=config.binned.options,
            )
            for process, fit in topic_fits.items()
        }
    simulations = models = None
    if "unbinned" in config.engines:
        simulations = read_simulations(config)
        models = load_or_train_ratio_models(config, simulations, write=False)
    region = config.region
    pools = {
        process: read_tree(source.file, source.tree or "", region.observables, region=region).events
        for process, source in (
            ("signal", config.pseudo_data.signal),
            ("background", config.pseudo_data.background),
        )
    }
    log.info("pools inside the region: %s", {p: len(v) for p, v in pools.items()})

    scan = ScanConfig(points=config.scan.points, width=config.scan.width) if profile else None
    rows: list[dict[str, Any]] = []
    generators = np.random.SeedSequence(seed).spawn(len(kappas))
    for kappa, child in zip(kappas, generators, strict=True):
        rng = np.random.default_rng(child)
        for index in range(n_datasets):
            events, kappa_true = draw_dataset(pools, kappa, n_events, rng)
            results = {}
            if topic_fits:
                results.update(
                    fit_binned(
                        inputs.simulations,
                        region.histogram(events),
                        topic_fits,
                        baseline=config.baseline,
                        scan=scan,
                        jackknife=False,
                    )
                )
                tamm = results["tamm-binned"]
                if tamm.fit.converged:
                    jackknife = jackknife_from_topics(
                        {process: fit.topics for process, fit in topic_fits.items()},
                        {process: topics for process, (topics, _) in leave_one_out.items()},
                        region.histogram(events),
                        tamm.fit,
                        topics_converged={p: ok for p, (_, ok) in leave_one_out.items()},
                    )
                    tamm.details["simulation_uncertainty"] = jackknife.to_dict()
            if models is not None and simulations is not None:
                dataset = replace(inputs, observed=region.histogram(events), data_events=events)
                results.update(
                    fit_unbinned_methods(config, dataset, simulations, models, scan=profile)
                )
            fits = {method: (result.fit, result.interval) for method, result in results.items()}
            # The same fits with sigma_total (fit sigma and simulation jackknife in quadrature).
            # A fit without a jackknife (it failed) counts as failed here too.
            for method in ("tamm-binned", "tamm-unbinned"):
                if method not in results:
                    continue
                extra = results[method].details.get("simulation_uncertainty") or {}
                sigma_total = extra.get("sigma_total")
                total = replace(
                    results[method].fit,
                    sigma=math.nan if sigma_total is None else sigma_total,
                )
                fits[f"{method}+sim"] = (total, None)
            if all_baselines and topic_fits:
                observed = region.histogram(events)
                others = fit_other_baselines(inputs.simulations, observed, config.baseline.prior)
                fits.update({method: (fit, None) for method, fit in others.items()})
            for method, (fit, interval) in fits.items():
                rows.append(
                    {
                        "kappa": fit.kappa,
                        "sigma": fit.sigma,
                        "converged": fit.converged,
                        "kappa_true": kappa_true,
                        "kappa_requested": kappa,
                        "dataset": index,
                        "method": method,
                        "interval": interval,
                    }
                )
            log.info("kappa %.2f: dataset %d/%d done", kappa, index + 1, n_datasets)

    summaries = {
        f"{kappa:g}": {
            method: summarise(
                [r for r in rows if r["kappa_requested"] == kappa and r["method"] == method]
            )
            for method in dict.fromkeys(row["method"] for row in rows)
        }
        for kappa in kappas
    }
    return {
        "config": str(config_path),
        "kappas": kappas,
        "n_datasets": n_datasets,
        "n_events": n_events,
        "seed": seed,
        "engines": list(config.engines),
        "n_topics": config.binned.n_topics,
        "topic_seed": config.binned.seed,
        "unbinned": config.unbinned.to_dict(),
        "baseline": config.baseline.to_dict(),
        "profile_intervals": profile,
        "all_baselines": all_baselines,
        "wall_time_s": time.perf_counter() - started,
        "summaries": summaries,
        "rows": rows,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, default=HERE / "config.yaml", help="Analysis YAML.")
    parser.add_argument(
        "--kappas", type=float, nargs="+", default=[0.2, 0.5], help="True signal fractions."
    )
    parser.add_argument("--n-datasets", type=int, default=50, help="Pseudo-datasets per kappa.")
    parser.add_argument("--n-events", type=int, default=2000, help="Jets per pseudo-dataset.")
    parser.add_argument("--seed", type=int, default=20260402, help="Seed of the draws.")
    parser.add_argument(
        "--profile", action="store_true", help="Also scan the profile likelihood (slower)."
    )
    parser.add_argument(
        "--all-baselines",
        action="store_true",
        help="Also fit the baseline with every simulation index, as baseline[i].",
    )
    parser.add_argument(
        "--engines",
        nargs="+",
        choices=["binned", "unbinned"],
        default=None,
        help="Engines to run [default: the configuration's engines].",
    )
    parser.add_argument("--output", type=Path, default=None, help="Write the full record (JSON).")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    record = run_study(
        args.config,
        args.kappas,
        args.n_datasets,
        args.n_events,
        args.seed,
        profile=args.profile,
        all_baselines=args.all_baselines,
        engines=args.engines,
    )
    print(format_table(record["summaries"]))
    print(f"wall time: {record['wall_time_s']:.1f} s")
    if args.output is not None:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
        print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
