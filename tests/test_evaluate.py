"""Tests for fedjax_engine.evaluate against a numpy computation."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import fedjax_engine as fe

KERNEL = np.array([[1.0, -0.5, 0.2], [0.3, 0.8, -1.1]], np.float32)
BIAS = np.array([0.05, -0.1, 0.2], np.float32)
SIZES = [3, 0, 5, 2, 1, 7, 0]


def _sq_norm(outputs, batch):
  del batch
  return jnp.sum(outputs ** 2, axis=-1)


def _model():
  return fe.from_linen(
      nn.Dense(3), sample_batch={'x': np.zeros((1, 2), np.float32)},
      metrics={'accuracy': fe.accuracy, 'sq_norm': _sq_norm})


def _params():
  return {'kernel': jnp.asarray(KERNEL), 'bias': jnp.asarray(BIAS)}


def _data():
  rng = np.random.default_rng(0)
  clients = {}
  for k, n in enumerate(SIZES):
    clients[f'client{k}'] = {
        'x': rng.normal(size=(n, 2)).astype(np.float32) * 2,
        'y': rng.integers(0, 3, n).astype(np.int32)}
  return fe.FederatedData.from_clients(clients)


def _expected(d):
  """Example-weighted and per-client means, in float64 numpy."""
  x = d.features['x'].astype(np.float64)
  y = d.features['y']
  logits = x @ KERNEL.astype(np.float64) + BIAS
  m = logits.max(-1, keepdims=True)
  log_probs = logits - m - np.log(np.exp(logits - m).sum(-1, keepdims=True))
  per_example = {
      'loss': -log_probs[np.arange(len(y)), y],
      'accuracy': (logits.argmax(-1) == y).astype(np.float64),
      'sq_norm': (logits ** 2).sum(-1),
  }
  out = {}
  for name, values in per_example.items():
    out[name] = values.mean()
    client_means = [values[lo:hi].mean()
                    for lo, hi in zip(d.offsets[:-1], d.offsets[1:]) if hi > lo]
    out[f'{name}_per_client'] = np.mean(client_means)
    if name != 'loss':   # the spread over clients, for fairness
      out[f'{name}_client_min'] = np.min(client_means)
      out[f'{name}_client_p10'] = np.percentile(client_means, 10)
  return out


@functools.lru_cache(maxsize=None)
def _evaluator(batch_size, devices):
  """A compiled evaluator on ``_data()``, shared by tests (compiles once)."""
  mesh = jax.sharding.Mesh(np.array(jax.devices()[:devices]), ('clients',))
  return fe.make_evaluate(_model(), _data(), batch_size=batch_size, mesh=mesh)


ALL = len(jax.devices())


def _check(result, expected):
  assert sorted(result) == sorted(expected)
  for name, value in expected.items():
    np.testing.assert_allclose(float(result[name]), value, rtol=2e-5,
                               atol=1e-6, err_msg=name)


def test_expected_values_are_not_trivial():
  # Guard the reference itself: per-client and example-weighted averages
  # differ on this data, and accuracy is neither 0 nor 1.
  e = _expected(_data())
  assert abs(e['loss'] - e['loss_per_client']) > 1e-3
  assert 0.0 < e['accuracy'] < 1.0


@pytest.mark.parametrize('batch_size', [1, 2, 3, 16, 1024])
def test_matches_numpy(batch_size):
  # Batch sizes that split clients across batches, pad the last batch, and
  # exceed the data (capped).
  evaluate = _evaluator(batch_size, ALL)
  assert isinstance(evaluate, fe.Evaluator)
  _check(evaluate(_params()), _expected(_data()))


@pytest.mark.parametrize('batch_size', [1, 5, 1024])
def test_one_device_mesh(batch_size):
  evaluate = _evaluator(batch_size, 1)
  assert evaluate.mesh.devices.size == 1
  _check(evaluate(_params()), _expected(_data()))


def test_batches_are_capped_by_the_data_not_padded_up():
  assert _evaluator(1024, 1).batch_size == sum(SIZES)
  assert _evaluator(1024, 1).batches_per_device == 1


def test_all_devices_mesh_equals_one_device():
  if ALL < 2:
    pytest.skip('needs several devices (conftest forces 4 CPU devices)')
  a = _evaluator(2, 1)(_params())
  b = _evaluator(2, ALL)(_params())
  for name in a:
    np.testing.assert_allclose(float(a[name]), float(b[name]), rtol=1e-6,
                               err_msg=name)


def test_default_mesh_uses_all_devices():
  # (Evaluated with the default mesh in the next test.)
  evaluate = fe.make_evaluate(_model(), _data(), batch_size=4)
  assert evaluate.mesh.devices.size == ALL


def test_empty_clients_excluded_from_per_client_average():
  # Dropping the clients without examples changes nothing.
  d = _data()
  nonempty = [k for k, n in enumerate(SIZES) if n]
  compact = fe.FederatedData.from_clients(
      {k: d.client(k) for k in nonempty})
  assert compact.num_clients == d.num_clients - 2
  a = _evaluator(4, ALL)(_params())
  b = fe.make_evaluate(_model(), compact, batch_size=4)(_params())
  for name in a:
    np.testing.assert_allclose(float(a[name]), float(b[name]), rtol=1e-6,
                               err_msg=name)


def test_params_are_an_argument_not_baked_in():
  evaluate = _evaluator(4, ALL)
  first = evaluate(_params())
  zero = evaluate({'kernel': jnp.zeros((2, 3)), 'bias': jnp.zeros(3)})
  # Zero logits: loss log(3) for every example, sq_norm 0.
  np.testing.assert_allclose(float(zero['loss']), np.log(3.0), rtol=1e-6)
  np.testing.assert_allclose(float(zero['loss_per_client']), np.log(3.0),
                             rtol=1e-6)
  assert float(zero['sq_norm']) == 0.0
  again = evaluate(_params())
  for name in first:
    assert float(first[name]) == float(again[name])


@pytest.mark.parametrize('batch_size', [0, -1, 2.5])
def test_bad_batch_size_is_refused_clearly(batch_size):
  with pytest.raises(ValueError, match=f'batch_size must be a positive '
                     f'integer, got {batch_size}'):
    fe.make_evaluate(_model(), _data(), batch_size=batch_size)


def test_dataset_without_examples_is_refused_clearly():
  d = fe.FederatedData({'x': np.zeros((0, 2), np.float32),
                        'y': np.zeros(0, np.int32)}, [0, 0, 0], ['a', 'b'])
  with pytest.raises(ValueError, match='evaluation data has 2 clients but no '
                     'examples'):
    fe.make_evaluate(_model(), d, batch_size=4)
  with pytest.raises(ValueError, match='training data has 2 clients but no '
                     'examples'):
    fe.make_round(fe.algorithms.fedsgd(_model(),
                                       server_optimizer=optax.sgd(1.0)), d,
                  batching=fe.Batching(batch_size=2, local_steps=1),
                  clients_per_round=1)


def _copy_model(vocab):
  """A sequence model whose prediction at each position is the input token
  there (logit 5 on ``x``, 0 elsewhere), so a test writes its predictions
  by hand."""
  def apply(params, batch, *, key=None, train=False):
    del params, key, train
    return 5.0 * jax.nn.one_hot(batch['x'], vocab)

  return fe.Model(init=lambda key: {}, apply=apply,
                  loss=fe.models.sequence.sequence_loss(0),
                  metrics=fe.models.sequence.sequence_metrics(0))


def test_sequence_accuracy_is_over_tokens_as_papers_report():
  # Id 0 is pad. Predictions x against targets y; pad positions predict 0,
  # which would be right if pad counted.
  clients = {
      # A: 3 of 4 right.
      'A': {'x': [[1, 2, 3, 2]], 'y': [[1, 2, 3, 1]]},
      # B: 0 of 1 right.
      'B': {'x': [[1, 0, 0, 0]], 'y': [[2, 0, 0, 0]]},
      # C: 2 of 2 right, then 0 of 1.
      'C': {'x': [[1, 1, 0, 0], [2, 0, 0, 0]],
            'y': [[1, 1, 0, 0], [3, 0, 0, 0]]},
  }
  data = fe.FederatedData.from_clients(
      {c: {k: np.array(v, np.int32) for k, v in f.items()}
       for c, f in clients.items()})
  # By hand. Token accuracy: (3 + 0 + 2) / (4 + 1 + 3) = 5/8. Per client:
  # (3/4 + 0/1 + 2/3) / 3 = 17/36. The per-sequence mean instead: (3/4 + 0
  # + 1 + 0) / 4 = 7/16, and per client (3/4 + 0 + 1/2) / 3 = 5/12.
  # Cross entropy under logits 5 on one of 4 ids: c = log(1 + 3 e^-5) on a
  # right token, log(e^5 + 3) = 5 + c on a wrong one; 5 right and 3 wrong
  # tokens give a token loss of (5c + 3 (5 + c)) / 8 = c + 15/8.
  c = np.log1p(3 * np.exp(-5.0))
  expected = {'accuracy': 5 / 8, 'accuracy_per_client': 17 / 36,
              'sequence_accuracy': 7 / 16,
              'sequence_accuracy_per_client': 5 / 12,
              'token_loss': c + 15 / 8}
  one_device = jax.sharding.Mesh(np.array(jax.devices()[:1]), ('clients',))
  model = _copy_model(vocab=4)
  runs = {
      # 4 sequences in one batch of 4; in batches of 3, the second one
      # holds 2 padding examples; on every device, one sequence each.
      'exact': fe.make_evaluate(model, data, batch_size=4, mesh=one_device),
      'padded': fe.make_evaluate(model, data, batch_size=3, mesh=one_device),
      'all devices': fe.make_evaluate(model, data, batch_size=4),
  }
  assert runs['padded'].batches_per_device * runs['padded'].batch_size == 6
  for run, evaluate in runs.items():
    result = evaluate({})
    for name, value in expected.items():
      np.testing.assert_allclose(float(result[name]), value, rtol=1e-6,
                                 err_msg=f'{run}: {name}')
