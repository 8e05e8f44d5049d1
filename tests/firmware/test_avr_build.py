"""The example sketch built for real AVR boards with avr-gcc and the Arduino AVR core
(firmware/avr_build.sh, `make -C firmware avr`): our sources warning-free under -Werror, the
image fits the board with room for the stack. Skipped, with the reason, without the tools."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

FIRMWARE = Path(__file__).resolve().parents[2] / "firmware"
CORE = Path(os.environ.get("ARDUINO_CORE", "/usr/share/arduino/hardware/arduino/avr"))
TOOLS = ("avr-gcc", "avr-g++", "avr-gcc-ar", "avr-objcopy", "avr-size")

pytestmark = [
    pytest.mark.skipif(
        any(shutil.which(t) is None for t in TOOLS),
        reason="avr-gcc toolchain not found (apt-get install gcc-avr binutils-avr avr-libc)",
    ),
    pytest.mark.skipif(
        not (CORE / "cores" / "arduino" / "Arduino.h").exists(),
        reason=f"Arduino AVR core not found at {CORE} (apt-get install arduino-core-avr, "
        "or set ARDUINO_CORE)",
    ),
]

SIZE_LINE = re.compile(
    r"avr-size: (\w+) (\w+) flash (\d+) bytes .* of (\d+)\), ram (\d+) bytes .* of (\d+)\)"
)
# RAM left for the stack (the loop's deepest call chain and the core's interrupt handlers):
# generous against the few hundred bytes it takes
STACK_ROOM = 512


@pytest.mark.parametrize(("board", "plant"), [("uno", "1"), ("uno", "0"), ("mega", "1")])
def test_sketch_builds_for_the_board_and_fits(board, plant, tmp_path):
    out = tmp_path / f"avr-{board}"
    r = subprocess.run(
        ["sh", str(FIRMWARE / "avr_build.sh"), board, str(out), plant],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    m = SIZE_LINE.search(r.stdout.strip().splitlines()[-1])
    assert m, r.stdout
    flash, flash_max, ram, ram_max = (int(m.group(i)) for i in (3, 4, 5, 6))
    print(f"\n{m.group(0)}")
    assert 4000 < flash < flash_max
    assert ram + STACK_ROOM < ram_max
    assert (out / "rtu_edge_mcu.hex").stat().st_size > 0
    assert r.stderr.strip() == "", r.stderr  # our sources: no warning (they are errors anyway)
