"""Federated data: a ragged host store, index plans, and fixed-shape cohorts.

``FederatedData`` keeps every feature once as one contiguous array and finds a
client's examples through offsets, so a client is a slice and never a copy.
A round does not copy clients either: it draws an *index plan*, integer
positions into that store of shape ``[C, S, B]`` with a mask, and gathers the
examples in one step, on the host (numpy) or on the device inside the compiled
round. The plan is computed in JAX from each client's key, so both gathering
paths see exactly the same batches.

Example:

  >>> import numpy as np
  >>> data = FederatedData.from_clients({
  ...     'a': {'x': np.zeros((3, 2)), 'y': np.zeros(3, np.int32)},
  ...     'b': {'x': np.ones((1, 2)), 'y': np.ones(1, np.int32)}})
  >>> data.num_clients, data.sizes.tolist()
  (2, [3, 1])
  >>> data.client(1)['x'].tolist()
  [[1.0, 1.0]]
"""

import dataclasses
import functools
import math
from typing import Any, Callable, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

Array = Any


# XLA:CPU uses a host array in place, without a copy, when its data starts
# at a multiple of 64 bytes (measured: jax 0.10.2 aliases such a numpy array
# on every CPU device of a replicated placement, and copies one that starts
# 16 bytes past, as large numpy allocations usually do). The example store
# is kept so aligned: on CPU the host and every device then share one copy.
ALIGNMENT = 64


def aligned_empty(shape, dtype) -> np.ndarray:
  """``np.empty(shape, dtype)`` whose data starts at a multiple of 64 bytes.

  Example:

    >>> a = aligned_empty((3, 5), np.float32)
    >>> a.shape, a.ctypes.data % ALIGNMENT
    ((3, 5), 0)
  """
  dtype = np.dtype(dtype)
  nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
  raw = np.empty(nbytes + ALIGNMENT, np.uint8)
  start = -raw.ctypes.data % ALIGNMENT
  return raw[start:start + nbytes].view(dtype).reshape(shape)


def aligned(array) -> np.ndarray:
  """``array`` itself when C-contiguous and 64-byte aligned, else a copy
  that is (see :data:`ALIGNMENT`)."""
  array = np.asarray(array)
  if array.flags.c_contiguous and array.ctypes.data % ALIGNMENT == 0:
    return array
  out = aligned_empty(array.shape, array.dtype)
  out[...] = array
  return out


@dataclasses.dataclass(frozen=True)
class FederatedData:
  """Examples of many clients, stored once, ragged by client.

  Attributes:
    features: feature name -> array ``[N, ...]`` holding every client's
      examples back to back.
    offsets: int64 ``[K + 1]``; client ``k`` owns rows
      ``offsets[k]:offsets[k + 1]`` of every feature.
    client_ids: ``[K]`` client names (strings or ints), in store order.

  Features are kept C-contiguous and 64-byte aligned (copied once if they
  are not; :func:`aligned_empty` builds them so), so that on CPU the
  devices use them in place: do not change them once a round is built.
  """
  features: Mapping[str, np.ndarray]
  offsets: np.ndarray
  client_ids: np.ndarray

  def __post_init__(self):
    object.__setattr__(self, 'features',
                       {n: aligned(v) for n, v in self.features.items()})
    offsets = np.asarray(self.offsets, dtype=np.int64)
    object.__setattr__(self, 'offsets', offsets)
    object.__setattr__(self, 'client_ids', np.asarray(self.client_ids))
    if offsets.ndim != 1 or offsets.size < 1 or offsets[0] != 0:
      raise ValueError(
          f'offsets must be a 1-D array starting at 0, got {offsets[:5]}...')
    if np.any(np.diff(offsets) < 0):
      raise ValueError('offsets must be non-decreasing.')
    if len(self.client_ids) != offsets.size - 1:
      raise ValueError(
          f'{len(self.client_ids)} client ids for {offsets.size - 1} clients '
          '(offsets has one entry more than there are clients).')
    if not self.features:
      raise ValueError('FederatedData needs at least one feature.')
    for name, value in self.features.items():
      if len(value) != offsets[-1]:
        raise ValueError(
            f'feature {name!r} has {len(value)} rows but offsets end at '
            f'{offsets[-1]}.')

  @classmethod
  def from_clients(cls, clients: Mapping[Any, Mapping[str, np.ndarray]]):
    """Builds the store from ``{client_id: {feature: array [n, ...]}}``."""
    if not clients:
      raise ValueError('from_clients needs at least one client.')
    ids = list(clients)
    names = list(clients[ids[0]])
    sizes = []
    for cid in ids:
      if sorted(clients[cid]) != sorted(names):
        raise ValueError(f'client {cid!r} has features {sorted(clients[cid])},'
                         f' expected {sorted(names)}.')
      lengths = {len(v) for v in clients[cid].values()}
      if len(lengths) != 1:
        raise ValueError(f'client {cid!r} has features of unequal lengths '
                         f'{lengths}.')
      sizes.append(lengths.pop())
    features = {}
    for n in names:
      parts = [np.asarray(clients[c][n]) for c in ids]
      features[n] = np.concatenate(parts, out=aligned_empty(
          (sum(sizes),) + parts[0].shape[1:],
          np.result_type(*parts)))
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    return cls(features, offsets, np.asarray(ids))

  @property
  def num_clients(self) -> int:
    return self.offsets.size - 1

  @property
  def num_examples(self) -> int:
    return int(self.offsets[-1])

  @property
  def sizes(self) -> np.ndarray:
    """Examples per client, int64 ``[K]``."""
    return np.diff(self.offsets)

  @property
  def nbytes(self) -> int:
    return sum(v.nbytes for v in self.features.values())

  def client(self, k: int) -> dict:
    """Client ``k``'s examples, as views into the store."""
    lo, hi = self.offsets[k], self.offsets[k + 1]
    return {n: v[lo:hi] for n, v in self.features.items()}

  def map(self, fn: Callable[[dict], dict]) -> 'FederatedData':
    """Applies a batched preprocessing function to all examples at once."""
    out = fn(dict(self.features))
    return FederatedData(out, self.offsets, self.client_ids)

  def check_not_empty(self, role: str):
    """Raises a ValueError naming ``role`` if the store has no examples."""
    if self.num_examples == 0:
      raise ValueError(f'the {role} data has {self.num_clients} clients but no '
                       'examples.')

  def to_device(self, sharding=None) -> 'DeviceData':
    """Places the store on the device(s) once (replicated by ``sharding``).

    On CPU the devices share the host's (aligned) arrays: no copy."""
    put = lambda x: put_global(x, sharding)
    return DeviceData(
        features={n: put(v) for n, v in self.features.items()},
        starts=put(self.offsets[:-1].astype(np.int32)),
        sizes=put(self.sizes.astype(np.int32)))


class DeviceData(NamedTuple):
  """The example store as arrays the compiled round can gather from.

  Example:

    >>> import numpy as np
    >>> data = FederatedData.from_clients({'a': {'x': np.zeros((3, 2))},
    ...                                    'b': {'x': np.ones((1, 2))}})
    >>> store = data.to_device()
    >>> store.starts.tolist(), store.sizes.tolist(), store.features['x'].shape
    ([0, 3], [3, 1], (4, 2))
  """
  features: Mapping[str, Array]
  starts: Array   # [K] int32, first row of each client
  sizes: Array    # [K] int32


def put_global(tree, sharding):
  """``jax.device_put`` of host arrays that every process holds in full.

  On devices of several processes, ``jax.device_put`` first all-gathers a
  host value to check that every process passed the same one: the whole
  example store at start and the cohort every round (6 s for a 300 MiB
  store and 35 ms for a 2 MiB cohort, measured with 2 CPU processes). The
  engine builds the same host data on every process from the same seed and
  flags, so here each process copies its own devices' shards and nothing
  crosses processes. Within one process this is ``jax.device_put``.

  Example:

    >>> put_global(np.arange(3), None).tolist()
    [0, 1, 2]
  """
  if sharding is None or sharding.is_fully_addressable:
    return jax.device_put(tree, sharding)
  return jax.tree.map(lambda x: jax.make_array_from_callback(
      np.shape(x), sharding, lambda index: np.asarray(x)[index]), tree)


class Batching(NamedTuple):
  """How a client's examples become local batches.

  Exactly one of ``local_steps`` (every client takes that many batches,
  cycling through reshuffled epochs of its data) and ``local_epochs`` (every
  client passes over its data that many times, so clients take different
  numbers of batches, padded and masked) is set.

  Example (two epochs of a 20-example client: 5 batches of 8, padded to a
  step bucket of 6):

    >>> Batching(batch_size=8, local_epochs=2).num_steps(max_client_size=20)
    6
    >>> Batching(batch_size=8, local_steps=3).num_steps(max_client_size=20)
    3
  """
  batch_size: int
  local_steps: int | None = None
  local_epochs: int | None = None
  shuffle: bool = True

  def validate(self):
    if not isinstance(self.batch_size, int) or self.batch_size < 1:
      raise ValueError(f'batch_size must be a positive integer, '
                       f'got {self.batch_size!r}.')
    if (self.local_steps is None) == (self.local_epochs is None):
      raise ValueError('set exactly one of local_steps and local_epochs, got '
                       f'local_steps={self.local_steps!r}, '
                       f'local_epochs={self.local_epochs!r}.')
    for name in ('local_steps', 'local_epochs'):
      value = getattr(self, name)
      if value is not None and (not isinstance(value, int) or value < 1):
        raise ValueError(f'{name} must be a positive integer, got {value!r}.')
    return self

  def num_steps(self, max_client_size: int) -> int:
    """Static number of steps for clients of at most ``max_client_size``."""
    if self.local_steps is not None:
      return self.local_steps
    return bucket(max(1, math.ceil(
        self.local_epochs * max_client_size / self.batch_size)))


def bucket(n: int) -> int:
  """Rounds ``n`` up to 2^k or 3 * 2^(k-1), so shapes take few values.

  Padding waste is at most a third, and a run sees O(log n) shapes.
  """
  if n <= 2:
    return max(n, 1)
  p = 1 << (n - 1).bit_length()
  return 3 * p // 4 if n <= 3 * p // 4 else p


def client_keys(round_key, client_ids):
  """``fold_in(round_key, client_id)``: a client's randomness in a round.

  It depends on the client's id only, never on its position in the cohort,
  padding, chunking or devices.
  """
  return jax.vmap(lambda c: jax.random.fold_in(round_key, c))(client_ids)


def _mix32(x):
  """A 32-bit integer hash with good avalanche (the "lowbias32" constants of
  C. Wellons' hash-prospector); uint32 arithmetic wraps as intended."""
  x = x ^ (x >> 16)
  x = x * jnp.uint32(0x7FEB352D)
  x = x ^ (x >> 15)
  x = x * jnp.uint32(0x846CA68B)
  return x ^ (x >> 16)


FEISTEL_ROUNDS = 6  # even, so the two halves end at their starting widths


def permute(index, n, round_keys):
  """A keyed pseudo-random permutation of ``[0, n)``, applied to ``index``.

  A Feistel network over ``[0, 2^bits)`` (the smallest power of two >= n) is
  a bijection for any round function; values that land at ``n`` or beyond
  are encrypted again until they fall inside ("cycle walking"), which keeps
  the map a bijection of ``[0, n)``. Less than half of the domain lies
  outside, so few walks are needed. Cost is O(1) per index with no sort, so
  a client's plan costs O(S * B) whatever the client's size.
  (Black & Rogaway, "Ciphers with Arbitrary Finite Domains", CT-RSA 2002.)

  Args:
    index: uint32 array of positions in ``[0, n)``.
    n: the domain size (traced scalar, >= 1).
    round_keys: uint32 ``[..., FEISTEL_ROUNDS]``, broadcast against
      ``index`` (one permutation per distinct key row).
  """
  n = jnp.asarray(n, jnp.uint32)
  bits = (32 - jax.lax.clz(jnp.maximum(n, 2) - 1)).astype(jnp.uint32)
  bits = jnp.where(n <= 1, 0, bits).astype(jnp.uint32)
  left_bits = bits // 2
  right_bits = bits - left_bits
  one = jnp.uint32(1)

  def encrypt(x):
    lw, rw = left_bits, right_bits
    left, right = x >> rw, x & ((one << rw) - one)
    for r in range(FEISTEL_ROUNDS):
      mixed = _mix32(right ^ round_keys[..., r]) & ((one << lw) - one)
      left, right = right, left ^ mixed
      lw, rw = rw, lw
    return (left << rw) | right

  return jax.lax.while_loop(
      lambda y: jnp.any(y >= n),
      lambda y: jnp.where(y >= n, encrypt(y), y),
      encrypt(index))


def plan_client(key, start, size, *, batching: Batching, num_steps: int):
  """One client's index plan: store rows ``[S, B]`` and their mask.

  The client's examples are visited epoch after epoch, each epoch in its own
  pseudo-random order drawn from ``key`` and the epoch number (see
  :func:`permute`). With ``local_steps`` the last epoch may be used only in
  part; that part is the start of a random order of all the client's
  examples, so it is a uniform random subset.
  """
  b = batching.batch_size
  needed = num_steps * b
  slot = jnp.arange(needed, dtype=jnp.uint32)
  n = jnp.maximum(size, 1).astype(jnp.uint32)
  epoch, within = slot // n, slot % n
  if batching.shuffle:
    base = jax.random.bits(key, (FEISTEL_ROUNDS,), jnp.uint32)
    # Round keys for every slot's epoch: a hash of (client key, epoch).
    keys = _mix32(base[None, :] + (epoch[:, None] + jnp.uint32(1)) *
                  jnp.uint32(0x9E3779B9))
    item = permute(within, n, keys)
  else:
    item = within
  if batching.local_steps is not None:
    used = needed
  else:
    used = batching.local_epochs * size
  mask = (jnp.arange(needed) < used) & (size > 0)
  rows = jnp.where(mask, start + item.astype(jnp.int32), 0)
  return rows.reshape(num_steps, b), mask.reshape(num_steps, b)


def gather(features: Mapping[str, Array], rows):
  """Gathers store rows ``[...]`` into batches ``[..., *feature_shape]``."""
  if isinstance(rows, np.ndarray):
    return {n: np.take(v, rows, axis=0) for n, v in features.items()}
  # Plans only hold rows of the store, so no bounds handling is needed.
  return {n: v.at[rows].get(mode='promise_in_bounds')
          for n, v in features.items()}


class Cohort(NamedTuple):
  """One round's clients, padded to a fixed number ``C``.

  ``batches``/``example_mask`` are present when the cohort was gathered on the
  host; they are ``None`` when the compiled round gathers them itself from a
  ``DeviceData`` store (then only the small per-client arrays travel).
  :meth:`fedjax_engine.Round.select` makes one.

  Example (clients 4 and 0, of 12 and 7 examples, and a padding slot):

    >>> import numpy as np
    >>> cohort = Cohort(client_ids=np.array([4, 0, 0], np.int32),
    ...                 client_mask=np.array([True, True, False]),
    ...                 weights=np.array([12., 7., 0.], np.float32))
    >>> int(cohort.client_mask.sum()), cohort.batches is None
    (2, True)
  """
  client_ids: Array            # [C] int32, index into the FederatedData
  client_mask: Array           # [C] bool, False for padding
  weights: Array               # [C] float32, 0 for padding
  batches: Mapping[str, Array] | None = None   # [C, S, B, ...]
  example_mask: Array | None = None            # [C, S, B] bool


def select(data: FederatedData, client_ids, *, num_padded: int,
           weighting: str = 'examples') -> Cohort:
  """The per-client part of a cohort: ids padded to ``num_padded``, weights.

  Args:
    data: the store the ids index.
    client_ids: the sampled clients (indices into ``data``).
    num_padded: the fixed cohort size ``C`` (at least ``len(client_ids)``).
    weighting: ``'examples'`` weighs a client by its number of examples
      (FedAvg, McMahan et al. 2017), ``'uniform'`` weighs every client 1.
  """
  client_ids = np.asarray(client_ids, dtype=np.int32)
  c = client_ids.size
  if c > num_padded:
    raise ValueError(f'{c} clients do not fit a cohort of {num_padded}.')
  if c and (client_ids.min() < 0 or client_ids.max() >= data.num_clients):
    raise ValueError(f'client ids must lie in [0, {data.num_clients}), got '
                     f'{client_ids.min()}..{client_ids.max()}.')
  if weighting == 'examples':
    w = data.sizes[client_ids].astype(np.float32)
  elif weighting == 'uniform':
    w = np.ones(c, np.float32)
  else:
    raise ValueError(f"weighting must be 'examples' or 'uniform', got "
                     f'{weighting!r}.')
  pad = num_padded - c
  return Cohort(
      client_ids=np.concatenate([client_ids, np.zeros(pad, np.int32)]),
      client_mask=np.concatenate([np.ones(c, bool), np.zeros(pad, bool)]),
      weights=np.concatenate([w, np.zeros(pad, np.float32)]))


@functools.partial(jax.jit, static_argnames=('batching', 'num_steps'))
def plan_cohort(round_key, client_ids, client_mask, starts, sizes, *,
                batching: Batching, num_steps: int):
  """Index plans ``[C, S, B]`` for a cohort, padded clients fully masked."""
  keys = client_keys(round_key, client_ids)
  data_keys = jax.vmap(lambda k: jax.random.fold_in(k, DATA_STREAM))(keys)
  plan = jax.vmap(lambda k, s, n: plan_client(
      k, s, n, batching=batching, num_steps=num_steps))
  rows, mask = plan(data_keys, starts[client_ids], sizes[client_ids])
  return rows, mask & client_mask[:, None, None]


def gather_on_host(data: FederatedData, cohort: Cohort, round_key, *,
                   batching: Batching, num_steps: int) -> Cohort:
  """Fills ``cohort.batches`` by gathering the plan's rows with numpy."""
  rows, mask = plan_cohort(
      round_key, jnp.asarray(cohort.client_ids), jnp.asarray(cohort.client_mask),
      jnp.asarray(data.offsets[:-1], jnp.int32),
      jnp.asarray(data.sizes, jnp.int32),
      batching=batching, num_steps=num_steps)
  rows = np.asarray(rows)
  return cohort._replace(batches=gather(data.features, rows),
                         example_mask=np.asarray(mask))


# Independent random streams derived from one client key.
DATA_STREAM = 0    # shuffling of the client's examples
TRAIN_STREAM = 1   # the key handed to client_update (dropout, noise, ...)
SYSTEM_STREAM = 2  # system heterogeneity: failures and stragglers
TRANSFORM_STREAM = 4  # Algorithm.transform of the client's output


def server_key(round_key):
  """The round's server-side randomness (``RoundInfo.key``): apart from
  every client's, whose keys fold in ids below 2^31."""
  return jax.random.fold_in(round_key, jnp.uint32(0xFFFFFFFF))
