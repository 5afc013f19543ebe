"""fedjax_engine.transforms: client-output transforms on any algorithm.

Hand-worked numbers use the two tiny clients of conftest.py (1-D linear
model, one full-batch SGD step of lr 1/4 from (w, b) = (1, 0), example
weights 1/4 and 3/4). FedAvg's client deltas ``w0 - w1 = lr * gradient``:
  A: gradient (-1, -1/2)  -> delta (-1/4, -1/8), norm sqrt(5)/8 ~ 0.2795
  B: gradient (1/2, -1/2) -> delta (1/8, -1/8),  norm sqrt(2)/8 ~ 0.1768
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import fedjax_engine as fe
from fedjax_engine import transforms


def _fedavg(model):
  return fe.algorithms.fedavg(model, client_optimizer=optax.sgd(0.25))


def _one_round(algorithm, model, data):
  rnd = fe.make_round(algorithm, data, clients_per_round=2,
                      batching=fe.Batching(batch_size=6, local_steps=1))
  table = fe.testing.initial_table(algorithm, model, data)
  state = algorithm.init(model.init(jax.random.key(0)))
  return rnd(state, table, rnd.select([0, 1]), jax.random.key(0))


def _scale(factor):
  def client(state, output, row, key, client):
    del state, key, client
    return jax.tree.map(lambda x: factor * x, output), row, {}
  return transforms.Transform(client=client)


def test_no_transforms_is_the_algorithm(linear_model):
  algorithm = _fedavg(linear_model)
  assert transforms.apply(algorithm) is algorithm


def test_clip_by_hand(linear_model, two_clients):
  state, _, metrics = _one_round(
      transforms.apply(_fedavg(linear_model), transforms.clip(max_norm=0.2)),
      linear_model, two_clients)
  # A is scaled to norm 0.2; B (norm 0.177) is not.
  a = 0.2 / (math.sqrt(5) / 8)
  delta = (0.25 * a * -1 / 4 + 0.75 * 1 / 8, 0.25 * a * -1 / 8 - 0.75 / 8)
  np.testing.assert_allclose([state.params['w'], state.params['b']],
                             [1 - delta[0], -delta[1]], rtol=1e-6)
  np.testing.assert_allclose(metrics['clipped'], 0.5)
  np.testing.assert_allclose(metrics['update_norm'],
                             (math.sqrt(5) + math.sqrt(2)) / 16, rtol=1e-6)


def test_transforms_run_in_order(linear_model, two_clients):
  # Doubling then clipping to 0.2 clips both clients; clipping then
  # doubling leaves B at twice its delta.
  double_then_clip, _, _ = _one_round(transforms.apply(
      _fedavg(linear_model), _scale(2.0), transforms.clip(max_norm=0.2)),
                                      linear_model, two_clients)
  clip_then_double, _, _ = _one_round(transforms.apply(
      _fedavg(linear_model), transforms.clip(max_norm=0.2), _scale(2.0)),
                                      linear_model, two_clients)
  a = 0.2 / (math.sqrt(5) / 8)
  b = 0.2 / (math.sqrt(2) / 8)
  np.testing.assert_allclose(
      double_then_clip.params['w'],
      1 - (0.25 * a * -1 / 4 + 0.75 * b * 1 / 8), rtol=1e-6)
  np.testing.assert_allclose(
      clip_then_double.params['w'],
      1 - 2 * (0.25 * a * -1 / 4 + 0.75 * 1 / 8), rtol=1e-6)


def test_state_rows_personalize_and_prepare_pass_through(linear_model,
                                                         two_clients):
  ditto = fe.algorithms.ditto(linear_model, client_optimizer=optax.sgd(0.25),
                              ditto_lambda=1.0)
  wrapped = transforms.apply(ditto, transforms.clip(max_norm=10.0))
  state, table, _ = _one_round(wrapped, linear_model, two_clients)
  plain_state, plain_table, _ = _one_round(ditto, linear_model, two_clients)
  # A clip that never binds changes nothing; the rows are Ditto's own.
  np.testing.assert_allclose(state.params['w'], plain_state.params['w'])
  assert isinstance(table, transforms.TransformedRow)
  np.testing.assert_allclose(table.inner['w'], plain_table['w'])
  row = jax.tree.map(lambda t: t[0], table)
  np.testing.assert_allclose(
      wrapped.personalize(state, row, None, None, None)['w'],
      plain_table['w'][0])
  mime = fe.algorithms.mime(linear_model, client_optimizer=optax.sgd(0.25),
                            momentum=0.5)
  wrapped = transforms.apply(mime, transforms.clip(max_norm=10.0))
  assert wrapped.prepare is not None
  state, _, _ = _one_round(wrapped, linear_model, two_clients)
  plain_state, _, _ = _one_round(mime, linear_model, two_clients)
  np.testing.assert_allclose(state.params['w'], plain_state.params['w'],
                             rtol=1e-6)
  np.testing.assert_allclose(state.inner.full_grad['w'],
                             plain_state.full_grad['w'], rtol=1e-6)


def test_transform_sees_the_client_id(linear_model, two_clients):
  # Client 1 (B) sends zeros: the aggregate is A's delta times 1/4.
  def silence_client_1(state, output, row, key, client):
    del state, key
    keep = (client.id != 1).astype(jnp.float32)
    return jax.tree.map(lambda x: keep * x, output), row, {}

  state, _, _ = _one_round(
      transforms.apply(_fedavg(linear_model),
                       transforms.Transform(client=silence_client_1)),
      linear_model, two_clients)
  np.testing.assert_allclose([state.params['w'], state.params['b']],
                             [1 + 0.25 / 4, 0.25 / 8], rtol=1e-6)


@pytest.mark.parametrize('bad', [0, -1.0, 'x'])
def test_clip_rejects_bad_norms(bad):
  with pytest.raises(ValueError, match='max_norm must be a number > 0'):
    transforms.clip(max_norm=bad)


def test_transform_sees_the_round_participants(linear_model, two_clients):
  # Each client scales its output by the number of participants it is told
  # of (2, padding and dropped slots excluded): the update doubles.
  def count_participants(state, output, row, key, client):
    del state, key
    n = jnp.sum(client.cohort >= 0).astype(jnp.float32)
    return jax.tree.map(lambda x: n * x, output), row, {}

  state, _, _ = _one_round(
      transforms.apply(_fedavg(linear_model),
                       transforms.Transform(client=count_participants)),
      linear_model, two_clients)
  plain, _, _ = _one_round(_fedavg(linear_model), linear_model, two_clients)
  np.testing.assert_allclose(
      [state.params['w'] - 1, state.params['b']],
      [2 * (plain.params['w'] - 1), 2 * plain.params['b']], rtol=1e-6)
