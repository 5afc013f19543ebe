"""Diurnal client availability: who can be sampled, and fused rounds."""

import jax
import numpy as np
import optax
import pytest

import fedjax_engine as fe


def test_only_available_clients_are_sampled():
  sampler = fe.sampling.available(num_clients=50, clients_per_round=10,
                                  key=jax.random.key(0), period=6,
                                  available_fraction=1 / 3)
  phases = np.asarray(sampler.phases)
  for r in range(12):
    # Client k is online in the hours [0, 2) of its day: (r + phase) % 6.
    online = np.flatnonzero((r + phases) % 6 < 2)
    ids = sampler(r)
    assert len(ids) == min(10, len(online)) and len(set(ids)) == len(ids)
    assert set(ids) <= set(online)
  # Every client is online 2 of every 6 rounds (a third of its day).
  online_rounds = np.sum([np.asarray(sampler.available(r))
                          for r in range(6)], axis=0)
  np.testing.assert_array_equal(online_rounds, 2)


def test_too_few_available_leaves_the_rest_of_the_cohort_empty():
  sampler = fe.sampling.available(num_clients=12, clients_per_round=8,
                                  key=jax.random.key(1), period=4,
                                  available_fraction=0.25)
  slots = np.asarray(sampler.on_device(0))
  online = np.flatnonzero((0 + np.asarray(sampler.phases)) % 4 < 1)
  assert len(online) < 8
  assert sorted(slots[slots >= 0]) == sorted(online)
  assert np.sum(slots == -1) == 8 - len(online)


def test_bad_availability_is_refused():
  with pytest.raises(ValueError, match='available_fraction'):
    fe.sampling.available(num_clients=5, clients_per_round=2,
                          key=jax.random.key(0), available_fraction=0.0)


def test_fused_rounds_with_availability_equal_rounds_from_python(
    synthetic_train, logistic_model):
  algo = fe.algorithms.fedavg(logistic_model, client_optimizer=optax.sgd(0.1))
  rnd = fe.make_round(algo, synthetic_train, clients_per_round=5,
                      batching=fe.Batching(batch_size=4, local_steps=2))
  sampler = fe.sampling.available(num_clients=synthetic_train.num_clients,
                                  clients_per_round=5, key=jax.random.key(3),
                                  period=4, available_fraction=0.25)
  sizes = [len(sampler(r)) for r in range(4)]
  assert min(sizes) < 5   # some cohorts are partial
  key = jax.random.key(4)
  state = algo.init(logistic_model.init(jax.random.key(0)))
  clients = []
  for r in range(4):
    state, _, metrics = rnd(state, (), rnd.select(sampler(r)),
                            jax.random.fold_in(key, r))
    clients.append(int(metrics['clients']))
  fused, _, stacked = rnd.run_rounds(
      algo.init(logistic_model.init(jax.random.key(0))), (), sampler, key,
      first_round=0, num_rounds=4)
  assert clients == sizes == stacked['clients'].tolist()
  for a, b in zip(jax.tree.leaves(fused), jax.tree.leaves(state)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5,
                               atol=1e-6)
