"""Shared test setup: four forced CPU devices, strict rank promotion, fixtures.

The XLA flag must be in the environment before jax creates its CPU backend,
so it is set here, before this file imports jax; pytest imports conftest.py
before any test module.
"""

import os

_DEVICE_FLAG = '--xla_force_host_platform_device_count'
NUM_DEVICES = 4

_flags = [f for f in os.environ.get('XLA_FLAGS', '').split()
          if not f.startswith(_DEVICE_FLAG)]
os.environ['XLA_FLAGS'] = ' '.join(_flags + [f'{_DEVICE_FLAG}={NUM_DEVICES}'])

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position
import pytest  # pylint: disable=g-import-not-at-top,wrong-import-position

import fedjax_engine as fe  # pylint: disable=g-import-not-at-top,wrong-import-position

jax.config.update('jax_numpy_rank_promotion', 'raise')


@pytest.fixture(scope='session')
def synthetic_train():
  """Twelve small Synthetic(1, 1) clients (train split, 4 to 24 examples)."""
  train, _ = fe.datasets.synthetic(
      num_clients=12, seed=0, size_log_mean=2.0, min_size=3)
  return train


@pytest.fixture(scope='session')
def logistic_model():
  """Logistic regression on Synthetic's 60 features and 10 classes."""
  return fe.models.logistic_regression(num_features=60, num_classes=10)
