"""Parity of the exported graphs against the torch step functions they came from.

Teacher-forced, per step: at every step onnxruntime gets exactly the inputs torch got (the
torch state, a real observation from the environment, the same noise), and every output of
both graphs is compared. Free-running chains would drift apart through float32 rounding
amplified by learning (see docs), which says nothing about the export.

Error of one output: max |ort - torch| / max(max |torch|, 1), i.e. relative to the tensor's
largest entry, and absolute for tensors whose entries all lie below 1.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnxruntime as ort
import torch

from rtu_edge import envs as envs_mod
from rtu_edge.agent import AgentConfig
from rtu_edge.learners.ac import ACConfig, ac_step, act_step
from rtu_edge.train import env_action


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


def rel_error(a: np.ndarray, ref: np.ndarray) -> float:
    if a.shape != ref.shape:
        return float("inf")
    scale = max(float(np.abs(ref).max(initial=0.0)), 1.0)
    return float(np.abs(a.astype(np.float64) - ref.astype(np.float64)).max(initial=0.0)) / scale


def _noise(agent: AgentConfig, rng: np.random.Generator) -> np.ndarray:
    if agent.action_kind == "continuous":
        return rng.standard_normal((1, agent.noise_size)).astype(np.float32)
    return rng.gumbel(size=(1, agent.noise_size)).astype(np.float32)


def check_parity(
    learn_bytes: bytes,
    act_bytes: bytes,
    config: dict,
    agent: AgentConfig,
    ac: ACConfig,
    state: dict[str, torch.Tensor],
    carried: list[str],
    act_inputs: list[str],
    steps: int = 256,
    tol: float = 1e-5,
    seed: int = 12345,
) -> ParityReport:
    learn_sess, act_sess = _session(learn_bytes), _session(act_bytes)
    info = envs_mod.env_info(config["train"]["env"])
    env = envs_mod.make(config["train"]["env"], seed=seed)
    rng = np.random.default_rng(seed)
    state = {k: v.clone() for k, v in state.items()}
    obs, _ = env.reset()
    reward, first, terminal, over = 0.0, 1.0, 0.0, False
    worst, worst_name, worst_step = 0.0, "", 0
    learn_out_names = [o.name for o in learn_sess.get_outputs()]
    act_out_names = [o.name for o in act_sess.get_outputs()]
    with torch.inference_mode():
        for t in range(steps):
            step_in = {
                "obs": np.asarray(obs, dtype=np.float32).reshape(1, -1),
                "reward": np.array([reward], np.float32),
                "first": np.array([first], np.float32),
                "terminal": np.array([terminal], np.float32),
                "noise": _noise(agent, rng),
            }
            feeds = {k: state[k].numpy() for k in carried} | step_in
            ort_learn = dict(zip(learn_out_names, learn_sess.run(None, feeds)))
            act_feeds = {k: state[k].numpy() for k in act_inputs}
            act_feeds |= {"obs": step_in["obs"], "first": step_in["first"]}
            ort_act = dict(zip(act_out_names, act_sess.run(None, act_feeds)))

            tt = {k: torch.from_numpy(v) for k, v in step_in.items()}
            new, action, value, delta = ac_step(
                ac, agent, state, tt["obs"], tt["reward"], tt["first"], tt["terminal"], tt["noise"]
            )
            a_act, v_act, c1, c2 = act_step(agent, state, tt["obs"], tt["first"], ac)
            ref = {f"{k}.next": new[k] for k in carried} | {
                "action": action,
                "value": value,
                "td_error": delta,
            }
            ref_act = {"action": a_act, "value": v_act, "carry.c1.next": c1, "carry.c2.next": c2}
            for prefix, got, want in (("learn:", ort_learn, ref), ("act:", ort_act, ref_act)):
                for name, r in want.items():
                    e = rel_error(got[name], r.numpy())
                    if e > worst:
                        worst, worst_name, worst_step = e, prefix + name, t
            state.update(new)
            if over:
                obs, _ = env.reset()
                reward, first, terminal, over = 0.0, 1.0, 0.0, False
                continue
            a = env_action(agent, action, info.action_low, info.action_high)
            obs, r, term, trunc, _ = env.step(a)
            reward, first, terminal, over = float(r), 0.0, float(term), bool(term or trunc)
    env.close()
    return ParityReport(steps, worst, worst_name, worst_step, tol, worst <= tol)
