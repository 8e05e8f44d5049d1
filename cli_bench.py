"""`rtu-edge bench`: build or load the bundles, time them (firmware_bridge/bench.py), report.

An app beside cli.py like cli_demo.py: with BUNDLEs it uses onnxruntime and numpy only (the
robot install), and with more than one it adds the A/B block (each bundle over the first); with sizes it also builds each size's bundle in a temporary directory with
the exporter (export/bench_sizes.py) and times the torch eager steps next to onnxruntime.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field

from firmware_bridge.bench import BenchTarget, run_bench
from firmware_bridge.bundle import load_bundle


@dataclass
class BenchConfig:
    bundles: list[str] = field(default_factory=list)  # time these (ORT only); none: `sizes`
    sizes: list[str] = field(default_factory=lambda: ["demo", "paper"])
    steps: int = 2000  # timed steps per path, graph and case
    warmup: int = 2000  # untimed steps first; the first quarter moving
    rounds: int = 10
    cases: list[str] = field(default_factory=lambda: ["moving", "rest", "zero"])
    denormals: str = "flush"  # "flush" (as `rtu-edge run`) | "keep"
    json_out: str | None = None  # recorded in the command line only

    def command(self) -> str:
        """The command line that reproduces this run."""
        what = " ".join(self.bundles) if self.bundles else f"--sizes {','.join(self.sizes)}"
        return (
            f"rtu-edge bench {what} --steps {self.steps} --warmup {self.warmup} "
            f"--rounds {self.rounds} --cases {','.join(self.cases)} --denormals {self.denormals}"
            + (f" --json {self.json_out}" if self.json_out else "")
        )


def run_bench_command(cfg: BenchConfig, log=print) -> dict:
    """The report of `firmware_bridge.bench.run_bench` for `cfg` (the caller writes the JSON)."""
    with tempfile.TemporaryDirectory(prefix="rtu-edge-bench-") as tmp:
        if cfg.bundles:
            targets = [BenchTarget(b, load_bundle(b)) for b in cfg.bundles]
        else:
            from export.bench_sizes import build_size

            targets = []
            for name in cfg.sizes:
                log(f"building size {name}: exporting its learn and act graphs...")
                built = build_size(name, tmp)
                targets.append(
                    BenchTarget(
                        name,
                        load_bundle(built.bundle),
                        built.size.description,
                        {"torch": built.torch_stepper},
                    )
                )
        report = run_bench(
            targets,
            steps=cfg.steps,
            warmup=cfg.warmup,
            rounds=cfg.rounds,
            cases=cfg.cases,
            denormals=cfg.denormals,
            command=cfg.command(),
            compare=len(cfg.bundles) > 1,
            log=log,
        )
    return report
