"""Tests for fedjax_engine.robust: robust aggregation rules by hand, their
independence of padding and order, and the engine path against a loop."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import fedjax_engine as fe
from fedjax_engine import aggregate
from fedjax_engine import datasets
from fedjax_engine import models
from fedjax_engine import robust
from fedjax_engine import simulate
from fedjax_engine import testing
from fedjax_engine import transforms

NAN = np.nan


def _reduce(agg, outputs, weights):
  """One whole-cohort call, compiled, as the engine makes it."""
  outputs = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), outputs)
  template = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape[1:], x.dtype),
                          outputs)
  size = len(weights)
  acc = jax.jit(agg.accumulate)(agg.init(template), outputs,
                                jnp.asarray(weights, jnp.float32),
                                jnp.arange(100, 100 + size, dtype=jnp.int32))
  return jax.device_get(acc)


def _discarded(acc):
  """How many real clients the rule left out (their ids are 100 + row)."""
  ids = np.asarray(acc.left_out)
  assert set(ids[ids >= 0].tolist()) <= set(range(100, 100 + ids.size))
  return int(np.sum(ids >= 0))


def _points(rows):
  """2-D points split over two leaves, so distances must add over leaves."""
  rows = np.asarray(rows, np.float32)
  return {'x': rows[:, 0], 'y': rows[:, 1:]}


def _as_point(aggregate_tree):
  return [float(aggregate_tree['x']), float(aggregate_tree['y'][0])]


# --- trimmed mean ----------------------------------------------------------

def test_trimmed_mean_by_hand():
  # Six real clients (rows 0, 1, 3, 4, 6, 7), weights unequal but one vote
  # each, and two padded rows full of garbage. beta = 0.2: floor(1.2) = 1
  # value dropped at each end of every coordinate.
  a = np.array([[1, -50], [2, 0], [NAN, 1e9], [3, 0], [4, 1], [-1e9, 7],
                [5, 1], [100, 2]], np.float32)
  # Client 7 sends NaN in 'b': it counts as +inf, the largest, and is dropped.
  b = np.array([10, 20, 0, 30, 40, 5, 50, NAN], np.float32)
  weights = [1, 5, 0, 2, 1, 0, 1, 3]
  acc = _reduce(robust.trimmed_mean(trim_fraction=0.2), {'a': a, 'b': b},
                weights)
  # a[:, 0]: 1 2 3 4 5 100 -> (2+3+4+5)/4; a[:, 1]: -50 0 0 1 1 2 ->
  # (0+0+1+1)/4; b: 10 20 30 40 50 inf -> (20+30+40+50)/4.
  np.testing.assert_allclose(acc.aggregate['a'], [3.5, 0.5], rtol=1e-6)
  np.testing.assert_allclose(acc.aggregate['b'], 35.0, rtol=1e-6)
  assert (_discarded(acc), int(acc.degraded)) == (0, 0)


def test_trimmed_mean_counts_a_round_that_trims_nothing():
  # beta = 0.1 of 6 clients: floor(0.6) = 0, the uniform mean, degraded.
  acc = _reduce(robust.trimmed_mean(trim_fraction=0.1),
                np.array([[1.], [2.], [3.], [4.], [5.], [6.]]),
                [1, 9, 1, 1, 1, 1])
  np.testing.assert_allclose(acc.aggregate, [3.5], rtol=1e-6)
  assert int(acc.degraded) == 1


def test_trimmed_mean_floor_of_a_decimal_fraction():
  # 0.29 * 100 is 28.999... in binary; the trim is floor(29) = 29, keeping
  # sorted positions 29..70 of v = i (i < 50), 2i (i >= 50):
  # (sum(29..49) + 2 sum(50..70)) / 42 = (819 + 2520) / 42 = 79.5
  # (a trim of 28 would give 3509 / 44 = 79.75).
  i = np.arange(100)
  values = np.where(i < 50, i, 2 * i).astype(np.float32)[::-1, None]
  acc = _reduce(robust.trimmed_mean(trim_fraction=0.29), values,
                np.ones(100))
  np.testing.assert_allclose(acc.aggregate, [79.5], rtol=1e-6)


# --- Krum ------------------------------------------------------------------

# A=(0,0) B=(1,0) C=(0,3) D=(2,1) E=(10,10). Squared distances: AB 1, AC 9,
# AD 5, AE 200, BC 10, BD 2, BE 181, CD 8, CE 149, DE 145. With f = 1 each
# scores its n - f - 2 = 2 nearest: A 1+5=6, B 1+2=3, C 8+9=17, D 2+5=7,
# E 145+149=294, so the order is B, A, D, C, E.
KRUM_ROWS = [[0, 0], [1, 0], [0, 0], [0, 3], [2, 1], [NAN, 7], [10, 10]]
KRUM_WEIGHTS = [1, 4, 0, 1, 2, 0, 1]   # rows 2 and 5 are padded


@pytest.mark.parametrize('num_selected, expected', [
    (1, [1, 0]),                  # B
    (2, [0.5, 0]),                # B, A
    (3, [1, 1 / 3]),              # B, A, D
    (4, [0.75, 1]),               # B, A, D, C
])
def test_krum_and_multi_krum_by_hand(num_selected, expected):
  acc = _reduce(robust.krum(num_byzantine=1, num_selected=num_selected),
                _points(KRUM_ROWS), KRUM_WEIGHTS)
  np.testing.assert_allclose(_as_point(acc.aggregate), expected, rtol=1e-6,
                             atol=1e-7)
  assert _discarded(acc) == 5 - num_selected
  assert int(acc.degraded) == 0


@pytest.mark.parametrize('attack', [NAN, np.inf])
def test_krum_non_finite_client_is_infinitely_far(attack):
  # E sends NaN or inf: it still counts (n = 5, 2 neighbours each), E was
  # no one's neighbour, so the scores of A to D stand.
  rows = [r[:] for r in KRUM_ROWS]
  rows[6] = [attack, 10]
  for m, expected in ((1, [1, 0]), (4, [0.75, 1])):
    acc = _reduce(robust.krum(num_byzantine=1, num_selected=m),
                  _points(rows), KRUM_WEIGHTS)
    np.testing.assert_allclose(_as_point(acc.aggregate), expected,
                               rtol=1e-6)


def test_krum_small_round_takes_the_median():
  # Only A, B, C, D are real: 4 < 2f + 3 = 5. The coordinate-wise median:
  # x 0 1 0 2 -> 0.5, y 0 0 3 1 -> 0.5.
  weights = list(KRUM_WEIGHTS)
  weights[6] = 0
  acc = _reduce(robust.krum(num_byzantine=1), _points(KRUM_ROWS), weights)
  np.testing.assert_allclose(_as_point(acc.aggregate), [0.5, 0.5])
  assert (_discarded(acc), int(acc.degraded)) == (0, 1)


def test_krum_cohort_too_small_raises():
  with pytest.raises(ValueError, match='needs at least 7 clients per round, '
                     'but the cohort holds at most 6'):
    _reduce(robust.krum(num_byzantine=2), np.ones((6, 2)), np.ones(6))


# --- Bulyan ----------------------------------------------------------------

# Five honest clients near the origin and two outliers, f = 1, n = 7:
# theta = 5 picked by Krum, beta = 3 kept per coordinate. Every Krum step
# with k >= 1 scores an honest client by distances to honest ones only
# (at most 42) and an outlier by distances of about 1e4; at the last step
# (one honest and two outliers left, k = 0) all scores are 0 and the sums
# of all distances decide: honest ~2e4 < outlier ~1e4 + 2e4 (the outliers
# are 2e4 apart). So the honest five are picked, in some order.
# x: 0 1 2 2.25 2.5, median 2, gaps 2 1 0 .25 .5 -> 2, 2.25, 2.5 -> 2.25
#    (trimming one at each end would give (1 + 2 + 2.25) / 3 = 1.75).
# y: 5 -1 0 1 .5 -> sorted -1 0 .5 1 5, median .5, gaps 1.5 .5 0 .5 4.5
#    -> 0, .5, 1 -> 0.5.
BULYAN_ROWS = [[0, 5], [100, 0], [1, -1], [0, 0], [2, 0], [2.25, 1],
               [NAN, NAN], [0, -100], [2.5, 0.5]]
BULYAN_WEIGHTS = [1, 1, 2, 0, 1, 3, 0, 1, 1]


def test_bulyan_by_hand():
  acc = _reduce(robust.bulyan(num_byzantine=1), _points(BULYAN_ROWS),
                BULYAN_WEIGHTS)
  np.testing.assert_allclose(_as_point(acc.aggregate), [2.25, 0.5],
                             rtol=1e-6)
  assert (_discarded(acc), int(acc.degraded)) == (2, 0)


def test_bulyan_without_byzantine_clients_is_the_uniform_mean():
  acc = _reduce(robust.bulyan(num_byzantine=0), _points(
      [[0, 0], [3, 0], [0, 6], [9, 9]]), [1, 5, 1, 0])
  np.testing.assert_allclose(_as_point(acc.aggregate), [1, 2], rtol=1e-6)


def test_bulyan_small_round_takes_the_median_and_tiny_cohort_raises():
  weights = list(BULYAN_WEIGHTS)
  weights[1] = 0   # 6 real < 4f + 3 = 7
  acc = _reduce(robust.bulyan(num_byzantine=1), _points(BULYAN_ROWS),
                weights)
  # x: 0 1 2 2.25 2.5 0 -> 1.5; y: 5 -1 0 1 .5 -100 -> 0.25.
  np.testing.assert_allclose(_as_point(acc.aggregate), [1.5, 0.25])
  assert int(acc.degraded) == 1
  with pytest.raises(ValueError, match='bulyan with num_byzantine=1 needs '
                     'at least 7'):
    _reduce(robust.bulyan(num_byzantine=1), np.ones((6, 1)), np.ones(6))


# --- geometric median ------------------------------------------------------

def test_geometric_median_of_a_convex_quadrilateral():
  # The geometric median of a convex quadrilateral's corners is where its
  # diagonals cross: (-1,0)-(3,0) and (0,1)-(0,-2) cross at the origin,
  # while the mean is (0.5, -0.25). The padded row would pull it away.
  rows = [[-1, 0], [0, 1], [5, 5], [3, 0], [0, -2]]
  weights = [2, 2, 0, 2, 2]
  near = _reduce(robust.geometric_median(), _points(rows), weights)
  np.testing.assert_allclose(_as_point(near.aggregate), [0, 0], atol=1e-3)
  close = _reduce(robust.geometric_median(iterations=40), _points(rows),
                  weights)
  np.testing.assert_allclose(_as_point(close.aggregate), [0, 0], atol=1e-5)


def test_geometric_median_weighs_clients_and_skips_non_finite_ones():
  # On a line the weighted geometric median is the weighted median: weight
  # 3 of 5 sits at 10 in the first case, at 0 in the second. The NaN client
  # takes no part.
  rows = np.array([[0.], [1.], [10.], [NAN]], np.float32)
  for weights, expected in (([1, 1, 3, 1], 10.), ([3, 1, 1, 1], 0.)):
    acc = _reduce(robust.geometric_median(iterations=50), rows, weights)
    np.testing.assert_allclose(acc.aggregate, [expected], atol=1e-4)


# --- every rule ------------------------------------------------------------

RULES = {
    'trimmed_mean': lambda: robust.trimmed_mean(trim_fraction=0.25),
    'krum': lambda: robust.krum(num_byzantine=2),
    'multi_krum': lambda: robust.krum(num_byzantine=2, num_selected=4),
    'bulyan': lambda: robust.bulyan(num_byzantine=1),
    'geometric_median': lambda: robust.geometric_median(),
}


def _cohort(rng, num_real, num_padded):
  """Random outputs with a few outliers, padded rows full of garbage."""
  size = num_real + num_padded
  outputs = {'w': rng.normal(size=(size, 3, 2)),
             'b': rng.normal(size=(size,))}
  outputs['w'][:2] += 50
  outputs['b'][num_real:] = NAN
  weights = np.concatenate([rng.uniform(1, 5, num_real),
                            np.zeros(num_padded)])
  return outputs, weights


@pytest.mark.parametrize('name', sorted(RULES))
def test_order_and_padding_change_nothing(name):
  rng = np.random.default_rng(1)
  outputs, weights = _cohort(rng, 9, 3)
  want = _reduce(RULES[name](), outputs, weights)
  real = np.flatnonzero(weights > 0)
  for num_padded in (0, 5):
    order = rng.permutation(len(real) + num_padded)
    rows = np.concatenate([real, np.full(num_padded, len(weights) - 1)])
    got = _reduce(RULES[name](), jax.tree.map(lambda x: x[rows][order],
                                              outputs),
                  np.where(rows < len(real), weights[rows], 0)[order])
    testing.assert_trees_close(got.aggregate, want.aggregate,
                               f'{name}, {num_padded} padded', rtol=1e-5,
                               atol=1e-6)
    assert (_discarded(got), int(got.degraded)) == (_discarded(want),
                                                    int(want.degraded))


@pytest.mark.parametrize('name', sorted(RULES))
def test_no_client_gives_zeros(name):
  outputs, _ = _cohort(np.random.default_rng(2), 9, 3)
  acc = _reduce(RULES[name](), outputs, np.zeros(12))
  for leaf in jax.tree.leaves(acc.aggregate):
    np.testing.assert_array_equal(leaf, np.zeros_like(leaf))


@pytest.mark.parametrize('call, message', [
    (lambda: robust.trimmed_mean(trim_fraction=0.5), 'trim_fraction'),
    (lambda: robust.trimmed_mean(trim_fraction=-0.1), 'trim_fraction'),
    (lambda: robust.trimmed_mean(trim_fraction=True), 'trim_fraction'),
    (lambda: robust.krum(num_byzantine=-1), 'num_byzantine'),
    (lambda: robust.krum(num_byzantine=1.0), 'num_byzantine'),
    (lambda: robust.krum(num_byzantine=1, num_selected=0), 'num_selected'),
    (lambda: robust.bulyan(num_byzantine=-2), 'num_byzantine'),
    (lambda: robust.geometric_median(iterations=0), 'iterations'),
    (lambda: robust.geometric_median(epsilon=0.0), 'epsilon'),
    (lambda: robust.as_transform('krum'), 'aggregator'),
    (lambda: robust.transforms_from_flags(aggregator='mode'), 'aggregator'),
    (lambda: robust.transforms_from_flags(aggregator='multi_krum',
                                          num_byzantine=1), 'num_selected'),
    (lambda: robust.transforms_from_flags(aggregator='bulyan'),
     'num_byzantine'),
])
def test_bad_parameters_raise(call, message):
  with pytest.raises(ValueError, match=message):
    call()


# --- transforms ------------------------------------------------------------

def test_transforms_from_flags():
  assert robust.transforms_from_flags(aggregator='mean') == []
  median, = robust.transforms_from_flags(aggregator='median')
  assert median.init(None) == ()
  for name, extra in (('trimmed_mean', {'trim_fraction': 0.1}),
                      ('krum', {'num_byzantine': 1}),
                      ('multi_krum', {'num_byzantine': 1, 'num_selected': 3}),
                      ('bulyan', {'num_byzantine': 1}),
                      ('geometric_median', {})):
    transform, = robust.transforms_from_flags(aggregator=name, **extra)
    assert transform.aggregator.whole_cohort, name
    assert isinstance(transform.init(None), robust.RobustState), name


def test_server_keeps_counts_and_ids_and_passes_foreign_aggregates():
  transform = robust.as_transform(robust.krum(num_byzantine=1),
                                  max_reported=3)
  state = transform.init(None)
  acc = robust.RobustAcc({'w': jnp.ones(2)}, jnp.array([5, -1, 3, 9, 4]),
                         jnp.int32(1))
  aggregate_tree, state = transform.server(state, acc, None)
  assert state.discarded_ids.tolist() == [3, 4, 5]   # the smallest 3 of 4
  aggregate_tree, state = transform.server(state, acc._replace(
      left_out=jnp.array([-1, 7, 2, -1, -1]), degraded=jnp.int32(0)), None)
  np.testing.assert_array_equal(aggregate_tree['w'], [1., 1.])
  assert [int(x) for x in state[:3]] == [2, 6, 1]
  metrics = transform.metrics(state)
  assert metrics['robust_discarded_ids'].tolist() == [2, 7, -1]
  assert float(metrics['robust_discarded']) == 2
  # A later transform that replaced the reduction hands a plain aggregate.
  plain, same = transform.server(state, {'w': jnp.zeros(2)}, None)
  np.testing.assert_array_equal(plain['w'], [0., 0.])
  assert same is state


def _setup():
  data, _ = datasets.synthetic(num_clients=12, seed=0, size_log_mean=2.0,
                               min_size=3)
  return models.logistic_regression(num_features=60, num_classes=10), data


@pytest.mark.parametrize('flags, discarded', [
    ({'aggregator': 'bulyan', 'num_byzantine': 1}, 2),
    ({'aggregator': 'multi_krum', 'num_byzantine': 2, 'num_selected': 3}, 5),
])
def test_engine_round_equals_a_loop(flags, discarded):
  # Cohorts of 8 (check_algorithm's have 5, too few for Bulyan with f = 1):
  # the compiled round over 4 devices, and padded to 11 on one, against the
  # reference loop over the real clients.
  model, data = _setup()
  algorithm = transforms.apply(
      fe.algorithms.fedavg(model, client_optimizer=optax.sgd(0.1)),
      *robust.transforms_from_flags(**flags))
  cohorts = ([7, 2, 10, 0, 5, 8, 3, 11], [1, 11, 6, 3, 9, 4, 0, 2])
  batching = fe.Batching(batch_size=4, local_steps=3)
  (want, _), _ = testing.reference_rounds(algorithm, model, data, cohorts,
                                          batching=batching)
  assert [int(x) for x in want.extra[0][:3]] == [discarded, 2 * discarded,
                                                  0]
  # Which clients: the last round's left-out ids are some of its cohort.
  left_out = [int(x) for x in want.extra[0].discarded_ids if x >= 0]
  assert len(left_out) == discarded and set(left_out) <= set(cohorts[1])
  devices = np.array(jax.devices())
  for num_devices, size in ((len(devices), 8), (1, 11)):
    rnd = simulate.make_round(
        algorithm, data, batching=batching, clients_per_round=size,
        mesh=jax.sharding.Mesh(devices[:num_devices], (simulate.AXIS,)))
    (got, _), _ = testing.engine_rounds(rnd, algorithm, model, cohorts)
    testing.assert_trees_close(got, want, f'{num_devices} devices, {size}')


def test_coordinate_median_is_installed_as_is():
  median = aggregate.coordinate_median()
  transform = robust.as_transform(median)
  assert transform.aggregator is median


def test_norm_bounded_mean_bounds_every_row_by_hand():
  # Rows (3, 4) (norm 5) and (0, 0.5), bound 1, weights 1 and 3, and a
  # padded row: (0.6, 0.8) * 1/4 + (0, 0.5) * 3/4 = (0.15, 0.575).
  agg = robust.norm_bounded_mean(max_norm=1.0)
  acc = agg.accumulate(
      agg.init(jnp.zeros(2)), jnp.array([[3., 4.], [0., 0.5], [9., 9.]]),
      jnp.array([1., 3., 0.]))
  np.testing.assert_allclose(agg.finalize(acc), [0.15, 0.575], rtol=1e-6)
  with pytest.raises(ValueError, match='max_norm must be'):
    robust.norm_bounded_mean(max_norm=0.0)
