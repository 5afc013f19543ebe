"""Mime worked out by hand on the two tiny clients, beta = 1/2, lr 1/4.

Model and clients as in test_fedavg_by_hand.py: ``pred = w * x + b``, loss
``0.5 * (pred - y)^2``, example weights 1/4 (A, 2 examples) and 3/4 (B, 6),
server SGD lr 1, client ``optax.sgd(1/4)``. A step moves by lr * d with
d = (1 - beta) * (g(y; b) - g(x; b) + c) + beta * m.

The gradient of one example (u, t) at p = (w, b) is (p . phi - t) * phi with
phi = (u, 1), so g(y; b) - g(x; b) = phi phi^T (y - x): the correction
depends on y - x only.

Two steps of one example each, unshuffled (``batch_size=1, local_steps=2,
shuffle=False``): A takes (1, 1) then (2, 3); B takes (-2, -1) then (-1, 0).
g_i(x) is the mean of its two examples' gradients at x. In the first step
y = x, so the correction is 0 and both clients move by d1 = 1/2 c + 1/2 m:
y1 = x - 1/4 d1. In the second step, phi being the client's second example,

  d2 = d1 + 1/2 phi phi^T (y1 - x) = d1 - 1/8 phi (phi . d1)
  delta = 1/4 (d1 + d2) = 1/4 (2 d1 - 1/8 phi (phi . d1))

Round 1 from x0 = (1, 0), m0 = 0:
  A at x0: residuals 0, -1; gradients (0, 0), (-2, -1); g_A = (-1, -1/2)
  B at x0: residuals -1, -1; gradients (2, -1), (1, -1); g_B = (3/2, -1)
  c1 = 1/4 g_A + 3/4 g_B = (-1/4 + 9/8, -1/8 - 3/4) = (7/8, -7/8)
  d1 = 1/2 c1 = (7/16, -7/16)
  A: phi = (2, 1), phi . d1 = 7/16
     delta_A = 1/4 (7/8 - 7/64, -7/8 - 7/128) = (49/256, -119/512)
  B: phi = (-1, 1), phi . d1 = -7/8
     delta_B = 1/4 (7/8 - 7/64, -7/8 + 7/64) = (49/256, -49/256)
  mean delta = (49/256, -119/2048 - 294/2048) = (49/256, -413/2048)
  x1 = (207/256, 413/2048);  m1 = 1/2 c1 = (7/16, -7/16)

Round 2 from x1, m1. Residuals r = (1656 u + 413 - 2048 t) / 2048:
  A: r = 21/2048, -2419/2048
     g_A = 1/2 (21 (1, 1) - 2419 (2, 1)) / 2048 = (-4817, -2398) / 4096
  B: r = -851/2048, -1243/2048
     g_B = 1/2 (-851 (-2, 1) - 1243 (-1, 1)) / 2048 = (2945, -2094) / 4096
  c2 = (-4817 + 3 * 2945, -2398 - 3 * 2094) / 16384
     = (4018, -8680) / 16384 = (2009/8192, -1085/2048)
  d1 = 1/2 c2 + 1/2 m1 = (2009/16384 + 3584/16384, -1085/4096 - 896/4096)
     = (5593/16384, -1981/4096)
  The mean delta is linear in the clients' phi phi^T:
    1/4 phi_A phi_A^T + 3/4 phi_B phi_B^T = 1/4 [[4, 2], [2, 1]]
      + 3/4 [[1, -1], [-1, 1]] = [[7/4, -1/4], [-1/4, 1]]
    mean delta = 1/4 (2 I - 1/8 [[7/4, -1/4], [-1/4, 1]]) d1
               = 1/128 [[57, 1], [1, 60]] d1
    (round 1 again: 1/128 (57 - 1, 1 - 60) * 7/16 = (49/256, -413/2048))
  mean delta = 1/128 ((57 * 5593 - 4 * 1981) / 16384,
                      (5593 - 240 * 1981) / 16384)
             = (310877/2097152, -469847/2097152)
  x2 = ((1695744 - 310877) / 2097152, (422912 + 469847) / 2097152)
     = (1384867/2097152, 892759/2097152)
  m2 = 1/2 c2 + 1/2 m1 = d1 = (5593/16384, -1981/4096)

Without the term g(y; b) - g(x; b), round 1's second steps would both move
by d1 again: mean delta (7/32, -7/32), not the above.

With one full-batch step a round (``batch_size=6, local_steps=1``) the only
step is at y = x, where the correction cancels: every client moves by
1/4 ((1 - beta) c + beta m), the cohort's mean of MimeLite's client moves
1/4 ((1 - beta) g_i(x) + beta m). The momentum is MimeLite's too, so the
rounds are MimeLite's (test_mimelite_by_hand.py): x1 = (63/64, 1/16),
m1 = (1/16, -1/4); x2 = (123/128, 307/2048), m2 = (3/32, -179/512).
"""

import jax
import numpy as np
import optax
import pytest

import fedjax_engine as fe
from fedjax_engine.algorithms.mime import mime


def _run(linear_model, two_clients, batching, expected):
  algorithm = mime(linear_model, client_optimizer=optax.sgd(0.25),
                   momentum=0.5)
  rnd = fe.make_round(algorithm, two_clients, clients_per_round=2,
                      batching=batching)
  state = algorithm.init(linear_model.init(jax.random.key(0)))
  for r, (x, m) in enumerate(expected):
    state, _, _ = rnd(state, (), rnd.select([0, 1]), jax.random.key(r))
    np.testing.assert_allclose([state.params['w'], state.params['b']], x,
                               rtol=1e-6)
    np.testing.assert_allclose([state.momentum['w'], state.momentum['b']], m,
                               rtol=1e-6)


def test_mime_two_rounds_two_steps(linear_model, two_clients):
  _run(linear_model, two_clients,
       fe.Batching(batch_size=1, local_steps=2, shuffle=False),
       [((207 / 256, 413 / 2048), (7 / 16, -7 / 16)),
        ((1384867 / 2097152, 892759 / 2097152),
         (5593 / 16384, -1981 / 4096))])


def test_mime_one_full_batch_step_is_mimelite(linear_model, two_clients):
  _run(linear_model, two_clients,
       fe.Batching(batch_size=6, local_steps=1),
       [((63 / 64, 1 / 16), (1 / 16, -1 / 4)),
        ((123 / 128, 307 / 2048), (3 / 32, -179 / 512))])


@pytest.mark.parametrize('momentum', [-0.1, 1.0, float('nan'), '0.9'])
def test_mime_rejects_bad_momentum(linear_model, momentum):
  with pytest.raises(ValueError, match='momentum'):
    mime(linear_model, client_optimizer=optax.sgd(0.1), momentum=momentum)



def test_mime_first_exchange_weighs_examples_and_ignores_padding(
    linear_model):
  # check_algorithm pads client_update's batches only; the gradient a client
  # sends in the first exchange must ignore padding as well, and weigh each
  # step by its examples. Steps [(2, 3), masked (7, 7)] and [(1, 1), (2, 3)]
  # at (1, 0): gradients (-2, -1), (0, 0), (-2, -1), mean (-4/3, -2/3) (a
  # mean of the steps' means would give (-3/2, -3/4)).
  algorithm = mime(linear_model, client_optimizer=optax.sgd(0.25))
  state = algorithm.init(linear_model.init(jax.random.key(0)))
  batches = {'x': np.array([[2, 7], [1, 2]], np.float32),
             'y': np.array([[3, 7], [1, 3]], np.float32)}
  mask = np.array([[True, False], [True, True]])
  garbage, garbage_mask = fe.testing.pad_batches(batches, mask, 2, 3,
                                                 np.random.default_rng(0))
  send = jax.jit(algorithm.prepare.client)
  for b, m in ((batches, mask), (garbage, garbage_mask)):
    sent = send(state, (), b, m, jax.random.key(0))
    np.testing.assert_allclose([sent['w'], sent['b']], [-4 / 3, -2 / 3],
                               rtol=1e-6)
