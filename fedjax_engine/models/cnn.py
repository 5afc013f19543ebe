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
``flax.linen.Conv`` (``kernel [kh, kw, in, out]``, ``bias [out]``) and three
interchangeable implementations: XLA's native convolution; the kh*kw
shifted slices of the input concatenated on the channel axis and one matmul;
and, for 3x3 stride-1 layers, Winograd's F(4x4, 3x3) (Lavin & Gray, "Fast
Algorithms for Convolutional Neural Networks", CVPR 2016;
:func:`conv2d_winograd`), 4x fewer multiplies. On XLA:CPU the native
convolution's weight gradient inside a loop body (``lax.scan`` over local
steps, ``lax.map`` over clients) is 50-80x slower than unrolled
(jax-ml/jax#12868); the slices and Winograd forms differentiate into slices,
adds and matmuls and have no such cliff. ``conv_impl='auto'`` (the default)
picks, on CPU, Winograd for 3x3 stride-1 layers with at least
``WINOGRAD_MIN_CHANNELS`` input channels and slices for the others (a local
step of the EMNIST CNN: 17 ms against 29 ms with slices everywhere,
``benchmarks/cnn_cpu.py --profile``); elsewhere the native convolution. All
compute the same function of the same parameters, up to float rounding
(Winograd: relative error about 3e-6, tests/test_conv_winograd.py). Dense
layers are
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
import numpy as np

from fedjax_engine.model import Model, from_linen
from fedjax_engine.models import dense

IMAGE_SIZE = 28
CONV_IMPLS = ('auto', 'xla', 'slices', 'winograd')
# 'auto' on CPU: Winograd for 3x3 stride-1 layers with at least this many
# input channels. With one input channel (the first layer of a grayscale
# CNN) the transforms cost more than the multiplies they save (measured in
# benchmarks/cnn_cpu.py --profile).
WINOGRAD_MIN_CHANNELS = 16


def _resolve_impl(impl: str) -> str:
  if impl not in CONV_IMPLS:
    raise ValueError(f'conv_impl must be one of {CONV_IMPLS}, got {impl!r}.')
  if impl == 'auto':
    return 'winograd' if jax.default_backend() == 'cpu' else 'xla'
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


# Winograd minimal filtering F(m, 3) (Lavin & Gray, "Fast Algorithms for
# Convolutional Neural Networks", CVPR 2016, section 4): for an input tile d of
# length m + 2 and a filter g of length 3, the m outputs of their correlation
# are ``A^T [(G g) * (B^T d)]``. Nested in 2-D, ``A^T [(G g G^T) * (B^T d B)]
# A`` gives an m x m output tile from (m + 2)^2 multiplies instead of 9 m^2:
# 2.25x fewer for m = 2, 4x fewer for m = 4. Rows are (B^T, G, A^T); the
# interpolation points are 0, 1, -1 (m = 2) and 0, 1, -1, 2, -2 (m = 4), plus
# infinity. Exact in real arithmetic; in float32 the m = 4 transforms' larger
# coefficients cost a few more roundings (measured in tests/test_conv_winograd).
_WINOGRAD = {
    2: (((1, 0, -1, 0), (0, 1, 1, 0), (0, -1, 1, 0), (0, 1, 0, -1)),
        ((1, 0, 0), (.5, .5, .5), (.5, -.5, .5), (0, 0, 1)),
        ((1, 1, 1, 0), (0, 1, -1, -1))),
    4: (((4, 0, -5, 0, 1, 0), (0, -4, -4, 1, 1, 0), (0, 4, -4, -1, 1, 0),
         (0, -2, -1, 2, 1, 0), (0, 2, -1, -2, 1, 0), (0, 4, 0, -5, 0, 1)),
        ((1 / 4, 0, 0), (-1 / 6, -1 / 6, -1 / 6), (-1 / 6, 1 / 6, -1 / 6),
         (1 / 24, 1 / 12, 1 / 6), (1 / 24, -1 / 12, 1 / 6), (0, 0, 1)),
        ((1, 1, 1, 1, 1, 0), (0, 1, -1, 2, -2, 0), (0, 1, 1, 4, 4, 0),
         (0, 1, -1, 8, -8, 1))),
}


def _combine(rows, views):
  """``[sum_i rows[a][i] * views[i] for a]`` stacked on a new leading axis.

  Written as scaled adds, not a matmul with the constant matrix: the
  transform matrices are tiny and mostly 0 and +-1, so XLA fuses this into one
  elementwise pass over memory (and its transpose, for the gradient, too).
  """
  out = []
  for row in rows:
    terms = [v if c == 1 else -v if c == -1 else c * v
             for c, v in zip(row, views) if c != 0]
    total = terms[0]
    for t in terms[1:]:
      total = total + t
    out.append(total)
  return jnp.stack(out)


def conv2d_winograd(x, kernel, *, padding='SAME', tile=4):
  """A stride-1 3x3 convolution by Winograd's minimal filtering (NHWC, HWIO).

  Equal, up to float rounding, to ``lax.conv_general_dilated(x, kernel,
  (1, 1), padding, dimension_numbers=('NHWC', 'HWIO', 'NHWC'))``. Lavin &
  Gray, "Fast Algorithms for Convolutional Neural Networks", CVPR 2016:
  F(tile x tile, 3 x 3). The output is cut into ``tile x tile`` tiles; each
  tile's ``(tile+2)^2`` input window is transformed (``B^T d B``), the kernel
  too (``G g G^T``), then for every one of the ``(tile+2)^2`` transformed
  positions one matmul over channels, ``[tiles, Cin] x [Cin, Cout]``, and
  the inverse transform (``A^T m A``) gives the outputs. That is
  ``(tile+2)^2 / (9 tile^2)`` of the direct multiplies: 1/2.25 for tile 2,
  1/4 for tile 4. Everything is slices, scaled adds and one batched matmul,
  so autodiff turns the weight and input gradients into Winograd-sized
  batched matmuls as well. Output sizes that are not a multiple of ``tile``
  are padded up and cropped.

  Args:
    x: ``[N, H, W, Cin]``.
    kernel: ``[3, 3, Cin, Cout]``.
    padding: 'SAME' or 'VALID'.
    tile: output tile side, 2 or 4.

  Returns:
    ``[N, OH, OW, Cout]``.

  Example:

    >>> import jax.numpy as jnp
    >>> x = jnp.arange(16.).reshape((1, 4, 4, 1))
    >>> conv2d_winograd(x, jnp.ones((3, 3, 1, 1)), padding='VALID')[..., 0]
    Array([[[45., 54.],
            [81., 90.]]], dtype=float32)
  """
  if kernel.shape[:2] != (3, 3):
    raise ValueError(f'Winograd convolution takes 3x3 kernels, got '
                     f'{kernel.shape[:2]}.')
  if tile not in _WINOGRAD:
    raise ValueError(f'tile must be one of {sorted(_WINOGRAD)}, got {tile}.')
  if padding == 'SAME':
    x = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  elif padding != 'VALID':
    raise ValueError(f"padding must be 'SAME' or 'VALID', got {padding!r}.")
  bt, g, at = _WINOGRAD[tile]
  alpha = tile + 2
  n, h, w, cin = x.shape
  cout = kernel.shape[-1]
  oh, ow = h - 2, w - 2
  th, tw = -(-oh // tile), -(-ow // tile)
  # Zeros below and right make every tile whole; their outputs are cropped.
  x = jnp.pad(x, ((0, 0), (0, th * tile - oh), (0, tw * tile - ow), (0, 0)))

  def windows(a, axis, num):
    # The alpha shifted views at stride `tile`: view i holds element i of
    # every tile's window.
    return [jax.lax.slice_in_dim(a, i, i + tile * (num - 1) + 1, tile, axis)
            for i in range(alpha)]

  u = _combine(bt, windows(x, 1, th))          # [a_h, N, th, W, Cin]
  u = _combine(bt, windows(u, 3, tw))          # [a_w, a_h, N, th, tw, Cin]
  u = u.reshape((alpha * alpha, n * th * tw, cin))
  gm = jnp.asarray(g, kernel.dtype)
  v = jnp.einsum('pi,qj,ijco->qpco', gm, gm, kernel,
                 precision=jax.lax.Precision.HIGHEST)
  v = v.reshape((alpha * alpha, cin, cout))
  # The only multiply-heavy step: one [tiles, Cin] x [Cin, Cout] matmul per
  # transformed position, as a batched dot_general (batch axis first).
  m = jnp.einsum('ptc,pco->pto', u, v)
  m = m.reshape((alpha, alpha, n, th, tw, cout))
  y = _combine(at, [m[:, i] for i in range(alpha)])   # [t_h, a_w, N, ...]
  y = _combine(at, [y[:, i] for i in range(alpha)])   # [t_w, t_h, N, ...]
  y = y.transpose((2, 3, 1, 4, 0, 5)).reshape((n, th * tile, tw * tile, cout))
  return y[:, :oh, :ow]


class Conv2D(nn.Module):
  """``flax.linen.Conv``'s parameters with a choice of implementation.

  Attributes:
    features: output channels.
    kernel_size: ``(kh, kw)``.
    strides: ``(sh, sw)``.
    padding: 'SAME' or 'VALID'.
    use_bias: add a bias (initialised to zero).
    impl: 'xla' (native convolution), 'slices' (:func:`conv2d_slices`),
      'winograd' (:func:`conv2d_winograd`, 3x3 stride 1 only) or 'auto'
      (on CPU Winograd where it fits and pays, else slices; native
      elsewhere).
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
    impl = _resolve_impl(self.impl)
    winograd_fits = (kh, kw) == (3, 3) and strides == (1, 1)
    if impl == 'winograd' and self.impl == 'auto' and (
        not winograd_fits or x.shape[-1] < WINOGRAD_MIN_CHANNELS):
      impl = 'slices'
    if impl == 'winograd':
      if not winograd_fits:
        raise ValueError(f"conv_impl='winograd' takes 3x3 stride-1 "
                         f'convolutions, got kernel {(kh, kw)}, strides '
                         f'{strides}.')
      y = conv2d_winograd(x, kernel, padding=self.padding)
    elif impl == 'slices':
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
  """2x2 max pool, stride 2, 'VALID'.

  On even sizes a reshape and a max: its gradient is a compare and a select,
  where ``nn.max_pool``'s is XLA's select-and-scatter, which took 3.8 ms of
  a 23 ms EMNIST CNN step on CPU. The two differ only where a window holds
  equal maxima (the reshape form splits the gradient among them).
  """
  n, h, w, c = x.shape
  if h % 2 or w % 2:
    return nn.max_pool(x, window_shape=(2, 2), strides=(2, 2),
                       padding='VALID')
  return x.reshape((n, h // 2, 2, w // 2, 2, c)).max(axis=(2, 4))


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
    # relu(max_pool(x)) == max_pool(relu(x)); this order applies relu to a
    # quarter of the values.
    x = _max_pool(Conv2D(64, (3, 3), padding='VALID', impl=self.conv_impl)(x))
    x = nn.relu(x)
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
  return {'x': np.zeros((1, IMAGE_SIZE, IMAGE_SIZE, 1), np.float32)}


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
    conv_impl: 'auto', 'xla', 'slices' or 'winograd'; see the module
      docstring.

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
    conv_impl: 'auto', 'xla', 'slices' or 'winograd'; see the module
      docstring.

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
