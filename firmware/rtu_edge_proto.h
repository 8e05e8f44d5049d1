/* rtu_edge_proto.h: the MCU side of the rtu-edge wire protocol v1, portable C99.
 *
 * Hand-written: CRC-32 (the one in zlib), COBS, whole-frame building and a push parser that
 * takes one byte at a time, holds at most one frame in a buffer you provide, and counts every
 * rejected chunk by reason. No allocation, no globals, no dependency besides <stdint.h>,
 * <stddef.h> and <string.h>.
 *
 * The message-specific part (ids, sizes, offsets, one struct, encoder, decoder and frame writer
 * per message) is GENERATED into rtu_edge_protocol.h, which this header includes at its end.
 * Spec: docs/protocol.md; build and test: docs/firmware.md.
 *
 * Units: *_BYTES count bytes; *_VALUES, *_CAPACITY and obs_size / action_size count float32
 * values. All multi-byte fields are little-endian on the wire, whatever the MCU's byte order. */
#ifndef RTU_EDGE_PROTO_H
#define RTU_EDGE_PROTO_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Why a received chunk (the bytes before a 0x00) was rejected, or why a decoder refused a
 * payload. The Python parser's counter of each reason is named in brackets. */
typedef enum {
    RTU_EDGE_ERR_NONE = 0,
    RTU_EDGE_ERR_COBS,          /* a COBS code byte runs past the 0x00 [cobs_errors] */
    RTU_EDGE_ERR_TOO_SHORT,     /* decodes to fewer than RTU_EDGE_MIN_FRAME_BYTES [short_frames] */
    RTU_EDGE_ERR_CRC,           /* CRC-32 mismatch: noise, or a baud-rate mismatch [crc_errors] */
    RTU_EDGE_ERR_HEADER_LENGTH, /* header length differs from the payload carried [bad_length] */
    RTU_EDGE_ERR_UNKNOWN_ID,    /* CRC fine, msg_id not in the table [unknown_msg] */
    RTU_EDGE_ERR_BAD_LENGTH,    /* payload size wrong for the message or agreed sizes [bad_length] */
    RTU_EDGE_ERR_TOO_LONG,      /* no 0x00 within RTU_EDGE_MAX_ENCODED_FRAME_BYTES, or valid COBS
                                   decoding to more than the buffer (<= MAX_FRAME) [oversize] */
    RTU_EDGE_ERR_TIMEOUT,       /* partial chunk, then silence for the timeout [timeouts] */
    RTU_EDGE_ERR_COUNT
} rtu_edge_err_t;

/* "crc", "cobs", ...; "none" for RTU_EDGE_ERR_NONE, "?" outside the enum. */
const char *rtu_edge_err_name(rtu_edge_err_t err);

/* ---- little-endian field access (any MCU byte order, any alignment) -------------------- */

static inline void rtu_edge_put_u8(uint8_t *p, uint8_t v) { p[0] = v; }
static inline void rtu_edge_put_u16(uint8_t *p, uint16_t v) {
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
}
static inline void rtu_edge_put_u32(uint8_t *p, uint32_t v) {
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
    p[2] = (uint8_t)(v >> 16);
    p[3] = (uint8_t)(v >> 24);
}
static inline void rtu_edge_put_f32(uint8_t *p, float v) {
    uint32_t u;
    memcpy(&u, &v, 4);
    rtu_edge_put_u32(p, u);
}
static inline uint8_t rtu_edge_get_u8(const uint8_t *p) { return p[0]; }
static inline uint16_t rtu_edge_get_u16(const uint8_t *p) {
    return (uint16_t)((uint16_t)p[0] | (uint16_t)((uint16_t)p[1] << 8)); /* no int overflow where int is 16 bits */
}
static inline uint32_t rtu_edge_get_u32(const uint8_t *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}
static inline float rtu_edge_get_f32(const uint8_t *p) {
    uint32_t u = rtu_edge_get_u32(p);
    float v;
    memcpy(&v, &u, 4);
    return v;
}

/* ---- CRC-32 ------------------------------------------------------------------------------ */

/* CRC-32 (IEEE 802.3, zlib.crc32): reflected polynomial 0xEDB88320, initial value and final XOR
 * 0xFFFFFFFF. rtu_edge_crc32("123456789", 9) == 0xCBF43926. */
uint32_t rtu_edge_crc32(const uint8_t *data, size_t n);
/* Incremental form: crc = rtu_edge_crc32_update(0, a, na); crc = rtu_edge_crc32_update(crc, b,
 * nb) equals rtu_edge_crc32 of a then b (like zlib.crc32(b, zlib.crc32(a))). */
uint32_t rtu_edge_crc32_update(uint32_t crc, const uint8_t *data, size_t n);

/* ---- COBS -------------------------------------------------------------------------------- */

/* Encode src[0..n) into dst[0..cap) in canonical form (a run of 254 non-zero bytes that ends
 * the data gets no further code byte). Returns the encoded length (it holds no 0x00 byte; the
 * caller appends the delimiter), or 0 when cap is too small (RTU_EDGE_COBS_MAX_BYTES(n) is
 * always enough). dst may overlap src when src >= dst + n / 254 + 1 (encoding in place). */
size_t rtu_edge_cobs_encode(const uint8_t *src, size_t n, uint8_t *dst, size_t cap);

/* Decode one chunk src[0..n) (the bytes between two 0x00, delimiter excluded) into dst[0..cap).
 * Returns the decoded length (0 for an empty chunk), -RTU_EDGE_ERR_COBS when a code byte is 0
 * or runs past the end, -RTU_EDGE_ERR_TOO_LONG when the result does not fit. Both canonical
 * and non-canonical encodings are accepted. dst may equal src (decoding in place). */
int32_t rtu_edge_cobs_decode(const uint8_t *src, size_t n, uint8_t *dst, size_t cap);

/* ---- building frames --------------------------------------------------------------------- */

/* A frame is built inside the one buffer `wire` that is then sent: ask where the payload goes,
 * write payload_len bytes there, then finish. The generated rtu_edge_write_<msg>() do this.
 *
 *   uint8_t wire[RTU_EDGE_WIRE_BYTES(RTU_EDGE_STOP_PAYLOAD_BYTES)];
 *   uint8_t *pl = rtu_edge_frame_payload(wire, sizeof wire, 1);
 *   pl[0] = RTU_EDGE_STOP_REASON_USER;
 *   int n = rtu_edge_frame_finish(wire, sizeof wire, RTU_EDGE_MSG_STOP, seq, 1);
 *   uart_write(wire, n);   // n bytes: COBS(header | payload | CRC) and the 0x00
 *
 * rtu_edge_frame_payload returns NULL when payload_len exceeds RTU_EDGE_MAX_PAYLOAD_BYTES or
 * cap is below RTU_EDGE_WIRE_BYTES(payload_len). rtu_edge_frame_finish writes the header and
 * CRC, COBS-encodes in place and appends the 0x00; it returns the bytes to send, or -1 for the
 * same reasons. */
uint8_t *rtu_edge_frame_payload(uint8_t *wire, size_t cap, size_t payload_len);
int rtu_edge_frame_finish(uint8_t *wire, size_t cap, uint8_t msg_id, uint16_t seq,
                          size_t payload_len);

/* The same from a payload held elsewhere (copied): the wire length, or -1. */
int rtu_edge_frame_encode(uint8_t *wire, size_t cap, uint8_t msg_id, uint16_t seq,
                          const uint8_t *payload, size_t payload_len);

/* ---- the receive parser ------------------------------------------------------------------ */

typedef enum {
    RTU_EDGE_RX_NONE = 0, /* nothing completed (byte buffered, idle 0x00, or discarding) */
    RTU_EDGE_RX_FRAME,    /* a frame validated: p->msg_id, p->seq, p->payload, p->payload_len */
    RTU_EDGE_RX_ERROR     /* a chunk was rejected; p->last_error says why (already counted) */
} rtu_edge_rx_t;

typedef struct {
    /* configuration (rtu_edge_parser_init, rtu_edge_parser_set_sizes) */
    uint8_t *buf;           /* decoded bytes of the current chunk */
    size_t cap;             /* its size: RTU_EDGE_MAX_FRAME_BYTES accepts every frame */
    uint32_t timeout_ms;    /* silence that ends a partial chunk; 0: never */
    uint16_t obs_values;    /* agreed sizes for the OBS / ACTION length checks; 0: any */
    uint16_t action_values;
    /* decoder state */
    size_t len;             /* decoded bytes so far */
    size_t encoded;         /* encoded bytes of this chunk so far */
    uint8_t block_left;     /* data bytes still due in the current COBS block */
    uint8_t block_full;     /* the current block is a full one (code 0xFF): no zero after it */
    uint8_t in_chunk;       /* at least one byte since the last 0x00 */
    uint8_t discarding;     /* too long: skip up to the next 0x00 (or silence) */
    uint8_t overflow;       /* decoded past cap: rejected as too long at the 0x00 */
    uint32_t last_byte_ms;  /* when the last byte arrived */
    /* the frame last returned with RTU_EDGE_RX_FRAME; valid until the next feed */
    uint8_t msg_id;
    uint16_t seq;
    const uint8_t *payload;
    uint16_t payload_len;
    rtu_edge_err_t last_error;
    /* counters since init (they wrap at 2^32) */
    uint32_t bytes_in;
    uint32_t frames_ok;                  /* frames that validated, any id */
    uint32_t errors[RTU_EDGE_ERR_COUNT]; /* rejected chunks by reason; errors[0] stays 0 */
} rtu_edge_parser_t;

/* buf[0..cap) holds one decoded frame; timeout_ms ends a partial chunk after that much silence
 * (see rtu_edge_parser_poll). Sizes start unknown (any whole number of values). */
void rtu_edge_parser_init(rtu_edge_parser_t *p, uint8_t *buf, size_t cap, uint32_t timeout_ms);

/* Sizes agreed in the handshake: OBS and ACTION payloads must then hold exactly these many
 * values (RTU_EDGE_ERR_BAD_LENGTH otherwise). An MCU knows its own sizes from the start. */
void rtu_edge_parser_set_sizes(rtu_edge_parser_t *p, uint16_t obs_values, uint16_t action_values);

/* Consume one received byte; now_ms is any millisecond clock (it may wrap). A chunk longer than
 * RTU_EDGE_MAX_ENCODED_FRAME_BYTES is rejected (too long) as soon as its next byte arrives and
 * skipped up to the next 0x00; any other chunk is judged when its 0x00 arrives: COBS, decoded
 * length (too long, too short), CRC, header length, known id, payload size, in that order (the
 * Python parser's order). A rejected chunk is counted once and never searched for a frame. */
rtu_edge_rx_t rtu_edge_parser_feed(rtu_edge_parser_t *p, uint8_t byte, uint32_t now_ms);

/* Call when no byte is waiting: a partial chunk older than timeout_ms since its last byte is
 * dropped (RTU_EDGE_RX_ERROR, RTU_EDGE_ERR_TIMEOUT). Silence also ends discard mode after a
 * too-long chunk, without counting anything more. */
rtu_edge_rx_t rtu_edge_parser_poll(rtu_edge_parser_t *p, uint32_t now_ms);

/* Drop any partial chunk (counters are kept), e.g. at a reboot of the protocol state. */
void rtu_edge_parser_reset(rtu_edge_parser_t *p);

/* Sum of errors[] over every reason: what STATUS.frame_errors reports. */
uint32_t rtu_edge_parser_error_total(const rtu_edge_parser_t *p);

/* Wire time of n bytes at baud (8N1: 10 bits a byte), in milliseconds, rounded up. */
uint32_t rtu_edge_wire_ms(uint32_t n, uint32_t baud);

/* The silence timeout recommended in docs/protocol.md: the wire time of the longest frame the
 * MCU can receive (RTU_EDGE_MAX_WIRE_FRAME_BYTES) plus 5 ms, measured from the last byte. */
uint32_t rtu_edge_rx_timeout_ms(uint32_t baud);

/* ---- message helpers --------------------------------------------------------------------- */

/* 1 when v is neither NaN nor infinite (bit test: immune to -ffast-math). */
int rtu_edge_is_finite(float v);

/* A discrete action value as an index: round to the nearest integer, ties to even (like
 * numpy.rint, which the host uses), then clip to 0..num_actions-1. v must be finite;
 * num_actions must be >= 1. */
uint16_t rtu_edge_discrete_index(float v, uint16_t num_actions);

#ifdef __cplusplus
}
#endif

#include "rtu_edge_protocol.h"

#endif /* RTU_EDGE_PROTO_H */
