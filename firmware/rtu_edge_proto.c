/* rtu_edge_proto.c: CRC-32, COBS, frame building and the receive parser (hand-written).
 * See rtu_edge_proto.h for the contract of every function. */
#include "rtu_edge_proto.h"

const char *rtu_edge_err_name(rtu_edge_err_t err) {
    switch (err) {
    case RTU_EDGE_ERR_NONE: return "none";
    case RTU_EDGE_ERR_COBS: return "cobs";
    case RTU_EDGE_ERR_TOO_SHORT: return "too_short";
    case RTU_EDGE_ERR_CRC: return "crc";
    case RTU_EDGE_ERR_HEADER_LENGTH: return "header_length";
    case RTU_EDGE_ERR_UNKNOWN_ID: return "unknown_id";
    case RTU_EDGE_ERR_BAD_LENGTH: return "bad_length";
    case RTU_EDGE_ERR_TOO_LONG: return "too_long";
    case RTU_EDGE_ERR_TIMEOUT: return "timeout";
    default: return "?";
    }
}

/* ---- CRC-32 ------------------------------------------------------------------------------ */

/* CRC of each 4-bit value, reflected polynomial 0xEDB88320: 64 bytes instead of 1 KiB. */
static const uint32_t crc_nibble[16] = {
    0x00000000u, 0x1DB71064u, 0x3B6E20C8u, 0x26D930ACu, 0x76DC4190u, 0x6B6B51F4u,
    0x4DB26158u, 0x5005713Cu, 0xEDB88320u, 0xF00F9344u, 0xD6D6A3E8u, 0xCB61B38Cu,
    0x9B64C2B0u, 0x86D3D2D4u, 0xA00AE278u, 0xBDBDF21Cu,
};

uint32_t rtu_edge_crc32_update(uint32_t crc, const uint8_t *data, size_t n) {
    size_t i;
    crc = ~crc;
    for (i = 0; i < n; i++) {
        crc ^= data[i];
        crc = (crc >> 4) ^ crc_nibble[crc & 0x0Fu];
        crc = (crc >> 4) ^ crc_nibble[crc & 0x0Fu];
    }
    return ~crc;
}

uint32_t rtu_edge_crc32(const uint8_t *data, size_t n) { return rtu_edge_crc32_update(0, data, n); }

/* ---- COBS -------------------------------------------------------------------------------- */

size_t rtu_edge_cobs_encode(const uint8_t *src, size_t n, uint8_t *dst, size_t cap) {
    size_t i, out = 1, code_pos = 0;
    uint8_t code = 1;
    if (cap < 1) return 0;
    for (i = 0; i < n; i++) {
        /* Read before writing: in place, dst[out] is at or behind src[i] (see the header). */
        uint8_t b = src[i];
        if (b != 0) {
            if (out >= cap) return 0;
            dst[out++] = b;
            code++;
        }
        if (b == 0 || code == 0xFF) {
            dst[code_pos] = code;
            code = 1;
            if (b != 0 && i + 1 == n) return out; /* a full block ended the data: canonical */
            if (out >= cap) return 0;
            code_pos = out++;
        }
    }
    dst[code_pos] = code;
    return out;
}

int32_t rtu_edge_cobs_decode(const uint8_t *src, size_t n, uint8_t *dst, size_t cap) {
    size_t i = 0, out = 0;
    while (i < n) {
        uint8_t code = src[i], k;
        if (code == 0 || (size_t)code > n - i) return -(int32_t)RTU_EDGE_ERR_COBS;
        i++;
        for (k = 1; k < code; k++) {
            uint8_t b = src[i++];
            if (b == 0) return -(int32_t)RTU_EDGE_ERR_COBS;
            if (out >= cap) return -(int32_t)RTU_EDGE_ERR_TOO_LONG;
            dst[out++] = b;
        }
        if (code != 0xFF && i < n) {
            if (out >= cap) return -(int32_t)RTU_EDGE_ERR_TOO_LONG;
            dst[out++] = 0;
        }
    }
    return (int32_t)out;
}

/* ---- building frames --------------------------------------------------------------------- */

/* Where the raw frame starts inside wire so that COBS can encode it in place to wire[0]: one
 * byte per started 254-byte block ahead of it (the most COBS can add before any input byte). */
static size_t raw_offset(size_t frame_len) { return frame_len / 254u + 1u; }

static int frame_fits(size_t cap, size_t payload_len) {
    if (payload_len > RTU_EDGE_MAX_PAYLOAD_BYTES) return 0;
    return cap >= RTU_EDGE_WIRE_BYTES(payload_len);
}

uint8_t *rtu_edge_frame_payload(uint8_t *wire, size_t cap, size_t payload_len) {
    size_t frame_len = RTU_EDGE_HEADER_BYTES + payload_len + RTU_EDGE_CRC_BYTES;
    if (wire == NULL || !frame_fits(cap, payload_len)) return NULL;
    return wire + raw_offset(frame_len) + RTU_EDGE_HEADER_BYTES;
}

int rtu_edge_frame_finish(uint8_t *wire, size_t cap, uint8_t msg_id, uint16_t seq,
                          size_t payload_len) {
    size_t frame_len = RTU_EDGE_HEADER_BYTES + payload_len + RTU_EDGE_CRC_BYTES;
    size_t body = RTU_EDGE_HEADER_BYTES + payload_len, n;
    uint8_t *raw;
    if (wire == NULL || !frame_fits(cap, payload_len)) return -1;
    raw = wire + raw_offset(frame_len);
    rtu_edge_put_u8(raw + RTU_EDGE_HDR_OFF_MSG_ID, msg_id);
    rtu_edge_put_u16(raw + RTU_EDGE_HDR_OFF_SEQ, seq);
    rtu_edge_put_u16(raw + RTU_EDGE_HDR_OFF_LENGTH, (uint16_t)payload_len);
    rtu_edge_put_u32(raw + body, rtu_edge_crc32(raw, body));
    n = rtu_edge_cobs_encode(raw, frame_len, wire, cap - 1u);
    if (n == 0) return -1; /* cannot happen when frame_fits */
    wire[n] = 0x00;
    return (int)(n + 1u);
}

int rtu_edge_frame_encode(uint8_t *wire, size_t cap, uint8_t msg_id, uint16_t seq,
                          const uint8_t *payload, size_t payload_len) {
    uint8_t *dst = rtu_edge_frame_payload(wire, cap, payload_len);
    if (dst == NULL) return -1;
    if (payload_len) memmove(dst, payload, payload_len);
    return rtu_edge_frame_finish(wire, cap, msg_id, seq, payload_len);
}

/* ---- the receive parser ------------------------------------------------------------------ */

static void chunk_reset(rtu_edge_parser_t *p) {
    p->len = 0;
    p->encoded = 0;
    p->block_left = 0;
    p->block_full = 0;
    p->in_chunk = 0;
    p->overflow = 0;
}

void rtu_edge_parser_init(rtu_edge_parser_t *p, uint8_t *buf, size_t cap, uint32_t timeout_ms) {
    memset(p, 0, sizeof *p);
    p->buf = buf;
    p->cap = cap < RTU_EDGE_MAX_FRAME_BYTES ? cap : RTU_EDGE_MAX_FRAME_BYTES;
    p->timeout_ms = timeout_ms;
    p->last_error = RTU_EDGE_ERR_NONE;
}

void rtu_edge_parser_set_sizes(rtu_edge_parser_t *p, uint16_t obs_values, uint16_t action_values) {
    p->obs_values = obs_values;
    p->action_values = action_values;
}

void rtu_edge_parser_reset(rtu_edge_parser_t *p) {
    chunk_reset(p);
    p->discarding = 0;
}

static rtu_edge_rx_t reject(rtu_edge_parser_t *p, rtu_edge_err_t why) {
    p->errors[why]++;
    p->last_error = why;
    return RTU_EDGE_RX_ERROR;
}

static rtu_edge_rx_t too_long(rtu_edge_parser_t *p) {
    chunk_reset(p);
    p->discarding = 1;
    return reject(p, RTU_EDGE_ERR_TOO_LONG);
}

/* One decoded byte. Past the buffer the chunk is only checked for valid COBS up to its 0x00
 * (so the reasons match the Python parser's order: COBS first, then too long). */
static void store(rtu_edge_parser_t *p, uint8_t byte) {
    if (p->len < p->cap)
        p->buf[p->len++] = byte;
    else
        p->overflow = 1;
}

/* The whole chunk arrived (its 0x00 was just read): validate it. */
static rtu_edge_rx_t chunk_end(rtu_edge_parser_t *p) {
    size_t len = p->len, body, payload_len;
    rtu_edge_err_t why;
    uint8_t msg_id;
    if (p->block_left != 0) return reject(p, RTU_EDGE_ERR_COBS);
    if (p->overflow) return reject(p, RTU_EDGE_ERR_TOO_LONG); /* valid COBS, too many bytes */
    if (len < RTU_EDGE_MIN_FRAME_BYTES) return reject(p, RTU_EDGE_ERR_TOO_SHORT);
    body = len - RTU_EDGE_CRC_BYTES;
    if (rtu_edge_crc32(p->buf, body) != rtu_edge_get_u32(p->buf + body))
        return reject(p, RTU_EDGE_ERR_CRC);
    payload_len = body - RTU_EDGE_HEADER_BYTES;
    if (rtu_edge_get_u16(p->buf + RTU_EDGE_HDR_OFF_LENGTH) != payload_len)
        return reject(p, RTU_EDGE_ERR_HEADER_LENGTH);
    msg_id = rtu_edge_get_u8(p->buf + RTU_EDGE_HDR_OFF_MSG_ID);
    why = rtu_edge_check_payload(msg_id, payload_len, p->obs_values, p->action_values);
    if (why != RTU_EDGE_ERR_NONE) return reject(p, why);
    p->frames_ok++;
    p->msg_id = msg_id;
    p->seq = rtu_edge_get_u16(p->buf + RTU_EDGE_HDR_OFF_SEQ);
    p->payload = p->buf + RTU_EDGE_HEADER_BYTES;
    p->payload_len = (uint16_t)payload_len;
    p->last_error = RTU_EDGE_ERR_NONE;
    return RTU_EDGE_RX_FRAME;
}

rtu_edge_rx_t rtu_edge_parser_feed(rtu_edge_parser_t *p, uint8_t byte, uint32_t now_ms) {
    p->bytes_in++;
    p->last_byte_ms = now_ms;
    if (byte == 0x00) {
        rtu_edge_rx_t r = RTU_EDGE_RX_NONE;
        if (p->discarding) {
            p->discarding = 0; /* the too-long chunk ends here; it was counted already */
        } else if (p->in_chunk) {
            r = chunk_end(p);
        } /* else: an empty chunk (idle line, or a 0x00 sent before a frame) */
        chunk_reset(p);
        return r;
    }
    if (p->discarding) return RTU_EDGE_RX_NONE;
    p->in_chunk = 1;
    if (++p->encoded > RTU_EDGE_MAX_ENCODED_FRAME_BYTES) return too_long(p);
    if (p->block_left == 0) {
        /* A code byte. The block before it, unless full, stood for data followed by a 0x00. */
        if (p->encoded > 1 && !p->block_full) store(p, 0x00);
        p->block_full = byte == 0xFF;
        p->block_left = (uint8_t)(byte - 1u);
        return RTU_EDGE_RX_NONE;
    }
    store(p, byte);
    p->block_left--;
    return RTU_EDGE_RX_NONE;
}

rtu_edge_rx_t rtu_edge_parser_poll(rtu_edge_parser_t *p, uint32_t now_ms) {
    if (!p->in_chunk && !p->discarding) return RTU_EDGE_RX_NONE;
    if (p->timeout_ms == 0 || (uint32_t)(now_ms - p->last_byte_ms) < p->timeout_ms)
        return RTU_EDGE_RX_NONE;
    if (p->discarding) {
        p->discarding = 0; /* silence ends discard mode: the next byte starts a new chunk */
        return RTU_EDGE_RX_NONE;
    }
    chunk_reset(p);
    return reject(p, RTU_EDGE_ERR_TIMEOUT);
}

uint32_t rtu_edge_parser_error_total(const rtu_edge_parser_t *p) {
    uint32_t sum = 0;
    int i;
    for (i = 1; i < (int)RTU_EDGE_ERR_COUNT; i++) sum += p->errors[i];
    return sum;
}

uint32_t rtu_edge_wire_ms(uint32_t n, uint32_t baud) {
    if (baud == 0) return 0;
    return (uint32_t)(((uint64_t)n * 10000u + baud - 1u) / baud);
}

uint32_t rtu_edge_rx_timeout_ms(uint32_t baud) {
    return rtu_edge_wire_ms(RTU_EDGE_MAX_WIRE_FRAME_BYTES, baud) + 5u;
}

/* ---- message helpers --------------------------------------------------------------------- */

int rtu_edge_is_finite(float v) {
    uint32_t u;
    memcpy(&u, &v, 4);
    return (u & 0x7F800000u) != 0x7F800000u;
}

uint16_t rtu_edge_discrete_index(float v, uint16_t num_actions) {
    uint16_t top = num_actions ? (uint16_t)(num_actions - 1u) : 0u;
    uint32_t i;
    float frac;
    if (!(v > 0.0f)) return 0; /* negatives, -0.0 and +0.0 */
    if (v >= (float)top) return top;
    i = (uint32_t)v; /* v < 65535 < 2^24: the truncation and v - i are exact */
    frac = v - (float)i;
    if (frac > 0.5f || (frac == 0.5f && (i & 1u))) i++;
    return (uint16_t)(i > top ? top : i);
}
