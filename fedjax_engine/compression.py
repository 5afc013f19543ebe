"""Compressed uplink: quantization, sparsification with error feedback, DRIVE.

Each compressor is a :class:`fedjax_engine.transforms.Transform` whose
client part encodes the client's output and at once decodes it: the
simulation needs only what the server would decode and the exact size of
the message, not the message itself. Every compressor treats the client's
whole output (every leaf, in ``jax.tree.leaves`` order) as ONE float32
vector ``x`` of ``d`` coordinates, as the papers do; values and scales are
sent as 32-bit floats. Client metrics (``Mean(bits, 1)``: bits per client):
``uplink_bits`` (the encoding, counted exactly as below),
``uplink_bits_uncompressed`` (``32 d``) and ``downlink_bits`` (``32`` times
the params' size: the broadcast of the params, uncompressed; state an
algorithm also broadcasts, such as SCAFFOLD's control variate, is not
counted).

* :func:`quantize`: stochastic ``b``-bit quantization between the vector's
  min and max, Suresh, Yu, Kumar and McMahan, "Distributed Mean Estimation
  with Limited Communication", ICML 2017 (stochastic k-level quantization,
  ``k = 2^b``). With ``s = 2^b - 1`` and ``delta = (max - min) / s``, each
  coordinate goes to one of its two neighbouring levels,

    Q(x_i) = min + delta * (floor(u_i) + Bernoulli(u_i - floor(u_i))),
    u_i = (x_i - min) / delta,

  so ``E[Q(x)] = x`` (unbiased), ``|Q(x_i) - x_i| < delta``. Bits:
  ``b d + 2 * 32`` (a level index per coordinate, min and max).
* :func:`top_k` and :func:`random_k`: the ``k = max(1, round(f d))``
  coordinates of largest magnitude, or ``k`` drawn uniformly without
  replacement with the client's key, with error feedback (Stich,
  Cordonnier and Jaggi, "Sparsified SGD with Memory", NeurIPS 2018;
  Karimireddy, Rebjock, Stich and Jaggi, "Error Feedback Fixes SignSGD and
  other Gradient Compression Schemes", ICML 2019): the client keeps what it
  did not send, ``e``, and adds it to its next output,

    a = x + e,   sent = C(a),   e <- a - sent.

  Bits: top-k ``k (32 + ceil(log2 d))`` (values and indices); random-k
  ``32 k``, its indices following from the key, which the server can derive
  as it derives every client's key. Without error feedback random-k scales
  what it sends by ``d / k``, which makes it unbiased; with error feedback
  it does not (the memory returns the rest later, as in Stich et al.).
* :func:`drive`: DRIVE, Vargaftik, Ben-Basat, Portnoy, Mendelson,
  Ben-Itzhak and Mitzenmacher, "DRIVE: One-bit Distributed Mean
  Estimation", NeurIPS 2021. ``x``, padded with zeros to ``n = 2^m >= d``,
  is rotated by the randomized Hadamard transform ``R = H D / sqrt(n)``
  (``D`` random signs from the client's key, shared with the server; ``H``
  the Sylvester Hadamard matrix, applied in ``m`` stages of reshapes), and
  one bit per rotated coordinate is sent with one scale:

    y = R x,   S = ||x||_2^2 / ||y||_1,   x_hat = R^T (S sign(y)).

  This ``S`` makes ``<x_hat, x> = ||x||^2`` for every draw, which for a
  uniformly random rotation makes DRIVE unbiased (the paper's unbiased
  scale); for the randomized Hadamard transform, which the paper uses in
  practice, unbiasedness is approximate. Bits: ``n + 32``.

The error-feedback residual is a row of the client-state table built by
``init_client_state(params)``, so it has the params' structure: error
feedback works for algorithms whose client output has the params'
structure (FedAvg, FedProx, ...). An output of another structure (SCAFFOLD
sends ``(delta, control_delta)``) raises ``ValueError`` when the round is
traced; the compressors without memory work for any output. Put one
compressor on an algorithm: a second would report its own ``uplink_bits``
over the first's.

Example (keep the 2 largest of 4 coordinates, memory off):

  >>> import jax, jax.numpy as jnp
  >>> t = top_k(fraction=0.5, error_feedback=False)
  >>> sent, _, m = t.client(t.init(jnp.zeros(4)), jnp.array([3., -1., .5, -4.]),
  ...                       (), jax.random.key(0), 0)
  >>> sent.tolist(), float(m['uplink_bits'].total)
  ([3.0, 0.0, 0.0, -4.0], 68.0)
"""

from typing import Callable

import jax
import jax.numpy as jnp

from fedjax_engine import tree
from fedjax_engine.model import Mean
from fedjax_engine.transforms import Transform

# Values, scales and uncompressed coordinates are 32-bit floats.
FLOAT_BITS = 32
# The choices of transforms_from_flags (and of the --compression flag).
COMPRESSIONS = ('none', 'quantize', 'top_k', 'random_k', 'drive')
# float32 carries 24 significant bits: beyond them the levels of a b-bit
# grid between min and max are no longer distinct.
MAX_QUANTIZE_BITS = 24


def _flatten(output):
  """The output's leaves as one float32 vector, and the way back."""
  leaves, treedef = jax.tree.flatten(output)
  if not leaves:
    raise ValueError('compression needs a client output with at least one '
                     'array, got an empty tree.')
  for x in leaves:
    if not jnp.issubdtype(x.dtype, jnp.floating):
      raise ValueError(f'compression acts on floating-point client outputs, '
                       f'got a leaf of dtype {x.dtype}.')
  vector = jnp.concatenate([jnp.ravel(x).astype(jnp.float32) for x in leaves])

  def unflatten(v):
    parts, start = [], 0
    for x in leaves:
      parts.append(v[start:start + x.size].reshape(x.shape).astype(x.dtype))
      start += x.size
    return jax.tree.unflatten(treedef, parts)

  return vector, unflatten


def _check_residual(residual, output):
  """Raises at trace time unless the residual can be added to the output."""
  same = jax.tree.structure(residual) == jax.tree.structure(output) and all(
      r.shape == o.shape for r, o in zip(jax.tree.leaves(residual),
                                         jax.tree.leaves(output)))
  if not same:
    raise ValueError(
        'error feedback keeps a residual shaped like the params '
        f'({jax.tree.structure(residual)}), but this algorithm\'s client '
        f'output is {jax.tree.structure(output)} with shapes '
        f'{[o.shape for o in jax.tree.leaves(output)]}: use error_feedback='
        'False (or quantize / drive) for it.')


def _compressor(encode: Callable, *, error_feedback: bool) -> Transform:
  """A transform from ``encode(x, key) -> (decoded x, bits)`` on the flat
  output vector, with an error-feedback residual if asked."""
  def init(params):
    # The params' size is static; keeping it in the state lets every client
    # report the downlink without seeing the params.
    return jnp.asarray(FLOAT_BITS * tree.size(params), jnp.float32)

  def client(state, output, row, key, client):
    del client
    if error_feedback:
      _check_residual(row, output)
      output = jax.tree.map(lambda o, r: o + r.astype(o.dtype), output, row)
    vector, unflatten = _flatten(output)
    decoded, bits = encode(vector, key)
    sent = unflatten(decoded)
    if error_feedback:
      row = jax.tree.map(lambda a, s, r: (a - s).astype(r.dtype), output,
                         sent, row)
    one = jnp.ones((), jnp.float32)
    metrics = {
        'uplink_bits': Mean(jnp.asarray(bits, jnp.float32), one),
        'uplink_bits_uncompressed': Mean(
            jnp.asarray(FLOAT_BITS * vector.size, jnp.float32), one),
        'downlink_bits': Mean(state, one),
    }
    return sent, row, metrics

  return Transform(client=client, init=init,
                   init_client_state=tree.zeros_like if error_feedback
                   else None)


def _check_bool(name, value):
  if not isinstance(value, bool):
    raise ValueError(f'{name} must be a bool, got {value!r}.')


def _check_fraction(fraction):
  if not (isinstance(fraction, (int, float)) and not isinstance(
      fraction, bool) and 0 < fraction <= 1):
    raise ValueError(f'fraction must be a number in (0, 1], got '
                     f'{fraction!r}.')


def num_kept(fraction: float, size: int) -> int:
  """``k``, the coordinates a sparsifier keeps of ``size``: ``fraction *
  size`` rounded to the nearest integer (halves up), at least 1."""
  return max(1, int(fraction * size + 0.5))


def quantize(*, bits: int, stochastic: bool = True) -> Transform:
  """Uniform ``bits``-bit quantization between the output's min and max.

  Args:
    bits: bits per coordinate, 1 to 24: ``2^bits`` levels.
    stochastic: round to a neighbouring level at random, unbiased (Suresh
      et al., 2017); False rounds to the nearest level, biased.

  Returns:
    The transform; client metrics ``uplink_bits`` (``bits * d + 64``),
    ``uplink_bits_uncompressed``, ``downlink_bits``.
  """
  if not (isinstance(bits, int) and not isinstance(bits, bool) and
          1 <= bits <= MAX_QUANTIZE_BITS):
    raise ValueError(f'bits must be an int in [1, {MAX_QUANTIZE_BITS}], got '
                     f'{bits!r}.')
  _check_bool('stochastic', stochastic)
  levels = 2 ** bits - 1

  def encode(x, key):
    lo, hi = jnp.min(x), jnp.max(x)
    spread = hi - lo > 0
    # A constant vector is sent exactly by its min alone.
    step = jnp.where(spread, (hi - lo) / levels, 1.0)
    u = jnp.where(spread, (x - lo) / step, 0.0)
    if stochastic:
      low = jnp.floor(u)
      q = low + (jax.random.uniform(key, x.shape) < u - low).astype(x.dtype)
    else:
      q = jnp.round(u)
    # Rounding in (x - lo) / step can overshoot the top level by an ulp.
    q = jnp.clip(q, 0, levels)
    return lo + q * step, bits * x.size + 2 * FLOAT_BITS

  return _compressor(encode, error_feedback=False)


def top_k(*, fraction: float, error_feedback: bool = True) -> Transform:
  """Sends the ``num_kept(fraction, d)`` coordinates of largest magnitude
  (the lower index first among equal ones).

  Args:
    fraction: the share of coordinates sent, in (0, 1].
    error_feedback: keep what was not sent in the client's state and add it
      to its next output (Stich et al., 2018). Needs an output with the
      params' structure.

  Returns:
    The transform; client metrics ``uplink_bits`` (``k * (32 +
    ceil(log2 d))``), ``uplink_bits_uncompressed``, ``downlink_bits``.
  """
  _check_fraction(fraction)
  _check_bool('error_feedback', error_feedback)

  def encode(x, key):
    del key
    k = num_kept(fraction, x.size)
    _, index = jax.lax.top_k(jnp.abs(x), k)
    index_bits = (x.size - 1).bit_length()   # ceil(log2 d)
    return (jnp.zeros_like(x).at[index].set(x[index]),
            k * (FLOAT_BITS + index_bits))

  return _compressor(encode, error_feedback=error_feedback)


def random_k(*, fraction: float, error_feedback: bool = True) -> Transform:
  """Sends ``num_kept(fraction, d)`` coordinates drawn uniformly without
  replacement with the client's key.

  Args:
    fraction: the share of coordinates sent, in (0, 1].
    error_feedback: keep what was not sent in the client's state and add it
      to its next output (Stich et al., 2018), sending the kept values as
      they are; without it the kept values are scaled by ``d / k``, which
      makes the compressor unbiased. Memory needs an output with the params'
      structure.

  Returns:
    The transform; client metrics ``uplink_bits`` (``32 k``: the indices
    follow from the key), ``uplink_bits_uncompressed``, ``downlink_bits``.
  """
  _check_fraction(fraction)
  _check_bool('error_feedback', error_feedback)

  def encode(x, key):
    k = num_kept(fraction, x.size)
    # The k largest of d uniforms: a uniform k-subset, without the full
    # permutation that choice(replace=False) draws (10x faster at d = 2e5).
    _, index = jax.lax.top_k(jax.random.uniform(key, (x.size,)), k)
    scale = 1.0 if error_feedback else x.size / k
    return jnp.zeros_like(x).at[index].set(scale * x[index]), FLOAT_BITS * k

  return _compressor(encode, error_feedback=error_feedback)


def hadamard_transform(x):
  """``H x / sqrt(n)`` along the last axis, ``H`` the ``n x n`` Sylvester
  Hadamard matrix (``H_1 = [1]``, ``H_2n = [[H_n, H_n], [H_n, -H_n]]``),
  ``n`` a power of 2: orthonormal and its own inverse. ``log2(n)``
  butterfly stages, ``O(n log n)``.

  Example:

    >>> import jax.numpy as jnp
    >>> hadamard_transform(jnp.array([1., 0., 0., 0.])).tolist()
    [0.5, 0.5, 0.5, 0.5]
  """
  n = x.shape[-1]
  if n < 1 or n & (n - 1):
    raise ValueError(f'the last axis of x must have a power-of-2 length, '
                     f'got {n}.')
  batch = x.shape[:-1]
  half = 1
  while half < n:
    # Pairs of blocks of `half` coordinates: (a, b) -> (a + b, a - b).
    pairs = x.reshape(batch + (n // (2 * half), 2, half))
    a, b = pairs[..., 0, :], pairs[..., 1, :]
    x = jnp.stack([a + b, a - b], axis=-2).reshape(batch + (n,))
    half *= 2
  return x / jnp.sqrt(jnp.asarray(n, x.dtype))


def drive() -> Transform:
  """DRIVE: one bit per coordinate after a randomized Hadamard rotation,
  and one scale (Vargaftik et al., 2021; see the module).

  Returns:
    The transform; client metrics ``uplink_bits`` (``n + 32``, ``n`` the
    output's size padded to a power of 2), ``uplink_bits_uncompressed``,
    ``downlink_bits``.
  """
  def encode(x, key):
    d = x.size
    n = 1 << (d - 1).bit_length()
    padded = jnp.pad(x, (0, n - d))
    signs = jax.random.rademacher(key, (n,), jnp.float32)
    y = hadamard_transform(signs * padded)
    # One bit per coordinate: a zero goes as +1 (jnp.sign would give 0).
    bit = jnp.where(y >= 0, 1.0, -1.0)
    l1 = jnp.sum(jnp.abs(y))
    scale = jnp.where(l1 > 0, jnp.sum(x * x) / jnp.where(l1 > 0, l1, 1.0),
                      0.0)
    return (signs * hadamard_transform(scale * bit))[:d], n + FLOAT_BITS

  return _compressor(encode, error_feedback=False)


def transforms_from_flags(*, compression: str = 'none', bits: int = 8,
                          fraction: float = 0.01,
                          error_feedback: bool = True) -> list[Transform]:
  """The compressor that command-line flags ask for, as a list of
  transforms for :func:`fedjax_engine.transforms.apply`.

  Args:
    compression: one of :data:`COMPRESSIONS`; 'none' gives ``[]``.
    bits: bits per coordinate of 'quantize' (``--quantize_bits``).
    fraction: share of coordinates 'top_k' and 'random_k' send
      (``--sparsity_fraction``).
    error_feedback: memory of what 'top_k' and 'random_k' did not send
      (``--error_feedback``).

  Only the values the chosen compressor reads are checked.
  """
  if compression not in COMPRESSIONS:
    raise ValueError(f'compression must be one of {COMPRESSIONS}, got '
                     f'{compression!r}.')
  if compression == 'none':
    return []
  if compression == 'quantize':
    return [quantize(bits=bits)]
  if compression == 'top_k':
    return [top_k(fraction=fraction, error_feedback=error_feedback)]
  if compression == 'random_k':
    return [random_k(fraction=fraction, error_feedback=error_feedback)]
  return [drive()]
