"""Tests for fedjax_engine.data: the ragged store, index plans and cohorts.

Expected values are literals or plain numpy computations written here.
"""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedjax_engine import data
from fedjax_engine.data import Batching, FederatedData


def _store(sizes, feature_dim=2):
  """A store whose feature ``x[r]`` encodes its own row number ``r``."""
  sizes = np.asarray(sizes, np.int64)
  n = int(sizes.sum())
  x = np.repeat(np.arange(n, dtype=np.float32)[:, None], feature_dim, axis=1)
  x[:, 1:] *= -1.0
  y = (np.arange(n) % 7).astype(np.int32)
  offsets = np.concatenate([[0], np.cumsum(sizes)])
  return FederatedData({'x': x, 'y': y}, offsets,
                       np.array([f'c{k}' for k in range(len(sizes))]))


# ----------------------------------------------------------------------------
# FederatedData construction and validation.


def test_construct_and_properties():
  d = _store([3, 0, 5, 2])
  assert d.num_clients == 4
  assert d.num_examples == 10
  np.testing.assert_array_equal(d.sizes, [3, 0, 5, 2])
  assert d.offsets.dtype == np.int64
  assert d.nbytes == 10 * 2 * 4 + 10 * 4
  np.testing.assert_array_equal(d.client(2)['x'][:, 0], [3, 4, 5, 6, 7])
  np.testing.assert_array_equal(d.client(2)['y'], [3, 4, 5, 6, 0])
  assert d.client(1)['x'].shape == (0, 2)


@pytest.mark.parametrize('offsets, match', [
    ([1, 3, 6], r'offsets must be a 1-D array starting at 0'),
    ([[0, 3, 6]], r'offsets must be a 1-D array starting at 0'),
    ([], r'offsets must be a 1-D array starting at 0'),
    ([0, 4, 3, 6], r'offsets must be non-decreasing'),
])
def test_bad_offsets(offsets, match):
  with pytest.raises(ValueError, match=match):
    FederatedData({'x': np.zeros((6, 1))}, np.array(offsets), ['a', 'b'])


def test_feature_length_mismatch_names_the_feature():
  with pytest.raises(ValueError,
                     match=r"feature 'y' has 5 rows but offsets end at 6"):
    FederatedData({'x': np.zeros((6, 1)), 'y': np.zeros(5)}, [0, 2, 6],
                  ['a', 'b'])


def test_client_id_count_mismatch():
  with pytest.raises(ValueError, match=r'3 client ids for 2 clients'):
    FederatedData({'x': np.zeros((6, 1))}, [0, 2, 6], ['a', 'b', 'c'])


def test_no_features():
  with pytest.raises(ValueError, match=r'at least one feature'):
    FederatedData({}, [0], [])


def test_from_clients():
  d = FederatedData.from_clients({
      'alice': {'x': np.arange(6.).reshape(3, 2), 'y': np.array([0, 1, 2])},
      'bob': {'x': np.zeros((0, 2)), 'y': np.zeros(0, np.int64)},
      'carol': {'x': np.full((2, 2), 7.), 'y': np.array([5, 6])},
  })
  np.testing.assert_array_equal(d.client_ids, ['alice', 'bob', 'carol'])
  np.testing.assert_array_equal(d.offsets, [0, 3, 3, 5])
  np.testing.assert_array_equal(d.sizes, [3, 0, 2])
  assert d.num_examples == 5
  np.testing.assert_array_equal(
      d.features['x'], [[0, 1], [2, 3], [4, 5], [7, 7], [7, 7]])
  np.testing.assert_array_equal(d.features['y'], [0, 1, 2, 5, 6])
  np.testing.assert_array_equal(d.client(2)['y'], [5, 6])


def test_from_clients_errors():
  with pytest.raises(ValueError, match=r'at least one client'):
    FederatedData.from_clients({})
  with pytest.raises(ValueError, match=r"client 'b' has features \['x'\]"):
    FederatedData.from_clients({'a': {'x': np.zeros(2), 'y': np.zeros(2)},
                                'b': {'x': np.zeros(2)}})
  with pytest.raises(ValueError, match=r"client 'a' has features of unequal"):
    FederatedData.from_clients({'a': {'x': np.zeros(2), 'y': np.zeros(3)}})


def test_client_is_a_view_not_a_copy():
  d = _store([4, 3, 5])
  for k in range(d.num_clients):
    for name, value in d.client(k).items():
      assert np.shares_memory(value, d.features[name]), (k, name)
  # Writing through the view is visible in the store.
  d.client(1)['y'][0] = 99
  assert d.features['y'][4] == 99


def test_map_applies_to_all_examples_and_keeps_layout():
  d = _store([2, 3])
  before = d.features['x'].copy()
  out = d.map(lambda f: {'x': f['x'] * 2.0, 'y': f['y'], 'z': f['y'] + 1})
  assert isinstance(out, FederatedData)
  np.testing.assert_array_equal(out.offsets, d.offsets)
  np.testing.assert_array_equal(out.client_ids, d.client_ids)
  np.testing.assert_array_equal(out.features['x'], before * 2.0)
  np.testing.assert_array_equal(out.client(1)['z'], [3, 4, 5])
  np.testing.assert_array_equal(d.features['x'], before)  # input untouched
  with pytest.raises(ValueError, match=r"feature 'x' has 4 rows"):
    d.map(lambda f: {'x': f['x'][:4]})


def test_to_device():
  d = _store([3, 0, 5])
  dev = d.to_device()
  np.testing.assert_array_equal(dev.starts, [0, 3, 3])
  np.testing.assert_array_equal(dev.sizes, [3, 0, 5])
  assert dev.starts.dtype == jnp.int32 and dev.sizes.dtype == jnp.int32
  np.testing.assert_array_equal(dev.features['x'], d.features['x'])


def test_the_store_is_aligned_and_cpu_devices_share_it():
  """One copy of the examples: every CPU device uses the host's array."""
  x = np.arange(4001, dtype=np.float32)[1:].reshape(1000, 4)  # misaligned
  assert x.ctypes.data % data.ALIGNMENT != 0
  d = FederatedData({'x': x}, [0, 600, 1000], ['a', 'b'])
  assert d.features['x'].ctypes.data % data.ALIGNMENT == 0
  np.testing.assert_array_equal(d.features['x'], x)
  joined = FederatedData.from_clients({'a': {'x': x[:3]}, 'b': {'x': x[3:7]}})
  assert joined.features['x'].ctypes.data % data.ALIGNMENT == 0
  mesh = jax.sharding.Mesh(np.array(jax.devices()), ('d',))
  placed = d.to_device(jax.sharding.NamedSharding(
      mesh, jax.sharding.PartitionSpec()))
  shards = placed.features['x'].addressable_shards
  assert len(shards) == jax.device_count() > 1
  if jax.default_backend() == 'cpu':
    assert {s.data.unsafe_buffer_pointer() for s in shards} == {
        d.features['x'].ctypes.data}


# ----------------------------------------------------------------------------
# bucket and Batching.


@pytest.mark.parametrize('n, expected', [
    (1, 1), (2, 2), (3, 3), (4, 4), (5, 6), (6, 6), (7, 8), (8, 8), (9, 12),
    (12, 12), (13, 16), (17, 24), (25, 32), (33, 48), (100, 128),
    (1000, 1024), (1025, 1536),
])
def test_bucket_values(n, expected):
  assert data.bucket(n) == expected


def test_bucket_properties_exhaustive():
  # Reference: the smallest number of the form 2^k or 3 * 2^k that is >= n.
  allowed = sorted({2 ** k for k in range(16)} | {3 * 2 ** k for k in range(16)})
  allowed = np.array(allowed)
  previous = 0
  for n in range(1, 5000):
    b = data.bucket(n)
    assert b == allowed[np.searchsorted(allowed, n)], n
    assert b >= n
    assert (b - n) <= b / 3, n          # waste at most a third of the shape
    assert b >= previous                # monotone
    previous = b


def test_bucket_takes_few_values():
  # Two shapes per power of two: 1, 2, 3, 4, 6, 8, ..., 4096, 6144.
  assert len({data.bucket(n) for n in range(1, 5000)}) == 25


@pytest.mark.parametrize('kwargs, match', [
    (dict(batch_size=0, local_steps=1), r'batch_size must be a positive'),
    (dict(batch_size=2.0, local_steps=1), r'batch_size must be a positive'),
    (dict(batch_size=4), r'exactly one of local_steps and local_epochs'),
    (dict(batch_size=4, local_steps=2, local_epochs=1),
     r'exactly one of local_steps and local_epochs'),
    (dict(batch_size=4, local_steps=0), r'local_steps must be a positive'),
    (dict(batch_size=4, local_epochs=-1), r'local_epochs must be a positive'),
    (dict(batch_size=4, local_epochs=1.5), r'local_epochs must be a positive'),
])
def test_batching_validate_errors(kwargs, match):
  with pytest.raises(ValueError, match=match):
    Batching(**kwargs).validate()


def test_batching_validate_returns_self_and_num_steps():
  b = Batching(batch_size=4, local_steps=3)
  assert b.validate() is b
  assert b.num_steps(1000) == 3
  e = Batching(batch_size=4, local_epochs=2).validate()
  assert e.num_steps(7) == 4    # ceil(14 / 4) = 4 -> bucket 4
  assert e.num_steps(9) == 6    # ceil(18 / 4) = 5 -> bucket 6
  assert e.num_steps(0) == 1


# ----------------------------------------------------------------------------
# Index plans.


@functools.lru_cache(maxsize=None)
def _plan_fn(batching, num_steps):
  return jax.jit(functools.partial(
      data.plan_client, batching=batching, num_steps=num_steps))


@pytest.mark.parametrize('n', [1, 3, 7, 19, 20])
def test_plan_local_steps_small_client_cycles_epochs(n):
  batch_size, num_steps, start = 4, 5, 13
  needed = batch_size * num_steps
  plan = _plan_fn(Batching(batch_size, local_steps=num_steps), num_steps)
  client_rows = np.arange(start, start + n)
  for seed in range(5):
    rows, mask = plan(jax.random.key(seed), start, n)
    rows, mask = np.asarray(rows), np.asarray(mask)
    assert rows.shape == mask.shape == (num_steps, batch_size)
    assert mask.all()
    flat = rows.reshape(-1)
    assert ((flat >= start) & (flat < start + n)).all()
    counts = np.bincount(flat - start, minlength=n)
    assert set(counts) <= {needed // n, -(-needed // n)}, counts
    assert counts.sum() == needed
    # Every complete epoch is a permutation of the client's rows; the last,
    # partial epoch has no repeats.
    for e in range(needed // n):
      np.testing.assert_array_equal(np.sort(flat[e * n:(e + 1) * n]),
                                    client_rows)
    tail = flat[(needed // n) * n:]
    assert len(np.unique(tail)) == len(tail)
    if 7 <= n <= needed // 2:   # each epoch has its own order
      assert not np.array_equal(flat[:n], flat[n:2 * n])


def test_plan_local_steps_large_client_distinct_rows():
  batch_size, num_steps, start, n = 4, 5, 100, 50
  plan = _plan_fn(Batching(batch_size, local_steps=num_steps), num_steps)
  for seed in range(5):
    rows, mask = plan(jax.random.key(seed), start, n)
    flat = np.asarray(rows).reshape(-1)
    assert np.asarray(mask).all()
    assert len(np.unique(flat)) == batch_size * num_steps
    assert ((flat >= start) & (flat < start + n)).all()


@pytest.mark.parametrize('n, epochs', [(7, 2), (3, 2), (5, 3)])
def test_plan_local_epochs(n, epochs):
  batch_size, start, largest = 4, 21, 7
  batching = Batching(batch_size, local_epochs=epochs)
  # Shape for the largest client (7), as the engine does for a cohort.
  num_steps = data.bucket(math.ceil(epochs * largest / batch_size))
  plan = _plan_fn(batching, num_steps)
  for seed in range(4):
    rows, mask = plan(jax.random.key(seed), start, n)
    rows = np.asarray(rows).reshape(-1)
    mask = np.asarray(mask).reshape(-1)
    assert mask.sum() == epochs * n
    # Masked-in slots first, padding at the end.
    np.testing.assert_array_equal(mask, np.arange(mask.size) < epochs * n)
    used = rows[mask]
    np.testing.assert_array_equal(np.bincount(used - start, minlength=n),
                                  np.full(n, epochs))
    for e in range(epochs):  # epochs do not mix
      np.testing.assert_array_equal(np.sort(used[e * n:(e + 1) * n]),
                                    np.arange(start, start + n))


def test_plan_no_shuffle_is_in_order():
  start, n = 5, 3
  plan = _plan_fn(Batching(2, local_steps=4, shuffle=False), 4)
  rows, mask = plan(jax.random.key(0), start, n)
  np.testing.assert_array_equal(
      rows, np.array([5, 6, 7, 5, 6, 7, 5, 6]).reshape(4, 2))
  assert np.asarray(mask).all()

  plan = _plan_fn(Batching(4, local_epochs=2, shuffle=False), 2)
  rows, mask = plan(jax.random.key(1), start, n)
  np.testing.assert_array_equal(mask, [[True] * 4, [True, True, False, False]])
  np.testing.assert_array_equal(np.asarray(rows)[np.asarray(mask)],
                                [5, 6, 7, 5, 6, 7])

  # Evaluation's configuration: one epoch, in store order.
  plan = _plan_fn(Batching(4, local_epochs=1, shuffle=False), 3)
  rows, mask = plan(jax.random.key(2), 40, 10)
  np.testing.assert_array_equal(np.asarray(rows)[np.asarray(mask)],
                                np.arange(40, 50))


# (Configurations shared with the tests above, so nothing recompiles.)
@pytest.mark.parametrize('batching, num_steps', [
    (Batching(4, local_steps=5), 5),
    (Batching(4, local_epochs=2), 4),
    (Batching(2, local_steps=4, shuffle=False), 4),
])
def test_plan_empty_client_fully_masked(batching, num_steps):
  plan = _plan_fn(batching, num_steps)
  rows, mask = plan(jax.random.key(0), 7, 0)
  assert rows.shape == (num_steps, batching.batch_size)
  assert not np.asarray(mask).any()


def test_plan_keys():
  plan = _plan_fn(Batching(4, local_steps=5), 5)
  a, _ = plan(jax.random.key(0), 0, 20)
  a2, _ = plan(jax.random.key(0), 0, 20)
  b, _ = plan(jax.random.key(1), 0, 20)
  np.testing.assert_array_equal(a, a2)
  assert not np.array_equal(a, b)


def test_plan_subset_is_uniform():
  # local_steps with a client larger than S * B: each round uses a random
  # subset of S * B = 8 of the n = 20 rows; every row must be equally likely,
  # and so must every row be in the first slot.
  n, batch_size, num_steps, num_keys = 20, 4, 2, 2000
  batching = Batching(batch_size, local_steps=num_steps)
  plan = jax.jit(jax.vmap(lambda k: data.plan_client(
      k, 0, n, batching=batching, num_steps=num_steps)[0]))
  keys = jax.random.split(jax.random.key(42), num_keys)
  rows = np.asarray(plan(keys)).reshape(num_keys, -1)
  for r in rows[:50]:
    assert len(np.unique(r)) == batch_size * num_steps
  counts = np.bincount(rows.reshape(-1), minlength=n)
  p = batch_size * num_steps / n
  mean, std = num_keys * p, math.sqrt(num_keys * p * (1 - p))
  assert np.all(np.abs(counts - mean) < 5 * std), counts
  first = np.bincount(rows[:, 0], minlength=n)
  mean1 = num_keys / n
  std1 = math.sqrt(num_keys * (1 / n) * (1 - 1 / n))
  assert np.all(np.abs(first - mean1) < 5 * std1), first
  # Pearson chi-square over all 20 rows for the first slot (19 dof): the
  # 99.99% quantile is 50.8.
  assert np.sum((first - mean1) ** 2 / mean1) < 50.8


def test_client_keys_depend_on_id_only():
  round_key = jax.random.key(3)
  a = jax.random.key_data(data.client_keys(round_key, jnp.array([3, 5])))
  b = jax.random.key_data(data.client_keys(round_key, jnp.array([7, 3, 0])))
  np.testing.assert_array_equal(a[0], b[1])
  assert not np.array_equal(a[0], a[1])


# ----------------------------------------------------------------------------
# Cohort selection.


def test_select_pads_and_weights_by_examples():
  d = _store([3, 0, 5, 2])
  c = data.select(d, [2, 0, 3], num_padded=5)
  np.testing.assert_array_equal(c.client_ids, [2, 0, 3, 0, 0])
  assert c.client_ids.dtype == np.int32
  np.testing.assert_array_equal(c.client_mask, [1, 1, 1, 0, 0])
  assert c.client_mask.dtype == bool
  np.testing.assert_array_equal(c.weights, [5., 3., 2., 0., 0.])
  assert c.weights.dtype == np.float32
  assert c.batches is None and c.example_mask is None


def test_select_uniform_weights():
  d = _store([3, 0, 5, 2])
  c = data.select(d, [1, 2], num_padded=3, weighting='uniform')
  np.testing.assert_array_equal(c.weights, [1., 1., 0.])
  np.testing.assert_array_equal(c.client_mask, [True, True, False])


def test_select_empty_and_exact():
  d = _store([3, 4])
  c = data.select(d, [], num_padded=2)
  np.testing.assert_array_equal(c.client_mask, [False, False])
  np.testing.assert_array_equal(c.weights, [0., 0.])
  c = data.select(d, [1, 0], num_padded=2)
  np.testing.assert_array_equal(c.weights, [4., 3.])


def test_select_errors():
  d = _store([3, 0, 5])
  with pytest.raises(ValueError, match=r"weighting must be 'examples' or "
                     r"'uniform', got 'example'"):
    data.select(d, [0], num_padded=2, weighting='example')
  with pytest.raises(ValueError, match=r'client ids must lie in \[0, 3\)'):
    data.select(d, [0, 3], num_padded=4)
  with pytest.raises(ValueError, match=r'client ids must lie in \[0, 3\)'):
    data.select(d, [-1], num_padded=4)
  with pytest.raises(ValueError, match=r'3 clients do not fit a cohort of 2'):
    data.select(d, [0, 1, 2], num_padded=2)


# ----------------------------------------------------------------------------
# Host and device gathering see the same batches.


@pytest.mark.parametrize('batching', [
    Batching(3, local_steps=4),
    Batching(3, local_epochs=2),
])
def test_gather_host_equals_device(batching):
  d = _store([5, 0, 11, 2, 8])
  cohort = data.select(d, [4, 1, 0, 2], num_padded=6)
  num_steps = batching.num_steps(11)
  key = jax.random.key(7)
  starts = jnp.asarray(d.offsets[:-1], jnp.int32)
  sizes = jnp.asarray(d.sizes, jnp.int32)
  rows, mask = data.plan_cohort(
      key, jnp.asarray(cohort.client_ids), jnp.asarray(cohort.client_mask),
      starts, sizes, batching=batching, num_steps=num_steps)
  assert rows.shape == mask.shape == (6, num_steps, 3)
  host = data.gather(d.features, np.asarray(rows))
  assert isinstance(host['x'], np.ndarray)
  device = data.gather({k: jnp.asarray(v) for k, v in d.features.items()},
                       rows)
  for name in d.features:
    np.testing.assert_array_equal(host[name], np.asarray(device[name]))
  # The gathered examples are the planned rows (x[r, 0] == r).
  np.testing.assert_array_equal(host['x'][..., 0], np.asarray(rows))
  np.testing.assert_array_equal(host['x'][..., 1], -np.asarray(rows))
  np.testing.assert_array_equal(host['y'], np.asarray(rows) % 7)
  mask = np.asarray(mask)
  # Real rows of each client lie in that client's slice.
  for slot, cid in enumerate(cohort.client_ids):
    lo, hi = d.offsets[cid], d.offsets[cid + 1]
    r = np.asarray(rows)[slot][mask[slot]]
    assert ((r >= lo) & (r < hi)).all()
  # Empty client 1 and the padded slots 4, 5 are fully masked.
  assert not mask[1].any() and not mask[4:].any()
  assert mask[0].any() and mask[2].any() and mask[3].any()

  # gather_on_host fills the cohort with exactly these batches.
  filled = data.gather_on_host(d, cohort, key, batching=batching,
                               num_steps=num_steps)
  np.testing.assert_array_equal(filled.example_mask, mask)
  for name in d.features:
    np.testing.assert_array_equal(filled.batches[name], host[name])
  np.testing.assert_array_equal(filled.weights, cohort.weights)


def test_plan_does_not_depend_on_cohort_position_or_padding():
  d = _store([5, 9, 7])
  batching = Batching(2, local_steps=3)
  starts = jnp.asarray(d.offsets[:-1], jnp.int32)
  sizes = jnp.asarray(d.sizes, jnp.int32)

  def plan(ids, num_padded):
    c = data.select(d, ids, num_padded=num_padded)
    rows, mask = data.plan_cohort(
        jax.random.key(0), jnp.asarray(c.client_ids),
        jnp.asarray(c.client_mask), starts, sizes, batching=batching,
        num_steps=3)
    return np.asarray(rows), np.asarray(mask)

  # Same compiled shape (5 slots), different positions and padding.
  rows_a, _ = plan([1, 2], 5)
  rows_b, mask_b = plan([2, 0, 1], 5)
  np.testing.assert_array_equal(rows_a[0], rows_b[2])   # client 1
  np.testing.assert_array_equal(rows_a[1], rows_b[0])   # client 2
  assert not mask_b[3:].any()


def test_host_gather_matches_engine_device_loader():
  # The compiled round's on-device loader and the host path agree.
  from fedjax_engine import simulate  # pylint: disable=g-import-not-at-top
  # Same shapes as test_gather_host_equals_device, so plans compile once.
  d = _store([5, 0, 11, 2, 8])
  batching = Batching(3, local_steps=4)
  cohort = data.select(d, [3, 0, 2, 4], num_padded=6)
  key = jax.random.key(11)
  host = data.gather_on_host(d, cohort, key, batching=batching, num_steps=4)
  loader = simulate.BatchLoader(batching)
  chunk = dict(client_ids=jnp.asarray(cohort.client_ids),
               client_mask=jnp.asarray(cohort.client_mask),
               batches=None, example_mask=None)
  keys = data.client_keys(key, chunk['client_ids'])
  batches, mask = jax.jit(lambda s, c, k: loader(s, c, k, 4))(
      d.to_device(), chunk, keys)
  # The loader is step-major: [S, C, B, ...].
  np.testing.assert_array_equal(np.asarray(mask).swapaxes(0, 1),
                                host.example_mask)
  m = host.example_mask
  for name in d.features:
    np.testing.assert_array_equal(
        np.asarray(batches[name]).swapaxes(0, 1)[m], host.batches[name][m])

