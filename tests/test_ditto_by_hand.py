"""Ditto worked out by hand on the two tiny clients, lambda = 1.

Model, clients and steps as in test_fedavg_by_hand.py (``pred = w * x + b``,
loss ``0.5 * (pred - y)^2``, one full-batch SGD step a round with lr 1/4,
example weights 1/4 and 3/4). The global model follows FedAvg; the personal
model v_k takes a step on F_k(v) + 1/2 * ||v - w^t||^2 from its own value.

Round 1 from w0 = (1, 0), v_A = v_B = w0:
  global: FedAvg's first round, w1 = (31/32, 1/8) (test_fedavg_by_hand.py)
  v_A: gradient (-1, -1/2), proximal 0: v_A = (5/4, 1/8)
  v_B: gradient (1/2, -1/2), proximal 0: v_B = (7/8, 1/8)
Round 2 from w1 = (31/32, 1/8):
  global: w2 = w1 - mean delta = (31/32 - 1/32, 1/8 + 51/512) = (15/16,
          115/512) (test_fedavgm_server_momentum's round without momentum)
  v_A: gradient at (5/4, 1/8) is (-3/16, 0); proximal (5/4 - 31/32, 0)
       = (9/32, 0); step (3/32, 0): v_A = (5/4 - 3/128, 1/8) = (157/128, 1/8)
  v_B: gradient at (7/8, 1/8) is (1/6, -7/16); proximal (-3/32, 0); step
       (7/96, -7/16): v_B = (7/8 - 7/384, 1/8 + 7/64) = (329/384, 15/64)
"""

import jax
import numpy as np
import optax

import fedjax_engine as fe


def test_ditto_two_rounds(linear_model, two_clients):
  algorithm = fe.algorithms.ditto(linear_model,
                                  client_optimizer=optax.sgd(0.25),
                                  ditto_lambda=1.0)
  rnd = fe.make_round(algorithm, two_clients, clients_per_round=2,
                      batching=fe.Batching(batch_size=6, local_steps=1))
  table = fe.testing.initial_table(algorithm, linear_model, two_clients)
  state = algorithm.init(linear_model.init(jax.random.key(0)))
  for r in range(2):
    state, table, _ = rnd(state, table, rnd.select([0, 1]), jax.random.key(r))
  np.testing.assert_allclose([state.params['w'], state.params['b']],
                             [15 / 16, 115 / 512], rtol=1e-6)
  np.testing.assert_allclose(np.asarray(table['w']), [157 / 128, 329 / 384],
                             rtol=1e-6)
  np.testing.assert_allclose(np.asarray(table['b']), [1 / 8, 15 / 64],
                             rtol=1e-6)
