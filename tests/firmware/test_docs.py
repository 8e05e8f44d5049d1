"""docs/protocol.md and docs/firmware.md say what the code does: timing values, sizes, examples."""

from __future__ import annotations

import dataclasses
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from firmware_bridge import protocol as p
from firmware_bridge.host import LinkConfig

ROOT = Path(__file__).resolve().parents[2]
PROTOCOL_MD = (ROOT / "docs" / "protocol.md").read_text(encoding="utf-8")


def test_host_timing_table_equals_the_linkconfig_defaults():
    section = PROTOCOL_MD.split("### Host timing", 1)[1].split("\n## ", 1)[0]
    rows = dict(re.findall(r"^\| `(\w+)` \| ([^|]+?) \|", section, re.M))
    defaults = {f.name: f.default for f in dataclasses.fields(LinkConfig) if f.name != "port"}
    for name, shown in rows.items():
        assert name in defaults, f"{name} is not a LinkConfig field"
        assert shown == str(defaults[name]), (
            f"{name}: docs say {shown}, LinkConfig {defaults[name]}"
        )
    timing = {"handshake_timeout_s", "hello_retry_s", "obs_timeout_s", "stop_timeout_s"}
    assert timing | {"max_bad_length", "baud", "frame_timeout_s"} <= set(rows)
    assert f"{p.frame_timeout_s(1_000_000) * 1000:.1f} ms at 1 Mbaud" in PROTOCOL_MD


def test_wire_sizes_quoted_in_the_docs():
    golden = {g.label: g for g in p.GOLDEN_FRAMES}
    assert len(golden["obs_first_cartpole_p"].encoded()) == 24
    assert len(golden["obs_first"].encoded()) == 32
    assert len(golden["action"].encoded()) == 17
    assert "OBS frame is 24 bytes on the wire and an\n  ACTION 17 bytes" in PROTOCOL_MD
    assert p.MAX_ENCODED_FRAME + 1 == 1039 and "1039 bytes" in PROTOCOL_MD


@pytest.mark.skipif(shutil.which("gcc") is None, reason="gcc not found")
def test_the_c_example_in_protocol_md_compiles(tmp_path):
    section = PROTOCOL_MD.split("## 11. The C library", 1)[1]
    code = re.search(r"```c\n(.*?)```", section, re.S).group(1)
    top, body = code.split('#include "rtu_edge_proto.h"\n', 1)
    src = (
        f'{top}#include "rtu_edge_proto.h"\n'
        "static uint16_t tx_seq;\n"
        "static void uart_write(const uint8_t *b, int n) { (void)b; (void)n; }\n"
        "static uint32_t millis(void) { return 0; }\n"
        f"void example(uint8_t byte, float x, float theta) {{\n{body}}}\n"
        "int main(void) { example(0, 0.0f, 0.0f); return (int)tx_seq - 1; }\n"
    )
    (tmp_path / "example.c").write_text(src)
    flags = ["-std=c99", "-Wall", "-Wextra", "-Werror", "-pedantic", f"-I{ROOT / 'firmware'}"]
    srcs = [str(tmp_path / "example.c"), str(ROOT / "firmware" / "rtu_edge_proto.c")]
    r = subprocess.run(
        ["gcc", *flags, *srcs, "-o", str(tmp_path / "example")], capture_output=True, text=True
    )
    assert r.returncode == 0, r.stderr + src
    assert subprocess.run([str(tmp_path / "example")]).returncode == 0
