"""Secure aggregation, simulated faithfully, for any algorithm.

The server learns only the sum of the clients' outputs, never one output
(Bonawitz et al., "Practical Secure Aggregation for Privacy-Preserving
Machine Learning", CCS 2017), and with SecAgg+ each client masks with a
few neighbours instead of everyone (Bell et al., "Secure Single-Server
Aggregation with (Poly)Logarithmic Overhead", CCS 2020). Each participant
``i`` of a round, inside the compiled round and vectorized over clients:

1. clips every coordinate of its output to ``[-c, c]`` and encodes it in
   fixed point, ``q_i = floor(x s) + [u < frac(x s)]`` with ``u`` uniform
   (unbiased rounding), ``s = L / c`` and ``L = floor((2^(b-1) - 1) / n)``
   for at most ``n`` summed clients: no sum of encodings can leave
   ``(-2^(b-1), 2^(b-1))``, so arithmetic modulo ``2^b`` never overflows;
2. masks it modulo ``2^b``: ``y_i = q_i + PRG(b_i) + sum_{j in N(i)}
   sign(i, j) PRG(s_ij)`` with ``sign = +1`` for ``i < j`` and ``-1``
   otherwise, so each pairwise mask cancels between its two ends;
3. sends ``y_i``, or drops after masking (probability ``dropout_rate``).

The server sums the survivors' ``y`` modulo ``2^b`` and, with the shares
the survivors return, removes each survivor's self mask ``PRG(b_s)`` and,
for each dropped client ``d``, the masks its surviving neighbours applied
toward it. What is left is exactly ``sum_{s survived} q_s``, decoded to a
mean over the survivors (or a sum, for central DP noise added after
secure aggregation).

What is simulated and what is not: the seeds ``s_ij`` that key agreement
gives both ends of a pair, and the self-mask seeds ``b_i``, are keys of
the round; Shamir's secret sharing is not computed, but its threshold is
enforced: a client's seeds can be rebuilt only when at least
``ceil(threshold |N(i)|)`` of its neighbours survive, and a round where
some cannot aborts (the server gets a zero aggregate; metric
``secagg_aborted``). The server's unmasking work for a client (its self
mask, or a dropped client's masks toward survivors) is computed beside
that client's own pass, so it streams in chunks like everything else.

Client metrics: ``uplink_bits`` (``b d`` for the masked vector plus the
protocol's keys and shares, see :data:`KEY_BITS`), ``secagg_neighbors``,
``secagg_dropped``, ``secagg_aborted`` (the fraction of clients whose
seeds could not be rebuilt), ``secagg_clipped`` (the fraction of
coordinates clipped to ``[-c, c]``).

Example (FedAvg's mean, securely, with 10% of clients dropping after
masking):

  >>> import optax, fedjax_engine as fe
  >>> model = fe.models.logistic_regression(num_features=60, num_classes=10)
  >>> algo = fe.transforms.apply(
  ...     fe.algorithms.fedavg(model, client_optimizer=optax.sgd(0.1)),
  ...     secure_aggregation(clip=1.0, max_clients=10, dropout_rate=0.1))
"""

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from fedjax_engine import aggregate as aggregate_lib
from fedjax_engine.model import Mean
from fedjax_engine.transforms import Transform

Array = Any
PyTree = Any

# The command line's choices (--secure_aggregation).
MODES = ('none', 'secagg', 'secagg_plus')

# The protocol's own traffic per client, counted as in Bonawitz et al.
# (Section 4) with 256-bit keys and Shamir shares: two public keys
# advertised; to each neighbour, an authenticated encryption of two shares
# (2 x 256 bits plus a 96-bit nonce and 128-bit tag); after the masked
# input, one share per neighbour for unmasking.
KEY_BITS = 2 * 256
PER_NEIGHBOUR_BITS = (2 * 256 + 96 + 128) + 256


class Message(NamedTuple):
  """What a client's pass produces: ``masked`` (``y_i``, what it sends;
  uint32 leaves holding values modulo ``2^b``), ``unmask`` (what the server
  removes for this client once it has rebuilt its seeds), ``survived`` and
  ``short`` (1.0 when too few neighbours survive to rebuild its seeds)."""
  masked: PyTree
  unmask: PyTree
  survived: Array
  short: Array


class SumAcc(NamedTuple):
  masked: PyTree
  unmask: PyTree
  survivors: Array
  short: Array


def _check_number(name, value, low, high, *, low_open=False,
                  high_open=False):
  ok = isinstance(value, (int, float)) and not isinstance(value, bool)
  if ok:
    ok = (value > low if low_open else value >= low) and (
        value < high if high_open else value <= high)
  if not ok:
    lo = '(' if low_open else '['
    hi = ')' if high_open else ']'
    raise ValueError(f'{name} must be a number in {lo}{low}, {high}{hi}, '
                     f'got {value!r}.')


def secure_aggregation(*, clip: float, max_clients: int, bits: int = 32,
                       neighbors: int | None = None,
                       dropout_rate: float = 0.0, threshold: float = 0.5,
                       mean: bool = True, seed: int = 0) -> Transform:
  """The clients' outputs summed under secure aggregation.

  Args:
    clip: each coordinate is clipped to ``[-clip, clip]`` before encoding.
    max_clients: the most clients a round sums (the cohort size); with
      ``clip`` and ``bits`` it sets the fixed-point scale so that no sum
      overflows the modulus.
    bits: the modulus is ``2^bits``, 2 to 32; the bits sent per coordinate.
    neighbors: None masks with every other participant (SecAgg); an even
      ``k >= 2`` masks with ``k`` neighbours on a random ring of the
      participants, the Harary graph of SecAgg+.
    dropout_rate: the chance that a client drops after masking, before its
      masked input reaches the server.
    threshold: the fraction of a client's neighbours that must survive for
      its seeds to be rebuilt (Shamir's threshold ``t / |N(i)|``).
    mean: the aggregate is the survivors' mean (each counted once, whatever
      its aggregation weight); False gives their sum, for central DP noise
      added after secure aggregation.
    seed: seeds the round's shared randomness (pair seeds, who drops).

  Returns:
    The transform; its aggregator replaces the algorithm's weighted mean.

  Raises:
    ValueError: a bad value, or ``bits`` too few for ``max_clients``.
  """
  _check_number('clip', clip, 0, math.inf, low_open=True, high_open=True)
  if not (isinstance(max_clients, int) and not isinstance(max_clients, bool)
          and max_clients >= 1):
    raise ValueError(f'max_clients must be an int >= 1, got {max_clients!r}.')
  if not (isinstance(bits, int) and not isinstance(bits, bool) and
          2 <= bits <= 32):
    raise ValueError(f'bits must be an int in [2, 32], got {bits!r}.')
  if neighbors is not None and not (
      isinstance(neighbors, int) and not isinstance(neighbors, bool) and
      neighbors >= 2 and neighbors % 2 == 0):
    raise ValueError('neighbors must be None (every participant) or an even '
                     f'int >= 2, got {neighbors!r}.')
  _check_number('dropout_rate', dropout_rate, 0, 1, high_open=True)
  _check_number('threshold', threshold, 0, 1, low_open=True)
  level = (2 ** (bits - 1) - 1) // max_clients
  if level < 1:
    raise ValueError(f'bits={bits} cannot hold a sum of max_clients='
                     f'{max_clients} clients: 2^(bits-1) - 1 must be at '
                     'least max_clients.')
  scale = level / clip
  modulus_mask = jnp.uint32(2 ** bits - 1)

  def init(params):
    del params
    return jnp.zeros((), jnp.int32)   # rounds finished

  def prg(key, like):
    return [jax.random.bits(jax.random.fold_in(key, i), x.shape, jnp.uint32)
            for i, x in enumerate(like)]

  def encode(x, key):
    clipped = jnp.clip(x.astype(jnp.float32), -clip, clip)
    v = clipped * scale
    low = jnp.floor(v)
    up = jax.random.uniform(key, x.shape) < v - low
    q = jnp.clip(low + up, -level, level).astype(jnp.int32)
    return (jax.lax.bitcast_convert_type(q, jnp.uint32),
            jnp.mean((jnp.abs(x) > clip).astype(jnp.float32)))

  def neighbourhood(cohort, me, order_key):
    """The ids of ``me``'s neighbours, and which entries are real."""
    present = cohort >= 0
    if neighbors is None:
      return cohort, present & (cohort != me)
    # A random ring of the participants, the same for everyone.
    tags = jax.vmap(lambda c: jax.random.bits(
        jax.random.fold_in(order_key, jnp.maximum(c, 0)), (), jnp.uint32))(
            cohort)
    ring = cohort[jnp.lexsort((cohort, tags, ~present))]
    n = jnp.sum(present)
    at = jnp.argmax(ring == me)
    offsets = jnp.arange(1, neighbors // 2 + 1)
    size = jnp.maximum(n, 1)
    ids = jnp.concatenate([ring[(at + offsets) % size],
                           ring[(at - offsets) % size]])
    # On a short ring the two directions meet: count each neighbour once.
    real = jnp.concatenate([offsets <= n - 1, n - offsets > neighbors // 2])
    return ids, real

  def client(state, output, row, key, client):
    shared = jax.random.fold_in(jax.random.key(seed), state)
    drop_key, pair_key, order_key = (jax.random.fold_in(shared, i)
                                     for i in range(3))
    me = client.id

    def drops(c):
      return jax.random.bernoulli(jax.random.fold_in(drop_key, c),
                                  dropout_rate)

    leaves, treedef = jax.tree.flatten(output)
    encode_key, self_key = jax.random.split(key)
    encoded = [encode(x, jax.random.fold_in(encode_key, i))
               for i, x in enumerate(leaves)]
    q = [e[0] for e in encoded]
    ids, real = neighbourhood(client.cohort, me, order_key)

    def add_pair_mask(k, carry):
      all_masks, toward_survivors, survivors = carry
      other = ids[k]
      pair = jax.random.fold_in(
          jax.random.fold_in(pair_key, jnp.minimum(me, other)),
          jnp.maximum(me, other))
      use = real[k].astype(jnp.uint32)
      lives = use * (~drops(other)).astype(jnp.uint32)
      signed = [jnp.where(me < other, m, jnp.uint32(0) - m)
                for m in prg(pair, leaves)]
      return ([a + use * m for a, m in zip(all_masks, signed)],
              [a + lives * m for a, m in zip(toward_survivors, signed)],
              survivors + lives.astype(jnp.int32))

    zeros = [jnp.zeros(x.shape, jnp.uint32) for x in leaves]
    all_masks, toward_survivors, survivors = jax.lax.fori_loop(
        0, ids.shape[0], add_pair_mask, (zeros, zeros, jnp.int32(0)))
    self_masks = prg(self_key, leaves)
    dropped = drops(me)
    masked = [(qi + b + a) & modulus_mask
              for qi, b, a in zip(q, self_masks, all_masks)]
    # A dropped client's masks toward survivors are what stays in their
    # sum; a survivor's self mask is the rest.
    unmask = [jnp.where(dropped, jnp.uint32(0) - t, b) & modulus_mask
              for b, t in zip(self_masks, toward_survivors)]
    degree = jnp.sum(real)
    short = survivors < jnp.ceil(threshold * degree).astype(jnp.int32)
    one = jnp.ones((), jnp.float32)
    size = sum(x.size for x in leaves)
    metrics = {
        'uplink_bits': Mean(
            (bits * size + KEY_BITS +
             PER_NEIGHBOUR_BITS * degree).astype(jnp.float32), one),
        'secagg_neighbors': Mean(degree.astype(jnp.float32), one),
        'secagg_dropped': Mean(dropped.astype(jnp.float32), one),
        'secagg_aborted': Mean(short.astype(jnp.float32), one),
        'secagg_clipped': Mean(
            sum(e[1] * x.size for e, x in zip(encoded, leaves)) / size, one),
    }
    message = Message(jax.tree.unflatten(treedef, masked),
                      jax.tree.unflatten(treedef, unmask),
                      (~dropped).astype(jnp.float32),
                      short.astype(jnp.float32))
    return message, row, metrics

  def acc_init(template):
    zeros = jax.tree.map(lambda t: jnp.zeros(t.shape, jnp.uint32),
                         template.masked)
    return SumAcc(zeros, zeros, jnp.zeros((), jnp.float32),
                  jnp.zeros((), jnp.float32))

  def accumulate(acc, messages, weights):
    present = (weights > 0).astype(jnp.uint32)
    survived = present * (messages.survived > 0).astype(jnp.uint32)

    def total(leaf, counted):   # sums of uint32 wrap modulo 2^32
      return jnp.sum(counted.reshape((-1,) + (1,) * (leaf.ndim - 1)) * leaf,
                     axis=0, dtype=jnp.uint32)

    return SumAcc(
        jax.tree.map(lambda a, y: a + total(y, survived), acc.masked,
                     messages.masked),
        jax.tree.map(lambda a, u: a + total(u, present), acc.unmask,
                     messages.unmask),
        acc.survivors + jnp.sum(survived.astype(jnp.float32)),
        acc.short + jnp.sum(present.astype(jnp.float32) * messages.short))

  def finalize(acc):
    def decode(exact):
      value = exact.astype(jnp.float32) / scale
      if mean:
        value = value / jnp.maximum(acc.survivors, 1.0)
      return jnp.where(acc.short > 0, 0.0, value)

    return jax.tree.map(decode, exact_sum(acc, bits=bits))

  def server(state, aggregate, info):
    del info
    return aggregate, state + 1

  return Transform(client=client, init=init, server=server,
                   aggregator=aggregate_lib.Aggregator(acc_init, accumulate,
                                                       finalize))


def exact_sum(acc: SumAcc, *, bits: int) -> PyTree:
  """The unmasked sum of the survivors' encodings, as int32 leaves: what
  the server holds before decoding (for tests and overflow checks)."""
  shift = 32 - bits
  mask = jnp.uint32(2 ** bits - 1)
  # Moves the b-bit two's complement value to the top of 32 bits and back,
  # which extends its sign.
  return jax.tree.map(
      lambda m, u: jax.lax.bitcast_convert_type(
          ((m - u) & mask) << shift, jnp.int32) >> shift,
      acc.masked, acc.unmask)
