"""FedBuff worked out by hand on the two tiny clients, max_staleness = 1.

Model, clients and steps as in test_fedavg_by_hand.py: ``pred = w * x + b``,
loss ``0.5 * (pred - y)^2``, one full-batch SGD step a round with lr 1/4 (batch
6), so a client's delta ``y_0 - y_1`` is ``1/4`` of its gradient at the model
it starts from. Client A: x = [1, 2], y = [1, 3]; client B: x = [-2, -1, 0, 1,
2, 3], y = [-1, 0, 1, 1, 2, 3]. Uniform weighting (the paper's mean over the
buffer of K = 2), server SGD with lr 1:

  w <- w - (s(tau_A) * Delta_A + s(tau_B) * Delta_B) / 2

with s(0) = 1 and s(1) = 1/sqrt(2) =: c (exponent 1/2). A gradient at (w, b)
is g = (mean(r * x), mean(r)), r = w * x + b - y.

Round 1 (round 0): tau is drawn from {0, ..., min(1, 0)} = {0}, so both
clients start from w0 = (1, 0):
  A: r = [0, -1], g = (-1, -1/2),  Delta_A0 = (-1/4, -1/8)
  B: r = [-1, -1, -1, 0, 0, 0], g = (1/2, -1/2),  Delta_B0 = (1/8, -1/8)
  w1 = (1, 0) - ((-1/4 + 1/8)/2, (-1/8 - 1/8)/2) = (17/16, 1/8)
  The ring holds [w1, w0]; the mean staleness is 0.

Round 2: each client starts from w1 (tau = 0, weight 1) or w0 (tau = 1,
weight c). From w0 the deltas are those of round 1. From w1 = (17/16, 1/8):
  A: r = [17/16 + 1/8 - 1, 17/8 + 1/8 - 3] = [3/16, -3/4]
     g = ((3/16 - 3/2)/2, (3/16 - 3/4)/2) = (-21/32, -9/32)
     Delta_A1 = (-21/128, -9/128)
  B: r = [-16, -15, -14, 3, 4, 5] / 16, r * x = [32, 15, 0, 3, 8, 15] / 16
     g = (73/16/6, -33/16/6) = (73/96, -11/32)
     Delta_B1 = (73/384, -11/128)
The four outcomes, (tau_A, tau_B) -> w2 = w1 - mean:
  (0, 0): mean = ((-63/384 + 73/384)/2, (-9/128 - 11/128)/2)
               = (5/384, -5/64)
          w2 = (17/16 - 5/384, 1/8 + 5/64) = (403/384, 13/64)
  (1, 0): mean = ((-c/4 + 73/384)/2, (-c/8 - 11/128)/2)
          w2 = (17/16 + c/8 - 73/768, 1/8 + c/16 + 11/256)
  (0, 1): mean = ((-21/128 + c/8)/2, (-9/128 - c/8)/2)
          w2 = (17/16 + 21/256 - c/16, 1/8 + 9/256 + c/16)
  (1, 1): mean = ((-c/4 + c/8)/2, (-c/8 - c/8)/2) = (-c/16, -c/8)
          w2 = (17/16 + c/16, 1/8 + c/8)
  (about (1.0495, 0.2031), (1.0558, 0.2122), (1.1003, 0.2044), (1.1067,
  0.2134): distinct.) The mean staleness metric is (tau_A + tau_B) / 2, and
  the ring holds [w2, w1].

Renormalizing by the weights (dividing by (s_A + s_B) / 2) would give other
values for the three stale outcomes, e.g. w1 - mean(Delta_A0, Delta_B0) =
(9/8, 1/4) for (1, 1): the test tells the two apart.
"""

import math

import jax
import numpy as np
import optax
import pytest

import fedjax_engine as fe
from fedjax_engine.algorithms.fedbuff import fedbuff

C = 1 / math.sqrt(2)
W0 = (1.0, 0.0)
W1 = (17 / 16, 1 / 8)
ROUND_2 = {
    (0, 0): (403 / 384, 13 / 64),
    (1, 0): (17 / 16 + C / 8 - 73 / 768, 1 / 8 + C / 16 + 11 / 256),
    (0, 1): (17 / 16 + 21 / 256 - C / 16, 1 / 8 + 9 / 256 + C / 16),
    (1, 1): (17 / 16 + C / 16, 1 / 8 + C / 8),
}


def _check_data(data):
  """The clients the derivations above assume (conftest's two_clients)."""
  assert data.client(0)['x'].tolist() == [1, 2]
  assert data.client(0)['y'].tolist() == [1, 3]
  assert data.client(1)['x'].tolist() == [-2, -1, 0, 1, 2, 3]
  assert data.client(1)['y'].tolist() == [-1, 0, 1, 1, 2, 3]


def _pair(params):
  return np.array([params['w'], params['b']], np.float64)


def _ring(state):
  return [tuple(float(v) for v in _pair(p))
          for p in fe.tree.unstack(state.history)]


def test_fedbuff_two_rounds_all_staleness_outcomes(linear_model, two_clients):
  _check_data(two_clients)
  algorithm = fedbuff(linear_model, client_optimizer=optax.sgd(0.25),
                      max_staleness=1)
  rnd = fe.make_round(algorithm, two_clients, clients_per_round=2,
                      weighting='uniform',
                      batching=fe.Batching(batch_size=6, local_steps=1))
  drawn = []
  for k in range(12):
    # The round donates its inputs: every run starts from a fresh state.
    state = algorithm.init(linear_model.init(jax.random.key(0)))
    np.testing.assert_allclose(_ring(state), [W0, W0])
    state, _, metrics = rnd(state, (), rnd.select([0, 1]), jax.random.key(0))
    np.testing.assert_allclose(_pair(state.params), W1, rtol=1e-6)
    np.testing.assert_allclose(_ring(state), [W1, W0], rtol=1e-6)
    assert float(metrics['staleness']) == 0.0
    state, _, metrics = rnd(state, (), rnd.select([0, 1]),
                            jax.random.key(100 + k))
    w2 = _pair(state.params)
    matches = [taus for taus, want in ROUND_2.items()
               if np.allclose(w2, want, rtol=1e-6, atol=0)]
    assert len(matches) == 1, (w2, ROUND_2)
    taus = matches[0]
    np.testing.assert_allclose(float(metrics['staleness']), sum(taus) / 2)
    np.testing.assert_allclose(_ring(state), [ROUND_2[taus], W1], rtol=1e-6)
    assert int(state.round) == 2
    drawn.append(taus)
  # Each client's staleness varies with the round key, A's and B's apart.
  assert {a for a, _ in drawn} == {0, 1}, drawn
  assert {b for _, b in drawn} == {0, 1}, drawn


def test_no_staleness_is_fedavg(linear_model, two_clients):
  def run(algorithm):
    rnd = fe.make_round(algorithm, two_clients, clients_per_round=2,
                        batching=fe.Batching(batch_size=6, local_steps=2))
    state = algorithm.init(linear_model.init(jax.random.key(0)))
    for r in range(2):
      state, _, _ = rnd(state, (), rnd.select([0, 1]), jax.random.key(r))
    return state

  buffered = run(fedbuff(linear_model, client_optimizer=optax.sgd(0.25),
                         max_staleness=0))
  averaged = run(fe.algorithms.fedavg(linear_model,
                                      client_optimizer=optax.sgd(0.25)))
  np.testing.assert_array_equal(_pair(buffered.params),
                                _pair(averaged.params))
  assert int(buffered.round) == int(averaged.round) == 2
  # The ring is the current model alone.
  assert _ring(buffered) == [tuple(float(v) for v in _pair(buffered.params))]


@pytest.mark.parametrize('bad', [dict(max_staleness=-1),
                                 dict(max_staleness=1.5),
                                 dict(staleness_exponent=-0.5),
                                 dict(staleness_exponent=math.inf)])
def test_bad_hyperparameters(linear_model, bad):
  with pytest.raises(ValueError, match=next(iter(bad))):
    fedbuff(linear_model, client_optimizer=optax.sgd(0.1), **bad)
