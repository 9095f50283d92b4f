"""Run a study on one process, a local process pool or Dask, with resumable results.

Where this sits: :func:`run_study` is the entry point of :mod:`tamm.studies` and of
``tamm coverage``. It schedules the tasks of :mod:`tamm.studies.worker`:

1. one preparation task per draw (simulations, histograms, topics), whose result is stored as
   ``draws/draw-NNNNN.npz`` in the output directory, so a resumed study does not redo it;
2. one task per pseudo-experiment, which fits it with every method and returns one record
   per method.

Each finished record is appended as one JSON line to ``results.jsonl`` and flushed to disk
(``fsync``) at once. The first line contains the settings. A study that was killed restarts with
``resume=True``: it reads the file, drops an incomplete last line, and runs only the
(draw, experiment, method) combinations without a record, so every fit appears exactly once.

Schedulers:

- ``"serial"``: everything in the calling process (debugging, small tests).
- ``"local"``: a :class:`concurrent.futures.ProcessPoolExecutor` with the ``spawn`` start
  method and one thread per numeric library in each worker.
- ``"dask-local"``: a :class:`distributed.LocalCluster` on 127.0.0.1 with one thread per
  worker process, started for the study and closed afterwards (needs ``tamm[dask]``).
- any other string: the address of a running Dask scheduler, such as ``"tcp://10.0.0.5:8786"``.
  Its workers must have tamm installed.
"""

from __future__ import annotations

import concurrent.futures
import datetime as dt
import json
import logging
import math
import multiprocessing
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tamm._version import __version__
from tamm.exceptions import InvalidModelError, ModelFileError
from tamm.metrics import hellinger
from tamm.studies._threads import limit_threads
from tamm.studies.config import StudyConfig
from tamm.studies.methods import PROCESSES, Method, get_method
from tamm.studies.worker import prepare_draw_task, run_experiment_task

__all__ = ["RESULTS_FILE", "ResultStore", "StudyRun", "read_results", "run_study"]


def __dir__() -> list[str]:
    return __all__


log = logging.getLogger(__name__)

RESULTS_FILE = "results.jsonl"
"""Name of the results file inside a study's output directory."""

_DRAWS_FOLDER = "draws"
_SCHEDULERS = ("serial", "local", "dask-local")


# ---------------------------------------------------------------------------------------------
# Results file


def _is_positive_integer(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _key(record: Mapping[str, Any]) -> tuple[int, int, str]:
    return int(record["draw"]), int(record["experiment"]), str(record["method"])


def _json_line(record: Mapping[str, Any]) -> str:
    return json.dumps(record, sort_keys=True, allow_nan=False) + "\n"


class ResultStore:
    """The records of one study, optionally backed by an append-only JSON-lines file.

    Args:
        config: The study settings.
        path: The results file, or None to keep records in memory only.
        resume: Continue an existing file; without it an existing file is an error.

    Raises:
        ModelFileError: If the file exists and ``resume`` is False, cannot be read or
            written, or belongs to a study with other settings.
    """

    def __init__(self, config: StudyConfig, path: Path | None, *, resume: bool) -> None:
        self.config = config
        self.path = path
        self.fits: dict[tuple[int, int, str], dict[str, Any]] = {}
        self.draws: dict[int, dict[str, Any]] = {}
        if path is None:
            return
        if path.exists():
            if not resume:
                msg = (
                    f"The results file {path} already exists. Pass resume=True (tamm coverage "
                    "--resume) to continue that study, or choose another output directory."
                )
                raise ModelFileError(msg)
            self._load(path)
        else:
            header = {
                "record": "study",
                "config": config.to_dict(),
                "tamm_version": __version__,
                "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            }
            self._write([header])

    def _load(self, path: Path) -> None:
        try:
            raw = path.read_bytes()
        except OSError as err:
            msg = f"Could not read the results file {path}: {err}."
            raise ModelFileError(msg) from err
        if raw and not raw.endswith(b"\n"):
            # A killed run can leave half a line; it never held a finished record.
            complete = raw[: raw.rfind(b"\n") + 1]
            log.warning(
                "dropping an incomplete last line (%d bytes) of %s",
                len(raw) - len(complete),
                path,
            )
            with path.open("r+b") as handle:
                handle.truncate(len(complete))
            raw = complete
        lines = raw.decode("utf-8").splitlines()
        if not lines:
            msg = f"The results file {path} is empty; delete it and start the study again."
            raise ModelFileError(msg)
        header = json.loads(lines[0])
        if header.get("record") != "study" or header.get("config") != self.config.to_dict():
            msg = (
                f"The results file {path} belongs to a study with other settings "
                f"({header.get('config')}); the requested settings are {self.config.to_dict()}. "
                "Use the same settings to resume, or another output directory."
            )
            raise ModelFileError(msg)
        for number, line in enumerate(lines[1:], start=2):
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                msg = (
                    f"Line {number} of {path} is not valid JSON ({err.msg}); the file was altered."
                )
                raise ModelFileError(msg) from err
            if record.get("record") == "fit":
                self.fits.setdefault(_key(record), record)
            elif record.get("record") == "draw":
                self.draws.setdefault(int(record["draw"]), record)
        log.info(
            "resuming %s: %d fits and %d draws already done", path, len(self.fits), len(self.draws)
        )

    def _write(self, records: Iterable[Mapping[str, Any]]) -> None:
        if self.path is None:
            return
        text = "".join(_json_line(record) for record in records)
        if not text:
            return
        try:
            with self.path.open("a", encoding="utf-8") as handle:
                handle.write(text)
                handle.flush()
                os.fsync(handle.fileno())
        except OSError as err:
            msg = f"Could not append to the results file {self.path}: {err}."
            raise ModelFileError(msg) from err

    def add_fits(self, records: Sequence[Mapping[str, Any]]) -> int:
        """Append the fit records not stored yet; return how many were new."""
        new = [dict(record) for record in records if _key(record) not in self.fits]
        self._write(new)
        for record in new:
            self.fits[_key(record)] = record
        return len(new)

    def add_draw(self, record: Mapping[str, Any]) -> None:
        """Append the record of a prepared draw unless one is stored."""
        if int(record["draw"]) in self.draws:
            return
        self._write([record])
        self.draws[int(record["draw"])] = dict(record)

    def missing(self, draw: int, experiment: int, methods: Sequence[str]) -> list[str]:
        """Return the methods without a record for this pseudo-experiment."""
        return [name for name in methods if (draw, experiment, name) not in self.fits]


def read_results(
    path: str | Path,
) -> tuple[StudyConfig, list[dict[str, Any]], list[dict[str, Any]]]:
    """Read a results file written by :func:`run_study`.

    Args:
        path: ``results.jsonl``, or the output directory that contains it.

    Returns:
        ``(config, fit records, draw records)``, records sorted by draw, experiment and method.

    Raises:
        ModelFileError: If the file is missing, empty or altered.
    """
    source = Path(path)
    if source.is_dir():
        source = source / RESULTS_FILE
    try:
        with source.open(encoding="utf-8") as handle:
            first = handle.readline()
    except OSError as err:
        msg = f"Could not read the results file {source}: {err}. Check the path."
        raise ModelFileError(msg) from err
    try:
        config = StudyConfig.from_dict(json.loads(first)["config"])
    except (json.JSONDecodeError, KeyError, TypeError, InvalidModelError) as err:
        msg = f"{source} does not start with the settings of a tamm study ({err!r})."
        raise ModelFileError(msg) from err
    store = ResultStore(config, source, resume=True)
    fits = [store.fits[key] for key in sorted(store.fits)]
    draws = [store.draws[key] for key in sorted(store.draws)]
    return config, fits, draws


# ---------------------------------------------------------------------------------------------
# Stored draws


def _draw_path(folder: Path, draw: int) -> Path:
    return folder / f"draw-{draw:05d}.npz"


def _save_draw(path: Path, payload: Mapping[str, Any], config: StudyConfig) -> None:
    arrays: dict[str, np.ndarray] = {
        "index": np.array(payload["index"]),
        "fingerprint": np.array(config.fingerprint()),
    }
    for group in ("simulation_indices", "histograms", "truth"):
        for key, value in payload[group].items():
            arrays[f"{group}/{key}"] = np.asarray(value)
    for method, values in payload["artifacts"].items():
        for key, value in values.items():
            arrays[f"artifacts/{method}/{key}"] = np.asarray(value)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".tmp.npz")
    np.savez(temporary, **arrays)  # type: ignore[arg-type]
    temporary.replace(path)


def _load_draw(path: Path, config: StudyConfig, methods: Sequence[Method]) -> dict[str, Any] | None:
    """Return the stored draw, or None if other settings made it or it lacks an artifact."""
    with np.load(path) as stored:
        if "fingerprint" not in stored.files or str(stored["fingerprint"]) != config.fingerprint():
            log.info("ignoring %s, which was prepared with other settings", path)
            return None
        payload: dict[str, Any] = {
            "index": int(stored["index"]),
            "simulation_indices": {},
            "histograms": {},
            "truth": {},
            "artifacts": {},
        }
        for name in stored.files:
            parts = name.split("/")
            if parts[0] == "artifacts":
                payload["artifacts"].setdefault(parts[1], {})[parts[2]] = stored[name]
            elif parts[0] in payload and len(parts) == 2:
                payload[parts[0]][parts[1]] = stored[name]
    needed = [method.name for method in methods if method.prepare is not None]
    if any(name not in payload["artifacts"] for name in needed):
        return None
    return payload


def _draw_record(config: StudyConfig, payload: Mapping[str, Any]) -> dict[str, Any]:
    """Summarise a prepared draw: chosen simulations and their distance to nature."""
    distances = {
        process: float(
            np.mean(hellinger(payload["histograms"][process], payload["truth"][process]))
        )
        for process in PROCESSES
    }
    return {
        "record": "draw",
        "draw": int(payload["index"]),
        "simulation_indices": {
            process: [int(value) for value in payload["simulation_indices"][process]]
            for process in PROCESSES
        },
        "hellinger_simulations": distances,
        "warnings": list(payload.get("warnings", [])),
        "seconds": round(float(payload.get("seconds", math.nan)), 3)
        if math.isfinite(float(payload.get("seconds", math.nan)))
        else None,
        "n_experiments": config.n_experiments,
    }


# ---------------------------------------------------------------------------------------------
# Schedulers


class _SerialBackend:
    """Runs each task at submission in this process."""

    in_worker = False

    def submit(self, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        try:
            future.set_result(function(*args, in_worker=False, **kwargs))
        except Exception as err:  # noqa: BLE001 - handed to the caller through the future
            future.set_exception(err)
        return future

    def wait(self, pending: set[Any]) -> tuple[set[Any], set[Any]]:
        return set(pending), set()

    def share(self, value: Any) -> Any:
        return value

    def close(self) -> None:
        return None


class _PoolBackend:
    """A process pool with the spawn start method and one thread per library per worker."""

    def __init__(self, workers: int) -> None:
        self.executor = concurrent.futures.ProcessPoolExecutor(
            max_workers=workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=limit_threads,
        )

    def submit(self, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return self.executor.submit(function, *args, **kwargs)

    def wait(self, pending: set[Any]) -> tuple[set[Any], set[Any]]:
        done, not_done = concurrent.futures.wait(
            pending, return_when=concurrent.futures.FIRST_COMPLETED
        )
        return set(done), set(not_done)

    def share(self, value: Any) -> Any:
        return value

    def close(self) -> None:
        self.executor.shutdown(wait=True, cancel_futures=True)


class _DaskBackend:
    """A Dask client, on a LocalCluster started here or on a running scheduler."""

    def __init__(self, address: str | None, workers: int) -> None:
        try:
            from distributed import Client, LocalCluster
        except ImportError as err:
            msg = (
                "Dask scheduling needs dask.distributed; install it with "
                "`pip install 'tamm[dask]'`, or use scheduler='local'."
            )
            raise InvalidModelError(msg) from err
        self.cluster = None
        if address is None:
            self.cluster = LocalCluster(  # type: ignore[no-untyped-call]
                n_workers=workers,
                threads_per_worker=1,
                processes=True,
                host="127.0.0.1",
                dashboard_address=None,
                # NB: without a dashboard the scheduler still serves its health endpoints,
                # by default on port 8787, and warns when another cluster uses that port.
                # A free port on 127.0.0.1 avoids the clash.
                scheduler_kwargs={"dashboard": False, "dashboard_address": "127.0.0.1:0"},
            )
            self.client = Client(self.cluster)  # type: ignore[no-untyped-call]
        else:
            self.client = Client(address)  # type: ignore[no-untyped-call]
        log.info("running on %s", self.client)

    def submit(self, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return self.client.submit(function, *args, pure=False, **kwargs)

    def wait(self, pending: set[Any]) -> tuple[set[Any], set[Any]]:
        from distributed import wait

        done, not_done = wait(list(pending), return_when="FIRST_COMPLETED")  # type: ignore[no-untyped-call]
        return set(done), set(not_done)

    def share(self, value: Any) -> Any:
        # NB: scatter a one-element list, because scattering a dict would scatter its values.
        return self.client.scatter([value], broadcast=False)[0]  # type: ignore[no-untyped-call]

    def close(self) -> None:
        self.client.close()  # type: ignore[no-untyped-call]
        if self.cluster is not None:
            self.cluster.close()


def _backend(scheduler: str, workers: int) -> _SerialBackend | _PoolBackend | _DaskBackend:
    if scheduler == "serial":
        return _SerialBackend()
    if scheduler == "local":
        return _PoolBackend(workers)
    if scheduler == "dask-local":
        return _DaskBackend(None, workers)
    # NOTE: the tests run Dask only on a LocalCluster. With a remote scheduler the tasks and
    # results travel the same way, but no test covers that path.
    return _DaskBackend(scheduler, workers)


# ---------------------------------------------------------------------------------------------
# Study


@dataclass
class StudyRun:
    """The records of a finished (or resumed) study.

    Attributes:
        config: The settings.
        fits: One record per (draw, experiment, method), sorted by that key.
        draws: One record per prepared draw, sorted by draw.
        output_dir: Where the results file and stored draws are, or None.
        n_new_fits: Fits computed by this call (the others were read from the file).
        seconds: Wall time of this call.
        scheduler: The scheduler used.
        workers: Number of worker processes (1 for ``"serial"``).
    """

    config: StudyConfig
    fits: list[dict[str, Any]]
    draws: list[dict[str, Any]]
    output_dir: Path | None
    n_new_fits: int
    seconds: float
    scheduler: str
    workers: int
    timings: dict[str, float] = field(default_factory=dict)


def run_study(
    config: StudyConfig,
    *,
    output_dir: str | Path | None = None,
    scheduler: str = "local",
    workers: int = 2,
    resume: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> StudyRun:
    """Run the pseudo-experiments of a study and collect one record per fit.

    Args:
        config: The settings; their ``methods`` must be registered
            (:func:`tamm.studies.register_method`).
        output_dir: Directory for ``results.jsonl`` and the stored draws (created if
            missing). None keeps everything in memory, so nothing can be resumed.
        scheduler: ``"local"``, ``"dask-local"``, ``"serial"`` or a Dask scheduler address.
        workers: Worker processes for ``"local"`` and ``"dask-local"``.
        resume: Continue the study stored in ``output_dir``.
        progress: Called as ``progress(done, total)`` with numbers of fits after each
            finished pseudo-experiment (for progress bars).

    Returns:
        All records of the study, including those read from the file when resuming.

    Raises:
        InvalidModelError: If a method is not registered, ``workers`` is not positive, or
            Dask is requested but not installed.
        ModelFileError: If the results file exists without ``resume``, or belongs to another
            study.

    Notes:
        The numbers do not depend on the scheduler or the number of workers, because every
        random step is seeded from ``(config.seed, draw, experiment)`` and no state passes
        between pseudo-experiments. Timings (``seconds``) differ between runs.
    """
    if not _is_positive_integer(workers):
        msg = f"workers must be a positive integer, but received {workers!r}."
        raise InvalidModelError(msg)
    methods = [get_method(name) for name in config.methods]
    folder = None if output_dir is None else Path(output_dir)
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
    store = ResultStore(config, None if folder is None else folder / RESULTS_FILE, resume=resume)

    todo = {
        (draw, experiment): store.missing(draw, experiment, config.methods)
        for draw in range(config.n_draws)
        for experiment in range(config.n_experiments)
    }
    todo = {key: names for key, names in todo.items() if names}
    total = config.n_fits
    done = total - sum(len(names) for names in todo.values())
    draws_needed = sorted({draw for draw, _ in todo})
    log.info(
        "study %s: %d of %d fits to run in %d draws on %s",
        config.fingerprint(),
        total - done,
        total,
        len(draws_needed),
        scheduler,
    )
    start = time.perf_counter()
    timings = {"prepare_draws": 0.0}
    n_new = 0
    if progress is not None:
        progress(done, total)

    backend = _backend(scheduler, workers) if draws_needed else _SerialBackend()
    config_data = config.to_dict()
    pending: set[Any] = set()
    # Task of each pending future: (kind, draw, experiment), with experiment -1 for a draw.
    kinds: dict[Any, tuple[str, int, int]] = {}
    try:
        for draw in draws_needed:
            stored = None
            if folder is not None and _draw_path(folder / _DRAWS_FOLDER, draw).exists():
                stored = _load_draw(_draw_path(folder / _DRAWS_FOLDER, draw), config, methods)
            if stored is None:
                future = backend.submit(prepare_draw_task, config_data, draw, methods)
                pending.add(future)
                kinds[future] = ("draw", draw, -1)
            else:
                _submit_experiments(backend, stored, todo, methods, config_data, pending, kinds)

        while pending:
            finished, pending = backend.wait(pending)
            for future in sorted(finished, key=lambda item: kinds[item]):
                kind, draw, _ = kinds.pop(future)
                result = future.result()
                if kind == "draw":
                    timings["prepare_draws"] += float(result.get("seconds", 0.0))
                    if folder is not None:
                        _save_draw(_draw_path(folder / _DRAWS_FOLDER, draw), result, config)
                    store.add_draw(_draw_record(config, result))
                    _submit_experiments(backend, result, todo, methods, config_data, pending, kinds)
                else:
                    new = store.add_fits(result)
                    n_new += new
                    done += new
                    if progress is not None:
                        progress(done, total)
    finally:
        backend.close()

    seconds = time.perf_counter() - start
    log.info("study finished: %d new fits in %.1f s", n_new, seconds)
    return StudyRun(
        config=config,
        fits=[store.fits[key] for key in sorted(store.fits)],
        draws=[store.draws[key] for key in sorted(store.draws)],
        output_dir=folder,
        n_new_fits=n_new,
        seconds=seconds,
        scheduler=scheduler,
        workers=1 if scheduler == "serial" else workers,
        timings=timings,
    )


def _submit_experiments(
    backend: Any,
    payload: Mapping[str, Any],
    todo: Mapping[tuple[int, int], list[str]],
    methods: Sequence[Method],
    config_data: Mapping[str, Any],
    pending: set[Any],
    kinds: dict[Any, tuple[str, int, int]],
) -> None:
    """Submit one task per pseudo-experiment of the draw that still lacks a record."""
    draw = int(payload["index"])
    shared = None
    for (task_draw, experiment), names in sorted(todo.items()):
        if task_draw != draw:
            continue
        if shared is None:
            shared = backend.share(payload)
        selected = [method for method in methods if method.name in names]
        future = backend.submit(run_experiment_task, config_data, shared, experiment, selected)
        pending.add(future)
        kinds[future] = ("experiment", draw, experiment)
