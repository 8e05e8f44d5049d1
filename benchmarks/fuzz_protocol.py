"""Fuzz the wire-protocol parser: valid-CRC random frames and random byte chunks.

    python benchmarks/fuzz_protocol.py [--frames 1000000] [--chunks 1000000] [--seed 0]
                                       [--out benchmarks/results/fuzz_protocol.json]

Random bytes almost never pass a CRC-32, so they never reach the parser's length and message
checks; the first part therefore builds frames with a correct CRC (and COBS framing) around
random message ids, header lengths and payloads, biased toward the interesting cases: exact
lengths, lengths a few bytes off, payloads around MAX_PAYLOAD, header lengths that lie. The
frames of a batch are concatenated and fed in random pieces, to parsers with different
handshake sizes (none yet, the demo's, the largest). Every frame must come out as exactly one
item, and it must be a `Frame` (with the same id, seq and payload) exactly when an oracle
written here from the message table alone says the frame is well formed.

The second part feeds random chunks (uniform bytes, sparse alphabets rich in 0x00 and COBS
code bytes, long runs without a delimiter) as one continuous stream; every now and then a
golden frame follows a delimiter and must be dispatched (resynchronisation). Nothing may raise,
the buffer must stay within MAX_ENCODED_FRAME, and any `Frame` dispatched must be well formed
by the oracle.

Writes a JSON summary; exits 1 on any crash, false dispatch, missed frame or resync miss.
"""

from __future__ import annotations

import argparse
import json
import platform
import struct
import sys
import time
import traceback
import zlib
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from firmware_bridge import protocol as p  # noqa: E402
from firmware_bridge.protocol import Frame, Parser, Sizes  # noqa: E402

# Oracle: written from the message table and the spec constants, not from the decoder.
_TYPE_SIZE = {"u8": 1, "u16": 2, "u32": 4, "f32": 4}
_BY_ID = {m.id: m for m in p.MESSAGES}
_FIXED = {m.id: sum(_TYPE_SIZE[f.type] for f in m.fields if f.count is None) for m in p.MESSAGES}
_ARRAY = {m.id: next((f.count for f in m.fields if f.count), None) for m in p.MESSAGES}


def well_formed(msg_id: int, header_len: int, payload_len: int, sizes: Sizes | None) -> bool:
    """Should a frame with a correct CRC and these header values be dispatched?"""
    if payload_len > p.MAX_PAYLOAD or header_len != payload_len or msg_id not in _BY_ID:
        return False
    fixed, array = _FIXED[msg_id], _ARRAY[msg_id]
    if _BY_ID[msg_id].extensible:
        return payload_len >= fixed
    if array is None:
        return payload_len == fixed
    if sizes is None:  # before the handshake: any whole number of floats
        return payload_len >= fixed and (payload_len - fixed) % 4 == 0
    return payload_len == fixed + 4 * getattr(sizes, array)


def expected_len(msg_id: int, sizes: Sizes | None, rng: np.random.Generator) -> int:
    fixed, array = _FIXED.get(msg_id, 0), _ARRAY.get(msg_id)
    if array is None:
        return fixed
    n = getattr(sizes, array) if sizes is not None else int(rng.integers(0, 260))
    return fixed + 4 * n


PARSER_SIZES = {
    "none": None,
    "demo": Sizes(4, 1),
    "largest": Sizes(p.MAX_OBS_SIZE, p.MAX_ACTION_SIZE),
}
TABLE_IDS = np.array(sorted(_BY_ID), dtype=np.int64)


def random_payload(rng: np.random.Generator, n: int) -> bytes:
    """n bytes; the zero density varies, so COBS overhead (and the encoded size) varies."""
    kind = rng.integers(0, 4)
    if kind == 0:
        return rng.integers(0, 256, n, dtype=np.uint8).tobytes()
    if kind == 1:
        return bytes(n)
    density = (0.01, 0.2, 0.6)[int(rng.integers(0, 3))]
    data = rng.integers(1, 256, n, dtype=np.uint8)
    data[rng.random(n) < density] = 0
    return data.tobytes()


def random_frame(rng: np.random.Generator, sizes: Sizes | None):
    """(wire bytes, msg_id, seq, header length, payload, crc ok)."""
    msg_id = int(rng.choice(TABLE_IDS)) if rng.random() < 0.8 else int(rng.integers(0, 256))
    r = rng.random()
    if r < 0.4:
        n = expected_len(msg_id, sizes, rng)
    elif r < 0.6:
        n = max(0, expected_len(msg_id, sizes, rng) + int(rng.choice([-4, -3, -2, -1, 1, 2, 3, 4])))
    elif r < 0.75:
        n = int(rng.integers(0, 65))
    elif r < 0.9:
        n = p.MAX_PAYLOAD + int(rng.integers(-4, 9))
    else:
        n = int(rng.integers(0, 1101))
    payload = random_payload(rng, n)
    header_len = n
    r = rng.random()
    if r < 0.05:
        header_len = int(rng.integers(0, 65536))
    elif r < 0.1:
        header_len = (n + int(rng.choice([-1, 1]))) % 65536
    seq = int(rng.integers(0, 65536))
    body = struct.pack("<BHH", msg_id, seq, header_len) + payload
    crc = zlib.crc32(body)
    crc_ok = rng.random() >= 0.03
    if not crc_ok:
        crc ^= 1 << int(rng.integers(0, 32))
    wire = p.cobs_encode(body + struct.pack("<I", crc)) + b"\x00"
    return wire, msg_id, seq, header_len, payload, crc_ok


def split(data: bytes, rng: np.random.Generator) -> list[bytes]:
    """Random read sizes, from single bytes to several frames at once."""
    out, i = [], 0
    while i < len(data):
        n = int(min(rng.geometric(1 / 300), 8192))
        out.append(data[i : i + n])
        i += n
    return out


def fuzz_frames(n_frames: int, rng: np.random.Generator, report: dict) -> None:
    stats = dict.fromkeys(
        (
            "frames",
            "expected_dispatch",
            "dispatched",
            "crash",
            "false_dispatch",
            "missed",
            "wrong_content",
            "item_count_mismatch",
        ),
        0,
    )
    reasons: dict[str, int] = {}
    failures: list[str] = []
    parsers = {name: Parser(s) for name, s in PARSER_SIZES.items()}
    names = list(parsers)
    done = 0
    while done < n_frames:
        name = names[int(rng.integers(0, len(names)))]
        parser, sizes = parsers[name], PARSER_SIZES[name]
        batch = [random_frame(rng, sizes) for _ in range(min(64, n_frames - done))]
        done += len(batch)
        items = []
        try:
            for piece in split(b"".join(b[0] for b in batch), rng):
                items += parser.feed(piece)
                if parser.pending > p.MAX_ENCODED_FRAME:
                    raise AssertionError(f"buffer {parser.pending} > {p.MAX_ENCODED_FRAME}")
        except Exception:
            stats["crash"] += 1
            failures.append(traceback.format_exc())
            parsers[name] = Parser(sizes)
            continue
        stats["frames"] += len(batch)
        if len(items) != len(batch):
            stats["item_count_mismatch"] += 1
            failures.append(f"{len(batch)} frames gave {len(items)} items ({name})")
            continue
        for (_, msg_id, seq, hlen, payload, crc_ok), item in zip(batch, items, strict=True):
            want = crc_ok and well_formed(msg_id, hlen, len(payload), sizes)
            stats["expected_dispatch"] += want
            if isinstance(item, Frame):
                stats["dispatched"] += 1
                if not want:
                    stats["false_dispatch"] += 1
                    failures.append(f"false dispatch: {item!r} len {len(payload)} hdr {hlen}")
                elif (item.msg_id, item.seq, item.payload) != (msg_id, seq, payload):
                    stats["wrong_content"] += 1
                    failures.append(f"wrong content: {item!r}")
            else:
                reasons[item.reason] = reasons.get(item.reason, 0) + 1
                if want:
                    stats["missed"] += 1
                    failures.append(f"missed: {item} (id {msg_id:#x}, len {len(payload)})")
    report["frames"] = stats | {"rejected_by_reason": reasons, "first_failures": failures[:10]}


def random_chunk(rng: np.random.Generator) -> bytes:
    kind = int(rng.integers(0, 5))
    n = int(rng.integers(1, 2049))
    if kind == 0:  # uniform bytes (a 0x00 every 256 bytes or so)
        return rng.integers(0, 256, n, dtype=np.uint8).tobytes()
    if kind == 1:  # COBS-ish: zeros, small codes, 0xFF blocks
        return rng.choice(np.array([0, 1, 2, 3, 0xFF, 0x81, 0x82], np.uint8), n).tobytes()
    if kind == 2:  # no delimiter for a long time
        return rng.integers(1, 256, int(rng.integers(1000, 5000)), dtype=np.uint8).tobytes()
    if kind == 3:  # a valid frame, cut or with one byte changed
        g = p.GOLDEN_FRAMES[int(rng.integers(0, len(p.GOLDEN_FRAMES)))].encoded()
        b = bytearray(g[: int(rng.integers(1, len(g) + 1))])
        b[int(rng.integers(0, len(b)))] ^= int(rng.integers(1, 256))
        return bytes(b)
    return rng.integers(0, 256, int(rng.integers(1, 16)), dtype=np.uint8).tobytes()  # short


def dispatched_ok(f: Frame, sizes: Sizes | None) -> bool:
    return well_formed(f.msg_id, len(f.payload), len(f.payload), sizes)


def fuzz_chunks(n_chunks: int, rng: np.random.Generator, report: dict) -> None:
    stats = dict.fromkeys(
        ("chunks", "bytes", "crash", "false_dispatch", "dispatched", "resyncs", "resync_missed"), 0
    )
    failures: list[str] = []
    parsers = {name: Parser(s) for name, s in PARSER_SIZES.items()}
    names = list(parsers)
    goldens = [(g.encoded(), g.msg) for g in p.GOLDEN_FRAMES]
    max_pending = 0
    for i in range(n_chunks):
        name = names[i % len(names)]
        parser, sizes = parsers[name], PARSER_SIZES[name]
        chunk = random_chunk(rng)
        resync = rng.random() < 0.1
        golden = None
        if resync:
            golden = goldens[int(rng.integers(0, len(goldens)))]
            chunk += b"\x00" + golden[0]
        try:
            items = parser.feed(chunk)
        except Exception:
            stats["crash"] += 1
            failures.append(traceback.format_exc())
            parsers[name] = Parser(sizes)
            continue
        max_pending = max(max_pending, parser.pending)
        stats["chunks"] += 1
        stats["bytes"] += len(chunk)
        frames = [it for it in items if isinstance(it, Frame)]
        stats["dispatched"] += len(frames)
        # a golden frame of the demo's sizes is well formed for "none" and "demo" only
        for f in frames[:-1] if resync else frames:
            if not dispatched_ok(f, sizes):
                stats["false_dispatch"] += 1
                failures.append(f"false dispatch from random bytes: {f!r}")
        if resync:
            stats["resyncs"] += 1
            last = frames[-1] if frames else None
            demo_sized = golden[1] in ("OBS", "ACTION")
            expect = not (demo_sized and name == "largest")
            if expect and (last is None or last.name != golden[1]):
                stats["resync_missed"] += 1
                failures.append(f"golden {golden[1]} not dispatched after garbage ({name})")
            elif last is not None and not dispatched_ok(last, sizes):
                stats["false_dispatch"] += 1
                failures.append(f"false dispatch: {last!r}")
    counters: dict[str, int] = {}
    for prs in parsers.values():
        for k, v in prs.counters.items():
            counters[k] = counters.get(k, 0) + v
    report["chunks"] = stats | {
        "max_pending": max_pending,
        "parser_counters": counters,
        "first_failures": failures[:10],
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--frames", type=int, default=1_000_000)
    ap.add_argument("--chunks", type=int, default=1_000_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/fuzz_protocol.json"))
    args = ap.parse_args()

    rng = np.random.default_rng(args.seed)
    report: dict = {
        "command": "python benchmarks/fuzz_protocol.py " + " ".join(sys.argv[1:]),
        "seed": args.seed,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "max_payload": p.MAX_PAYLOAD,
        "max_encoded_frame": p.MAX_ENCODED_FRAME,
    }
    t0 = time.perf_counter()
    fuzz_frames(args.frames, rng, report)
    t1 = time.perf_counter()
    fuzz_chunks(args.chunks, rng, report)
    t2 = time.perf_counter()
    report["seconds"] = {"frames": round(t1 - t0, 1), "chunks": round(t2 - t1, 1)}
    fr, ch = report["frames"], report["chunks"]
    bad = (
        fr["crash"]
        + fr["false_dispatch"]
        + fr["missed"]
        + fr["wrong_content"]
        + fr["item_count_mismatch"]
        + ch["crash"]
        + ch["false_dispatch"]
        + ch["resync_missed"]
        + (ch["max_pending"] > p.MAX_ENCODED_FRAME)
    )
    report["ok"] = bad == 0
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: report[k] for k in ("ok", "seconds")}), file=sys.stderr)
    print(
        f"frames: {fr['frames']} fed, {fr['dispatched']} dispatched "
        f"({fr['expected_dispatch']} expected), {fr['false_dispatch']} false, {fr['missed']} "
        f"missed, {fr['crash']} crashes; chunks: {ch['chunks']} fed ({ch['bytes']} bytes), "
        f"{ch['false_dispatch']} false dispatches, {ch['resync_missed']} resync misses, "
        f"{ch['crash']} crashes -> {out}"
    )
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
