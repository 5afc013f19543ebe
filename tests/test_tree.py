"""Tests for fedjax_engine.tree: pytree arithmetic over (stacked) trees."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedjax_engine import tree


def _stacked():
  # Three clients; a tree with a matrix leaf, a vector leaf and a nested dict.
  return {
      'w': np.arange(3 * 2 * 2, dtype=np.float32).reshape(3, 2, 2),
      'inner': {'b': np.array([[1., -1.], [2., 0.5], [-3., 4.]], np.float32)},
  }


def test_weighted_sum_matches_numpy():
  stacked = _stacked()
  weights = np.array([0.5, 2.0, -1.0], np.float32)
  out = tree.weighted_sum(jax.tree.map(jnp.asarray, stacked),
                          jnp.asarray(weights))
  w = stacked['w']
  expected_w = 0.5 * w[0] + 2.0 * w[1] - 1.0 * w[2]
  b = stacked['inner']['b']
  expected_b = np.array([0.5 * 1 + 2 * 2 - 1 * -3, 0.5 * -1 + 2 * 0.5 - 4])
  np.testing.assert_allclose(out['w'], expected_w, rtol=1e-6)
  np.testing.assert_allclose(out['inner']['b'], expected_b, rtol=1e-6)
  assert out['w'].shape == (2, 2) and out['inner']['b'].shape == (2,)


def test_weighted_sum_zero_weight_drops_client():
  stacked = {'a': jnp.array([[1., 2.], [100., 200.]])}
  out = tree.weighted_sum(stacked, jnp.array([1., 0.]))
  np.testing.assert_array_equal(out['a'], [1., 2.])


def test_weighted_sum_casts_weights_to_leaf_dtype():
  stacked = {'a': jnp.ones((2, 3), jnp.bfloat16)}
  out = tree.weighted_sum(stacked, jnp.array([1., 2.], jnp.float32))
  assert out['a'].dtype == jnp.bfloat16
  np.testing.assert_array_equal(np.asarray(out['a'], np.float32), [3., 3., 3.])


def test_weighted_sum_under_jit():
  stacked = _stacked()
  weights = jnp.array([1., 1., 1.])
  out = jax.jit(tree.weighted_sum)(stacked, weights)
  np.testing.assert_allclose(out['w'], stacked['w'].sum(0))


def test_l2_norm():
  t = {'a': jnp.array([3., 0.]), 'b': (jnp.array([[4.]]), jnp.array(12.))}
  # sqrt(9 + 16 + 144) = 13
  np.testing.assert_allclose(tree.l2_norm(t), 13.0, rtol=1e-6)
  np.testing.assert_allclose(jax.jit(tree.l2_norm)(t), 13.0, rtol=1e-6)


def test_l2_norm_empty_tree_is_zero():
  assert float(tree.l2_norm({})) == 0.0


def test_where_scalar_predicate():
  a = {'x': jnp.array([1., 2.]), 'y': jnp.array([[3.]])}
  b = {'x': jnp.array([-1., -2.]), 'y': jnp.array([[-3.]])}
  on = tree.where(jnp.array(True), a, b)
  off = tree.where(jnp.array(False), a, b)
  np.testing.assert_array_equal(on['x'], [1., 2.])
  np.testing.assert_array_equal(on['y'], [[3.]])
  np.testing.assert_array_equal(off['x'], [-1., -2.])
  np.testing.assert_array_equal(off['y'], [[-3.]])
  # Traced predicate, as in a scan over padded steps.
  f = jax.jit(lambda p: tree.where(p, a, b))
  np.testing.assert_array_equal(f(False)['x'], [-1., -2.])


def test_stack_unstack_round_trip():
  trees = [{'a': np.full((2,), i, np.float32), 'b': (np.array(i * 10.),)}
           for i in range(4)]
  stacked = tree.stack(trees)
  assert stacked['a'].shape == (4, 2)
  assert stacked['b'][0].shape == (4,)
  np.testing.assert_array_equal(stacked['b'][0], [0., 10., 20., 30.])
  back = tree.unstack(stacked)
  assert len(back) == 4
  for original, restored in zip(trees, back):
    assert jax.tree.structure(original) == jax.tree.structure(restored)
    for x, y in zip(jax.tree.leaves(original), jax.tree.leaves(restored)):
      np.testing.assert_array_equal(x, y)


def test_unstack_empty_tree():
  assert tree.unstack({}) == []


@pytest.mark.parametrize('t, expected', [
    ({}, 0),
    ({'a': np.zeros((2, 3)), 'b': [np.zeros(5), np.zeros(())]}, 6 + 5 + 1),
    ((jnp.zeros((784, 200)), jnp.zeros(200)), 784 * 200 + 200),
])
def test_size(t, expected):
  assert tree.size(t) == expected
  assert isinstance(tree.size(t), int)


def test_add_sub_scale_zeros_like():
  a = {'x': jnp.array([1., 2.])}
  b = {'x': jnp.array([10., 20.])}
  np.testing.assert_array_equal(tree.add(a, b)['x'], [11., 22.])
  np.testing.assert_array_equal(tree.sub(a, b)['x'], [-9., -18.])
  np.testing.assert_array_equal(tree.scale(a, 3.)['x'], [3., 6.])
  np.testing.assert_array_equal(tree.zeros_like(a)['x'], [0., 0.])


def test_psum_packed_equals_psum_of_every_leaf():
  from fedjax_engine import simulate  # pylint: disable=g-import-not-at-top
  tree = {'w': jnp.arange(24.0).reshape(4, 2, 3), 'b': jnp.arange(4.0),
          'n': jnp.arange(4, dtype=jnp.int32), 's': jnp.ones((4,), jnp.float16)}
  mesh = jax.sharding.Mesh(np.array(jax.devices()[:4]), ('d',))
  spec = jax.sharding.PartitionSpec('d')

  def both(t):
    t = jax.tree.map(lambda x: x[0], t)
    return simulate.psum_packed(t, 'd'), jax.lax.psum(t, 'd')

  packed, plain = jax.jit(jax.shard_map(
      both, mesh=mesh, in_specs=(spec,),
      out_specs=jax.sharding.PartitionSpec()))(tree)
  for name in tree:
    assert packed[name].dtype == tree[name].dtype
    np.testing.assert_array_equal(packed[name], plain[name])
  np.testing.assert_array_equal(packed['b'], 6.0)
