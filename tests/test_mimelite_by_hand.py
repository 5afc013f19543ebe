"""MimeLite worked out by hand on the two tiny clients, beta = 1/2.

Model, clients and steps as in test_fedavg_by_hand.py: ``pred = w * x + b``,
loss ``0.5 * (pred - y)^2``, one full-batch step a round with lr 1/4
(``optax.sgd``), example weights 1/4 (A) and 3/4 (B), server SGD lr 1. A
local step moves by lr * ((1 - beta) * g + beta * m); the gradient at x of
each client is its full-batch gradient there.

Round 1 from x0 = (1, 0), m0 = 0:
  g_A(x0) = (-1, -1/2), g_B(x0) = (1/2, -1/2) (test_fedavg_by_hand.py)
  delta_A = 1/4 * 1/2 * g_A = (-1/8, -1/16);  delta_B = (1/16, -1/16)
  mean delta = (-1/32 + 3/64, -1/64 - 3/64) = (1/64, -1/16)
  x1 = (63/64, 1/16)
  m1 = 1/2 * (1/4 g_A + 3/4 g_B) = 1/2 * (1/8, -1/2) = (1/16, -1/4)

Round 2 from x1 = (63/64, 1/16), m1 = (1/16, -1/4):
  A: r = [3/64, -62/64]; g_A = (-121/128, -59/128)
     direction = 1/2 g_A + 1/2 m1 = (-121/256 + 8/256, -59/256 - 32/256)
               = (-113/256, -91/256)
     delta_A = 1/4 * direction = (-113/1024, -91/1024)
  B: r = 63/64 x + 1/16 - y = [-58, -59, -60, 3, 2, 1] / 64
     g_B = (mean(r * x), mean(r)) = (185/384, -57/128)
     direction = (185/768 + 24/768, -57/256 - 32/256) = (209/768, -89/256)
     delta_B = (209/3072, -89/1024)
  mean delta = (-339/12288 + 627/12288, -91/4096 - 267/4096)
             = (3/128, -179/2048)
  x2 = (63/64 - 3/128, 1/16 + 179/2048) = (123/128, 307/2048)
  m2 = 1/2 * (1/4 g_A + 3/4 g_B) + 1/2 m1
     = 1/2 * (1/8, -115/256) + (1/32, -1/8) = (3/32, -179/512)
"""

import jax
import numpy as np
import optax

import fedjax_engine as fe


def test_mimelite_two_rounds(linear_model, two_clients):
  algorithm = fe.algorithms.mimelite(linear_model,
                                     client_optimizer=optax.sgd(0.25),
                                     momentum=0.5)
  rnd = fe.make_round(algorithm, two_clients, clients_per_round=2,
                      batching=fe.Batching(batch_size=6, local_steps=1))
  state = algorithm.init(linear_model.init(jax.random.key(0)))
  expected = [((63 / 64, 1 / 16), (1 / 16, -1 / 4)),
              ((123 / 128, 307 / 2048), (3 / 32, -179 / 512))]
  for r, (x, m) in enumerate(expected):
    state, _, _ = rnd(state, (), rnd.select([0, 1]), jax.random.key(r))
    np.testing.assert_allclose([state.params['w'], state.params['b']], x,
                               rtol=1e-6)
    np.testing.assert_allclose([state.momentum['w'], state.momentum['b']], m,
                               rtol=1e-6)
