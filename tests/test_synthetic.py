"""Tests for fedjax_engine.datasets.synthetic (LEAF Synthetic(alpha, beta))."""

import numpy as np
import pytest

import fedjax_engine as fe
from fedjax_engine.data import FederatedData

synthetic = fe.datasets.synthetic


def _client_label_hists(d):
  return np.stack([np.bincount(d.client(k)['y'], minlength=10) /
                   max(1, d.sizes[k]) for k in range(d.num_clients)])


def _mean_pairwise_tv(hists):
  tv = np.abs(hists[:, None, :] - hists[None, :, :]).sum(-1) / 2
  return tv[np.triu_indices(len(hists), 1)].mean()


def _client_mean_spread(d):
  means = np.array([d.client(k)['x'].mean() for k in range(d.num_clients)])
  return means.std()


def test_shapes_and_types():
  train, test = synthetic(num_clients=20, seed=0)
  for d in (train, test):
    assert isinstance(d, FederatedData)
    assert d.num_clients == 20
    assert set(d.features) == {'x', 'y'}
    assert d.features['x'].dtype == np.float32
    assert d.features['x'].shape == (d.num_examples, 60)
    assert d.features['y'].dtype == np.int32
    assert d.features['y'].shape == (d.num_examples,)
    y = d.features['y']
    assert y.min() >= 0 and y.max() < 10
    assert np.all(np.isfinite(d.features['x']))
  np.testing.assert_array_equal(train.client_ids,
                                [str(k) for k in range(20)])
  np.testing.assert_array_equal(train.client_ids, test.client_ids)


@pytest.mark.parametrize('test_fraction', [0.2, 0.5, 0.0])
def test_train_test_split_counts(test_fraction):
  train, test = synthetic(num_clients=30, seed=1, min_size=10,
                          test_fraction=test_fraction)
  total = train.sizes + test.sizes
  assert np.all(total >= 10)
  np.testing.assert_array_equal(test.sizes,
                                np.floor(test_fraction * total).astype(int))
  assert np.all(train.sizes >= 1)


def test_deterministic_by_seed():
  a_train, a_test = synthetic(num_clients=15, seed=3)
  b_train, b_test = synthetic(num_clients=15, seed=3)
  c_train, _ = synthetic(num_clients=15, seed=4)
  for a, b in ((a_train, b_train), (a_test, b_test)):
    np.testing.assert_array_equal(a.offsets, b.offsets)
    for name in a.features:
      np.testing.assert_array_equal(a.features[name], b.features[name])
  assert (not np.array_equal(a_train.offsets, c_train.offsets) or
          not np.array_equal(a_train.features['x'], c_train.features['x']))
  n = min(a_train.num_examples, c_train.num_examples)
  assert not np.allclose(a_train.features['x'][:n], c_train.features['x'][:n])


def test_iid_clients_have_similar_label_distributions():
  iid, _ = synthetic(iid=True, num_clients=60, seed=0)
  non_iid, _ = synthetic(alpha=1.0, beta=1.0, num_clients=60, seed=0)
  tv_iid = _mean_pairwise_tv(_client_label_hists(iid))
  tv_non_iid = _mean_pairwise_tv(_client_label_hists(non_iid))
  assert tv_iid < 0.5 * tv_non_iid, (tv_iid, tv_non_iid)


def test_iid_ignores_alpha_beta():
  a, _ = synthetic(iid=True, alpha=0.0, beta=0.0, num_clients=10, seed=5)
  b, _ = synthetic(iid=True, alpha=3.0, beta=7.0, num_clients=10, seed=5)
  np.testing.assert_array_equal(a.features['x'], b.features['x'])
  np.testing.assert_array_equal(a.features['y'], b.features['y'])


def test_beta_spreads_client_input_means():
  # B_k ~ N(0, beta) and v_k ~ N(B_k, 1): a client's mean over its examples
  # and 60 features is about B_k, whose spread over clients is about beta.
  spreads = {}
  for beta in (0.0, 1.0, 5.0):
    d, _ = synthetic(alpha=0.0, beta=beta, num_clients=80, seed=0)
    spreads[beta] = _client_mean_spread(d)
  assert spreads[0.0] < 0.3, spreads          # about sqrt(1/60) ~ 0.13
  assert 0.6 < spreads[1.0] < 1.5, spreads
  assert 3.5 < spreads[5.0] < 6.5, spreads
  iid, _ = synthetic(iid=True, num_clients=80, seed=0)
  assert _client_mean_spread(iid) < 0.1


def test_within_client_feature_variance_follows_sigma():
  # x ~ N(v_k, Sigma) with Sigma_jj = j^-1.2: the pooled within-client
  # variance of feature j is j^-1.2.
  d, _ = synthetic(alpha=1.0, beta=1.0, num_clients=100, seed=2,
                   test_fraction=0.0)
  owner = np.repeat(np.arange(d.num_clients), d.sizes)
  x = d.features['x'].astype(np.float64)
  sums = np.zeros((d.num_clients, 60))
  np.add.at(sums, owner, x)
  centered = x - (sums / d.sizes[:, None])[owner]
  var = (centered ** 2).sum(0) / (d.num_examples - d.num_clients)
  expected = np.arange(1, 61) ** -1.2
  np.testing.assert_allclose(var, expected, rtol=0.1)


@pytest.mark.parametrize('kwargs, match', [
    (dict(num_clients=0), r'num_clients must be positive'),
    (dict(num_clients=-3), r'num_clients must be positive'),
    (dict(test_fraction=1.0), r'test_fraction must lie in \[0, 1\)'),
    (dict(test_fraction=-0.1), r'test_fraction must lie in \[0, 1\)'),
    (dict(min_size=1), r'min_size must be at least 2'),
    (dict(alpha=-1.0), r'alpha and beta must be >= 0'),
    (dict(beta=-0.5), r'alpha and beta must be >= 0'),
])
def test_bad_arguments(kwargs, match):
  with pytest.raises(ValueError, match=match):
    synthetic(**kwargs)
