/* rtu_edge_mcu.ino: rtu-edge firmware for an Arduino-class board (example).
 *
 * The protocol loop is firmware/examples/common/mcu_loop.c, shared with the POSIX build; this
 * file only wires it to the board: Serial, millis(), the sensors and the motor, a boot id, and
 * the AVR hardware watchdog. `make -C firmware arduino-sketch` copies the library and the loop
 * into src/ next to this file (Arduino compiles a sketch's src/ folder); then build and flash
 * with the Arduino IDE or arduino-cli (docs/firmware.md).
 *
 * Two plants, chosen below:
 *   RTU_EDGE_SIM_PLANT 1: the board simulates CartPole-P itself (the same cartpole.c as the
 *     POSIX program). Bring-up without hardware: `rtu-edge run` learns against the board.
 *   RTU_EDGE_SIM_PLANT 0: a cart-pole rig: cart position and pole angle from two
 *     potentiometers, a DC motor through an H-bridge (PWM + direction), pushing left or right.
 * Both have obs_size 2 and 2 discrete actions, as a bundle trained with the default
 * `rtu-edge train --env classic/CartPole-P`. */
#include <Arduino.h>
#ifdef __AVR__
#include <avr/wdt.h>
#endif

#include "src/cartpole.h"
#include "src/mcu_loop.h"

/* ---- configuration ----------------------------------------------------------------------- */

#ifndef RTU_EDGE_SIM_PLANT
#define RTU_EDGE_SIM_PLANT 1
#endif
#define RTU_EDGE_BAUD 1000000UL /* the host's default (rtu-edge run --baud) */
#define WATCHDOG_MS 500u        /* protocol watchdog: safe state + latch without an action */
#if RTU_EDGE_SIM_PLANT
#define CONTROL_PERIOD_MS 0u    /* lock-step: step as soon as the action arrives */
#else
#define CONTROL_PERIOD_MS 20u   /* 50 Hz, CartPole's tau */
#endif

/* Received frames are at most 29 bytes for this plant (HELLO_REQ, ACTION); 128 leaves room for
 * a later protocol's longer HELLO_REQ and fits an Uno's 2 KiB of RAM. Boards with more RAM can
 * use RTU_EDGE_MAX_FRAME_BYTES. */
#if defined(__AVR__) && RAMEND < 0x1000
#define RX_BUFFER_BYTES 128u
#else
#define RX_BUFFER_BYTES RTU_EDGE_MAX_FRAME_BYTES
#endif

/* The rig (RTU_EDGE_SIM_PLANT 0). Calibrate the centre counts and scales for your hardware. */
#define PIN_CART_POS A0
#define PIN_POLE_ANGLE A1
#define PIN_MOTOR_PWM 5
#define PIN_MOTOR_DIR 4
#define PIN_ENTROPY A5              /* an unconnected analog pin: noise for the boot id */
#define CART_CENTER_COUNTS 512
#define CART_METERS_PER_COUNT 0.0047f /* 1023 counts over a 4.8 m CartPole track: scale yours */
#define POLE_UPRIGHT_COUNTS 512
#define POLE_RAD_PER_COUNT 0.00614f  /* a 360-degree pot over 1023 counts */
#define CART_LIMIT_M 2.4f
#define POLE_LIMIT_RAD 0.2094395f    /* 12 degrees */
#define MOTOR_PWM 255

/* ---- the plant --------------------------------------------------------------------------- */

#if RTU_EDGE_SIM_PLANT
static cartpole_t sim;
static int sim_action;
#else
static uint32_t rig_steps;

static void read_rig(float *obs) {
    obs[0] = (analogRead(PIN_CART_POS) - CART_CENTER_COUNTS) * CART_METERS_PER_COUNT;
    obs[1] = (analogRead(PIN_POLE_ANGLE) - POLE_UPRIGHT_COUNTS) * POLE_RAD_PER_COUNT;
}
#endif

static void plant_reset(void *ctx, float *obs) {
    (void)ctx;
#if RTU_EDGE_SIM_PLANT
    cartpole_reset(&sim, obs);
#else
    /* A real rig would re-centre the cart here (keep it short: the host's step timeout is
     * 0.5 s). This example starts wherever the operator holds the pole. */
    rig_steps = 0;
    read_rig(obs);
#endif
}

static void plant_apply(void *ctx, const float *action) {
    (void)ctx;
    int right = action[0] >= 0.5f; /* the loop already rounded it to 0 or 1 */
#if RTU_EDGE_SIM_PLANT
    sim_action = right;
#else
    digitalWrite(PIN_MOTOR_DIR, right ? HIGH : LOW);
    analogWrite(PIN_MOTOR_PWM, MOTOR_PWM);
#endif
}

static void plant_observe(void *ctx, float *obs, float *reward, int *terminal, int *truncated) {
    (void)ctx;
#if RTU_EDGE_SIM_PLANT
    cartpole_step(&sim, sim_action, obs, reward, terminal, truncated);
#else
    read_rig(obs);
    rig_steps++;
    *reward = 1.0f;
    *terminal = obs[0] < -CART_LIMIT_M || obs[0] > CART_LIMIT_M || obs[1] < -POLE_LIMIT_RAD
        || obs[1] > POLE_LIMIT_RAD;
    *truncated = rig_steps >= CARTPOLE_MAX_STEPS;
    if (*terminal) analogWrite(PIN_MOTOR_PWM, 0); /* do not push a fallen pole further */
#endif
}

/* Prediction mode (a `rtu-edge train --algo td` bundle answers each OBS with a PREDICTION):
 * this board's own controller acts, here a push toward the side the pole leans. The host's
 * prediction (e.g. of the return) is in prediction[0..n); this controller does not use it. */
static void plant_control(void *ctx, const float *obs, const float *prediction, uint16_t n,
                          float *action) {
    (void)ctx;
    (void)prediction;
    (void)n;
    action[0] = obs[1] > 0.0f ? 1.0f : 0.0f;
}

/* The safe state of this machine: motor off. (The protocol's safe action is whatever the
 * firmware decides is safe; it need not be one of the policy's actions.) */
static void plant_apply_safe(void *ctx) {
    (void)ctx;
#if !RTU_EDGE_SIM_PLANT
    analogWrite(PIN_MOTOR_PWM, 0);
#endif
}

/* ---- the port ---------------------------------------------------------------------------- */

static void port_write(void *ctx, const uint8_t *data, size_t n) {
    (void)ctx;
    Serial.write(data, n); /* blocks while the TX buffer is full: frames stay whole */
}

/* ---- setup and loop ---------------------------------------------------------------------- */

static mcu_t mcu;
static uint8_t rx_buf[RX_BUFFER_BYTES];

static uint32_t make_boot_id(void) {
    uint8_t entropy[36];
    for (int i = 0; i < 32; i++) entropy[i] = (uint8_t)(analogRead(PIN_ENTROPY) ^ micros());
    uint32_t t = micros();
    for (int i = 0; i < 4; i++) entropy[32 + i] = (uint8_t)(t >> (8 * i));
    return mcu_make_boot_id(entropy, sizeof entropy);
}

void setup() {
#ifdef __AVR__
    wdt_disable(); /* a watchdog reset left it running */
#endif
#if !RTU_EDGE_SIM_PLANT
    pinMode(PIN_MOTOR_PWM, OUTPUT);
    pinMode(PIN_MOTOR_DIR, OUTPUT);
#endif
    plant_apply_safe(NULL); /* safe before anything else */
    Serial.begin(RTU_EDGE_BAUD);

    uint32_t boot_id = make_boot_id();
#if RTU_EDGE_SIM_PLANT
    cartpole_init(&sim, boot_id);
#endif

    mcu_config_t cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.obs_values = CARTPOLE_OBS_VALUES;
    cfg.action_values = 1;
    cfg.num_actions = CARTPOLE_NUM_ACTIONS;
    cfg.control_period_ms = CONTROL_PERIOD_MS;
    cfg.watchdog_ms = WATCHDOG_MS;
    cfg.rx_timeout_ms = rtu_edge_rx_timeout_ms(RTU_EDGE_BAUD);
    mcu_plant_t plant = {NULL,          plant_reset,      plant_apply,
                         plant_observe, plant_apply_safe, plant_control};
    mcu_port_t port = {NULL, port_write};
    if (mcu_init(&mcu, &cfg, &plant, &port, rx_buf, sizeof rx_buf, boot_id) != 0) {
        for (;;) plant_apply_safe(NULL); /* a configuration bug: never run */
    }
    mcu_boot(&mcu, millis()); /* 0x00, then HELLO(nonce 0, accepted 0) */
#ifdef __AVR__
    wdt_enable(WDTO_250MS); /* a hung loop reboots: the host sees a new boot id */
#endif
}

void loop() {
#ifdef __AVR__
    wdt_reset();
#endif
    while (Serial.available() > 0) mcu_on_byte(&mcu, (uint8_t)Serial.read(), millis());
    mcu_poll(&mcu, millis()); /* watchdog, OBS re-sends, HEARTBEAT, partial-frame timeout */
}
