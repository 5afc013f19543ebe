"""Partitioners: centralized ``(x, y)`` arrays -> simulated clients.

Each partitioner takes centralized arrays ``x [N, ...]`` and integer labels
``y [N]`` and returns a :class:`fedjax_engine.FederatedData` with features
``x`` and ``y`` stored once, grouped by client (one permutation of the rows
and offsets: a client is a slice), clients named ``'0'`` .. ``'K-1'``
(except :func:`natural`, which keeps the given owner ids). Every example is
used exactly once. Everything random is drawn from
``numpy.random.default_rng(seed)``, so a split is a pure function of its
arguments. Within a client the examples are in random order.

Partitioners:

* :func:`iid`: a uniformly random split into equal sizes (differing by at
  most 1).
* :func:`dirichlet`: label skew; for every class, the shares of the clients
  are drawn from a symmetric Dirichlet(alpha) (Yurochkin et al. 2019).
* :func:`shards`: McMahan et al. 2017's pathological split: sort by label,
  cut into shards, deal each client a few random shards.
* :func:`quantity_skew`: lognormal or power-law client sizes, labels IID.
* :func:`natural`: group by a given owner id per example (writer, user).

Inspection: :func:`split_summary` (sizes and per-client label histograms,
printable as a table) and :func:`plot_split` (a PNG of both).

Example:

  >>> import numpy as np
  >>> x = np.arange(12, dtype=np.float32)[:, None]
  >>> y = np.repeat(np.arange(3), 4)
  >>> data = iid(x, y, num_clients=5, seed=0)
  >>> data.client_ids.tolist(), data.sizes.tolist()
  (['0', '1', '2', '3', '4'], [3, 3, 2, 2, 2])
  >>> sorted(data.features['x'][:, 0].tolist()) == x[:, 0].tolist()
  True
  >>> split_summary(data, num_classes=3).label_counts.sum(axis=0).tolist()
  [4, 4, 4]
"""

import dataclasses
import operator

import numpy as np

from fedjax_engine.data import FederatedData

__all__ = ['iid', 'dirichlet', 'shards', 'quantity_skew', 'natural',
           'SplitSummary', 'split_summary', 'plot_split']


# --------------------------------------------------------------------------
# Validation and assembly.


def _check_xy(x, y):
  """Returns ``(x, y)`` as arrays after checking shapes and labels."""
  x = x if isinstance(x, np.ndarray) else np.asarray(x)
  y = y if isinstance(y, np.ndarray) else np.asarray(y)
  if x.ndim < 1:
    raise ValueError(f'x must have a leading example axis, got a scalar '
                     f'(shape {x.shape}).')
  if y.ndim != 1:
    raise ValueError(f'y must be a 1-D array of labels, got shape {y.shape}.')
  if len(x) != len(y):
    raise ValueError(f'x and y must have the same number of examples, got '
                     f'len(x)={len(x)} and len(y)={len(y)}.')
  if len(y) == 0:
    raise ValueError('x and y are empty: there is nothing to partition.')
  if not np.issubdtype(y.dtype, np.integer):
    raise ValueError(f'y must hold integer class labels, got dtype '
                     f'{y.dtype}.')
  if y.min() < 0:
    bad = int(np.argmax(y < 0))
    raise ValueError(f'labels must be non-negative, got y[{bad}]={y[bad]}.')
  return x, y


def _check_int(name, value, *, low, high=None, hint=''):
  """``value`` as an int in ``[low, high]``, else a ValueError naming it."""
  try:
    value = operator.index(value)
  except TypeError:
    raise TypeError(f'{name} must be an integer, got {value!r}.') from None
  if value < low or (high is not None and value > high):
    bound = f'>= {low}' if high is None else f'in [{low}, {high}]'
    raise ValueError(f'{name} must be {bound}{hint}, got {value}.')
  return value


def _check_num_clients(num_clients, n):
  return _check_int('num_clients', num_clients, low=1, high=n,
                    hint=f' (between 1 and the number of examples, {n})')


def _client_ids(k):
  return np.array([str(i) for i in range(k)])


def _assemble(x, y, order, sizes, client_ids=None):
  """The store: rows ``order`` of ``x`` and ``y``, client ``k`` owning the
  next ``sizes[k]`` of them."""
  sizes = np.asarray(sizes, np.int64)
  offsets = np.zeros(sizes.size + 1, np.int64)
  np.cumsum(sizes, out=offsets[1:])
  if client_ids is None:
    client_ids = _client_ids(sizes.size)
  return FederatedData({'x': np.ascontiguousarray(x[order]),
                        'y': np.ascontiguousarray(y[order])},
                       offsets, client_ids)


def _group_by_owner(x, y, owner, num_clients, rng):
  """Groups rows by ``owner[i]`` in ``[0, K)``, random order within a client.

  One random permutation and one stable argsort: ``order`` lists rows by
  owner, and within an owner in the permutation's (random) order.
  """
  perm = rng.permutation(owner.size)
  order = perm[np.argsort(owner[perm], kind='stable')]
  sizes = np.bincount(owner, minlength=num_clients)
  return _assemble(x, y, order, sizes)


def _equal_sizes(n, k):
  """``k`` sizes summing to ``n``, differing by at most 1 (larger first)."""
  return n // k + (np.arange(k) < n % k).astype(np.int64)


# --------------------------------------------------------------------------
# Partitioners.


def iid(x, y, *, num_clients: int, seed: int) -> FederatedData:
  """A uniformly random split into ``num_clients`` clients of equal size.

  Sizes differ by at most 1 (the first ``N % num_clients`` clients get one
  example more). Every client's examples are a uniformly random subset, so
  its label histogram follows the global one up to sampling noise.
  """
  x, y = _check_xy(x, y)
  k = _check_num_clients(num_clients, len(y))
  rng = np.random.default_rng(seed)
  return _assemble(x, y, rng.permutation(len(y)), _equal_sizes(len(y), k))


def dirichlet(x, y, *, num_clients: int, alpha: float, seed: int,
              min_size: int = 1, max_retries: int = 1000) -> FederatedData:
  """Label skew: each class is spread over the clients by Dirichlet shares.

  The variant implemented is the per-class one of Yurochkin et al.,
  "Bayesian Nonparametric Federated Learning of Neural Networks", ICML 2019
  (Sec. 5; also Wang et al., FedMA, ICLR 2020, and the "distribution-based
  label imbalance" of Li et al., NIID-Bench, ICDE 2022): for every class
  ``c`` independently, shares ``p_c ~ Dir(alpha * 1_K)`` over the ``K``
  clients are drawn and the ``n_c`` examples of class ``c`` are dealt out
  as ``Multinomial(n_c, p_c)`` counts (examples of a class chosen uniformly
  at random). Client sizes are therefore random too (more uneven as alpha
  falls). Small ``alpha`` gives clients few classes; large ``alpha``
  approaches an IID split (in expectation every client receives a ``1/K``
  share of every class).

  This is *not* the per-client variant of Hsu et al., "Measuring the
  Effects of Non-Identical Data Distribution for Federated Visual
  Classification", 2019, where each client draws its own class mixture
  ``q_k ~ Dir(alpha * p)`` (``p`` the global class prior) and then a fixed
  number of examples from it. The two agree in spirit (alpha -> 0: one class
  per client; alpha -> inf: IID) but not in the distribution of sizes.

  Clients smaller than ``min_size`` are avoided by rejection: the whole
  count table is redrawn until every client has at least ``min_size``
  examples (so the result follows the Dirichlet-multinomial law conditioned
  on that event). Only the small ``[classes, K]`` table is redrawn, never
  the examples, so retries are cheap.

  Args:
    x: features ``[N, ...]``.
    y: integer labels ``[N]``, non-negative.
    num_clients: ``K``, in ``[1, N]``.
    alpha: Dirichlet concentration, ``> 0``.
    seed: seed of the numpy Generator.
    min_size: smallest allowed client (0 accepts empty clients and draws
      once). ``K * min_size`` must not exceed ``N``.
    max_retries: how many count tables to draw before giving up.

  Raises:
    ValueError: bad arguments, or no draw in ``max_retries`` gave every
      client ``min_size`` examples (the message says how close it came).
  """
  x, y = _check_xy(x, y)
  n = len(y)
  k = _check_num_clients(num_clients, n)
  if not np.isfinite(alpha) or alpha <= 0:
    raise ValueError(f'alpha must be a positive finite number, got {alpha}.')
  min_size = _check_int('min_size', min_size, low=0)
  max_retries = _check_int('max_retries', max_retries, low=1)
  if k * min_size > n:
    raise ValueError(
        f'min_size={min_size} is impossible: {k} clients x {min_size} = '
        f'{k * min_size} examples are needed but there are only {n}.')
  rng = np.random.default_rng(seed)
  class_sizes = np.bincount(y)                       # [C]
  best = -1
  for _ in range(max_retries):
    shares = rng.dirichlet(np.full(k, float(alpha)), size=class_sizes.size)
    counts = rng.multinomial(class_sizes, shares)    # [C, K]
    smallest = int(counts.sum(axis=0).min())
    if smallest >= min_size:
      break
    best = max(best, smallest)
  else:
    raise ValueError(
        f'dirichlet: no draw out of max_retries={max_retries} gave all '
        f'{k} clients at least min_size={min_size} examples (the best '
        f'draw\'s smallest client had {best}) with alpha={alpha}; raise '
        'alpha, lower min_size, use fewer clients or more max_retries.')
  # Rows grouped by class (random order within a class); the counts table,
  # read class-major, says which client each of those rows goes to.
  perm = rng.permutation(n)
  by_class = perm[np.argsort(y[perm], kind='stable')]
  owner = np.empty(n, np.int64)
  owner[by_class] = np.repeat(np.tile(np.arange(k), class_sizes.size),
                              counts.ravel())
  return _group_by_owner(x, y, owner, k, rng)


def shards(x, y, *, num_clients: int, shards_per_client: int = 2,
           seed: int) -> FederatedData:
  """McMahan et al. 2017's pathological non-IID split (Sec. 3, MNIST).

  "Communication-Efficient Learning of Deep Networks from Decentralized
  Data", AISTATS 2017: sort the examples by label, divide them into
  ``num_clients * shards_per_client`` shards, and give each client
  ``shards_per_client`` shards chosen at random (without replacement). With
  MNIST's 60000 examples, 100 clients and 2 shards of 300 each, most
  clients see two digits. Examples of one label are in random order before
  being cut, so which examples of a label share a shard is random too.

  Remainder: when ``N`` is not a multiple of the number of shards ``S``, no
  example is dropped; the shards get sizes ``N // S`` or ``N // S + 1`` (the
  larger ones first in label order), so client sizes differ by at most
  ``shards_per_client``. When ``N % S == 0`` all clients have exactly
  ``N / num_clients`` examples. A shard may straddle two labels unless every
  class size is a multiple of the shard size.

  Raises:
    ValueError: ``num_clients`` or ``shards_per_client`` below 1, or more
      shards than examples (a shard would be empty).
  """
  x, y = _check_xy(x, y)
  n = len(y)
  k = _check_num_clients(num_clients, n)
  per = _check_int('shards_per_client', shards_per_client, low=1)
  num_shards = k * per
  if num_shards > n:
    raise ValueError(
        f'shards: num_clients * shards_per_client = {k} * {per} = '
        f'{num_shards} shards, more than the {n} examples; every shard needs '
        'at least one example.')
  rng = np.random.default_rng(seed)
  perm = rng.permutation(n)
  by_label = perm[np.argsort(y[perm], kind='stable')]
  shard_of_row = np.repeat(np.arange(num_shards), _equal_sizes(n, num_shards))
  shard_owner = np.empty(num_shards, np.int64)
  shard_owner[rng.permutation(num_shards)] = np.repeat(np.arange(k), per)
  owner = np.empty(n, np.int64)
  owner[by_label] = shard_owner[shard_of_row]
  return _group_by_owner(x, y, owner, k, rng)


def quantity_skew(x, y, *, num_clients: int, seed: int,
                  distribution: str = 'lognormal', sigma: float | None = None,
                  exponent: float | None = None) -> FederatedData:
  """Unequal client sizes, labels IID within clients.

  Client weights ``w_k`` are drawn i.i.d., then sizes proportional to them
  are rounded so that every client has at least one example and the sizes
  sum to ``N``: each client gets 1, and the other ``N - K`` examples are
  split in proportion to ``w`` by largest remainders (Hamilton's method), so
  sizes are the exact shares up to one example. The examples themselves are
  a uniformly random permutation, so each client's labels are a uniform
  random sample.

  Args:
    distribution: ``'lognormal'``: ``w_k ~ LogNormal(0, sigma)``
      (``sigma`` defaults to 1.0; 0 gives equal sizes; the coefficient of
      variation of the sizes is about ``sqrt(exp(sigma^2) - 1)``).
      ``'power_law'``: ``w_k ~ Pareto`` with scale 1 and tail index
      ``exponent`` (density ``exponent * w^-(exponent + 1)`` for ``w >= 1``;
      defaults to 1.5; smaller is more skewed), the power-law client sizes
      of LEAF (Caldas et al. 2018) and FedProx (Li et al. 2020).
    sigma: only for ``'lognormal'``, ``>= 0``.
    exponent: only for ``'power_law'``, ``> 0``.
  """
  x, y = _check_xy(x, y)
  n = len(y)
  k = _check_num_clients(num_clients, n)
  rng = np.random.default_rng(seed)
  if distribution == 'lognormal':
    if exponent is not None:
      raise ValueError(f'exponent={exponent} applies only to '
                       "distribution='power_law'; use sigma for 'lognormal'.")
    sigma = 1.0 if sigma is None else sigma
    if not np.isfinite(sigma) or sigma < 0:
      raise ValueError(f'sigma must be a finite number >= 0, got {sigma}.')
    weights = rng.lognormal(0.0, sigma, k)
  elif distribution == 'power_law':
    if sigma is not None:
      raise ValueError(f'sigma={sigma} applies only to '
                       "distribution='lognormal'; use exponent for "
                       "'power_law'.")
    exponent = 1.5 if exponent is None else exponent
    if not np.isfinite(exponent) or exponent <= 0:
      raise ValueError(f'exponent must be a positive finite number, got '
                       f'{exponent}.')
    weights = rng.pareto(exponent, k) + 1.0
  else:
    raise ValueError(f"distribution must be 'lognormal' or 'power_law', got "
                     f'{distribution!r}.')
  quota = (n - k) * (weights / weights.sum())
  sizes = np.floor(quota).astype(np.int64)
  left = (n - k) - int(sizes.sum())
  sizes[np.argsort(sizes - quota, kind='stable')[:left]] += 1
  sizes += 1
  return _assemble(x, y, rng.permutation(n), sizes)


def natural(x, y, *, ids) -> FederatedData:
  """Groups examples by their owner: ``ids[i]`` owns example ``i``.

  For data with a natural partition (EMNIST writers, Shakespeare speakers,
  StackOverflow users). Clients are the distinct ids in sorted order (as
  ``np.unique`` sorts them, so integer ids sort numerically and strings
  lexicographically) and keep those ids as their names; within a client the
  examples keep their original order. Deterministic, no seed.
  """
  x, y = _check_xy(x, y)
  ids = ids if isinstance(ids, np.ndarray) else np.asarray(ids)
  if ids.ndim != 1 or len(ids) != len(y):
    raise ValueError(f'ids must be 1-D with one owner per example '
                     f'({len(y)}), got shape {ids.shape}.')
  unique, owner = np.unique(ids, return_inverse=True)
  owner = owner.reshape(-1)
  order = np.argsort(owner, kind='stable')
  return _assemble(x, y, order, np.bincount(owner, minlength=unique.size),
                   unique)


# --------------------------------------------------------------------------
# Inspection.


@dataclasses.dataclass(frozen=True)
class SplitSummary:
  """Sizes and label composition of a split; ``str()`` prints a table.

  Attributes:
    client_ids: ``[K]`` client names.
    sizes: ``[K]`` examples per client.
    size_min, size_median, size_max, size_mean: statistics of ``sizes``.
    label_counts: ``[K, num_classes]`` per-client label histograms.
    labels_per_client: ``[K]`` number of distinct labels of each client.
    label_entropy: ``[K]`` entropy (bits) of each client's label
      distribution (0 for an empty client).
    mean_label_entropy: mean of ``label_entropy`` over non-empty clients.
    global_label_entropy: entropy (bits) of the pooled label distribution.
    mean_tv_to_global: mean over non-empty clients of the total variation
      distance between the client's and the pooled label distribution
      (0 for a perfectly IID split, near 1 when clients own disjoint labels).
  """
  num_classes: int
  client_ids: np.ndarray
  sizes: np.ndarray
  size_min: int
  size_median: float
  size_max: int
  size_mean: float
  label_counts: np.ndarray
  labels_per_client: np.ndarray
  label_entropy: np.ndarray
  mean_label_entropy: float
  global_label_entropy: float
  mean_tv_to_global: float

  @property
  def num_clients(self) -> int:
    return int(self.sizes.size)

  @property
  def num_examples(self) -> int:
    return int(self.sizes.sum())

  def format(self, max_rows: int = 10) -> str:
    """A compact table: totals, size statistics, the first ``max_rows``
    clients with their label counts (or top 3 labels past 10 classes)."""
    c = self.num_classes
    lines = [
        f'{self.num_clients} clients, {self.num_examples} examples, '
        f'{c} classes',
        f'client size: min {self.size_min}, median {self.size_median:g}, '
        f'mean {self.size_mean:.1f}, max {self.size_max}',
        f'labels/client: mean {self.labels_per_client.mean():.2f}; label '
        f'entropy: mean {self.mean_label_entropy:.2f} bits (pooled '
        f'{self.global_label_entropy:.2f}); mean TV to pooled '
        f'{self.mean_tv_to_global:.3f}',
    ]
    rows = min(self.num_clients, max_rows)
    if rows == 0:
      return '\n'.join(lines)
    id_width = max(6, max(len(str(i)) for i in self.client_ids[:rows]))
    head = f'{"client":>{id_width}} {"size":>7} {"labels":>6} {"H(bits)":>7} |'
    if c <= 10:
      width = max(5, len(str(int(self.label_counts[:rows].max(initial=0)))) + 1)
      head += ''.join(f'{j:>{width}}' for j in range(c))
    else:
      head += ' top labels (label:share)'
    lines += [head, '-' * len(head)]
    for i in range(rows):
      counts = self.label_counts[i]
      row = (f'{str(self.client_ids[i]):>{id_width}} {self.sizes[i]:>7} '
             f'{self.labels_per_client[i]:>6} {self.label_entropy[i]:>7.2f} |')
      if c <= 10:
        row += ''.join(f'{v:>{width}}' for v in counts)
      elif self.sizes[i]:
        top = np.argsort(-counts, kind='stable')[:3]
        row += ''.join(f' {j}:{counts[j] / self.sizes[i]:.0%}'
                       for j in top if counts[j])
      lines.append(row)
    if rows < self.num_clients:
      lines.append(f'... {self.num_clients - rows} more clients')
    return '\n'.join(lines)

  def __str__(self) -> str:
    return self.format()


def _entropy_bits(counts):
  """Entropy in bits of each row of a count table (0 for an empty row)."""
  counts = np.asarray(counts, np.float64)
  total = counts.sum(axis=-1, keepdims=True)
  p = np.divide(counts, total, out=np.zeros_like(counts), where=total > 0)
  logp = np.log2(p, out=np.zeros_like(p), where=p > 0)
  return -(p * logp).sum(axis=-1)


def _label_counts(data: FederatedData, num_classes: int, label_key: str):
  if label_key not in data.features:
    raise ValueError(f'no {label_key!r} feature to read labels from; the '
                     f'features are {sorted(data.features)}.')
  num_classes = _check_int('num_classes', num_classes, low=1)
  y = np.asarray(data.features[label_key])
  if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
    raise ValueError(f'{label_key!r} must be a 1-D integer array, got shape '
                     f'{y.shape} dtype {y.dtype}.')
  if y.size and (y.min() < 0 or y.max() >= num_classes):
    bad = y.min() if y.min() < 0 else y.max()
    raise ValueError(f'label {bad} lies outside [0, num_classes='
                     f'{num_classes}).')
  owner = np.repeat(np.arange(data.num_clients), data.sizes)
  flat = np.bincount(owner * num_classes + y,
                     minlength=data.num_clients * num_classes)
  return flat.reshape(data.num_clients, num_classes)


def split_summary(data: FederatedData, *, num_classes: int,
                  label_key: str = 'y') -> SplitSummary:
  """Client sizes and per-client label histograms of ``data``.

  Example:

    >>> import numpy as np
    >>> d = FederatedData.from_clients({
    ...     'a': {'y': np.array([0, 0, 1])}, 'b': {'y': np.array([2])}})
    >>> s = split_summary(d, num_classes=3)
    >>> s.label_counts.tolist(), s.size_median
    ([[2, 1, 0], [0, 0, 1]], 2.0)
  """
  counts = _label_counts(data, num_classes, label_key)
  sizes = data.sizes.astype(np.int64)
  nonempty = sizes > 0
  entropy = _entropy_bits(counts)
  pooled = counts.sum(axis=0)
  if nonempty.any():
    p = counts[nonempty] / sizes[nonempty, None]
    tv = 0.5 * np.abs(p - pooled / pooled.sum()).sum(axis=1).mean()
    mean_entropy = float(entropy[nonempty].mean())
  else:
    tv = mean_entropy = float('nan')
  empty = sizes.size == 0
  return SplitSummary(
      num_classes=int(num_classes),
      client_ids=data.client_ids,
      sizes=sizes,
      size_min=0 if empty else int(sizes.min()),
      size_median=float('nan') if empty else float(np.median(sizes)),
      size_max=0 if empty else int(sizes.max()),
      size_mean=float('nan') if empty else float(sizes.mean()),
      label_counts=counts,
      labels_per_client=(counts > 0).sum(axis=1),
      label_entropy=entropy,
      mean_label_entropy=mean_entropy,
      global_label_entropy=float(_entropy_bits(pooled)),
      mean_tv_to_global=float(tv))


def plot_split(data: FederatedData, *, num_classes: int, path,
               max_clients: int = 50, label_key: str = 'y', title=None,
               dpi: int = 110):
  """Saves a PNG: client-size histogram (left), label composition (right).

  The right panel stacks, for each of the first ``max_clients`` clients, the
  shares of its labels (one colour per class), with the client's size
  written above its bar. Uses matplotlib's Agg canvas directly (no pyplot,
  no display, the user's backend untouched); matplotlib is imported only
  here.

  Returns:
    ``path``.
  """
  from matplotlib.backends.backend_agg import FigureCanvasAgg  # pylint: disable=g-import-not-at-top
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top
  from matplotlib import colormaps  # pylint: disable=g-import-not-at-top

  summary = split_summary(data, num_classes=num_classes, label_key=label_key)
  max_clients = _check_int('max_clients', max_clients, low=1)
  c = summary.num_classes
  sizes = summary.sizes

  fig = Figure(figsize=(13, 4.8), layout='constrained')
  FigureCanvasAgg(fig)
  left, right = fig.subplots(1, 2, width_ratios=[1, 2.2])

  if sizes.size:
    bins = int(np.clip(np.sqrt(sizes.size) * 2, 5, 40))
    left.hist(sizes, bins=bins, color='#4c72b0', edgecolor='white')
    left.axvline(summary.size_median, color='#c44e52', ls='--',
                 label=f'median {summary.size_median:g}')
    left.axvline(summary.size_mean, color='#55a868', ls=':',
                 label=f'mean {summary.size_mean:.1f}')
    left.legend(fontsize=8)
  left.set_xlabel('examples per client')
  left.set_ylabel('clients')
  left.set_title(f'client sizes (K={summary.num_clients}, min '
                 f'{summary.size_min}, max {summary.size_max})', fontsize=10)

  shown = min(summary.num_clients, max_clients)
  counts = summary.label_counts[:shown].astype(np.float64)
  totals = counts.sum(axis=1, keepdims=True)
  shares = np.divide(counts, totals, out=np.zeros_like(counts),
                     where=totals > 0)
  if c <= 10:
    colors = colormaps['tab10'].colors[:c]
  elif c <= 20:
    colors = colormaps['tab20'].colors[:c]
  else:
    colors = colormaps['turbo'](np.linspace(0.0, 1.0, c))
  pos = np.arange(shown)
  bottom = np.zeros(shown)
  for j in range(c):
    right.bar(pos, shares[:, j], bottom=bottom, width=0.9, color=colors[j],
              label=str(j), linewidth=0)
    bottom += shares[:, j]
  right.set_xlim(-0.6, shown - 0.4)
  right.set_ylim(0, 1.08)
  right.set_ylabel('label share')
  right.set_xlabel('client' + ('' if shown == summary.num_clients else
                               f' (first {shown} of {summary.num_clients})'))
  if shown <= 60:
    right.set_xticks(pos, [str(i) for i in summary.client_ids[:shown]],
                     rotation=90, fontsize=7)
    for i in range(shown):
      right.text(i, 1.01, str(sizes[i]), ha='center', va='bottom',
                 rotation=90, fontsize=6, color='0.3')
  right.set_title('label composition per client (size above bar)',
                  fontsize=10)
  if c <= 20:
    right.legend(title='label', fontsize=7, title_fontsize=8,
                 loc='upper left', bbox_to_anchor=(1.0, 1.0), frameon=False)
  else:
    from matplotlib.cm import ScalarMappable  # pylint: disable=g-import-not-at-top
    from matplotlib.colors import Normalize  # pylint: disable=g-import-not-at-top
    mappable = ScalarMappable(Normalize(0, c - 1), colormaps['turbo'])
    fig.colorbar(mappable, ax=right, label='label', fraction=0.03)
  fig.suptitle(title or (
      f'{summary.num_examples} examples over {summary.num_clients} clients; '
      f'mean label entropy {summary.mean_label_entropy:.2f} bits (pooled '
      f'{summary.global_label_entropy:.2f}), mean TV to pooled '
      f'{summary.mean_tv_to_global:.2f}'), fontsize=11)
  fig.savefig(path, dpi=dpi, format='png')
  return path
