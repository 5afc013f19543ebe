"""The Winograd convolution (``cnn.conv2d_winograd``) against XLA's.

Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks", CVPR
2016: F(m x m, 3 x 3) is exact in real arithmetic, so in float32 it must
agree with ``lax.conv_general_dilated`` to rounding, on outputs and on both
gradients (which autodiff derives through the same transforms). Tolerance:
relative to the largest magnitude of the reference, 2e-6 for F(2x2, 3x3)
and 2e-5 for F(4x4, 3x3), whose transforms have coefficients up to 8 and
1/24 (measured: about 4e-7 and 3e-6 on these inputs).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedjax_engine.models import cnn

TOLERANCE = {2: 2e-6, 4: 2e-5}


def _native(x, kernel, padding):
  return jax.lax.conv_general_dilated(
      x, kernel, (1, 1), padding, dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
      precision=jax.lax.Precision.HIGHEST)


def _close(got, want, tile):
  assert got.shape == want.shape
  scale = float(jnp.max(jnp.abs(want)))
  assert float(jnp.max(jnp.abs(got - want))) <= TOLERANCE[tile] * scale


@pytest.mark.parametrize('tile', [2, 4])
@pytest.mark.parametrize('padding', ['VALID', 'SAME'])
@pytest.mark.parametrize('height,width', [(26, 26), (9, 8), (5, 7), (3, 3)])
def test_equals_native_conv_and_its_gradients(tile, padding, height, width):
  rng = np.random.default_rng(height * 100 + width)
  x = jnp.asarray(rng.normal(size=(2, height, width, 5)), jnp.float32)
  kernel = jnp.asarray(rng.normal(size=(3, 3, 5, 7)), jnp.float32)
  fast = lambda x, k: cnn.conv2d_winograd(x, k, padding=padding, tile=tile)
  slow = lambda x, k: _native(x, k, padding)
  want, slow_vjp = jax.vjp(slow, x, kernel)
  got, fast_vjp = jax.vjp(fast, x, kernel)
  _close(got, want, tile)
  dy = jnp.asarray(rng.normal(size=want.shape), jnp.float32)
  for g, w in zip(fast_vjp(dy), slow_vjp(dy)):   # input, then kernel
    _close(g, w, tile)


def test_a_small_example_by_hand():
  # x = [[0, 1, 2, 3], [4, ..., 7], [8, ..., 11], [12, ..., 15]], a kernel
  # with 1 in the centre and -1 at the top left: each output is the input
  # under the centre minus the one up-left of it, x[i+1, j+1] - x[i, j] = 5.
  # Plus a second output channel, the sum of the 3x3 window: 45, 54 / 81, 90
  # (the top-left window 0+1+2+4+5+6+8+9+10 = 45; one step right adds 9,
  # one step down adds 36).
  x = jnp.arange(16.).reshape((1, 4, 4, 1))
  k = np.zeros((3, 3, 1, 2), np.float32)
  k[1, 1, 0, 0], k[0, 0, 0, 0] = 1, -1
  k[:, :, 0, 1] = 1
  for tile in (2, 4):
    y = cnn.conv2d_winograd(x, jnp.asarray(k), padding='VALID', tile=tile)
    np.testing.assert_allclose(y[0, :, :, 0], [[5, 5], [5, 5]], atol=1e-5)
    np.testing.assert_allclose(y[0, :, :, 1], [[45, 54], [81, 90]],
                               atol=1e-4)
  # 'SAME' with the summing kernel: a corner sums its 2x2 neighbourhood,
  # 0 + 1 + 4 + 5 = 10 at the top left, 10 + 11 + 14 + 15 = 50 bottom right.
  y = cnn.conv2d_winograd(x, jnp.ones((3, 3, 1, 1)), padding='SAME')
  assert y.shape == (1, 4, 4, 1)
  np.testing.assert_allclose([y[0, 0, 0, 0], y[0, 3, 3, 0]], [10, 50],
                             atol=1e-4)


def test_winograd_model_equals_native_model():
  x = {'x': jax.random.uniform(jax.random.key(1), (3, 28, 28))}
  fast = cnn.emnist_cnn(conv_impl='winograd', dropout=False)
  native = cnn.emnist_cnn(conv_impl='xla', dropout=False)
  params = fast.init(jax.random.key(0))
  loss = lambda m: lambda p: jnp.sum(m.apply(p, x) ** 2)
  got, want = loss(fast)(params), loss(native)(params)
  np.testing.assert_allclose(got, want, rtol=1e-5)
  grads = jax.grad(loss(fast))(params), jax.grad(loss(native))(params)
  for g, w in zip(*map(jax.tree.leaves, grads)):
    np.testing.assert_allclose(g, w, rtol=1e-4,
                               atol=1e-5 * float(jnp.max(jnp.abs(w))))


def test_argument_errors():
  x = jnp.zeros((1, 8, 8, 2))
  with pytest.raises(ValueError, match='3x3'):
    cnn.conv2d_winograd(x, jnp.zeros((5, 5, 2, 3)))
  with pytest.raises(ValueError, match='tile'):
    cnn.conv2d_winograd(x, jnp.zeros((3, 3, 2, 3)), tile=3)
  with pytest.raises(ValueError, match='padding'):
    cnn.conv2d_winograd(x, jnp.zeros((3, 3, 2, 3)), padding='FULL')
  with pytest.raises(ValueError, match='stride-1'):
    jax.eval_shape(cnn.femnist_cnn(conv_impl='winograd').init,
                   jax.random.key(0))
