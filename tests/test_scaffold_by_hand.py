"""SCAFFOLD (option II) worked out by hand on the two tiny clients.

The model, clients and update rule are those of test_fedavg_by_hand.py:
``pred = w * x + b``, loss ``0.5 * (pred - y)^2``, full-batch steps (batch 6)
with lr 1/4. Client A: x = [1, 2], y = [1, 3]; client B: x = [-2, -1, 0, 1,
2, 3], y = [-1, 0, 1, 1, 2, 3]. Uniform weighting (the paper's mean over
the cohort), server SGD with lr 1, one local step a round, two rounds. The
population is N = 2 and both clients take part: |S| / N = 1.

A gradient at (w, b) is g = (mean(r * x), mean(r)), r = w * x + b - y.

Round 1 from x0 = (1, 0), c = c_A = c_B = 0: no correction yet.
  A: g = (-1, -1/2);  y_A = (1 + 1/4, 0 + 1/8) = (5/4, 1/8);  c_A+ = g
  B: g = (1/2, -1/2); y_B = (1 - 1/8, 1/8) = (7/8, 1/8);      c_B+ = g
  x1 = mean(y) = ((5/4 + 7/8)/2, 1/8) = (17/16, 1/8)
  c1 = 0 + mean(c+ - 0) = ((-1 + 1/2)/2, (-1/2 - 1/2)/2) = (-1/4, -1/2)

Round 2 from x1 = (17/16, 1/8), c = (-1/4, -1/2):
  A: r = [17/16 + 1/8 - 1, 17/8 + 1/8 - 3] = [3/16, -3/4]
     g = ((3/16 - 3/2)/2, (3/16 - 3/4)/2) = (-21/32, -9/32)
     g - c_A + c = (-21/32 + 1 - 1/4, -9/32 + 1/2 - 1/2) = (3/32, -9/32)
     y_A = (17/16 - 3/128, 1/8 + 9/128) = (133/128, 25/128)
     c_A+ = g = (-21/32, -9/32);  c_A+ - c_A = (11/32, 7/32)
  B: r = 17/16 x + 1/8 - y = [-16, -15, -14, 3, 4, 5] / 16
     g = (mean(r * x), mean(r)) = ((32+15+0+3+8+15)/16/6, -33/16/6)
       = (73/96, -11/32)
     g - c_B + c = (73/96 - 1/2 - 1/4, -11/32 + 1/2 - 1/2) = (1/96, -11/32)
     y_B = (17/16 - 1/384, 1/8 + 11/128) = (407/384, 27/128)
     c_B+ = (73/96, -11/32);  c_B+ - c_B = (25/96, 5/32)
  x2 = ((399/384 + 407/384)/2, (25/128 + 27/128)/2) = (403/384, 13/64)
  c2 = c1 + mean(delta c) = (-1/4 + 29/96, -1/2 + 3/16) = (5/96, -5/16)

Plain FedAvg from x1 would move A by its uncorrected gradient, to (17/16 +
21/128, ...): the test tells the two apart.
"""

import jax
import numpy as np
import optax

import fedjax_engine as fe


def test_scaffold_two_rounds(linear_model, two_clients):
  algorithm = fe.algorithms.scaffold(linear_model,
                                     client_optimizer=optax.sgd(0.25))
  rnd = fe.make_round(algorithm, two_clients, clients_per_round=2,
                      weighting='uniform',
                      batching=fe.Batching(batch_size=6, local_steps=1))
  state = algorithm.init(linear_model.init(jax.random.key(0)))
  table = fe.testing.initial_table(algorithm, linear_model, two_clients)
  expected = [((17 / 16, 1 / 8), (-1 / 4, -1 / 2)),
              ((403 / 384, 13 / 64), (5 / 96, -5 / 16))]
  for r, (x, c) in enumerate(expected):
    state, table, _ = rnd(state, table, rnd.select([0, 1]), jax.random.key(r))
    np.testing.assert_allclose([state.params['w'], state.params['b']], x,
                               rtol=1e-6)
    np.testing.assert_allclose([state.control['w'], state.control['b']], c,
                               rtol=1e-6, atol=1e-7)
  # Each client's control variate is its last round's gradient.
  np.testing.assert_allclose(np.asarray(table['w']), [-21 / 32, 73 / 96],
                             rtol=1e-6)
  np.testing.assert_allclose(np.asarray(table['b']), [-9 / 32, -11 / 32],
                             rtol=1e-6)
