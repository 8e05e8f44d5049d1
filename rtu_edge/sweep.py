"""`rtu-edge sweep SPEC.toml`: a grid of training runs in local processes or Ray tasks, resumable.

A spec names the grid; every combination is one run of `rtu-edge train` in its own process
(a crash or a kill of one run never takes the others down):

    # sweep.toml
    out = "runs/cells"              # the sweep directory (runs and the index go here)
    steps = 20000
    workers = 2                     # parallel processes (default: the CPU count)
    envs = ["classic/CartPole-P"]
    cells = ["rtu", "mlp"]
    algos = ["ac"]
    seeds = [0, 1]
    budgets = [24960]               # optional: size each cell for this many recurrent params
    [[variants]]                    # optional: named sets of `--set` overrides, crossed too
    name = "lam0.8"
    set = ["learner.lam=0.8"]

`OUT/index.json` lists every run with its status (pending, running, done, failed), attempts and
directory, rewritten atomically after every change. Running the same spec again skips the runs
that are done, resumes the interrupted ones from their checkpoints, and retries a failed run
once more. Progress: runs done / running / failed and the time left, estimated from the runs
finished so far.

On a Ray cluster (`rtu-edge sweep SPEC --ray ADDRESS`, `run_sweep(spec, ray_address=...)`;
Ray is an optional extra: ``pip install 'rtu-edge[ray]'``), every run is one Ray task (one CPU)
that starts the same `rtu-edge train` process on whichever node Ray picks; the index, the
skipping, resuming and retry-once rules are those above (the same code), and a run whose task
or node dies counts as a crash. ADDRESS is ``local`` (start a Ray instance on this machine with
`workers` CPUs), ``auto`` (the cluster this machine belongs to, or $RAY_ADDRESS) or an address
as `ray.init` takes it (``ray://head:10001``, ``head:6379``). Up to as many runs as the cluster
has CPUs are in flight (`workers` sizes only a local instance). The sweep directory must be on
a filesystem every node sees (the runs write into it), and every node needs rtu-edge installed
with the same Python version. Ctrl-C cancels the in-flight tasks (each run checkpoints on the
SIGTERM), so running the spec again resumes them.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from pathlib import Path

from firmware_bridge.atomic import atomic_write_json

INDEX = "index.json"
MAX_ATTEMPTS = 2  # a crashed run is retried once


class SweepError(ValueError):
    """A spec that cannot be run; the message names the field."""


@dataclass
class Spec:
    out: str
    steps: int
    envs: list[str]
    cells: list[str]
    algos: list[str] = field(default_factory=lambda: ["ac"])
    seeds: list[int] = field(default_factory=lambda: [0])
    # recurrent-parameter budgets (`rtu-edge train --budget`); [None]: the default hidden size
    budgets: list[int | None] = field(default_factory=lambda: [None])
    variants: list[dict] = field(default_factory=lambda: [{"name": "default", "set": []}])
    workers: int = field(default_factory=lambda: os.cpu_count() or 1)
    extra: list[str] = field(default_factory=list)  # more `rtu-edge train` options, verbatim


def load_spec(path: str | Path) -> Spec:
    try:
        import tomllib
    except ImportError:  # Python 3.10
        import tomli as tomllib
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text())
    except (OSError, UnicodeDecodeError) as e:
        raise SweepError(f"cannot read the sweep spec {path}: {e}") from None
    except tomllib.TOMLDecodeError as e:
        raise SweepError(f"{path} is not valid TOML: {e}") from None
    known = {f for f in Spec.__dataclass_fields__}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise SweepError(f"{path}: unknown fields {unknown}; the fields are {sorted(known)}")
    for key in ("out", "steps", "envs", "cells"):
        if key not in raw:
            raise SweepError(f"{path}: missing field '{key}'")
    try:
        spec = Spec(**raw)
    except TypeError as e:
        raise SweepError(f"{path}: {e}") from None
    if not isinstance(spec.steps, int) or spec.steps < 1:
        raise SweepError(f"{path}: steps must be a positive integer, got {spec.steps!r}")
    if not isinstance(spec.workers, int) or spec.workers < 1:
        raise SweepError(f"{path}: workers must be a positive integer, got {spec.workers!r}")
    for key in ("envs", "cells", "algos", "seeds", "variants", "budgets"):
        value = getattr(spec, key)
        if not isinstance(value, list) or not value:
            raise SweepError(f"{path}: {key} must be a non-empty list")
    for b in spec.budgets:
        if b is not None and (not isinstance(b, int) or isinstance(b, bool) or b < 1):
            raise SweepError(f"{path}: budgets must be positive integers, got {b!r}")
    for v in spec.variants:
        if (
            not isinstance(v, dict)
            or not isinstance(v.get("name"), str)
            or not isinstance(v.get("set", []), list)
        ):
            raise SweepError(f"{path}: each [[variants]] needs a name and a list 'set'")
    return spec


@dataclass
class RunEntry:
    name: str  # directory name inside the sweep
    env: str
    cell: str
    algo: str
    seed: int
    variant: str
    sets: list[str]
    budget: int | None = None
    status: str = "pending"  # pending | running | done | failed
    attempts: int = 0
    seconds: float | None = None
    error: str | None = None


def grid(spec: Spec) -> list[RunEntry]:
    runs = []
    for env, cell, algo, variant, budget, seed in itertools.product(
        spec.envs, spec.cells, spec.algos, spec.variants, spec.budgets, spec.seeds
    ):
        name = f"{env.replace('/', '_')}__{cell}__{algo}__{variant['name']}"
        if budget is not None:
            name += f"__b{budget}"
        name += f"__s{seed}"
        runs.append(
            RunEntry(
                name,
                env,
                cell,
                algo,
                int(seed),
                variant["name"],
                list(variant.get("set", [])),
                budget,
            )
        )
    return runs


def _command(spec: Spec, run: RunEntry, run_dir: Path) -> list[str]:
    base = [sys.executable, "-m", "cli", "train", "--out", str(run_dir), "--no-progress"]
    if (run_dir / "checkpoint.safetensors").is_file() and (run_dir / "config.json").is_file():
        return base + ["--resume", "--steps", str(spec.steps)]  # continue an interrupted run
    cmd = base + ["--overwrite", "--env", run.env, "--cell", run.cell, "--algo", run.algo]
    cmd += ["--seed", str(run.seed), "--steps", str(spec.steps), *spec.extra]
    if run.budget is not None:
        cmd += ["--budget", str(run.budget)]
    for s in run.sets:
        cmd += ["--set", s]
    return cmd


ROOT = Path(__file__).resolve().parents[1]  # where cli.py lives


def _launch(cmd: list[str], log_path: Path) -> int:
    with open(log_path, "ab") as log:
        return subprocess.run(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT).returncode


# ---- Ray: the same runs as Ray tasks --------------------------------------------------------


def import_ray():
    try:
        import ray
    except ImportError:
        raise SweepError(
            "--ray needs Ray, an optional extra: pip install 'rtu-edge[ray]'"
        ) from None
    return ray


def _ray_run(args: list[str], root: str, log_path: str) -> int:
    """The body of one Ray task: `python -m cli train ...` on the worker's node, its output
    appended to the run's log; a cancelled task stops its run (SIGTERM: it checkpoints)."""
    cwd = root if (Path(root) / "cli.py").is_file() else None  # else the installed cli module
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, *args], cwd=cwd, stdout=log, stderr=subprocess.STDOUT
        )
        try:
            return proc.wait()
        except BaseException:  # ray.cancel raises KeyboardInterrupt here
            proc.terminate()
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
            raise


def _check_reachable(address: str, timeout: float = 10.0) -> None:
    """Fail fast on a host:port (or ray://host:port) that nothing listens at: `ray.init`
    waits for such a cluster for many minutes."""
    import socket

    hostport = address.removeprefix("ray://")
    host, sep, port = hostport.rpartition(":")
    if not sep or not port.isdigit() or not host:
        return  # "auto", a name Ray resolves itself: let ray.init decide
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as e:
        raise SweepError(
            f"cannot reach Ray at --ray {address}: {e}; is the head node started "
            "(`ray start --head`) and the port open?"
        ) from None


class RayBackend:
    """Runs `rtu-edge train` commands as Ray tasks; `parallel` is the cluster's CPU count."""

    def __init__(self, address: str, workers: int, log=print) -> None:
        ray = self.ray = import_ray()
        self.log = log
        self.started = False
        if not ray.is_initialized():
            try:
                if address == "local":
                    ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False)
                else:
                    _check_reachable(address)
                    ray.init(address=address, log_to_driver=False)
            except SweepError:
                raise
            except Exception as e:  # ConnectionError, ValueError, RuntimeError, ...
                first = (str(e).strip().splitlines() or [""])[0]
                raise SweepError(
                    f"cannot start or reach Ray at --ray {address}: {type(e).__name__}: {first}"
                ) from None
            self.started = True
        self.parallel = max(1, int(ray.cluster_resources().get("CPU", 1)))
        self.task = ray.remote(num_cpus=1, max_retries=0)(_ray_run)  # retries: ours, once
        self.in_flight: set = set()
        where = address if self.started else f"the instance already connected, not {address}"
        log(f"sweep on Ray ({where}): {self.parallel} CPUs, one run per CPU")

    def __call__(self, cmd: list[str], log_path: Path) -> int:
        ref = self.task.remote(cmd[1:], str(ROOT), str(log_path))  # cmd[0]: this interpreter
        self.in_flight.add(ref)
        try:
            return self.ray.get(ref)
        except self.ray.exceptions.RayError as e:  # the task, its worker or its node died
            first = (str(e).strip().splitlines() or [""])[0]
            self.log(f"ray: {log_path.stem}: {type(e).__name__}: {first}")
            return -1
        finally:
            self.in_flight.discard(ref)

    def cancel(self) -> None:
        for ref in list(self.in_flight):
            self.ray.cancel(ref)

    def close(self) -> None:
        if self.started:
            self.ray.shutdown()


def run_sweep(spec: Spec, log=print, ray_address: str | None = None) -> dict:
    """Run (or continue) the sweep; returns the index as written to OUT/index.json.

    ray_address: run every run as a Ray task there instead of a local process (see the module
    docstring); an instance this call started is shut down at the end."""
    backend = None if ray_address is None else RayBackend(ray_address, spec.workers, log)
    try:
        return _run_sweep(spec, log, backend)
    finally:
        if backend is not None:
            backend.close()


def _run_sweep(spec: Spec, log, backend: RayBackend | None) -> dict:
    launch = _launch if backend is None else backend
    parallel = spec.workers if backend is None else backend.parallel
    out = Path(spec.out)
    out.mkdir(parents=True, exist_ok=True)
    index_path = out / INDEX
    previous = {}
    if index_path.is_file():
        try:
            previous = {r["name"]: r for r in json.loads(index_path.read_text())["runs"]}
        except (ValueError, KeyError, TypeError):
            raise SweepError(
                f"{index_path} is damaged; move it away to start the index anew"
            ) from None
    runs = grid(spec)
    for r in runs:
        old = previous.get(r.name)
        if old:
            r.attempts = int(old.get("attempts", 0))
            r.status = old.get("status", "pending")
        if (out / r.name / "summary.json").is_file():
            r.status = "done"
        elif r.status == "running":  # the sweep was killed: the run resumes from its checkpoint
            r.status = "pending"
        elif r.status == "failed" and r.attempts < MAX_ATTEMPTS:
            r.status = "pending"

    def write_index() -> dict:
        index = {"spec": asdict(spec), "runs": [asdict(r) for r in runs]}
        atomic_write_json(index_path, index)
        return index

    write_index()
    todo = [r for r in runs if r.status == "pending"]
    t0, durations = time.monotonic(), []

    def progress() -> None:
        done = sum(r.status == "done" for r in runs)
        running = sum(r.status == "running" for r in runs)
        failed = sum(r.status == "failed" for r in runs)
        left = len(runs) - done - failed
        eta = ""
        if durations:
            eta = f", about {sum(durations) / len(durations) * left / parallel / 60:.1f} min left"
        log(f"sweep {out}: {done}/{len(runs)} done, {running} running, {failed} failed{eta}")

    def one(r: RunEntry) -> int:
        run_dir = out / r.name
        run_dir.mkdir(parents=True, exist_ok=True)
        return launch(_command(spec, r, run_dir), out / f"{r.name}.log")

    def schedule() -> None:  # keep up to `parallel` runs in flight; a failed run once more
        active: dict[Future, tuple[RunEntry, float]] = {}
        queue = list(todo)
        while queue or active:
            while queue and len(active) < parallel:
                r = queue.pop(0)
                r.status, r.attempts = "running", r.attempts + 1
                write_index()
                active[pool.submit(one, r)] = (r, time.monotonic())
            progress()
            finished, _ = wait(active, return_when=FIRST_COMPLETED)
            for fut in finished:
                r, started = active.pop(fut)
                r.seconds = time.monotonic() - started
                rc = fut.result()
                if rc == 0 and (out / r.name / "summary.json").is_file():
                    r.status, r.error = "done", None
                    durations.append(r.seconds)
                elif r.attempts < MAX_ATTEMPTS:
                    r.status, r.error = "pending", f"exit code {rc}; retrying"
                    queue.append(r)
                else:
                    r.status, r.error = "failed", f"exit code {rc}; see {out / (r.name + '.log')}"
                write_index()

    with ThreadPoolExecutor(max_workers=parallel) as pool:
        try:
            schedule()
        except BaseException:  # Ctrl-C: stop the Ray tasks too (local runs get the SIGINT)
            if backend is not None:
                backend.cancel()
            raise
    progress()
    log(f"sweep finished in {time.monotonic() - t0:.0f}s; index: {index_path}")
    return write_index()
