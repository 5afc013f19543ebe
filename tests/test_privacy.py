"""Tests for fedjax_engine.privacy: DP transforms, by hand and statistically.

Statistical checks test a variance with a chi-square test on many draws
(the mean is known to be 0, so ``sum x^2 / sigma^2 ~ chi2(n)``); each fails
by chance with probability 2e-6 and fails for certain when the std is off
by 10%.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from scipy import stats

import fedjax_engine as fe
from fedjax_engine import privacy
from fedjax_engine import transforms
from fedjax_engine.algorithm import WEIGHTED_MEAN


def _identity_algorithm():
  """An algorithm whose params become the aggregate it is handed, so a test
  reads what the transforms give the server."""
  return fe.Algorithm(
      init=lambda params: fe.ServerState(params, (), jnp.zeros((), jnp.int32)),
      client_update=lambda state, row, batches, mask, key: (batches, row, {}),
      server_update=lambda state, aggregate, info: state._replace(
          params=aggregate, round=state.round + 1))


def _info(key):
  return fe.RoundInfo(num_clients=jnp.int32(0), total_weight=jnp.float32(0),
                      population=jnp.int32(0), key=key)


def _client_outputs(algo, state, outputs, keys=None, ids=None):
  """``algo.transform`` on each client's output; (outputs, metrics)."""
  n = len(outputs)
  keys = jax.random.split(jax.random.key(7), n) if keys is None else keys
  ids = range(n) if ids is None else ids
  sent, metrics = [], []
  for output, key, client in zip(outputs, keys, ids):
    out, _, more = algo.transform(state, output, (), key, jnp.int32(client))
    sent.append(out)
    metrics.append(more)
  return sent, metrics


def _reduce(algo, sent, weights):
  agg = algo.aggregator
  stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *sent)
  return agg.finalize(agg.accumulate(agg.init(sent[0]), stacked,
                                     jnp.asarray(weights, jnp.float32)))


def _round(algo, state, outputs, weights, key):
  """One round of ``algo`` over hand-made client outputs: the new state and
  the clients' metrics."""
  sent, metrics = _client_outputs(algo, state, outputs)
  return algo.server_update(state, _reduce(algo, sent, weights),
                            _info(key)), metrics


def assert_std(samples, std, what):
  x = np.asarray(samples, np.float64).ravel()
  n = x.size
  statistic = np.sum(x**2) / std**2
  low, high = stats.chi2.ppf(1e-6, n), stats.chi2.isf(1e-6, n)
  assert low < statistic < high, (
      f'{what}: sample std {np.sqrt(np.mean(x**2)):.5g}, expected {std:.5g} '
      f'({n} draws)')


def test_std_check_fails_when_the_std_is_off_by_ten_percent():
  rng = np.random.default_rng(0)
  x = rng.normal(size=100_000)
  assert_std(x, 1.0, 'right std')
  for wrong in (0.9, 1.1):
    with pytest.raises(AssertionError):
      assert_std(x, wrong, 'wrong std')


# Clipping.

def test_fixed_clip_scales_to_the_norm_exactly():
  algo = transforms.apply(_identity_algorithm(), *privacy.dp_fedavg(
      clip_norm=1.0, noise_multiplier=0.0, expected_clients=1))
  state = algo.init({'a': jnp.zeros(2), 'b': jnp.zeros((1, 1))})
  big = {'a': jnp.array([3.0, 0.0]), 'b': jnp.array([[4.0]])}   # norm 5
  small = {'a': jnp.array([0.3, 0.0]), 'b': jnp.array([[0.4]])}   # norm 0.5
  (clipped, kept), metrics = _client_outputs(algo, state, [big, small])
  np.testing.assert_allclose(clipped['a'], [0.6, 0.0], rtol=1e-6)
  np.testing.assert_allclose(clipped['b'], [[0.8]], rtol=1e-6)
  np.testing.assert_allclose(fe.tree.l2_norm(clipped), 1.0, rtol=1e-6)
  np.testing.assert_array_equal(kept['a'], small['a'])
  np.testing.assert_array_equal(kept['b'], small['b'])
  assert [float(m['update_norm'].total) for m in metrics] == pytest.approx(
      [5.0, 0.5])
  assert [float(m['clipped'].total) for m in metrics] == [1.0, 0.0]


# DP-FedAvg with a fixed clip.

def test_sum_ignores_example_weights_and_weightless_clients():
  agg = privacy.client_sum()
  outputs = jnp.array([[1., 2.], [3., 4.], [100., 100.]])
  acc = agg.accumulate(agg.init(outputs[0]), outputs,
                       jnp.array([10., 1., 0.]))
  np.testing.assert_allclose(agg.finalize(acc), [4., 6.])
  # Streams: two chunks give the same sum.
  acc = agg.accumulate(agg.init(outputs[0]), outputs[:1], jnp.array([10.]))
  acc = agg.accumulate(acc, outputs[1:], jnp.array([1., 0.]))
  np.testing.assert_allclose(agg.finalize(acc), [4., 6.])


def test_dp_fedavg_without_noise_is_the_clipped_sum_over_expected_clients():
  algo = transforms.apply(_identity_algorithm(), *privacy.dp_fedavg(
      clip_norm=1.0, noise_multiplier=0.0, expected_clients=4))
  outputs = [jnp.array([3.0, 4.0]),    # norm 5: clipped to [0.6, 0.8]
             jnp.array([0.5, 0.0]),
             jnp.array([0.0, -0.2]),
             jnp.array([9.0, 9.0])]    # padded: weight 0
  state, _ = _round(algo, algo.init(jnp.zeros(2)), outputs,
                    [100., 1., 3., 0.], jax.random.key(0))
  # (0.6 + 0.5 + 0, 0.8 + 0 - 0.2) / 4, whatever the example weights.
  np.testing.assert_allclose(state.params, [0.275, 0.15], rtol=1e-6)


def test_dp_fedavg_noise_std_is_z_times_clip_over_expected_clients():
  z, clip, m = 1.3, 0.5, 10
  algo = transforms.apply(_identity_algorithm(), *privacy.dp_fedavg(
      clip_norm=clip, noise_multiplier=z, expected_clients=m))
  zeros = {'w': jnp.zeros((300, 200)), 'b': jnp.zeros((60_000,))}
  state = algo.init(zeros)
  sent, _ = _client_outputs(algo, state, [zeros])
  aggregate = _reduce(algo, sent, [1.0])
  noises = [algo.server_update(state, aggregate, _info(jax.random.key(k)))
            .params for k in range(2)]
  for noise in noises:
    assert_std(noise['w'], z * clip / m, 'w')
    assert_std(noise['b'], z * clip / m, 'b')
  # Leaves and rounds get noise of their own; a key gives the same noise.
  flat = [np.asarray(n['w']).ravel()[:60_000] for n in noises]
  for a, b in [(flat[0], np.asarray(noises[0]['b'])), (flat[0], flat[1])]:
    assert abs(np.corrcoef(a, b)[0, 1]) < 5 / math.sqrt(a.size)
  again = algo.server_update(state, aggregate, _info(jax.random.key(0)))
  np.testing.assert_array_equal(again.params['w'], noises[0]['w'])


# Adaptive clipping.

def test_adaptive_clip_update_by_hand():
  algo = transforms.apply(_identity_algorithm(), *privacy.dp_fedavg(
      clip_norm=1.0, noise_multiplier=0.0, expected_clients=4,
      target_quantile=0.5, clip_lr=0.2))
  state = algo.init(jnp.zeros(2))
  outputs = [jnp.array([0.3, 0.4]),    # norm 0.5, unclipped
             jnp.array([1.2, 1.6]),    # norm 2, clipped to [0.6, 0.8]
             jnp.array([0.0, 0.8]),    # norm 0.8, unclipped
             jnp.array([5.0, 5.0])]    # padded
  state, metrics = _round(algo, state, outputs, [3., 1., 7., 0.],
                          jax.random.key(0))
  np.testing.assert_allclose(state.params, [0.9 / 4, 2.0 / 4], rtol=1e-6)
  # Unclipped fraction (1/2 - 1/2 + 1/2) / 4 + 1/2 = 0.625, so
  # C = 1 * exp(-0.2 (0.625 - 0.5)).
  clip = math.exp(-0.2 * 0.125)
  np.testing.assert_allclose(state.extra[0], clip, rtol=1e-6)
  assert [float(m['clip_norm'].total) for m in metrics[:3]] == [1.0] * 3
  assert [float(m['clipped'].total) for m in metrics[:3]] == [0., 1., 0.]
  # The next round clips to the new C: norm 0.98 > C = 0.9753.
  outputs = [jnp.array([0.3, 0.4]), jnp.array([0.0, 0.8]),
             jnp.array([0.0, 0.98])]
  state, metrics = _round(algo, state, outputs, [1., 1., 1.],
                          jax.random.key(1))
  np.testing.assert_allclose(state.params, [0.3 / 4, (1.2 + clip) / 4],
                             rtol=1e-6)
  np.testing.assert_allclose(state.extra[0], clip * math.exp(-0.2 * 0.125),
                             rtol=1e-6)
  np.testing.assert_allclose(float(metrics[0]['clip_norm'].total), clip,
                             rtol=1e-6)


def test_adaptive_noise_splits_the_budget_as_theorem_1():
  z, sigma_b, m, clip, lr = 1.0, 1.0, 20, 2.0, 0.2
  algo = transforms.apply(_identity_algorithm(), *privacy.dp_fedavg(
      clip_norm=clip, noise_multiplier=z, expected_clients=m,
      target_quantile=0.5, clip_lr=lr, clipped_count_stddev=sigma_b))
  state = algo.init(jnp.zeros(100))
  sent, _ = _client_outputs(algo, state, [jnp.zeros(100)] * m)
  aggregate = _reduce(algo, sent, [1.0] * m)
  states = jax.jit(jax.vmap(lambda k: algo.server_update(
      state, aggregate, _info(k))))(jax.random.split(jax.random.key(0), 4000))
  # z_Delta = (1 - 1/4)^(-1/2) = 2 / sqrt(3); the update noise has std
  # z_Delta C / m.
  assert_std(states.params, 2 / math.sqrt(3) * clip / m, 'update noise')
  # All m clients unclipped: log(C' / C) = -lr (1 + N(0, sigma_b^2) / m
  # - 1/2), so its std is lr sigma_b / m.
  log_ratio = np.log(np.asarray(states.extra[0], np.float64) / clip)
  assert_std(log_ratio + lr * 0.5, lr * sigma_b / m, 'clip update noise')


def test_default_count_noise_is_expected_clients_over_20():
  # sigma_b = 20 / 20 = 1: the count's noise alone is worth z = 2.
  privacy.dp_fedavg(clip_norm=1.0, noise_multiplier=1.99, expected_clients=20,
                    target_quantile=0.5)
  with pytest.raises(ValueError, match='noise_multiplier'):
    privacy.dp_fedavg(clip_norm=1.0, noise_multiplier=2.0,
                      expected_clients=20, target_quantile=0.5)


# Local DP.

def test_local_noise_is_each_clients_own():
  z, clip, n, clients = 0.7, 1.0, 20_000, 16
  algo = transforms.apply(_identity_algorithm(), *privacy.local_gaussian(
      clip_norm=clip, noise_multiplier=z))
  assert algo.aggregator is WEIGHTED_MEAN
  state = algo.init(jnp.zeros(n))
  keys = jax.random.split(jax.random.key(3), clients)
  sent, metrics = _client_outputs(algo, state, [jnp.zeros(n)] * clients,
                                  keys=keys)
  noise = np.stack(sent)
  assert_std(noise, z * clip, 'local noise')
  correlations = np.corrcoef(noise)[np.triu_indices(clients, 1)]
  assert np.max(np.abs(correlations)) < 5 / math.sqrt(n)
  again, _ = _client_outputs(algo, state, [jnp.zeros(n)], keys=keys[:1])
  np.testing.assert_array_equal(again[0], noise[0])
  # The noise goes onto the clipped output: entries 10 / sqrt(n) (norm 10)
  # become 1 / sqrt(n) plus noise.
  big = jnp.full((n,), 10.0 / math.sqrt(n))
  (out,), metrics = _client_outputs(algo, state, [big], keys=keys[:1])
  assert float(metrics[0]['update_norm'].total) == pytest.approx(10.0)
  assert_std(np.asarray(out) - 1.0 / math.sqrt(n), z * clip, 'clip + noise')


# DP-FTRL.

def _prefix_node_noise(seed, t, leaf, shape, std):
  """Leaf ``leaf`` of the noise of ``P_t``, the sum of the nodes of the set
  bits of ``t``, drawn from their keys as the module documents them."""
  total = np.zeros(shape)
  for level in range(t.bit_length()):
    if t >> level & 1:
      key = jax.random.fold_in(jax.random.fold_in(jax.random.key(seed),
                                                  level), t >> level)
      total += std * np.asarray(jax.random.normal(
          jax.random.fold_in(key, leaf), shape), np.float64)
  return total


def _ftrl_noise_aggregates(seed, rounds, size, std, m=1):
  """What DP-FTRL hands the server in each round when every client sum is
  0, times ``m``."""
  algo = transforms.apply(_identity_algorithm(), *privacy.dp_ftrl(
      clip_norm=std, noise_multiplier=1.0, expected_clients=m, seed=seed))
  state = algo.init(jnp.zeros(size))
  step = jax.jit(algo.server_update)
  out = []
  for r in range(rounds):
    state = step(state, jnp.zeros(size), _info(jax.random.key(100 + r)))
    out.append(m * np.asarray(state.params, np.float64))
  assert int(state.extra[1]) == rounds   # the state: rounds done
  return np.stack(out)


def test_tree_prefix_noise_telescopes_to_the_nodes_of_the_set_bits():
  seed, rounds, size, std = 5, 20, 1000, 0.3
  prefixes = np.cumsum(_ftrl_noise_aggregates(seed, rounds, size, std), 0)
  for t in range(1, rounds + 1):
    nodes = _prefix_node_noise(seed, t, 0, (size,), std)
    np.testing.assert_allclose(prefixes[t - 1], nodes, rtol=1e-5,
                               atol=1e-6 * std, err_msg=f't={t}')


def test_tree_prefix_noise_variance_is_set_bits_times_node_variance():
  std, size = 1.5, 50_000
  prefixes = np.cumsum(_ftrl_noise_aggregates(0, 16, size, std), 0)
  for t in range(1, 17):
    assert_std(prefixes[t - 1], math.sqrt(bin(t).count('1')) * std, f't={t}')


def test_tree_noise_depends_on_seed_only():
  a = _ftrl_noise_aggregates(1, 3, 10, 1.0)
  b = _ftrl_noise_aggregates(1, 3, 10, 1.0)   # other round keys in there too
  c = _ftrl_noise_aggregates(2, 3, 10, 1.0)
  np.testing.assert_array_equal(a, b)
  assert not np.allclose(a, c)


def test_dp_ftrl_with_server_sgd_is_ftrl():
  # params_t = params_0 - lr (sum of the clipped sums + prefix noise) / m.
  lr, m, clip, z, seed = 0.5, 3, 1.0, 0.8, 4
  model = fe.models.logistic_regression(num_features=3, num_classes=2)
  fedavg = fe.algorithms.fedavg(model, client_optimizer=optax.sgd(0.1),
                                server_optimizer=optax.sgd(lr))
  algo = transforms.apply(fedavg, *privacy.dp_ftrl(
      clip_norm=clip, noise_multiplier=z, expected_clients=m, seed=seed))
  params0 = model.init(jax.random.key(0))
  state = algo.init(params0)
  rng = np.random.default_rng(0)
  leaves, treedef = jax.tree.flatten(params0)
  total = [np.zeros(x.shape) for x in leaves]
  for t in range(1, 7):
    outputs = [jax.tree.unflatten(treedef, [
        rng.normal(size=x.shape).astype(np.float32) for x in leaves])
               for _ in range(2)]
    for output in outputs:
      scale = min(1.0, clip / float(fe.tree.l2_norm(output)))
      total = [a + scale * np.asarray(x, np.float64)
               for a, x in zip(total, jax.tree.leaves(output))]
    state, _ = _round(algo, state, outputs, [5., 1.], jax.random.key(t))
    for i, (got, start, acc) in enumerate(zip(
        jax.tree.leaves(state.params), leaves, total)):
      want = np.asarray(start, np.float64) - lr * (
          acc + _prefix_node_noise(seed, t, i, acc.shape, z * clip)) / m
      np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5,
                                 err_msg=f'round {t}, leaf {i}')



# The command line's builder and validation.

def test_transforms_from_flags():
  common = dict(clip_norm=0.5, noise_multiplier=1.0, clients_per_round=10,
                seed=0)
  assert privacy.transforms_from_flags(dp='none', target_quantile=None,
                                       **common) == []
  assert len(privacy.transforms_from_flags(
      dp='dp_fedavg', target_quantile=None, **common)) == 2
  # 100 clients: the count's default noise, 100 / 20, leaves room for z = 1.
  (adaptive,) = privacy.transforms_from_flags(
      dp='dp_fedavg', target_quantile=0.5,
      **dict(common, clients_per_round=100))
  assert float(adaptive.init(None)) == 0.5
  assert len(privacy.transforms_from_flags(
      dp='dp_ftrl', target_quantile=None, **common)) == 2
  local = privacy.transforms_from_flags(dp='local', target_quantile=None,
                                        **common)
  assert all(t.aggregator is None for t in local)
  with pytest.raises(ValueError, match='target_quantile'):
    privacy.transforms_from_flags(dp='dp_ftrl', target_quantile=0.5, **common)
  with pytest.raises(ValueError, match="dp must be one of .*'dp_sgd'"):
    privacy.transforms_from_flags(dp='dp_sgd', target_quantile=None, **common)


@pytest.mark.parametrize('factory, kwargs, name', [
    (privacy.dp_fedavg, dict(clip_norm=0.0, noise_multiplier=1.0,
                             expected_clients=5), 'clip_norm'),
    (privacy.dp_fedavg, dict(clip_norm=1.0, noise_multiplier=-1.0,
                             expected_clients=5), 'noise_multiplier'),
    (privacy.dp_fedavg, dict(clip_norm=1.0, noise_multiplier=1.0,
                             expected_clients=0), 'expected_clients'),
    (privacy.dp_fedavg, dict(clip_norm=1.0, noise_multiplier=1.0,
                             expected_clients=2.5), 'expected_clients'),
    (privacy.dp_fedavg, dict(clip_norm=1.0, noise_multiplier=0.1,
                             expected_clients=5, target_quantile=1.0),
     'target_quantile'),
    (privacy.dp_fedavg, dict(clip_norm=1.0, noise_multiplier=0.1,
                             expected_clients=5, target_quantile=0.5,
                             clip_lr=0.0), 'clip_lr'),
    (privacy.dp_fedavg, dict(clip_norm=1.0, noise_multiplier=0.1,
                             expected_clients=5, clipped_count_stddev=1.0),
     'clipped_count_stddev'),
    (privacy.local_gaussian, dict(clip_norm=float('nan'),
                                  noise_multiplier=1.0), 'clip_norm'),
    (privacy.dp_ftrl, dict(clip_norm=1.0, noise_multiplier=1.0,
                           expected_clients=5, seed=1.5), 'seed'),
])
def test_invalid_arguments_name_the_parameter(factory, kwargs, name):
  with pytest.raises(ValueError, match=f'^{name} must be'):
    factory(**kwargs)
