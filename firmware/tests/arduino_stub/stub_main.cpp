/* The Arduino core's main() for the stand-in: setup(), then loop() a few hundred times while
 * the clock advances, then check that the board announced itself (0x00, HELLO) and answered a
 * HELLO_REQ fed to its Serial. Exit status 0 when it did. */
#include "Arduino.h"

#include <stdio.h>

#include "rtu_edge_proto.h"

StubSerial Serial;
static unsigned long clock_ms = 0;

unsigned long millis(void) { return clock_ms; }
unsigned long micros(void) { return clock_ms * 1000u + 7u; }
int analogRead(uint8_t pin) { return 500 + pin; }
void analogWrite(uint8_t, int) {}
void digitalWrite(uint8_t, uint8_t) {}
void pinMode(uint8_t, uint8_t) {}
void StubSerial::begin(unsigned long) { rx_len = rx_pos = tx_len = 0; }
int StubSerial::available(void) { return (int)(rx_len - rx_pos); }
int StubSerial::read(void) { return rx_pos < rx_len ? rx[rx_pos++] : -1; }
size_t StubSerial::write(const uint8_t *data, size_t n) {
    if (tx_len + n <= sizeof tx) {
        memcpy(tx + tx_len, data, n);
        tx_len += n;
    }
    return n;
}

void setup();
void loop();

int main() {
    setup();
    for (int i = 0; i < 100; i++, clock_ms++) loop();
    rtu_edge_hello_req_t req;
    memset(&req, 0, sizeof req);
    req.protocol_version = RTU_EDGE_PROTOCOL_VERSION;
    req.schema_hash = RTU_EDGE_SCHEMA_HASH;
    req.nonce = 0x12345678u;
    req.obs_size = 2;
    req.action_size = 1;
    req.num_actions = 2;
    req.obs_dtype = req.action_dtype = RTU_EDGE_DTYPE_F32;
    int n = rtu_edge_write_hello_req(Serial.rx, sizeof Serial.rx, 0, &req);
    Serial.rx_len = n > 0 ? (size_t)n : 0;
    for (int i = 0; i < 100; i++, clock_ms++) loop();

    static uint8_t buf[RTU_EDGE_MAX_FRAME_BYTES];
    rtu_edge_parser_t p;
    rtu_edge_parser_init(&p, buf, sizeof buf, 0);
    int hellos = 0, accepted = 0;
    for (size_t i = 0; i < Serial.tx_len; i++) {
        if (rtu_edge_parser_feed(&p, Serial.tx[i], 0) != RTU_EDGE_RX_FRAME) continue;
        rtu_edge_hello_t h;
        if (p.msg_id == RTU_EDGE_MSG_HELLO
            && rtu_edge_decode_hello(p.payload, p.payload_len, &h) == RTU_EDGE_ERR_NONE) {
            hellos++;
            if (h.nonce == req.nonce && h.accepted) accepted++;
        }
    }
    int ok = Serial.tx_len > 0 && Serial.tx[0] == 0x00 && hellos == 2 && accepted == 1
        && rtu_edge_parser_error_total(&p) == 0;
    printf("%s: %d HELLO frames, %d accepted\n", ok ? "ok" : "FAILED", hellos, accepted);
    return ok ? 0 : 1;
}
