"""Tests for fedjax_engine.aggregate: the streaming weighted mean."""

import jax
import jax.numpy as jnp
import numpy as np

import fedjax_engine as fe
from fedjax_engine import aggregate


def _outputs():
  rng = np.random.default_rng(0)
  return {'w': rng.normal(size=(6, 3, 2)).astype(np.float32),
          'b': rng.normal(size=(6,)).astype(np.float32)}


def _template(outputs):
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape[1:], x.dtype),
                      outputs)


def test_weighted_mean_matches_numpy():
  agg = fe.weighted_mean()
  assert isinstance(agg, fe.Aggregator)
  outputs = _outputs()
  weights = np.array([1., 2., 0., 5., 3., 0.5], np.float32)
  acc = agg.init(_template(outputs))
  acc = agg.accumulate(acc, outputs, jnp.asarray(weights))
  out = agg.finalize(acc)
  for name in outputs:
    x = outputs[name].astype(np.float64)
    expected = np.tensordot(weights, x, axes=(0, 0)) / weights.sum()
    np.testing.assert_allclose(out[name], expected, rtol=1e-5, atol=1e-6)
  assert out['w'].shape == (3, 2) and out['b'].shape == ()


def test_init_from_concrete_template_and_dtypes():
  agg = fe.weighted_mean()
  acc = agg.init({'a': jnp.ones((2,), jnp.float32)})
  np.testing.assert_array_equal(acc.total['a'], [0., 0.])
  assert float(acc.weight) == 0.0


def test_zero_total_weight_gives_zeros_not_nan():
  agg = fe.weighted_mean()
  outputs = _outputs()
  acc = agg.accumulate(agg.init(_template(outputs)), outputs, jnp.zeros(6))
  out = agg.finalize(acc)
  for name in outputs:
    assert np.all(np.isfinite(out[name]))
    np.testing.assert_array_equal(out[name], np.zeros_like(outputs[name][0]))
  # Also with nothing accumulated at all.
  empty = agg.finalize(agg.init(_template(outputs)))
  np.testing.assert_array_equal(empty['w'], np.zeros((3, 2)))


def test_two_chunks_equal_one_chunk():
  agg = fe.weighted_mean()
  outputs = _outputs()
  weights = jnp.array([1., 2., 0., 5., 3., 0.5])
  one = agg.finalize(agg.accumulate(agg.init(_template(outputs)), outputs,
                                    weights))
  acc = agg.init(_template(outputs))
  acc = agg.accumulate(acc, jax.tree.map(lambda x: x[:4], outputs),
                       weights[:4])
  acc = agg.accumulate(acc, jax.tree.map(lambda x: x[4:], outputs),
                       weights[4:])
  two = agg.finalize(acc)
  for name in outputs:
    np.testing.assert_allclose(two[name], one[name], rtol=1e-5, atol=1e-6)
  # Accumulators are sums, so two separately built ones merge by addition
  # (the engine's all-reduce).
  init = agg.init(_template(outputs))
  part_a = agg.accumulate(init, jax.tree.map(lambda x: x[:3], outputs),
                          weights[:3])
  part_b = agg.accumulate(init, jax.tree.map(lambda x: x[3:], outputs),
                          weights[3:])
  merged = agg.finalize(jax.tree.map(jnp.add, part_a, part_b))
  for name in outputs:
    np.testing.assert_allclose(merged[name], one[name], rtol=1e-5, atol=1e-6)


def test_padded_clients_are_ignored():
  agg = fe.weighted_mean()
  real = {'v': np.array([[1., 2.], [3., 6.]], np.float32)}
  weights = np.array([1., 3.], np.float32)
  # Padding with weight 0; even huge values must not leak in.
  padded = {'v': np.concatenate([real['v'], np.full((3, 2), 1e6, np.float32)])}
  padded_w = np.concatenate([weights, np.zeros(3, np.float32)])
  run = jax.jit(lambda o, w: agg.finalize(agg.accumulate(
      agg.init(_template(o)), o, w)))
  a = run(real, jnp.asarray(weights))
  b = run(padded, jnp.asarray(padded_w))
  np.testing.assert_allclose(a['v'], [2.5, 5.0], rtol=1e-6)
  np.testing.assert_allclose(b['v'], [2.5, 5.0], rtol=1e-6)


def test_uniform_weights_is_plain_mean():
  agg = aggregate.weighted_mean()
  outputs = _outputs()
  out = agg.finalize(agg.accumulate(agg.init(_template(outputs)), outputs,
                                    jnp.ones(6)))
  np.testing.assert_allclose(out['w'], outputs['w'].mean(0), rtol=1e-5,
                             atol=1e-6)
