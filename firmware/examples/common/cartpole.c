/* cartpole.c: see cartpole.h. Constants and update order follow gymnasium's cartpole.py. */
#include "cartpole.h"

#include <math.h>

#define GRAVITY 9.8
#define MASSCART 1.0
#define MASSPOLE 0.1
#define TOTAL_MASS (MASSPOLE + MASSCART)
#define LENGTH 0.5 /* half the pole's length */
#define POLEMASS_LENGTH (MASSPOLE * LENGTH)
#define FORCE_MAG 10.0
#define TAU 0.02
#define X_THRESHOLD 2.4
#define THETA_THRESHOLD (12.0 * 2.0 * 3.14159265358979323846 / 360.0)

static uint32_t next_u32(cartpole_t *c) {
    uint32_t x = c->rng;
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    c->rng = x;
    return x;
}

/* uniform in [-0.05, 0.05) */
static double start_value(cartpole_t *c) {
    return ((double)next_u32(c) / 4294967296.0) * 0.1 - 0.05;
}

static void observe(const cartpole_t *c, float obs[CARTPOLE_OBS_VALUES]) {
    obs[0] = (float)c->x;
    obs[1] = (float)c->theta;
}

void cartpole_init(cartpole_t *c, uint32_t seed) {
    c->x = c->x_dot = c->theta = c->theta_dot = 0.0;
    c->rng = seed * 2654435761u + 0x9E3779B9u;
    if (c->rng == 0) c->rng = 1;
    c->steps = 0;
}

void cartpole_reset(cartpole_t *c, float obs[CARTPOLE_OBS_VALUES]) {
    c->x = start_value(c);
    c->x_dot = start_value(c);
    c->theta = start_value(c);
    c->theta_dot = start_value(c);
    c->steps = 0;
    observe(c, obs);
}

void cartpole_set_state(cartpole_t *c, double x, double x_dot, double theta, double theta_dot) {
    c->x = x;
    c->x_dot = x_dot;
    c->theta = theta;
    c->theta_dot = theta_dot;
    c->steps = 0;
}

void cartpole_step(cartpole_t *c, int action, float obs[CARTPOLE_OBS_VALUES], float *reward,
                   int *terminal, int *truncated) {
    double force = action == 1 ? FORCE_MAG : -FORCE_MAG;
    double costheta = cos(c->theta), sintheta = sin(c->theta);
    double temp = (force + POLEMASS_LENGTH * c->theta_dot * c->theta_dot * sintheta) / TOTAL_MASS;
    double thetaacc = (GRAVITY * sintheta - costheta * temp)
        / (LENGTH * (4.0 / 3.0 - MASSPOLE * costheta * costheta / TOTAL_MASS));
    double xacc = temp - POLEMASS_LENGTH * thetaacc * costheta / TOTAL_MASS;
    c->x = c->x + TAU * c->x_dot;
    c->x_dot = c->x_dot + TAU * xacc;
    c->theta = c->theta + TAU * c->theta_dot;
    c->theta_dot = c->theta_dot + TAU * thetaacc;
    c->steps++;
    *terminal = c->x < -X_THRESHOLD || c->x > X_THRESHOLD || c->theta < -THETA_THRESHOLD
        || c->theta > THETA_THRESHOLD;
    *truncated = c->steps >= CARTPOLE_MAX_STEPS; /* gymnasium's TimeLimit: both may be set */
    *reward = 1.0f;
    observe(c, obs);
}
