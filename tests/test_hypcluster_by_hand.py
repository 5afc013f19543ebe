"""HypCluster worked out by hand on the two tiny clients.

The model is ``pred = w * x + b`` with loss ``0.5 * (pred - y)^2``; a
full-batch SGD step with lr 1/4 is (w, b) -= 1/4 * (mean(r * x), mean(r)),
r = w * x + b - y. Client A: x = [1, 2], y = [1, 3] (2 examples); client B:
x = [-2, -1, 0, 1, 2, 3], y = [-1, 0, 1, 1, 2, 3] (6 examples). Batches of
6 (A's data three times), one local step a round, example weights. Each
client picks the cluster with the lowest mean loss, trains it, and each
cluster becomes the mean of the models trained from it.

Three clusters set by hand: c0 = (3/2, -1/2), c1 = (1, 0), c2 = (0, 5).

Round 1:
  A: r at c0 = [0, -1/2], loss 1/16; at c1 r = [0, -1], loss 1/4;
     at c2 r = [4, 2], loss 5: picks c0.
     g = ((0 - 1)/2, -1/4) = (-1/2, -1/4): (3/2 + 1/8, -1/2 + 1/16)
       = (13/8, -7/16); delta (-1/8, -1/16)
  B: at c1 r = [-1, -1, -1, 0, 0, 0], loss 1/4; at c0 r = [-5/2, -2, -3/2,
     0, 1/2, 1], loss 55/48; at c2 r = [6, 5, 4, 4, 3, 2]: picks c1.
     g = (1/2, -1/2): (7/8, 1/8); delta (1/8, -1/8)
  c0 = (13/8, -7/16) (A alone), c1 = (7/8, 1/8) (B alone), c2 unchanged.
  params: B carries weight 6 of 8, so c1 = (7/8, 1/8).
  train_loss: A 3 * (0 + 1/8) = 3/8, B 3 * 1/2 = 3/2; (3/8 + 3/2) / 12
    = 5/32. cluster_0 = cluster_1 = 1/2 of the clients, cluster_2 = 0.
Round 2:
  A: at c0 r = [3/16, -3/16], loss 9/512; at c1 r = [0, -9/8], loss
     81/256: picks c0. g = ((3/16 - 3/8)/2, 0) = (-3/32, 0):
     c0 = (13/8 + 3/128, -7/16) = (211/128, -7/16)
  B: at c1 the losses sum to 115/128 (test_fedavg_by_hand.py); at c0
     r = [-43, -33, -23, 3, 13, 23] / 16, far worse: picks c1.
     g = (1/6, -7/16) (test_fedavg_by_hand.py): c1 = (7/8 - 1/24, 1/8 +
     7/64) = (5/6, 15/64)
  params: c1 = (5/6, 15/64).

Personalization after round 1: A's batch gives c0 (its loss 9/512 against
81/256), B's gives c1 (115/768 against (1849 + 1089 + 529 + 9 + 169 + 529) /
512 / 6 at c0). Padded steps hold garbage that would flip both choices.

With server SGD momentum 1/2 (t <- delta + t / 2, c <- c - t), round 1 is
unchanged (t0 = (-1/8, -1/16), t1 = (1/8, -1/8)). A round 2 with A alone:
  t0 = (-3/128 - 1/16, 0 - 1/32) = (-11/128, -1/32);
  c0 = (13/8 + 11/128, -7/16 + 1/32) = (219/128, -13/32)
  c1 stays (7/8, 1/8) though its momentum is not zero; params = c0.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import fedjax_engine as fe
from fedjax_engine.algorithms.hypcluster import hypcluster

CLUSTERS = {'w': [3 / 2, 1.0, 0.0], 'b': [-1 / 2, 0.0, 5.0]}


def _setup(model, data, server_optimizer=None, clients_per_round=2):
  algorithm = hypcluster(model, client_optimizer=optax.sgd(0.25),
                         server_optimizer=server_optimizer, num_clusters=3)
  rnd = fe.make_round(algorithm, data, clients_per_round=clients_per_round,
                      batching=fe.Batching(batch_size=6, local_steps=1))
  state = algorithm.init(model.init(jax.random.key(0)))
  clusters = {k: jnp.array(v, jnp.float32) for k, v in CLUSTERS.items()}
  return algorithm, rnd, state._replace(clusters=clusters)


def _assert_model(params, expected):
  np.testing.assert_allclose([params['w'], params['b']], expected, rtol=1e-6)


def _assert_clusters(state, expected):
  np.testing.assert_allclose(
      np.stack([state.clusters['w'], state.clusters['b']], 1), expected,
      rtol=1e-6)


def test_two_rounds(linear_model, two_clients):
  algorithm, rnd, state = _setup(linear_model, two_clients)
  state, _, metrics = rnd(state, (), rnd.select([0, 1]), jax.random.key(0))
  _assert_clusters(state, [(13 / 8, -7 / 16), (7 / 8, 1 / 8), (0, 5)])
  _assert_model(state.params, (7 / 8, 1 / 8))
  np.testing.assert_allclose(metrics['train_loss'], 5 / 32, rtol=1e-6)
  np.testing.assert_allclose(
      [metrics['cluster_0'], metrics['cluster_1'], metrics['cluster_2']],
      [1 / 2, 1 / 2, 0])

  f32 = lambda v: np.array(v, np.float32)
  personalize = jax.jit(algorithm.personalize)
  key = jax.random.key(0)
  a = {'x': f32([[1, 2], [10, 10]]), 'y': f32([[1, 3], [-100, -100]])}
  a_mask = np.array([[True, True], [False, False]])
  _assert_model(personalize(state, (), a, a_mask, key), (13 / 8, -7 / 16))
  b = {'x': f32([[-2, -1, 0, 1, 2, 3], [10] * 6]),
       'y': f32([[-1, 0, 1, 1, 2, 3], [253 / 16] * 6])}
  b_mask = np.array([[True] * 6, [False] * 6])
  _assert_model(personalize(state, (), b, b_mask, key), (7 / 8, 1 / 8))

  state, _, _ = rnd(state, (), rnd.select([0, 1]), jax.random.key(1))
  _assert_clusters(state, [(211 / 128, -7 / 16), (5 / 6, 15 / 64), (0, 5)])
  _assert_model(state.params, (5 / 6, 15 / 64))
  assert int(state.round) == 2


def test_unpicked_cluster_keeps_still_under_momentum(linear_model,
                                                     two_clients):
  _, rnd, state = _setup(linear_model, two_clients,
                         optax.sgd(1.0, momentum=0.5))
  state, _, _ = rnd(state, (), rnd.select([0, 1]), jax.random.key(0))
  _assert_clusters(state, [(13 / 8, -7 / 16), (7 / 8, 1 / 8), (0, 5)])
  state, _, _ = rnd(state, (), rnd.select([0]), jax.random.key(1))
  _assert_clusters(state, [(219 / 128, -13 / 32), (7 / 8, 1 / 8), (0, 5)])
  _assert_model(state.params, (219 / 128, -13 / 32))


def test_one_cluster_is_fedavg(linear_model, two_clients):
  builds = (fe.algorithms.fedavg,
            lambda *a, **k: hypcluster(*a, num_clusters=1, **k))
  results = []
  for build in builds:
    algorithm = build(linear_model, client_optimizer=optax.sgd(0.25),
                      server_optimizer=optax.sgd(1.0, momentum=0.5))
    rnd = fe.make_round(algorithm, two_clients, clients_per_round=2,
                        batching=fe.Batching(batch_size=2, local_steps=2))
    state = algorithm.init(linear_model.init(jax.random.key(0)))
    for r in range(2):
      state, _, metrics = rnd(state, (), rnd.select([0, 1]),
                              jax.random.key(r))
    results.append((state.params, metrics['train_loss']))
  fe.testing.assert_trees_close(results[1], results[0], 'one cluster')


def test_init_perturbs_clusters_after_the_first(linear_model):
  params = linear_model.init(jax.random.key(0))
  state = hypcluster(linear_model, client_optimizer=optax.sgd(0.1),
                     num_clusters=3, init_noise=0.01).init(params)
  w, b = np.asarray(state.clusters['w']), np.asarray(state.clusters['b'])
  assert (w[0], b[0]) == (1.0, 0.0)
  _assert_model(state.params, (1.0, 0.0))
  moved = np.abs(np.stack([w[1:] - 1.0, b[1:]]))
  assert np.all(moved > 0) and np.all(moved < 0.05), moved
  assert w[1] != w[2] and b[1] != b[2]
  again = hypcluster(linear_model, client_optimizer=optax.sgd(0.1),
                     num_clusters=3, init_noise=0.01).init(params)
  fe.testing.assert_trees_close(again.clusters, state.clusters, 'init',
                                rtol=0, atol=0)
  still = hypcluster(linear_model, client_optimizer=optax.sgd(0.1),
                     num_clusters=3, init_noise=0.0).init(params)
  np.testing.assert_array_equal(still.clusters['w'], [1, 1, 1])


@pytest.mark.parametrize('kwargs', [{'num_clusters': 0},
                                    {'num_clusters': 2.0},
                                    {'num_clusters': True},
                                    {'init_noise': -0.1},
                                    {'init_noise': float('inf')}])
def test_rejects_bad_hyperparameters(linear_model, kwargs):
  name = next(iter(kwargs))
  with pytest.raises(ValueError, match=name):
    hypcluster(linear_model, client_optimizer=optax.sgd(0.1), **kwargs)
