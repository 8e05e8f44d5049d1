"""The generated part of the C library equals a fresh generation from the protocol table."""

from __future__ import annotations

import re
from pathlib import Path

from firmware_bridge import codegen
from firmware_bridge import protocol as p

REPO = Path(__file__).resolve().parents[2]


def test_checked_in_generated_files_equal_a_fresh_generation():
    for path, text in codegen.render_all().items():
        assert (REPO / path).read_text(encoding="utf-8") == text, (
            f"{path} is stale: python -m firmware_bridge.codegen --write"
        )
    assert codegen.stale(REPO) == []


def test_cli_check_write_and_print(tmp_path, capsys):
    assert codegen.main(["--check", "--root", str(tmp_path)]) == 1  # nothing there yet
    assert "stale: firmware/rtu_edge_protocol.h" in capsys.readouterr().err
    assert codegen.main(["--write", "--root", str(tmp_path)]) == 0
    assert codegen.main(["--check", "--root", str(tmp_path)]) == 0
    (tmp_path / codegen.GOLDEN_HEADER).write_text("edited by hand\n")
    assert codegen.main(["--check", "--root", str(tmp_path)]) == 1
    assert codegen.main(["--print", codegen.PROTOCOL_HEADER]) == 0
    assert capsys.readouterr().out == codegen.render_protocol_header()


def test_header_carries_the_table_and_names_its_units():
    h = codegen.render_protocol_header()
    assert f"#define RTU_EDGE_SCHEMA_HASH 0x{p.SCHEMA_HASH:08X}u" in h
    for m in p.MESSAGES:
        assert f"#define RTU_EDGE_MSG_{m.name} 0x{m.id:02X}u" in h
        assert f"rtu_edge_{m.name.lower()}_t;" in h
        for f in m.fields:
            assert f"RTU_EDGE_{m.name}_OFF_{f.name.upper()} " in h
    # byte counts end in _BYTES, float32 counts in _VALUES: no bare *_SIZE macro is left
    # (the only SIZE names are the offsets of the obs_size / action_size fields)
    bare = [n for n in re.findall(r"#define (RTU_EDGE_\w*SIZE\w*)", h) if "_OFF_" not in n]
    assert bare == []
    assert f"#define RTU_EDGE_MAX_OBS_VALUES {p.MAX_OBS_SIZE}u" in h
    assert "#define RTU_EDGE_OBS_PAYLOAD_BYTES(obs_values) (5u + 4u * (obs_values))" in h
    assert f"#define RTU_EDGE_MAX_ENCODED_FRAME_BYTES {p.MAX_ENCODED_FRAME}u" in h


def test_golden_header_holds_every_golden_frame():
    g = codegen.render_golden_header()
    for frame in p.GOLDEN_FRAMES:
        wire = ", ".join(f"0x{b:02x}" for b in frame.encoded())
        assert f"rtu_edge_golden_{frame.label}_wire[{len(frame.encoded())}] = {{{wire}}};" in g
    assert f"#define RTU_EDGE_GOLDEN_COUNT {len(p.GOLDEN_FRAMES)}u" in g


def test_the_robot_path_does_not_need_codegen():
    import subprocess
    import sys

    code = (
        "import sys\nimport firmware_bridge.protocol, firmware_bridge.host\n"
        "assert 'firmware_bridge.codegen' not in sys.modules\n"
    )
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
