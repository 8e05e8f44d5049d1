"""Packed state (format 3): layouts, torch and numpy pack/unpack, the manifest, ac's buffers."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from firmware_bridge import contract as C
from rtu_edge import agent as A
from rtu_edge import packing as P
from rtu_edge.config import NetConfig
from rtu_edge.learners import ac


def _agent(kind: str = "discrete", cell: str = "rtu") -> A.AgentConfig:
    net = NetConfig(cell=cell, encoder_size=6, hidden_size=5, head_size=4)
    if kind == "discrete":
        return A.AgentConfig(3, "discrete", 1, 2, net)
    return A.AgentConfig(3, "continuous", 2, 0, net)


def test_layout_offsets_and_round_trips():
    buf = C.PackedBuffer.of("params.flat", [("params.a", (2, 3)), ("params.b", (4,))])
    assert [(t.name, t.offset, t.size) for t in buf.tensors] == [
        ("params.a", 0, 6),
        ("params.b", 6, 4),
    ]
    assert buf.size == 10
    state = {"params.a": torch.randn(2, 3), "params.b": torch.randn(4), "carry.c": torch.ones(1)}
    packed = P.pack(state, [buf])
    assert set(packed) == {"params.flat", "carry.c"} and packed["params.flat"].shape == (10,)
    back = P.unpack(packed, [buf])
    assert set(back) == set(state)
    for k, v in state.items():
        assert torch.equal(back[k], v)
    # numpy (the robot side) lays the buffer out exactly as torch does
    np_packed = C.pack_state({k: v.numpy() for k, v in state.items()}, [buf])
    np.testing.assert_array_equal(np_packed["params.flat"], packed["params.flat"].numpy())
    np_back = C.unpack_state(np_packed, [buf])
    for k, v in state.items():
        np.testing.assert_array_equal(np_back[k], v.numpy())
    with pytest.raises(C.ContractError, match="params.flat"):
        C.unpack_state({"params.flat": np.zeros(9, np.float32)}, [buf])


@pytest.mark.parametrize("kind", ["discrete", "continuous"])
def test_ac_packing_names_every_tensor_and_lines_the_traces_up(kind):
    agent = _agent(kind)
    state = ac.initial_state(agent, ac.ACConfig(), seed=0)
    params, elig_v, elig_trunk, elig_pi = ac.packing(agent)
    assert [b.name for b in ac.packing(agent)] == [ac.PARAMS, ac.ELIG_V, ac.ELIG_TRUNK, ac.ELIG_PI]
    inside = [t.name for b in (params, elig_v, elig_trunk, elig_pi) for t in b.tensors]
    left = {"params.actor.log_std", "elig_pi.actor.log_std"} if kind == "continuous" else set()
    assert sorted(inside) == sorted(
        k for k in state if k.startswith(("params.", "elig_")) and k not in left
    )

    def names(buf):
        return [t.name.split(".", 1)[1] for t in buf.tensors]

    # params.flat is [critic head | trunk | actor head]: elig_v.flat lines up with its start,
    # elig_pi.flat with its end, and each half of elig_trunk.flat (z_v's, then z_pi's) with
    # the trunk between them, element for element
    v, pi, trunk = names(elig_v), names(elig_pi), names(elig_trunk)
    half = len(trunk) // 2
    assert [t.name.split(".")[0] for t in elig_trunk.tensors] == ["elig_v"] * half + [
        "elig_pi"
    ] * half
    assert trunk[:half] == trunk[half:] and names(params) == v + trunk[:half] + pi
    assert elig_trunk.size == 2 * (params.size - elig_v.size - elig_pi.size)
    for t in params.tensors:
        assert t.shape == tuple(state[t.name].shape)


def _step_packed_and_by_tensor(learner, cfg, agent, s, layout, inputs, ticks: int = 20):
    """Step ``learner`` (a learner module) from ``s`` by tensor and packed with ``layout`` on
    the same ``inputs(t, gen)``, asserting equal states and outputs bit for bit every tick,
    then the act step on both; returns both final states (by tensor, packed)."""
    packed = P.pack(s, layout)
    gen = torch.Generator().manual_seed(0)
    with torch.inference_mode():
        for t in range(ticks):
            x = inputs(t, gen)
            new, out = learner.learn_step(cfg, agent, s, x)
            new_p, out_p = learner.learn_step(cfg, agent, packed, x)
            assert set(new) == set(s) and set(new_p) == set(packed)
            for k, v in P.unpack(new_p, layout).items():
                assert torch.equal(v, new[k]), k
            for k in out:
                assert torch.equal(out[k], out_p[k]), k
            s.update(new)
            packed.update(new_p)
        _, act_out = learner.act_step(cfg, agent, s, x)
        _, act_out_p = learner.act_step(cfg, agent, packed, x)
        for k in act_out:
            assert torch.equal(act_out[k], act_out_p[k]), k
    return s, packed


@pytest.mark.parametrize("kind", ["discrete", "continuous"])
def test_ac_step_packed_and_by_tensor_agree_exactly(kind):
    """The learn step on the bundle's packed state is the training step, bit for bit."""
    agent = _agent(kind)
    cfg = ac.ACConfig()
    s = ac.initial_state(agent, cfg, seed=1)
    layout = ac.packing(agent)

    def inputs(t: int, gen: torch.Generator) -> dict:
        return {
            "obs": torch.randn(1, 3, generator=gen),
            "reward": torch.randn(1, generator=gen),
            "first": torch.tensor([1.0 if t == 0 else 0.0]),
            "terminal": torch.zeros(1),
            "noise": torch.randn(1, agent.noise_size, generator=gen),
        }

    s, packed = _step_packed_and_by_tensor(ac, cfg, agent, s, layout, inputs)
    assert float(P.unpack(packed, layout)["params.enc.w"].abs().sum()) > 0


def _manifest_json(packing) -> dict:
    act = C.GraphSpec(
        file="act.onnx",
        opset=C.OPSET,
        inputs=(
            C.TensorSpec("params.flat", "float32", (10,)),
            C.TensorSpec("obs", "float32", (1, 2)),
        ),
        outputs=(C.TensorSpec("action", "float32", (1, 1)),),
        step_inputs=(C.StepInput("obs", "obs", (1, 2), "o"),),
        step_outputs=(C.StepOutput("action", "action", (1, 1), "a"),),
    )
    m = C.Manifest(
        format_version=C.FORMAT_VERSION,
        created_utc="2026-12-02T00:00:00Z",
        rtu_edge_version="0",
        env_id="e",
        learner="ac",
        cell="rtu",
        observation_size=2,
        observation_clip=10.0,
        action=C.ActionSpec("discrete", 1, 2, (0.0,), (1.0,), (0.0,)),
        noise=None,
        graphs={"act": act},
        state_file=C.STATE_FILE,
        state_names=("params.flat",),
        files={"act.onnx": "0" * 64, C.STATE_FILE: "1" * 64},
        protocol_version=1,
        schema_hash=1,
        packing=packing,
    )
    return json.loads(json.dumps(m.to_json()))


def test_manifest_carries_the_layout_and_refuses_a_bad_one():
    buf = C.PackedBuffer.of("params.flat", [("params.a", (2, 3)), ("params.b", (4,))])
    raw = _manifest_json((buf,))
    assert C.Manifest.from_json(raw).packing == (buf,)

    def refused(edit, match):
        bad = json.loads(json.dumps(raw))
        edit(bad["state"]["packed"])
        with pytest.raises(C.ContractError, match=match):
            C.Manifest.from_json(bad)

    refused(lambda p: p["params.flat"][1].update(offset=7), "must start at offset 6")
    refused(lambda p: p["params.flat"][1].update(name="params.a"), "repeated tensor name")
    refused(lambda p: p["params.flat"][1].update(name="params.flat"), "repeated tensor name")
    refused(lambda p: p.update({"elig_v.flat": p["params.flat"]}), "not in state.names")
    refused(lambda p: p["params.flat"][0].update(shape=[2, -3]), "shape must be")


@pytest.mark.parametrize(
    "cell, options",
    [("rtu", {}), ("rtu-nonlinear", {}), ("rtu", {"projection": True}), ("online-lru", {})],
)
def test_trunk_backward_of_several_cotangents_at_once_is_each_one_alone(cell, options):
    """The learner takes the critic's, actor's and entropy's trunk gradients in one pass
    (`rtrl_backward_rows`, where the cell has it); each row is that cotangent's own gradient,
    bit for bit, and cells without it (or an RTU with a projection) fall back to one at a time."""
    net = NetConfig(cell=cell, cell_options=options, encoder_size=6, hidden_size=5, head_size=4)
    agent = A.AgentConfig(3, "discrete", 1, 2, net)
    p = A.init_params(agent, seed=3)
    cell_mod = agent.cell
    gen = torch.Generator().manual_seed(1)
    state, traces = cell_mod.initial_state(1), cell_mod.initial_traces(1)
    x = torch.randn(1, 3, generator=gen)
    for _ in range(4):  # traces away from zero
        h0 = A.encode(p, x)
        y, state, traces = cell_mod.rtrl_step(h0.h, state, traces, None, A.cell_params(p))
    g_ys = [torch.randn(1, cell_mod.output_size, generator=gen) for _ in range(3)]
    flat = A.trunk_backward_flat(agent, p, g_ys, x, h0, state, traces)
    names = A.trunk_param_names(agent)
    for g_y, row in zip(g_ys, flat, strict=True):
        g = A.trunk_backward(agent, p, g_y, x, h0, state, traces)
        assert torch.equal(row, torch.cat([g[k].reshape(-1) for k in names]))
    rows = cell_mod.rtrl_backward_rows(torch.cat(g_ys), state, traces, A.cell_params(p))
    supported = cell.startswith("rtu") and not options.get("projection")
    assert (rows is not None) == supported


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_td_step_packed_and_by_tensor_agree_exactly(optimizer):
    """td packs its parameters, trace and Adam moments into flat buffers over the same
    parameters in the same order; under SGD there are no moments, and only the buffers the
    state holds are packed. (A by-tensor state is stepped packed too, so this checks the
    round trip; that the packed step equals the per-tensor one it replaced was checked on
    the exported graphs: benchmarks/same_values.py, README "Measured".)"""
    from rtu_edge.learners import td

    agent = _agent("discrete")
    cfg = td.TDConfig(optimizer=optimizer, lr=0.01)
    s = td.initial_state(agent, cfg, seed=1)
    layout = P.held(td.packing(agent), s)
    want = [td.PARAMS, td.ELIG] + ([td.OPT_M, td.OPT_V] if optimizer == "adam" else [])
    assert [b.name for b in layout] == want
    for b in layout:  # every buffer over the parameters in one order
        assert [t.name.split(".")[-2:] for t in b.tensors] == [
            t.name.split(".")[-2:] for t in layout[0].tensors
        ]

    def inputs(t: int, gen: torch.Generator) -> dict:
        return {
            "obs": torch.randn(1, 3, generator=gen),
            "cumulant": torch.randn(1, generator=gen),
            "first": torch.tensor([1.0 if t == 0 else 0.0]),
            "terminal": torch.zeros(1),
        }

    s, _ = _step_packed_and_by_tensor(td, cfg, agent, s, layout, inputs)
    start = td.initial_state(agent, cfg, seed=1)
    assert not torch.equal(s["params.enc.w"], start["params.enc.w"])  # it learned
