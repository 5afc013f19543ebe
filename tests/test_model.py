"""Tests for fedjax_engine.model (linen/nnx adapters) and fedjax_engine.models.

Reference values are computed with plain numpy from the parameters.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import fedjax_engine as fe
from fedjax_engine import model as model_lib
from fedjax_engine import tree


def _np_log_softmax(logits):
  logits = np.asarray(logits, np.float64)
  m = logits.max(axis=-1, keepdims=True)
  return logits - m - np.log(np.exp(logits - m).sum(axis=-1, keepdims=True))


def _batch(n=5, d=4, num_classes=3, seed=0):
  rng = np.random.default_rng(seed)
  return {'x': rng.normal(size=(n, d)).astype(np.float32),
          'y': rng.integers(0, num_classes, n).astype(np.int32)}


def _random_params(model, seed):
  """Params of ``model``'s structure, drawn with numpy (no init compiled)."""
  shapes = jax.eval_shape(model.init, jax.random.key(0))
  rng = np.random.default_rng(seed)
  return jax.tree.map(
      lambda s: rng.normal(size=s.shape).astype(np.float32) * 0.3, shapes)


# ----------------------------------------------------------------------------
# Per-example loss and accuracy.


def test_softmax_cross_entropy_and_accuracy_per_example():
  logits = np.array([[2., 0., -1.], [0., 0., 0.], [1., 3., 2.], [5., 5., 1.]],
                    np.float32)
  y = np.array([0, 2, 0, 1], np.int32)
  batch = {'y': jnp.asarray(y)}
  loss = np.asarray(fe.softmax_cross_entropy(jnp.asarray(logits), batch))
  expected = -_np_log_softmax(logits)[np.arange(4), y]
  np.testing.assert_allclose(loss, expected, rtol=1e-5)
  np.testing.assert_allclose(loss[1], np.log(3.), rtol=1e-6)
  acc = np.asarray(fe.accuracy(jnp.asarray(logits), batch))
  # Row 3 is a tie between classes 0 and 1: argmax takes the first (0).
  np.testing.assert_array_equal(acc, [1., 0., 0., 0.])
  assert acc.dtype == np.float32


# ----------------------------------------------------------------------------
# from_linen.


def test_from_linen_init_apply_loss_metrics():
  batch = _batch()
  model = fe.from_linen(nn.Dense(3), sample_batch={'x': np.zeros((1, 4))})
  assert isinstance(model, fe.Model)
  init = jax.jit(model.init)
  params = init(jax.random.key(0))
  assert params['kernel'].shape == (4, 3) and params['bias'].shape == (3,)
  np.testing.assert_array_equal(init(jax.random.key(0))['kernel'],
                                params['kernel'])
  assert not np.array_equal(init(jax.random.key(1))['kernel'],
                            params['kernel'])
  params = {'kernel': jnp.asarray(np.arange(12.).reshape(4, 3) / 10 - 0.5,
                                  jnp.float32),
            'bias': jnp.array([0.1, -0.2, 0.3], jnp.float32)}
  out = model.apply(params, batch)
  assert out.shape == (5, 3)
  expected = batch['x'] @ np.asarray(params['kernel']) + [0.1, -0.2, 0.3]
  np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)
  loss = model.loss(out, batch)
  np.testing.assert_allclose(
      loss, -_np_log_softmax(expected)[np.arange(5), batch['y']], rtol=1e-5)
  assert sorted(model.metrics) == ['accuracy', 'loss']
  np.testing.assert_array_equal(
      model.metrics['accuracy'](out, batch),
      (expected.argmax(-1) == batch['y']).astype(np.float32))
  # Pure: jit and vmap over stacked params work.
  np.testing.assert_allclose(jax.jit(model.apply)(params, batch), out,
                             rtol=1e-6)
  stacked = tree.stack([params, tree.scale(params, 2.0)])
  both = jax.vmap(model.apply, in_axes=(0, None))(stacked, batch)
  np.testing.assert_allclose(both[1], 2 * expected, rtol=1e-5, atol=1e-6)


def test_from_linen_input_key_and_custom_loss():
  model = fe.from_linen(
      nn.Dense(2), sample_batch={'pixels': np.zeros((1, 3))},
      input_key='pixels', loss=lambda out, b: jnp.sum(out ** 2, axis=-1),
      metrics={'sum': lambda out, b: jnp.sum(out, axis=-1)})
  params = {'kernel': jnp.ones((3, 2)), 'bias': jnp.zeros(2)}
  batch = {'pixels': jnp.array([[1., 2., 3.]])}
  out = model.apply(params, batch)
  np.testing.assert_allclose(out, [[6., 6.]])
  np.testing.assert_allclose(model.loss(out, batch), [72.])
  assert list(model.metrics) == ['sum']


class _DropoutNet(nn.Module):

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = nn.Dense(64)(x)
    return nn.Dropout(rate=0.5, deterministic=not train)(x)


def test_from_linen_dropout_gets_rng_when_training():
  model = fe.from_linen(_DropoutNet(), sample_batch={'x': np.zeros((1, 4))})
  params = _random_params(model, seed=0)
  assert set(params) == {'Dense_0'}
  batch = {'x': _batch()['x']}
  eval_out = np.asarray(model.apply(params, batch))
  # train=False is deterministic, with or without a key.
  np.testing.assert_array_equal(
      model.apply(params, batch, key=jax.random.key(1), train=False), eval_out)
  a = np.asarray(model.apply(params, batch, key=jax.random.key(1), train=True))
  a2 = np.asarray(model.apply(params, batch, key=jax.random.key(1), train=True))
  b = np.asarray(model.apply(params, batch, key=jax.random.key(2), train=True))
  assert not np.allclose(a, eval_out)
  np.testing.assert_array_equal(a, a2)
  assert not np.array_equal(a, b)
  # Inverted dropout at rate 0.5: each unit is 0 or twice its eval value.
  dropped = a == 0
  assert 0.3 < dropped.mean() < 0.7
  np.testing.assert_allclose(a[~dropped], 2 * eval_out[~dropped], rtol=1e-5)


class _BatchNormNet(nn.Module):

  @nn.compact
  def __call__(self, x, train: bool = False):
    return nn.BatchNorm(use_running_average=not train)(nn.Dense(3)(x))


def test_from_linen_rejects_batchnorm():
  model = fe.from_linen(_BatchNormNet(), sample_batch={'x': np.zeros((2, 4))})
  with pytest.raises(ValueError, match=r'(?s)batch_stats.*GroupNorm.*BatchNorm'):
    jax.eval_shape(model.init, jax.random.key(0))   # traced: no compile


# ----------------------------------------------------------------------------
# from_nnx.


def _nnx_linear():
  return fe.from_nnx(lambda rngs: nnx.Linear(4, 3, rngs=rngs))


_NNX = _nnx_linear()
_NNX_INIT = jax.jit(_NNX.init)   # compiled once for the nnx tests


def _leaf(params, name):
  """The array at dict key ``name`` of a params pytree, by tree path."""
  for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
    if any(getattr(p, 'key', None) == name for p in path):
      return np.asarray(leaf)
  raise KeyError(name)


def test_from_nnx_apply_matches_manual():
  model = _NNX
  params = _NNX_INIT(jax.random.key(0))
  kernel, bias = _leaf(params, 'kernel'), _leaf(params, 'bias')
  assert kernel.shape == (4, 3) and bias.shape == (3,)
  assert tree.size(params) == 15
  batch = _batch()
  out = model.apply(params, batch)
  np.testing.assert_allclose(out, batch['x'] @ kernel + bias, rtol=1e-5,
                             atol=1e-6)
  np.testing.assert_allclose(
      model.loss(out, batch),
      -_np_log_softmax(batch['x'] @ kernel + bias)[np.arange(5), batch['y']],
      rtol=1e-5)
  # Different keys, different params; same key, same params.
  other = _NNX_INIT(jax.random.key(1))
  assert not np.array_equal(_leaf(other, 'kernel'), kernel)
  np.testing.assert_array_equal(_leaf(_NNX_INIT(jax.random.key(0)), 'kernel'),
                                kernel)
  # Freshly built model, eager init: the same params for the same key.
  np.testing.assert_allclose(
      _leaf(_nnx_linear().init(jax.random.key(0)), 'kernel'), kernel,
      rtol=1e-6)


def test_from_nnx_params_under_jit_vmap_and_grad():
  model = _NNX
  batch = _batch()
  params = _NNX_INIT(jax.random.key(0))
  out = jax.jit(model.apply)(params, batch)
  np.testing.assert_allclose(
      out, batch['x'] @ _leaf(params, 'kernel') + _leaf(params, 'bias'),
      rtol=1e-5, atol=1e-6)
  # Stacked params of three clients, one vmapped forward pass.
  stacked = tree.stack([_NNX_INIT(jax.random.key(k)) for k in (3, 4, 5)])
  assert _leaf(stacked, 'kernel').shape == (3, 4, 3)
  assert jax.tree.structure(tree.unstack(stacked)[0]) == jax.tree.structure(
      params)
  outs = jax.jit(jax.vmap(model.apply, in_axes=(0, None)))(stacked, batch)
  assert outs.shape == (3, 5, 3)
  for c in range(3):
    expected = (batch['x'] @ _leaf(stacked, 'kernel')[c] +
                _leaf(stacked, 'bias')[c])
    np.testing.assert_allclose(outs[c], expected, rtol=1e-5, atol=1e-6)
  assert not np.allclose(outs[0], outs[1])
  # Gradients flow to the params: d sum(out) / d bias = number of examples.
  grads = jax.jit(jax.grad(lambda p: jnp.sum(model.apply(p, batch))))(params)
  np.testing.assert_allclose(_leaf(grads, 'bias'), [5., 5., 5.], rtol=1e-6)
  np.testing.assert_allclose(_leaf(grads, 'kernel'),
                             np.repeat(batch['x'].sum(0)[:, None], 3, axis=1),
                             rtol=1e-5)


class _NnxBatchNormNet(nnx.Module):

  def __init__(self, rngs):
    self.linear = nnx.Linear(4, 3, rngs=rngs)
    self.norm = nnx.BatchNorm(3, rngs=rngs)

  def __call__(self, x):
    return self.norm(self.linear(x))


def test_from_nnx_rejects_batchnorm_clearly():
  with pytest.raises(ValueError,
                     match=r'BatchNorm|GroupNorm|LayerNorm|supported'):
    model = fe.from_nnx(_NnxBatchNormNet)
    model.init(jax.random.key(0))


def test_from_nnx_rejects_batchnorm_with_value_error():
  # Whatever the message, it must be a ValueError, at the latest at init.
  with pytest.raises(ValueError):
    model = fe.from_nnx(_NnxBatchNormNet)
    model.init(jax.random.key(0))


# ----------------------------------------------------------------------------
# models/dense.py


def test_logistic_regression_shapes_and_values():
  model = fe.models.logistic_regression(num_features=60, num_classes=10)
  params = _random_params(model, seed=0)
  shapes = jax.tree.map(lambda x: x.shape, params)
  # The kernel is stored [out, in] (models/dense.py says why).
  assert shapes == {'Dense_0': {'kernel': (10, 60), 'bias': (10,)}}
  assert tree.size(params) == 60 * 10 + 10
  rng = np.random.default_rng(1)
  x = rng.normal(size=(7, 60)).astype(np.float32)
  out = model.apply(params, {'x': x})
  w = np.asarray(params['Dense_0']['kernel'])
  b = np.asarray(params['Dense_0']['bias'])
  np.testing.assert_allclose(out, x @ w.T + b, rtol=1e-4, atol=1e-5)


def test_dense_matches_flax_dense_with_the_kernel_transposed():
  from fedjax_engine.models import dense  # pylint: disable=g-import-not-at-top
  x = np.random.default_rng(0).normal(size=(5, 7)).astype(np.float32)
  ours = dense.Dense(3).init(jax.random.key(0), x)['params']
  theirs = nn.Dense(3).init(jax.random.key(0), x)['params']
  assert ours['kernel'].shape == (3, 7)
  # The same initial distribution: LeCun normal over fan-in 7.
  big = dense.Dense(300).init(jax.random.key(1), np.zeros((1, 700)))
  np.testing.assert_allclose(np.std(big['params']['kernel']),
                             np.sqrt(1 / 700), rtol=0.02)
  out = dense.Dense(3).apply({'params': ours}, x)
  flax_out = nn.Dense(3).apply(
      {'params': {'kernel': ours['kernel'].T, 'bias': theirs['bias']}}, x)
  np.testing.assert_allclose(out, flax_out, rtol=1e-6, atol=1e-6)


def test_mlp_default_is_2nn():
  model = fe.models.mlp(num_features=784, num_classes=62)
  shapes = jax.eval_shape(model.init, jax.random.key(0))
  assert jax.tree.map(lambda x: x.shape, shapes) == {
      'Dense_0': {'kernel': (200, 784), 'bias': (200,)},
      'Dense_1': {'kernel': (200, 200), 'bias': (200,)},
      'Dense_2': {'kernel': (62, 200), 'bias': (62,)},
  }
  assert tree.size(shapes) == (784 * 200 + 200 + 200 * 200 + 200 +
                               200 * 62 + 62)


def test_dense_models_flatten_image_input():
  # Image-shaped input [n, 28, 28] is flattened per example (row-major).
  images = np.random.default_rng(0).normal(size=(3, 28, 28)).astype(np.float32)
  model = fe.models.logistic_regression(num_features=784, num_classes=62)
  params = _random_params(model, seed=1)
  out = model.apply(params, {'x': images})
  assert out.shape == (3, 62)
  expected = (images.reshape(3, 784).astype(np.float64) @
              params['Dense_0']['kernel'].T + params['Dense_0']['bias'])
  np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4)


def test_mlp_forward_matches_numpy():
  model = fe.models.mlp(num_features=6, num_classes=4, hidden=(5, 3))
  params = _random_params(model, seed=2)
  assert [params[f'Dense_{i}']['kernel'].shape for i in range(3)] == [
      (5, 6), (3, 5), (4, 3)]
  x = np.random.default_rng(3).normal(size=(8, 2, 3)).astype(np.float32)
  h = x.reshape(8, 6).astype(np.float64)
  for i in range(3):
    layer = params[f'Dense_{i}']
    h = h @ layer['kernel'].T + layer['bias']
    if i < 2:
      h = np.maximum(h, 0.0)
  np.testing.assert_allclose(model.apply(params, {'x': x}), h, rtol=1e-4,
                             atol=1e-5)
  assert sorted(model.metrics) == ['accuracy', 'loss']
  assert model_lib.CLASSIFICATION_METRICS['loss'] is fe.softmax_cross_entropy
