"""Poisson sampling: each client independently, at the rate DP accounting
assumes."""

import jax
import numpy as np
import optax
import pytest

import fedjax_engine as fe
from fedjax_engine.runner import run_experiment


def test_inclusion_rate_and_cohort_size():
  n, rate, rounds = 200, 0.05, 400
  sampler = fe.sampling.poisson(num_clients=n, rate=rate,
                                key=jax.random.key(0))
  cohorts = [sampler(r) for r in range(rounds)]
  sizes = np.array([len(c) for c in cohorts])
  # Cohort size is Binomial(200, 0.05): mean 10, std 3.08; the mean of 400
  # rounds lies within 5 standard errors (0.77) of 10.
  assert abs(sizes.mean() - 10) < 0.77
  assert sizes.std() == pytest.approx(np.sqrt(n * rate * (1 - rate)),
                                      rel=0.15)
  # Every client at the same rate: counts per client are Binomial(400,
  # 0.05), mean 20; their spread matches (uniform sampling of fixed size
  # would too, but Poisson's sizes vary, checked above).
  counts = np.bincount(np.concatenate(cohorts), minlength=n)
  assert abs(counts.mean() - 20) < 1.0
  for c in cohorts:
    assert len(set(c.tolist())) == len(c)


def test_slots_determinism_and_capacity():
  sampler = fe.sampling.poisson(num_clients=100, rate=0.1,
                                key=jax.random.key(1))
  # Mean 10, std 3: capacity 10 + 7 * 3 = 31.
  assert sampler.clients_per_round == 31
  slots = np.asarray(jax.jit(sampler.on_device)(3))
  filled = slots[slots >= 0]
  assert np.all(slots[len(filled):] == -1)
  np.testing.assert_array_equal(filled, sampler(3))
  np.testing.assert_array_equal(sampler(3), sampler(3))
  # More drawn than capacity: the extra ones are left out.
  full = fe.sampling.poisson(num_clients=10, rate=1.0, key=jax.random.key(0),
                             capacity=4)
  assert len(full(0)) == 4
  with pytest.raises(ValueError, match='rate must lie in'):
    fe.sampling.poisson(num_clients=10, rate=0.0, key=jax.random.key(0))


def test_runner_fused_equals_python_driven(synthetic_train, logistic_model):
  algorithm = fe.algorithms.fedavg(logistic_model,
                                   client_optimizer=optax.sgd(0.1))
  runs = [run_experiment(algorithm, logistic_model, synthetic_train, None,
                         batching=fe.Batching(batch_size=4, local_steps=2),
                         clients_per_round=1, num_rounds=4,
                         rounds_per_call=per_call, progress=False,
                         poisson_rate=0.3) for per_call in (1, 4)]
  assert len({r['clients'] for r in runs[0]}) > 1   # sizes vary
  for a, b in zip(*runs):
    assert a['clients'] == b['clients']
    np.testing.assert_allclose(a['train_loss'], b['train_loss'], rtol=1e-6)
