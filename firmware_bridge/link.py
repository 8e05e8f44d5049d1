"""`SerialLink`: one exclusively opened serial port speaking the rtu-edge wire protocol.

Opens with pyserial, turns every open failure into a `LinkError` that says what to do next,
turns every later OS-level failure of the port (pyserial's SerialException, OSError from reads,
writes and ioctls, termios.error from tcflush/tcdrain, which is not an OSError) into a
`LinkError` too, closing the port so that the next `open()` reopens the device by its path,
reads with `read(max(1, in_waiting))` (never `read_until`, which reads one byte per call) into a
`protocol.Parser`, and measures every timeout with `time.monotonic()`.

Robot path: pyserial, numpy and the standard library only.
"""

from __future__ import annotations

import contextlib
import errno
import os
import select
import time
from collections import deque
from pathlib import Path

import serial
import serial.tools.list_ports

from firmware_bridge import protocol
from firmware_bridge.protocol import BadFrame, Frame, Parser, Sizes

__all__ = ["LinkError", "SerialLink", "list_ports", "NETWORK_SCHEMES", "PORT_ERRORS"]

# pyserial URL schemes that reach over the network; refused unless allow_network=True.
NETWORK_SCHEMES = ("socket://", "rfc2217://")
BY_ID_DIR = "/dev/serial/by-id"

try:
    import termios

    _TERMIOS_ERRORS: tuple[type[BaseException], ...] = (termios.error,)
except ImportError:  # Windows: pyserial's serialwin32 raises SerialException / OSError only
    _TERMIOS_ERRORS = ()

# Everything a port operation can raise when the device goes away or misbehaves. termios.error
# (tcflush, tcdrain, tcgetattr/tcsetattr) is not an OSError, and pyserial lets it through.
PORT_ERRORS: tuple[type[BaseException], ...] = (serial.SerialException, OSError, *_TERMIOS_ERRORS)


class LinkError(RuntimeError):
    """The serial link failed; the message names the port and says what to do next."""


def list_ports() -> list[tuple[str, str]]:
    """Serial ports as (device, description), for `rtu-edge ports`.

    A port with a stable /dev/serial/by-id/... alias is listed under that alias (it survives
    replugging and does not change with enumeration order); the kernel name is in the description.
    """
    aliases: dict[str, str] = {}
    by_id = Path(BY_ID_DIR)
    if by_id.is_dir():
        for link in sorted(by_id.iterdir()):
            aliases[os.path.realpath(link)] = str(link)
    out = []
    for p in sorted(serial.tools.list_ports.comports(), key=lambda p: p.device):
        alias = aliases.get(os.path.realpath(p.device))
        desc = p.description or "n/a"
        if alias:
            out.append((alias, f"{desc} ({p.device})"))
        else:
            out.append((p.device, desc))
    return out


def _open_error(port: str, baud: int, exc: Exception) -> LinkError:
    """Turn a pyserial open failure into an actionable message."""
    code = getattr(exc, "errno", None)
    text = str(exc)
    if code in (errno.ENOENT, errno.ENODEV, errno.ENXIO) or "No such file" in text:
        known = ", ".join(d for d, _ in list_ports()) or "none found"
        return LinkError(
            f"serial port {port} not found ({text}). Run `rtu-edge ports` to list ports "
            f"(now: {known}); prefer the stable /dev/serial/by-id/... path over /dev/ttyUSB*, "
            "whose number changes on replug. Is the board plugged in and powered?"
        )
    if code in (errno.EACCES, errno.EPERM) or "Permission denied" in text:
        return LinkError(
            f"permission denied opening {port}. Add the user to the dialout group "
            "(`sudo usermod -aG dialout $USER`, then log out and in) or install a udev rule "
            '(e.g. SUBSYSTEM=="tty", ATTRS{idVendor}=="...", MODE="0660", GROUP="dialout").'
        )
    if code in (errno.EBUSY, errno.EAGAIN, errno.EWOULDBLOCK) or "exclusively lock" in text:
        return LinkError(
            f"serial port {port} is busy: another process holds it open (a second rtu-edge "
            "instance, a serial monitor, ModemManager or brltty). Find it with "
            f"`fuser -v {port}` or `lsof {port}` and stop it; ports are never shared."
        )
    return LinkError(f"cannot open serial port {port} at {baud} baud: {text}")


class SerialLink:
    """An exclusively opened serial port that sends and receives protocol frames.

    `send` frames one message with this side's sequence number; `recv` returns validated
    frames as soon as a read completes at least one (rejected chunks are counted, and the last
    few kept in `recent_errors`). A context manager: the port is closed on exit.
    """

    def __init__(
        self,
        port: str,
        baud: int = 1_000_000,
        *,
        allow_network: bool = False,
        sizes: Sizes | None = None,
        read_poll_s: float = 0.005,
        write_timeout_s: float = 0.5,
        frame_timeout_s: float | None = None,
        latency_timer_ms: int = 16,
        max_read_bytes: int = 4096,
    ):
        self.port_name = port  # device path or pyserial URL
        self.baud = baud  # UART speed; must match the firmware (CRC errors spike otherwise)
        self.allow_network = allow_network  # accept socket:// and rfc2217:// URLs
        self.read_poll_s = read_poll_s  # longest single blocking read; bounds recv() overshoot
        self.write_timeout_s = write_timeout_s  # a write blocked this long means a wedged port
        self.max_read_bytes = max_read_bytes  # bytes per read: bounds the work per call
        if frame_timeout_s is None:
            frame_timeout_s = protocol.frame_timeout_s(baud, latency_timer_ms=latency_timer_ms)
        self.parser = Parser(sizes, frame_timeout_s=frame_timeout_s)
        self.recent_errors: deque[BadFrame] = deque(maxlen=16)  # last rejected chunks
        self.tx_seq = 0  # seq of the next frame this side sends
        self._tx = {"tx_frames": 0, "tx_bytes": 0, "rx_reads": 0}
        self._port: serial.SerialBase | None = None

    # ---------------------------------------------------------------- open / close

    def open(self) -> None:
        """Open the port exclusively; raise LinkError with what to do on failure."""
        if self._port is not None:
            return
        name = self.port_name
        if any(s in name.lower() for s in NETWORK_SCHEMES) and not self.allow_network:
            raise LinkError(
                f"refusing network port URL {name!r}: it would send actuator commands over the "
                "network. Use a local serial device, or pass allow_network=True "
                "(LinkConfig.allow_network) if you really mean it."
            )
        try:
            port = serial.serial_for_url(
                name,
                baudrate=self.baud,
                timeout=self.read_poll_s,
                write_timeout=self.write_timeout_s,
                exclusive=True,
            )
        except (*PORT_ERRORS, ValueError) as e:
            raise _open_error(name, self.baud, e) from e
        self._port = port
        self.parser.reset()
        self.tx_seq = 0
        # A leading delimiter ends any partial frame left in the MCU's receive buffer.
        self.write(b"\x00")

    def close(self) -> None:
        """Close the port (idempotent)."""
        port, self._port = self._port, None
        if port is not None:
            with contextlib.suppress(*PORT_ERRORS):
                port.close()

    @property
    def is_open(self) -> bool:
        return self._port is not None

    def __enter__(self) -> SerialLink:
        self.open()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _port_failed(self, doing: str, exc: BaseException) -> LinkError:
        """A LinkError for an OS-level failure of the open port; closes the port first.

        The descriptor of a vanished device never works again (a USB adapter re-enumerates, a
        pseudo-terminal is recreated), so the next `open()` (`RobotConnection.connect()` in the
        reconnect path) must reopen the device by its path.
        """
        self.close()
        return LinkError(
            f"serial port {self.port_name} failed while {doing} ({type(exc).__name__}: {exc}); "
            "was the USB cable unplugged or the board reset? The port was closed; reconnect "
            "(the run loop retries with backoff) and check `rtu-edge ports`."
        )

    def _require_port(self) -> serial.SerialBase:
        if self._port is None:
            raise LinkError(f"serial port {self.port_name} is not open; call open() first")
        return self._port

    # ---------------------------------------------------------------- sending

    def write(self, data: bytes) -> None:
        """Write raw bytes (a whole encoded frame).

        A write counts as blocked only after `write_timeout_s` of time actually spent waiting for
        the port to drain. pyserial's own timeout compares wall-clock deadlines, so a host that
        was paused (SIGSTOP, a long GC or swap stall) between two checks gets "Write timeout"
        even though every byte went out; that would turn a recoverable hiccup into a fatal error.
        """
        port = self._require_port()
        try:
            fd = port.fileno()
        except (AttributeError, OSError, ValueError):
            fd = None  # a pyserial URL handler (socket://, loop://): its own timeout applies
        try:
            if fd is None:
                port.write(data)
            else:
                self._write_fd(fd, data)
        except serial.SerialTimeoutException as e:
            raise self._blocked_error() from e
        except PORT_ERRORS as e:
            raise self._port_failed("writing", e) from e
        self._tx["tx_bytes"] += len(data)

    def _write_fd(self, fd: int, data: bytes) -> None:
        """Write all of `data` to a non-blocking descriptor, waiting at most write_timeout_s."""
        view = memoryview(data)
        waited = 0.0
        while view:
            try:
                view = view[os.write(fd, view) :]
                continue
            except (BlockingIOError, InterruptedError):
                pass
            if waited >= self.write_timeout_s:
                raise self._blocked_error()
            slice_s = min(0.05, self.write_timeout_s - waited)
            t0 = time.monotonic()
            select.select([], [fd], [], slice_s)
            # Count at most the slice: time the process spent stopped is not time blocked.
            waited += min(time.monotonic() - t0, slice_s)

    def _blocked_error(self) -> LinkError:
        return LinkError(
            f"write to {self.port_name} blocked for {self.write_timeout_s}s: the MCU is not "
            "reading (hung, or hardware flow control stuck)"
        )

    def send(self, msg: str | int, /, **fields) -> int:
        """Frame and send one message with the next sequence number; returns that seq."""
        seq = self.tx_seq
        data = protocol.encode_frame(msg, seq, fields, self.parser.sizes)
        self.write(data)
        self.tx_seq = (seq + 1) % protocol.SEQ_MODULUS
        self._tx["tx_frames"] += 1
        return seq

    # ---------------------------------------------------------------- receiving

    def recv(self, timeout: float) -> list[Frame]:
        """Validated frames from the next read that completes any chunk, valid or rejected.

        Returns [] when that read completed only rejected chunks (they are counted and kept in
        `recent_errors`, so callers can react to error streaks), or after `timeout` seconds.
        timeout=0 reads only what is already waiting. A partial frame followed by silence is
        discarded after the parser's frame timeout (fault 9).
        """
        port = self._require_port()
        deadline = time.monotonic() + max(0.0, timeout)
        while True:
            try:
                waiting = port.in_waiting
                if waiting:
                    data = port.read(min(waiting, self.max_read_bytes))
                elif timeout > 0:
                    data = port.read(1)  # blocks at most read_poll_s
                    if data and port.in_waiting:
                        data += port.read(min(port.in_waiting, self.max_read_bytes))
                else:
                    data = b""
            except PORT_ERRORS as e:
                raise self._port_failed("reading", e) from e
            now = time.monotonic()
            self._tx["rx_reads"] += 1
            if data:
                items = self.parser.feed(data, now)
                frames = []
                for item in items:
                    if isinstance(item, Frame):
                        frames.append(item)
                    else:
                        self.recent_errors.append(item)
                if items:
                    return frames
            else:
                self.recent_errors.extend(self.parser.expire(now))
            if now >= deadline:
                return []

    def reset_input(self) -> None:
        """Drop everything received but not yet parsed (stale bytes from an earlier session)."""
        port = self._require_port()
        try:
            port.reset_input_buffer()
        except PORT_ERRORS as e:
            raise self._port_failed("flushing its input", e) from e
        self.parser.reset()

    @property
    def sizes(self) -> Sizes | None:
        """Array lengths the parser validates OBS/ACTION payloads against."""
        return self.parser.sizes

    @sizes.setter
    def sizes(self, value: Sizes | None) -> None:
        self.parser.sizes = value

    @property
    def counters(self) -> dict[str, int]:
        """Parser counters (rx_*) and transmit counters, as a new dict."""
        out = {f"rx_{k}": v for k, v in self.parser.counters.items()}
        out.update(self._tx)
        return out
