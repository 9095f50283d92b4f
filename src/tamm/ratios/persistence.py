"""Saving and loading trained ratio models as a directory, without pickle.

Layout of a model directory (format version 1):

* ``manifest.json``: the format name and version, and the tamm, Keras and TensorFlow
  versions that wrote it. Then the kind of model and the classes (process, simulation, event
  counts and a SHA-256 fingerprint of the events). Then the region and acceptances, the
  master seed, the training settings, the input standardisation and the training record of
  each member. Last, the calibration weights, and for every member its file name and
  SHA-256 checksum.
* ``member_<m>.keras``: the network of member ``m``, written by Keras' saving API.

Loading checks everything it reads before it builds a model. The manifest must parse and carry
the expected format and version. Members are matched to files by the index in the manifest,
never by the order of a directory listing. Each file's checksum must match, no unlisted member
file may be present, and each network must carry its member name and the input and output
sizes of the manifest. Networks are read with ``keras.models.load_model(...,
safe_mode=True)``, which refuses to deserialise arbitrary Python code. Every failure raises
:class:`~tamm.exceptions.ModelFileError` naming the file and how to fix it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import re
import shutil
import tempfile
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from tamm._version import __version__
from tamm.exceptions import InvalidModelError, InvalidRegionError, ModelFileError
from tamm.ratios.baseline import BaselineRatio
from tamm.ratios.calibration import CalibratedEnsemble, CalibrationFit
from tamm.ratios.ensemble import (
    ClassInfo,
    MemberRecord,
    RatioEnsemble,
    TrainingSettings,
    _import_keras,
    _member_name,
    _network_shape,
)
from tamm.samples import Region

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "load",
    "load_baseline",
    "load_calibrated_ensemble",
    "save_baseline",
    "save_calibrated_ensemble",
]


def __dir__() -> list[str]:
    return __all__


log = logging.getLogger(__name__)

FORMAT_NAME = "tamm.ratios"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
_KIND_ENSEMBLE = "calibrated_ensemble"
_KIND_BASELINE = "baseline_ratio"
_MEMBER_FILE = re.compile(r"member_(\d+)\.keras")
_CHUNK = 1 << 20


def _member_file(index: int) -> str:
    return f"member_{index}.keras"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        while chunk := stream.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def save_calibrated_ensemble(
    model: CalibratedEnsemble, path: str | Path, *, overwrite: bool = False
) -> Path:
    """Write a :class:`CalibratedEnsemble` to the directory ``path``; return the path.

    Raises:
        ModelFileError: If ``path`` exists and ``overwrite`` is false, if it contains files other
            than a tamm model, or if writing fails.
    """
    manifest = _ensemble_manifest(model.ensemble, kind=_KIND_ENSEMBLE)
    manifest["region"] = None if model.region is None else model.region.to_dict()
    manifest["acceptances"] = None if model.acceptances is None else model.acceptances.tolist()
    manifest["calibration"] = {"fits": [fit.to_dict() for fit in model.fits]}
    return _write_directory(Path(path), manifest, model.ensemble.members, overwrite=overwrite)


def save_baseline(model: BaselineRatio, path: str | Path, *, overwrite: bool = False) -> Path:
    """Write a :class:`BaselineRatio` to the directory ``path``; return the path.

    Raises:
        ModelFileError: As :func:`save_calibrated_ensemble`.
    """
    manifest = _ensemble_manifest(model.ensemble, kind=_KIND_BASELINE)
    manifest["region"] = None if model.region is None else model.region.to_dict()
    manifest["acceptances"] = None if model.acceptances is None else model.acceptances.tolist()
    manifest["calibration"] = {"fit": model.fit.to_dict()}
    return _write_directory(Path(path), manifest, model.ensemble.members, overwrite=overwrite)


def load_calibrated_ensemble(path: str | Path) -> CalibratedEnsemble:
    """Read a :class:`CalibratedEnsemble` written by :func:`save_calibrated_ensemble`.

    Raises:
        ModelFileError: If a file is missing, altered, of another format version or kind, or
            inconsistent with the manifest.
    """
    directory = Path(path)
    manifest = _read_manifest(directory, kind=_KIND_ENSEMBLE)
    ensemble = _load_ensemble(directory, manifest)
    manifest_file = directory / MANIFEST
    with _manifest_errors(manifest_file):
        fits = [CalibrationFit.from_dict(item) for item in manifest["calibration"]["fits"]]
        region, acceptances = _region_from_manifest(manifest)
    try:
        return CalibratedEnsemble(ensemble, fits, region=region, acceptances=acceptances)
    except (InvalidModelError, InvalidRegionError) as err:
        msg = f"{manifest_file}: the calibration does not match the networks: {err} Save the model again."
        raise ModelFileError(msg) from err


def load_baseline(path: str | Path) -> BaselineRatio:
    """Read a :class:`BaselineRatio` written by :func:`save_baseline`.

    Raises:
        ModelFileError: As :func:`load_calibrated_ensemble`.
    """
    directory = Path(path)
    manifest = _read_manifest(directory, kind=_KIND_BASELINE)
    ensemble = _load_ensemble(directory, manifest)
    manifest_file = directory / MANIFEST
    with _manifest_errors(manifest_file):
        fit = CalibrationFit.from_dict(manifest["calibration"]["fit"])
        region, acceptances = _region_from_manifest(manifest)
    try:
        return BaselineRatio(ensemble, fit, region=region, acceptances=acceptances)
    except (InvalidModelError, InvalidRegionError) as err:
        msg = f"{manifest_file}: the calibration does not match the networks: {err} Save the model again."
        raise ModelFileError(msg) from err


def load(path: str | Path) -> CalibratedEnsemble | BaselineRatio:
    """Read any ratio model written by tamm, choosing the class from the manifest's ``kind``.

    Raises:
        ModelFileError: As :func:`load_calibrated_ensemble`.
    """
    manifest = _read_manifest(Path(path), kind=None)
    if manifest["kind"] == _KIND_BASELINE:
        return load_baseline(path)
    return load_calibrated_ensemble(path)


def _ensemble_manifest(ensemble: RatioEnsemble, *, kind: str) -> dict[str, Any]:
    keras = _import_keras()
    import tensorflow as tf

    return {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "kind": kind,
        "tamm_version": __version__,
        "keras_version": keras.__version__,
        "tensorflow_version": tf.__version__,
        "binary": ensemble.binary,
        "n_observables": ensemble.n_observables,
        "observables": None if ensemble.observables is None else list(ensemble.observables),
        "seed": ensemble.seed,
        "settings": ensemble.settings.to_dict(),
        "input_scaling": {
            "mean": ensemble.input_mean.tolist(),
            "scale": ensemble.input_scale.tolist(),
        },
        "classes": [info.to_dict() for info in ensemble.classes],
        "members": [record.to_dict() for record in ensemble.records],
    }


def _check_replaceable(path: Path) -> None:
    """Raise unless ``path`` is a directory that contains only files of a tamm ratio model."""
    if not path.is_dir():
        msg = f"{path} exists and is not a directory; choose another output path."
        raise ModelFileError(msg)
    foreign = [
        item.name
        for item in path.iterdir()
        if item.name != MANIFEST and not (_MEMBER_FILE.fullmatch(item.name) and item.is_file())
    ]
    if foreign:
        msg = (
            f"{path} contains files that are not part of a tamm ratio model ({sorted(foreign)[:5]}); "
            "refusing to overwrite it. Choose an empty or new directory."
        )
        raise ModelFileError(msg)


def _write_directory(
    path: Path, manifest: dict[str, Any], members: Sequence[Any], *, overwrite: bool
) -> Path:
    if path.exists() and not (path.is_dir() and not any(path.iterdir())):
        if not overwrite:
            msg = f"{path} already exists; pass overwrite=True to replace it, or choose a new directory."
            raise ModelFileError(msg)
        _check_replaceable(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(
            tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
        )
    except OSError as err:
        msg = f"Cannot create the model directory {path}: {err}"
        raise ModelFileError(msg) from err

    # Everything is written to a staging directory first, so a failure never leaves a
    # half-written model under ``path``.
    try:
        for entry, model in zip(manifest["members"], members, strict=True):
            name = _member_file(entry["index"])
            model.save(staging / name)
            entry["file"] = name
            entry["sha256"] = _sha256(staging / name)
        text = json.dumps(manifest, indent=2, allow_nan=False)
        (staging / MANIFEST).write_text(text + "\n", encoding="utf-8")
        if path.exists():
            shutil.rmtree(path)
        staging.rename(path)
    except (OSError, ValueError) as err:
        shutil.rmtree(staging, ignore_errors=True)
        msg = f"Writing the model to {path} failed: {err}"
        raise ModelFileError(msg) from err
    log.info("saved ratio model (%d members) to %s", len(members), path)
    return path


@contextlib.contextmanager
def _manifest_errors(manifest_file: Path) -> Iterator[None]:
    """Turn a missing key or a wrongly typed value of the manifest into a ModelFileError."""
    try:
        yield
    except ModelFileError:
        raise
    except (KeyError, TypeError, ValueError, IndexError, AttributeError) as err:
        msg = (
            f"{manifest_file} is missing an entry or has an invalid value ({type(err).__name__}: "
            f"{err}). The file was edited or written by another program; save the model again."
        )
        raise ModelFileError(msg) from err


def _read_manifest(directory: Path, *, kind: str | None) -> dict[str, Any]:
    if not directory.is_dir():
        msg = f"Model directory {directory} does not exist or is not a directory; pass the directory that save() wrote."
        raise ModelFileError(msg)
    manifest_file = directory / MANIFEST
    if not manifest_file.is_file():
        msg = f"{manifest_file} not found; {directory} is not a saved tamm ratio model (or the manifest was deleted)."
        raise ModelFileError(msg)
    try:
        manifest = json.loads(manifest_file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        msg = (
            f"{manifest_file} is not valid JSON ({err}); restore the file or save the model again."
        )
        raise ModelFileError(msg) from err
    except OSError as err:
        msg = f"Cannot read {manifest_file}: {err}"
        raise ModelFileError(msg) from err

    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_NAME:
        found = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
        msg = f"{manifest_file} has format {found!r}, expected {FORMAT_NAME!r}; this is not a tamm ratio model."
        raise ModelFileError(msg)
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        msg = (
            f"{manifest_file} has format version {version!r}, but this tamm ({__version__}) reads "
            f"version {FORMAT_VERSION}; load it with the tamm version that wrote it "
            f"({manifest.get('tamm_version')!r}) or train the model again."
        )
        raise ModelFileError(msg)
    if manifest.get("kind") not in (_KIND_ENSEMBLE, _KIND_BASELINE):
        msg = f"{manifest_file} has kind {manifest.get('kind')!r}; expected {_KIND_ENSEMBLE!r} or {_KIND_BASELINE!r}."
        raise ModelFileError(msg)
    if kind is not None and manifest["kind"] != kind:
        loader = (
            "BaselineRatio.load"
            if manifest["kind"] == _KIND_BASELINE
            else "CalibratedEnsemble.load"
        )
        msg = f"{manifest_file} contains a {manifest['kind']!r}, not a {kind!r}; load it with {loader} or tamm.ratios.load."
        raise ModelFileError(msg)
    return manifest


def _member_entries(
    directory: Path, manifest: Mapping[str, Any], n_members: int
) -> list[Mapping[str, Any]]:
    """Return the manifest's member entries ordered by their ``index``, after checking them."""
    manifest_file = directory / MANIFEST
    entries = manifest["members"]
    indices = [int(entry["index"]) for entry in entries]
    if sorted(indices) != list(range(len(entries))) or len(entries) != n_members:
        msg = (
            f"{manifest_file} lists members with indices {indices}, but the settings ask for "
            f"{n_members} members with indices 0..{n_members - 1}, each once. Save the model again."
        )
        raise ModelFileError(msg)
    by_index = {int(entry["index"]): entry for entry in entries}
    for index, entry in by_index.items():
        if entry.get("file") != _member_file(index):
            msg = (
                f"{manifest_file}: member {index} points to file {entry.get('file')!r}, expected "
                f"{_member_file(index)!r}. Save the model again."
            )
            raise ModelFileError(msg)

    listed = {_member_file(index) for index in by_index}
    unlisted = sorted(
        item.name
        for item in directory.iterdir()
        if _MEMBER_FILE.fullmatch(item.name) and item.name not in listed
    )
    if unlisted:
        msg = (
            f"{directory} contains member files {unlisted} that {manifest_file} does not list; the "
            "directory mixes two models. Remove the extra files or save the model again."
        )
        raise ModelFileError(msg)
    return [by_index[index] for index in range(n_members)]


def _load_member(directory: Path, entry: Mapping[str, Any], index: int) -> Any:
    keras = _import_keras()

    file = directory / _member_file(index)
    if not file.is_file():
        msg = f"Member file {file} not found; the model directory is incomplete. Copy the whole directory or save the model again."
        raise ModelFileError(msg)
    checksum = _sha256(file)
    if checksum != entry.get("sha256"):
        msg = (
            f"{file} has SHA-256 {checksum}, but {directory / MANIFEST} records {entry.get('sha256')}; "
            "the file was changed or replaced. Restore the original file or save the model again."
        )
        raise ModelFileError(msg)
    try:
        model = keras.models.load_model(file, compile=False, safe_mode=True)
    except (OSError, ValueError, TypeError, KeyError, zipfile.BadZipFile) as err:
        msg = f"Keras cannot read {file}: {err}"
        raise ModelFileError(msg) from err
    if model.name != _member_name(index):
        msg = (
            f"{file} contains network {model.name!r}, expected {_member_name(index)!r}; the member "
            "files were renamed or swapped. Save the model again."
        )
        raise ModelFileError(msg)
    return model


def _load_ensemble(directory: Path, manifest: Mapping[str, Any]) -> RatioEnsemble:
    manifest_file = directory / MANIFEST
    with _manifest_errors(manifest_file):
        settings = TrainingSettings.from_dict(manifest["settings"])
        classes = [ClassInfo.from_dict(item) for item in manifest["classes"]]
        entries = _member_entries(directory, manifest, settings.n_members)
        records = [MemberRecord.from_dict(entry) for entry in entries]
        binary = bool(manifest["binary"])
        n_outputs = 1 if binary else len(classes)
        n_observables = int(manifest["n_observables"])
        scaling = manifest["input_scaling"]
        observables = manifest["observables"]

    members = []
    for index, entry in enumerate(entries):
        model = _load_member(directory, entry, index)
        shape = _network_shape(model)
        if shape != (n_observables, n_outputs):
            msg = (
                f"{directory / _member_file(index)} maps {shape[0]} inputs to {shape[1]} outputs, "
                f"but {manifest_file} describes {n_observables} observables and {n_outputs} "
                "outputs (classes). Save the model again."
            )
            raise ModelFileError(msg)
        members.append(model)

    try:
        return RatioEnsemble(
            members=members,
            records=records,
            classes=classes,
            settings=settings,
            seed=int(manifest["seed"]),
            input_mean=scaling["mean"],
            input_scale=scaling["scale"],
            observables=observables,
            binary=binary,
        )
    except (InvalidModelError, KeyError, TypeError, ValueError) as err:
        msg = f"{manifest_file} does not match the member networks: {err} Save the model again."
        raise ModelFileError(msg) from err


def _region_from_manifest(manifest: Mapping[str, Any]) -> tuple[Region | None, list[float] | None]:
    region_data = manifest["region"]
    region = None if region_data is None else Region.from_dict(region_data)
    acceptances = manifest["acceptances"]
    return region, None if acceptances is None else [float(v) for v in acceptances]
