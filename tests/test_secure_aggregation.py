"""Secure aggregation: exact integer sums under masks, dropouts and SecAgg+.

Hand-worked setting (``test_two_clients_by_hand``): bits = 8 and
max_clients = 2 give L = floor(127 / 2) = 63 levels a side; with clip = 63
the scale s = L / clip is 1, so integer outputs encode as themselves
whatever the rounding draws. Clients send [3, -5] and [60, 20]: the exact
sum is [63, 15] (inside +-127, no wrap), the mean [31.5, 7.5].
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fedjax_engine as fe
from fedjax_engine import secure_aggregation as sa

IDS = [3, 7, 1, 9, 4, 2, 11, 8]
# The engine pads a cohort: -1 marks slots without a participant.
COHORT = jnp.array(IDS + [-1, -1], jnp.int32)


def _outputs(n):
  """Client k sends small integers (k + 1) * [1, -2, 3] and [[5 (k + 1)]]."""
  return [{'a': jnp.array([1., -2., 3.]) * (k + 1),
           'b': jnp.array([[5.]]) * (k + 1)} for k in range(n)]


def _send(transform, outputs, ids=IDS, cohort=COHORT, round_done=0):
  """Every client's message, and the aggregator's sum over all of them."""
  sent = [transform.client(jnp.int32(round_done), x, (),
                           jax.random.key(100 + i),
                           fe.ClientInfo(jnp.int32(i), cohort))
          for i, x in zip(ids, outputs)]
  messages = jax.tree.map(lambda *m: jnp.stack(m), *[s[0] for s in sent])
  agg = transform.aggregator
  acc = agg.accumulate(agg.init(jax.tree.map(lambda m: m[0], messages)),
                       messages, jnp.ones(len(ids)))
  return sent, acc


def _exact(**kwargs):
  """Secure aggregation whose scale is 1: integer outputs encode exactly."""
  return sa.secure_aggregation(clip=2.0 ** 31 - 1, max_clients=1, bits=32,
                               mean=False, **kwargs)


@pytest.mark.parametrize('neighbors, dropout_rate', [
    (None, 0.0), (None, 0.4), (2, 0.0), (2, 0.25), (4, 0.3), (6, 0.5)])
def test_unmasked_sum_is_the_survivors_exact_sum(neighbors, dropout_rate):
  outputs = _outputs(len(IDS))
  transform = _exact(neighbors=neighbors, dropout_rate=dropout_rate,
                     threshold=0.01)
  sent, acc = _send(transform, outputs)
  survived = [float(s[0].survived) for s in sent]
  if dropout_rate:
    assert 0 < sum(survived) < len(IDS)   # some, not all, dropped
  else:
    assert sum(survived) == len(IDS)
  total = sa.exact_sum(acc, bits=32)
  for name in ('a', 'b'):
    expected = sum(s * np.asarray(x[name]) for s, x in zip(survived, outputs))
    np.testing.assert_array_equal(np.asarray(total[name]), expected)
  degree = [float(s[2]['secagg_neighbors'].total) for s in sent]
  assert degree == [len(IDS) - 1 if neighbors is None else neighbors] * len(
      IDS)


def test_masks_hide_each_update_and_cancel_only_together():
  outputs = _outputs(len(IDS))
  transform = _exact()
  sent, _ = _send(transform, outputs)
  masked = np.stack([np.asarray(s[0].masked['a']) for s in sent])
  encoded = np.stack([np.asarray(x['a'], np.int64) % 2 ** 32
                      for x in outputs])
  assert not np.any(masked == encoded)
  # Masked words look uniform on [0, 2^32): their mean is near 2^31.
  assert abs(masked.astype(np.float64).mean() / 2 ** 31 - 1) < 0.5
  # Without one client's message, the others' masks no longer cancel.
  messages = jax.tree.map(lambda *m: jnp.stack(m), *[s[0] for s in sent[1:]])
  agg = transform.aggregator
  acc = agg.accumulate(agg.init(jax.tree.map(lambda m: m[0], messages)),
                       messages, jnp.ones(len(IDS) - 1))
  partial = np.asarray(sa.exact_sum(acc, bits=32)['a'])
  plain = sum(np.asarray(x['a']) for x in outputs[1:])
  assert not np.array_equal(partial, plain)


def test_two_clients_by_hand():
  transform = sa.secure_aggregation(clip=63.0, max_clients=2, bits=8)
  outputs = [jnp.array([3., -5.]), jnp.array([60., 20.])]
  sent, acc = _send(transform, outputs, ids=[0, 1],
                    cohort=jnp.array([0, 1, -1], jnp.int32))
  np.testing.assert_array_equal(sa.exact_sum(acc, bits=8), [63, 15])
  np.testing.assert_allclose(transform.aggregator.finalize(acc), [31.5, 7.5])
  # Each masked value is one byte: below 2^8.
  assert all(int(s[0].masked.max()) < 256 for s in sent)
  # 8 bits a value, two 256-bit keys, and one neighbour's shares.
  assert float(sent[0][2]['uplink_bits'].total) == (
      8 * 2 + sa.KEY_BITS + sa.PER_NEIGHBOUR_BITS)


@pytest.mark.parametrize('sign', [1.0, -1.0])
def test_a_full_cohort_at_the_clip_does_not_overflow(sign):
  # bits = 8, max_clients = 5: L = floor(127 / 5) = 25, so five clients at
  # the clip sum to +-125, inside +-127; the mean decodes to the clip.
  transform = sa.secure_aggregation(clip=0.5, max_clients=5, bits=8)
  outputs = [jnp.full((3,), sign * 9.0)] * 5   # clipped to +-0.5
  sent, acc = _send(transform, outputs, ids=[0, 1, 2, 3, 4],
                    cohort=jnp.arange(5, dtype=jnp.int32))
  np.testing.assert_array_equal(sa.exact_sum(acc, bits=8), [sign * 125] * 3)
  np.testing.assert_allclose(transform.aggregator.finalize(acc),
                             [sign * 0.5] * 3)
  assert float(sent[0][2]['secagg_clipped'].total) == 1.0


def test_encoding_is_unbiased():
  # 0.3 at scale 25 is 7.5 levels: rounding gives 7 or 8, each half the time.
  # Over 4000 draws the mean's standard error is 0.5 / 25 / sqrt(4000).
  transform = sa.secure_aggregation(clip=1.0, max_clients=5, bits=8)
  keys = jax.random.split(jax.random.key(0), 4000)
  words = jax.vmap(lambda k: transform.client(
      jnp.int32(0), jnp.full((1,), 0.3), (), k,
      fe.ClientInfo(jnp.int32(0), jnp.array([0], jnp.int32)))[0])(keys)
  # A lone client: its masked word minus its self mask is its encoding.
  levels = np.asarray((words.masked - words.unmask) & 255, np.float64)
  assert set(np.unique(levels)) == {7.0, 8.0}
  assert abs(levels.mean() / 25 - 0.3) < 5 * 0.5 / 25 / math.sqrt(4000)


def test_too_few_surviving_neighbours_abort_the_round():
  # A ring of 2 neighbours where every client needs both to survive: with
  # half of the clients dropping, some cannot be unmasked.
  transform = _exact(neighbors=2, dropout_rate=0.5, threshold=1.0)
  sent, acc = _send(transform, _outputs(len(IDS)))
  aborted = [float(s[2]['secagg_aborted'].total) for s in sent]
  assert 0 < sum(aborted)
  assert float(acc.short) == sum(aborted)
  out = transform.aggregator.finalize(acc)
  assert all(not np.any(np.asarray(x)) for x in jax.tree.leaves(out))


def test_padding_and_dropped_slots_do_not_take_part():
  # Weight 0 (padding, a client that failed before training) is not
  # summed, and the cohort the others see does not list it.
  outputs = _outputs(3)
  transform = _exact(neighbors=None)
  cohort = jnp.array([3, 7, -1, -1], jnp.int32)
  sent = [transform.client(jnp.int32(0), x, (), jax.random.key(i),
                           fe.ClientInfo(jnp.int32(c), cohort))
          for i, (x, c) in enumerate(zip(outputs, [3, 7, 0]))]
  messages = jax.tree.map(lambda *m: jnp.stack(m), *[s[0] for s in sent])
  agg = transform.aggregator
  acc = agg.accumulate(agg.init(jax.tree.map(lambda m: m[0], messages)),
                       messages, jnp.array([4.0, 2.0, 0.0]))
  np.testing.assert_array_equal(sa.exact_sum(acc, bits=32)['a'],
                                np.asarray(outputs[0]['a'] + outputs[1]['a']))


@pytest.mark.parametrize('kwargs, message', [
    (dict(clip=0.0), 'clip must be a number in'),
    (dict(max_clients=0), 'max_clients must be an int >= 1'),
    (dict(bits=33), r'bits must be an int in \[2, 32\]'),
    (dict(bits=4, max_clients=8), 'bits=4 cannot hold a sum of max_clients=8'),
    (dict(neighbors=3), 'neighbors must be None'),
    (dict(dropout_rate=1.0), 'dropout_rate must be a number in'),
    (dict(threshold=0.0), 'threshold must be a number in'),
])
def test_bad_values_are_named(kwargs, message):
  args = dict(clip=1.0, max_clients=10)
  args.update(kwargs)
  with pytest.raises(ValueError, match=message):
    sa.secure_aggregation(**args)
