"""Wire protocol v1: codec, framing robustness, sequence tracking, and derived artefacts."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from firmware_bridge import protocol as p
from firmware_bridge.host import HandshakeError, HelloInfo, check_hello
from firmware_bridge.protocol import BadFrame, Frame, Parser, SeqTracker, Sizes

REPO = Path(__file__).resolve().parents[2]
SIZES = Sizes(obs_size=4, action_size=1)
FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Frozen bytes: any change to the table, the framing or the codec shows up here first.
GOLDEN_HEX = {
    "hello_req": "02 01 01 02 11 0b 01 f1 d5 8a b6 78 56 34 12 04 02 01 02 02 07 01 01 08 5e bf "
    "ae 00",
    "hello": "03 81 01 02 1a 0f 01 f1 d5 8a b6 0d f0 fe ca 78 56 34 12 04 02 01 02 02 03 01 01 01 "
    "08 f4 01 01 ab 20 1c d0 00",
    "arm": "03 02 01 02 04 09 0d f0 fe ca 30 32 e4 29 00",
    "status_armed": "03 83 02 02 1d 02 01 06 01 0d f0 fe ca 01 02 02 01 01 01 01 01 01 01 01 01 "
    "01 01 01 01 01 01 01 01 01 05 cf c4 a8 d1 00",
    "obs_first": "03 82 03 02 15 02 01 01 01 01 01 01 01 01 01 01 03 80 3f 01 03 20 c0 01 07 80 "
    "3e 93 ab df db 00",
    "action": "03 05 02 02 06 02 03 01 01 07 80 3f cc 03 3b d3 00",
    "obs_terminal": "03 82 04 02 15 02 02 01 03 80 3f 01 01 02 3f 01 01 02 be 01 03 40 40 01 07 "
    "80 bf 62 82 05 ab 00",
    "stop": "03 03 03 02 01 01 05 ea c3 34 71 00",
    "status_req": "03 04 04 01 01 05 8a c6 c0 bc 00",
    "hello_boot": "02 81 01 02 1a 0a 01 f1 d5 8a b6 0d f0 fe ca 01 01 01 02 04 02 01 02 02 03 01 "
    "01 01 03 f4 01 05 2b ef 10 43 00",
    "hello_req_cartpole_p": "02 01 01 02 11 0b 01 f1 d5 8a b6 78 56 34 12 02 02 01 02 02 07 01 01 "
    "8f 57 d0 68 00",
    "obs_first_cartpole_p": "03 82 03 02 0d 02 01 01 01 01 01 01 01 02 3d 01 07 80 bc 99 a9 43 1e "
    "00",
    "obs_truncated_cartpole_p": "05 82 f7 01 0d 02 04 01 03 80 3f 01 03 c0 bf 01 07 80 3d bd e1 "
    "c8 57 00",
    "prediction": "03 06 02 02 06 02 03 01 01 07 40 3f 83 b2 23 81 00",
}
# protocol v1 before PREDICTION (0x06): what an old MCU still reports in its HELLO
SCHEMA_HASH_PRE_PREDICTION = 0x6D296269
SCHEMA_HASH_V1 = 0xB68AD5F1
REJECT_COUNTERS = ("crc_errors", "cobs_errors", "short_frames", "bad_length", "unknown_msg")


def frames_of(items):
    return [i for i in items if isinstance(i, Frame)]


def feed_all(chunks, sizes=SIZES):
    parser = Parser(sizes)
    out = []
    for c in chunks:
        out += parser.feed(c)
    return parser, out


# The golden frames valid under SIZES (the CartPole-P OBS frames have obs_size 2).
SESSION = [g for g in p.GOLDEN_FRAMES if g.sizes in (None, SIZES)]


def golden_stream() -> tuple[bytes, list[Frame]]:
    """The golden frames valid under SIZES back to back, and what they decode to."""
    data = b"".join(g.encoded() for g in SESSION)
    return data, [p.decode_frame(g.encoded()[:-1], SIZES) for g in SESSION]


# ------------------------------------------------------------------------- table and hash


def test_table_invariants_and_derived_ids():
    assert p.MsgId.OBS == 0x82 and p.MsgId.ACTION == 0x05
    for m in p.MESSAGES:
        assert (m.id >= 0x80) == (m.sender == "mcu")
    with pytest.raises(ValueError, match="duplicate message id"):
        p._check_table(p.MESSAGES + (p.MESSAGES[0],))
    assert p.MAX_ENCODED_FRAME >= len(p.cobs_encode(b"\x01" * p.MAX_FRAME))
    assert p.OBS_FIRST == 1 and p.OBS_TERMINAL == 2 and p.OBS_TRUNCATED == 4
    assert p.enum_value("STATUS", "event", "WATCHDOG") == 4


def test_schema_hash_is_crc32_of_the_canonical_text_and_frozen():
    text = p.schema_text()
    assert p.SCHEMA_HASH == zlib.crc32(text.encode("ascii"))
    assert p.SCHEMA_HASH == SCHEMA_HASH_V1, "table changed: bump golden values and reflash"
    assert "OBS=0x82 mcu: flags:u8{FIRST=b0,TERMINAL=b1,TRUNCATED=b2}" in text
    # Reordering fields changes the text (and so the hash); editing descriptions does not.
    swapped = tuple(
        p.Message(m.name, m.id, m.sender, m.doc, m.fields[::-1], m.extensible)
        if m.name == "OBS"
        else m
        for m in p.MESSAGES
    )
    assert p.schema_text(swapped) != text
    redoc = tuple(
        p.Message(m.name, m.id, m.sender, "other words", m.fields, m.extensible) for m in p.MESSAGES
    )
    assert p.schema_text(redoc) == text


def test_crc_parameters():
    assert zlib.crc32(b"123456789") == 0xCBF43926


# ------------------------------------------------------------------------- COBS


@pytest.mark.parametrize(
    "raw, enc",
    [
        (b"", b"\x01"),
        (b"\x00", b"\x01\x01"),
        (b"\x00\x00", b"\x01\x01\x01"),
        (b"\x11\x22\x00\x33", b"\x03\x11\x22\x02\x33"),
        (b"\x11\x22\x33\x44", b"\x05\x11\x22\x33\x44"),
        (b"\x11\x00\x00\x00", b"\x02\x11\x01\x01\x01"),
        (bytes(range(1, 255)), b"\xff" + bytes(range(1, 255))),
        (bytes(range(0, 255)), b"\x01\xff" + bytes(range(1, 255))),
        (bytes(range(1, 256)), b"\xff" + bytes(range(1, 255)) + b"\x02\xff"),
    ],
)
def test_cobs_reference_vectors(raw, enc):
    assert p.cobs_encode(raw) == enc
    assert p.cobs_decode(enc) == raw


@FAST
@given(st.binary(max_size=2000))
def test_cobs_round_trip(data):
    enc = p.cobs_encode(data)
    assert 0 not in enc
    assert len(enc) <= len(data) + max(1, -(-len(data) // 254))
    assert p.cobs_decode(enc) == data


@pytest.mark.parametrize("bad", [b"\x05\x11", b"\x00", b"\x03\x11\x00"])
def test_cobs_decode_rejects(bad):
    with pytest.raises(p.CobsError):
        p.cobs_decode(bad)


# ------------------------------------------------------------------------- codec round trip

U8, U16, U32 = (st.integers(0, 2**k - 1) for k in (8, 16, 32))
F32 = st.floats(width=32, allow_nan=True, allow_infinity=True)
_SCALAR = {"u8": U8, "u16": U16, "u32": U32, "f32": F32}


@st.composite
def messages(draw):
    m = draw(st.sampled_from(p.MESSAGES))
    sizes = Sizes(draw(st.integers(1, p.MAX_OBS_SIZE)), draw(st.integers(1, 8)))
    fields = {}
    for f in m.fields:
        if f.count is None:
            fields[f.name] = draw(_SCALAR[f.type])
        else:
            # PREDICTION's length is not agreed: any 1..MAX_PREDICTION_SIZE values
            n = (
                draw(st.integers(1, p.MAX_PREDICTION_SIZE))
                if f.count == "prediction_size"
                else getattr(sizes, f.count)
            )
            fields[f.name] = draw(st.lists(F32, min_size=n, max_size=n))
    return m, draw(U16), fields, sizes


def _same_value(a, b) -> bool:
    return struct.pack("<f", a) == struct.pack("<f", b) if isinstance(b, float) else a == b


@FAST
@given(messages())
def test_every_message_round_trips(case):
    m, seq, fields, sizes = case
    data = p.encode_frame(m.name, seq, fields, sizes)
    assert data.endswith(b"\x00") and 0 not in data[:-1]
    assert len(data) <= p.MAX_ENCODED_FRAME + 1
    out = Parser(sizes).feed(data)
    assert len(out) == 1 and isinstance(out[0], Frame), out
    fr = out[0]
    assert (fr.msg_id, fr.seq, fr.name) == (m.id, seq, m.name)
    for f in m.fields:
        got = fr.fields[f.name]
        if f.count is None:
            assert _same_value(got, fields[f.name]), f.name
        else:
            assert got.dtype == np.dtype("<f4")
            assert got.tobytes() == np.asarray(fields[f.name], "<f4").tobytes()


def test_encode_rejects_bad_input():
    with pytest.raises(ValueError, match="missing fields"):
        p.encode_frame("ARM", 0, {})
    with pytest.raises(ValueError, match="unknown fields"):
        p.encode_frame("STOP", 0, {"reason": 0, "extra": 1})
    with pytest.raises(ValueError, match="STOP"):
        p.encode_frame("STOP", 0, {"reason": 300})
    with pytest.raises(ValueError, match="obs_size=4"):
        p.encode_frame("OBS", 0, {"flags": 0, "reward": 0.0, "obs": [1.0] * 3}, SIZES)
    with pytest.raises(ValueError, match="exceeds"):
        p.encode_frame("OBS", 0, {"flags": 0, "reward": 0.0, "obs": [1.0] * 300})
    with pytest.raises(ValueError, match="unknown message"):
        p.encode_frame("NOPE", 0, {})


# ------------------------------------------------------------------------- golden frames


def test_golden_frames():
    assert {g.label for g in p.GOLDEN_FRAMES} == set(GOLDEN_HEX)
    for g in p.GOLDEN_FRAMES:
        assert g.encoded().hex(" ") == GOLDEN_HEX[g.label], g.label
        (fr,) = Parser(g.sizes).feed(bytes.fromhex(GOLDEN_HEX[g.label]))
        assert isinstance(fr, Frame) and fr.name == g.msg and fr.seq == g.seq
        for k, v in g.fields.items():
            got = fr.fields[k]
            assert (got.tolist() if isinstance(got, np.ndarray) else got) == v


# ------------------------------------------------------------------------- corruption


@pytest.mark.parametrize("g", p.GOLDEN_FRAMES, ids=lambda g: g.label)
def test_every_single_byte_change_is_rejected_or_harmless(g):
    """Each byte replaced by each of the 255 other values: never a different frame."""
    wire = g.encoded()
    (good,) = Parser(g.sizes).feed(wire)
    for pos in range(len(wire)):
        for v in range(256):
            if v == wire[pos]:
                continue
            bad = bytearray(wire)
            bad[pos] = v
            parser = Parser(g.sizes)
            out = parser.feed(bytes(bad) + b"\x00")  # flush when the delimiter itself changed
            for fr in frames_of(out):
                assert fr == good, (pos, v, fr)
            if not frames_of(out):
                assert sum(parser.counters[k] for k in REJECT_COUNTERS) >= 1


@FAST
@given(st.data())
def test_random_bit_flips_in_a_stream_never_yield_a_frame_that_was_not_sent(data):
    wire, frames = golden_stream()
    flips = data.draw(st.lists(st.integers(0, len(wire) * 8 - 1), min_size=1, max_size=6))
    bad = bytearray(wire)
    for bit in flips:
        bad[bit // 8] ^= 1 << (bit % 8)
    _, out = feed_all([bytes(bad)])
    for fr in frames_of(out):
        assert fr in frames


# ------------------------------------------------------------------------- splits and batches


def test_split_at_every_position_and_byte_by_byte():
    wire, frames = golden_stream()
    for k in range(len(wire) + 1):
        _, out = feed_all([wire[:k], wire[k:]])
        assert out == frames, k
    _, out = feed_all([wire[i : i + 1] for i in range(len(wire))])
    assert out == frames


@FAST
@given(st.lists(st.integers(1, 40), min_size=1, max_size=60))
def test_random_chunking_gives_the_clean_sequence(cuts):
    wire, frames = golden_stream()
    wire = wire * 3
    chunks, i = [], 0
    for c in cuts:
        chunks.append(wire[i : i + c])
        i += c
    chunks.append(wire[i:])
    _, out = feed_all(chunks)
    assert out == frames * 3


def test_many_frames_in_one_read():
    obs = [
        p.encode_frame("OBS", s, {"flags": 0, "reward": float(s), "obs": [s] * 4}, SIZES)
        for s in range(500)
    ]
    parser, out = feed_all([b"".join(obs)])
    assert [f.seq for f in out] == list(range(500))
    assert parser.counters["frames_ok"] == 500 and parser.pending == 0


# ------------------------------------------------------------------------- garbage and resync


@FAST
@given(st.lists(st.binary(min_size=1, max_size=80), min_size=1, max_size=8))
def test_garbage_between_frames_never_raises_and_resyncs(garbage):
    wire, frames = golden_stream()
    per = [g.encoded() for g in SESSION]
    stream = b""
    for i, junk in enumerate(garbage):
        # junk then a delimiter: the frame after it must decode (resync at the next 0x00)
        stream += junk + b"\x00" + per[i % len(per)]
    parser, out = feed_all([stream])
    got = frames_of(out)
    expected = [frames[i % len(per)] for i in range(len(garbage))]
    assert got == expected
    for fr in got:
        assert fr in frames  # garbage itself never produced a frame


def test_garbage_counters_rise():
    wire, frames = golden_stream()
    parser, out = feed_all([b"\x13\x37\x42\x00" + wire + b"\xff" * 50 + b"\x00" + wire])
    assert frames_of(out) == frames + frames
    c = parser.counters
    assert c["cobs_errors"] + c["crc_errors"] + c["short_frames"] >= 2
    assert c["bytes_discarded"] == 3 + 50


def test_frame_embedded_in_a_corrupted_frame_is_never_dispatched():
    outer = p.GOLDEN_FRAMES[4].encoded()  # obs_first
    inner = p.GOLDEN_FRAMES[5].encoded()  # action, with its own delimiter
    tail = p.GOLDEN_FRAMES[7].encoded()  # stop
    for k in range(1, len(outer) - 1):
        spliced = outer[:k] + inner + outer[k:] + tail
        parser, out = feed_all([spliced])
        assert [f.name for f in frames_of(out)] == ["STOP"], k


def test_valid_frame_inside_a_corrupted_payload_is_never_dispatched():
    inner = p.GOLDEN_FRAMES[5].encoded()[:-1]  # a valid COBS chunk, no zero bytes
    padded = inner + b"\x01" * (-len(inner) % 4)
    obs = np.frombuffer(padded, "<f4")
    sizes = Sizes(obs.size, 1)
    outer = bytearray(p.encode_frame("OBS", 9, {"flags": 0, "reward": 1.0, "obs": obs}, sizes))
    assert inner in outer
    for pos in (len(outer) - 2, len(outer) - 3, 1):  # corrupt the CRC, or the header
        bad = bytearray(outer)
        bad[pos] ^= 0x5A
        parser, out = feed_all([bytes(bad)], sizes)
        assert frames_of(out) == [], pos


# ------------------------------------------------------------------------- bounds and timeouts


def test_no_delimiter_for_a_long_time_is_bounded():
    parser = Parser(SIZES)
    for _ in range(256):
        out = parser.feed(b"\x5a" * 4096)
        assert parser.pending <= p.MAX_ENCODED_FRAME
    assert parser.counters["oversize"] == 1
    assert parser.counters["bytes_discarded"] == 256 * 4096
    assert frames_of(out) == []
    wire, frames = golden_stream()
    assert frames_of(parser.feed(b"\x00" + wire)) == frames


def test_oversize_chunk_in_one_read_and_header_length_lies():
    parser = Parser(SIZES)
    (bad,) = parser.feed(b"\x01" * (p.MAX_ENCODED_FRAME + 1) + b"\x00")
    assert bad.reason == "oversize"
    body = struct.pack("<BHH", p.MsgId.STOP, 1, 60000) + b"\x00"  # claims 60000 payload bytes
    wire = p.cobs_encode(body + struct.pack("<I", zlib.crc32(body))) + b"\x00"
    (bad,) = parser.feed(wire)
    assert bad.reason == "bad_length" and "60000" in bad.detail


def _raw_frame(msg_id: int, seq: int, payload: bytes) -> bytes:
    """A frame with a valid CRC and a truthful header, whatever the payload's length."""
    body = struct.pack("<BHH", msg_id, seq, len(payload) % 65536) + payload
    return p.cobs_encode(body + struct.pack("<I", zlib.crc32(body))) + b"\x00"


@pytest.mark.parametrize("msg", [m.name for m in p.MESSAGES])
@pytest.mark.parametrize("size", range(p.MAX_PAYLOAD - 1, p.MAX_PAYLOAD + 5))
def test_payload_longer_than_max_payload_is_never_dispatched(msg, size):
    """A valid CRC does not make a frame longer than MAX_FRAME acceptable: zero bytes in the
    payload keep the COBS overhead at one byte, so these chunks fit MAX_ENCODED_FRAME, and
    HELLO/HELLO_REQ (extensible) or OBS before the handshake would otherwise accept them."""
    m = p.BY_NAME[msg]
    payload = bytes(p._LAYOUT[m.id].fixed_size).ljust(size, b"\x00")
    wire = _raw_frame(m.id, 7, payload)
    assert len(wire) - 1 <= p.MAX_ENCODED_FRAME  # not caught by the encoded-size bound
    for sizes in (None, SIZES):
        parser = Parser(sizes)
        out = parser.feed(wire + p.GOLDEN_FRAMES[7].encoded())
        if size > p.MAX_PAYLOAD:
            assert [type(o).__name__ for o in out] == ["BadFrame", "Frame"], out
            assert out[0].reason == "oversize" and parser.counters["oversize"] == 1
            assert isinstance(p.decode_frame(wire[:-1], sizes), BadFrame)
        assert out[-1].name == "STOP"  # the parser resynchronised
    if msg in ("HELLO", "HELLO_REQ") and size <= p.MAX_PAYLOAD:
        assert isinstance(Parser(SIZES).feed(wire)[0], Frame)  # the boundary itself is fine


@FAST
@given(
    msg_id=st.sampled_from([m.id for m in p.MESSAGES]),
    size=st.integers(p.MAX_PAYLOAD + 1, p.MAX_PAYLOAD + 80),
    data=st.data(),
)
def test_oversize_payload_with_valid_crc_never_dispatched_property(msg_id, size, data):
    alphabet = data.draw(st.sampled_from([b"\x00", b"\x00\x01", bytes(range(256))]))
    payload = bytes(data.draw(st.lists(st.sampled_from(alphabet), min_size=size, max_size=size)))
    for sizes in (None, SIZES):
        assert frames_of(Parser(sizes).feed(_raw_frame(msg_id, 1, payload))) == []


def test_partial_frame_then_silence_is_discarded_at_the_timeout():
    a, b = (g.encoded() for g in p.GOLDEN_FRAMES[4:6])
    parser = Parser(SIZES, frame_timeout_s=0.05)
    assert parser.feed(a[:10], now=100.0) == []
    assert parser.expire(now=100.01) == []  # not silent long enough yet
    (t,) = parser.expire(now=100.2)
    assert t.reason == "timeout" and t.size == 10 and parser.counters["timeouts"] == 1
    assert frames_of(parser.feed(b, now=100.3))[0].name == "ACTION"
    # without the timeout, the partial frame swallows the next one
    parser = Parser(SIZES)
    parser.feed(a[:10], now=0.0)
    assert frames_of(parser.feed(b, now=1.0)) == []


def test_frame_timeout_formula():
    # DynamixelSDK: 10 bits/byte * bytes / baud + 2 * latency timer + 2 ms
    assert p.frame_timeout_s(1_000_000, 1000, 16) == pytest.approx(0.010 + 0.032 + 0.002)
    assert p.frame_timeout_s(115_200, 100, 1) == pytest.approx(100 * 10 / 115_200 + 0.004)


# ------------------------------------------------------------------------- lengths and ids


def test_wrong_length_obs_is_rejected_and_counted():
    parser = Parser(SIZES)
    short = p.encode_frame("OBS", 3, {"flags": 0, "reward": 0.0, "obs": [1.0, 2.0, 3.0]})
    long = p.encode_frame("OBS", 4, {"flags": 0, "reward": 0.0, "obs": [1.0] * 5})
    out = parser.feed(short + long)
    assert [b.reason for b in out] == ["bad_length", "bad_length"]
    assert out[0].msg_id == p.MsgId.OBS and out[0].seq == 3
    assert "expected 21" in out[0].detail
    assert parser.counters["bad_length"] == 2 and parser.counters["frames_ok"] == 0
    # before the handshake any whole number of floats is accepted
    assert isinstance(Parser(None).feed(short)[0], Frame)


def test_extensible_hello_accepts_appended_fields():
    g = p.GOLDEN_FRAMES[1]
    payload = p.encode_payload("HELLO", g.fields) + b"\x07\x08\x09"
    body = struct.pack("<BHH", p.MsgId.HELLO, 0, len(payload)) + payload
    wire = p.cobs_encode(body + struct.pack("<I", zlib.crc32(body))) + b"\x00"
    (fr,) = Parser(SIZES).feed(wire)
    assert isinstance(fr, Frame) and fr.fields["boot_id"] == 0xCAFEF00D


def test_unknown_message_id_is_counted():
    body = struct.pack("<BHH", 0x7E, 5, 0)
    wire = p.cobs_encode(body + struct.pack("<I", zlib.crc32(body))) + b"\x00"
    parser = Parser()
    (bad,) = parser.feed(wire)
    assert isinstance(bad, BadFrame) and bad.reason == "unknown_msg"
    assert parser.counters["unknown_msg"] == 1


# ------------------------------------------------------------------------- sequence tracking


def test_seq_tracker_gaps_duplicates_stale_and_wrap():
    t = SeqTracker()
    kinds = [t.update(s) for s in (65533, 65534, 65534, 65535, 2, 1, 3)]
    assert kinds == ["first", "next", "duplicate", "next", "gap", "stale", "next"]
    assert t.counters == {"frames": 7, "gaps": 1, "lost": 2, "duplicates": 1, "stale": 1}
    assert p.seq_diff(0, 65535) == 1 and p.seq_diff(65535, 0) == -1


def test_seq_state_only_moves_on_validated_frames():
    good = p.encode_frame("STATUS_REQ", 10, {})
    forged = bytearray(p.encode_frame("STATUS_REQ", 500, {}))
    forged[-2] ^= 0xFF  # bad CRC: seq 500 must not move the tracker
    t = SeqTracker()
    for item in Parser().feed(good + bytes(forged) + p.encode_frame("STATUS_REQ", 11, {})):
        if isinstance(item, Frame):
            t.update(item.seq)
    assert t.last == 11 and t.counters["gaps"] == 0


# ------------------------------------------------------------------------- handshake check


def _hello(**kw) -> HelloInfo:
    base = dict(
        protocol_version=1,
        schema_hash=p.SCHEMA_HASH,
        boot_id=7,
        obs_size=4,
        action_size=1,
        num_actions=2,
        obs_dtype=1,
        action_dtype=1,
        control_period_ms=0,
        watchdog_ms=500,
        accepted=True,
    )
    return HelloInfo(**{**base, **kw})


def test_wrong_schema_hash_names_both_hashes():
    with pytest.raises(HandshakeError) as e:
        check_hello(
            _hello(schema_hash=0xDEADBEEF, accepted=False),
            obs_size=4,
            action_size=1,
            schema_hash=p.SCHEMA_HASH,
        )
    msg = str(e.value)
    assert f"host 0x{p.SCHEMA_HASH:08x}" in msg and "MCU 0xdeadbeef" in msg


def test_every_mismatch_is_named():
    with pytest.raises(HandshakeError) as e:
        check_hello(
            _hello(protocol_version=2, obs_size=5, action_size=2, num_actions=3),
            obs_size=4,
            action_size=1,
            schema_hash=p.SCHEMA_HASH,
            num_actions=2,
        )
    msg = str(e.value)
    for part in (
        "protocol version: host 1, MCU 2",
        "obs_size: host 4, MCU 5",
        "action_size: host 1, MCU 2",
        "num_actions: host 2, MCU 3",
    ):
        assert part in msg
    check_hello(_hello(), obs_size=4, action_size=1, schema_hash=p.SCHEMA_HASH)
    with pytest.raises(HandshakeError, match="refused"):
        check_hello(_hello(accepted=False), obs_size=4, action_size=1, schema_hash=p.SCHEMA_HASH)


# ------------------------------------------------------------------------- derived artefacts


def test_docs_contain_exactly_the_generated_sections():
    text = (REPO / "docs" / "protocol.md").read_text(encoding="utf-8")
    assert p.doc_sections(text) == p.render_markdown(), (
        "docs/protocol.md is stale: python -m firmware_bridge.protocol --write-docs "
        "docs/protocol.md"
    )
    assert p.update_doc(text) == text
    for g in p.GOLDEN_FRAMES:
        assert g.encoded().hex(" ") in text


def test_generators_cli(capsys):
    assert p.main(["--markdown"]) == 0
    out = capsys.readouterr().out
    assert p.render_markdown()["messages"] in out
    assert p.main(["--schema"]) == 0
    assert f"0x{p.SCHEMA_HASH:08x}" in capsys.readouterr().out


def test_no_module_imports_torch():
    mods = ["protocol", "link", "host", "sim_robot"]
    code = (
        "import sys\n"
        + "".join(f"import firmware_bridge.{m}\n" for m in mods)
        + "bad = [m for m in sys.modules if m == 'torch' or m.startswith('torch.')]\n"
        "assert not bad, bad\n"
        "assert 'gymnasium' not in sys.modules\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True)
    assert r.returncode == 0, r.stderr.decode()


def test_prediction_length_comes_from_the_payload_not_the_handshake():
    for n in (1, 3):
        wire = p.encode_frame("PREDICTION", 7, {"obs_seq": 3, "prediction": [0.5] * n}, SIZES)
        (fr,) = Parser(SIZES).feed(wire)
        assert isinstance(fr, Frame) and list(fr.fields["prediction"]) == [0.5] * n
    with pytest.raises(ValueError, match="at least one value"):
        p.encode_payload("PREDICTION", {"obs_seq": 3, "prediction": []}, SIZES)
    empty = p.encode_frame("STATUS_REQ", 1, {})  # re-label a 2-byte payload as PREDICTION
    body = bytearray(p.cobs_decode(empty[:-1])[: p.HEADER_SIZE])
    body[0], body[3:5] = p.MsgId.PREDICTION, (2).to_bytes(2, "little")
    body += b"\x03\x00"
    body += zlib.crc32(bytes(body)).to_bytes(4, "little")
    (bad,) = Parser(SIZES).feed(p.cobs_encode(bytes(body)) + b"\x00")
    assert bad.reason == "bad_length" and "expected 2 + 4*n" in bad.detail
