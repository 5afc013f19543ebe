"""q-FedAvg worked out by hand on the two tiny clients, q = 2, L = 4.

Model and clients as in test_fedavg_by_hand.py (``pred = w * x + b``, loss
``0.5 * (pred - y)^2``), one full-batch SGD step with lr 1/4 (so L = 1/lr =
4), uniform weighting, from w = (1, 0).

  F_A(w) = mean(0.5 * [0, -1]^2) = 1/4
  F_B(w) = mean(0.5 * [-1, -1, -1, 0, 0, 0]^2) = 1/4
  w_A = (5/4, 1/8):  dw_A = 4 * (w - w_A) = (-1, -1/2), ||dw_A||^2 = 5/4
  w_B = (7/8, 1/8):  dw_B = (1/2, -1/2),               ||dw_B||^2 = 1/2
  Delta_A = F_A^2 dw_A = (-1/16, -1/32);  Delta_B = (1/32, -1/32)
  h_A = 2 F_A ||dw_A||^2 + 4 F_A^2 = 5/8 + 1/4 = 7/8
  h_B = 2 F_B ||dw_B||^2 + 4 F_B^2 = 1/4 + 1/4 = 1/2
  w1 = w - (Delta_A + Delta_B) / (h_A + h_B)
     = (1 + (1/32) / (11/8), (1/16) / (11/8)) = (1 + 1/44, 1/22)

With q = 0 the step is the clients' plain mean, FedAvg's ((5/4 + 7/8)/2,
1/8) = (17/16, 1/8), whatever L.
"""

import jax
import numpy as np
import optax
import pytest

import fedjax_engine as fe


@pytest.mark.parametrize('q, lipschitz, expected', [
    (2.0, 4.0, (1 + 1 / 44, 1 / 22)),
    (0.0, 7.0, (17 / 16, 1 / 8)),
])
def test_qffl_one_round(linear_model, two_clients, q, lipschitz, expected):
  algorithm = fe.algorithms.qffl(linear_model,
                                 client_optimizer=optax.sgd(0.25), q=q,
                                 lipschitz=lipschitz)
  rnd = fe.make_round(algorithm, two_clients, clients_per_round=2,
                      weighting='uniform',
                      batching=fe.Batching(batch_size=6, local_steps=1))
  state = algorithm.init(linear_model.init(jax.random.key(0)))
  state, _, metrics = rnd(state, (), rnd.select([0, 1]), jax.random.key(0))
  np.testing.assert_allclose([state.params['w'], state.params['b']], expected,
                             rtol=1e-6)
  # start_loss: both clients' losses at w, 1/4, pooled over their examples.
  np.testing.assert_allclose(metrics['start_loss'], 1 / 4, rtol=1e-6)
