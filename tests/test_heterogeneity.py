"""System heterogeneity: failed clients and stragglers, for any algorithm."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import fedjax_engine as fe
from fedjax_engine import data as data_lib
from fedjax_engine import heterogeneity

BATCHING = fe.Batching(batch_size=4, local_steps=3)
IDS = [7, 2, 10, 0, 5, 1, 11, 6]


def _mesh(n):
  return jax.sharding.Mesh(np.array(jax.devices()[:n]), ('clients',))


def _close(a, b):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-5,
                               atol=1e-6)


def test_rates_are_checked():
  with pytest.raises(ValueError, match=r'dropout_rate must be in \[0, 1\)'):
    heterogeneity.SystemHeterogeneity(dropout_rate=1.0).validate()
  with pytest.raises(ValueError, match='straggler_rate'):
    heterogeneity.SystemHeterogeneity(straggler_rate=float('nan')).validate()


def test_failed_clients_are_absent(synthetic_train, logistic_model):
  # A round with failures equals the round of the surviving clients alone:
  # same params, same client count, and the failed clients' rows of the
  # state table untouched.
  data = synthetic_train
  algo = fe.algorithms.scaffold(logistic_model,
                                client_optimizer=optax.sgd(0.1))
  key = jax.random.key(5)
  gone = np.asarray(heterogeneity.dropped(
      data_lib.client_keys(key, jnp.asarray(IDS, jnp.int32)), 0.4))
  survivors = [c for c, g in zip(IDS, gone) if not g]
  assert 0 < len(survivors) < len(IDS)   # the rate bites at this key

  def run(ids, system):
    rnd = fe.make_round(algo, data, batching=BATCHING, clients_per_round=8,
                        system=system)
    params = logistic_model.init(jax.random.key(0))
    table = jax.vmap(algo.init_client_state, axis_size=data.num_clients,
                     in_axes=None)(params)
    return rnd(algo.init(params), table, rnd.select(ids), key)

  state, table, metrics = run(
      IDS, fe.SystemHeterogeneity(dropout_rate=0.4))
  expected_state, expected_table, expected_metrics = run(survivors, None)
  _close(state, expected_state)
  _close(table, expected_table)
  assert int(metrics['clients']) == len(survivors)
  np.testing.assert_allclose(metrics['train_loss'],
                             expected_metrics['train_loss'], rtol=1e-5)
  failed = [c for c, g in zip(IDS, gone) if g]
  assert not np.any(np.asarray(table['Dense_0']['kernel'])[failed])


def test_straggler_takes_part_of_its_steps(linear_model):
  # One client, x = [1, 2], y = [1, 3], batch 2 (its whole data), four
  # local steps with lr 1/4, from (w, b) = (1, 0); a straggler stops after
  # k steps. The expected params are k plain gradient steps of
  # 0.5 * (w x + b - y)^2, written out here in numpy.
  x, y = np.array([1.0, 2.0]), np.array([1.0, 3.0])
  data = fe.FederatedData.from_clients(
      {'A': {'x': x.astype(np.float32), 'y': y.astype(np.float32)}})
  algo = fe.algorithms.fedavg(linear_model, client_optimizer=optax.sgd(0.25))
  rnd = fe.make_round(algo, data, clients_per_round=1,
                      batching=fe.Batching(batch_size=2, local_steps=4),
                      system=fe.SystemHeterogeneity(straggler_rate=0.99))
  seen = set()
  for r in range(6):
    key = jax.random.key(r)
    k = int(heterogeneity.straggler_steps(
        data_lib.client_keys(key, jnp.zeros(1, jnp.int32)),
        jnp.array([4]), 0.99)[0])
    assert 1 <= k <= 4
    seen.add(k)
    w, b = 1.0, 0.0
    for _ in range(k):
      r_ = w * x + b - y
      w, b = w - 0.25 * np.mean(r_ * x), b - 0.25 * np.mean(r_)
    state = algo.init(linear_model.init(jax.random.key(0)))
    state, _, _ = rnd(state, (), rnd.select([0]), key)
    np.testing.assert_allclose([state.params['w'], state.params['b']],
                               [w, b], rtol=1e-6)
  assert len(seen) > 1   # stragglers differ from round to round


def test_heterogeneity_does_not_depend_on_devices_or_chunks(
    synthetic_train, logistic_model):
  algo = fe.algorithms.fedavg(logistic_model,
                              client_optimizer=optax.sgd(0.1))
  system = fe.SystemHeterogeneity(dropout_rate=0.3, straggler_rate=0.5)
  results = []
  for devices, chunk in ((1, 1), (4, None), (2, 2)):
    rnd = fe.make_round(algo, synthetic_train, batching=BATCHING,
                        clients_per_round=8, mesh=_mesh(devices),
                        client_chunk_size=chunk, system=system)
    state = algo.init(logistic_model.init(jax.random.key(0)))
    for r, ids in enumerate((IDS, [3, 9, 4, 8, 1])):
      state, _, metrics = rnd(state, (), rnd.select(ids), jax.random.key(r))
    # step_utilization measures how chunks are packed, which varies here.
    del metrics['step_utilization']
    results.append((state, metrics))
  for state, metrics in results[1:]:
    _close(state, results[0][0])
    _close(metrics, results[0][1])
