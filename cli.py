"""The `rtu-edge` command line. Each command builds a config and calls one library function.

Heavy imports (torch, gymnasium, onnx) live inside the command bodies so that `--help` and the
robot path (`run`, `ports`) stay light: `rtu-edge run` never imports torch.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Annotated

import typer

from rtu_edge.config import DEFAULT_ENV, NetConfig  # torch-free: the one source of defaults

app = typer.Typer(
    help="Recurrent Trace Units with exact RTRL: train on a workstation, keep learning on the robot.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

_NET = NetConfig()


def _fail(msg: str, code: int = 1) -> None:
    typer.echo(f"error: {msg}", err=True)
    raise typer.Exit(code)


def _usage(ok: bool, msg: str) -> None:
    """A bad option value: one line on stderr, exit code 2 (as for other usage errors)."""
    if not ok:
        _fail(msg, code=2)


def _file_id(path: Path) -> tuple[int, int] | None:
    """(inode, mtime_ns) of a file, None if missing: an atomic rewrite changes it."""
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_ino, st.st_mtime_ns


def _need_train_extra() -> None:
    try:
        import torch  # noqa: F401
    except ImportError:
        _fail("this command needs the workstation install: pip install 'rtu-edge[train]'")


@app.command()
def train(
    out: Annotated[Path, typer.Option(help="Run directory to create.")] = Path("runs/latest"),
    env: Annotated[
        str, typer.Option(help="Environment id (`rtu-edge envs` lists them).")
    ] = DEFAULT_ENV,
    cell: Annotated[str, typer.Option(help="Cell (`rtu-edge cells` lists them).")] = _NET.cell,
    algo: Annotated[str, typer.Option(help="Learner (`rtu-edge cells` lists them too).")] = "ac",
    steps: Annotated[int | None, typer.Option(help="Environment steps [default: 50000].")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed [default: 0].")] = None,
    seeds: Annotated[
        str | None,
        typer.Option(
            help="Train these seeds (comma-separated, e.g. 0,1,2,3) in this one process as a "
            "batch: one vmapped learn step per tick for all of them, one run directory per seed "
            "(--out DIR gives DIR/seed0, DIR/seed1, ...), each as --seed would write it. "
            "--algo ac only; with --resume, continues them all."
        ),
    ] = None,
    hidden_size: Annotated[int, typer.Option(help="Cell units n.")] = _NET.hidden_size,
    budget: Annotated[
        int | None,
        typer.Option(
            help="Size the cell for this many recurrent parameters (the paper compares cells "
            "at 24,960): sets --hidden-size to the largest that fits (`rtu-edge cells --budget`)."
        ),
    ] = None,
    encoder_size: Annotated[int, typer.Option(help="Encoder width.")] = _NET.encoder_size,
    head_size: Annotated[int, typer.Option(help="Actor/critic hidden width.")] = _NET.head_size,
    layer_norm: Annotated[
        bool, typer.Option(help="LayerNorm before the encoder's and heads' tanh.")
    ] = _NET.layer_norm,
    set_: Annotated[
        list[str] | None,
        typer.Option(
            "--set",
            help="Override any hyperparameter: learner.lam=0.9, cell.activation=tanh, "
            "net.sparsity=0.5 (repeatable; `rtu-edge cells` lists the options).",
        ),
    ] = None,
    overwrite: Annotated[bool, typer.Option(help="Write into a non-empty run directory.")] = False,
    compile: Annotated[
        str,
        typer.Option(
            help="torch.compile the learn step: auto (>= 100k steps, over all --seeds) | yes | no."
        ),
    ] = "auto",
    resume: Annotated[
        bool,
        typer.Option(help="Continue the run in --out from its last checkpoint (its own options)."),
    ] = False,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
    tensorboard: Annotated[
        bool,
        typer.Option(
            help="Also log the metrics.csv rows as TensorBoard scalars in RUN/tb/ "
            "(needs pip install tensorboard; a resumed run keeps its own choice or turns it on)."
        ),
    ] = False,
) -> None:
    """Train an agent (a cell with exact RTRL) on a gymnasium / MuJoCo / POPGym environment."""
    _usage(
        not out.exists() or out.is_dir(),
        f"--out {out} is a file, not a run directory; choose another --out",
    )
    _usage(steps is None or steps > 0, f"--steps must be at least 1, got {steps}")
    seed_list = None if seeds is None else _parse_seeds(seeds)
    _usage(seed_list is None or seed is None, "give --seed or --seeds, not both")
    for name, v in (
        ("hidden-size", hidden_size),
        ("encoder-size", encoder_size),
        ("head-size", head_size),
    ):
        _usage(v > 0, f"--{name} must be at least 1, got {v}")
    _usage(budget is None or budget > 0, f"--budget must be at least 1, got {budget}")
    _usage(
        not (resume and budget is not None),
        "--budget sizes a new run; a resumed run keeps its own size (drop --budget)",
    )
    _need_train_extra()
    from rtu_edge.cells import CELLS
    from rtu_edge.config import OverrideError, TrainConfig, apply_overrides
    from rtu_edge.learners import get_learner
    from rtu_edge.run_dir import RunDirError, resume_config, seed_dir
    from rtu_edge.train import CHECKPOINT, train_batch
    from rtu_edge.train import train as run_training

    run_dirs = [out] if seed_list is None else [seed_dir(out, s) for s in seed_list]
    checkpoints_before = [_file_id(d / CHECKPOINT) for d in run_dirs]
    try:
        if resume:  # the runs' own options; only --steps may raise the total
            cfgs = [resume_config(d, steps) for d in run_dirs]
            for c in cfgs:
                c.tensorboard = c.tensorboard or tensorboard
        else:
            if cell not in CELLS:
                raise ValueError(f"unknown cell {cell!r}; choose one of {sorted(CELLS)}")
            net = NetConfig(
                cell=cell,
                hidden_size=hidden_size,
                encoder_size=encoder_size,
                head_size=head_size,
                layer_norm=layer_norm,
            )
            cfg = TrainConfig(
                out=str(out),
                env=env,
                algo=algo,
                steps=50_000 if steps is None else steps,
                seed=0 if seed is None else seed,
                overwrite=overwrite,
                compile=compile,
                tensorboard=tensorboard,
                net=net,
                learner=get_learner(algo).Config(),
            )
            apply_overrides(cfg, set_ or [], cell_factory=CELLS[cell])
            if budget is not None:  # after the overrides: cell options change the count
                from rtu_edge.cells.budget import size_for_budget

                cfg.net.hidden_size = size_for_budget(
                    cell, cfg.net.encoder_size, budget, **cfg.net.cell_options
                )
            cfgs = [cfg] if seed_list is None else _per_seed(cfg, seed_list, run_dirs)
        if seed_list is None:
            summaries = [run_training(cfgs[0], progress=progress)]
        else:
            summaries = train_batch(cfgs, progress=progress)
    except (
        ValueError,
        FileExistsError,
        FileNotFoundError,
        KeyError,
        OverrideError,
        RunDirError,
    ) as e:
        _fail(str(e))
    except KeyboardInterrupt:
        # say only what is true: was a checkpoint written by this command?
        again = f"rtu-edge train --out {out}" + (f" --seeds {seeds}" if seed_list else "")
        now = [_file_id(d / CHECKPOINT) for d in run_dirs]
        if any(n not in (None, b) for n, b in zip(now, checkpoints_before)):
            _fail(f"interrupted; checkpoint saved. Continue with: {again} --resume", 130)
        if any(b is not None for b in checkpoints_before):
            _fail(
                f"interrupted before a new checkpoint was written; the previous one in {out} is "
                f"unchanged. Continue from it with: {again} --resume",
                130,
            )
        _fail("interrupted before any checkpoint was written; start the run again", 130)
    tb = ", tb/" if cfgs[0].tensorboard else ""
    files = f"metrics.csv{tb}, learning_curve.png, checkpoint.safetensors"
    if seed_list is None:
        typer.echo(json.dumps(summaries[0], indent=2))
        typer.echo(f"run written to {out} ({files})")
    else:
        typer.echo(json.dumps({str(d): s for d, s in zip(run_dirs, summaries)}, indent=2))
        names = ", ".join(str(d) for d in run_dirs)
        typer.echo(f"runs written to {names} (each: {files})")


def _parse_seeds(text: str) -> list[int]:
    """`--seeds 0,1,2`: distinct integers, or a usage error."""
    try:
        out = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        out = []
    _usage(bool(out), f"--seeds must be comma-separated integers such as 0,1,2,3; got {text!r}")
    _usage(len(set(out)) == len(out), f"--seeds lists a seed twice: {text!r}")
    return out


def _per_seed(cfg, seed_list: list[int], run_dirs: list[Path]) -> list:
    """One copy of `cfg` per seed, each with its own seed and run directory."""
    import copy

    out = []
    for s, d in zip(seed_list, run_dirs):
        c = copy.deepcopy(cfg)
        c.seed, c.out = s, str(d)
        out.append(c)
    return out


@app.command()
def cells(
    budget: Annotated[
        int | None,
        typer.Option(help="Also size every cell for this many recurrent parameters."),
    ] = None,
    input_size: Annotated[
        int, typer.Option(help="Cell input width for --budget (the encoder width).")
    ] = 64,
    truncation: Annotated[int, typer.Option(help="T of the T-BPTT cost column.")] = 16,
) -> None:
    """List the cells and learners, with their options and defaults (and sizes at a budget)."""
    for name, v in (
        ("budget", budget or 1),
        ("input-size", input_size),
        ("truncation", truncation),
    ):
        _usage(v > 0, f"--{name} must be at least 1, got {v}")
    _need_train_extra()
    if budget is not None:
        from rtu_edge.cells.budget import budget_table

        rows = budget_table(input_size, budget, truncation)
        typer.echo(f"cells at {budget} recurrent parameters, input width {input_size}:")
        typer.echo(f"  {'cell':<14} {'n':>5} {'params':>8} {'RTRL FLOPs':>11} {'T-BPTT FLOPs':>13}")
        for r in rows:
            rtrl = "-" if r["rtrl_flops"] is None else f"{r['rtrl_flops']:,}"
            tb = f"{r[f'tbptt{truncation}_flops']:,}"
            typer.echo(
                f"  {r['cell']:<14} {r['hidden_size']:>5} {r['recurrent_params']:>8,} "
                f"{rtrl:>11} {tb:>13}  (T={truncation})"
            )
    from dataclasses import fields

    from rtu_edge.cells import CELLS
    from rtu_edge.config import cell_options
    from rtu_edge.learners import LEARNERS

    typer.echo("cells (--cell; options with --set cell.<name>=<value>):")
    for name, factory in CELLS.items():
        doc = (factory.__doc__ or "").strip().splitlines()[0]
        opts = ", ".join(f"{k}={v!r}" for k, v in cell_options(factory).items())
        typer.echo(f"  {name:<16} {doc}\n  {'':<16} options: {opts or '-'}")
    typer.echo("learners (--algo; options with --set learner.<name>=<value>):")
    for name, learner in LEARNERS.items():
        opts = ", ".join(
            f"{f.name}={getattr(learner.Config(), f.name)!r}" for f in fields(learner.Config)
        )
        typer.echo(f"  {name:<16} {learner.description}\n  {'':<16} options: {opts}")


@app.command("export")
def export_cmd(
    run_dir: Annotated[Path, typer.Argument(help="A run directory written by `rtu-edge train`.")],
    out: Annotated[Path, typer.Option(help="Bundle directory to create.")] = Path("bundles/latest"),
    parity_steps: Annotated[int, typer.Option(help="Teacher-forced parity steps (>= 200).")] = 256,
    parity: Annotated[bool, typer.Option(help="Run the parity check (default on).")] = True,
    max_delta: Annotated[
        float | None, typer.Option(help="Cap on the action change per tick.")
    ] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing bundle.")] = False,
) -> None:
    """Export the act and learn steps of a run to ONNX (opset 18) with a manifest."""
    _usage(
        max_delta is None or (math.isfinite(max_delta) and max_delta > 0),
        f"--max-delta must be a positive number (the largest action change per tick), got "
        f"{max_delta}; leave it out for no cap",
    )
    _need_train_extra()
    from export.bundle import ExportConfig, ParityError, export_run

    cfg = ExportConfig(
        run_dir=str(run_dir),
        out=str(out),
        parity_steps=parity_steps,
        check_parity=parity,
        max_delta=max_delta,
        overwrite=overwrite,
    )
    try:
        export_run(cfg, log=typer.echo)
    except ParityError as e:
        _fail(str(e), code=3)
    except (FileNotFoundError, FileExistsError, ValueError) as e:  # RunDirError is a ValueError
        _fail(str(e))


@app.command()
def run(
    bundle: Annotated[Path, typer.Argument(help="Bundle directory written by `rtu-edge export`.")],
    port: Annotated[str, typer.Option(help="Serial device (`rtu-edge ports` lists them).")],
    learn: Annotated[
        bool, typer.Option("--learn/--no-learn", help="Keep learning on the robot.")
    ] = True,
    steps: Annotated[
        int | None, typer.Option(help="Stop after N ticks (default: until Ctrl-C).")
    ] = None,
    checkpoint_dir: Annotated[
        Path | None, typer.Option(help="Default: <bundle>-checkpoints.")
    ] = None,
    fresh: Annotated[
        bool, typer.Option(help="Ignore checkpoints; start from the bundle's state.")
    ] = False,
    baud: Annotated[int, typer.Option(help="Baud rate of a real UART.")] = 1_000_000,
    seed: Annotated[int, typer.Option(help="Exploration noise seed.")] = 0,
    checkpoint_every: Annotated[
        float, typer.Option(help="Seconds between checkpoints while learning (and one at exit).")
    ] = 30.0,
    summary_json: Annotated[Path | None, typer.Option(help="Also write the summary here.")] = None,
) -> None:
    """Run an exported agent on the robot with onnxruntime only (no torch)."""
    _usage(baud > 0, f"--baud must be the MCU's UART rate (e.g. 1000000), got {baud}")
    _usage(
        math.isfinite(checkpoint_every) and checkpoint_every > 0,
        f"--checkpoint-every must be a positive number of seconds, got {checkpoint_every}",
    )
    _usage(
        steps is None or steps > 0,
        f"--steps must be at least 1 (leave it out to run until Ctrl-C), got {steps}",
    )
    from firmware_bridge.bundle import BundleError
    from firmware_bridge.checkpoints import CheckpointError
    from firmware_bridge.link import LinkError
    from firmware_bridge.robot_loop import RunConfig, RunError, format_summary
    from firmware_bridge.robot_loop import run as run_robot
    from firmware_bridge.runtime import StepRunnerError

    cfg = RunConfig(
        bundle=str(bundle),
        port=port,
        learn=learn,
        steps=steps,
        checkpoint_dir=str(checkpoint_dir) if checkpoint_dir else None,
        fresh=fresh,
        baud=baud,
        seed=seed,
        checkpoint_every_s=checkpoint_every,
    )
    try:
        summary = run_robot(cfg, log=lambda m: typer.echo(m, err=True))
    except RunError as e:
        _fail(str(e), code=2)
    except (LinkError, BundleError, StepRunnerError, CheckpointError) as e:
        # typed errors carry actionable messages (HandshakeError is a LinkError)
        _fail(f"{type(e).__name__}: {e}", code=2)
    typer.echo(format_summary(summary))
    if summary_json:
        from firmware_bridge.atomic import atomic_write_json

        try:
            atomic_write_json(summary_json, summary)
        except OSError as e:  # the run finished; its summary was printed above
            typer.echo(f"WARNING: could not write --summary-json {summary_json}: {e}", err=True)


@app.command("sim-robot")
def sim_robot(
    env: Annotated[str, typer.Option(help="Environment the simulated robot plays.")] = DEFAULT_ENV,
    link: Annotated[Path | None, typer.Option(help="Also symlink the device at this path.")] = None,
    seed: Annotated[int, typer.Option()] = 0,
    watchdog_s: Annotated[
        float, typer.Option(help="Safe action after this long without an action.")
    ] = 0.5,
    max_steps: Annotated[int | None, typer.Option(help="Exit after this many env steps.")] = None,
    period_ms: Annotated[
        int,
        typer.Option(
            help="Free-run at this control period (declared in HELLO): an OBS every period, "
            "answered or not; 0: lock-step (step when the ACTION arrives)."
        ),
    ] = 0,
    drop_prob: Annotated[float, typer.Option(help="Fault: outgoing frame lost.")] = 0.0,
    corrupt_prob: Annotated[float, typer.Option(help="Fault: one byte of a frame flipped.")] = 0.0,
    duplicate_prob: Annotated[float, typer.Option(help="Fault: frame written twice.")] = 0.0,
    garbage_prob: Annotated[
        float, typer.Option(help="Fault: random bytes before a frame (boot logs).")
    ] = 0.0,
    rx_drop_prob: Annotated[
        float, typer.Option(help="Fault: valid incoming frame ignored (host -> MCU loss).")
    ] = 0.0,
    split_writes: Annotated[
        bool, typer.Option(help="Fault: frames written in random 1..7-byte pieces.")
    ] = False,
    delay_s: Annotated[float, typer.Option(help="Fault: latency added before each write.")] = 0.0,
    reboot_after_steps: Annotated[
        int | None, typer.Option(help="Fault: reboot once after this many env steps.")
    ] = None,
    hang_after_steps: Annotated[
        int | None, typer.Option(help="Fault: stop reading and writing after this many steps.")
    ] = None,
) -> None:
    """Play the robot's microcontroller on a pseudo-terminal, driving a simulated environment."""
    for name, v in (
        ("drop-prob", drop_prob),
        ("corrupt-prob", corrupt_prob),
        ("duplicate-prob", duplicate_prob),
        ("garbage-prob", garbage_prob),
        ("rx-drop-prob", rx_drop_prob),
    ):
        _usage(0.0 <= v <= 1.0, f"--{name} must be a probability in [0, 1], got {v}")
    _usage(
        math.isfinite(delay_s) and delay_s >= 0,
        f"--delay-s must be a number of seconds >= 0, got {delay_s}",
    )
    for name, n in (
        ("reboot-after-steps", reboot_after_steps),
        ("hang-after-steps", hang_after_steps),
    ):
        _usage(n is None or n > 0, f"--{name} must be at least 1 (leave it out for none), got {n}")
    _usage(
        math.isfinite(watchdog_s) and watchdog_s > 0,
        f"--watchdog-s must be a positive number of seconds, got {watchdog_s}",
    )
    _usage(
        max_steps is None or max_steps > 0,
        f"--max-steps must be at least 1 (leave it out to run until stopped), got {max_steps}",
    )
    _usage(
        0 <= period_ms <= 0xFFFF,
        f"--period-ms must be a whole number of milliseconds in [0, 65535] (0: lock-step), "
        f"got {period_ms}",
    )
    import signal
    import threading

    from firmware_bridge.sim_robot import SimFaults, SimRobot
    from rtu_edge import envs as envs_mod

    try:
        info = envs_mod.env_info(env)
        environment = envs_mod.make(env, seed=seed)
    except (KeyError, ValueError, ImportError) as e:
        _fail(str(e))
    try:
        robot = SimRobot(
            environment,
            action_kind=info.action_kind,
            safe_action=list(info.safe_action),
            watchdog_s=watchdog_s,
            period_s=period_ms / 1000,
            seed=seed,
            faults=SimFaults(
                drop_prob=drop_prob,
                corrupt_prob=corrupt_prob,
                duplicate_prob=duplicate_prob,
                split_writes=split_writes,
                garbage_prob=garbage_prob,
                rx_drop_prob=rx_drop_prob,
                delay_s=delay_s,
                reboot_after_steps=reboot_after_steps,
                hang_after_steps=hang_after_steps,
            ),
            link_path=str(link) if link else None,
        )
    except OSError as e:  # --link: something else is at the path, or its directory is missing
        _fail(f"cannot create --link {link}: {e.strerror or e}")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    typer.echo(f"simulated robot ({env}) on {robot.device_path}" + (f" -> {link}" if link else ""))
    typer.echo(
        "connect with: rtu-edge run BUNDLE --port " + (str(link) if link else robot.device_path)
    )
    try:
        robot.serve(stop, max_steps=max_steps)
    except KeyboardInterrupt:
        pass
    finally:
        robot.close()
        st = robot.stats
        mean = sum(st.returns) / len(st.returns) if st.returns else float("nan")
        typer.echo(
            f"sim-robot: {st.steps} steps, {st.episodes} episodes (mean return {mean:.1f}), "
            f"watchdog trips {st.watchdog_trips}, safe actions {st.safe_applied}"
            + (
                f", late actions {st.actions_late}, periods held {st.steps_held}"
                if period_ms
                else ""
            )
        )


@app.command()
def ports() -> None:
    """List serial ports."""
    from firmware_bridge.link import list_ports

    found = list_ports()
    if not found:
        typer.echo("no serial ports found (is the robot plugged in? see /dev/serial/by-id/)")
    for device, description in found:
        typer.echo(f"{device}\t{description}")


@app.command()
def envs() -> None:
    """List the environment ids, one line each."""
    from rtu_edge.envs import list_envs

    for env_id, description in list_envs():
        typer.echo(f"{env_id:<36} {description}")


@app.command()
def demo(
    workdir: Annotated[Path, typer.Option(help="Where runs, bundles and checkpoints go.")] = Path(
        "demo"
    ),
    env: Annotated[str, typer.Option()] = DEFAULT_ENV,
    cell: Annotated[str, typer.Option()] = "rtu",
    train_steps: Annotated[int, typer.Option(help="Workstation training steps.")] = 15_000,
    robot_steps: Annotated[int, typer.Option(help="On-robot learning ticks.")] = 40_000,
    eval_steps: Annotated[int, typer.Option(help="Frozen-policy ticks before and after.")] = 5_000,
    seed: Annotated[int, typer.Option()] = 0,
) -> None:
    """The main job: train, export, start a simulated robot, learn on it, report what happened."""
    _need_train_extra()
    from cli_demo import DemoConfig, run_demo

    report = run_demo(
        DemoConfig(
            workdir=str(workdir),
            env=env,
            cell=cell,
            train_steps=train_steps,
            robot_steps=robot_steps,
            eval_steps=eval_steps,
            seed=seed,
        ),
        log=typer.echo,
    )
    typer.echo(report)


@app.command()
def plot(
    runs: Annotated[
        list[Path], typer.Argument(help="Run directories, or directories holding runs (a sweep).")
    ],
    out: Annotated[Path, typer.Option(help="Figure to write: .png or .svg.")] = Path("curves.png"),
    by: Annotated[
        str | None,
        typer.Option(
            help="Group runs by a key or a comma list of keys: cell, algo, env, gradient "
            "(rtrl, tbptt16), gradient_kind (rtrl, tbptt), "
            "variant, budget, seed, learner.<field>, net.<field>, any summary.json key; "
            "e.g. cell,gradient (default: cell)."
        ),
    ] = None,
    group: Annotated[
        str | None, typer.Option(help="The same as --by (kept for older command lines).")
    ] = None,
    x: Annotated[
        str | None,
        typer.Option(
            "--x",
            help="Summary figure: x of each run's point, a key as for --by "
            "(flops_per_step, learner.truncation, net.hidden_size, ...). Needs --y.",
        ),
    ] = None,
    y: Annotated[
        str | None,
        typer.Option(
            "--y",
            help="Summary figure: y of each run's point (msre, final_return, us_per_step = "
            "1e6 / steps_per_second, ...). Needs --x.",
        ),
    ] = None,
    logx: Annotated[bool, typer.Option(help="Log-scale x axis (summary figure).")] = False,
    logy: Annotated[bool, typer.Option(help="Log-scale y axis (summary figure).")] = False,
    flat: Annotated[
        bool,
        typer.Option(
            help="Summary figure: draw a group measured at one x only as a horizontal line "
            "(RTRL in a time-vs-T figure: its cost does not depend on T)."
        ),
    ] = False,
    where: Annotated[
        list[str] | None,
        typer.Option(
            help="Keep only runs with KEY=VALUE[,VALUE...], a key as for --by "
            "(budget=24960, gradient_kind=tbptt, cell=rtu,gru); repeatable, all must hold."
        ),
    ] = None,
    skip_missing: Annotated[
        bool, typer.Option(help="Leave out runs that lack a key (unfinished, other learners).")
    ] = False,
    title: Annotated[str | None, typer.Option(help="Figure title [default: the env ids].")] = None,
) -> None:
    """Learning curves (each group's mean over seeds with a 95% confidence band), or with --x
    and --y a summary figure: one point per run, the seeds of a group at one x averaged with a
    95% confidence interval, one line per group sorted by x."""
    _usage(out.suffix.lower() in (".png", ".svg"), f"--out {out} must end in .png or .svg")
    _usage(by is None or group is None, "--group is another name for --by; give one of them")
    _usage((x is None) == (y is None), "a summary figure needs both --x and --y")
    summary_mode = x is not None
    _usage(
        summary_mode or not (logx or logy or flat),
        "--logx, --logy and --flat need a summary figure (--x and --y)",
    )
    by = by or group or "cell"
    try:
        from rtu_edge.plots import plot_runs, plot_summary
    except ImportError as e:
        _fail(str(e))
    try:
        if summary_mode:
            series = plot_summary(
                runs, out, x, y, by=by, logx=logx, logy=logy, title=title,
                skip_missing=skip_missing, flat=flat, where=where,
            )  # fmt: skip
        else:
            groups = plot_runs(
                runs, out, by=by, title=title, skip_missing=skip_missing, where=where
            )
    except (FileNotFoundError, ValueError, KeyError, ImportError) as e:
        _fail(str(e))
    if summary_mode:
        for name, g in series.items():
            typer.echo(f"{name}:")
            for xv, m, lo, hi, n in zip(g["x"], g["mean"], g["low"], g["high"], g["n"]):
                typer.echo(f"  {x}={xv:.6g}  {y}={m:.6g}  95% CI [{lo:.6g}, {hi:.6g}]  n={n}")
    else:
        for name, g in groups.items():
            typer.echo(f"{name}: {g['seeds']} seed(s), final mean return {g['mean'][-1]:.2f}")
    typer.echo(f"figure written to {out}")


@app.command()
def sweep(
    spec: Annotated[Path, typer.Argument(help="A TOML spec (see rtu_edge/sweep.py).")],
    ray: Annotated[
        str | None,
        typer.Option(
            "--ray",
            metavar="ADDRESS",
            help="Run each run as a task on a Ray cluster: local (start one here with `workers` "
            "CPUs), auto (this machine's cluster or $RAY_ADDRESS), or an address such as "
            "ray://head:10001. Needs pip install 'rtu-edge\\[ray]' and a sweep directory every "
            "node sees.",
        ),
    ] = None,
) -> None:
    """Run a grid of trainings in parallel processes (or Ray tasks); rerun the spec to resume."""
    _need_train_extra()
    from rtu_edge.sweep import SweepError, load_spec, run_sweep

    _usage(ray is None or bool(ray.strip()), "--ray needs an address: local, auto or host:port")
    try:
        index = run_sweep(load_spec(spec), log=lambda m: typer.echo(m, err=True), ray_address=ray)
    except SweepError as e:
        _fail(str(e))
    failed = [r["name"] for r in index["runs"] if r["status"] == "failed"]
    if failed:
        _fail(f"{len(failed)} run(s) failed after a retry: {failed[:5]}")


@app.command()
def bench(
    bundles: Annotated[
        list[Path] | None,
        typer.Argument(
            help="Time these bundles (onnxruntime only: works on the robot install); with "
            "several, interleaved, and each one's times over the first's (an A/B).",
            show_default=False,
        ),
    ] = None,
    sizes: Annotated[
        str | None,
        typer.Option(
            help="Without BUNDLE: sizes to build, export and time against torch eager: "
            "tiny, demo, paper (default: demo,paper)."
        ),
    ] = None,
    steps: Annotated[int, typer.Option(help="Timed steps per path, graph and case.")] = 2000,
    warmup: Annotated[
        int,
        typer.Option(help="Untimed steps before timing (the first quarter with a moving robot)."),
    ] = 2000,
    rounds: Annotated[
        int, typer.Option(help="Interleaved rounds the timed steps are split in.")
    ] = 10,
    cases: Annotated[
        str, typer.Option(help="Comma-separated: moving, rest (obs held, noise as usual), zero.")
    ] = "moving,rest,zero",
    denormals: Annotated[
        str,
        typer.Option(
            help="flush subnormal floats as `rtu-edge run` does, or keep them (to compare)."
        ),
    ] = "flush",
    json_out: Annotated[
        Path | None,
        typer.Option("--json", help="Also write the full report and machine info here."),
    ] = None,
) -> None:
    """Act and learn step p50/p99 (onnxruntime, torch eager) against the memory-copy floor."""
    from firmware_bridge.bench import CASES, DENORMALS

    case_list = [c.strip() for c in cases.split(",") if c.strip()]
    _usage(steps > 0, f"--steps must be at least 1, got {steps}")
    _usage(warmup >= 0, f"--warmup must be 0 or more, got {warmup}")
    _usage(0 < rounds <= steps, f"--rounds must be between 1 and --steps ({steps}), got {rounds}")
    _usage(
        bool(case_list) and all(c in CASES for c in case_list),
        f"--cases must be a comma-separated list of {', '.join(CASES)}; got {cases!r}",
    )
    _usage(denormals in DENORMALS, f"--denormals must be flush or keep, got {denormals!r}")
    _usage(
        json_out is None or not json_out.is_dir(),
        f"--json {json_out} is a directory; give a file name",
    )
    if bundles:
        _usage(sizes is None, "give BUNDLEs or --sizes, not both")
        size_list: list[str] = []
    else:
        from export.bench_sizes import DEFAULT_SIZES, SIZES  # torch-free

        names = ",".join(DEFAULT_SIZES) if sizes is None else sizes
        size_list = [x.strip() for x in names.split(",") if x.strip()]
        _usage(
            bool(size_list) and all(x in SIZES for x in size_list),
            f"--sizes must be a comma-separated list of {', '.join(SIZES)}; got {sizes!r}",
        )
    from cli_bench import BenchConfig, run_bench_command
    from firmware_bridge.bench import BenchError, format_table
    from firmware_bridge.bundle import BundleError

    cfg = BenchConfig(
        bundles=[str(b) for b in bundles or ()],
        sizes=size_list,
        steps=steps,
        warmup=warmup,
        rounds=rounds,
        cases=case_list,
        denormals=denormals,
        json_out=None if json_out is None else str(json_out),
    )
    if not bundles:
        _need_train_extra()
    try:
        report = run_bench_command(cfg, log=lambda m: typer.echo(m, err=True))
    except (BundleError, BenchError) as e:
        _fail(f"{type(e).__name__}: {e}", code=2)
    typer.echo(format_table(report))
    if json_out:
        from firmware_bridge.atomic import atomic_write_json

        try:
            atomic_write_json(json_out, report)
        except OSError as e:  # the table was printed above
            _fail(f"could not write --json {json_out}: {e}")
        typer.echo(f"report written to {json_out}", err=True)


if __name__ == "__main__":
    sys.exit(app())
