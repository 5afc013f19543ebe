"""Tests for fedjax_engine.datasets.partition (centralized arrays -> clients).

Every partitioner is checked for its promised statistical property with a
bound that a wrong implementation would break, plus exact bookkeeping: the
features are a permutation of the input rows (``x`` holds each row's own
index, so ``y`` must follow it), grouped by client.
"""

import subprocess
import sys

import numpy as np
import pytest

from fedjax_engine.data import FederatedData
from fedjax_engine.datasets import partition as P


def _data(n, num_classes=10, seed=0, probs=None):
  """``x[i] = [i, -i]`` (so a row can be traced) and random labels."""
  rng = np.random.default_rng(seed)
  x = np.stack([np.arange(n), -np.arange(n)], axis=1).astype(np.float32)
  y = rng.choice(num_classes, size=n, p=probs).astype(np.int32)
  return x, y


def _check_store(d, x, y, num_clients):
  """Each input row appears exactly once, with its own label, contiguously."""
  assert isinstance(d, FederatedData)
  assert set(d.features) == {'x', 'y'}
  assert d.num_clients == num_clients
  assert d.client_ids.tolist() == [str(k) for k in range(num_clients)]
  rows = d.features['x'][:, 0].astype(np.int64)
  np.testing.assert_array_equal(np.sort(rows), np.arange(len(y)))
  np.testing.assert_array_equal(d.features['x'], x[rows])
  np.testing.assert_array_equal(d.features['y'], y[rows])
  assert d.features['x'].flags.c_contiguous
  assert d.features['y'].flags.c_contiguous
  assert d.features['x'].dtype == x.dtype and d.features['y'].dtype == y.dtype
  assert d.sizes.sum() == len(y)


def _chi2_total(d, num_classes):
  """Sum over clients of Pearson's chi-square of the client's label counts
  against its size times the pooled label shares.

  For a uniformly random client of n out of N examples its expectation is
  (C - 1) (N - n) / (N - 1) <= C - 1, for any n.
  """
  counts = P.split_summary(d, num_classes=num_classes).label_counts
  shares = counts.sum(0) / counts.sum()
  expected = d.sizes[:, None] * shares[None, :]
  keep = (expected > 0) & (shares[None, :] > 0)
  return ((counts - expected) ** 2 / np.where(keep, expected, 1))[keep].sum()


def _chi2_bound(num_clients, num_classes):
  df = num_clients * (num_classes - 1)
  return df + 6 * np.sqrt(2 * df)


# --------------------------------------------------------------------------
# iid


def test_iid_every_example_once_and_equal_sizes():
  x, y = _data(1003)
  d = P.iid(x, y, num_clients=10, seed=0)
  _check_store(d, x, y, 10)
  assert d.sizes.max() - d.sizes.min() <= 1
  assert sorted(d.sizes.tolist()) == [100] * 7 + [101] * 3


def test_iid_label_histograms_close_to_global():
  probs = np.array([.3, .2, .1, .1, .1, .05, .05, .05, .03, .02])
  x, y = _data(20000, probs=probs)
  d = P.iid(x, y, num_clients=20, seed=1)
  bound = _chi2_bound(20, 10)
  assert _chi2_total(d, 10) < bound
  # The statistic does detect skew: contiguous label-sorted chunks fail.
  order = np.argsort(y, kind='stable')
  skewed = FederatedData({'x': x[order], 'y': y[order]},
                         np.arange(21) * 1000, np.arange(20))
  assert _chi2_total(skewed, 10) > 10 * bound


# --------------------------------------------------------------------------
# dirichlet


def test_dirichlet_every_example_once():
  x, y = _data(3000)
  d = P.dirichlet(x, y, num_clients=30, alpha=0.5, seed=0)
  _check_store(d, x, y, 30)
  assert d.sizes.min() >= 1   # default min_size=1


def test_dirichlet_skew_grows_as_alpha_falls():
  x, y = _data(20000)
  summaries = {a: P.split_summary(
      P.dirichlet(x, y, num_clients=20, alpha=a, seed=0), num_classes=10)
               for a in (100.0, 1.0, 0.1)}
  h = {a: s.mean_label_entropy for a, s in summaries.items()}
  assert h[100.0] > h[1.0] > h[0.1]
  assert h[0.1] < 2.0   # few classes per client (pooled: log2(10) = 3.32)
  # alpha = 100 is close to IID: entropy near the pooled one, a label skew
  # (mean TV to the pooled distribution) within 2x that of a truly IID split
  # of the same data (sampling noise alone), client sizes near N / K.
  tv_iid = P.split_summary(P.iid(x, y, num_clients=20, seed=0),
                           num_classes=10).mean_tv_to_global
  s = summaries[100.0]
  assert s.global_label_entropy - h[100.0] < 0.05
  assert s.mean_tv_to_global < 2 * tv_iid
  assert summaries[0.1].mean_tv_to_global > 8 * tv_iid
  assert s.sizes.std() / s.sizes.mean() < 0.1


def test_dirichlet_min_size_resamples():
  x, y = _data(2000)
  d = P.dirichlet(x, y, num_clients=20, alpha=0.3, seed=0, min_size=30)
  _check_store(d, x, y, 20)
  assert d.sizes.min() >= 30
  # min_size=0 keeps the first draw, which has a small client here.
  d0 = P.dirichlet(x, y, num_clients=20, alpha=0.3, seed=0, min_size=0)
  assert d0.sizes.min() < 30


def test_dirichlet_min_size_errors():
  x, y = _data(1000)
  with pytest.raises(ValueError, match=r'min_size=11 is impossible.*1100'):
    P.dirichlet(x, y, num_clients=100, alpha=1.0, seed=0, min_size=11)
  with pytest.raises(ValueError, match=r'max_retries=3.*alpha=0.01'):
    P.dirichlet(x, y, num_clients=100, alpha=0.01, seed=0, min_size=5,
                max_retries=3)


# --------------------------------------------------------------------------
# shards


def test_shards_pathological_split():
  # 10 classes x 100 examples; 25 clients x 2 shards = 50 shards of 20, so
  # every shard holds one label.
  rng = np.random.default_rng(0)
  y = rng.permutation(np.repeat(np.arange(10), 100)).astype(np.int64)
  x = np.arange(1000, dtype=np.float64)[:, None]
  d = P.shards(x, y, num_clients=25, shards_per_client=2, seed=0)
  _check_store(d, x, y, 25)
  assert d.sizes.tolist() == [40] * 25
  counts = P.split_summary(d, num_classes=10).label_counts
  assert (counts > 0).sum(1).max() <= 2
  assert np.all(counts % 20 == 0)   # whole shards only
  # Shards are dealt at random: most clients get two different labels and
  # clients do not all get the same pair.
  assert (counts > 0).sum(1).mean() > 1.5
  assert len({tuple(np.flatnonzero(c)) for c in counts}) > 5


def test_shards_remainder_is_spread_not_dropped():
  x, y = _data(1001)
  d = P.shards(x, y, num_clients=10, shards_per_client=3, seed=0)
  _check_store(d, x, y, 10)   # every example kept
  assert d.sizes.max() - d.sizes.min() <= 3
  with pytest.raises(ValueError, match=r'10 \* 3 = 30 shards.*20 examples'):
    P.shards(x[:20], y[:20], num_clients=10, shards_per_client=3, seed=0)
  with pytest.raises(ValueError, match='shards_per_client must be >= 1'):
    P.shards(x, y, num_clients=10, shards_per_client=0, seed=0)


# --------------------------------------------------------------------------
# quantity skew


def _cv(sizes):
  return sizes.std() / sizes.mean()


def test_quantity_skew_sizes():
  x, y = _data(20000)
  wide = P.quantity_skew(x, y, num_clients=100, seed=0, sigma=1.5)
  narrow = P.quantity_skew(x, y, num_clients=100, seed=0, sigma=0.1)
  for d in (wide, narrow):
    _check_store(d, x, y, 100)
    assert d.sizes.min() >= 1
  assert _cv(wide.sizes) > 1.0
  assert _cv(narrow.sizes) < 0.2
  # Every client at least one example even when that takes them all.
  tight = P.quantity_skew(x[:50], y[:50], num_clients=50, seed=0, sigma=3.0)
  assert tight.sizes.tolist() == [1] * 50
  equal = P.quantity_skew(x[:1000], y[:1000], num_clients=10, seed=0,
                          sigma=0.0)
  assert equal.sizes.tolist() == [100] * 10


def test_quantity_skew_power_law():
  x, y = _data(20000)
  d = P.quantity_skew(x, y, num_clients=100, seed=0,
                      distribution='power_law', exponent=1.0)
  _check_store(d, x, y, 100)
  assert d.sizes.min() >= 1
  assert d.sizes.max() > 5 * np.median(d.sizes)   # a heavy tail
  flat = P.quantity_skew(x, y, num_clients=100, seed=0,
                         distribution='power_law', exponent=20.0)
  assert _cv(flat.sizes) < _cv(d.sizes)


def test_quantity_skew_labels_iid_within_clients():
  x, y = _data(20000, probs=[.4, .2, .1, .1, .05, .05, .04, .03, .02, .01])
  d = P.quantity_skew(x, y, num_clients=50, seed=0, sigma=1.0)
  assert _chi2_total(d, 10) < _chi2_bound(50, 10)


# --------------------------------------------------------------------------
# natural


@pytest.mark.parametrize('kind', ['int', 'str'])
def test_natural_groups_exactly(kind):
  rng = np.random.default_rng(0)
  owners = rng.choice([3, 11, 7, 100, 42], size=500)
  ids = owners if kind == 'int' else np.array([f'w{o}' for o in owners])
  x, y = _data(500)
  d = P.natural(x, y, ids=ids)
  expected_ids = np.unique(ids)
  np.testing.assert_array_equal(d.client_ids, expected_ids)
  if kind == 'int':
    assert d.client_ids.tolist() == [3, 7, 11, 42, 100]
  for k, cid in enumerate(expected_ids):
    rows = np.flatnonzero(ids == cid)   # original order kept
    np.testing.assert_array_equal(d.client(k)['x'], x[rows])
    np.testing.assert_array_equal(d.client(k)['y'], y[rows])


# --------------------------------------------------------------------------
# determinism


PARTITIONERS = {
    'iid': lambda x, y, s: P.iid(x, y, num_clients=7, seed=s),
    'dirichlet': lambda x, y, s: P.dirichlet(x, y, num_clients=7, alpha=0.5,
                                             seed=s),
    'shards': lambda x, y, s: P.shards(x, y, num_clients=7, seed=s),
    'lognormal': lambda x, y, s: P.quantity_skew(x, y, num_clients=7, seed=s),
    'power_law': lambda x, y, s: P.quantity_skew(
        x, y, num_clients=7, seed=s, distribution='power_law'),
}


@pytest.mark.parametrize('name', sorted(PARTITIONERS))
def test_deterministic_by_seed(name):
  x, y = _data(300)
  make = PARTITIONERS[name]
  a, b, c = make(x, y, 5), make(x, y, 5), make(x, y, 6)
  for key in ('x', 'y'):
    np.testing.assert_array_equal(a.features[key], b.features[key])
  np.testing.assert_array_equal(a.offsets, b.offsets)
  assert not np.array_equal(a.features['x'], c.features['x'])


# --------------------------------------------------------------------------
# validation


@pytest.mark.parametrize('call, error, match', [
    (lambda x, y: P.iid(x, y, num_clients=0, seed=0), ValueError,
     r'num_clients must be in \[1, 20\].*got 0'),
    (lambda x, y: P.iid(x, y, num_clients=21, seed=0), ValueError,
     r'num_clients.*got 21'),
    (lambda x, y: P.iid(x, y, num_clients=2.5, seed=0), TypeError,
     r'num_clients must be an integer, got 2.5'),
    (lambda x, y: P.iid(x[:19], y, num_clients=2, seed=0), ValueError,
     r'len\(x\)=19 and len\(y\)=20'),
    (lambda x, y: P.iid(x, np.where(np.arange(20) == 4, -3, y),
                        num_clients=2, seed=0), ValueError,
     r'non-negative, got y\[4\]=-3'),
    (lambda x, y: P.iid(x, y.astype(float), num_clients=2, seed=0),
     ValueError, r'integer class labels, got dtype float64'),
    (lambda x, y: P.iid(x[:0], y[:0], num_clients=1, seed=0), ValueError,
     r'empty'),
    (lambda x, y: P.dirichlet(x, y, num_clients=2, alpha=0.0, seed=0),
     ValueError, r'alpha must be a positive finite number, got 0.0'),
    (lambda x, y: P.dirichlet(x, y, num_clients=2, alpha=-1, seed=0),
     ValueError, r'alpha.*got -1'),
    (lambda x, y: P.dirichlet(x, y, num_clients=2, alpha=float('nan'),
                              seed=0), ValueError, r'alpha.*got nan'),
    (lambda x, y: P.quantity_skew(x, y, num_clients=2, seed=0, sigma=-1.0),
     ValueError, r'sigma must be a finite number >= 0, got -1.0'),
    (lambda x, y: P.quantity_skew(x, y, num_clients=2, seed=0,
                                  distribution='power_law', sigma=1.0),
     ValueError, r"sigma=1.0 applies only to distribution='lognormal'"),
    (lambda x, y: P.quantity_skew(x, y, num_clients=2, seed=0,
                                  distribution='zipf'),
     ValueError, r"got 'zipf'"),
    (lambda x, y: P.natural(x, y, ids=np.arange(19)), ValueError,
     r'one owner per example \(20\), got shape \(19,\)'),
])
def test_validation_messages(call, error, match):
  x, y = _data(20)
  with pytest.raises(error, match=match):
    call(x, y)


# --------------------------------------------------------------------------
# summary and plot


def _hand_example():
  return FederatedData.from_clients({
      'a': {'y': np.array([0, 0, 1])},
      'b': {'y': np.array([2])},
      'c': {'y': np.array([1, 1, 1, 2])},
  })


def test_split_summary_by_hand():
  s = P.split_summary(_hand_example(), num_classes=3)
  assert s.sizes.tolist() == [3, 1, 4]
  assert (s.size_min, s.size_median, s.size_max) == (1, 3.0, 4)
  assert s.size_mean == pytest.approx(8 / 3)
  assert s.label_counts.tolist() == [[2, 1, 0], [0, 0, 1], [0, 3, 1]]
  assert s.labels_per_client.tolist() == [2, 1, 2]
  h = lambda *p: -sum(q * np.log2(q) for q in p)
  np.testing.assert_allclose(s.label_entropy, [h(2 / 3, 1 / 3), 0.0,
                                               h(3 / 4, 1 / 4)])
  assert s.mean_label_entropy == pytest.approx(
      (h(2 / 3, 1 / 3) + h(3 / 4, 1 / 4)) / 3)
  assert s.global_label_entropy == pytest.approx(1.5)   # [1/4, 1/2, 1/4]
  # TV to [1/4, 1/2, 1/4]: a 5/12, b 3/4, c 1/4.
  assert s.mean_tv_to_global == pytest.approx((5 / 12 + 3 / 4 + 1 / 4) / 3)
  assert (s.num_clients, s.num_examples) == (3, 8)
  text = str(s)
  assert text.splitlines()[0] == '3 clients, 8 examples, 3 classes'
  assert 'min 1, median 3, mean 2.7, max 4' in text
  row_c = [l for l in text.splitlines() if l.split()[:1] == ['c']][0]
  assert row_c.split()[:4] == ['c', '4', '2', '0.81']
  assert row_c.split('|')[1].split() == ['0', '3', '1']
  assert 'more clients' not in text
  assert '... 1 more clients' in s.format(max_rows=2)


def test_split_summary_many_classes_and_errors():
  d = FederatedData.from_clients({
      'u': {'y': np.array([14, 14, 14, 2])}, 'v': {'y': np.array([0])}})
  text = P.split_summary(d, num_classes=15).format()
  assert '14:75% 2:25%' in text and '0:100%' in text
  with pytest.raises(ValueError, match=r'label 14 lies outside \[0, '
                     r'num_classes=10\)'):
    P.split_summary(d, num_classes=10)
  with pytest.raises(ValueError, match=r"no 'label' feature.*\['y'\]"):
    P.split_summary(d, num_classes=15, label_key='label')


PNG_SIGNATURE = b'\x89PNG\r\n\x1a\n'


def test_plot_split_writes_png(tmp_path):
  x, y = _data(5000)
  d = P.dirichlet(x, y, num_clients=80, alpha=0.3, seed=0)
  path = tmp_path / 'split.png'
  assert P.plot_split(d, num_classes=10, path=path) == path
  data = path.read_bytes()
  assert data[:8] == PNG_SIGNATURE and len(data) > 20_000
  # Many classes: a colour bar instead of a legend; few clients.
  x, y = _data(600, num_classes=40)
  d = P.shards(x, y, num_clients=6, seed=0)
  path = tmp_path / 'many.png'
  P.plot_split(d, num_classes=40, path=str(path), title='shards')
  data = path.read_bytes()
  assert data[:8] == PNG_SIGNATURE and len(data) > 10_000


def test_matplotlib_imported_lazily():
  code = ('import sys; import fedjax_engine.datasets.partition; '
          'print("matplotlib" in sys.modules)')
  out = subprocess.run([sys.executable, '-c', code], capture_output=True,
                       text=True, timeout=120, check=True)
  assert out.stdout.strip() == 'False'
