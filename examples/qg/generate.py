"""Generate more biased simulations of the quark/gluon input with Pythia 8 and FastJet.

Each simulation is one run of Pythia with its own shower and hadronisation settings. The jets
are made and selected as in the shipped input, and each simulation is written as one TTree
with the same branches, so the new trees can be listed in ``config.yaml`` next to the shipped
ones.

Needs the optional extra ``tamm[generate]`` (``pythia8mc==8.317.2`` and ``fastjet``)::

    pip install "tamm[generate]"
    python examples/qg/generate.py settings.yaml

A settings file::

    process: signal            # signal: Z(->nu nu) + jet; background: g g -> g g
    n_jets: 2000               # selected jets per simulation
    seed: 11                   # Pythia's seed of the first simulation; the next use seed + 1, ...
    output: more_signal.root   # relative to the settings file
    simulations:               # explicit settings per tree ...
      - tree: msd_08
        settings: {"TimeShower:alphaSvalue": 0.125, "StringZ:aLund": 0.6}
    draw:                      # ... and/or settings drawn uniformly at random
      n: 2
      first_index: 9           # trees msd_09 and msd_10
      seed: 5
      ranges: {"TimeShower:alphaSvalue": [0.118, 0.150], "TimeShower:pTmin": [0.25, 1.0]}
      choices: {"TimeShower:alphaSorder": [1, 2]}

The event selection: pp at 13 TeV, hard-process pTHat in [460, 640] GeV; anti-kt jets with
R = 0.4 from all visible final-state particles with |eta| < 4.5; the hardest jet of the event is
kept if 500 <= pT < 550 GeV and |y| < 2. Events whose hardest jet fails are skipped.

Jet substructure, with z_i = pT_i / pT_jet and Delta R_i the distance of constituent i from
the jet axis:

- ``nconst``, ``ncharged``: numbers of constituents and of charged constituents;
- ``mass_pt``: jet mass over pT; ``girth``: sum z_i Delta R_i; ``ptd``: sqrt(sum pT_i^2) / sum pT_i;
- ``lha``: sum z_i (Delta R_i / R)^0.5;
- ``c1_b02``: sum_{i<j} z_i z_j Delta R_ij^0.2;
- ``tau21``: tau_2 / tau_1 with beta = 1 and exclusive-kt subjet axes,
  tau_N = sum pT_i min_k Delta R_ik / (sum pT_i R);
- ``pt``, ``eta``, and ``parton_id``: the PDG id of the outgoing hard-process parton closest to the
  jet axis within Delta R < R (0 if none), generator truth that no fit should use.

A manifest (``<output>.json``) records the settings of every tree. FastJet prints its banner to
standard output once per process.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger("qg-generate")

PYTHIA_VERSION = "8.317.2"
JET_RADIUS = 0.4
PT_RANGE = (500.0, 550.0)
MAX_RAPIDITY = 2.0
MAX_PARTICLE_ETA = 4.5
PT_HAT_RANGE = (460.0, 640.0)
# Pythia status code of the outgoing partons of the hard process.
_HARD_OUTGOING = 23

PROCESS_SETTINGS = {
    # Z + jet with the Z decaying to neutrinos, so the jet is the only visible hard object.
    "signal": [
        "WeakBosonAndParton:qqbar2gmZg = on",
        "WeakBosonAndParton:qg2gmZq = on",
        "WeakZ0:gmZmode = 2",
        "23:onMode = off",
        "23:onIfAny = 12 14 16",
    ],
    "background": ["HardQCD:gg2gg = on"],
}

BRANCHES = {
    "nconst": np.int32,
    "ncharged": np.int32,
    "mass_pt": np.float64,
    "girth": np.float64,
    "ptd": np.float64,
    "lha": np.float64,
    "c1_b02": np.float64,
    "tau21": np.float64,
    "pt": np.float64,
    "eta": np.float64,
    "parton_id": np.int32,
}


class GeneratorSetupError(RuntimeError):
    """Raised when the settings file is invalid or the generator packages are missing."""


def import_generators() -> tuple[Any, Any]:
    """Import pythia8mc and fastjet, or explain how to install them."""
    try:
        import fastjet
        import pythia8mc
    except ImportError as err:
        msg = (
            f"generate.py needs pythia8mc=={PYTHIA_VERSION} and fastjet ({err}); install them "
            'with pip install "tamm[generate]".'
        )
        raise GeneratorSetupError(msg) from err
    return pythia8mc, fastjet


@dataclass(frozen=True)
class SimulationSpec:
    """One simulation to generate: its tree name and Pythia settings."""

    tree: str
    settings: dict[str, Any] = field(default_factory=dict)


def _setting_string(name: str, value: Any) -> str:
    if isinstance(value, bool):
        value = "on" if value else "off"
    return f"{name} = {value}"


def read_settings(path: Path) -> dict[str, Any]:
    """Read and check a settings file; return process, n_jets, seed, output and simulations."""
    import yaml

    raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    unknown = sorted(set(raw) - {"process", "n_jets", "seed", "output", "simulations", "draw"})
    if unknown:
        msg = f"{path}: unknown keys {unknown}."
        raise GeneratorSetupError(msg)
    process = raw.get("process")
    if process not in PROCESS_SETTINGS:
        msg = f"{path}: process must be one of {sorted(PROCESS_SETTINGS)}, received {process!r}."
        raise GeneratorSetupError(msg)
    n_jets = raw.get("n_jets", 2000)
    if isinstance(n_jets, bool) or not isinstance(n_jets, int) or n_jets < 1:
        msg = f"{path}: n_jets must be an integer >= 1, received {n_jets!r}."
        raise GeneratorSetupError(msg)

    specs = [
        SimulationSpec(str(item["tree"]), dict(item.get("settings", {})))
        for item in raw.get("simulations", [])
    ]
    draw = raw.get("draw")
    if draw:
        specs.extend(draw_settings(draw))
    if not specs:
        msg = f"{path}: give at least one entry in simulations or a draw block."
        raise GeneratorSetupError(msg)
    trees = [spec.tree for spec in specs]
    if len(set(trees)) != len(trees):
        msg = f"{path}: tree names repeat: {trees}."
        raise GeneratorSetupError(msg)
    output = Path(raw.get("output", f"{process}_generated.root"))
    return {
        "process": process,
        "n_jets": n_jets,
        "seed": int(raw.get("seed", 1)),
        "output": output if output.is_absolute() else path.resolve().parent / output,
        "simulations": specs,
    }


def draw_settings(draw: Mapping[str, Any]) -> list[SimulationSpec]:
    """Draw settings uniformly from ranges and choices, one set per simulation."""
    rng = np.random.default_rng(int(draw.get("seed", 0)))
    first = int(draw.get("first_index", 0))
    specs = []
    for index in range(int(draw.get("n", 1))):
        settings: dict[str, Any] = {}
        for name, (low, high) in dict(draw.get("ranges", {})).items():
            settings[name] = round(float(rng.uniform(low, high)), 4)
        for name, options in dict(draw.get("choices", {})).items():
            settings[name] = options[int(rng.integers(len(options)))]
        specs.append(SimulationSpec(f"msd_{first + index:02d}", settings))
    return specs


def make_pythia(pythia8mc: Any, process: str, settings: Mapping[str, Any], seed: int) -> Any:
    """Configure and initialise a Pythia instance for one simulation."""
    pythia = pythia8mc.Pythia("", False)
    lines = [
        "Beams:eCM = 13000",
        f"PhaseSpace:pTHatMin = {PT_HAT_RANGE[0]}",
        f"PhaseSpace:pTHatMax = {PT_HAT_RANGE[1]}",
        "Random:setSeed = on",
        f"Random:seed = {seed}",
        "Next:numberCount = 0",
        "Next:numberShowEvent = 0",
        "Next:numberShowProcess = 0",
        "Next:numberShowInfo = 0",
        "Init:showChangedSettings = off",
        "Init:showChangedParticleData = off",
        "Init:showProcesses = off",
        "Init:showMultipartonInteractions = off",
        *PROCESS_SETTINGS[process],
        *(_setting_string(name, value) for name, value in settings.items()),
    ]
    for line in lines:
        if not pythia.readString(line):
            msg = f"Pythia rejected the setting {line!r}."
            raise GeneratorSetupError(msg)
    if not pythia.init():
        msg = f"Pythia failed to initialise with the settings {dict(settings)}."
        raise GeneratorSetupError(msg)
    return pythia


def _delta_r(rap1: np.ndarray, phi1: np.ndarray, rap2: float, phi2: float) -> np.ndarray:
    dphi = np.mod(phi1 - phi2 + np.pi, 2 * np.pi) - np.pi
    return np.hypot(rap1 - rap2, dphi)


def jet_observables(
    jet: Any, constituents: list[Any], charged: list[bool], fastjet: Any
) -> dict[str, float]:
    """Compute the substructure observables of one jet (see the module docstring)."""
    pt = np.array([c.pt() for c in constituents])
    rap = np.array([c.rap() for c in constituents])
    phi = np.array([c.phi() for c in constituents])
    jet_pt = jet.pt()
    z = pt / pt.sum()
    distance = _delta_r(rap, phi, jet.rap(), jet.phi())

    pair_rap = rap[:, None] - rap[None, :]
    pair_phi = np.mod(phi[:, None] - phi[None, :] + np.pi, 2 * np.pi) - np.pi
    pair_distance = np.hypot(pair_rap, pair_phi)
    upper = np.triu_indices(len(pt), k=1)
    c1 = float(np.sum(z[upper[0]] * z[upper[1]] * pair_distance[upper] ** 0.2))

    def tau(n_axes: int) -> float:
        if len(constituents) <= n_axes:
            return 0.0
        sequence = fastjet.ClusterSequence(
            constituents, fastjet.JetDefinition(fastjet.kt_algorithm, JET_RADIUS)
        )
        axes = sequence.exclusive_jets(n_axes)
        distances = np.stack([_delta_r(rap, phi, axis.rap(), axis.phi()) for axis in axes])
        return float(np.sum(pt * distances.min(axis=0)) / (pt.sum() * JET_RADIUS))

    tau1 = tau(1)
    return {
        "nconst": len(constituents),
        "ncharged": int(sum(charged)),
        "mass_pt": max(jet.m(), 0.0) / jet_pt,
        "girth": float(np.sum(z * distance)),
        "ptd": float(math.sqrt(np.sum(pt**2)) / pt.sum()),
        "lha": float(np.sum(z * np.sqrt(distance / JET_RADIUS))),
        "c1_b02": c1,
        "tau21": tau(2) / tau1 if tau1 > 0 else 0.0,
        "pt": jet_pt,
        "eta": jet.eta(),
    }


def _matched_parton(event: Any, jet: Any) -> int:
    best, best_distance = 0, JET_RADIUS
    for index in range(event.size()):
        particle = event[index]
        if abs(particle.status()) != _HARD_OUTGOING or not (
            particle.isQuark() or particle.isGluon()
        ):
            continue
        distance = float(
            _delta_r(np.array([particle.y()]), np.array([particle.phi()]), jet.rap(), jet.phi())[0]
        )
        if distance < best_distance:
            best, best_distance = int(particle.id()), distance
    return best


def generate_jets(
    pythia: Any, fastjet: Any, n_jets: int, *, max_events: int | None = None
) -> Iterable[dict[str, float]]:
    """Yield the observables of selected jets until ``n_jets`` have passed the selection."""
    definition = fastjet.JetDefinition(fastjet.antikt_algorithm, JET_RADIUS)
    n_selected = n_events = 0
    limit = max_events if max_events is not None else 1000 * n_jets
    while n_selected < n_jets:
        if n_events >= limit:
            msg = f"only {n_selected} of {n_jets} jets passed the selection in {limit} events."
            raise GeneratorSetupError(msg)
        n_events += 1
        if not pythia.next():
            continue
        event = pythia.event
        particles, charged = [], []
        for index in range(event.size()):
            particle = event[index]
            if (
                particle.isFinal()
                and particle.isVisible()
                and abs(particle.eta()) < MAX_PARTICLE_ETA
            ):
                pseudojet = fastjet.PseudoJet(
                    particle.px(), particle.py(), particle.pz(), particle.e()
                )
                pseudojet.set_user_index(len(particles))
                particles.append(pseudojet)
                charged.append(bool(particle.isCharged()))
        if not particles:
            continue
        sequence = fastjet.ClusterSequence(particles, definition)
        jets = fastjet.sorted_by_pt(sequence.inclusive_jets(PT_RANGE[0] / 2))
        if not jets:
            continue
        jet = jets[0]
        if not (PT_RANGE[0] <= jet.pt() < PT_RANGE[1] and abs(jet.rap()) < MAX_RAPIDITY):
            continue
        constituents = list(jet.constituents())
        flags = [charged[c.user_index()] for c in constituents]
        record = jet_observables(jet, constituents, flags, fastjet)
        record["parton_id"] = _matched_parton(event, jet)
        n_selected += 1
        yield record
    log.info("%d of %d events passed the selection", n_selected, n_events)


def generate(settings_path: Path, *, max_events: int | None = None) -> Path:
    """Generate every simulation of a settings file; return the ROOT file written."""
    pythia8mc, fastjet = import_generators()
    from tamm.io import write_tree

    setup = read_settings(settings_path)
    output: Path = setup["output"]
    manifest: dict[str, Any] = {
        "process": setup["process"],
        "pythia8mc": PYTHIA_VERSION,
        "simulations": [],
    }
    for offset, spec in enumerate(setup["simulations"]):
        seed = setup["seed"] + offset
        pythia = make_pythia(pythia8mc, setup["process"], spec.settings, seed)
        records = list(generate_jets(pythia, fastjet, setup["n_jets"], max_events=max_events))
        arrays = {
            name: np.array([r[name] for r in records], dtype=dtype)
            for name, dtype in BRANCHES.items()
        }
        write_tree(output, spec.tree, arrays, mode="recreate" if offset == 0 else "update")
        manifest["simulations"].append(
            {"tree": spec.tree, "n_jets": len(records), "seed": seed, "settings": spec.settings}
        )
        log.info("wrote %d jets to %s:%s", len(records), output, spec.tree)
    output.with_suffix(".json").write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
    return output


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "settings", type=Path, help="YAML settings file (see the module docstring)."
    )
    parser.add_argument(
        "--max-events",
        type=int,
        default=None,
        help="Stop with an error after this many events per simulation.",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        path = generate(args.settings, max_events=args.max_events)
    except GeneratorSetupError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"wrote {path} and {path.with_suffix('.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
