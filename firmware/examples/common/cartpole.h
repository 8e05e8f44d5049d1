/* cartpole.h: the CartPole-P plant simulated on the MCU side.
 *
 * The physics of gymnasium's CartPole-v1 (Euler integration, tau 0.02 s, force 10 N, the same
 * masses, pole length and failure thresholds, +1 reward on every step including the failing
 * one, a 500-step time limit), observed as rtu-edge's classic/CartPole-P: [cart position, pole
 * angle], both velocities hidden. Discrete actions: 0 pushes left, 1 pushes right. The start
 * state is drawn uniformly from [-0.05, 0.05]^4 with a small PRNG of its own (not numpy's, so
 * episodes differ from gymnasium's; a test checks that the dynamics agree step by step). */
#ifndef CARTPOLE_H
#define CARTPOLE_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define CARTPOLE_OBS_VALUES 2u
#define CARTPOLE_NUM_ACTIONS 2u
#define CARTPOLE_MAX_STEPS 500u

typedef struct {
    double x, x_dot, theta, theta_dot; /* full state, as in gymnasium (float64 there too) */
    uint32_t rng;                      /* xorshift32 state, never 0 */
    uint32_t steps;                    /* steps of the current episode */
} cartpole_t;

void cartpole_init(cartpole_t *c, uint32_t seed);
/* New episode: random start state; writes [x, theta]. */
void cartpole_reset(cartpole_t *c, float obs[CARTPOLE_OBS_VALUES]);
/* Set the full state (tests compare with gymnasium from the same state). */
void cartpole_set_state(cartpole_t *c, double x, double x_dot, double theta, double theta_dot);
/* One step of 0.02 s pushing left (action 0) or right (action 1). */
void cartpole_step(cartpole_t *c, int action, float obs[CARTPOLE_OBS_VALUES], float *reward,
                   int *terminal, int *truncated);

#ifdef __cplusplus
}
#endif

#endif /* CARTPOLE_H */
