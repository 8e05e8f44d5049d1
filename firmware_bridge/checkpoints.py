"""Crash-safe rotating checkpoints of the robot's learning state (npz + JSON, no pickle).

A checkpoint is two files in one directory:

- ``<prefix>-<step>-<token>.npz``: the tensors (numpy ``.npy`` members in a zip, written
  with ``allow_pickle=False``), under their state names (``params.rtu.w1``, ...).
- ``<prefix>-<step>.json``: the commit record, written after the npz: format version, step,
  the npz file name, its SHA-256 and size, each tensor's dtype and shape, and ``meta`` (any
  JSON: RNG state, counters, the bundle's hash, ...).

Each file is written to a temp file in the same directory, flushed, fsynced, renamed over
its final name with ``os.replace``, and the directory fsynced; without the fsyncs a power cut
can leave a correctly named file full of zeros. A checkpoint exists once its JSON exists; an
npz without one (killed between the two writes) is an orphan that `load_latest` removes,
together with leftover temp files. Saving the same step twice writes a new npz and then
switches the JSON to it, so the old one stays complete until the switch.

`load_latest` returns the highest-step checkpoint whose SHA-256 verifies and whose tensors are
all finite, warning about and skipping corrupt or non-finite ones. It returns ``None`` only when
the directory holds no checkpoint at all: if checkpoints exist but none verifies it raises, so a
robot never silently starts from scratch. One process writes a directory at a time.

Non-finite state is never committed: `save` refuses tensors holding NaN/Inf. A new checkpoint
is read back (the npz before its record commits it, the record before rotation), and rotation
keeps the ``keep`` newest checkpoints that verify, deleting only what is older than all of
them: neither a refused, failed or unreadable new checkpoint nor corrupt ones in the directory
can push the last good ones out. Checkpoints this store wrote or loaded are not re-read by
rotation, which keeps the window between a commit and its rotation short.

Robot path: numpy and the standard library only.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import re
import secrets
import tempfile
import warnings
import zipfile
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

__all__ = ["FORMAT_VERSION", "CheckpointError", "CheckpointStore", "CheckpointWarning"]

FORMAT_VERSION = 1  # the checkpoint layout this module writes and reads
KIND = "rtu-edge-checkpoint"
MAX_SIDECAR_BYTES = 64 << 20  # a JSON record is small; refuse to read something absurd


class CheckpointError(Exception):
    """A checkpoint could not be written, or none that exists can be used."""


class CheckpointWarning(UserWarning):
    """A checkpoint was skipped (corrupt, truncated, tampered) or a cleanup failed."""


class _Corrupt(Exception):
    pass


class CheckpointStore:
    """Rotating checkpoints in ``directory``: `save`, `load_latest`, `list`."""

    def __init__(self, directory: str | os.PathLike, keep: int = 3, prefix: str = "ckpt") -> None:
        if not isinstance(keep, int) or keep < 1:
            raise ValueError(f"keep must be an integer >= 1, got {keep!r}")
        if not re.fullmatch(r"[A-Za-z0-9_]+", prefix):
            raise ValueError(f"prefix must be letters, digits or '_', got {prefix!r}")
        self.directory = Path(directory)  # created on the first save
        self.keep = keep  # how many checkpoints survive rotation
        self.prefix = prefix  # file names start with it; stores with other prefixes coexist
        p = re.escape(prefix)
        self._sidecar_re = re.compile(rf"^{p}-(\d{{12,}})\.json$")
        self._npz_re = re.compile(rf"^{p}-(\d{{12,}})-([0-9a-f]{{8}})\.npz$")
        self._tmp_prefix = f".{prefix}-"
        # (record, npz) pairs this store wrote or loaded and verified: rotation need not
        # read them again (one process writes a directory at a time)
        self._verified: set[tuple[str, str]] = set()

    # -- names ----------------------------------------------------------------------------

    def _sidecar_name(self, step: int) -> str:
        return f"{self.prefix}-{step:012d}.json"

    def list(self) -> list[Path]:
        """The checkpoints' JSON records, oldest step first (not verified)."""
        if not self.directory.is_dir():
            return []
        found = []
        for entry in os.scandir(self.directory):
            m = self._sidecar_re.match(entry.name)
            if m:
                found.append((int(m.group(1)), Path(entry.path)))
        return [path for _, path in sorted(found)]

    def check_writable(self) -> None:
        """Raise CheckpointError unless a checkpoint can be written now (creates the directory).

        Catches before a run starts what would otherwise only show at its first save: a file
        in the way, a path under a file, a read-only mount, no permission. It writes and
        removes one temp file, named so that `cleanup` removes it if we are killed meanwhile.
        """
        d = self.directory
        try:
            d.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=d, prefix=self._tmp_prefix, suffix=".tmp")
            os.close(fd)
            os.unlink(tmp)
        except OSError as exc:
            if d.exists() and not d.is_dir():
                why = "a file is in the way"
            elif any(p.exists() and not p.is_dir() for p in d.parents):
                why = "a parent of it is a file"
            else:
                why = exc.strerror or str(exc)
            raise CheckpointError(
                f"checkpoint directory {d} cannot be written ({why}: {exc}). Choose another "
                "--checkpoint-dir, or move the file aside / fix the mount or permissions"
            ) from None

    # -- save -----------------------------------------------------------------------------

    def save(self, step: int, tensors: Mapping[str, np.ndarray], meta: dict) -> Path:
        """Write checkpoint ``step`` atomically, then rotate; returns its JSON record's path.

        Any OSError (disk full, read-only, I/O error) raises `CheckpointError`; the previous
        checkpoints are untouched and no temp file is left behind.
        """
        if not isinstance(step, int | np.integer) or isinstance(step, bool) or step < 0:
            raise CheckpointError(f"step must be a non-negative integer, got {step!r}")
        step = int(step)
        arrays = _check_tensors(tensors)
        bad = _non_finite(arrays)
        if bad:
            raise CheckpointError(
                f"refusing to write checkpoint step {step}: tensors {_names(bad)} hold NaN or Inf "
                "(the learner diverged). Nothing was written and the previous checkpoints are "
                "intact; resume from them, and look at the bad_updates / rollbacks counters."
            )
        if not isinstance(meta, dict):
            raise CheckpointError(f"checkpoint meta must be a dict, got {type(meta).__name__}")
        try:
            meta_json = json.loads(json.dumps(meta))
        except (TypeError, ValueError) as exc:
            raise CheckpointError(f"checkpoint meta must be JSON-serialisable: {exc}") from None

        blob = _npz_bytes(arrays)
        digest = hashlib.sha256(blob).hexdigest()
        npz_name = f"{self.prefix}-{step:012d}-{secrets.token_hex(4)}.npz"
        sidecar_name = self._sidecar_name(step)
        record = {
            "format_version": FORMAT_VERSION,
            "kind": KIND,
            "step": step,
            "created_utc": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "npz": npz_name,
            "sha256": digest,
            "bytes": len(blob),
            "tensors": {
                n: {"dtype": a.dtype.str, "shape": list(a.shape)} for n, a in arrays.items()
            },
            "meta": meta_json,
        }
        record_bytes = (json.dumps(record, indent=1, sort_keys=True) + "\n").encode()
        replaced = self._referenced_npz(self.directory / sidecar_name)
        previous_record = _read_quietly(self.directory / sidecar_name) if replaced else None

        # Each file is read back before the next step: the npz before the record commits it,
        # the record before rotation may delete anything. What is on disk, not what we meant.
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            _atomic_write(self.directory, npz_name, blob, self._tmp_prefix)
            try:
                if _sha256_of(self.directory / npz_name) != digest:
                    raise _Corrupt(f"{npz_name} does not read back as written")
                _atomic_write(self.directory, sidecar_name, record_bytes, self._tmp_prefix)
            except BaseException:
                _unlink_quietly(self.directory / npz_name)
                raise
            if _read_quietly(self.directory / sidecar_name) != record_bytes:
                self._undo_save(sidecar_name, npz_name, previous_record)
                raise _Corrupt(f"{sidecar_name} does not read back as written")
        except OSError as exc:
            raise CheckpointError(
                f"could not write checkpoint step {step} to {self.directory}: {exc}. "
                "The previous checkpoints are intact; free disk space or fix the directory's "
                "permissions / mount (read-only?)."
            ) from exc
        except _Corrupt as exc:
            raise CheckpointError(
                f"checkpoint step {step} written to {self.directory} failed verification ({exc}); "
                "it was removed and nothing was rotated, so the previous checkpoints are intact. "
                "Check the storage (dmesg, fsck)."
            ) from None
        self._verified.add((sidecar_name, npz_name))
        if replaced is not None and replaced != npz_name:
            _unlink_quietly(self.directory / replaced, warn=True)
        self._rotate(protect=sidecar_name)
        return self.directory / sidecar_name

    def _undo_save(self, sidecar_name: str, npz_name: str, previous_record: bytes | None) -> None:
        """Take back a checkpoint that did not verify; restore the record it replaced."""
        try:
            if previous_record is not None:
                _atomic_write(self.directory, sidecar_name, previous_record, self._tmp_prefix)
            else:
                _unlink_quietly(self.directory / sidecar_name, warn=True)
        except OSError as exc:
            warnings.warn(f"could not restore {sidecar_name}: {exc}", CheckpointWarning, 3)
        _unlink_quietly(self.directory / npz_name, warn=True)

    def _rotate(self, protect: str) -> None:
        """Keep the `keep` newest checkpoints that verify; delete only what is older.

        Corrupt or non-finite checkpoints never count toward `keep`, so they cannot push the
        last good ones out; those newer than the oldest kept good one stay (load_latest skips
        them) until good ones pass them. The one just written is never deleted.
        """
        sidecars = self.list()
        if len(sidecars) <= self.keep:
            return
        good = 0
        cut = None  # index of the oldest checkpoint kept
        for i in range(len(sidecars) - 1, -1, -1):
            if (sidecars[i].name, self._referenced_npz(sidecars[i])) not in self._verified:
                try:
                    self._load(sidecars[i])
                except (_Corrupt, CheckpointError):
                    continue
            good += 1
            if good == self.keep:
                cut = i
                break
        if cut is None:
            return  # fewer than `keep` good ones: delete nothing
        for path in sidecars[:cut]:
            if path.name == protect:
                continue
            npz = self._referenced_npz(path)
            _unlink_quietly(path, warn=True)  # the record first: a half-deleted pair is an orphan
            if npz is not None:
                _unlink_quietly(self.directory / npz, warn=True)

    def _referenced_npz(self, sidecar: Path) -> str | None:
        """The npz name a JSON record points at, if it parses and names a valid file."""
        try:
            with open(sidecar, "rb") as f:
                record = json.loads(f.read(MAX_SIDECAR_BYTES))
            name = record["npz"]
        except (OSError, ValueError, TypeError, KeyError):
            return None
        if isinstance(name, str) and self._npz_re.match(name):
            return name
        return None

    # -- load -----------------------------------------------------------------------------

    def load_latest(self) -> tuple[dict[str, np.ndarray], dict, Path] | None:
        """``(tensors, meta, json_path)`` of the newest checkpoint that verifies.

        Removes leftover temp files and orphaned npz files first. Corrupt, truncated or
        tampered checkpoints are skipped with a `CheckpointWarning`. A checkpoint of another
        format version raises `CheckpointError`. Returns ``None`` only if there is no
        checkpoint at all; raises `CheckpointError` if there are some but none verifies.
        """
        self.cleanup()
        sidecars = self.list()
        if not sidecars:
            return None
        failures = []
        for path in reversed(sidecars):
            try:
                return self._load(path)
            except _Corrupt as exc:
                failures.append(f"{path.name}: {exc}")
                warnings.warn(
                    f"skipping checkpoint {path}: {exc}; falling back to the previous one",
                    CheckpointWarning,
                    stacklevel=2,
                )
        raise CheckpointError(
            f"none of the {len(sidecars)} checkpoints in {self.directory} verifies ("
            + "; ".join(failures)
            + "). Refusing to start from scratch silently: move the directory aside to start "
            "fresh, or restore a good copy."
        )

    def _load(self, sidecar: Path) -> tuple[dict[str, np.ndarray], dict, Path]:
        step = int(self._sidecar_re.match(sidecar.name).group(1))
        try:
            with open(sidecar, "rb") as f:
                raw = f.read(MAX_SIDECAR_BYTES + 1)
        except OSError as exc:
            raise _Corrupt(f"cannot read it ({exc})") from None
        try:
            record = json.loads(raw)
        except (UnicodeDecodeError, ValueError):
            raise _Corrupt("its JSON record does not parse (truncated or corrupt)") from None
        if not isinstance(record, dict):
            raise _Corrupt("its JSON record is not an object")
        version = record.get("format_version")
        if version != FORMAT_VERSION or record.get("kind") != KIND:
            if isinstance(version, int) and not isinstance(version, bool):
                raise CheckpointError(
                    f"checkpoint {sidecar} has format_version {version}; this rtu-edge reads "
                    f"version {FORMAT_VERSION}. Use the rtu-edge version that wrote it, or move "
                    "the directory aside to start fresh."
                )
            raise _Corrupt(f"not an rtu-edge checkpoint record (format_version {version!r})")
        npz_name, digest, size = record.get("npz"), record.get("sha256"), record.get("bytes")
        listing, meta = record.get("tensors"), record.get("meta")
        m = self._npz_re.match(npz_name) if isinstance(npz_name, str) else None
        if record.get("step") != step or m is None or int(m.group(1)) != step:
            raise _Corrupt(f"its record names step {record.get('step')!r} / file {npz_name!r}")
        if not isinstance(listing, dict) or not isinstance(meta, dict):
            raise _Corrupt("its record lacks the tensor listing or meta")
        try:
            with open(self.directory / npz_name, "rb") as f:
                blob = f.read()
        except OSError as exc:
            raise _Corrupt(f"cannot read {npz_name} ({exc.strerror or exc})") from None
        if len(blob) != size:
            raise _Corrupt(f"{npz_name} is {len(blob)} bytes, the record says {size} (truncated?)")
        actual = hashlib.sha256(blob).hexdigest()
        if actual != digest:
            raise _Corrupt(f"{npz_name} SHA-256 {actual[:16]}... does not match the record")
        try:
            with np.load(io.BytesIO(blob), allow_pickle=False) as npz:
                tensors = {name: npz[name] for name in npz.files}
        except Exception as exc:  # zipfile.BadZipFile, ValueError (pickled), ...
            raise _Corrupt(f"{npz_name} does not load ({exc})") from None
        described = {n: (np.dtype(a.dtype).str, list(a.shape)) for n, a in tensors.items()}
        expected = {
            n: (d.get("dtype"), d.get("shape")) if isinstance(d, dict) else None
            for n, d in listing.items()
        }
        if described != expected:
            raise _Corrupt(f"{npz_name} holds other tensors than its record lists")
        bad = _non_finite(tensors)
        if bad:
            raise _Corrupt(f"{npz_name}: tensors {_names(bad)} hold NaN or Inf")
        self._verified.add((sidecar.name, npz_name))
        return tensors, meta, sidecar

    # -- cleanup --------------------------------------------------------------------------

    def cleanup(self) -> list[Path]:
        """Remove temp files and orphaned npz files left by an interrupted save.

        Returns what it removed. Safe only while no other process saves to this directory.
        """
        if not self.directory.is_dir():
            return []
        removed = []
        sidecar_steps: dict[int, Path] = {}
        npz_files: list[tuple[int, str]] = []
        for entry in os.scandir(self.directory):
            name = entry.name
            if name.startswith(self._tmp_prefix) and name.endswith(".tmp"):
                if _unlink_quietly(Path(entry.path), warn=True):
                    removed.append(Path(entry.path))
                continue
            if m := self._sidecar_re.match(name):
                sidecar_steps[int(m.group(1))] = Path(entry.path)
            elif m := self._npz_re.match(name):
                npz_files.append((int(m.group(1)), name))
        for step, name in npz_files:
            sidecar = sidecar_steps.get(step)
            if sidecar is not None:
                referenced = self._referenced_npz(sidecar)
                # an unreadable record keeps its step's files: they may be all that is left
                if referenced is None or referenced == name:
                    continue
            path = self.directory / name
            if _unlink_quietly(path, warn=True):
                removed.append(path)
        return removed


# -- helpers -----------------------------------------------------------------------------


def _check_tensors(tensors: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    arrays = {}
    for name, value in tensors.items():
        if not isinstance(name, str) or not name or any(c in name for c in "/\\\x00"):
            raise CheckpointError(f"invalid tensor name {name!r} (no '/', '\\' or NUL)")
        arr = np.asarray(value)
        if arr.dtype.hasobject:
            raise CheckpointError(
                f"tensor {name!r} has dtype {arr.dtype}; checkpoints hold numeric arrays only "
                "(object arrays would need pickle)"
            )
        arrays[name] = arr
    return arrays


def _non_finite(arrays: Mapping[str, np.ndarray]) -> list[str]:
    """Names of the floating-point (or complex) tensors holding NaN or Inf."""
    return [
        name
        for name, arr in arrays.items()
        if arr.dtype.kind in "fc" and not np.isfinite(arr).all()
    ]


def _names(names: list[str], limit: int = 8) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _sha256_of(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def _read_quietly(path: Path) -> bytes | None:
    try:
        with open(path, "rb") as f:
            return f.read(MAX_SIDECAR_BYTES)
    except OSError:
        return None


def _npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    """The bytes np.savez would write (stored, uncompressed), never pickling."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
        for name, arr in arrays.items():
            with zf.open(name + ".npy", "w", force_zip64=True) as member:
                np.lib.format.write_array(member, arr, allow_pickle=False)
    return buffer.getvalue()


def _atomic_write(directory: Path, name: str, data: bytes, tmp_prefix: str) -> None:
    """Temp file in ``directory``, fsync, os.replace onto ``name``, fsync the directory."""
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=tmp_prefix, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, directory / name)
    except BaseException:
        _unlink_quietly(Path(tmp))
        raise
    _fsync_dir(directory)


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return  # platforms that cannot open a directory (Windows) cannot fsync it either
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise
    finally:
        os.close(fd)


def _unlink_quietly(path: Path, warn: bool = False) -> bool:
    try:
        os.unlink(path)
        return True
    except FileNotFoundError:
        return False
    except OSError as exc:
        if warn:
            warnings.warn(f"could not remove {path}: {exc}", CheckpointWarning, stacklevel=3)
        return False
