"""Parity of the exported graphs against the torch step functions they came from.

Teacher-forced, per step: at every step onnxruntime gets exactly the inputs torch got (the
torch state, a real observation from the environment, the same noise), and every output of
both graphs is compared. Free-running chains would drift apart through float32 rounding
amplified by learning (see docs), which says nothing about the export.

Two phases: the run's environment from the exported state, then a robot at rest: a fresh
learner state fed one observation held constant (a sensor that never changes has variance
exactly 0, where an epsilon the exporter dropped turns into NaN: rtu_edge/ops.py).

Error of one output: max |ort - torch| / max(max |torch|, 1), i.e. relative to the tensor's
largest entry, and absolute for tensors whose entries all lie below 1; a non-finite value on
one side only is an infinite error. Every tick also runs in float64. An output whose worst
error against torch float32 exceeds the tolerance is judged by how much further onnxruntime
lies from float64 than twice torch float32's own distance from it, over the run: two float32
programs that round differently can disagree by more than the tolerance where a trace update cancels large terms
(seen: 1.6e-5 between them, 8.7e-6 and 6.9e-6 from float64), which says nothing about the
export, while a wrong graph lies far from float64 (a discount of 0.5 for 0.99: error > 1e-3).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import onnxruntime as ort
import torch

from firmware_bridge.contract import PackedBuffer, next_name, sample_noise, unpack_state
from rtu_edge import envs as envs_mod
from rtu_edge import packing as P
from rtu_edge.train import action_spec, env_action, random_action


@dataclass
class ParityReport:
    steps: int  # teacher-forced steps compared
    worst_rel: float  # largest error over all outputs and steps
    worst_name: str  # the output where it occurred
    worst_step: int
    tol: float
    ok: bool


class ParityError(RuntimeError):
    def __init__(self, report: ParityReport):
        super().__init__(
            f"exported graph disagrees with torch: error {report.worst_rel:.3e} > {report.tol:.0e} "
            f"in '{report.worst_name}' at step {report.worst_step}. The bundle was NOT written. "
            "This is an export bug: please report it with the run directory."
        )
        self.report = report


def _session(model_bytes: bytes) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    return ort.InferenceSession(model_bytes, so, providers=["CPUExecutionProvider"])


# The default tolerance of the check. Float32 results of the same graph differ between CPUs:
# torch and onnxruntime pick different vectorised exp / sin / cos and summation orders per
# instruction set, and the RTRL traces chain several of them. On an Intel Xeon the td learner's
# `elig.cell.theta_log` (rtu-nonlinear, online-lru) differed by 2.2e-5 on one step of 200, where
# an AMD EPYC stayed below 1e-5. An export bug (a wrong term, sign or mask) shows up as an error
# of 1e-2 or more, so 1e-4 keeps the check sharp without refusing good bundles on some CPUs.
PARITY_TOL = 1e-4


def rel_error(a: np.ndarray, ref: np.ndarray) -> float:
    if a.shape != ref.shape:
        return float("inf")
    fin_a, fin_r = np.isfinite(a), np.isfinite(ref)
    if (fin_a != fin_r).any():
        return float("inf")
    a, ref = np.where(fin_a, a, 0), np.where(fin_r, ref, 0)
    scale = max(float(np.abs(ref).max(initial=0.0)), 1.0)
    return float(np.abs(a.astype(np.float64) - ref.astype(np.float64)).max(initial=0.0)) / scale


def _unpack_next(values: dict, packing) -> dict:
    """Outputs with every packed ``B.next`` replaced by its tensors' ``X.next``."""
    layout = [
        PackedBuffer(
            next_name(b.name), tuple(replace(t, name=next_name(t.name)) for t in b.tensors)
        )
        for b in packing
        if next_name(b.name) in values
    ]
    if not layout:
        return values
    if isinstance(next(iter(values.values())), torch.Tensor):
        return P.unpack(values, layout)
    return unpack_state(values, layout)


def check_parity(
    run,
    state: dict[str, torch.Tensor],
    blobs: dict[str, bytes],
    plans: dict,
    steps: int = 256,
    tol: float = PARITY_TOL,
    seed: int = 12345,
    rest_steps: int = 32,
    packing: tuple = (),
) -> ParityReport:
    """Run every graph (`blobs`, laid out as `plans`: export.bundle.export_graphs) next to the
    learner's torch steps on a real trajectory of the run's environment. The act graph is fed
    the prep.* constants torch computes (act_prepare.onnx is compared on its own), so each
    graph is judged by itself.

    ``state`` is packed by ``packing`` (contract.PackedBuffer) as the bundle is; a packed
    output is compared tensor by tensor, each against its own largest entry, as if unpacked.
    """
    learner, agent, cfg = run.learner, run.agent, run.train.learner
    fns = {g: learner.step_function(g) for g in plans}
    sessions = {g: _session(b) for g, b in blobs.items()}
    out_names = {g: [o.name for o in s.get_outputs()] for g, s in sessions.items()}
    info = envs_mod.env_info(run.train.env)
    spec = action_spec(info)
    noise_spec = learner.noise(agent)
    env = envs_mod.make(run.train.env, seed=seed)
    rng = np.random.default_rng(seed)
    state = {k: v.clone() for k, v in state.items()}
    obs, _ = env.reset()
    reward, first, terminal, over = 0.0, 1.0, 0.0, False
    action_name = next(
        (
            o.name
            for o in plans["learn" if "learn" in plans else "act"].step_outputs
            if o.use == "action"
        ),
        None,
    )
    # a prediction bundle has no action: the trajectory is driven by seeded random actions
    gen = torch.Generator().manual_seed(seed)

    direct: dict[str, tuple[float, int]] = {}  # name -> (worst |ort - torch32|, at tick)
    vs64: dict[str, float] = {}  # name -> worst |ort - torch64|
    own64: dict[str, float] = {}  # name -> worst |torch32 - torch64|: float32's own rounding

    driver = "learn" if "learn" in plans else "act"  # whose action drives the trajectory

    def compare(t: int, state: dict, values: dict):
        """Every graph against torch on one tick; returns the driver's (new state, outputs)."""
        results = {}
        for g, plan in plans.items():
            inputs = {s.name: values[s.source] for s in plan.step_inputs}
            readable = P.with_views(state, packing)
            if learner.act_prepare is not None and g == "act":
                readable = readable | learner.act_prepare(cfg, agent, readable)
            feeds = {k: readable[k].numpy() for k in plan.state_names} | inputs
            got = dict(zip(out_names[g], sessions[g].run(None, feeds)))
            tin = {k: torch.from_numpy(v) for k, v in inputs.items()}
            new, out = fns[g](cfg, agent, state, tin)
            s64 = {k: v.double() for k, v in state.items()}
            new64, out64 = fns[g](cfg, agent, s64, {k: v.double() for k, v in tin.items()})
            want = {next_name(k): new[k] for k in plan.carried} | out
            want64 = {next_name(k): new64[k] for k in plan.carried} | out64
            got, want, want64 = (_unpack_next(d, packing) for d in (got, want, want64))
            for name, r in want.items():
                key, ref = f"{g}:{name}", want64[name].numpy()
                e = rel_error(got[name], r.numpy())
                if e >= direct.get(key, (-1.0, 0))[0]:
                    direct[key] = (e, t)
                vs64[key] = max(vs64.get(key, 0.0), rel_error(got[name].astype(np.float64), ref))
                own64[key] = max(own64.get(key, 0.0), rel_error(r.numpy().astype(np.float64), ref))
            results[g] = (new, out)
        return results[driver]

    with torch.inference_mode():
        for t in range(steps):
            values = {
                "obs": np.asarray(obs, dtype=np.float32).reshape(1, -1),
                "reward": np.array([reward], np.float32),
                "first": np.array([first], np.float32),
                "terminal": np.array([terminal], np.float32),
            }
            if noise_spec is not None:
                values["noise"] = sample_noise(noise_spec, rng)
            learn_new, learn_out = compare(t, state, values)
            state.update(learn_new)
            if over:
                obs, _ = env.reset()
                reward, first, terminal, over = 0.0, 1.0, 0.0, False
                continue
            if action_name is None:
                action = random_action(spec, gen)
            else:
                action = learn_out[action_name]
            obs, r, term, trunc, _ = env.step(env_action(spec, action))
            reward, first, terminal, over = float(r), 0.0, float(term), bool(term or trunc)
        # a robot at rest, from a fresh state: one observation held for rest_steps ticks
        rest_obs = np.asarray(obs, dtype=np.float32).reshape(1, -1)
        if driver == "learn":
            state = P.pack(learner.initial_state(agent, cfg, seed), packing)
        for t in range(rest_steps):
            values = {
                "obs": rest_obs,
                "reward": np.zeros(1, np.float32),
                "first": np.array([1.0 if t == 0 else 0.0], np.float32),
                "terminal": np.zeros(1, np.float32),
            }
            if noise_spec is not None:
                values["noise"] = sample_noise(noise_spec, rng)
            new, _ = compare(steps + t, state, values)
            state.update(new)
    env.close()
    worst, worst_name, worst_step = 0.0, "", 0
    for key, (e, t) in direct.items():
        if e > tol:  # rounding, or a different graph? Judge against float64 (see above):
            # onnxruntime may round up to twice as badly as torch float32 does on this output
            e = max(0.0, vs64[key] - 2.0 * own64[key])
        if e > worst:
            worst, worst_name, worst_step = e, key, t
    return ParityReport(steps + rest_steps, worst, worst_name, worst_step, tol, worst <= tol)
