"""Shared test setup: four forced CPU devices, strict rank promotion, fixtures.

XLA flags must be in the environment before jax creates its CPU backend, so
they are set here, before this file imports jax; pytest imports conftest.py
before any test module.

Compiling dominates the suite's runtime on CPU (a round of a tiny model takes
about a second to compile and milliseconds to run), so LLVM's backend
optimizations are turned down too, which halves compile times: XLA's own HLO
passes (fusion, simplification) still run and the same HLO is compiled, only
the machine code is less optimized. Setting
``XLA_FLAGS=--xla_backend_optimization_level=N`` overrides this.
"""

import functools
import http.server
import os
import threading

_DEVICE_FLAG = '--xla_force_host_platform_device_count'
NUM_DEVICES = 4
_FAST_COMPILE_FLAGS = ('--xla_backend_optimization_level=0',
                       '--xla_llvm_disable_expensive_passes=true')

_flags = [f for f in os.environ.get('XLA_FLAGS', '').split()
          if not f.startswith(_DEVICE_FLAG)]
if not any(f.startswith('--xla_backend_optimization_level') for f in _flags):
  _flags += _FAST_COMPILE_FLAGS
os.environ['XLA_FLAGS'] = ' '.join(_flags + [f'{_DEVICE_FLAG}={NUM_DEVICES}'])

import jax  # pylint: disable=g-import-not-at-top
import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
import numpy as np  # pylint: disable=g-import-not-at-top
import pytest  # pylint: disable=g-import-not-at-top

import fedjax_engine as fe  # pylint: disable=g-import-not-at-top

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


@pytest.fixture(scope='session')
def linear_model():
  """1-D linear regression for hand-computed tests.

  ``pred = w * x + b`` with per-example loss ``0.5 * (pred - y)^2``, starting
  from ``(w, b) = (1, 0)``; no metrics besides the loss.
  """
  def init(key):
    del key
    return {'w': jnp.array(1.0, jnp.float32), 'b': jnp.array(0.0, jnp.float32)}

  def apply(params, batch, *, key=None, train=False):
    del key, train
    return batch['x'] * params['w'] + params['b']

  def loss(pred, batch):
    return 0.5 * jnp.square(pred - batch['y'])

  return fe.Model(init=init, apply=apply, loss=loss, metrics={})


@pytest.fixture(scope='session')
def two_clients():
  """Clients for hand-computed tests: A has 2 examples, B has 6.

  A: x = [1, 2], y = [1, 3].  B: x = [-2, -1, 0, 1, 2, 3],
  y = [-1, 0, 1, 1, 2, 3]. Hand-computed tests restate these values.
  """
  f32 = lambda v: np.array(v, np.float32)
  return fe.FederatedData.from_clients({
      'A': {'x': f32([1, 2]), 'y': f32([1, 3])},
      'B': {'x': f32([-2, -1, 0, 1, 2, 3]), 'y': f32([-1, 0, 1, 1, 2, 3])},
  })


@pytest.fixture
def file_server(tmp_path):
  """Serves ``tmp_path/www`` over HTTP on 127.0.0.1 (an ephemeral port).

  Yields ``(folder, base_url)``, the URL ending in '/'. Download tests put
  files in the folder and point a loader's URL at the server; nothing leaves
  the machine.
  """
  root = tmp_path / 'www'
  root.mkdir()

  class Quiet(http.server.SimpleHTTPRequestHandler):

    def log_message(self, *args):
      del args

  httpd = http.server.ThreadingHTTPServer(
      ('127.0.0.1', 0), functools.partial(Quiet, directory=str(root)))
  thread = threading.Thread(target=httpd.serve_forever,
                            kwargs={'poll_interval': 0.05}, daemon=True)
  thread.start()
  try:
    yield root, f'http://127.0.0.1:{httpd.server_address[1]}/'
  finally:
    httpd.shutdown()
    httpd.server_close()
    thread.join(timeout=5.0)
