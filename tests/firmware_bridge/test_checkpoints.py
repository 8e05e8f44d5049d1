"""CheckpointStore: round trip, rotation, corruption fallback, failures, and kill -9 mid-save."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

import firmware_bridge.checkpoints as ckpt_mod
from firmware_bridge.checkpoints import CheckpointError, CheckpointStore, CheckpointWarning

REPO = Path(__file__).resolve().parents[2]


def _tensors(step: int, size: int = 16) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(step)
    return {
        "params.rtu.w1": rng.normal(size=(4, size)).astype(np.float32),
        "elig_v.rtu.w1": rng.normal(size=(4, size)).astype(np.float32),
        "norm.count": np.array(step, np.int64),
        "carry.c1": np.zeros((1, size), np.float64),
        "flags": np.array([True, False]),
    }


def _meta(step: int) -> dict:
    rng = np.random.default_rng(step)
    return {"step": step, "rng": rng.bit_generator.state, "bundle": "ab" * 32, "ok": [1, 2.5]}


def _leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".tmp"))


def _assert_tensors_equal(a: dict, b: dict):
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, k
        np.testing.assert_array_equal(a[k], b[k])


def test_round_trip(tmp_path):
    store = CheckpointStore(tmp_path / "ck")
    assert store.load_latest() is None
    path = store.save(7, _tensors(7), _meta(7))
    assert path == tmp_path / "ck" / "ckpt-000000000007.json"
    tensors, meta, got = CheckpointStore(tmp_path / "ck").load_latest()
    assert got == path
    _assert_tensors_equal(tensors, _tensors(7))
    assert meta == json.loads(json.dumps(_meta(7)))
    # the RNG state restores the generator exactly
    rng = np.random.default_rng()
    rng.bit_generator.state = meta["rng"]
    assert rng.random() == np.random.default_rng(7).random()
    record = json.loads(path.read_text())
    assert record["format_version"] == 1 and record["step"] == 7
    assert len(record["sha256"]) == 64
    # the data file is a plain npz that numpy reads without pickle
    with np.load(tmp_path / "ck" / record["npz"], allow_pickle=False) as npz:
        np.testing.assert_array_equal(npz["params.rtu.w1"], _tensors(7)["params.rtu.w1"])


def test_rotation_keeps_newest_n(tmp_path):
    store = CheckpointStore(tmp_path, keep=3)
    for step in range(0, 60, 10):
        store.save(step, _tensors(step), _meta(step))
    assert [p.name for p in store.list()] == [
        "ckpt-000000000030.json",
        "ckpt-000000000040.json",
        "ckpt-000000000050.json",
    ]
    assert len(list(tmp_path.glob("*.npz"))) == 3
    tensors, meta, _ = store.load_latest()
    assert meta["step"] == 50
    _assert_tensors_equal(tensors, _tensors(50))


def test_same_step_twice_replaces(tmp_path):
    store = CheckpointStore(tmp_path)
    store.save(5, _tensors(5), {"v": 1})
    store.save(5, _tensors(6), {"v": 2})
    assert len(store.list()) == 1 and len(list(tmp_path.glob("*.npz"))) == 1
    tensors, meta, _ = store.load_latest()
    assert meta == {"v": 2}
    _assert_tensors_equal(tensors, _tensors(6))


def test_prefixes_coexist(tmp_path):
    a, b = CheckpointStore(tmp_path, prefix="learn"), CheckpointStore(tmp_path, prefix="snap")
    a.save(1, _tensors(1), {"who": "a"})
    b.save(2, _tensors(2), {"who": "b"})
    assert a.load_latest()[1] == {"who": "a"}
    assert b.load_latest()[1] == {"who": "b"}


def _npz_of(sidecar: Path) -> Path:
    return sidecar.parent / json.loads(sidecar.read_text())["npz"]


def test_tampered_newest_falls_back_with_warning(tmp_path):
    store = CheckpointStore(tmp_path, keep=3)
    for step in (1, 2, 3):
        store.save(step, _tensors(step), _meta(step))
    npz = _npz_of(store.list()[-1])
    data = bytearray(npz.read_bytes())
    data[len(data) // 2] ^= 0x01  # one flipped bit inside an array: zip still parses
    npz.write_bytes(bytes(data))
    with pytest.warns(CheckpointWarning, match=r"ckpt-000000000003.*SHA-256"):
        tensors, meta, path = store.load_latest()
    assert meta["step"] == 2 and path.name == "ckpt-000000000002.json"
    _assert_tensors_equal(tensors, _tensors(2))


def test_truncated_and_zeroed_files_fall_back(tmp_path):
    store = CheckpointStore(tmp_path, keep=4)
    for step in (1, 2, 3, 4):
        store.save(step, _tensors(step), _meta(step))
    paths = store.list()
    npz4 = _npz_of(paths[3])
    npz4.write_bytes(npz4.read_bytes()[:100])  # truncated data file
    paths[2].write_bytes(paths[2].read_bytes()[:40])  # truncated JSON record
    npz2 = _npz_of(paths[1])
    npz2.write_bytes(b"\0" * npz2.stat().st_size)  # power loss without fsync: zeros
    with pytest.warns(CheckpointWarning) as record:
        tensors, meta, _ = store.load_latest()
    assert meta["step"] == 1
    messages = " | ".join(str(w.message) for w in record)
    assert "truncated" in messages and "does not parse" in messages
    _assert_tensors_equal(tensors, _tensors(1))


def test_all_corrupt_raises_instead_of_starting_fresh(tmp_path):
    store = CheckpointStore(tmp_path)
    store.save(1, _tensors(1), {})
    _npz_of(store.list()[0]).write_bytes(b"garbage")
    with pytest.warns(CheckpointWarning), pytest.raises(CheckpointError, match="none of the 1"):
        store.load_latest()


def test_wrong_format_version_is_a_clear_error(tmp_path):
    store = CheckpointStore(tmp_path)
    store.save(1, _tensors(1), {})
    store.save(2, _tensors(2), {})
    sidecar = store.list()[-1]
    record = json.loads(sidecar.read_text())
    record["format_version"] = 99
    sidecar.write_text(json.dumps(record))
    with pytest.raises(CheckpointError, match=r"format_version 99.*reads version 1"):
        store.load_latest()


# ------------------------------------------------------------------------- non-finite state


def _poisoned(step: int, *names: str, value=np.nan) -> dict[str, np.ndarray]:
    t = _tensors(step)
    for name in names:
        t[name] = t[name].copy()
        t[name].flat[3] = value
    return t


def _plant(store: CheckpointStore, monkeypatch, step: int, tensors) -> None:
    """Write a checkpoint the way a version without the finiteness check would have (found in
    the directory, not rotated for: this test is about what comes next)."""
    planter = CheckpointStore(store.directory, keep=store.keep)  # `store` never saw it written
    with monkeypatch.context() as m:
        m.setattr(ckpt_mod, "_non_finite", lambda arrays: [], raising=False)
        m.setattr(planter, "_rotate", lambda protect: None)
        planter.save(step, tensors, _meta(step))


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_save_refuses_non_finite_tensors_naming_them(tmp_path, value):
    store = CheckpointStore(tmp_path, keep=1)
    store.save(1, _tensors(1), _meta(1))
    before = sorted(p.name for p in tmp_path.iterdir())
    bad = _poisoned(2, "params.rtu.w1", "carry.c1", value=value)
    with pytest.raises(CheckpointError, match="NaN or Inf") as e:
        store.save(2, bad, _meta(2))
    msg = str(e.value)
    assert "params.rtu.w1" in msg and "carry.c1" in msg and "elig_v.rtu.w1" not in msg
    assert "previous checkpoints are intact" in msg
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # keep=1: nothing rotated out
    assert store.load_latest()[1]["step"] == 1


def test_non_finite_checkpoint_is_never_the_resume_point(tmp_path, monkeypatch):
    store = CheckpointStore(tmp_path, keep=5)
    store.save(1, _tensors(1), _meta(1))
    _plant(store, monkeypatch, 2, _poisoned(2, "elig_v.rtu.w1", value=np.inf))
    with pytest.warns(CheckpointWarning, match=r"ckpt-000000000002.*elig_v.rtu.w1.*NaN or Inf"):
        tensors, meta, _ = store.load_latest()
    assert meta["step"] == 1
    _assert_tensors_equal(tensors, _tensors(1))


def test_only_non_finite_checkpoints_raise_instead_of_starting_fresh(tmp_path, monkeypatch):
    store = CheckpointStore(tmp_path)
    _plant(store, monkeypatch, 1, _poisoned(1, "params.rtu.w1"))
    with pytest.warns(CheckpointWarning), pytest.raises(CheckpointError, match="none of the 1"):
        store.load_latest()


def test_rotation_never_pushes_out_the_last_good_checkpoints(tmp_path, monkeypatch):
    """Bad checkpoints already in the directory do not count toward `keep`: the good ones stay
    until newer good ones replace them."""
    store = CheckpointStore(tmp_path, keep=2)
    store.save(1, _tensors(1), _meta(1))
    _plant(store, monkeypatch, 2, _poisoned(2, "params.rtu.w1"))
    _plant(store, monkeypatch, 3, _poisoned(3, "params.rtu.w1"))
    store.save(4, _tensors(4), _meta(4))
    steps = [int(p.name[5:17]) for p in store.list()]
    assert 1 in steps and 4 in steps  # the two newest good ones
    store.save(5, _tensors(5), _meta(5))
    assert [int(p.name[5:17]) for p in store.list()] == [4, 5]  # older than both: gone
    assert len(list(tmp_path.glob("*.npz"))) == 2


def _corrupt_npz_writes(monkeypatch):
    """The npz reaches the disk with one byte flipped (bad storage, a buggy filesystem)."""
    real = ckpt_mod._atomic_write

    def flaky(directory, name, data, tmp_prefix):
        if name.endswith(".npz"):
            data = bytearray(data)
            data[len(data) // 2] ^= 0x01
            data = bytes(data)
        return real(directory, name, data, tmp_prefix)

    monkeypatch.setattr(ckpt_mod, "_atomic_write", flaky)


def test_a_new_checkpoint_that_does_not_read_back_rotates_nothing(tmp_path, monkeypatch):
    store = CheckpointStore(tmp_path, keep=2)
    store.save(1, _tensors(1), _meta(1))
    store.save(2, _tensors(2), _meta(2))
    before = sorted(p.name for p in tmp_path.iterdir())
    _corrupt_npz_writes(monkeypatch)
    with pytest.raises(CheckpointError, match="does not read back"):
        store.save(3, _tensors(3), _meta(3))
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # both good ones kept, no junk
    assert store.load_latest()[1]["step"] == 2


def test_a_same_step_resave_that_does_not_read_back_restores_the_first(tmp_path, monkeypatch):
    store = CheckpointStore(tmp_path)
    store.save(3, _tensors(3), {"v": 1})
    _corrupt_npz_writes(monkeypatch)
    with pytest.raises(CheckpointError, match="does not read back"):
        store.save(3, _tensors(4), {"v": 2})
    monkeypatch.undo()
    tensors, meta, _ = store.load_latest()
    assert meta == {"v": 1}
    _assert_tensors_equal(tensors, _tensors(3))
    assert len(list(tmp_path.glob("*.npz"))) == 1


def test_pickled_arrays_never_loaded(tmp_path):
    store = CheckpointStore(tmp_path)
    with pytest.raises(CheckpointError, match="object"):
        store.save(1, {"x": np.array([{"a": 1}], dtype=object)}, {})
    # a record whose npz holds a pickled member, with a matching hash, is still refused
    store.save(1, _tensors(1), {})
    sidecar = store.list()[0]
    record = json.loads(sidecar.read_text())
    npz = tmp_path / record["npz"]
    np.savez(npz, x=np.array([{"a": 1}], dtype=object))  # writes a pickle (allow_pickle=True)
    blob = npz.read_bytes()
    record.update(sha256=hashlib.sha256(blob).hexdigest(), bytes=len(blob))
    record["tensors"] = {"x": {"dtype": "|O", "shape": [1]}}
    sidecar.write_text(json.dumps(record))
    with pytest.warns(CheckpointWarning, match="does not load"):
        with pytest.raises(CheckpointError):
            store.load_latest()


def test_bad_inputs_rejected_before_writing(tmp_path):
    store = CheckpointStore(tmp_path)
    with pytest.raises(CheckpointError, match="JSON"):
        store.save(1, _tensors(1), {"f": object()})
    with pytest.raises(CheckpointError, match="step"):
        store.save(-1, _tensors(1), {})
    with pytest.raises(CheckpointError, match="tensor name"):
        store.save(1, {"a/b": np.zeros(1)}, {})
    assert list(tmp_path.iterdir()) == []


def _fail_on(monkeypatch, what: str, err: int, nth: int = 1):
    """Make the nth call of os.replace / mkstemp fail with OSError(err)."""
    calls = {"n": 0}
    if what == "replace":
        real = os.replace

        def fake(src, dst):
            calls["n"] += 1
            if calls["n"] == nth:
                raise OSError(err, os.strerror(err), str(dst))
            return real(src, dst)

        monkeypatch.setattr(ckpt_mod.os, "replace", fake)
    else:
        real = tempfile.mkstemp

        def fake(*a, **k):
            calls["n"] += 1
            if calls["n"] == nth:
                raise OSError(err, os.strerror(err), k.get("dir"))
            return real(*a, **k)

        monkeypatch.setattr(ckpt_mod.tempfile, "mkstemp", fake)


@pytest.mark.parametrize(
    "what,err,nth",
    [
        ("mkstemp", errno.EROFS, 1),  # read-only file system: nothing can be created
        ("replace", errno.ENOSPC, 1),  # fails committing the npz
        ("replace", errno.ENOSPC, 2),  # npz committed, JSON record fails: npz removed again
        ("mkstemp", errno.ENOSPC, 2),
    ],
)
def test_injected_write_failure_keeps_previous(tmp_path, monkeypatch, what, err, nth):
    store = CheckpointStore(tmp_path)
    store.save(1, _tensors(1), _meta(1))
    before = sorted(p.name for p in tmp_path.iterdir())
    _fail_on(monkeypatch, what, err, nth)
    with pytest.raises(CheckpointError, match="previous checkpoints are intact"):
        store.save(2, _tensors(2), _meta(2))
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no temp, no orphan
    tensors, meta, _ = store.load_latest()
    assert meta["step"] == 1
    _assert_tensors_equal(tensors, _tensors(1))


def _make_unwritable(directory: Path):
    """Make ``directory`` refuse new files for real; returns an undo function or None.

    chmod 0555 is enough for a normal user; root ignores it, so there the directory is
    made immutable (chattr +i), which the kernel enforces for root too.
    """
    os.chmod(directory, 0o555)
    if not os.access(directory, os.W_OK):
        return lambda: os.chmod(directory, 0o755)
    os.chmod(directory, 0o755)
    chattr = shutil.which("chattr")
    if (
        chattr
        and subprocess.run([chattr, "+i", str(directory)], capture_output=True).returncode == 0
    ):
        return lambda: subprocess.run([chattr, "-i", str(directory)], check=True)
    return None


def test_unwritable_directory_fails_cleanly(tmp_path):
    directory = tmp_path / "ck"
    store = CheckpointStore(directory)
    store.save(1, _tensors(1), _meta(1))
    before = sorted(p.name for p in directory.iterdir())
    undo = _make_unwritable(directory)
    if undo is None:
        pytest.skip("cannot make a directory unwritable here (root without chattr)")
    try:
        with pytest.raises(CheckpointError, match="previous checkpoints are intact"):
            store.save(2, _tensors(2), _meta(2))
        tensors, meta, _ = store.load_latest()
        assert meta["step"] == 1
        _assert_tensors_equal(tensors, _tensors(1))
    finally:
        undo()
    assert sorted(p.name for p in directory.iterdir()) == before


def test_real_disk_full_via_file_size_limit(tmp_path):
    """RLIMIT_FSIZE makes the kernel refuse big writes (EFBIG), as a full disk would (root too)."""
    store = CheckpointStore(tmp_path)
    store.save(1, _tensors(1), _meta(1))
    before = sorted(p.name for p in tmp_path.iterdir())
    script = textwrap.dedent(
        f"""
        import resource, signal, sys
        import numpy as np
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, 64 * 1024))
        from firmware_bridge.checkpoints import CheckpointError, CheckpointStore
        store = CheckpointStore({str(tmp_path)!r})
        try:
            store.save(2, {{"big": np.ones(1 << 20, np.float32)}}, {{}})
        except CheckpointError as exc:
            print("FAILED CLEANLY:", exc)
            sys.exit(0)
        sys.exit(3)
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, timeout=60
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "FAILED CLEANLY" in proc.stdout and "File too large" in proc.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    assert store.load_latest()[1]["step"] == 1


_SAVER = textwrap.dedent(
    """
    import sys
    import numpy as np
    from firmware_bridge.checkpoints import CheckpointStore

    store = CheckpointStore(sys.argv[1], keep=2)
    found = store.load_latest()
    step = 0 if found is None else found[1]["step"] + 1
    print("start", step, flush=True)
    while True:
        tensors = {f"params.w{i}": np.full((256, 1024), step, np.float32) for i in range(6)}
        tensors["norm.count"] = np.array(step, np.int64)
        store.save(step, tensors, {"step": step})
        print("saved", step, flush=True)
        step += 1
    """
)


@pytest.mark.slow
def test_sigkill_mid_save_never_loses_a_complete_checkpoint(tmp_path):
    directory = tmp_path / "ck"
    rng = random.Random(1234)
    last_saved = -1
    caught_mid_write = 0
    for round_ in range(24):
        proc = subprocess.Popen(
            [sys.executable, "-c", _SAVER, str(directory)],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        deadline = time.monotonic() + rng.uniform(0.3, 1.2)
        wait_for_tmp = round_ % 2 == 0  # half the kills aim at an open temp file
        while time.monotonic() < deadline:
            if wait_for_tmp and directory.is_dir() and _leftovers(directory):
                break
            time.sleep(0.0005)
        in_flight = directory.is_dir() and bool(_leftovers(directory))
        proc.send_signal(signal.SIGKILL)
        out, err = proc.communicate(timeout=30)
        assert proc.returncode == -signal.SIGKILL, err
        caught_mid_write += in_flight
        saved = [int(line.split()[1]) for line in out.splitlines() if line.startswith("saved")]
        if saved:
            last_saved = saved[-1]

        store = CheckpointStore(directory, keep=2)
        found = store.load_latest()
        assert _leftovers(directory) == []  # temp files cleaned
        if last_saved < 0:
            continue  # killed before the first save finished: nothing to load is correct
        assert found is not None
        tensors, meta, path = found
        step = meta["step"]
        assert step >= last_saved  # never older than a save that reported success
        assert int(tensors["norm.count"]) == step
        for i in range(6):
            w = tensors[f"params.w{i}"]
            assert w.shape == (256, 1024) and (w == step).all()
        # every npz left is referenced by a record (orphans removed), at most keep + 1 kept
        referenced = {json.loads(p.read_text())["npz"] for p in store.list()}
        assert {p.name for p in directory.glob("*.npz")} == referenced
        assert len(store.list()) <= 3
    print(f"last saved step {last_saved}, kills that hit an open temp file: {caught_mid_write}/24")
    assert last_saved >= 3, "the saver never got going; the test proved nothing"
    assert caught_mid_write >= 5, f"only {caught_mid_write} kills hit an open temp file"


def test_check_writable_creates_the_directory_and_names_what_is_wrong(tmp_path):
    CheckpointStore(tmp_path / "a" / "b").check_writable()
    assert (tmp_path / "a" / "b").is_dir() and list((tmp_path / "a" / "b").iterdir()) == []
    (tmp_path / "f").write_text("x")
    with pytest.raises(CheckpointError, match="a file is in the way"):
        CheckpointStore(tmp_path / "f").check_writable()
    with pytest.raises(CheckpointError, match="a parent of it is a file"):
        CheckpointStore(tmp_path / "f" / "ck").check_writable()
    assert (tmp_path / "f").read_text() == "x"
    directory = tmp_path / "ro"
    directory.mkdir()
    undo = _make_unwritable(directory)
    if undo is None:
        return  # root without chattr: the file-in-the-way cases above are the test here
    try:
        with pytest.raises(CheckpointError, match="cannot be written"):
            CheckpointStore(directory).check_writable()
    finally:
        undo()
