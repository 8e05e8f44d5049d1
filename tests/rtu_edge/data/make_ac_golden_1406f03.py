"""Golden AC numbers from the pre-refactor code (commit 1406f03)."""

import json
import sys

from rtu_edge.train import TrainConfig, load_run, train

out = {}
cases = {
    "cartpole_rtu": dict(env="classic/CartPole-P", cell="rtu", steps=3000, seed=3),
    "cartpole_nonlinear": dict(env="classic/CartPole-P", cell="rtu-nonlinear", steps=3000, seed=1),
    "pendulum_rtu_ln": dict(
        env="classic/Pendulum-P", cell="rtu", steps=3000, seed=2, layer_norm=True
    ),
}
for name, kw in cases.items():
    d = f"/tmp/golden/{name}"
    s = train(TrainConfig(out=d, overwrite=True, compile="no", **kw), progress=False)
    rows = open(f"{d}/metrics.csv").read().splitlines()[1:]
    eps = [[int(r.split(",")[0]), float(r.split(",")[2]), int(r.split(",")[3])] for r in rows]
    _, _, _, st = load_run(d)
    out[name] = {
        "config": kw,
        "episodes": eps,
        "state_abs_sum": {k: float(v.double().abs().sum()) for k, v in st.items()},
    }
json.dump(out, open(sys.argv[1], "w"), indent=1)
