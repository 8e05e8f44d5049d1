/* rtu_edge_posix.c: the example firmware loop (mcu_loop.c) on a pseudo-terminal, playing the
 * CartPole-P plant (cartpole.c). Connect a real `rtu-edge run BUNDLE --port PTY` to it, with a
 * bundle trained on classic/CartPole-P (obs_size 2, discrete 2: the default env). A prediction
 * bundle (`rtu-edge train --algo td`) answers each OBS with a PREDICTION; then the plant's own
 * controller acts (--controller: random, the default, as `sim-robot` and training; lean, a
 * push toward the side the pole leans; none, which rejects every PREDICTION).
 *
 *   rtu_edge_posix [--link PATH] [--seed N] [--watchdog-ms N] [--boot-id N]
 *                  [--max-steps N] [--reboot-after-steps N] [--stats-json PATH]
 *                  [--controller random|lean|none]
 *
 * It prints the pty's path (and makes PATH a symlink to it), runs until SIGINT/SIGTERM or
 * --max-steps, then prints its counters (and writes them as JSON with --stats-json). */
#define _XOPEN_SOURCE 600

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#include "cartpole.h"
#include "mcu_loop.h"

typedef struct {
    cartpole_t pole;
    int action;
    uint32_t safe_holds;
    uint32_t rng; /* xorshift32 state of the random controller */
    int lean;     /* the lean controller instead of the random one */
} sim_plant_t;

static void plant_reset(void *ctx, float *obs) { cartpole_reset(&((sim_plant_t *)ctx)->pole, obs); }

static void plant_apply(void *ctx, const float *action) {
    ((sim_plant_t *)ctx)->action = action[0] >= 0.5f ? 1 : 0; /* already an exact index */
}

static void plant_observe(void *ctx, float *obs, float *reward, int *terminal, int *truncated) {
    sim_plant_t *s = (sim_plant_t *)ctx;
    cartpole_step(&s->pole, s->action, obs, reward, terminal, truncated);
}

/* Prediction mode: the robot's own controller chooses the action; the host only predicts. */
static void plant_control(void *ctx, const float *obs, const float *prediction, uint16_t n,
                          float *action) {
    sim_plant_t *s = (sim_plant_t *)ctx;
    (void)prediction;
    (void)n;
    if (s->lean) {
        action[0] = obs[1] > 0.0f ? 1.0f : 0.0f; /* the pole leans right: push right */
        return;
    }
    s->rng ^= s->rng << 13;
    s->rng ^= s->rng >> 17;
    s->rng ^= s->rng << 5;
    action[0] = (float)(s->rng >> 31); /* 0 or 1, uniform */
}

/* A simulated cart does not move while disarmed: the safe state is simply "not stepping". */
static void plant_apply_safe(void *ctx) { ((sim_plant_t *)ctx)->safe_holds++; }

typedef struct {
    int fd;
    uint32_t tx_dropped;
} pty_port_t;

/* Write everything, waiting up to 50 ms when the host is not reading; drop the rest then. */
static void port_write(void *ctx, const uint8_t *data, size_t n) {
    pty_port_t *p = (pty_port_t *)ctx;
    while (n > 0) {
        ssize_t k = write(p->fd, data, n);
        if (k > 0) {
            data += k;
            n -= (size_t)k;
        } else if (k < 0 && (errno == EAGAIN || errno == EINTR)) {
            struct pollfd w;
            w.fd = p->fd;
            w.events = POLLOUT;
            if (errno == EAGAIN && poll(&w, 1, 50) <= 0) {
                p->tx_dropped += (uint32_t)n;
                return;
            }
        } else {
            p->tx_dropped += (uint32_t)n;
            return;
        }
    }
}

static uint32_t now_ms(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint32_t)((uint64_t)t.tv_sec * 1000u + (uint64_t)t.tv_nsec / 1000000u);
}

static volatile sig_atomic_t stop_requested = 0;
static void on_signal(int sig) {
    (void)sig;
    stop_requested = 1;
}

static int open_pty(int *master, int *slave, char *path, size_t cap) {
    struct termios t;
    const char *name;
    *master = posix_openpt(O_RDWR | O_NOCTTY);
    if (*master < 0 || grantpt(*master) != 0 || unlockpt(*master) != 0) return -1;
    name = ptsname(*master);
    if (name == NULL || strlen(name) + 1 > cap) return -1;
    strcpy(path, name);
    /* Keep the slave open ourselves: the host may close and reopen it without the master
     * seeing a hang-up. Raw mode: no echo, no line editing, no CR/LF translation. */
    *slave = open(path, O_RDWR | O_NOCTTY);
    if (*slave < 0 || tcgetattr(*slave, &t) != 0) return -1;
    t.c_iflag &= (tcflag_t) ~(IGNBRK | BRKINT | PARMRK | ISTRIP | INLCR | IGNCR | ICRNL | IXON);
    t.c_oflag &= (tcflag_t)~OPOST;
    t.c_lflag &= (tcflag_t) ~(ECHO | ECHONL | ICANON | ISIG | IEXTEN);
    t.c_cflag &= (tcflag_t) ~(CSIZE | PARENB);
    t.c_cflag |= CS8;
    t.c_cc[VMIN] = 1;
    t.c_cc[VTIME] = 0;
    if (tcsetattr(*slave, TCSANOW, &t) != 0) return -1;
    return fcntl(*master, F_SETFL, fcntl(*master, F_GETFL) | O_NONBLOCK);
}

static int make_link(const char *target, const char *link) {
    char tmp[4096];
    if (snprintf(tmp, sizeof tmp, "%s.tmp%ld", link, (long)getpid()) >= (int)sizeof tmp) return -1;
    unlink(tmp);
    if (symlink(target, tmp) != 0) return -1;
    return rename(tmp, link); /* atomic: a reader never sees a missing link */
}

static void remove_link(const char *target, const char *link) {
    char buf[4096];
    ssize_t n = readlink(link, buf, sizeof buf - 1);
    if (n < 0) return;
    buf[n] = 0;
    if (strcmp(buf, target) == 0) unlink(link);
}

static unsigned long arg_number(const char *opt, const char *value) {
    char *end;
    unsigned long v;
    if (value == NULL) {
        fprintf(stderr, "rtu_edge_posix: %s needs a value\n", opt);
        exit(2);
    }
    v = strtoul(value, &end, 0);
    if (*value == 0 || *end != 0) {
        fprintf(stderr, "rtu_edge_posix: %s: not a number: %s\n", opt, value);
        exit(2);
    }
    return v;
}

static void print_stats(FILE *f, const mcu_t *m, const pty_port_t *port, int json) {
    const mcu_stats_t *s = &m->stats;
    const rtu_edge_parser_t *p = &m->parser;
    double mean = s->episodes ? s->return_sum / s->episodes : 0.0;
    int i;
    if (!json) {
        fprintf(f,
                "rtu_edge_posix: %lu steps, %lu episodes (mean return %.1f), %lu interrupted; "
                "frames ok %lu, frame errors %lu (",
                (unsigned long)s->steps, (unsigned long)s->episodes, mean,
                (unsigned long)s->episodes_interrupted, (unsigned long)p->frames_ok,
                (unsigned long)rtu_edge_parser_error_total(p));
        for (i = 1; i < (int)RTU_EDGE_ERR_COUNT; i++)
            fprintf(f, "%s%s %lu", i > 1 ? ", " : "", rtu_edge_err_name((rtu_edge_err_t)i),
                    (unsigned long)p->errors[i]);
        fprintf(f,
                "); actions applied %lu, rejected %lu; predictions accepted %lu, rejected %lu; "
                "watchdog trips %lu; obs sent %lu, re-sent %lu; tx dropped %lu bytes\n",
                (unsigned long)s->actions_applied, (unsigned long)mcu_actions_rejected(m),
                (unsigned long)s->predictions_accepted, (unsigned long)s->predictions_rejected,
                (unsigned long)s->watchdog_trips, (unsigned long)s->obs_sent,
                (unsigned long)s->obs_resent, (unsigned long)port->tx_dropped);
        return;
    }
    fprintf(f, "{\n  \"boot_id\": %lu,\n  \"mean_return\": %.6f,\n", (unsigned long)m->boot_id,
            mean);
#define FIELD(name, value) fprintf(f, "  \"%s\": %lu,\n", name, (unsigned long)(value))
    FIELD("steps", s->steps);
    FIELD("episodes", s->episodes);
    FIELD("episodes_interrupted", s->episodes_interrupted);
    FIELD("hellos", s->hellos);
    FIELD("handshakes_refused", s->handshakes_refused);
    FIELD("arms", s->arms);
    FIELD("arms_refused", s->arms_refused);
    FIELD("stops", s->stops);
    FIELD("obs_sent", s->obs_sent);
    FIELD("obs_resent", s->obs_resent);
    FIELD("status_sent", s->status_sent);
    FIELD("actions_applied", s->actions_applied);
    FIELD("actions_rejected", mcu_actions_rejected(m));
    FIELD("actions_stale", s->actions_stale);
    FIELD("actions_disarmed", s->actions_disarmed);
    FIELD("actions_nonfinite", s->actions_nonfinite);
    FIELD("actions_ended", s->actions_ended);
    FIELD("actions_clipped", s->actions_clipped);
    FIELD("predictions_accepted", s->predictions_accepted);
    FIELD("predictions_rejected", s->predictions_rejected);
    FIELD("predictions_nonfinite", s->predictions_nonfinite);
    FIELD("watchdog_trips", s->watchdog_trips);
    FIELD("safe_applied", s->safe_applied);
    FIELD("frames_ignored", s->frames_ignored);
    FIELD("reboots", s->reboots);
    FIELD("tx_errors", s->tx_errors);
    FIELD("tx_dropped_bytes", port->tx_dropped);
    FIELD("bytes_in", p->bytes_in);
    FIELD("frames_ok", p->frames_ok);
    FIELD("frame_errors", rtu_edge_parser_error_total(p));
    for (i = 1; i < (int)RTU_EDGE_ERR_COUNT; i++) {
        fprintf(f, "  \"err_%s\": %lu%s\n", rtu_edge_err_name((rtu_edge_err_t)i),
                (unsigned long)p->errors[i], i + 1 < (int)RTU_EDGE_ERR_COUNT ? "," : "");
    }
#undef FIELD
    fprintf(f, "}\n");
}

int main(int argc, char **argv) {
    const char *link = NULL, *stats_json = NULL, *controller = "random";
    unsigned long seed = 0, watchdog_ms = 500, max_steps = 0, reboot_after = 0, boot_id = 0;
    int master, slave, i, rebooted = 0;
    char path[256];
    static uint8_t rx_buf[RTU_EDGE_MAX_FRAME_BYTES];
    sim_plant_t sim;
    pty_port_t port;
    mcu_t mcu;
    mcu_config_t cfg;
    mcu_plant_t plant;
    mcu_port_t mport;
    struct sigaction sa;

    for (i = 1; i < argc; i++) {
        const char *opt = argv[i], *val = i + 1 < argc ? argv[i + 1] : NULL;
        if (strcmp(opt, "--link") == 0 && val) link = val;
        else if (strcmp(opt, "--stats-json") == 0 && val) stats_json = val;
        else if (strcmp(opt, "--controller") == 0 && val
                 && (strcmp(val, "random") == 0 || strcmp(val, "lean") == 0
                     || strcmp(val, "none") == 0))
            controller = val;
        else if (strcmp(opt, "--seed") == 0) seed = arg_number(opt, val);
        else if (strcmp(opt, "--watchdog-ms") == 0) watchdog_ms = arg_number(opt, val);
        else if (strcmp(opt, "--max-steps") == 0) max_steps = arg_number(opt, val);
        else if (strcmp(opt, "--reboot-after-steps") == 0) reboot_after = arg_number(opt, val);
        else if (strcmp(opt, "--boot-id") == 0) boot_id = arg_number(opt, val);
        else {
            fprintf(stderr,
                    "usage: rtu_edge_posix [--link PATH] [--seed N] [--watchdog-ms N] "
                    "[--boot-id N] [--max-steps N] [--reboot-after-steps N] "
                    "[--stats-json PATH] [--controller random|lean|none]\n");
            return 2;
        }
        i++;
    }
    if (watchdog_ms > 65535u) {
        fprintf(stderr, "rtu_edge_posix: --watchdog-ms is at most 65535\n");
        return 2;
    }
    if (open_pty(&master, &slave, path, sizeof path) != 0) {
        perror("rtu_edge_posix: pseudo-terminal");
        return 1;
    }
    if (link && make_link(path, link) != 0) {
        perror("rtu_edge_posix: --link");
        return 1;
    }

    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);

    cartpole_init(&sim.pole, (uint32_t)seed);
    sim.action = 0;
    sim.safe_holds = 0;
    sim.rng = (uint32_t)seed * 2654435761u + 0x9E3779B9u;
    if (sim.rng == 0) sim.rng = 1;
    sim.lean = strcmp(controller, "lean") == 0;
    port.fd = master;
    port.tx_dropped = 0;
    memset(&cfg, 0, sizeof cfg);
    cfg.obs_values = CARTPOLE_OBS_VALUES;
    cfg.action_values = 1;
    cfg.num_actions = CARTPOLE_NUM_ACTIONS;
    cfg.control_period_ms = 0; /* lock-step: a simulator steps as soon as the action arrives */
    cfg.watchdog_ms = (uint16_t)watchdog_ms;
    cfg.rx_timeout_ms = 50; /* a pty has no baud rate; generous, as the Python simulator */
    plant.ctx = &sim;
    plant.reset = plant_reset;
    plant.apply = plant_apply;
    plant.observe = plant_observe;
    plant.apply_safe = plant_apply_safe;
    plant.control = strcmp(controller, "none") == 0 ? NULL : plant_control;
    mport.ctx = &port;
    mport.write = port_write;
    if (boot_id == 0) {
        uint32_t entropy[3];
        struct timespec t;
        clock_gettime(CLOCK_REALTIME, &t);
        entropy[0] = (uint32_t)t.tv_nsec;
        entropy[1] = (uint32_t)t.tv_sec;
        entropy[2] = (uint32_t)getpid();
        boot_id = mcu_make_boot_id((const uint8_t *)entropy, sizeof entropy);
    }
    if (mcu_init(&mcu, &cfg, &plant, &mport, rx_buf, sizeof rx_buf, (uint32_t)boot_id) != 0) {
        fprintf(stderr, "rtu_edge_posix: bad configuration\n");
        return 1;
    }
    printf("rtu_edge_posix: CartPole-P (obs 2, discrete 2), boot id 0x%08lx, watchdog %lu ms, "
           "controller %s, on %s%s%s\n",
           (unsigned long)mcu.boot_id, watchdog_ms, controller, path, link ? " -> " : "",
           link ? link : "");
    printf("connect with: rtu-edge run BUNDLE --port %s\n", link ? link : path);
    fflush(stdout);

    mcu_boot(&mcu, now_ms());
    while (!stop_requested) {
        struct pollfd r;
        uint8_t buf[512];
        ssize_t n;
        uint32_t t = now_ms();
        if (max_steps && mcu.stats.steps >= max_steps) break;
        if (reboot_after && !rebooted && mcu.stats.steps >= reboot_after) {
            rebooted = 1;
            mcu_reboot(&mcu, mcu.boot_id * 2654435761u + 1u, t);
        }
        r.fd = master;
        r.events = POLLIN;
        if (poll(&r, 1, (int)mcu_idle_ms(&mcu, t, 20)) < 0 && errno != EINTR) break;
        n = read(master, buf, sizeof buf);
        t = now_ms();
        if (n > 0) {
            ssize_t k;
            for (k = 0; k < n; k++) mcu_on_byte(&mcu, buf[k], t);
        } else if (n < 0 && errno != EAGAIN && errno != EINTR && errno != EIO) {
            perror("rtu_edge_posix: read");
            break;
        }
        mcu_poll(&mcu, t);
    }

    print_stats(stdout, &mcu, &port, 0);
    fflush(stdout);
    if (stats_json) {
        FILE *f = fopen(stats_json, "w");
        if (f) {
            print_stats(f, &mcu, &port, 1);
            fclose(f);
        }
    }
    if (link) remove_link(path, link);
    close(slave);
    close(master);
    return 0;
}
