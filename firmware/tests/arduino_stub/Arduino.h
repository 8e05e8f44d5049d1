/* Arduino.h stand-in for compiling the example sketch on the build machine (make
 * arduino-check): just the calls the sketch makes. Not a simulator of any board. */
#ifndef ARDUINO_STUB_H
#define ARDUINO_STUB_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#define A0 14
#define A1 15
#define A5 19
#define OUTPUT 1
#define HIGH 1
#define LOW 0

unsigned long millis(void);
unsigned long micros(void);
int analogRead(uint8_t pin);
void analogWrite(uint8_t pin, int value);
void digitalWrite(uint8_t pin, uint8_t value);
void pinMode(uint8_t pin, uint8_t mode);

class StubSerial {
  public:
    void begin(unsigned long baud);
    int available(void);
    int read(void);
    size_t write(const uint8_t *data, size_t n);
    /* test side */
    uint8_t rx[256];
    size_t rx_len, rx_pos;
    uint8_t tx[4096];
    size_t tx_len;
};
extern StubSerial Serial;

#endif
