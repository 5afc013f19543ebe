"""Agnostic Federated Learning worked out by hand on the two tiny clients.

Model and clients as in test_fedavg_by_hand.py (``pred = w * x + b``, loss
``0.5 * (pred - y)^2``), one full-batch SGD step a round with lr 1/4, from
w0 = (1, 0); server SGD with lr 1. The population is N = 2. From the rule
(module docstring of afl.py): u_k = exp(s_k - log_norm) = N lambda_k,
s_k <- s_k + gamma L_k(w), w <- w - sum_S u_k delta_k / sum_S u_k,
log_norm <- log_norm + log1p(sum_S (u_k' - u_k) / N). gamma = 4 ln 3, so
that exp(gamma / 4) = 3.

Round 1, cohort {A} only, s_A = s_B = 0, log_norm = 0:
  L_A(w0) = mean(0.5 * [0, -1]^2) = 1/4;  u_A = 1
  w_A = (5/4, 1/8), delta_A = (-1/4, -1/8):  w1 = w0 - delta_A = (5/4, 1/8)
  s_A = gamma / 4 = ln 3, s_B = 0
  log_norm = log1p((3 - 1) / 2) = ln 2  (= log mean(3, 1))
Round 2, cohort {A, B}, from w1 = (5/4, 1/8):
  u_A = 3/2, u_B = 1/2 (lambda = (3/4, 1/4))
  A: r = [11/8 - 1, 21/8 - 3] = [3/8, -3/8]:  L_A = 9/128
     g_A = ((3/8 - 6/8)/2, 0) = (-3/16, 0),  delta_A = (-3/64, 0)
  B: r = 5/4 x + 1/8 - y = [-11, -9, -7, 3, 5, 7] / 8
     L_B = 0.5 * (121 + 81 + 49 + 9 + 25 + 49) / 64 / 6 = 167/384
     g_B = ((22 + 9 + 0 + 3 + 10 + 21)/8/6, -12/8/6) = (65/48, -1/4)
     delta_B = (65/192, -1/16)
  w2 = w1 - (3/4 delta_A + 1/4 delta_B)
     = (5/4 - (-9/256 + 65/768), 1/8 + 1/64) = (461/384, 9/64)
  s_A = ln 3 + gamma * 9/128 = (41/32) ln 3,  s_B = (167/96) ln 3
  log_norm = log mean(exp(s)) = log((3^(41/32) + 3^(167/96)) / 2)
  start_loss (A's 2 examples repeated to 6 in the batch, B's 6):
     (L_A + L_B) / 2 = 97/384
  mixture_loss = 3/4 L_A + 1/4 L_B = 27/512 + 167/1536 = 31/192

The cohort's example weights (A 2, B 6: the default weighting) play no
part. FedAvg with uniform weighting would reach w = 5/4 - 7/48 in round 2;
gamma = 0 does: from w1 = (5/4, 1/8) the plain mean delta is ((-3/64 +
65/192) / 2, -1/32) = (7/48, -1/32), w2 = (53/48, 5/32).
"""

import math

import jax
import numpy as np
import optax
import pytest

import fedjax_engine as fe

BATCHING = fe.Batching(batch_size=6, local_steps=1)


def _run(algorithm, model, data, cohorts, weighting='examples'):
  """Each round's (state, table, metrics), copied to the host (a round
  donates its inputs)."""
  rnd = fe.make_round(algorithm, data, clients_per_round=2,
                      weighting=weighting, batching=BATCHING)
  table = fe.testing.initial_table(algorithm, model, data)
  state = algorithm.init(model.init(jax.random.key(0)))
  history = []
  for r, ids in enumerate(cohorts):
    state, table, metrics = rnd(state, table, rnd.select(ids),
                                jax.random.key(r))
    history.append(jax.device_get((state, table, metrics)))
  return history


def test_afl_two_rounds(linear_model, two_clients):
  gamma = 4 * math.log(3)
  algorithm = fe.algorithms.afl(linear_model,
                                client_optimizer=optax.sgd(0.25),
                                lambda_lr=gamma)
  (state1, table1, _), (state2, table2, metrics2) = _run(
      algorithm, linear_model, two_clients, [[0], [0, 1]])
  np.testing.assert_allclose([state1.params['w'], state1.params['b']],
                             [5 / 4, 1 / 8], rtol=1e-6)
  np.testing.assert_allclose(np.asarray(table1), [math.log(3), 0.0],
                             rtol=1e-6)
  np.testing.assert_allclose(state1.log_norm, math.log(2), rtol=1e-6)
  np.testing.assert_allclose([state2.params['w'], state2.params['b']],
                             [461 / 384, 9 / 64], rtol=1e-6)
  np.testing.assert_allclose(
      np.asarray(table2), [41 / 32 * math.log(3), 167 / 96 * math.log(3)],
      rtol=1e-6)
  np.testing.assert_allclose(
      state2.log_norm,
      math.log((3 ** (41 / 32) + 3 ** (167 / 96)) / 2), rtol=1e-6)
  np.testing.assert_allclose(metrics2['start_loss'], 97 / 384, rtol=1e-6)
  np.testing.assert_allclose(metrics2['mixture_loss'], 31 / 192, rtol=1e-6)


def test_zero_lambda_lr_is_uniform_fedavg(linear_model, two_clients):
  cohorts = [[0], [0, 1]]
  afl = _run(fe.algorithms.afl(linear_model, client_optimizer=optax.sgd(0.25),
                               lambda_lr=0.0),
             linear_model, two_clients, cohorts)
  fedavg = _run(fe.algorithms.fedavg(linear_model,
                                     client_optimizer=optax.sgd(0.25)),
                linear_model, two_clients, cohorts, weighting='uniform')
  for (state, _, _), (expected, _, _) in zip(afl, fedavg):
    np.testing.assert_allclose([state.params['w'], state.params['b']],
                               [expected.params['w'], expected.params['b']],
                               rtol=1e-6)
  state = afl[-1][0]
  np.testing.assert_allclose([state.params['w'], state.params['b']],
                             [53 / 48, 5 / 32], rtol=1e-6)
  assert float(state.log_norm) == 0.0


@pytest.mark.parametrize('lambda_lr', [-0.1, float('nan'), '0.1'])
def test_bad_lambda_lr(linear_model, lambda_lr):
  with pytest.raises(ValueError, match='lambda_lr'):
    fe.algorithms.afl(linear_model, client_optimizer=optax.sgd(0.1),
                      lambda_lr=lambda_lr)
