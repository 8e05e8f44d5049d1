/* test_rtu_edge.c: unit tests of the C library (against the golden frames generated from the
 * Python codec) and of the example loop (mcu_loop.c, with a scripted plant and clock).
 * Prints one line per failed check and "ok" at the end; exit status 0 when all passed. */
#include <stdio.h>
#include <stdlib.h>

#include "cartpole.h"
#include "mcu_loop.h"
#include "rtu_edge_golden.h"

static int failures = 0, checks = 0;
#define CHECK(c)                                                                               \
    do {                                                                                       \
        checks++;                                                                              \
        if (!(c)) {                                                                            \
            printf("FAIL %s:%d: %s\n", __FILE__, __LINE__, #c);                                \
            failures++;                                                                        \
        }                                                                                      \
    } while (0)

static uint8_t parse_buf[RTU_EDGE_MAX_FRAME_BYTES];

/* Feed bytes; return how many frames completed, the last in *p. */
static int feed(rtu_edge_parser_t *p, const uint8_t *data, size_t n) {
    int frames = 0;
    size_t i;
    for (i = 0; i < n; i++)
        if (rtu_edge_parser_feed(p, data[i], 0) == RTU_EDGE_RX_FRAME) frames++;
    return frames;
}

static void fresh(rtu_edge_parser_t *p, uint16_t obs, uint16_t act) {
    rtu_edge_parser_init(p, parse_buf, sizeof parse_buf, 10);
    rtu_edge_parser_set_sizes(p, obs, act);
}

/* ---- CRC and COBS ------------------------------------------------------------------------ */

static void test_crc(void) {
    const uint8_t *check = (const uint8_t *)"123456789";
    CHECK(rtu_edge_crc32(check, 9) == 0xCBF43926u);
    CHECK(rtu_edge_crc32(check, 0) == 0u);
    CHECK(rtu_edge_crc32_update(rtu_edge_crc32(check, 4), check + 4, 5) == 0xCBF43926u);
    CHECK(rtu_edge_crc32((const uint8_t *)"\x00", 1) == 0xD202EF8Du);
}

typedef struct {
    const char *raw, *enc;
    size_t raw_len, enc_len;
} cobs_case_t;

static void test_cobs_vectors(void) {
    static const cobs_case_t cases[] = {
        {"", "\x01", 0, 1},
        {"\x00", "\x01\x01", 1, 2},
        {"\x00\x00", "\x01\x01\x01", 2, 3},
        {"\x11\x22\x00\x33", "\x03\x11\x22\x02\x33", 4, 5},
        {"\x11\x22\x33\x44", "\x05\x11\x22\x33\x44", 4, 5},
        {"\x11\x00\x00\x00", "\x02\x11\x01\x01\x01", 4, 5},
    };
    uint8_t raw[600], enc[700], dec[700];
    size_t i, n;
    for (i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        n = rtu_edge_cobs_encode((const uint8_t *)cases[i].raw, cases[i].raw_len, enc, sizeof enc);
        CHECK(n == cases[i].enc_len && memcmp(enc, cases[i].enc, n) == 0);
        CHECK(rtu_edge_cobs_decode(enc, n, dec, sizeof dec) == (int32_t)cases[i].raw_len);
        CHECK(memcmp(dec, cases[i].raw, cases[i].raw_len) == 0);
    }
    /* 254 non-zero bytes: one full block, no trailing code byte (canonical) */
    for (i = 0; i < 255; i++) raw[i] = (uint8_t)(i + 1);
    n = rtu_edge_cobs_encode(raw, 254, enc, sizeof enc);
    CHECK(n == 255 && enc[0] == 0xFF && memcmp(enc + 1, raw, 254) == 0);
    CHECK(rtu_edge_cobs_decode(enc, n, dec, sizeof dec) == 254);
    /* the non-canonical form with a trailing 0x01 decodes to the same bytes */
    enc[255] = 0x01;
    CHECK(rtu_edge_cobs_decode(enc, 256, dec, sizeof dec) == 254 && memcmp(dec, raw, 254) == 0);
    /* 0x00 then 254 non-zero */
    raw[0] = 0;
    n = rtu_edge_cobs_encode(raw, 255, enc, sizeof enc);
    CHECK(n == 256 && enc[0] == 0x01 && enc[1] == 0xFF);
    /* 255 non-zero bytes: FF block, then 02 xx */
    for (i = 0; i < 255; i++) raw[i] = (uint8_t)(i % 255 + 1);
    n = rtu_edge_cobs_encode(raw, 255, enc, sizeof enc);
    CHECK(n == 257 && enc[0] == 0xFF && enc[255] == 0x02 && enc[256] == raw[254]);
    /* too small a buffer */
    CHECK(rtu_edge_cobs_encode(raw, 255, enc, 256) == 0);
    CHECK(rtu_edge_cobs_encode(raw, 0, enc, 0) == 0);
    CHECK(rtu_edge_cobs_decode(enc, n, dec, 254) == -(int32_t)RTU_EDGE_ERR_TOO_LONG);
    /* malformed */
    CHECK(rtu_edge_cobs_decode((const uint8_t *)"\x05\x11", 2, dec, sizeof dec)
          == -(int32_t)RTU_EDGE_ERR_COBS);
    CHECK(rtu_edge_cobs_decode((const uint8_t *)"\x00", 1, dec, sizeof dec)
          == -(int32_t)RTU_EDGE_ERR_COBS);
    CHECK(rtu_edge_cobs_decode((const uint8_t *)"\x03\x11\x00", 3, dec, sizeof dec)
          == -(int32_t)RTU_EDGE_ERR_COBS);
    CHECK(rtu_edge_cobs_decode(enc, 0, dec, sizeof dec) == 0);
}

/* Encoding in place (what rtu_edge_frame_finish does) equals encoding into another buffer,
 * for every length up to two blocks and all-zero, no-zero and mixed data. */
static void test_cobs_in_place(void) {
    static uint8_t raw[700], a[800], b[800];
    size_t len, i, na, nb;
    int pattern;
    uint32_t x = 12345;
    for (pattern = 0; pattern < 3; pattern++) {
        for (len = 0; len <= 600; len++) {
            for (i = 0; i < len; i++) {
                x = x * 1103515245u + 12345u;
                raw[i] = pattern == 0 ? 0 : pattern == 1 ? (uint8_t)(x % 255 + 1) : (uint8_t)(x >> 24);
            }
            na = rtu_edge_cobs_encode(raw, len, a, sizeof a);
            memcpy(b + len / 254 + 1, raw, len);
            nb = rtu_edge_cobs_encode(b + len / 254 + 1, len, b, sizeof b);
            CHECK(na == nb && memcmp(a, b, na) == 0);
            CHECK(na <= RTU_EDGE_COBS_MAX_BYTES(len));
            CHECK(rtu_edge_cobs_decode(b, nb, b, sizeof b) == (int32_t)len); /* in place too */
            CHECK(memcmp(b, raw, len) == 0);
        }
    }
}

/* ---- golden frames ----------------------------------------------------------------------- */

static void test_golden_frames(void) {
    static uint8_t wire[RTU_EDGE_MAX_WIRE_FRAME_BYTES];
    unsigned i;
    for (i = 0; i < RTU_EDGE_GOLDEN_COUNT; i++) {
        const rtu_edge_golden_t *g = &rtu_edge_golden[i];
        rtu_edge_parser_t p;
        int n = rtu_edge_golden_write(g, wire, sizeof wire), ok;
        size_t k;
        ok = n == (int)g->wire_len && memcmp(wire, g->wire, g->wire_len) == 0;
        CHECK(ok);
        if (!ok) printf("  encoding %s differs from the golden frame\n", g->label);
        /* parse byte by byte: one frame, on the last byte, with the golden fields */
        fresh(&p, g->obs_values, g->action_values);
        for (k = 0; k + 1 < g->wire_len; k++) CHECK(rtu_edge_parser_feed(&p, g->wire[k], 0) == 0);
        CHECK(rtu_edge_parser_feed(&p, g->wire[k], 0) == RTU_EDGE_RX_FRAME);
        CHECK(p.msg_id == g->msg_id && p.seq == g->seq);
        ok = rtu_edge_golden_matches(g, p.payload, p.payload_len);
        CHECK(ok);
        if (!ok) printf("  decoding %s differs from the golden fields\n", g->label);
        CHECK(p.frames_ok == 1 && rtu_edge_parser_error_total(&p) == 0);
        /* the same frame written from its payload bytes */
        CHECK(rtu_edge_frame_encode(wire, sizeof wire, g->msg_id, g->seq, p.payload,
                                    p.payload_len) == (int)g->wire_len);
        CHECK(memcmp(wire, g->wire, g->wire_len) == 0);
        /* one buffer byte too small: refused */
        CHECK(rtu_edge_golden_write(g, wire, RTU_EDGE_WIRE_BYTES(p.payload_len) - 1) == -1);
    }
}

/* Every single-bit flip of every golden frame is rejected and counted (never a frame), and the
 * frame after it parses: CRC-32 catches every 1-bit error, COBS damage is contained. */
static void test_golden_bit_flips(void) {
    static uint8_t bad[RTU_EDGE_MAX_WIRE_FRAME_BYTES];
    const rtu_edge_golden_t *next = &rtu_edge_golden[7]; /* stop */
    unsigned i;
    size_t bit;
    for (i = 0; i < RTU_EDGE_GOLDEN_COUNT; i++) {
        const rtu_edge_golden_t *g = &rtu_edge_golden[i];
        for (bit = 0; bit < (g->wire_len - 1) * 8; bit++) {
            rtu_edge_parser_t p;
            int frames;
            memcpy(bad, g->wire, g->wire_len);
            bad[bit / 8] ^= (uint8_t)(1u << (bit % 8));
            fresh(&p, g->obs_values, g->action_values);
            frames = feed(&p, bad, g->wire_len);
            CHECK(frames == 0);
            CHECK(rtu_edge_parser_error_total(&p) >= 1);
            CHECK(feed(&p, next->wire, next->wire_len) == 1 && p.msg_id == RTU_EDGE_MSG_STOP);
        }
    }
}

/* ---- the parser, reason by reason -------------------------------------------------------- */

/* A frame with a correct CRC (whatever the header says) on the wire. */
static size_t raw_frame(uint8_t *out, uint8_t id, uint16_t seq, uint16_t hdr_len,
                        const uint8_t *payload, size_t n) {
    static uint8_t body[RTU_EDGE_MAX_FRAME_BYTES + 16];
    size_t len = RTU_EDGE_HEADER_BYTES + n, m;
    body[0] = id;
    rtu_edge_put_u16(body + 1, seq);
    rtu_edge_put_u16(body + 3, hdr_len);
    if (n) memcpy(body + RTU_EDGE_HEADER_BYTES, payload, n);
    rtu_edge_put_u32(body + len, rtu_edge_crc32(body, len));
    m = rtu_edge_cobs_encode(body, len + 4, out, 2 * RTU_EDGE_MAX_WIRE_FRAME_BYTES);
    out[m] = 0;
    return m + 1;
}

static rtu_edge_err_t one_error(rtu_edge_parser_t *p, const uint8_t *data, size_t n) {
    uint32_t before = rtu_edge_parser_error_total(p);
    int frames = feed(p, data, n);
    if (frames != 0 || rtu_edge_parser_error_total(p) != before + 1) return RTU_EDGE_ERR_COUNT;
    return p->last_error;
}

static void test_parser_reasons(void) {
    static uint8_t w[2 * RTU_EDGE_MAX_WIRE_FRAME_BYTES];
    static uint8_t payload[RTU_EDGE_MAX_PAYLOAD_BYTES + 8];
    const rtu_edge_golden_t *stop = &rtu_edge_golden[7], *obs = &rtu_edge_golden[4];
    rtu_edge_parser_t p;
    size_t n, i;
    uint8_t small[30];

    fresh(&p, 4, 1);
    CHECK(feed(&p, (const uint8_t *)"\x00\x00\x00", 3) == 0 && rtu_edge_parser_error_total(&p) == 0);
    CHECK(one_error(&p, (const uint8_t *)"\x05\x11\x00", 3) == RTU_EDGE_ERR_COBS);
    CHECK(one_error(&p, (const uint8_t *)"\x03\x11\x22\x00", 4) == RTU_EDGE_ERR_TOO_SHORT);
    memcpy(w, stop->wire, stop->wire_len);
    w[stop->wire_len - 3] ^= 0x40; /* a CRC byte */
    CHECK(one_error(&p, w, stop->wire_len) == RTU_EDGE_ERR_CRC);
    payload[0] = 0;
    n = raw_frame(w, RTU_EDGE_MSG_STOP, 1, 60000, payload, 1); /* header lies about its length */
    CHECK(one_error(&p, w, n) == RTU_EDGE_ERR_HEADER_LENGTH);
    n = raw_frame(w, 0x7E, 1, 0, payload, 0);
    CHECK(one_error(&p, w, n) == RTU_EDGE_ERR_UNKNOWN_ID);
    n = raw_frame(w, 0x90, 1, 0, payload, 0); /* an unknown MCU-side id is just as unknown */
    CHECK(one_error(&p, w, n) == RTU_EDGE_ERR_UNKNOWN_ID);
    n = raw_frame(w, RTU_EDGE_MSG_STOP, 1, 2, payload, 2);
    CHECK(one_error(&p, w, n) == RTU_EDGE_ERR_BAD_LENGTH);
    memset(payload, 0x3F, sizeof payload);
    n = raw_frame(w, RTU_EDGE_MSG_OBS, 1, RTU_EDGE_OBS_PAYLOAD_BYTES(3), payload,
                  RTU_EDGE_OBS_PAYLOAD_BYTES(3)); /* 3 values, 4 agreed */
    CHECK(one_error(&p, w, n) == RTU_EDGE_ERR_BAD_LENGTH);
    CHECK(p.errors[RTU_EDGE_ERR_BAD_LENGTH] == 2);
    /* before sizes are agreed any whole number of values passes */
    rtu_edge_parser_set_sizes(&p, 0, 0);
    CHECK(feed(&p, w, n) == 1 && p.payload_len == RTU_EDGE_OBS_PAYLOAD_BYTES(3));
    rtu_edge_parser_set_sizes(&p, 4, 1);
    /* too long: no 0x00 within RTU_EDGE_MAX_ENCODED_FRAME_BYTES; counted once, discarded up to
     * the next 0x00, and the frame after it parses */
    memset(w, 0x5A, 2000);
    CHECK(one_error(&p, w, 2000) == RTU_EDGE_ERR_TOO_LONG);
    CHECK(feed(&p, (const uint8_t *)"\x00", 1) == 0 && p.errors[RTU_EDGE_ERR_TOO_LONG] == 1);
    CHECK(feed(&p, stop->wire, stop->wire_len) == 1);
    /* too long while decoding: a valid CRC but more than MAX_FRAME bytes (zeros keep the COBS
     * overhead at one byte, so the encoded chunk fits) */
    memset(payload, 0, sizeof payload);
    n = raw_frame(w, RTU_EDGE_MSG_HELLO, 1, RTU_EDGE_MAX_PAYLOAD_BYTES + 1, payload,
                  RTU_EDGE_MAX_PAYLOAD_BYTES + 1);
    CHECK(n - 1 <= RTU_EDGE_MAX_ENCODED_FRAME_BYTES);
    CHECK(one_error(&p, w, n) == RTU_EDGE_ERR_TOO_LONG);
    n = raw_frame(w, RTU_EDGE_MSG_HELLO, 1, RTU_EDGE_MAX_PAYLOAD_BYTES, payload,
                  RTU_EDGE_MAX_PAYLOAD_BYTES); /* the boundary itself is fine (extensible) */
    CHECK(feed(&p, w, n) == 1);
    CHECK(p.errors[RTU_EDGE_ERR_COBS] == 1 && p.errors[RTU_EDGE_ERR_TOO_SHORT] == 1
          && p.errors[RTU_EDGE_ERR_CRC] == 1 && p.errors[RTU_EDGE_ERR_HEADER_LENGTH] == 1
          && p.errors[RTU_EDGE_ERR_UNKNOWN_ID] == 2 && p.errors[RTU_EDGE_ERR_TOO_LONG] == 2);
    CHECK(rtu_edge_parser_error_total(&p) == 10);
    CHECK(strcmp(rtu_edge_err_name(RTU_EDGE_ERR_TOO_LONG), "too_long") == 0);

    /* partial frame, then silence: dropped at the timeout, measured from the last byte */
    rtu_edge_parser_init(&p, parse_buf, sizeof parse_buf, 10);
    rtu_edge_parser_set_sizes(&p, 4, 1);
    for (i = 0; i < 10; i++) rtu_edge_parser_feed(&p, obs->wire[i], 100 + (uint32_t)i);
    CHECK(rtu_edge_parser_poll(&p, 118) == RTU_EDGE_RX_NONE); /* 9 ms after the last byte */
    CHECK(rtu_edge_parser_poll(&p, 119) == RTU_EDGE_RX_ERROR && p.last_error == RTU_EDGE_ERR_TIMEOUT);
    CHECK(rtu_edge_parser_poll(&p, 500) == RTU_EDGE_RX_NONE); /* counted once */
    CHECK(feed(&p, obs->wire, obs->wire_len) == 1 && p.seq == obs->seq);
    /* without the timeout, the partial frame swallows the next one (one error, no frame) */
    rtu_edge_parser_init(&p, parse_buf, sizeof parse_buf, 0);
    rtu_edge_parser_set_sizes(&p, 4, 1);
    feed(&p, obs->wire, 10);
    CHECK(rtu_edge_parser_poll(&p, 100000) == RTU_EDGE_RX_NONE);
    CHECK(feed(&p, obs->wire, obs->wire_len) == 0 && rtu_edge_parser_error_total(&p) == 1);
    /* silence ends discard mode after a too-long run, without another count */
    rtu_edge_parser_init(&p, parse_buf, sizeof parse_buf, 10);
    rtu_edge_parser_set_sizes(&p, 4, 1);
    for (i = 0; i < 1200; i++) rtu_edge_parser_feed(&p, 0x5A, 0);
    CHECK(p.discarding && p.errors[RTU_EDGE_ERR_TOO_LONG] == 1);
    CHECK(rtu_edge_parser_poll(&p, 20) == RTU_EDGE_RX_NONE && !p.discarding);
    CHECK(feed(&p, obs->wire, obs->wire_len) == 1 && rtu_edge_parser_error_total(&p) == 1);
    /* a small buffer: a frame that does not fit counts as too long, the next one parses */
    rtu_edge_parser_init(&p, small, sizeof small, 0);
    CHECK(one_error(&p, rtu_edge_golden[3].wire, rtu_edge_golden[3].wire_len) == RTU_EDGE_ERR_TOO_LONG);
    CHECK(feed(&p, stop->wire, stop->wire_len) == 1);
    /* a valid frame embedded in a corrupted one is never dispatched */
    rtu_edge_parser_init(&p, parse_buf, sizeof parse_buf, 0);
    rtu_edge_parser_set_sizes(&p, 4, 1);
    for (i = 1; i + 1 < obs->wire_len; i++) {
        size_t len = 0;
        memcpy(w, obs->wire, i);
        len += i;
        memcpy(w + len, rtu_edge_golden[5].wire, rtu_edge_golden[5].wire_len);
        len += rtu_edge_golden[5].wire_len;
        memcpy(w + len, obs->wire + i, obs->wire_len - i);
        len += obs->wire_len - i;
        memcpy(w + len, stop->wire, stop->wire_len);
        len += stop->wire_len;
        CHECK(feed(&p, w, len) == 1 && p.msg_id == RTU_EDGE_MSG_STOP);
    }
}

static void test_helpers(void) {
    float inf = 1e30f, nan_v;
    uint32_t nan_bits = 0x7FC00000u;
    inf *= 1e30f;
    memcpy(&nan_v, &nan_bits, 4);
    CHECK(rtu_edge_is_finite(1.0f) && rtu_edge_is_finite(-0.0f) && rtu_edge_is_finite(3e38f));
    CHECK(!rtu_edge_is_finite(inf) && !rtu_edge_is_finite(-inf) && !rtu_edge_is_finite(nan_v));
    /* ties to even, like numpy.rint; then clipped */
    CHECK(rtu_edge_discrete_index(0.5f, 5) == 0 && rtu_edge_discrete_index(1.5f, 5) == 2);
    CHECK(rtu_edge_discrete_index(2.5f, 5) == 2 && rtu_edge_discrete_index(3.5f, 5) == 4);
    CHECK(rtu_edge_discrete_index(0.49f, 5) == 0 && rtu_edge_discrete_index(0.51f, 5) == 1);
    CHECK(rtu_edge_discrete_index(-0.5f, 5) == 0 && rtu_edge_discrete_index(-7.0f, 5) == 0);
    CHECK(rtu_edge_discrete_index(1.5f, 2) == 1 && rtu_edge_discrete_index(9e9f, 2) == 1);
    CHECK(rtu_edge_discrete_index(1.0f, 2) == 1 && rtu_edge_discrete_index(0.0f, 2) == 0);
    CHECK(rtu_edge_wire_ms(1039, 1000000) == 11 && rtu_edge_wire_ms(100, 115200) == 9);
    CHECK(rtu_edge_rx_timeout_ms(1000000) == 16 && rtu_edge_rx_timeout_ms(115200) == 96);
    /* units in the names: bytes vs float32 values */
    CHECK(RTU_EDGE_OBS_PAYLOAD_BYTES(2) == 13 && RTU_EDGE_MAX_OBS_VALUES == 254);
    CHECK(RTU_EDGE_WIRE_BYTES(RTU_EDGE_OBS_PAYLOAD_BYTES(2)) >= 24);
    CHECK(RTU_EDGE_WIRE_BYTES(RTU_EDGE_MAX_PAYLOAD_BYTES) == RTU_EDGE_MAX_WIRE_FRAME_BYTES);
}

/* ---- the example loop, with a scripted plant and clock ----------------------------------- */

typedef struct {
    int resets, applies, safe, steps;
    float last_action;
    int end_after; /* steps until the episode ends: 1 terminal, 2 truncated */
    int end_kind;
    /* prediction mode: the controller's calls, what it was given, what it answers */
    int controls;
    float control_obs0, control_pred0;
    uint16_t control_n;
    float control_action;
} fake_plant_t;

static void fp_reset(void *ctx, float *obs) {
    fake_plant_t *f = (fake_plant_t *)ctx;
    f->resets++;
    obs[0] = 0.25f;
    obs[1] = -0.5f;
}
static void fp_apply(void *ctx, const float *a) {
    fake_plant_t *f = (fake_plant_t *)ctx;
    f->applies++;
    f->last_action = a[0];
}
static void fp_observe(void *ctx, float *obs, float *reward, int *terminal, int *truncated) {
    fake_plant_t *f = (fake_plant_t *)ctx;
    f->steps++;
    obs[0] = (float)f->steps;
    obs[1] = f->last_action;
    *reward = 1.0f;
    *terminal = f->end_after && f->steps % f->end_after == 0 && f->end_kind == 1;
    *truncated = f->end_after && f->steps % f->end_after == 0 && f->end_kind == 2;
}
static void fp_safe(void *ctx) { ((fake_plant_t *)ctx)->safe++; }
static void fp_control(void *ctx, const float *obs, const float *pred, uint16_t n, float *a) {
    fake_plant_t *f = (fake_plant_t *)ctx;
    f->controls++;
    f->control_obs0 = obs[0];
    f->control_pred0 = pred[0];
    f->control_n = n;
    a[0] = f->control_action;
}

/* The host's view: every frame the MCU wrote, decoded. */
typedef struct {
    uint8_t bytes[1 << 16];
    size_t len, read;
    rtu_edge_parser_t parser;
    uint8_t buf[RTU_EDGE_MAX_FRAME_BYTES];
} wire_t;

static void w_write(void *ctx, const uint8_t *data, size_t n) {
    wire_t *w = (wire_t *)ctx;
    if (w->len + n <= sizeof w->bytes) {
        memcpy(w->bytes + w->len, data, n);
        w->len += n;
    }
}

/* The next frame the MCU sent (msg id, or 0 when none); payload in w->parser. */
static uint8_t next_frame(wire_t *w) {
    while (w->read < w->len)
        if (rtu_edge_parser_feed(&w->parser, w->bytes[w->read++], 0) == RTU_EDGE_RX_FRAME)
            return w->parser.msg_id;
    return 0;
}

static int pending(wire_t *w) { return w->read < w->len; }

static mcu_t mcu;
static fake_plant_t plant_state;
static wire_t host;
static uint32_t now;
static uint16_t host_seq;
static uint8_t mcu_rx[RTU_EDGE_MAX_FRAME_BYTES];

static void send_to_mcu(const uint8_t *wire, int n) {
    int i;
    CHECK(n > 0);
    for (i = 0; i < n; i++) mcu_on_byte(&mcu, wire[i], now);
}

static void host_hello_req(uint32_t nonce, uint16_t obs, uint32_t schema) {
    uint8_t w[64];
    rtu_edge_hello_req_t r;
    r.protocol_version = RTU_EDGE_PROTOCOL_VERSION;
    r.schema_hash = schema;
    r.nonce = nonce;
    r.obs_size = obs;
    r.action_size = 1;
    r.num_actions = 2;
    r.obs_dtype = r.action_dtype = RTU_EDGE_DTYPE_F32;
    send_to_mcu(w, rtu_edge_write_hello_req(w, sizeof w, host_seq++, &r));
}

static void host_arm(uint32_t boot) {
    uint8_t w[32];
    rtu_edge_arm_t a;
    a.boot_id = boot;
    send_to_mcu(w, rtu_edge_write_arm(w, sizeof w, host_seq++, &a));
}

static void host_action(uint16_t obs_seq, float v) {
    uint8_t w[32];
    rtu_edge_action_t a;
    a.obs_seq = obs_seq;
    a.action_count = 1;
    a.action[0] = v;
    send_to_mcu(w, rtu_edge_write_action(w, sizeof w, host_seq++, &a));
}

static void host_prediction(uint16_t obs_seq, const float *v, uint16_t n) {
    uint8_t w[64];
    uint8_t payload[2 + 4 * 8];
    uint16_t i;
    CHECK(n <= 8);
    /* by hand: rtu_edge_prediction_t here holds at most MCU_MAX_PREDICTION_VALUES values */
    rtu_edge_put_u16(payload, obs_seq);
    for (i = 0; i < n; i++) rtu_edge_put_f32(payload + 2 + 4 * i, v[i]);
    send_to_mcu(w, rtu_edge_frame_encode(w, sizeof w, RTU_EDGE_MSG_PREDICTION, host_seq++,
                                         payload, 2u + 4u * n));
}

static void host_simple(uint8_t id, const uint8_t *payload, size_t n) {
    uint8_t w[64];
    send_to_mcu(w, rtu_edge_frame_encode(w, sizeof w, id, host_seq++, payload, n));
}

static rtu_edge_hello_t expect_hello(void) {
    rtu_edge_hello_t h;
    memset(&h, 0, sizeof h);
    CHECK(next_frame(&host) == RTU_EDGE_MSG_HELLO);
    CHECK(rtu_edge_decode_hello(host.parser.payload, host.parser.payload_len, &h) == 0);
    return h;
}

static rtu_edge_status_t expect_status(uint8_t event) {
    rtu_edge_status_t s;
    memset(&s, 0, sizeof s);
    CHECK(next_frame(&host) == RTU_EDGE_MSG_STATUS);
    CHECK(rtu_edge_decode_status(host.parser.payload, host.parser.payload_len, &s) == 0);
    CHECK(s.event == event);
    return s;
}

static rtu_edge_obs_t expect_obs(uint8_t flags) {
    rtu_edge_obs_t o;
    memset(&o, 0, sizeof o);
    CHECK(next_frame(&host) == RTU_EDGE_MSG_OBS);
    CHECK(rtu_edge_decode_obs(host.parser.payload, host.parser.payload_len, &o) == 0);
    CHECK(o.flags == flags && o.obs_count == 2);
    return o;
}

static void boot_loop(uint16_t watchdog_ms, uint16_t period_ms) {
    mcu_config_t cfg;
    mcu_plant_t plant;
    mcu_port_t port;
    memset(&cfg, 0, sizeof cfg);
    memset(&plant_state, 0, sizeof plant_state);
    memset(&host, 0, sizeof host);
    rtu_edge_parser_init(&host.parser, host.buf, sizeof host.buf, 0);
    rtu_edge_parser_set_sizes(&host.parser, 2, 1);
    cfg.obs_values = 2;
    cfg.action_values = 1;
    cfg.num_actions = 2;
    cfg.watchdog_ms = watchdog_ms;
    cfg.control_period_ms = period_ms;
    cfg.rx_timeout_ms = 20;
    plant.ctx = &plant_state;
    plant.reset = fp_reset;
    plant.apply = fp_apply;
    plant.observe = fp_observe;
    plant.apply_safe = fp_safe;
    plant.control = NULL;
    port.ctx = &host;
    port.write = w_write;
    now = 1000;
    host_seq = 0;
    CHECK(mcu_init(&mcu, &cfg, &plant, &port, mcu_rx, sizeof mcu_rx, 0xCAFEF00Du) == 0);
    mcu_boot(&mcu, now);
}

/* HELLO on boot, handshake, arm: returns the OBS(FIRST) seq. */
static uint16_t handshake_and_arm(void) {
    rtu_edge_hello_t h;
    rtu_edge_obs_t o;
    host_hello_req(0x1234u, 2, RTU_EDGE_SCHEMA_HASH);
    h = expect_hello();
    CHECK(h.accepted == 1 && h.nonce == 0x1234u);
    host_arm(0xCAFEF00Du);
    CHECK(expect_status(RTU_EDGE_STATUS_EVENT_ARMED).armed == 1);
    o = expect_obs(RTU_EDGE_OBS_FLAGS_FIRST);
    CHECK(o.reward == 0.0f && o.obs[0] == 0.25f);
    return host.parser.seq;
}

static void test_loop_session(void) {
    rtu_edge_hello_t h;
    rtu_edge_status_t s;
    rtu_edge_obs_t o;
    uint16_t seq, first_seq;
    size_t mark;
    boot_loop(500, 0);
    /* boot: 0x00, then HELLO seq 0, nonce 0, accepted 0; the safe state is held */
    CHECK(host.len > 0 && host.bytes[0] == 0x00);
    h = expect_hello();
    CHECK(host.parser.seq == 0 && h.nonce == 0 && h.accepted == 0 && h.boot_id == 0xCAFEF00Du);
    CHECK(h.obs_size == 2 && h.num_actions == 2 && h.watchdog_ms == 500 && plant_state.safe >= 1);
    /* a mismatch: accepted 0, then ARM refused */
    host_hello_req(7, 4, RTU_EDGE_SCHEMA_HASH);
    h = expect_hello();
    CHECK(host.parser.seq == 1 && h.accepted == 0 && h.nonce == 7);
    host_hello_req(8, 2, 0xDEADBEEFu);
    CHECK(expect_hello().accepted == 0);
    host_arm(0xCAFEF00Du);
    CHECK(expect_status(RTU_EDGE_STATUS_EVENT_ARM_REFUSED).armed == 0);
    /* accepted handshake, but the ARM names another boot: refused */
    host_hello_req(9, 2, RTU_EDGE_SCHEMA_HASH);
    CHECK(expect_hello().accepted == 1);
    host_arm(0x0BADu);
    expect_status(RTU_EDGE_STATUS_EVENT_ARM_REFUSED);
    first_seq = handshake_and_arm();
    /* a repeated ARM while armed: STATUS(REPLY), nothing else */
    host_arm(0xCAFEF00Du);
    CHECK(expect_status(RTU_EDGE_STATUS_EVENT_REPLY).armed == 1 && !pending(&host));
    /* stale ACTION: rejected, no step */
    host_action((uint16_t)(first_seq - 1), 1.0f);
    CHECK(!pending(&host) && plant_state.steps == 0 && mcu.stats.actions_stale == 1);
    /* the answering ACTION: applied, the next OBS with reward 1 */
    host_action(first_seq, 1.0f);
    o = expect_obs(0);
    seq = host.parser.seq;
    /* first_seq + 2: the STATUS(REPLY) to the repeated ARM took first_seq + 1 */
    CHECK(seq == (uint16_t)(first_seq + 2) && o.reward == 1.0f && plant_state.last_action == 1.0f);
    /* the same ACTION again (already answered): rejected */
    host_action(first_seq, 1.0f);
    CHECK(!pending(&host) && mcu.stats.actions_stale == 2);
    /* a non-integer index: rounded ties-to-even, clipped, counted */
    host_action(seq, 0.5f);
    o = expect_obs(0);
    CHECK(plant_state.last_action == 0.0f && mcu.stats.actions_clipped == 1);
    seq = host.parser.seq;
    /* NaN: rejected, safe state, the OBS stays unanswered (re-sent later) */
    {
        float nan_v;
        uint32_t bits = 0x7FC00000u;
        int safe = plant_state.safe;
        memcpy(&nan_v, &bits, 4);
        host_action(seq, nan_v);
        CHECK(!pending(&host) && mcu.stats.actions_nonfinite == 1 && plant_state.safe == safe + 1);
    }
    /* re-send after the re-send period (min(50, 500/4) = 50 ms): the same bytes, same seq */
    mark = host.len;
    now += 49;
    mcu_poll(&mcu, now);
    CHECK(host.len == mark);
    now += 1;
    mcu_poll(&mcu, now);
    expect_obs(0);
    CHECK(host.parser.seq == seq && mcu.stats.obs_resent == 1);
    host_action(seq, 1.0f); /* the valid one is still accepted */
    expect_obs(0);
    seq = host.parser.seq;
    /* a new host process starts at seq 0 again: its frames are served */
    host_seq = 0;
    host_simple(RTU_EDGE_MSG_STATUS_REQ, NULL, 0);
    s = expect_status(RTU_EDGE_STATUS_EVENT_REPLY);
    CHECK(s.armed == 1 && s.last_obs_seq == seq && s.actions_applied == 3);
    CHECK(s.actions_rejected == 3 && s.frame_errors == 0 && s.boot_id == 0xCAFEF00Du);
    /* garbage: counted in frame_errors, nothing answered */
    send_to_mcu((const uint8_t *)"\x13\x37\x42\x00\x05\x11\x00", 7);
    host_simple(RTU_EDGE_MSG_STATUS_REQ, NULL, 0);
    CHECK(expect_status(RTU_EDGE_STATUS_EVENT_REPLY).frame_errors == 2);
    /* STOP: safe, disarmed, STOPPED; later ACTIONs get STATUS(REPLY), rate-limited */
    {
        uint8_t reason = RTU_EDGE_STOP_REASON_USER;
        host_simple(RTU_EDGE_MSG_STOP, &reason, 1);
    }
    s = expect_status(RTU_EDGE_STATUS_EVENT_STOPPED);
    CHECK(s.armed == 0 && mcu.stats.episodes_interrupted == 1);
    host_action(seq, 1.0f);
    CHECK(expect_status(RTU_EDGE_STATUS_EVENT_REPLY).armed == 0);
    host_action(seq, 1.0f);
    CHECK(!pending(&host) && mcu.stats.actions_disarmed == 2);
    now += 50;
    host_action(seq, 1.0f);
    expect_status(RTU_EDGE_STATUS_EVENT_REPLY);
    /* no OBS re-sends while disarmed */
    now += 1000;
    mcu_poll(&mcu, now);
    CHECK(!pending(&host));
    /* an MCU id echoed back: valid, ignored */
    host_simple(RTU_EDGE_MSG_STATUS, (const uint8_t *)"\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0", 29);
    CHECK(!pending(&host) && mcu.stats.frames_ignored == 1);
}

static void test_loop_watchdog(void) {
    rtu_edge_status_t s;
    uint16_t seq;
    int i;
    boot_loop(200, 0);
    expect_hello();
    seq = handshake_and_arm();
    /* re-sends do not restart the watchdog: it trips 200 ms after the OBS was first sent */
    for (i = 0; i < 199; i++) {
        now++;
        mcu_poll(&mcu, now);
    }
    CHECK(mcu.armed && mcu.stats.obs_resent == 3); /* resend period min(50, 200/4) = 50 */
    while (next_frame(&host) == RTU_EDGE_MSG_OBS) CHECK(host.parser.seq == seq);
    now++;
    mcu_poll(&mcu, now);
    s = expect_status(RTU_EDGE_STATUS_EVENT_WATCHDOG);
    CHECK(s.watchdog_latched == 1 && s.armed == 0 && s.watchdog_trips == 1 && !mcu.armed);
    /* the first HEARTBEAT: watchdog_ms after that STATUS, then every watchdog_ms */
    now += 199;
    mcu_poll(&mcu, now);
    CHECK(!pending(&host));
    now += 1;
    mcu_poll(&mcu, now);
    CHECK(expect_status(RTU_EDGE_STATUS_EVENT_HEARTBEAT).watchdog_latched == 1);
    now += 200;
    mcu_poll(&mcu, now);
    expect_status(RTU_EDGE_STATUS_EVENT_HEARTBEAT);
    /* a late ACTION: not applied, answered with STATUS (latched) */
    host_action(seq, 1.0f);
    CHECK(expect_status(RTU_EDGE_STATUS_EVENT_REPLY).watchdog_latched == 1 && plant_state.steps == 0);
    /* STOP keeps the latch; ARM (after the accepted handshake) clears it */
    host_simple(RTU_EDGE_MSG_STOP, (const uint8_t *)"\x02", 1);
    CHECK(expect_status(RTU_EDGE_STATUS_EVENT_STOPPED).watchdog_latched == 1);
    host_arm(0xCAFEF00Du);
    s = expect_status(RTU_EDGE_STATUS_EVENT_ARMED);
    CHECK(s.watchdog_latched == 0 && s.armed == 1);
    expect_obs(RTU_EDGE_OBS_FLAGS_FIRST);
    /* HELLO_REQ while armed: disarms (safe), answered, the episode is abandoned */
    host_hello_req(5, 2, RTU_EDGE_SCHEMA_HASH);
    CHECK(expect_hello().accepted == 1 && !mcu.armed);
    /* watchdog_ms = 0: no watchdog at all */
    boot_loop(0, 0);
    expect_hello();
    handshake_and_arm();
    for (i = 0; i < 100; i++) {
        now += 100;
        mcu_poll(&mcu, now);
    }
    CHECK(mcu.armed && mcu.stats.watchdog_trips == 0 && mcu.stats.obs_resent == 100);
}

static void test_loop_episode_end(void) {
    rtu_edge_obs_t o;
    uint16_t seq;
    int kind;
    for (kind = 1; kind <= 2; kind++) {
        uint8_t flag = kind == 1 ? RTU_EDGE_OBS_FLAGS_TERMINAL : RTU_EDGE_OBS_FLAGS_TRUNCATED;
        boot_loop(500, 0);
        plant_state.end_after = 2;
        plant_state.end_kind = kind;
        expect_hello();
        seq = handshake_and_arm();
        host_action(seq, 1.0f);
        expect_obs(0);
        host_action(host.parser.seq, 0.0f);
        o = expect_obs(flag);
        CHECK(o.reward == 1.0f && mcu.stats.episodes == 1);
        /* the ACTION answering it: values ignored (not applied, not rejected), new episode */
        host_action(host.parser.seq, 1.0f);
        o = expect_obs(RTU_EDGE_OBS_FLAGS_FIRST);
        CHECK(o.reward == 0.0f && plant_state.applies == 2 && plant_state.resets == 2);
        CHECK(mcu.stats.actions_applied == 2 && mcu_actions_rejected(&mcu) == 0);
        CHECK(mcu.stats.actions_ended == 1);
    }
}

static void test_loop_control_period_and_reboot(void) {
    uint16_t seq;
    rtu_edge_hello_t h;
    boot_loop(500, 20);
    expect_hello();
    seq = handshake_and_arm(); /* OBS(FIRST) sent at t = 1000 */
    now += 5;
    host_action(seq, 1.0f);
    CHECK(plant_state.applies == 1 && !pending(&host)); /* applied now, observed at 1020 */
    now += 14;
    mcu_poll(&mcu, now);
    CHECK(!pending(&host));
    now += 1;
    mcu_poll(&mcu, now);
    expect_obs(0);
    CHECK(plant_state.steps == 1);
    /* a reboot: HELLO with a new boot id and seq 0, disarmed */
    mcu_reboot(&mcu, 0x0BADCAFEu, now);
    h = expect_hello();
    CHECK(host.parser.seq == 0 && h.boot_id == 0x0BADCAFEu && h.nonce == 0 && !mcu.armed);
    host_arm(0xCAFEF00Du); /* the old boot's ARM: refused (no handshake with this boot) */
    expect_status(RTU_EDGE_STATUS_EVENT_ARM_REFUSED);
}

/* Prediction mode: a PREDICTION answering the latest OBS lets the plant's controller act
 * (lock-step: the next OBS at once); stale, disarmed, controller-less and over-long ones are
 * rejected and counted in STATUS.actions_rejected; one answering an episode's last OBS starts
 * the next episode; an ACTION (the host's safe action) still overrides the controller. */
static void test_loop_prediction(void) {
    rtu_edge_obs_t o;
    rtu_edge_status_t st;
    uint16_t seq, i;
    float v[8] = {0.75f, -2.0f, 3.0f, 4.0f, 5.0f, 6.0f, 7.0f, 8.0f};
    /* an MCU without a controller rejects every PREDICTION; the OBS stays unanswered */
    boot_loop(500, 0);
    expect_hello();
    seq = handshake_and_arm();
    host_prediction(seq, v, 1);
    CHECK(!pending(&host) && mcu.stats.predictions_rejected == 1 && plant_state.steps == 0);
    CHECK(mcu_actions_rejected(&mcu) == 1);
    host_action(seq, 1.0f); /* an ACTION is still served */
    expect_obs(0);

    /* with a controller */
    boot_loop(500, 0);
    mcu.plant.control = fp_control;
    plant_state.control_action = 1.0f;
    plant_state.end_after = 3;
    plant_state.end_kind = 1;
    expect_hello();
    host_prediction(0, v, 1); /* disarmed: rejected, STATUS(REPLY) says so */
    CHECK(expect_status(RTU_EDGE_STATUS_EVENT_REPLY).armed == 0);
    CHECK(mcu.stats.predictions_rejected == 1);
    seq = handshake_and_arm();
    host_prediction((uint16_t)(seq - 1), v, 1); /* stale */
    CHECK(!pending(&host) && mcu.stats.predictions_rejected == 2 && plant_state.controls == 0);
    host_prediction(seq, v, 2);
    o = expect_obs(0); /* the controller acted with the OBS and the prediction it was given */
    CHECK(plant_state.controls == 1 && plant_state.control_obs0 == 0.25f);
    CHECK(plant_state.control_pred0 == 0.75f && plant_state.control_n == 2);
    CHECK(mcu.prediction_count == 2 && mcu.prediction[1] == -2.0f);
    CHECK(plant_state.applies == 1 && plant_state.last_action == 1.0f && o.reward == 1.0f);
    CHECK(mcu.stats.predictions_accepted == 1 && mcu.stats.actions_applied == 0);
    host_prediction(seq, v, 1); /* already answered */
    CHECK(!pending(&host) && mcu.stats.predictions_rejected == 3);
    seq = host.parser.seq;
    /* more values than MCU_MAX_PREDICTION_VALUES: rejected, still unanswered */
    host_prediction(seq, v, MCU_MAX_PREDICTION_VALUES + 1);
    CHECK(!pending(&host) && mcu.stats.predictions_rejected == 4);
    /* the controller's action is rounded like a host's: 0.7 -> 1, counted as clipped */
    plant_state.control_action = 0.7f;
    host_prediction(seq, v, MCU_MAX_PREDICTION_VALUES);
    expect_obs(0);
    CHECK(plant_state.last_action == 1.0f && mcu.stats.actions_clipped == 1);
    CHECK(plant_state.control_n == MCU_MAX_PREDICTION_VALUES);
    /* the host's safe ACTION overrides the controller for that step */
    plant_state.control_action = 1.0f;
    host_action(host.parser.seq, 0.0f);
    o = expect_obs(RTU_EDGE_OBS_FLAGS_TERMINAL); /* the third step ends the episode */
    CHECK(plant_state.last_action == 0.0f && plant_state.controls == 2);
    CHECK(mcu.stats.actions_applied == 1 && mcu.stats.episodes == 1);
    /* the PREDICTION answering the last OBS: no control, a new episode */
    host_prediction(host.parser.seq, v, 1);
    expect_obs(RTU_EDGE_OBS_FLAGS_FIRST);
    CHECK(plant_state.controls == 2 && plant_state.resets == 2);
    CHECK(mcu.stats.predictions_accepted == 3);
    /* STATUS counts the rejected PREDICTIONs in actions_rejected */
    host_simple(RTU_EDGE_MSG_STATUS_REQ, NULL, 0);
    st = expect_status(RTU_EDGE_STATUS_EVENT_REPLY);
    CHECK(st.actions_rejected == 4 && st.actions_applied == 1);
    /* a watchdog still trips when PREDICTIONs stop coming */
    now += 500;
    mcu_poll(&mcu, now);
    for (i = 0; i < 20 && next_frame(&host) != RTU_EDGE_MSG_STATUS; i++) {
    }
    CHECK(mcu.stats.watchdog_trips == 1 && mcu.latched);
}

/* The partial-frame timeout of the loop: a torn frame followed by silence does not destroy
 * the next frame. */
static void test_loop_rx_timeout(void) {
    uint8_t w[64];
    rtu_edge_hello_req_t r;
    int n, i;
    boot_loop(500, 0);
    expect_hello();
    memset(&r, 0, sizeof r);
    r.protocol_version = 1;
    n = rtu_edge_write_hello_req(w, sizeof w, 0, &r);
    for (i = 0; i < n / 2; i++) mcu_on_byte(&mcu, w[i], now);
    now += 25;
    mcu_poll(&mcu, now);
    CHECK(mcu.parser.errors[RTU_EDGE_ERR_TIMEOUT] == 1);
    host_hello_req(3, 2, RTU_EDGE_SCHEMA_HASH);
    CHECK(expect_hello().accepted == 1);
}

/* cartpole.c's start states and the time limit; its dynamics are checked against gymnasium
 * by tests/firmware/test_c_firmware.py. */
static void test_cartpole(void) {
    cartpole_t c;
    float obs[2], r;
    int term = 0, trunc = 0, i;
    cartpole_init(&c, 3);
    cartpole_reset(&c, obs);
    CHECK(obs[0] >= -0.05f && obs[0] < 0.05f && obs[1] >= -0.05f && obs[1] < 0.05f);
    cartpole_set_state(&c, 0, 0, 0, 0);
    for (i = 0; i < 499; i++) {
        cartpole_step(&c, i % 2, obs, &r, &term, &trunc);
        CHECK(!trunc);
        c.x = c.x_dot = c.theta = c.theta_dot = 0.0; /* hold it upright: only time passes */
    }
    cartpole_step(&c, 0, obs, &r, &term, &trunc);
    CHECK(trunc && !term && r == 1.0f && c.steps == 500);
    cartpole_set_state(&c, 0, 0, 0.2, 0);
    for (i = 0; i < 100 && !term; i++) cartpole_step(&c, 1, obs, &r, &term, &trunc);
    CHECK(term && i < 100 && r == 1.0f);
}

int main(void) {
    test_crc();
    test_cobs_vectors();
    test_cobs_in_place();
    test_golden_frames();
    test_golden_bit_flips();
    test_parser_reasons();
    test_helpers();
    test_loop_session();
    test_loop_watchdog();
    test_loop_episode_end();
    test_loop_control_period_and_reboot();
    test_loop_rx_timeout();
    test_loop_prediction();
    test_cartpole();
    printf("%s (%d checks, %d failed)\n", failures ? "FAILED" : "ok", checks, failures);
    return failures ? 1 : 0;
}
