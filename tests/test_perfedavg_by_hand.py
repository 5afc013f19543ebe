"""Per-FedAvg (first-order) worked out by hand on the two tiny clients.

The model is ``pred = w * x + b`` with loss ``0.5 * (pred - y)^2``; on a
batch the gradient is g = (mean(r * x), mean(r)), r = w * x + b - y. Client
A: x = [1, 2], y = [1, 3] (2 examples); client B: x = [-2, -1, 0, 1, 2, 3],
y = [-1, 0, 1, 1, 2, 3] (6 examples). Example weights 1/4 and 3/4. The
inner step is alpha = 1/2, the outer step SGD with beta = 1/4. A local step
on the pair of batches (D, D') is

  w_tmp = w - alpha * g(w; D);   w <- w - beta * g(w_tmp; D')

Two batches of 3 without shuffling, one local step (a pair), from (1, 0).
A's batches cycle through its data: D = [a0, a1, a0], D' = [a1, a0, a1]
with a0 = (1, 1), a1 = (2, 3). B's are its halves: D = x [-2, -1, 0],
y [-1, 0, 1]; D' = x [1, 2, 3], y [1, 2, 3].
  A: r on D = [0, -1, 0], g = (-2/3, -1/3), losses [0, 1/2, 0]
     w_tmp = (1 + 1/3, 1/6) = (4/3, 1/6)
     at w_tmp r(a0) = 1/2, r(a1) = -1/6; on D' r = [-1/6, 1/2, -1/6]
     g' = ((-1/3 + 1/2 - 1/3)/3, (1/6)/3) = (-1/18, 1/18)
     losses on D' [1/72, 1/8, 1/72], sum 11/72
     w = (1 + 1/72, -1/72) = (73/72, -1/72)
  B: r on D = [-1, -1, -1], r * x = [2, 1, 0]: g = (1, -1), losses sum 3/2
     w_tmp = (1/2, 1/2)
     on D' r = [0, -1/2, -1], r * x = [0, -1, -3]: g' = (-4/3, -1/2)
     losses on D' [0, 1/8, 1/2], sum 5/8
     w = (1 + 1/3, 1/8) = (4/3, 1/8)
  server: w = 1/4 * 73/72 + 3/4 * 4/3 = 73/288 + 1 = 361/288
          b = 1/4 * (-1/72) + 3/4 * 1/8 = -1/288 + 27/288 = 13/144
  train_loss (at w on D) = (1/2 + 3/2) / 6 = 1/3
  meta_loss (at w_tmp on D') = (11/72 + 45/72) / 6 = 7/54
(Using D again as D' would move A by g(w_tmp; D) = ((1/2 - 1/3 + 1/2)/3,
(1/2 - 1/6 + 1/2)/3) = (2/9, 5/18) instead: the test tells them apart.)

One batch of 6 (a lone batch is both D and D'), from (1, 0):
  A (its data three times, so full-batch gradients):
     g(1, 0) = (-1, -1/2): w_tmp = (3/2, 1/4)
     at w_tmp r = [3/4, 1/4], r * x = [3/4, 1/2]: g = (5/8, 1/2)
     w = (1 - 5/32, -1/8) = (27/32, -1/8)
  B: g(1, 0) = (1/2, -1/2): w_tmp = (3/4, 1/4)
     at w_tmp r = [-1/4, -1/2, -3/4, 0, -1/4, -1/2],
     r * x = [1/2, 1/2, 0, 0, -1/2, -3/2]: g = (-1/6, -3/8)
     w = (1 + 1/24, 3/32) = (25/24, 3/32)
  server: w = 27/128 + 25/32 = 127/128;  b = -1/32 + 9/128 = 5/128

Personalization of A from (1, 0), steps of alpha = 1/2 on the mean loss of
its batches ([a0, a1] and [a1, a0], and a padded step), i.e. its data:
  step 1: g = (-1, -1/2) (above): (3/2, 1/4)
  step 2: g(3/2, 1/4) = (5/8, 1/2) (above): (3/2 - 5/16, 0) = (19/16, 0)
"""

import jax
import numpy as np
import optax
import pytest

import fedjax_engine as fe
from fedjax_engine.algorithms.perfedavg import perfedavg


def _build(model, **kwargs):
  return perfedavg(model, client_optimizer=optax.sgd(0.25), inner_lr=0.5,
                   **kwargs)


def _one_round(model, data, batching):
  algorithm = _build(model)
  rnd = fe.make_round(algorithm, data, clients_per_round=2, batching=batching)
  state = algorithm.init(model.init(jax.random.key(0)))
  state, _, metrics = rnd(state, (), rnd.select([0, 1]), jax.random.key(0))
  return state, metrics


def test_paired_batches(linear_model, two_clients):
  state, metrics = _one_round(
      linear_model, two_clients,
      fe.Batching(batch_size=3, local_steps=2, shuffle=False))
  np.testing.assert_allclose([state.params['w'], state.params['b']],
                             [361 / 288, 13 / 144], rtol=1e-6)
  np.testing.assert_allclose(metrics['train_loss'], 1 / 3, rtol=1e-6)
  np.testing.assert_allclose(metrics['meta_loss'], 7 / 54, rtol=1e-6)
  assert int(state.round) == 1


def test_lone_batch_is_its_own_outer_batch(linear_model, two_clients):
  state, _ = _one_round(linear_model, two_clients,
                        fe.Batching(batch_size=6, local_steps=1))
  np.testing.assert_allclose([state.params['w'], state.params['b']],
                             [127 / 128, 5 / 128], rtol=1e-6)


@pytest.mark.parametrize('steps, expected', [(0, (1.0, 0.0)),
                                             (1, (3 / 2, 1 / 4)),
                                             (2, (19 / 16, 0.0))])
def test_personalize(linear_model, steps, expected):
  algorithm = _build(linear_model, personal_steps=steps)
  state = algorithm.init(linear_model.init(jax.random.key(0)))
  f32 = lambda v: np.array(v, np.float32)
  # The third step is padding full of garbage.
  batches = {'x': f32([[1, 2], [2, 1], [50, -7]]),
             'y': f32([[1, 3], [3, 1], [9, 9]])}
  mask = np.array([[True, True], [True, True], [False, False]])
  params = jax.jit(algorithm.personalize)(state, (), batches, mask,
                                          jax.random.key(0))
  np.testing.assert_allclose([params['w'], params['b']], expected, rtol=1e-6,
                             atol=1e-7)


@pytest.mark.parametrize('kwargs', [{'inner_lr': -0.1},
                                    {'inner_lr': float('nan')},
                                    {'personal_steps': -1},
                                    {'personal_steps': 1.5}])
def test_rejects_bad_hyperparameters(linear_model, kwargs):
  name = next(iter(kwargs))
  with pytest.raises(ValueError, match=name):
    perfedavg(linear_model, client_optimizer=optax.sgd(0.1), **kwargs)
