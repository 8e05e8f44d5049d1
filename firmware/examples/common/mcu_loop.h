/* mcu_loop.h: the MCU side of an rtu-edge session, written once for every board.
 *
 * The protocol logic of docs/protocol.md sections 5-7 (HELLO on boot, handshake, arming,
 * lock-step OBS/ACTION with episode flags, OBS re-sends, the watchdog and its latch, STOP,
 * STATUS with counters, HEARTBEAT while latched; prediction mode, where a PREDICTION answers an
 * OBS and the plant's own controller acts) against three small interfaces: a plant
 * (sensors and actuators, or a simulation), a port (write bytes) and a millisecond clock passed
 * into every call. No allocation, no globals: the Arduino sketch and the POSIX program both
 * drive one mcu_t.
 *
 *   mcu_init(&m, &cfg, &plant, &port, rx_buf, sizeof rx_buf, boot_id);
 *   mcu_boot(&m, now_ms());                     // 0x00, then the unsolicited HELLO
 *   for (;;) {
 *       while (byte available) mcu_on_byte(&m, byte, now_ms());
 *       mcu_poll(&m, now_ms());                 // timers: watchdog, re-send, heartbeat
 *   }
 *
 * Every time is a uint32_t millisecond count that may wrap (all comparisons are differences). */
#ifndef MCU_LOOP_H
#define MCU_LOOP_H

/* Room for the plant's arrays (float32 values). Edit here for a bigger plant: every file that
 * includes this header must see the same values. */
#define MCU_MAX_OBS_VALUES 16u
#define MCU_MAX_ACTION_VALUES 4u
/* Most values a PREDICTION may hold (prediction mode); one with more is rejected. */
#define MCU_MAX_PREDICTION_VALUES 4u

#include "rtu_edge_proto.h"

#ifdef __cplusplus
extern "C" {
#endif

/* The robot (or its simulation). Every callback gets ctx. */
typedef struct {
    void *ctx;
    /* Start an episode (a real rig may home the cart or wait for a person here) and write the
     * first observation: cfg.obs_values values. */
    void (*reset)(void *ctx, float *obs);
    /* Drive the actuators with an accepted action: finite, clipped to the configured bounds;
     * for discrete actions one value holding the index (0.0, 1.0, ...). */
    void (*apply)(void *ctx, const float *action);
    /* One control period after apply: the observation now, the reward of that step, and
     * whether the episode ended (terminal: a failure or goal state; truncated: a time limit). */
    void (*observe)(void *ctx, float *obs, float *reward, int *terminal, int *truncated);
    /* Hold the safe state at once: motors off or braked, whatever is safe for this machine. */
    void (*apply_safe)(void *ctx);
    /* Prediction mode (docs/protocol.md section 6): the robot's own controller. Called when a
     * PREDICTION answers the latest OBS, with that observation (cfg.obs_values values) and the
     * host's prediction values as sent (n of them, 1..MCU_MAX_PREDICTION_VALUES; the host
     * never sends non-finite ones); writes the action to apply: cfg.action_values values (for
     * discrete actions the index), rounded and clipped like a host's ACTION, then applied with
     * apply. NULL: this MCU takes only ACTIONs and rejects every PREDICTION. */
    void (*control)(void *ctx, const float *obs, const float *prediction, uint16_t n,
                    float *action);
} mcu_plant_t;

typedef struct {
    void *ctx;
    /* Send n bytes (one whole frame, or the single 0x00 at boot). */
    void (*write)(void *ctx, const uint8_t *data, size_t n);
} mcu_port_t;

typedef struct {
    uint16_t obs_values;        /* obs_size of the handshake */
    uint16_t action_values;     /* action_size (1 when discrete) */
    uint16_t num_actions;       /* 0: continuous; N: discrete, indices 0..N-1 */
    const float *action_low;    /* continuous: clip bounds, action_values each (NULL: none) */
    const float *action_high;
    uint16_t control_period_ms; /* 0: lock-step, the next OBS as soon as the action is applied */
    uint16_t watchdog_ms;       /* no accepted ACTION this long after an OBS: safe, latch.
                                   0: no watchdog, for simulated plants only */
    uint16_t resend_ms;         /* OBS re-send period; 0: min(50, watchdog_ms / 4) */
    uint32_t rx_timeout_ms;     /* silence that drops a partial frame: rtu_edge_rx_timeout_ms() */
} mcu_config_t;

typedef struct {
    uint32_t steps;                /* control steps taken (observe calls) */
    uint32_t episodes;             /* episodes that ended with TERMINAL or TRUNCATED */
    uint32_t episodes_interrupted; /* cut short by the watchdog, STOP, HELLO_REQ or a reboot */
    double return_sum;             /* sum of the returns of ended episodes */
    uint32_t hellos;               /* HELLO_REQ answered */
    uint32_t handshakes_refused;   /* ... with accepted = 0 */
    uint32_t arms, arms_refused, stops;
    uint32_t obs_sent, obs_resent, status_sent;
    uint32_t actions_applied;      /* STATUS.actions_applied */
    uint32_t actions_stale;        /* obs_seq not the latest OBS, or already answered */
    uint32_t actions_disarmed;     /* arrived while disarmed or latched */
    uint32_t actions_nonfinite;    /* NaN/Inf value: safe state held, OBS still unanswered */
    uint32_t actions_ended;        /* answered a TERMINAL/TRUNCATED OBS: values ignored */
    uint32_t actions_clipped;      /* outside the bounds (or not an integer index): clipped */
    uint32_t predictions_accepted; /* PREDICTIONs that answered the latest OBS: the controller
                                      acted (or, answering an episode's last OBS, a new one began) */
    uint32_t predictions_rejected; /* stale or already answered, disarmed or latched, no
                                      controller, more than MCU_MAX_PREDICTION_VALUES values */
    uint32_t predictions_nonfinite; /* accepted ones holding NaN/Inf (passed on as sent) */
    uint32_t watchdog_trips;
    uint32_t safe_applied;         /* apply_safe calls */
    uint32_t frames_ignored;       /* valid frames with an MCU id (0x80..): TX echoed to RX */
    uint32_t reboots;              /* mcu_reboot calls */
    uint32_t tx_errors;            /* frames that did not fit their buffer (a bug) */
} mcu_stats_t;

typedef struct {
    mcu_config_t cfg;
    mcu_plant_t plant;
    mcu_port_t port;
    rtu_edge_parser_t parser;
    uint32_t boot_id;
    uint16_t tx_seq;        /* seq of the next frame sent */
    uint16_t obs_seq;       /* seq of the latest OBS (0 before the first) */
    uint8_t armed;
    uint8_t latched;        /* watchdog latch: only an accepted ARM clears it */
    uint8_t handshake_ok;   /* the last HELLO_REQ was accepted */
    uint8_t awaiting;       /* the latest OBS has not been answered */
    uint8_t stepping;       /* an action is applied; the next OBS is due at step_due_at */
    uint8_t need_reset;     /* the next episode starts with plant.reset */
    uint8_t in_episode;
    uint8_t replied_disarmed; /* last_disarmed_reply is set */
    uint16_t resend_ms;     /* effective re-send period */
    uint32_t obs_sent_at;   /* when the latest OBS was first sent (watchdog start) */
    uint32_t last_obs_tx;   /* when it was last (re-)sent */
    uint32_t last_status_at;
    uint32_t last_disarmed_reply;
    uint32_t step_due_at;
    uint32_t ep_len;
    float ep_return;
    float obs[MCU_MAX_OBS_VALUES];
    float action[MCU_MAX_ACTION_VALUES];
    float prediction[MCU_MAX_PREDICTION_VALUES]; /* the last accepted PREDICTION's values */
    uint16_t prediction_count;                   /* ... and how many (0: none yet) */
    uint8_t obs_wire[RTU_EDGE_WIRE_BYTES(RTU_EDGE_OBS_PAYLOAD_BYTES(MCU_MAX_OBS_VALUES))];
    int obs_wire_len;       /* the latest OBS on the wire, re-sent byte for byte */
    uint8_t tx[RTU_EDGE_WIRE_BYTES(RTU_EDGE_STATUS_PAYLOAD_BYTES)]; /* HELLO and STATUS */
    mcu_stats_t stats;
} mcu_t;

/* Check cfg (sizes within MCU_MAX_*, num_actions consistent) and set everything up, disarmed.
 * rx_buf[0..rx_cap) holds one received frame: RTU_EDGE_MAX_FRAME_BYTES takes any frame; a
 * small MCU may give less (a longer frame is then counted as too long). boot_id: a random
 * non-zero value drawn at this boot. Returns 0, or -1 for a bad configuration. */
int mcu_init(mcu_t *m, const mcu_config_t *cfg, const mcu_plant_t *plant, const mcu_port_t *port,
             uint8_t *rx_buf, size_t rx_cap, uint32_t boot_id);

/* Announce this boot: apply the safe state, send 0x00 (ends any partial frame at the host) and
 * the unsolicited HELLO (nonce 0, accepted 0). Call once, right after mcu_init. */
void mcu_boot(mcu_t *m, uint32_t now_ms);

/* One received byte. Frames are acted on when their 0x00 arrives. */
void mcu_on_byte(mcu_t *m, uint8_t byte, uint32_t now_ms);

/* Timers; call whenever no byte is waiting (at least every few milliseconds). */
void mcu_poll(mcu_t *m, uint32_t now_ms);

/* Milliseconds until mcu_poll has something to do (at most max_ms): how long to sleep. */
uint32_t mcu_idle_ms(const mcu_t *m, uint32_t now_ms, uint32_t max_ms);

/* Behave as a fresh boot with boot id new_boot_id (tests and simulated faults): disarmed, seq
 * 0, episode abandoned, then mcu_boot. Counters in m->stats are kept. */
void mcu_reboot(mcu_t *m, uint32_t new_boot_id, uint32_t now_ms);

/* STATUS.actions_rejected: stale + disarmed + non-finite ACTIONs, and rejected PREDICTIONs
 * (protocol.md: a PREDICTION is rejected and counted like an ACTION). */
uint32_t mcu_actions_rejected(const mcu_t *m);

/* A random non-zero boot id from whatever entropy the board has (timer jitter, ADC noise,
 * uninitialised RAM...), mixed through CRC-32. */
uint32_t mcu_make_boot_id(const uint8_t *entropy, size_t n);

#ifdef __cplusplus
}
#endif

#endif /* MCU_LOOP_H */
