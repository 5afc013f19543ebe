"""Convolutional classifiers for 28x28 grayscale images: EMNIST and FEMNIST.

Two published networks:

* :func:`emnist_cnn`, the EMNIST CNN of Reddi et al., "Adaptive Federated
  Optimization", ICLR 2021 (also FedJAX's ``fedjax.models.emnist.
  create_conv_model``): 1,206,590 parameters for 62 classes.
* :func:`femnist_cnn`, the FEMNIST CNN of the LEAF benchmark, Caldas et al.,
  "LEAF: A Benchmark for Federated Settings", 2018 (``models/femnist/cnn.py``
  in the LEAF repository): 6,603,710 parameters for 62 classes.

Both take images ``[N, 28, 28]`` or ``[N, 28, 28, 1]`` (a channel axis is
added when missing). Flat ``[N, 784]`` inputs, as LEAF stores them, are
reshaped to 28x28 too.

Convolutions run through :class:`Conv2D`, which has the parameters of
``flax.linen.Conv`` (``kernel [kh, kw, in, out]``, ``bias [out]``) and two
interchangeable implementations: XLA's native convolution, or the kh*kw
shifted slices of the input concatenated on the channel axis and one matmul.
On XLA:CPU the native convolution's weight gradient inside a loop body
(``lax.scan`` over local steps, ``lax.map`` over clients) is 50-80x slower
than unrolled (jax-ml/jax#12868); the slices form differentiates into
slices, pads and matmuls and has no such cliff. ``conv_impl='auto'`` (the
default) picks slices on CPU and the native convolution elsewhere; both give
the same function of the same parameters. Dense layers are
:class:`fedjax_engine.models.dense.Dense` (kernel ``[out, in]``, a 9%
shorter EMNIST CNN round on CPU than with ``flax.linen.Dense``).

Example:

  >>> import jax, jax.numpy as jnp
  >>> model = emnist_cnn(num_classes=62)
  >>> # model.init(key) builds the parameters; eval_shape only traces.
  >>> params = jax.eval_shape(model.init, jax.random.key(0))
  >>> sum(p.size for p in jax.tree.leaves(params))
  1206590
  >>> jax.eval_shape(model.apply, params, {'x': jnp.zeros((2, 28, 28))}).shape
  (2, 62)
"""

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from fedjax_engine.model import Model, from_linen
from fedjax_engine.models import dense

IMAGE_SIZE = 28
CONV_IMPLS = ('auto', 'xla', 'slices')


def _resolve_impl(impl: str) -> str:
  if impl not in CONV_IMPLS:
    raise ValueError(f'conv_impl must be one of {CONV_IMPLS}, got {impl!r}.')
  if impl == 'auto':
    return 'slices' if jax.default_backend() == 'cpu' else 'xla'
  return impl


def _same_pads(size: int, kernel: int, stride: int) -> tuple[int, int]:
  """TensorFlow/flax 'SAME' padding: output ceil(size / stride)."""
  out = -(-size // stride)
  total = max((out - 1) * stride + kernel - size, 0)
  return total // 2, total - total // 2


def conv2d_slices(x, kernel, *, strides=(1, 1), padding='SAME'):
  """A 2-D convolution as shifted slices and one matmul (NHWC, HWIO).

  Equal to ``lax.conv_general_dilated(x, kernel, strides, padding,
  dimension_numbers=('NHWC', 'HWIO', 'NHWC'))`` for ``padding`` 'SAME' or
  'VALID'. The kh*kw strided views of the (padded) input are concatenated on
  the channel axis, ``[N, oh, ow, kh*kw*C]``, and multiplied by the kernel
  reshaped to ``[kh*kw*C, O]``.
  """
  kh, kw, cin, cout = kernel.shape
  sh, sw = strides
  if padding == 'SAME':
    pads = (_same_pads(x.shape[1], kh, sh), _same_pads(x.shape[2], kw, sw))
    x = jnp.pad(x, ((0, 0), pads[0], pads[1], (0, 0)))
  elif padding != 'VALID':
    raise ValueError(f"padding must be 'SAME' or 'VALID', got {padding!r}.")
  oh = (x.shape[1] - kh) // sh + 1
  ow = (x.shape[2] - kw) // sw + 1
  views = [x[:, i:i + (oh - 1) * sh + 1:sh, j:j + (ow - 1) * sw + 1:sw, :]
           for i in range(kh) for j in range(kw)]
  patches = views[0] if len(views) == 1 else jnp.concatenate(views, axis=-1)
  return patches @ kernel.reshape((kh * kw * cin, cout))


class Conv2D(nn.Module):
  """``flax.linen.Conv``'s parameters with a choice of implementation.

  Attributes:
    features: output channels.
    kernel_size: ``(kh, kw)``.
    strides: ``(sh, sw)``.
    padding: 'SAME' or 'VALID'.
    use_bias: add a bias (initialised to zero).
    impl: 'xla' (native convolution), 'slices' (:func:`conv2d_slices`) or
      'auto' (slices on CPU, native elsewhere).
  """
  features: int
  kernel_size: Sequence[int] = (3, 3)
  strides: Sequence[int] = (1, 1)
  padding: str = 'SAME'
  use_bias: bool = True
  impl: str = 'auto'

  @nn.compact
  def __call__(self, x):
    kh, kw = self.kernel_size
    kernel = self.param('kernel', nn.initializers.lecun_normal(),
                        (kh, kw, x.shape[-1], self.features), jnp.float32)
    strides = tuple(self.strides)
    if _resolve_impl(self.impl) == 'slices':
      y = conv2d_slices(x, kernel, strides=strides, padding=self.padding)
    else:
      y = jax.lax.conv_general_dilated(
          x, kernel, strides, self.padding,
          dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
    if self.use_bias:
      bias = self.param('bias', nn.initializers.zeros, (self.features,),
                        jnp.float32)
      y = y + bias.reshape((1, 1, 1, -1))
    return y


def _as_image(x):
  """``[N, 28, 28]``, ``[N, 784]`` or ``[N, 28, 28, 1]`` -> NHWC float."""
  x = jnp.asarray(x, jnp.float32)
  if x.ndim == 2:
    x = x.reshape((x.shape[0], IMAGE_SIZE, IMAGE_SIZE))
  if x.ndim == 3:
    x = x[..., None]
  return x


def _max_pool(x):
  return nn.max_pool(x, window_shape=(2, 2), strides=(2, 2), padding='VALID')


class EmnistCNN(nn.Module):
  """conv3x3(32) - relu - conv3x3(64) - relu - maxpool 2x2 - dropout 0.25 -
  dense(128) - relu - dropout 0.5 - dense(num_classes); 'VALID' convs."""
  num_classes: int = 62
  dropout: bool = True
  conv_impl: str = 'auto'

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = _as_image(x)
    x = nn.relu(Conv2D(32, (3, 3), padding='VALID', impl=self.conv_impl)(x))
    x = nn.relu(Conv2D(64, (3, 3), padding='VALID', impl=self.conv_impl)(x))
    x = _max_pool(x)
    if self.dropout:
      x = nn.Dropout(0.25, deterministic=not train)(x)
    x = x.reshape((x.shape[0], -1))
    x = nn.relu(dense.Dense(128)(x))
    if self.dropout:
      x = nn.Dropout(0.5, deterministic=not train)(x)
    return dense.Dense(self.num_classes)(x)


class FemnistCNN(nn.Module):
  """conv5x5(32) - relu - maxpool - conv5x5(64) - relu - maxpool -
  dense(2048) - relu - dense(num_classes); 'SAME' convs, 2x2/2 pools."""
  num_classes: int = 62
  conv_impl: str = 'auto'

  @nn.compact
  def __call__(self, x):
    x = _as_image(x)
    x = _max_pool(nn.relu(Conv2D(32, (5, 5), impl=self.conv_impl)(x)))
    x = _max_pool(nn.relu(Conv2D(64, (5, 5), impl=self.conv_impl)(x)))
    x = x.reshape((x.shape[0], -1))
    x = nn.relu(dense.Dense(2048)(x))
    return dense.Dense(self.num_classes)(x)


def _sample():
  return {'x': jnp.zeros((1, IMAGE_SIZE, IMAGE_SIZE, 1), jnp.float32)}


def emnist_cnn(*, num_classes: int = 62, dropout: bool = True,
               conv_impl: str = 'auto') -> Model:
  """The EMNIST CNN of Reddi et al. (2021) and FedJAX.

  Layers (FedJAX ``fedjax/models/emnist.py``, ``ConvDropoutModule``; Reddi
  et al., "Adaptive Federated Optimization", ICLR 2021, appendix model
  table): 3x3 conv, 32 channels, 'VALID' - relu - 3x3 conv, 64, 'VALID' -
  relu - 2x2 max pool, stride 2 - dropout 0.25 - flatten (12*12*64 = 9216) -
  dense 128 - relu - dropout 0.5 - dense ``num_classes``.

  Parameters: ``(3*3*1*32 + 32) + (3*3*32*64 + 64) + (9216*128 + 128) +
  (128*C + C)`` = 1,198,592 + 129*C: 1,206,590 for C = 62 (EMNIST-62),
  1,199,882 for C = 10 (digits only).

  Args:
    num_classes: 62 for EMNIST-62/FEMNIST, 10 for digits only.
    dropout: keep the two dropout layers (active only when ``train=True``).
    conv_impl: 'auto', 'xla' or 'slices'; see the module docstring.

  Example:

    >>> import jax, jax.numpy as jnp
    >>> model = emnist_cnn(num_classes=10)
    >>> params = jax.eval_shape(model.init, jax.random.key(0))
    >>> sum(p.size for p in jax.tree.leaves(params))
    1199882
    >>> batch = {'x': jnp.zeros((3, 28, 28, 1))}
    >>> logits = jax.eval_shape(lambda p, b: model.apply(
    ...     p, b, key=jax.random.key(1), train=True), params, batch)
    >>> logits.shape
    (3, 10)
  """
  _resolve_impl(conv_impl)
  return from_linen(EmnistCNN(num_classes=num_classes, dropout=dropout,
                              conv_impl=conv_impl), sample_batch=_sample())


def femnist_cnn(*, num_classes: int = 62, conv_impl: str = 'auto') -> Model:
  """The LEAF FEMNIST CNN (Caldas et al., 2018).

  Layers (LEAF ``models/femnist/cnn.py``): 5x5 conv, 32 channels, 'SAME' -
  relu - 2x2 max pool, stride 2 (28 -> 14) - 5x5 conv, 64, 'SAME' - relu -
  2x2 max pool, stride 2 (14 -> 7) - flatten (7*7*64 = 3136) - dense 2048 -
  relu - dense ``num_classes``. No dropout.

  Parameters: ``(5*5*1*32 + 32) + (5*5*32*64 + 64) + (3136*2048 + 2048) +
  (2048*C + C)`` = 6,476,672 + 2049*C: 6,603,710 for C = 62.

  Args:
    num_classes: 62 for FEMNIST.
    conv_impl: 'auto', 'xla' or 'slices'; see the module docstring.

  Example:

    >>> import jax, jax.numpy as jnp
    >>> model = femnist_cnn()
    >>> params = jax.eval_shape(model.init, jax.random.key(0))
    >>> sum(p.size for p in jax.tree.leaves(params))
    6603710
    >>> jax.eval_shape(model.apply, params, {'x': jnp.zeros((2, 784))}).shape
    (2, 62)
  """
  _resolve_impl(conv_impl)
  return from_linen(FemnistCNN(num_classes=num_classes, conv_impl=conv_impl),
                    sample_batch=_sample())
