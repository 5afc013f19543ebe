"""FedDyn worked out by hand on the two tiny clients, alpha = 1.

Model, clients and steps as in test_fedavg_by_hand.py: ``pred = w * x + b``,
loss ``0.5 * (pred - y)^2``, one full-batch SGD step a round with lr 1/4,
uniform weighting; population N = 2 and both clients take part. A local
step follows grad L_i(w) - g_i + alpha * (w - theta); the first step starts
at theta, where the last term is 0.

Round 1 from theta0 = (1, 0), g_A = g_B = h = 0: FedAvg's first steps.
  A: w_A = (5/4, 1/8), change (1/4, 1/8);  g_A = -(1/4, 1/8)
  B: w_B = (7/8, 1/8), change (-1/8, 1/8); g_B = -(-1/8, 1/8) = (1/8, -1/8)
  mean change (1/16, 1/8);  h1 = -(1/16, 1/8)
  theta1 = theta0 + mean change - h1 = (1 + 1/8, 1/4) = (9/8, 1/4)

Round 2 from theta1 = (9/8, 1/4):
  A: r = [3/8, -1/2]: grad L_A = ((3/8 - 1)/2, (3/8 - 1/2)/2) = (-5/16, -1/16)
     minus g_A: (-5/16 + 1/4, -1/16 + 1/8) = (-1/16, 1/16)
     w_A = (9/8 + 1/64, 1/4 - 1/64) = (73/64, 15/64), change (1/64, -1/64)
     g_A = (-1/4 - 1/64, -1/8 + 1/64) = (-17/64, -7/64)
  B: r = 9/8 x + 1/4 - y = [-8, -7, -6, 3, 4, 5] / 8
     grad L_B = (mean(r * x), mean(r)) = ((16+7+0+3+8+15)/8/6, -9/8/6)
              = (49/48, -3/16)
     minus g_B: (49/48 - 6/48, -3/16 + 2/16) = (43/48, -1/16)
     w_B = (9/8 - 43/192, 1/4 + 1/64) = (173/192, 17/64),
     change (-43/192, 1/64);  g_B = (1/8 + 43/192, -1/8 - 1/64)
                                  = (67/192, -9/64)
  mean change ((3/192 - 43/192)/2, 0) = (-5/48, 0)
  h2 = h1 - mean change = (-1/16 + 5/48, -1/8) = (1/24, -1/8)
  theta2 = theta1 + mean change - h2 = (9/8 - 5/48 - 1/24, 1/4 + 1/8)
         = (47/48, 3/8)
"""

import jax
import numpy as np
import optax

import fedjax_engine as fe


def test_feddyn_two_rounds(linear_model, two_clients):
  algorithm = fe.algorithms.feddyn(linear_model,
                                   client_optimizer=optax.sgd(0.25), alpha=1.0)
  rnd = fe.make_round(algorithm, two_clients, clients_per_round=2,
                      weighting='uniform',
                      batching=fe.Batching(batch_size=6, local_steps=1))
  state = algorithm.init(linear_model.init(jax.random.key(0)))
  table = fe.testing.initial_table(algorithm, linear_model, two_clients)
  expected = [((9 / 8, 1 / 4), (-1 / 16, -1 / 8)),
              ((47 / 48, 3 / 8), (1 / 24, -1 / 8))]
  for r, (theta, h) in enumerate(expected):
    state, table, _ = rnd(state, table, rnd.select([0, 1]), jax.random.key(r))
    np.testing.assert_allclose([state.params['w'], state.params['b']], theta,
                               rtol=1e-6)
    np.testing.assert_allclose([state.h['w'], state.h['b']], h, rtol=1e-6)
  np.testing.assert_allclose(np.asarray(table['w']), [-17 / 64, 67 / 192],
                             rtol=1e-6)
  np.testing.assert_allclose(np.asarray(table['b']), [-7 / 64, -9 / 64],
                             rtol=1e-6)
