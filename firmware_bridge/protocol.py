"""Wire protocol v1 between the host (rtu-edge on the robot's computer) and the robot's MCU.

Everything is derived from one table, `MESSAGES`: the codec below, the schema hash, the
generated sections of docs/protocol.md, and (through firmware_bridge/codegen.py, which the robot
never imports) the message part of the C library in firmware/. Regenerate with

    python -m firmware_bridge.protocol --write-docs docs/protocol.md
    python -m firmware_bridge.codegen --write

Frame on the wire: COBS(header | payload | CRC-32) followed by one 0x00 byte.
Header: msg_id u8, seq u16, payload length u16, little-endian. CRC-32 is zlib.crc32
(IEEE 802.3) over header and payload, stored little-endian.

`Parser` is a pure bytes -> frames state machine: `feed(bytes)` returns `Frame` and
`BadFrame` records, never raises on garbage, holds at most one maximum-size frame, and counts
every kind of error. `SeqTracker` (gaps, duplicates, reordering) is separate and only ever sees
frames that fully validated.

Standard library and numpy only: this module runs on the robot.
"""

from __future__ import annotations

import argparse
import enum
import math
import re
import struct
import sys
import time
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

__all__ = [
    "BAD_REASONS",
    "BY_ID",
    "BY_NAME",
    "CRC_SIZE",
    "DTYPE_F32",
    "GOLDEN_FRAMES",
    "HEADER_SIZE",
    "MAX_ACTION_SIZE",
    "MAX_ENCODED_FRAME",
    "MAX_FRAME",
    "MAX_OBS_SIZE",
    "MAX_PAYLOAD",
    "MAX_PREDICTION_SIZE",
    "MESSAGES",
    "MIN_FRAME",
    "OBS_FIRST",
    "OBS_FLAG_BITS",
    "OBS_TERMINAL",
    "OBS_TRUNCATED",
    "PARSER_COUNTERS",
    "PROTOCOL_VERSION",
    "SCHEMA_HASH",
    "SEQ_MODULUS",
    "STATUS_EVENTS",
    "STOP_REASONS",
    "BadFrame",
    "CobsError",
    "Field",
    "Frame",
    "Golden",
    "Message",
    "MsgId",
    "Parser",
    "SeqTracker",
    "Sizes",
    "cobs_decode",
    "cobs_encode",
    "decode_frame",
    "doc_sections",
    "encode_frame",
    "encode_payload",
    "enum_value",
    "expected_payload_size",
    "frame_timeout_s",
    "main",
    "render_markdown",
    "schema_text",
    "seq_diff",
    "update_doc",
]

PROTOCOL_VERSION = 1

HEADER_SIZE = 5  # msg_id u8, seq u16, payload length u16
CRC_SIZE = 4  # CRC-32 (IEEE 802.3) over header + payload, little-endian
MAX_PAYLOAD = 1024  # largest payload any message may carry; bounds every buffer on both sides
MIN_FRAME = HEADER_SIZE + CRC_SIZE  # decoded frame with an empty payload
MAX_FRAME = HEADER_SIZE + MAX_PAYLOAD + CRC_SIZE  # largest decoded frame
# COBS adds one code byte per started 254-byte block; the 0x00 delimiter is not counted here.
MAX_ENCODED_FRAME = MAX_FRAME + math.ceil(MAX_FRAME / 254)
SEQ_MODULUS = 1 << 16  # seq is u16 and wraps

DTYPE_F32 = 1  # IEEE-754 binary32, little-endian: the only element type of protocol v1

_HEADER = struct.Struct("<BHH")
_CRC = struct.Struct("<I")

# type name -> (struct code, size in bytes, C type)
_TYPES: dict[str, tuple[str, int, str]] = {
    "u8": ("B", 1, "uint8_t"),
    "u16": ("H", 2, "uint16_t"),
    "u32": ("I", 4, "uint32_t"),
    "f32": ("f", 4, "float"),
}
_SIZE_NAMES = ("obs_size", "action_size")  # array lengths agreed in the handshake
# Array lengths not agreed in the handshake: the payload length alone says how many values
# (1..MAX_PREDICTION_SIZE) the sender put in.
_VAR_SIZE_NAMES = ("prediction_size",)


# --------------------------------------------------------------------------------------------
# The message table
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Field:
    """One payload field. Fields are packed in order, without padding."""

    name: str
    type: str  # one of u8, u16, u32, f32
    doc: str
    # None: scalar; "obs_size"/"action_size": array, handshake length; "prediction_size":
    # array whose length the payload length gives
    count: str | None = None
    values: tuple[tuple[str, int], ...] = ()  # named values of an enumeration field
    bits: tuple[tuple[str, int], ...] = ()  # named bit positions of a flags field


@dataclass(frozen=True)
class Message:
    """One message type. ids 0x01..0x7F are sent by the host, 0x80..0xFF by the MCU."""

    name: str
    id: int
    sender: str  # "host" or "mcu"
    doc: str
    fields: tuple[Field, ...]
    # Extensible messages accept longer payloads and ignore the extra bytes, so that a later
    # protocol version may append fields to HELLO and a version mismatch is still reported.
    extensible: bool = False


DTYPES = (("F32", DTYPE_F32),)
OBS_FLAG_BITS = (("FIRST", 0), ("TERMINAL", 1), ("TRUNCATED", 2))
STOP_REASONS = (("USER", 0), ("SHUTDOWN", 1), ("FAULT", 2))
STATUS_EVENTS = (
    ("REPLY", 0),
    ("ARMED", 1),
    ("ARM_REFUSED", 2),
    ("STOPPED", 3),
    ("WATCHDOG", 4),
    ("HEARTBEAT", 5),
)

_F_VERSION = Field("protocol_version", "u8", "protocol version of the sender (1)")
_F_SCHEMA = Field("schema_hash", "u32", "schema hash of the sender's message table")
_F_OBS_SIZE = Field("obs_size", "u16", "number of float32 values in OBS.obs")
_F_ACTION_SIZE = Field(
    "action_size", "u16", "number of float32 values in ACTION.action (1 when discrete)"
)
_F_NUM_ACTIONS = Field(
    "num_actions",
    "u16",
    "0: continuous actions; N > 0: discrete, the single action value is an index in 0..N-1",
)
_F_OBS_DTYPE = Field("obs_dtype", "u8", "element type of OBS.obs", values=DTYPES)
_F_ACTION_DTYPE = Field("action_dtype", "u8", "element type of ACTION.action", values=DTYPES)

MESSAGES: tuple[Message, ...] = (
    Message(
        "HELLO_REQ",
        0x01,
        "host",
        "Start a session. The MCU disarms (applies the safe action), compares every field with "
        "its own values and answers HELLO with the same nonce.",
        (
            _F_VERSION,
            _F_SCHEMA,
            Field(
                "nonce",
                "u32",
                "random non-zero value per request, echoed in HELLO so that a late reply to an "
                "older request is ignored",
            ),
            _F_OBS_SIZE,
            _F_ACTION_SIZE,
            _F_NUM_ACTIONS,
            _F_OBS_DTYPE,
            _F_ACTION_DTYPE,
        ),
        extensible=True,
    ),
    Message(
        "ARM",
        0x02,
        "host",
        "Arm the controller. Accepted only when the last HELLO_REQ was accepted and boot_id is "
        "the MCU's current boot id; the MCU answers STATUS(ARMED) and starts an episode with "
        "OBS(FIRST), or answers STATUS(ARM_REFUSED). Arming clears a latched watchdog.",
        (Field("boot_id", "u32", "boot_id of the HELLO the host accepted"),),
    ),
    Message(
        "STOP",
        0x03,
        "host",
        "Disarm: the MCU applies the safe action and answers STATUS(STOPPED). Does not clear a "
        "latched watchdog.",
        (Field("reason", "u8", "why the host stops", values=STOP_REASONS),),
    ),
    Message(
        "STATUS_REQ",
        0x04,
        "host",
        "Ask the MCU for a STATUS(REPLY).",
        (),
    ),
    Message(
        "ACTION",
        0x05,
        "host",
        "The action answering one OBS. The MCU applies it only when it is armed, obs_seq is the "
        "seq of its latest OBS (not yet answered) and every value is finite; otherwise it is "
        "rejected and counted.",
        (
            Field("obs_seq", "u16", "seq (frame header) of the OBS this action answers"),
            Field(
                "action",
                "f32",
                "action values; discrete actions send one value holding the integer index",
                count="action_size",
            ),
        ),
    ),
    Message(
        "PREDICTION",
        0x06,
        "host",
        "The prediction(s) answering one OBS, in prediction mode: the MCU's own controller "
        "acts, the host only learns and predicts. The MCU accepts it when it is armed and "
        "obs_seq is the seq of its latest OBS (not yet answered), then applies its own action "
        "and sends the next OBS; otherwise it is rejected and counted like an ACTION.",
        (
            Field("obs_seq", "u16", "seq (frame header) of the OBS this prediction answers"),
            Field(
                "prediction",
                "f32",
                "prediction values (e.g. v(S_t) of the cumulant sent as OBS.reward); at least "
                "one, as many as the payload holds",
                count="prediction_size",
            ),
        ),
    ),
    Message(
        "HELLO",
        0x81,
        "mcu",
        "The MCU's identity and configuration: the reply to HELLO_REQ (nonce echoed), and sent "
        "once, unsolicited, after every boot (nonce 0, accepted 0).",
        (
            _F_VERSION,
            _F_SCHEMA,
            Field(
                "boot_id",
                "u32",
                "random non-zero value drawn at every boot; a new value means the MCU rebooted",
            ),
            Field("nonce", "u32", "nonce of the HELLO_REQ answered; 0 when unsolicited"),
            _F_OBS_SIZE,
            _F_ACTION_SIZE,
            _F_NUM_ACTIONS,
            _F_OBS_DTYPE,
            _F_ACTION_DTYPE,
            Field(
                "control_period_ms",
                "u16",
                "nominal control period; 0: lock-step (the MCU steps when an ACTION arrives)",
            ),
            Field(
                "watchdog_ms",
                "u16",
                "a valid ACTION must arrive within this time after an OBS, else safe action and "
                "latch",
            ),
            Field(
                "accepted",
                "u8",
                "1: every HELLO_REQ field equals the MCU's own value and ARM(boot_id) will be "
                "accepted; 0 otherwise",
            ),
        ),
        extensible=True,
    ),
    Message(
        "OBS",
        0x82,
        "mcu",
        "One observation. Sent after ARM (FIRST) and after each applied ACTION; re-sent byte "
        "for byte (same seq) while its ACTION is missing.",
        (
            Field("flags", "u8", "episode flags", bits=OBS_FLAG_BITS),
            Field(
                "reward",
                "f32",
                "reward of the transition that led to this observation (0 when FIRST)",
            ),
            Field("obs", "f32", "observation values", count="obs_size"),
        ),
    ),
    Message(
        "STATUS",
        0x83,
        "mcu",
        "The MCU's safety state and counters. Sent on ARM, STOP, STATUS_REQ, a watchdog trip, "
        "every watchdog period while latched, and in reply to an ACTION received while disarmed "
        "(at most once per re-send period).",
        (
            Field("armed", "u8", "1 while armed"),
            Field("watchdog_latched", "u8", "1 from a watchdog trip until the next accepted ARM"),
            Field("event", "u8", "why this STATUS was sent", values=STATUS_EVENTS),
            Field("boot_id", "u32", "the MCU's current boot id"),
            Field("last_obs_seq", "u16", "seq of the latest OBS sent (0 before the first)"),
            Field("frames_ok", "u32", "frames received that validated"),
            Field(
                "frame_errors",
                "u32",
                "received chunks rejected, whatever the reason: COBS, too short, CRC, length, "
                "unknown id, too long, partial frame timed out",
            ),
            Field("watchdog_trips", "u32", "watchdog trips since boot"),
            Field("actions_applied", "u32", "ACTIONs applied since boot"),
            Field("actions_rejected", "u32", "ACTIONs rejected (stale, disarmed, non-finite)"),
        ),
    ),
)


def _check_table(messages: tuple[Message, ...]) -> None:
    """Invariants the codec and the C header rely on; checked at import."""

    def require(ok: bool, what: str) -> None:
        if not ok:
            raise ValueError(f"protocol table: {what}")

    ids = [m.id for m in messages]
    names = [m.name for m in messages]
    require(len(set(ids)) == len(ids), "duplicate message id")
    require(len(set(names)) == len(names), "duplicate message name")
    for m in messages:
        require(re.fullmatch(r"[A-Z][A-Z0-9_]*", m.name) is not None, f"name {m.name!r}")
        require(0 < m.id < 256, f"{m.name}: id {m.id}")
        require(m.sender == ("mcu" if m.id & 0x80 else "host"), f"{m.name}: id high bit = sender")
        seen = set()
        for i, f in enumerate(m.fields):
            require(re.fullmatch(r"[a-z][a-z0-9_]*", f.name) is not None, f"field {f.name!r}")
            require(f.name not in seen, f"{m.name}.{f.name} twice")
            seen.add(f.name)
            require(f.type in _TYPES, f"{m.name}.{f.name}: type {f.type}")
            if f.count is not None:
                require(
                    f.count in _SIZE_NAMES + _VAR_SIZE_NAMES, f"{m.name}.{f.name}: count {f.count}"
                )
                require(i == len(m.fields) - 1, f"{m.name}: the array must be the last field")
                require(not m.extensible, f"{m.name}: extensible messages have no array")
        fixed = sum(_TYPES[f.type][1] for f in m.fields if f.count is None)
        require(fixed <= MAX_PAYLOAD, f"{m.name}: fixed part exceeds MAX_PAYLOAD")


_check_table(MESSAGES)

BY_NAME: dict[str, Message] = {m.name: m for m in MESSAGES}
BY_ID: dict[int, Message] = {m.id: m for m in MESSAGES}
MsgId = enum.IntEnum("MsgId", {m.name: m.id for m in MESSAGES})
MsgId.__doc__ = "Message ids, derived from MESSAGES."

OBS_FIRST, OBS_TERMINAL, OBS_TRUNCATED = (1 << bit for _, bit in OBS_FLAG_BITS)


def enum_value(msg: str, field_name: str, value_name: str) -> int:
    """The number of a named value (or the mask of a named bit) of a field, from the table."""
    f = next(f for f in BY_NAME[msg].fields if f.name == field_name)
    if f.bits:
        return 1 << dict(f.bits)[value_name]
    return dict(f.values)[value_name]


def _fixed_size(m: Message) -> int:
    return sum(_TYPES[f.type][1] for f in m.fields if f.count is None)


# Largest arrays that still fit MAX_PAYLOAD.
MAX_OBS_SIZE = (MAX_PAYLOAD - _fixed_size(BY_NAME["OBS"])) // 4
MAX_ACTION_SIZE = (MAX_PAYLOAD - _fixed_size(BY_NAME["ACTION"])) // 4
MAX_PREDICTION_SIZE = (MAX_PAYLOAD - _fixed_size(BY_NAME["PREDICTION"])) // 4


@dataclass(frozen=True)
class _Layout:
    scalars: struct.Struct  # '<' + the scalar fields in order
    scalar_names: tuple[str, ...]
    array: Field | None
    fixed_size: int


_LAYOUT: dict[int, _Layout] = {}
for _m in MESSAGES:
    _scalars = [f for f in _m.fields if f.count is None]
    _LAYOUT[_m.id] = _Layout(
        struct.Struct("<" + "".join(_TYPES[f.type][0] for f in _scalars)),
        tuple(f.name for f in _scalars),
        next((f for f in _m.fields if f.count is not None), None),
        _fixed_size(_m),
    )
del _m, _scalars


# --------------------------------------------------------------------------------------------
# Schema hash
# --------------------------------------------------------------------------------------------


def _field_text(f: Field) -> str:
    s = f"{f.name}:{f.type}"
    if f.count:
        s += f"[{f.count}]"
    if f.values:
        s += "{" + ",".join(f"{n}={v}" for n, v in f.values) + "}"
    if f.bits:
        s += "{" + ",".join(f"{n}=b{b}" for n, b in f.bits) + "}"
    return s


def schema_text(messages: tuple[Message, ...] = MESSAGES) -> str:
    """Canonical text of the table: one line per message, fields in order. Docs are excluded."""
    lines = []
    for m in messages:
        fields = " ".join(_field_text(f) for f in m.fields)
        ext = " +" if m.extensible else ""
        lines.append(f"{m.name}=0x{m.id:02X} {m.sender}{ext}: {fields}".rstrip())
    return "\n".join(lines) + "\n"


SCHEMA_HASH = zlib.crc32(schema_text().encode("ascii"))


# --------------------------------------------------------------------------------------------
# COBS
# --------------------------------------------------------------------------------------------


class CobsError(ValueError):
    """Bytes that are not a valid COBS encoding."""


def cobs_encode(data: bytes) -> bytes:
    """COBS-encode `data` (canonical form, no delimiter): the result contains no 0x00 byte.

    A run of exactly 254 non-zero bytes that ends the data is not followed by a code byte
    (the form of the reference C implementation, also generated into the C header).
    """
    out = bytearray()
    parts = data.split(b"\x00")
    last = len(parts) - 1
    for k, part in enumerate(parts):
        n = len(part)
        i = 0
        while n - i >= 254:
            out.append(0xFF)
            out += part[i : i + 254]
            i += 254
        if i == n and n > 0 and k == last:
            break
        out.append(n - i + 1)
        out += part[i:]
    return bytes(out)


def cobs_decode(data: bytes) -> bytes:
    """Decode one COBS block sequence (without the 0x00 delimiter); raises CobsError."""
    out = bytearray()
    n = len(data)
    i = 0
    while i < n:
        code = data[i]
        j = i + code
        if code == 0:
            raise CobsError(f"zero byte at offset {i}")
        if j > n:
            raise CobsError(f"code byte {code} at offset {i} runs past the end ({n} bytes)")
        block = data[i + 1 : j]
        if 0 in block:
            raise CobsError("zero byte inside a block")
        out += block
        i = j
        if code != 0xFF and i < n:
            out.append(0)
    return bytes(out)


# --------------------------------------------------------------------------------------------
# Codec
# --------------------------------------------------------------------------------------------


class Sizes(NamedTuple):
    """Array lengths agreed in the handshake."""

    obs_size: int
    action_size: int


@dataclass(frozen=True)
class Frame:
    """A frame that fully validated. Equal frames have equal id, seq and payload bytes."""

    msg_id: int
    seq: int
    payload: bytes
    # decoded fields; arrays are read-only float32 views of the payload
    fields: dict[str, Any] = field(compare=False, repr=False)

    @property
    def name(self) -> str:
        return BY_ID[self.msg_id].name

    def __repr__(self) -> str:
        vals = ", ".join(
            f"{k}={v.tolist() if isinstance(v, np.ndarray) else v}" for k, v in self.fields.items()
        )
        return f"Frame({self.name}, seq={self.seq}{', ' if vals else ''}{vals})"


BAD_REASONS = ("cobs", "short", "crc", "bad_length", "unknown_msg", "oversize", "timeout")


@dataclass(frozen=True)
class BadFrame:
    """A rejected chunk of bytes: why, how many bytes, and what could be read of its header."""

    reason: str  # one of BAD_REASONS
    size: int  # bytes discarded
    msg_id: int | None = None  # when the frame passed its CRC
    seq: int | None = None
    detail: str = ""


def _resolve(msg: str | int | Message) -> Message:
    if isinstance(msg, Message):
        return msg
    if isinstance(msg, str):
        try:
            return BY_NAME[msg]
        except KeyError:
            raise ValueError(f"unknown message {msg!r}; known: {', '.join(BY_NAME)}") from None
    try:
        return BY_ID[int(msg)]
    except KeyError:
        raise ValueError(f"unknown message id {msg!r}") from None


def expected_payload_size(msg: Message, sizes: Sizes | None) -> int | None:
    """Exact payload size of `msg` under `sizes`; None when an array length is not yet known."""
    lay = _LAYOUT[msg.id]
    if lay.array is None:
        return lay.fixed_size
    if sizes is None or lay.array.count in _VAR_SIZE_NAMES:
        return None
    return lay.fixed_size + 4 * getattr(sizes, lay.array.count)


def encode_payload(
    msg: str | int | Message, fields: Mapping[str, Any], sizes: Sizes | None = None
) -> bytes:
    """Pack the fields of one message. Every field must be given; arrays are float32."""
    m = _resolve(msg)
    lay = _LAYOUT[m.id]
    names = {f.name for f in m.fields}
    missing = names - fields.keys()
    extra = fields.keys() - names
    if missing or extra:
        raise ValueError(
            f"{m.name}: missing fields {sorted(missing)}, unknown fields {sorted(extra)}"
        )
    try:
        out = lay.scalars.pack(*(fields[n] for n in lay.scalar_names))
    except (struct.error, OverflowError, TypeError) as e:
        raise ValueError(f"{m.name}: {e}") from None
    if lay.array is not None:
        arr = np.asarray(fields[lay.array.name], dtype="<f4").reshape(-1)
        if lay.array.count in _VAR_SIZE_NAMES:
            if arr.size < 1:
                raise ValueError(f"{m.name}.{lay.array.name}: at least one value")
        elif sizes is not None and arr.size != getattr(sizes, lay.array.count):
            raise ValueError(
                f"{m.name}.{lay.array.name}: {arr.size} values, but "
                f"{lay.array.count}={getattr(sizes, lay.array.count)}"
            )
        out += arr.tobytes()
    if len(out) > MAX_PAYLOAD:
        raise ValueError(f"{m.name}: payload of {len(out)} bytes exceeds {MAX_PAYLOAD}")
    return out


def encode_frame(
    msg: str | int | Message,
    seq: int,
    fields: Mapping[str, Any] | None = None,
    sizes: Sizes | None = None,
) -> bytes:
    """The bytes on the wire for one message: COBS(header|payload|CRC) + 0x00."""
    m = _resolve(msg)
    payload = encode_payload(m, fields or {}, sizes)
    body = _HEADER.pack(m.id, seq % SEQ_MODULUS, len(payload)) + payload
    return cobs_encode(body + _CRC.pack(zlib.crc32(body))) + b"\x00"


def decode_frame(encoded: bytes, sizes: Sizes | None = None) -> Frame | BadFrame:
    """Validate and decode one COBS chunk (without its 0x00). Never raises."""
    n = len(encoded)
    if n > MAX_ENCODED_FRAME:
        return BadFrame("oversize", n, detail=f"{n} encoded bytes > {MAX_ENCODED_FRAME}")
    try:
        body = cobs_decode(encoded)
    except CobsError as e:
        return BadFrame("cobs", n, detail=str(e))
    if len(body) < MIN_FRAME:
        return BadFrame("short", n, detail=f"{len(body)} decoded bytes < {MIN_FRAME}")
    if len(body) > MAX_FRAME:
        # COBS overhead depends on the data, so a chunk within MAX_ENCODED_FRAME can still
        # decode to more than MAX_FRAME bytes; never dispatch it, whatever its CRC says.
        return BadFrame("oversize", n, detail=f"{len(body)} decoded bytes > {MAX_FRAME}")
    if zlib.crc32(body[:-CRC_SIZE]) != _CRC.unpack_from(body, len(body) - CRC_SIZE)[0]:
        return BadFrame("crc", n)
    msg_id, seq, length = _HEADER.unpack_from(body, 0)
    payload = body[HEADER_SIZE:-CRC_SIZE]
    if length != len(payload):
        return BadFrame(
            "bad_length",
            n,
            msg_id,
            seq,
            f"header says {length} payload bytes, the frame carries {len(payload)}",
        )
    m = BY_ID.get(msg_id)
    if m is None:
        return BadFrame("unknown_msg", n, msg_id, seq, f"unknown message id 0x{msg_id:02X}")
    lay = _LAYOUT[msg_id]
    size = len(payload)
    expected = expected_payload_size(m, sizes)
    if m.extensible:
        ok = size >= lay.fixed_size
    elif expected is not None:
        ok = size == expected
    else:  # array length not agreed (yet): any whole number of floats, >= 1 when variable
        least = lay.fixed_size + (4 if lay.array.count in _VAR_SIZE_NAMES else 0)
        ok = size >= least and (size - lay.fixed_size) % 4 == 0
    if not ok:
        agreed = f" under {sizes}" if expected is not None and lay.array is not None else ""
        if m.extensible:
            want = f">= {lay.fixed_size}"
        elif expected is None:
            want = f"{lay.fixed_size} + 4*n"
        else:
            want = str(expected)
        return BadFrame(
            "bad_length", n, msg_id, seq, f"{m.name}: {size} payload bytes, expected {want}{agreed}"
        )
    values = dict(zip(lay.scalar_names, lay.scalars.unpack_from(payload, 0), strict=True))
    if lay.array is not None:
        count = (size - lay.fixed_size) // 4
        values[lay.array.name] = np.frombuffer(payload, "<f4", count, lay.fixed_size)
    return Frame(msg_id, seq, payload, values)


# --------------------------------------------------------------------------------------------
# Parser and sequence tracking
# --------------------------------------------------------------------------------------------


def frame_timeout_s(
    baud: int, frame_bytes: int = MAX_ENCODED_FRAME + 1, latency_timer_ms: float = 16
) -> float:
    """How long a partial frame may wait for its next byte before it is discarded.

    DynamixelSDK's packet timeout: wire time of `frame_bytes` at `baud` (10 bits per byte,
    8N1) plus twice the USB-serial latency timer plus 2 ms.
    """
    byte_ms = 10_000.0 / baud
    return (byte_ms * frame_bytes + 2.0 * latency_timer_ms + 2.0) / 1000.0


DEFAULT_FRAME_TIMEOUT_S = frame_timeout_s(115_200)

PARSER_COUNTERS = (
    "bytes_in",  # every byte fed
    "frames_ok",  # frames that validated
    "cobs_errors",  # chunk is not valid COBS
    "short_frames",  # decoded to fewer than header + CRC bytes
    "crc_errors",  # CRC mismatch (noise, or a baud-rate mismatch when they spike)
    "bad_length",  # payload length wrong for the message or the handshake sizes (fault 4)
    "unknown_msg",  # CRC ok, message id not in the table
    "oversize",  # no delimiter within MAX_ENCODED_FRAME bytes, or decodes past MAX_FRAME
    "timeouts",  # partial frame discarded after silence (fault 9)
    "bytes_discarded",  # bytes of rejected chunks, skipped oversize runs and expired partials
)


class Parser:
    """Push-style frame parser: bytes in, `Frame`/`BadFrame` out. Never raises on input.

    Every 0x00 ends a chunk; a chunk is dispatched only when all of it decodes, passes its CRC
    and has the right length, so a frame embedded in a corrupted one is never dispatched and no
    byte of a rejected chunk is ever re-scanned. At most MAX_ENCODED_FRAME bytes are buffered;
    a longer run without a delimiter is discarded up to the next 0x00.

    A partial frame followed by silence would swallow the next frame; call `expire(now)` when a
    read found no bytes waiting, and a partial older than `frame_timeout_s` is discarded.
    """

    def __init__(
        self, sizes: Sizes | None = None, *, frame_timeout_s: float = DEFAULT_FRAME_TIMEOUT_S
    ):
        self.sizes = sizes  # array lengths for length validation; None until the handshake
        self.frame_timeout_s = frame_timeout_s
        self.counters: dict[str, int] = dict.fromkeys(PARSER_COUNTERS, 0)
        self._buf = bytearray()  # the partial chunk (never longer than MAX_ENCODED_FRAME)
        self._skipping = False  # discarding an oversize run until the next 0x00
        self._last_rx = 0.0  # when the partial chunk last grew

    @property
    def pending(self) -> int:
        """Bytes of the partial chunk currently buffered."""
        return len(self._buf)

    def reset(self) -> None:
        """Drop any partial chunk (counters are kept)."""
        self.counters["bytes_discarded"] += len(self._buf)
        self._buf.clear()
        self._skipping = False

    def feed(self, data: bytes, now: float | None = None) -> list[Frame | BadFrame]:
        """Consume `data`; return the frames and rejected chunks it completed, in order."""
        if not data:
            return []
        c = self.counters
        c["bytes_in"] += len(data)
        out: list[Frame | BadFrame] = []
        start, n = 0, len(data)
        while start < n:
            i = data.find(0, start)
            if i < 0:
                self._grow(data[start:], now, out)
                break
            if self._skipping:
                c["bytes_discarded"] += i - start
                self._skipping = False
            elif self._buf:
                self._buf += data[start:i]
                if len(self._buf) > MAX_ENCODED_FRAME:
                    out.append(self._oversize(len(self._buf)))
                else:
                    out.append(self._decode(bytes(self._buf)))
                self._buf.clear()
            elif i > start:
                if i - start > MAX_ENCODED_FRAME:
                    out.append(self._oversize(i - start))
                else:
                    out.append(self._decode(data[start:i]))
            # else: an empty chunk (idle or leading delimiter) carries nothing
            start = i + 1
        return out

    def expire(self, now: float | None = None) -> list[BadFrame]:
        """Discard a partial chunk that has not grown for `frame_timeout_s` (line was silent)."""
        if not self._buf and not self._skipping:
            return []
        now = time.monotonic() if now is None else now
        if now - self._last_rx < self.frame_timeout_s:
            return []
        self._skipping = False
        if not self._buf:
            return []
        size = len(self._buf)
        self._buf.clear()
        self.counters["timeouts"] += 1
        self.counters["bytes_discarded"] += size
        return [BadFrame("timeout", size, detail=f"partial frame of {size} bytes, then silence")]

    def _grow(self, seg: bytes, now: float | None, out: list) -> None:
        self._last_rx = time.monotonic() if now is None else now
        if self._skipping:
            self.counters["bytes_discarded"] += len(seg)
        elif len(self._buf) + len(seg) > MAX_ENCODED_FRAME:
            out.append(self._oversize(len(self._buf) + len(seg)))
            self._buf.clear()
            self._skipping = True
        else:
            self._buf += seg

    def _oversize(self, size: int) -> BadFrame:
        self.counters["oversize"] += 1
        self.counters["bytes_discarded"] += size
        return BadFrame("oversize", size, detail=f"no delimiter within {MAX_ENCODED_FRAME} bytes")

    def _decode(self, chunk: bytes) -> Frame | BadFrame:
        r = decode_frame(chunk, self.sizes)
        c = self.counters
        if isinstance(r, Frame):
            c["frames_ok"] += 1
        else:
            key = {"cobs": "cobs_errors", "short": "short_frames", "crc": "crc_errors"}.get(
                r.reason, r.reason
            )
            c[key] += 1
            c["bytes_discarded"] += r.size
        return r


def seq_diff(a: int, b: int) -> int:
    """a - b in sequence space: positive when a is newer than b (range -32768..32767)."""
    return (a - b + SEQ_MODULUS // 2) % SEQ_MODULUS - SEQ_MODULUS // 2


class SeqTracker:
    """Sequence numbers of one sender: counts gaps, duplicates and stale (reordered) frames.

    Feed it only frames that fully validated, so noise can never move its state.
    """

    def __init__(self) -> None:
        self.last: int | None = None
        self.counters = {"frames": 0, "gaps": 0, "lost": 0, "duplicates": 0, "stale": 0}

    def reset(self) -> None:
        """Forget the last seq (new session or reboot); counters are kept."""
        self.last = None

    def update(self, seq: int) -> str:
        """Classify `seq`: 'first', 'next', 'gap', 'duplicate' or 'stale' (older than last)."""
        c = self.counters
        c["frames"] += 1
        if self.last is None:
            self.last = seq
            return "first"
        d = seq_diff(seq, self.last)
        if d == 0:
            c["duplicates"] += 1
            return "duplicate"
        if d < 0:
            c["stale"] += 1
            return "stale"
        self.last = seq
        if d == 1:
            return "next"
        c["gaps"] += 1
        c["lost"] += d - 1
        return "gap"


# --------------------------------------------------------------------------------------------
# Golden frames, docs and the C header
# --------------------------------------------------------------------------------------------


class Golden(NamedTuple):
    """A reference frame, checked against the codec, the docs and the C header."""

    label: str
    msg: str
    seq: int
    fields: dict[str, Any]
    sizes: Sizes | None

    def encoded(self) -> bytes:
        return encode_frame(self.msg, self.seq, self.fields, self.sizes)

    def decoded(self) -> bytes:
        return cobs_decode(self.encoded()[:-1])


_GOLDEN_SIZES = Sizes(obs_size=4, action_size=1)
_CARTPOLE_P_SIZES = Sizes(obs_size=2, action_size=1)  # the default env, classic/CartPole-P
_HELLO_COMMON = {
    "protocol_version": PROTOCOL_VERSION,
    "schema_hash": SCHEMA_HASH,
    "obs_size": 4,
    "action_size": 1,
    "num_actions": 2,
    "obs_dtype": DTYPE_F32,
    "action_dtype": DTYPE_F32,
}
_MCU_HELLO = {"boot_id": 0xCAFEF00D, "control_period_ms": 0, "watchdog_ms": 500}
# One session, in the order of section 5 of docs/protocol.md: the MCU's unsolicited boot HELLO
# takes its seq 0 (hello_boot, listed after the session so that older indices stay put), so
# its reply to HELLO_REQ is seq 1; the host's first frame after opening the port is seq 0.
# The last three frames use the CartPole-P sizes (obs_size 2).
GOLDEN_FRAMES: tuple[Golden, ...] = (
    Golden("hello_req", "HELLO_REQ", 0, {**_HELLO_COMMON, "nonce": 0x12345678}, None),
    Golden(
        "hello",
        "HELLO",
        1,
        {**_HELLO_COMMON, **_MCU_HELLO, "nonce": 0x12345678, "accepted": 1},
        None,
    ),
    Golden("arm", "ARM", 1, {"boot_id": 0xCAFEF00D}, None),
    Golden(
        "status_armed",
        "STATUS",
        2,
        {
            "armed": 1,
            "watchdog_latched": 0,
            "event": 1,
            "boot_id": 0xCAFEF00D,
            "last_obs_seq": 0,
            "frames_ok": 2,
            "frame_errors": 0,
            "watchdog_trips": 0,
            "actions_applied": 0,
            "actions_rejected": 0,
        },
        None,
    ),
    Golden(
        "obs_first",
        "OBS",
        3,
        {"flags": OBS_FIRST, "reward": 0.0, "obs": [0.0, 1.0, -2.5, 0.25]},
        _GOLDEN_SIZES,
    ),
    Golden("action", "ACTION", 2, {"obs_seq": 3, "action": [1.0]}, _GOLDEN_SIZES),
    Golden(
        "obs_terminal",
        "OBS",
        4,
        {"flags": OBS_TERMINAL, "reward": 1.0, "obs": [0.5, -0.125, 3.0, -1.0]},
        _GOLDEN_SIZES,
    ),
    Golden("stop", "STOP", 3, {"reason": 0}, None),
    Golden("status_req", "STATUS_REQ", 4, {}, None),
    Golden(
        "hello_boot",
        "HELLO",
        0,
        {**_HELLO_COMMON, **_MCU_HELLO, "nonce": 0, "accepted": 0},
        None,
    ),
    Golden(
        "hello_req_cartpole_p",
        "HELLO_REQ",
        0,
        {**_HELLO_COMMON, "obs_size": 2, "nonce": 0x12345678},
        None,
    ),
    Golden(
        "obs_first_cartpole_p",
        "OBS",
        3,
        {"flags": OBS_FIRST, "reward": 0.0, "obs": [0.03125, -0.015625]},
        _CARTPOLE_P_SIZES,
    ),
    Golden(
        "obs_truncated_cartpole_p",
        "OBS",
        503,
        {"flags": OBS_TRUNCATED, "reward": 1.0, "obs": [-1.5, 0.0625]},
        _CARTPOLE_P_SIZES,
    ),
    # prediction mode: the host answers obs_first_cartpole_p with v(S_t) instead of an ACTION
    Golden("prediction", "PREDICTION", 2, {"obs_seq": 3, "prediction": [0.75]}, _CARTPOLE_P_SIZES),
)

DOC_BEGIN = "<!-- BEGIN GENERATED {name}: python -m firmware_bridge.protocol --markdown -->"
DOC_END = "<!-- END GENERATED {name} -->"
DOC_SECTIONS = ("constants", "messages", "golden", "schema")


def _hex(b: bytes) -> str:
    return " ".join(f"{x:02x}" for x in b)


def _size_text(m: Message) -> str:
    lay = _LAYOUT[m.id]
    if lay.array is not None:
        return f"{lay.fixed_size} + 4*{lay.array.count}"
    return f"{lay.fixed_size}" + (" (or more)" if m.extensible else "")


def _md_constants() -> str:
    rows = [
        ("PROTOCOL_VERSION", PROTOCOL_VERSION, "protocol version"),
        ("SCHEMA_HASH", f"0x{SCHEMA_HASH:08x}", "CRC-32 of the schema text below"),
        ("HEADER_SIZE", HEADER_SIZE, "msg_id u8, seq u16, payload length u16"),
        ("CRC_SIZE", CRC_SIZE, "CRC-32, little-endian, after the payload"),
        ("MAX_PAYLOAD", MAX_PAYLOAD, "largest payload"),
        ("MAX_FRAME", MAX_FRAME, "largest decoded frame (header + payload + CRC)"),
        ("MAX_ENCODED_FRAME", MAX_ENCODED_FRAME, "largest COBS-encoded frame, without the 0x00"),
        ("MAX_OBS_SIZE", MAX_OBS_SIZE, "largest obs_size"),
        ("MAX_ACTION_SIZE", MAX_ACTION_SIZE, "largest action_size"),
        ("DTYPE_F32", DTYPE_F32, "dtype code of IEEE-754 binary32, little-endian"),
    ]
    lines = ["| constant | value | meaning |", "|---|---|---|"]
    lines += [f"| `{n}` | {v} | {d} |" for n, v, d in rows]
    return "\n".join(lines)


def _md_messages() -> str:
    lines = [
        "| id | message | sender | payload bytes | purpose |",
        "|---|---|---|---|---|",
    ]
    for m in MESSAGES:
        first = m.doc.split(". ")[0].rstrip(".")
        lines.append(
            f"| 0x{m.id:02X} | [{m.name}](#{m.name.lower()}) | {m.sender} | {_size_text(m)} "
            f"| {first} |"
        )
    for m in MESSAGES:
        sender = "host -> MCU" if m.sender == "host" else "MCU -> host"
        head = f"id 0x{m.id:02X}, {sender}, payload size in bytes: {_size_text(m)}."
        lines += ["", f"### {m.name}", "", f"{head} {m.doc}"]
        if m.extensible:
            lines[-1] += (
                " Receivers accept a longer payload and ignore the bytes after the fields "
                "listed here (later versions may append fields)."
            )
        lines.append("")
        if not m.fields:
            lines.append("Empty payload.")
            continue
        lines += ["| offset | field | type | meaning |", "|---|---|---|---|"]
        off = 0
        for f in m.fields:
            t = f"{f.type}[{f.count}]" if f.count else f.type
            doc = f.doc
            if f.values:
                doc += ": " + ", ".join(f"{v} = {n}" for n, v in f.values)
            if f.bits:
                doc += ": " + ", ".join(f"bit {b} (0x{1 << b:02x}) = {n}" for n, b in f.bits)
            lines.append(f"| {off} | `{f.name}` | {t} | {doc} |")
            off += _TYPES[f.type][1]
    return "\n".join(lines)


def _fmt_value(v: Any) -> str:
    if isinstance(v, list | tuple):
        return "[" + ", ".join(_fmt_value(x) for x in v) + "]"
    if isinstance(v, int) and v > 0xFFFF:
        return f"0x{v:08x}"
    return repr(v)


def _md_golden() -> str:
    lines = []
    for g in GOLDEN_FRAMES:
        vals = ", ".join(f"{k}={_fmt_value(v)}" for k, v in g.fields.items()) or "(no fields)"
        sizes = f", agreed sizes obs_size={g.sizes.obs_size}, action_size=" if g.sizes else ""
        if g.sizes:
            sizes += str(g.sizes.action_size)
        lines += [
            f"**{g.label}**: {g.msg} seq={g.seq}{sizes}; {vals}",
            "",
            "```",
            f"decoded: {_hex(g.decoded())}",
            f"wire:    {_hex(g.encoded())}",
            "```",
            "",
        ]
    return "\n".join(lines).rstrip("\n")


def _md_schema() -> str:
    return (
        f"Schema hash: `0x{SCHEMA_HASH:08x}` = CRC-32 of this ASCII text (LF line ends, final LF):"
        f"\n\n```\n{schema_text()}```"
    )


def render_markdown() -> dict[str, str]:
    """The generated sections of docs/protocol.md, by section name."""
    return {
        "constants": _md_constants(),
        "messages": _md_messages(),
        "golden": _md_golden(),
        "schema": _md_schema(),
    }


def _wrap_section(name: str, body: str) -> str:
    return f"{DOC_BEGIN.format(name=name)}\n{body}\n{DOC_END.format(name=name)}"


def update_doc(text: str) -> str:
    """`text` with every generated section replaced by the generator's current output."""
    for name, body in render_markdown().items():
        begin, end = DOC_BEGIN.format(name=name), DOC_END.format(name=name)
        pattern = re.compile(re.escape(begin) + ".*?" + re.escape(end), re.S)
        if not pattern.search(text):
            raise ValueError(f"section markers for {name!r} not found")
        text = pattern.sub(lambda _m, n=name, b=body: _wrap_section(n, b), text)
    return text


def doc_sections(text: str) -> dict[str, str]:
    """The generated sections found in a markdown document (for the docs-in-sync test)."""
    out = {}
    for name in DOC_SECTIONS:
        begin, end = DOC_BEGIN.format(name=name), DOC_END.format(name=name)
        m = re.search(re.escape(begin) + "\n(.*?)\n" + re.escape(end), text, re.S)
        if m:
            out[name] = m.group(1)
    return out


def main(argv: list[str] | None = None) -> int:
    """Print or write the derived doc sections or the schema text (C files: codegen.py)."""
    ap = argparse.ArgumentParser(
        prog="python -m firmware_bridge.protocol", description=main.__doc__
    )
    g = ap.add_mutually_exclusive_group(required=True)
    g.add_argument("--markdown", action="store_true", help="print the generated doc sections")
    g.add_argument("--schema", action="store_true", help="print the schema text and its hash")
    g.add_argument("--write-docs", metavar="PATH", help="rewrite the generated sections of PATH")
    a = ap.parse_args(argv)
    if a.markdown:
        print("\n\n".join(_wrap_section(n, b) for n, b in render_markdown().items()))
    elif a.schema:
        sys.stdout.write(schema_text())
        print(f"schema_hash 0x{SCHEMA_HASH:08x}")
    else:
        with open(a.write_docs, encoding="utf-8") as f:
            text = f.read()
        with open(a.write_docs, "w", encoding="utf-8") as f:
            f.write(update_doc(text))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
