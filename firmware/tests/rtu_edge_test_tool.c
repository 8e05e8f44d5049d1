/* rtu_edge_test_tool.c: the C library (and the CartPole plant) behind a line protocol on
 * stdin/stdout, so that the Python tests can compare them with firmware_bridge.protocol and
 * gymnasium on many generated inputs.
 *
 *   crc HEX                   -> 8 hex digits
 *   cobs HEX                  -> HEX (the encoding, no delimiter)
 *   uncobs HEX                -> HEX, or "error cobs" / "error too_long"
 *   parse OBS ACTION HEX      -> what a parser with those agreed sizes (0: none) returns for the
 *                                bytes, fed one at a time: "frame ID SEQ PAYLOADHEX" or
 *                                "error REASON" items joined by " | ", then " | counts" and the
 *                                per-reason counters; "-" is empty data
 *   cartpole X XDOT THETA THETADOT ACTIONS
 *                             -> from that state, one step per character of ACTIONS ('0' left,
 *                                '1' right): "X XDOT THETA THETADOT TERMINAL" after each, joined
 *                                by " | " (%.17g)
 * One output line per input line. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cartpole.h"
#include "rtu_edge_proto.h"

#define MAX_BYTES 8192

static size_t from_hex(const char *s, uint8_t *out, size_t cap) {
    size_t n = 0;
    if (strcmp(s, "-") == 0) return 0;
    while (s[0] && s[1] && n < cap) {
        unsigned v;
        if (sscanf(s, "%2x", &v) != 1) break;
        out[n++] = (uint8_t)v;
        s += 2;
    }
    return n;
}

static void put_hex(const uint8_t *b, size_t n) {
    size_t i;
    if (n == 0) fputs("-", stdout);
    for (i = 0; i < n; i++) printf("%02x", b[i]);
}

int main(void) {
    static char line[4 * MAX_BYTES];
    static uint8_t in[MAX_BYTES], out[2 * MAX_BYTES];
    static uint8_t buf[RTU_EDGE_MAX_FRAME_BYTES];
    static char arg[4 * MAX_BYTES];
    while (fgets(line, sizeof line, stdin)) {
        char cmd[16];
        unsigned obs = 0, act = 0;
        size_t n;
        line[strcspn(line, "\r\n")] = 0;
        if (sscanf(line, "%15s", cmd) != 1) continue;
        if (strcmp(cmd, "parse") == 0) {
            rtu_edge_parser_t p;
            size_t i;
            int items = 0, k;
            if (sscanf(line, "%*s %u %u %s", &obs, &act, arg) != 3) return 2;
            n = from_hex(arg, in, sizeof in);
            rtu_edge_parser_init(&p, buf, sizeof buf, 0);
            rtu_edge_parser_set_sizes(&p, (uint16_t)obs, (uint16_t)act);
            for (i = 0; i < n; i++) {
                rtu_edge_rx_t r = rtu_edge_parser_feed(&p, in[i], 0);
                if (r == RTU_EDGE_RX_NONE) continue;
                if (items++) fputs(" | ", stdout);
                if (r == RTU_EDGE_RX_FRAME) {
                    printf("frame %u %u ", p.msg_id, p.seq);
                    put_hex(p.payload, p.payload_len);
                } else {
                    printf("error %s", rtu_edge_err_name(p.last_error));
                }
            }
            fputs(items ? " | counts" : "counts", stdout);
            for (k = 1; k < (int)RTU_EDGE_ERR_COUNT; k++)
                printf(" %s=%lu", rtu_edge_err_name((rtu_edge_err_t)k), (unsigned long)p.errors[k]);
            printf(" frames_ok=%lu pending=%lu\n", (unsigned long)p.frames_ok,
                   (unsigned long)(p.in_chunk || p.discarding));
            fflush(stdout);
            continue;
        }
        if (strcmp(cmd, "cartpole") == 0) {
            cartpole_t c;
            double x, xd, t, td;
            float obs[CARTPOLE_OBS_VALUES], reward;
            int terminal, truncated;
            size_t i;
            if (sscanf(line, "%*s %lf %lf %lf %lf %s", &x, &xd, &t, &td, arg) != 5) return 2;
            cartpole_init(&c, 0);
            cartpole_set_state(&c, x, xd, t, td);
            for (i = 0; arg[i]; i++) {
                cartpole_step(&c, arg[i] == '1', obs, &reward, &terminal, &truncated);
                printf("%s%.17g %.17g %.17g %.17g %d", i ? " | " : "", c.x, c.x_dot, c.theta,
                       c.theta_dot, terminal);
            }
            putchar('\n');
            fflush(stdout);
            continue;
        }
        if (sscanf(line, "%*s %s", arg) != 1) strcpy(arg, "-");
        n = from_hex(arg, in, sizeof in);
        if (strcmp(cmd, "crc") == 0) {
            printf("%08lx\n", (unsigned long)rtu_edge_crc32(in, n));
        } else if (strcmp(cmd, "cobs") == 0) {
            put_hex(out, rtu_edge_cobs_encode(in, n, out, sizeof out));
            putchar('\n');
        } else if (strcmp(cmd, "uncobs") == 0) {
            int32_t m = rtu_edge_cobs_decode(in, n, out, sizeof out);
            if (m < 0) {
                printf("error %s\n", rtu_edge_err_name((rtu_edge_err_t)-m));
            } else {
                put_hex(out, (size_t)m);
                putchar('\n');
            }
        } else {
            printf("unknown command %s\n", cmd);
        }
        fflush(stdout);
    }
    return 0;
}
