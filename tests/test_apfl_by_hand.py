"""APFL worked out by hand on the two tiny clients, alpha_k = 1/2 at first.

Model, clients and steps as in test_fedavg_by_hand.py (``pred = w * x + b``,
loss ``0.5 * (pred - y)^2``, one full-batch SGD step a round with lr 1/4,
example weights 1/4 and 3/4). Client A: x = [1, 2], y = [1, 3]; client B:
x = [-2, -1, 0, 1, 2, 3], y = [-1, 0, 1, 1, 2, 3]. A gradient at (w, b) is
(mean(r * x), mean(r)), r = w * x + b - y; for A that is ((5w + 3b - 7)/2,
(3w + 2b - 4)/2), for B ((19w + 3b - 16)/6, (3w + 6b - 6)/6).

The local copy of the global model steps as FedAvg's does, so the global
model follows FedAvg: w1 = (31/32, 1/8), w2 = (15/16, 115/512)
(test_ditto_by_hand.py). The personal model steps by
``-lr * alpha_k * grad F_k(vbar_k)``, vbar_k = (v_k + w_k) / 2 at the
step's start.

Round 1 from w0 = v_A = v_B = (1, 0): vbar_k = w0.
  v_A: gradient (-1, -1/2); v_A = (1 + 1/8, 0 + 1/16) = (9/8, 1/16)
  v_B: gradient (1/2, -1/2); v_B = (1 - 1/16, 1/16) = (15/16, 1/16)
  alpha's gradient <v_k - w_k, grad> is 0: v_k = w_k.
Round 2 from w1 = (31/32, 1/8):
  A: vbar_A = ((9/8 + 31/32)/2, (1/16 + 1/8)/2) = (67/64, 3/32)
     r = [67/64 + 6/64 - 1, 134/64 + 6/64 - 3] = [9/64, -52/64]
     gradient ((9 - 104)/128, (9 - 52)/128) = (-95/128, -43/128)
     v_A = (9/8 + 95/1024, 1/16 + 43/1024) = (1247/1024, 107/1024)
     alpha gradient: v_A - w1 = (5/32, -1/16);
       5/32 * -95/128 + 1/16 * 43/128 = (-475 + 86)/4096 = -389/4096
  B: vbar_B = ((15/16 + 31/32)/2, 3/32) = (61/64, 3/32)
     gradient ((19 * 61/64 + 18/64 - 16)/6, (183/64 + 36/64 - 6)/6)
       = (153/384, -165/384) = (51/128, -55/128)
     v_B = (15/16 - 51/1024, 1/16 + 55/1024) = (909/1024, 119/1024)
     alpha gradient: v_B - w1 = (-1/32, -1/16);
       -1/32 * 51/128 + 1/16 * 55/128 = (-51 + 110)/4096 = 59/4096

Personalized model of A after round 2 with alpha fixed:
  (v_A + w2)/2 = ((1247 + 960)/2048, (107 + 230)/2048) = (2207/2048, 337/2048)

Adaptive alpha with alpha_lr = 8 (so that the projection shows): round 1
leaves alpha at 1/2; in round 2 (v and w update with the step's alpha 1/2,
so as above)
  alpha_A = clip(1/2 + 8 * 389/4096, 0, 1) = clip(1/2 + 389/512) = 1
  alpha_B = clip(1/2 - 8 * 59/4096) = 1/2 - 59/512 = 197/512
and B's personalized model is 197/512 * v_B + 315/512 * w2
  = ((197 * 909 + 315 * 960)/524288, (197 * 119 + 315 * 230)/524288)
  = (481473/524288, 95893/524288).
"""

import jax
import numpy as np
import optax
import pytest

import fedjax_engine as fe
from fedjax_engine.algorithms.apfl import apfl


def _two_rounds(linear_model, two_clients, **hyperparameters):
  algorithm = apfl(linear_model, client_optimizer=optax.sgd(0.25), alpha=0.5,
                   **hyperparameters)
  rnd = fe.make_round(algorithm, two_clients, clients_per_round=2,
                      batching=fe.Batching(batch_size=6, local_steps=1))
  table = fe.testing.initial_table(algorithm, linear_model, two_clients)
  state = algorithm.init(linear_model.init(jax.random.key(0)))
  for r in range(2):
    state, table, _ = rnd(state, table, rnd.select([0, 1]), jax.random.key(r))
  np.testing.assert_allclose([state.params['w'], state.params['b']],
                             [15 / 16, 115 / 512], rtol=1e-6)
  np.testing.assert_allclose(np.asarray(table.personal['w']),
                             [1247 / 1024, 909 / 1024], rtol=1e-6)
  np.testing.assert_allclose(np.asarray(table.personal['b']),
                             [107 / 1024, 119 / 1024], rtol=1e-6)
  return algorithm, state, table


def _personalize(algorithm, state, table, client):
  row = jax.tree.map(lambda t: t[client], table)
  params = algorithm.personalize(state, row, None, None, jax.random.key(0))
  return [params['w'], params['b']]


def test_apfl_fixed_alpha_two_rounds(linear_model, two_clients):
  algorithm, state, table = _two_rounds(linear_model, two_clients)
  np.testing.assert_allclose(np.asarray(table.alpha), [0.5, 0.5])
  np.testing.assert_allclose(_personalize(algorithm, state, table, 0),
                             [2207 / 2048, 337 / 2048], rtol=1e-6)


def test_apfl_adaptive_alpha_two_rounds(linear_model, two_clients):
  algorithm, state, table = _two_rounds(
      linear_model, two_clients, adaptive_alpha=True, alpha_lr=8.0)
  np.testing.assert_allclose(np.asarray(table.alpha), [1.0, 197 / 512],
                             rtol=1e-6)
  np.testing.assert_allclose(_personalize(algorithm, state, table, 1),
                             [481473 / 524288, 95893 / 524288], rtol=1e-6)


@pytest.mark.parametrize('bad', [{'alpha': 1.5}, {'alpha': -0.1},
                                 {'alpha_lr': -1.0}, {'alpha_lr': float('nan')},
                                 {'adaptive_alpha': 1}])
def test_apfl_rejects_bad_hyperparameters(linear_model, bad):
  name, = bad
  with pytest.raises(ValueError, match=name):
    apfl(linear_model, client_optimizer=optax.sgd(0.1), **bad)
