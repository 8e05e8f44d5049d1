/* mcu_loop.c: see mcu_loop.h. Each handler cites the rule of docs/protocol.md it implements. */
#define RTU_EDGE_OBS_CAPACITY MCU_MAX_OBS_VALUES
#define RTU_EDGE_ACTION_CAPACITY MCU_MAX_ACTION_VALUES
#define RTU_EDGE_PREDICTION_CAPACITY MCU_MAX_PREDICTION_VALUES
#include "mcu_loop.h"

/* now is at or after t (wrap-safe, for instants less than 2^31 ms apart) */
static int reached(uint32_t now, uint32_t t) { return (int32_t)(now - t) >= 0; }

static void write_frame(mcu_t *m, const uint8_t *wire, int n) {
    if (n <= 0) {
        m->stats.tx_errors++;
        return;
    }
    m->port.write(m->port.ctx, wire, (size_t)n);
}

static void apply_safe(mcu_t *m) {
    m->plant.apply_safe(m->plant.ctx);
    m->stats.safe_applied++;
}

/* ---- outgoing frames --------------------------------------------------------------------- */

static void send_hello(mcu_t *m, uint32_t nonce, int accepted) {
    rtu_edge_hello_t h;
    h.protocol_version = RTU_EDGE_PROTOCOL_VERSION;
    h.schema_hash = RTU_EDGE_SCHEMA_HASH;
    h.boot_id = m->boot_id;
    h.nonce = nonce;
    h.obs_size = m->cfg.obs_values;
    h.action_size = m->cfg.action_values;
    h.num_actions = m->cfg.num_actions;
    h.obs_dtype = RTU_EDGE_DTYPE_F32;
    h.action_dtype = RTU_EDGE_DTYPE_F32;
    h.control_period_ms = m->cfg.control_period_ms;
    h.watchdog_ms = m->cfg.watchdog_ms;
    h.accepted = accepted ? 1u : 0u;
    write_frame(m, m->tx, rtu_edge_write_hello(m->tx, sizeof m->tx, m->tx_seq++, &h));
}

static void send_status(mcu_t *m, uint8_t event, uint32_t now) {
    rtu_edge_status_t s;
    s.armed = m->armed;
    s.watchdog_latched = m->latched;
    s.event = event;
    s.boot_id = m->boot_id;
    s.last_obs_seq = m->obs_seq;
    s.frames_ok = m->parser.frames_ok;
    s.frame_errors = rtu_edge_parser_error_total(&m->parser);
    s.watchdog_trips = m->stats.watchdog_trips;
    s.actions_applied = m->stats.actions_applied;
    s.actions_rejected = mcu_actions_rejected(m);
    m->last_status_at = now;
    m->stats.status_sent++;
    write_frame(m, m->tx, rtu_edge_write_status(m->tx, sizeof m->tx, m->tx_seq++, &s));
}

/* A new OBS (never a re-send): it takes the next seq and starts the watchdog (section 7). */
static void send_obs(mcu_t *m, uint8_t flags, float reward, uint32_t now) {
    rtu_edge_obs_t o;
    uint16_t i;
    o.flags = flags;
    o.reward = reward;
    o.obs_count = m->cfg.obs_values;
    for (i = 0; i < o.obs_count; i++) o.obs[i] = m->obs[i];
    m->obs_seq = m->tx_seq++;
    m->obs_wire_len = rtu_edge_write_obs(m->obs_wire, sizeof m->obs_wire, m->obs_seq, &o);
    m->awaiting = 1;
    m->obs_sent_at = m->last_obs_tx = now;
    m->stats.obs_sent++;
    write_frame(m, m->obs_wire, m->obs_wire_len);
}

/* ---- episodes ---------------------------------------------------------------------------- */

static void start_episode(mcu_t *m, uint32_t now) {
    m->plant.reset(m->plant.ctx, m->obs);
    m->need_reset = 0;
    m->in_episode = 1;
    m->ep_return = 0.0f;
    m->ep_len = 0;
    send_obs(m, RTU_EDGE_OBS_FLAGS_FIRST, 0.0f, now);
}

/* The episode is abandoned (no TERMINAL/TRUNCATED OBS is sent for it); the next ARM resets. */
static void interrupt_episode(mcu_t *m) {
    if (m->in_episode && m->ep_len > 0) m->stats.episodes_interrupted++;
    m->in_episode = 0;
    m->need_reset = 1;
}

/* Disarm and hold the safe state (HELLO_REQ, STOP, watchdog). */
static void disarm(mcu_t *m) {
    if (m->armed) interrupt_episode(m);
    apply_safe(m);
    m->armed = 0;
    m->awaiting = 0;
    m->stepping = 0;
}

/* One control period after the action: observe, then the next OBS with its flags. */
static void finish_step(mcu_t *m, uint32_t now) {
    float reward = 0.0f;
    int terminal = 0, truncated = 0;
    uint8_t flags = 0;
    m->stepping = 0;
    m->plant.observe(m->plant.ctx, m->obs, &reward, &terminal, &truncated);
    m->stats.steps++;
    m->ep_return += reward;
    m->ep_len++;
    if (terminal) flags |= RTU_EDGE_OBS_FLAGS_TERMINAL;
    if (truncated) flags |= RTU_EDGE_OBS_FLAGS_TRUNCATED;
    if (flags) {
        m->stats.episodes++;
        m->stats.return_sum += m->ep_return;
        m->in_episode = 0;
        m->need_reset = 1;
    }
    send_obs(m, flags, reward, now);
}

/* ---- incoming frames --------------------------------------------------------------------- */

static void on_hello_req(mcu_t *m, const uint8_t *payload, size_t len) {
    rtu_edge_hello_req_t r;
    int ok;
    if (rtu_edge_decode_hello_req(payload, len, &r) != RTU_EDGE_ERR_NONE) return;
    disarm(m); /* any state: safe action, disarmed; the latch is kept (section 5) */
    ok = r.protocol_version == RTU_EDGE_PROTOCOL_VERSION && r.schema_hash == RTU_EDGE_SCHEMA_HASH
        && r.obs_size == m->cfg.obs_values && r.action_size == m->cfg.action_values
        && r.num_actions == m->cfg.num_actions && r.obs_dtype == RTU_EDGE_DTYPE_F32
        && r.action_dtype == RTU_EDGE_DTYPE_F32;
    m->handshake_ok = (uint8_t)ok;
    m->stats.hellos++;
    if (!ok) m->stats.handshakes_refused++;
    send_hello(m, r.nonce, ok);
}

static void on_arm(mcu_t *m, const uint8_t *payload, size_t len, uint32_t now) {
    rtu_edge_arm_t a;
    if (rtu_edge_decode_arm(payload, len, &a) != RTU_EDGE_ERR_NONE) return;
    if (!m->handshake_ok || a.boot_id != m->boot_id) {
        m->stats.arms_refused++;
        send_status(m, RTU_EDGE_STATUS_EVENT_ARM_REFUSED, now);
        return;
    }
    if (m->armed) { /* the host re-sent ARM because our STATUS was lost: change nothing */
        send_status(m, RTU_EDGE_STATUS_EVENT_REPLY, now);
        return;
    }
    m->armed = 1;
    m->latched = 0;
    m->stats.arms++;
    send_status(m, RTU_EDGE_STATUS_EVENT_ARMED, now);
    interrupt_episode(m);
    start_episode(m, now);
}

static void on_stop(mcu_t *m, uint32_t now) {
    disarm(m);
    m->stats.stops++;
    send_status(m, RTU_EDGE_STATUS_EVENT_STOPPED, now);
}

static float clip(float v, const float *lo, const float *hi, uint16_t i, int *clipped) {
    if (lo != NULL && v < lo[i]) {
        *clipped = 1;
        return lo[i];
    }
    if (hi != NULL && v > hi[i]) {
        *clipped = 1;
        return hi[i];
    }
    return v;
}

/* An ACTION or PREDICTION arrived while disarmed or latched: tell the host with a
 * STATUS(REPLY), at most once per re-send period. */
static void reply_disarmed(mcu_t *m, uint32_t now) {
    if (!m->replied_disarmed || reached(now, m->last_disarmed_reply + m->resend_ms)) {
        m->replied_disarmed = 1;
        m->last_disarmed_reply = now;
        send_status(m, RTU_EDGE_STATUS_EVENT_REPLY, now);
    }
}

/* m->action holds an action for the latest OBS (the host's or the controller's): round a
 * discrete index, clip to the bounds, apply it and step (lock-step: now; else at the period). */
static void apply_and_step(mcu_t *m, uint32_t now) {
    uint16_t i;
    int clipped = 0;
    if (m->cfg.num_actions) {
        uint16_t index = rtu_edge_discrete_index(m->action[0], m->cfg.num_actions);
        if ((float)index != m->action[0]) clipped = 1;
        m->action[0] = (float)index;
    } else {
        for (i = 0; i < m->cfg.action_values; i++)
            m->action[i] = clip(m->action[i], m->cfg.action_low, m->cfg.action_high, i, &clipped);
    }
    if (clipped) m->stats.actions_clipped++;
    m->plant.apply(m->plant.ctx, m->action);
    if (m->cfg.control_period_ms == 0) {
        finish_step(m, now);
    } else { /* keep the pace: the next OBS one period after the previous one */
        m->stepping = 1;
        m->step_due_at = m->obs_sent_at + m->cfg.control_period_ms;
        if (reached(now, m->step_due_at)) finish_step(m, now);
    }
}

static void on_action(mcu_t *m, const uint8_t *payload, size_t len, uint32_t now) {
    rtu_edge_action_t a;
    uint16_t i;
    if (rtu_edge_decode_action(payload, len, &a) != RTU_EDGE_ERR_NONE
        || a.action_count != m->cfg.action_values) {
        m->stats.actions_stale++; /* cannot happen: the parser checked the agreed size */
        return;
    }
    if (!m->armed) { /* disarmed or latched */
        m->stats.actions_disarmed++;
        reply_disarmed(m, now);
        return;
    }
    if (!m->awaiting || a.obs_seq != m->obs_seq) { /* stale, or already answered */
        m->stats.actions_stale++;
        return;
    }
    for (i = 0; i < a.action_count; i++) {
        if (!rtu_edge_is_finite(a.action[i])) { /* rejected: hold safe, OBS stays unanswered */
            m->stats.actions_nonfinite++;
            apply_safe(m);
            return;
        }
    }
    m->awaiting = 0;
    if (m->need_reset) { /* it answers a TERMINAL/TRUNCATED OBS: values ignored, new episode */
        m->stats.actions_ended++;
        start_episode(m, now);
        return;
    }
    for (i = 0; i < a.action_count; i++) m->action[i] = a.action[i];
    m->stats.actions_applied++;
    apply_and_step(m, now);
}

/* Prediction mode (section 6): a PREDICTION is accepted under the rules of an ACTION (armed,
 * the latest unanswered OBS) and answers that OBS; the plant's controller then chooses the
 * action. Its values are kept in m->prediction and handed to the controller. */
static void on_prediction(mcu_t *m, const uint8_t *payload, size_t len, uint32_t now) {
    rtu_edge_prediction_t pr;
    uint16_t i;
    int finite;
    /* more values than this MCU holds (the parser checked the length is 2 + 4k, k >= 1) */
    if (rtu_edge_decode_prediction(payload, len, &pr) != RTU_EDGE_ERR_NONE) {
        m->stats.predictions_rejected++;
        return;
    }
    if (!m->armed) {
        m->stats.predictions_rejected++;
        reply_disarmed(m, now);
        return;
    }
    if (m->plant.control == NULL || !m->awaiting || pr.obs_seq != m->obs_seq) {
        m->stats.predictions_rejected++; /* no controller; stale, or already answered */
        return;
    }
    m->awaiting = 0;
    m->stats.predictions_accepted++;
    m->prediction_count = pr.prediction_count;
    finite = 1;
    for (i = 0; i < pr.prediction_count; i++) {
        m->prediction[i] = pr.prediction[i];
        finite = finite && rtu_edge_is_finite(pr.prediction[i]);
    }
    if (!finite) m->stats.predictions_nonfinite++;
    if (m->need_reset) { /* it answers a TERMINAL/TRUNCATED OBS: a new episode */
        start_episode(m, now);
        return;
    }
    for (i = 0; i < m->cfg.action_values; i++) m->action[i] = 0.0f;
    m->plant.control(m->plant.ctx, m->obs, m->prediction, m->prediction_count, m->action);
    apply_and_step(m, now);
}

static void on_frame(mcu_t *m, uint32_t now) {
    const rtu_edge_parser_t *p = &m->parser;
    /* The seq of host frames is not checked: a new host process starts again at 0, and the
     * MCU must serve it (section 4). ACTIONs are matched by obs_seq alone. */
    switch (p->msg_id) {
    case RTU_EDGE_MSG_HELLO_REQ: on_hello_req(m, p->payload, p->payload_len); break;
    case RTU_EDGE_MSG_ARM: on_arm(m, p->payload, p->payload_len, now); break;
    case RTU_EDGE_MSG_STOP: on_stop(m, now); break;
    case RTU_EDGE_MSG_STATUS_REQ: send_status(m, RTU_EDGE_STATUS_EVENT_REPLY, now); break;
    case RTU_EDGE_MSG_ACTION: on_action(m, p->payload, p->payload_len, now); break;
    case RTU_EDGE_MSG_PREDICTION: on_prediction(m, p->payload, p->payload_len, now); break;
    default: m->stats.frames_ignored++; break; /* an MCU id: our own TX echoed back */
    }
}

/* ---- public ------------------------------------------------------------------------------ */

int mcu_init(mcu_t *m, const mcu_config_t *cfg, const mcu_plant_t *plant, const mcu_port_t *port,
             uint8_t *rx_buf, size_t rx_cap, uint32_t boot_id) {
    memset(m, 0, sizeof *m);
    if (cfg->obs_values < 1 || cfg->obs_values > MCU_MAX_OBS_VALUES) return -1;
    if (cfg->action_values < 1 || cfg->action_values > MCU_MAX_ACTION_VALUES) return -1;
    if (cfg->num_actions != 0 && cfg->action_values != 1) return -1;
    if (plant->reset == NULL || plant->apply == NULL || plant->observe == NULL
        || plant->apply_safe == NULL || port->write == NULL || rx_buf == NULL)
        return -1;
    m->cfg = *cfg;
    m->plant = *plant;
    m->port = *port;
    m->boot_id = boot_id ? boot_id : 1u;
    m->need_reset = 1;
    if (cfg->resend_ms) {
        m->resend_ms = cfg->resend_ms;
    } else {
        uint16_t quarter = (uint16_t)(cfg->watchdog_ms / 4u);
        m->resend_ms = cfg->watchdog_ms == 0 || quarter > 50u ? 50u : quarter;
        if (m->resend_ms == 0) m->resend_ms = 1;
    }
    rtu_edge_parser_init(&m->parser, rx_buf, rx_cap, cfg->rx_timeout_ms);
    /* The MCU knows its sizes from the start: OBS/ACTION lengths are always checked. */
    rtu_edge_parser_set_sizes(&m->parser, cfg->obs_values, cfg->action_values);
    return 0;
}

void mcu_boot(mcu_t *m, uint32_t now_ms) {
    static const uint8_t zero = 0x00;
    (void)now_ms;
    apply_safe(m); /* boot disarmed, holding the safe state */
    m->port.write(m->port.ctx, &zero, 1);
    send_hello(m, 0, 0);
}

void mcu_on_byte(mcu_t *m, uint8_t byte, uint32_t now_ms) {
    if (rtu_edge_parser_feed(&m->parser, byte, now_ms) == RTU_EDGE_RX_FRAME) on_frame(m, now_ms);
}

void mcu_poll(mcu_t *m, uint32_t now) {
    (void)rtu_edge_parser_poll(&m->parser, now); /* a timed-out partial frame is counted */
    if (m->stepping && reached(now, m->step_due_at)) finish_step(m, now);
    if (m->armed && m->awaiting) {
        if (m->cfg.watchdog_ms && reached(now, m->obs_sent_at + m->cfg.watchdog_ms)) {
            /* no accepted ACTION in time: safe, disarm, latch (section 7) */
            m->stats.watchdog_trips++;
            m->latched = 1;
            disarm(m);
            send_status(m, RTU_EDGE_STATUS_EVENT_WATCHDOG, now);
        } else if (m->obs_wire_len > 0 && reached(now, m->last_obs_tx + m->resend_ms)) {
            m->last_obs_tx = now; /* the same bytes, same seq: the watchdog is not restarted */
            m->stats.obs_resent++;
            write_frame(m, m->obs_wire, m->obs_wire_len);
        }
    }
    /* While latched: STATUS(HEARTBEAT) once watchdog_ms has passed since the last STATUS. */
    if (m->latched && m->cfg.watchdog_ms && reached(now, m->last_status_at + m->cfg.watchdog_ms))
        send_status(m, RTU_EDGE_STATUS_EVENT_HEARTBEAT, now);
}

static uint32_t until(uint32_t now, uint32_t t, uint32_t best) {
    uint32_t d = reached(now, t) ? 0u : (uint32_t)(t - now);
    return d < best ? d : best;
}

uint32_t mcu_idle_ms(const mcu_t *m, uint32_t now, uint32_t max_ms) {
    uint32_t best = max_ms;
    if (m->stepping) best = until(now, m->step_due_at, best);
    if (m->armed && m->awaiting) {
        if (m->cfg.watchdog_ms) best = until(now, m->obs_sent_at + m->cfg.watchdog_ms, best);
        best = until(now, m->last_obs_tx + m->resend_ms, best);
    }
    if (m->latched && m->cfg.watchdog_ms)
        best = until(now, m->last_status_at + m->cfg.watchdog_ms, best);
    if ((m->parser.in_chunk || m->parser.discarding) && m->parser.timeout_ms)
        best = until(now, m->parser.last_byte_ms + m->parser.timeout_ms, best);
    return best;
}

void mcu_reboot(mcu_t *m, uint32_t new_boot_id, uint32_t now_ms) {
    if (m->in_episode) interrupt_episode(m);
    m->boot_id = new_boot_id ? new_boot_id : 1u;
    m->armed = m->latched = m->handshake_ok = m->awaiting = m->stepping = 0;
    m->replied_disarmed = 0;
    m->need_reset = 1;
    m->tx_seq = 0;
    m->obs_seq = 0;
    m->obs_wire_len = 0;
    rtu_edge_parser_reset(&m->parser);
    m->stats.reboots++;
    mcu_boot(m, now_ms);
}

uint32_t mcu_actions_rejected(const mcu_t *m) {
    return m->stats.actions_stale + m->stats.actions_disarmed + m->stats.actions_nonfinite
        + m->stats.predictions_rejected;
}

uint32_t mcu_make_boot_id(const uint8_t *entropy, size_t n) {
    uint32_t id = rtu_edge_crc32(entropy, n);
    return id ? id : 0x5EEDu;
}
