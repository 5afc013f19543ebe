r"""Byzantine-robust aggregation, for any algorithm.

The mean of the clients' outputs follows a single client anywhere: one
broken or malicious client sending a huge (or NaN) update decides the
round. The rules here bound what ``f`` of ``n`` clients can do. Each is a
whole-cohort :class:`fedjax_engine.Aggregator` (``whole_cohort=True``, as it
needs every output of the round at once), and :func:`as_transform` installs
it on ANY algorithm through :func:`fedjax_engine.transforms.apply`:

* :func:`trimmed_mean`, the coordinate-wise beta-trimmed mean (Yin, Chen,
  Ramchandran, Bartlett, "Byzantine-Robust Distributed Learning: Towards
  Optimal Statistical Rates", ICML 2018): in every coordinate, drop the
  ``b = floor(beta n)`` largest and the ``b`` smallest values and average
  the ``n - 2b`` left. Its sibling, the coordinate-wise median of the same
  paper, is :func:`fedjax_engine.aggregate.coordinate_median`.
* :func:`krum` (Blanchard, El Mhamdi, Guerraoui, Stainer, "Machine Learning
  with Adversaries: Byzantine Tolerant Gradient Descent", NeurIPS 2017):
  client ``i`` scores ``s(i) = sum_{j in N(i)} ||x_i - x_j||^2``, ``N(i)``
  its ``n - f - 2`` nearest other clients; Krum returns the output of the
  lowest score, Multi-Krum (``num_selected = m``) the mean of the ``m``
  lowest. Needs ``n >= 2f + 3``.
* :func:`bulyan` (El Mhamdi, Guerraoui, Rouault, "The Hidden Vulnerability
  of Distributed Learning in Byzantium", ICML 2018): Krum picks one client
  and removes it from the candidates, ``theta = n - 2f`` times (each time
  scoring the remaining ``r`` clients with their ``r - f - 2`` nearest);
  then in every coordinate the mean of the ``beta = theta - 2f`` picked
  values closest to the picked values' median. Needs ``n >= 4f + 3``.
* :func:`geometric_median`, RFA (Pillutla, Kakade, Harchaoui, "Robust
  Aggregation for Federated Learning", IEEE Transactions on Signal
  Processing, 2022): ``argmin_z sum_i alpha_i ||z - x_i||`` with ``alpha_i``
  the client's aggregation weight, by the smoothed Weiszfeld iteration
  ``z <- sum_i beta_i x_i / sum_i beta_i``, ``beta_i = alpha_i / max(nu,
  ||z - x_i||)``, from the weighted mean, a fixed number of times.
* Norm bounding (Sun, Kairouz, Suresh, McMahan, "Can You Really Backdoor
  Federated Learning?", arXiv:1911.07963, 2019) clips every client's update
  to L2 norm ``M`` before the mean: that is
  :func:`fedjax_engine.transforms.clip` (``clip(max_norm=M)``), and it
  combines with the rules here (clip first, then :func:`as_transform`).

Conventions, the same for every rule. A client with weight > 0 is one vote
(the geometric median alone weighs by ``alpha_i``, as RFA does with the
clients' example counts); rows of weight 0 (padded or dropped clients) do not
count, whatever they hold, and the result depends neither on the order of
the clients nor on the number of padded rows. Distances (Krum, Bulyan,
geometric median) are between whole outputs: all leaves of a client's
output tree together, as if flattened into one vector. A client whose output
is not finite (an attacker's NaN or inf) counts, and is infinitely far from
everyone: the coordinate-wise rules take a NaN value for ``+inf``. With no
client of weight > 0 the aggregate is zero, as the weighted mean's.

Cohorts too small for a rule: the padded cohort size ``C`` is known when
the round is traced, the real count ``n`` only when it runs (dropouts,
availability). If even ``C`` is below the rule's minimum (``2f + 3`` for
Krum, ``4f + 3`` for Bulyan) the first round raises ``ValueError``. A round
whose ``n`` falls below it takes the coordinate-wise median of its real
clients instead, which needs no minimum and still resists a minority of
outliers; :func:`as_transform` counts such rounds.

Diagnostics: :func:`as_transform`'s server-side state (a
:class:`RobustState`) holds the number of real clients left out of the last
aggregate (``n - m`` for Multi-Krum, ``n - theta`` for Bulyan, 0 for the
coordinate-wise rules, which drop values rather than clients, and for the
geometric median), their total over rounds, and the number of degraded
rounds (below the rule's minimum, or trimming nothing because ``floor(beta
n) = 0``). The aggregator hands them to the server inside its accumulator;
the transform's server part finalizes the reduction and keeps them, and
every round logs ``robust_discarded``, ``robust_discarded_ids`` (which
clients: the aggregator gets the cohort's ids with its outputs) and
``robust_degraded_rounds`` from them (``Transform.metrics``).

Memory: a whole-cohort rule keeps every output of the round on every
device, ``C * P * s`` bytes for ``C`` clients (padded) of ``P`` values of
``s`` bytes; the sorting rules (trimmed mean, Bulyan, the median) add
sorted copies of one leaf at a time (up to twice the largest leaf's), and
Krum and Bulyan a few ``[C, C]`` arrays (the Gram matrix, distances, their
order, sorted copy), about ``20 C^2`` bytes. For example, 1,000 clients of
a 1.2M-parameter float32 model hold 1000 * 1.2e6 * 4 B = 4.8 GB per device,
plus about 20 MB for the distances.

Example (one outlier among five clients, a padded row of weight 0):

  >>> import jax.numpy as jnp
  >>> agg = trimmed_mean(trim_fraction=0.2)
  >>> outputs = jnp.array([[1.], [2.], [3.], [4.], [100.], [7.]])
  >>> weights = jnp.array([1., 1., 1., 1., 1., 0.])
  >>> acc = agg.accumulate(agg.init(jnp.zeros(1)), outputs, weights,
  ...                      jnp.arange(6))
  >>> agg.finalize(acc).tolist()
  [3.0]
"""

import math
import numbers
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from fedjax_engine import aggregate as aggregate_lib
from fedjax_engine import transforms as transforms_lib

PyTree = Any
Array = Any

AGGREGATORS = ('mean', 'median', 'trimmed_mean', 'krum', 'multi_krum',
               'bulyan', 'geometric_median')


class RobustAcc(NamedTuple):
  """The accumulator of this module's aggregators: the aggregate, the ids
  of the real clients the rule left out (``[C]`` int32, -1 elsewhere) and
  whether the round was degraded (see :class:`RobustState`)."""
  aggregate: PyTree
  left_out: Array
  degraded: Array


class RobustState(NamedTuple):
  """The server-side state of :func:`as_transform` (int32).

  Attributes:
    discarded: real clients left out of the last round's aggregate.
    total_discarded: ``discarded`` summed over the rounds so far.
    degraded_rounds: rounds in which the rule fell short: fewer real
      clients than it needs (the median was taken instead), or a trimmed
      mean that trimmed nothing.
    discarded_ids: ``[max_reported]``, the smallest ids of the clients
      left out of the last round, ascending, -1 after them.
  """
  discarded: Array
  total_discarded: Array
  degraded_rounds: Array
  discarded_ids: Array


def _is_int(value) -> bool:
  return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_real(value) -> bool:
  return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _check_count(name: str, value, minimum: int) -> int:
  if not (_is_int(value) and value >= minimum):
    raise ValueError(f'{name} must be an integer >= {minimum}, got '
                     f'{value!r}.')
  return int(value)


def _finalize(acc: RobustAcc) -> PyTree:
  return acc.aggregate


def _rule_aggregator(rule: Callable, *, minimum: int | None = None,
                     name: str = '') -> aggregate_lib.Aggregator:
  """A whole-cohort aggregator from ``rule(rows, counted, weights) ->
  (vectors, discarded, degraded)``.

  ``rows`` holds each leaf of the outputs as ``[C, size]`` in float32 or
  wider, ``counted`` the clients of weight > 0, ``vectors`` one ``[size]``
  result per leaf and ``discarded`` which rows the rule left out (bool
  ``[C]``). With ``minimum``, a cohort of fewer rows is
  refused when traced, and a round of fewer real clients takes the
  coordinate-wise median instead (``name`` names the rule in the error).
  """
  median = aggregate_lib.coordinate_median()

  def init(template):
    zeros = jax.tree.map(lambda t: jnp.zeros(t.shape, t.dtype), template)
    return RobustAcc(zeros, jnp.zeros((0,), jnp.int32),
                     jnp.zeros((), jnp.int32))

  def accumulate(acc, outputs, weights, ids):
    del acc   # called once, with every client
    leaves, treedef = jax.tree.flatten(outputs)
    rows = [x.reshape(x.shape[0], -1).astype(
        jnp.promote_types(x.dtype, jnp.float32)) for x in leaves]
    counted = weights > 0
    n = jnp.sum(counted)
    if minimum is None:
      vectors, discarded, degraded = rule(rows, counted, weights)
    else:
      if weights.shape[0] < minimum:
        raise ValueError(
            f'{name} needs at least {minimum} clients per round, but the '
            f'cohort holds at most {weights.shape[0]}; sample more clients '
            'or assume fewer Byzantine ones.')

      def fallback(rows, counted, weights):
        vectors = median.finalize(median.accumulate(
            median.init([r[0] for r in rows]), rows, weights, ids))
        return (vectors, jnp.zeros(counted.shape, bool),
                jnp.ones((), jnp.int32))

      vectors, discarded, degraded = jax.lax.cond(
          n >= minimum, rule, fallback, rows, counted, weights)
    # `where`: without real clients the median above is NaN.
    vectors = [jnp.where(n > 0, v, 0) for v in vectors]
    aggregate = jax.tree.unflatten(treedef, [
        v.reshape(x.shape[1:]).astype(x.dtype)
        for v, x in zip(vectors, leaves)])
    return RobustAcc(aggregate, jnp.where(discarded & counted, ids, -1),
                     jnp.asarray(degraded, jnp.int32))

  return aggregate_lib.Aggregator(init, accumulate, _finalize,
                                  whole_cohort=True)


def _masked_mean(x, keep):
  """Mean of the rows of ``x`` [C, d] where ``keep`` [C]; rows left out may
  hold anything (NaN included)."""
  total = jnp.sum(jnp.where(keep[:, None], x, 0), axis=0)
  return total / jnp.maximum(jnp.sum(keep), 1).astype(x.dtype)


def _sorted_values(x, keep):
  """``x`` [C, d] sorted down each column, the rows of ``keep`` first: the
  others, like NaN values, sort as ``+inf``."""
  return jnp.sort(jnp.where(keep[:, None] & ~jnp.isnan(x), x, jnp.inf),
                  axis=0)


def trimmed_mean(*, trim_fraction: float) -> aggregate_lib.Aggregator:
  """The coordinate-wise ``beta``-trimmed mean (Yin et al., ICML 2018).

  In every coordinate, of the ``n`` clients of weight > 0 the ``floor(beta
  n)`` largest and as many smallest values are dropped, and the rest
  averaged, each client counted once. Tolerates up to ``floor(beta n)``
  Byzantine clients; a round where ``floor(beta n) = 0`` (``n < 1 /
  beta``) trims nothing and is counted as degraded.

  Args:
    trim_fraction: ``beta``, in ``[0, 0.5)``.

  Returns:
    A whole-cohort aggregator.

  Raises:
    ValueError: for a ``trim_fraction`` outside ``[0, 0.5)``.
  """
  if not (_is_real(trim_fraction) and 0 <= trim_fraction < 0.5):
    raise ValueError('trim_fraction must be a number in [0, 0.5), got '
                     f'{trim_fraction!r}.')
  beta = float(trim_fraction)

  def rule(rows, counted, weights):
    del weights
    size = counted.shape[0]
    # floor(beta * n) for every n the cohort allows; the tolerance makes a
    # decimal beta act as written (0.29 * 100 is 28.999... in binary).
    trims = np.array([math.floor(beta * n + 1e-9) for n in range(size + 1)],
                     np.int32)
    n = jnp.sum(counted)
    cut = jnp.asarray(trims)[n]
    position = jnp.arange(size)[:, None]
    keep = (position >= cut) & (position < n - cut)

    def trim(x):
      values = jnp.where(keep, _sorted_values(x, counted), 0)
      return jnp.sum(values, axis=0) / jnp.maximum(n - 2 * cut, 1).astype(
          x.dtype)

    return ([trim(x) for x in rows], jnp.zeros(size, bool),
            (cut == 0) & (beta > 0))

  return _rule_aggregator(rule)


def _squared_distances(rows, counted):
  """``[C, C]`` squared distances between whole outputs, ``+inf`` to and
  from clients not counted or not finite; and which rows are finite."""
  # A NaN or inf in row j spoils only row and column j of the Gram matrix,
  # which the `where` below replaces.
  gram = sum(jnp.dot(x, x.T, precision=jax.lax.Precision.HIGHEST)
             for x in rows)
  norms = jnp.diagonal(gram)
  finite = counted & jnp.isfinite(norms)
  distances = jnp.maximum(norms[:, None] + norms[None, :] - 2 * gram, 0)
  return (jnp.where(finite[:, None] & finite[None, :], distances, jnp.inf),
          finite)


def _krum_order(distances, order, near, candidates, k):
  """The rows in Krum's order among ``candidates``: by score (the sum of
  the ``k`` smallest squared distances to other candidates; 0 for ``k <=
  0``), then by the sum of all of them, then by row; other rows last.

  ``order`` sorts each row of ``distances`` and ``near`` is it sorted. The
  second key breaks the ties that Krum's score leaves with few neighbours
  (with ``k = 1`` the two mutually nearest clients always tie) by content,
  not by position, so the choice does not depend on the clients' order.
  """
  size = distances.shape[0]
  others = candidates[order] & (order != jnp.arange(size)[:, None])
  nearest = others & (jnp.cumsum(others, axis=1) <= k)
  largest = jnp.finfo(distances.dtype).max

  def key(sums):
    return jnp.where(candidates, jnp.minimum(sums, largest), jnp.inf)

  score = jnp.sum(jnp.where(nearest, near, 0), axis=1)
  spread = jnp.sum(jnp.where(others, near, 0), axis=1)
  return jnp.lexsort((key(spread), key(score)))


def _neighbours(distances):
  order = jnp.argsort(distances, axis=1)
  return order, jnp.take_along_axis(distances, order, axis=1)


def krum(*, num_byzantine: int,
         num_selected: int = 1) -> aggregate_lib.Aggregator:
  """Krum, and Multi-Krum for ``num_selected > 1`` (Blanchard et al.,
  NeurIPS 2017).

  Each client of weight > 0 scores the sum of its squared distances to its
  ``n - f - 2`` nearest others; the aggregate is the uniform mean of the
  ``min(m, n)`` best-scored clients' outputs (Krum: ``m = 1``, the output
  itself). Equal scores go to the client with the smaller sum of squared
  distances to all others. A round of ``n < 2f + 3`` real clients takes
  their coordinate-wise median instead.

  Args:
    num_byzantine: ``f >= 0``, the Byzantine clients to tolerate per round.
    num_selected: ``m >= 1``, the clients averaged.

  Returns:
    A whole-cohort aggregator; tracing it for a cohort of fewer than ``2f +
    3`` clients raises ``ValueError``.

  Raises:
    ValueError: for a negative ``num_byzantine`` or ``num_selected < 1``.

  Example (four clients near the origin and one far; Krum returns the most
  central):

    >>> import jax.numpy as jnp
    >>> agg = krum(num_byzantine=1)
    >>> outputs = jnp.array([[0., 0.], [1., 0.], [0., 3.], [2., 1.],
    ...                      [10., 10.]])
    >>> ids = jnp.array([10, 11, 12, 13, 14])
    >>> acc = agg.accumulate(agg.init(jnp.zeros(2)), outputs, jnp.ones(5), ids)
    >>> agg.finalize(acc).tolist(), acc.left_out.tolist()
    ([1.0, 0.0], [10, -1, 12, 13, 14])
  """
  f = _check_count('num_byzantine', num_byzantine, 0)
  m = _check_count('num_selected', num_selected, 1)

  def rule(rows, counted, weights):
    del weights
    size = counted.shape[0]
    n = jnp.sum(counted)
    distances, finite = _squared_distances(rows, counted)
    ranked = _krum_order(distances, *_neighbours(distances), counted,
                         n - f - 2)
    chosen = jnp.zeros(size, bool).at[ranked].set(
        jnp.arange(size) < jnp.minimum(m, n))
    # A non-finite output is chosen only past every finite one (more
    # attackers than f); it is then left out rather than spoiling the mean.
    return ([_masked_mean(x, chosen & finite) for x in rows],
            ~(chosen & finite), jnp.zeros((), jnp.int32))

  name = 'krum' if m == 1 else f'multi-krum (num_selected={m})'
  return _rule_aggregator(rule, minimum=2 * f + 3,
                          name=f'{name} with num_byzantine={f}')


def bulyan(*, num_byzantine: int) -> aggregate_lib.Aggregator:
  """Bulyan over Krum (El Mhamdi et al., ICML 2018).

  With ``n`` clients of weight > 0: ``theta = n - 2f`` rounds of Krum
  (``f`` assumed Byzantine) each pick the best-scored remaining client,
  scoring the ``r`` remaining with their ``r - f - 2`` nearest (all scores
  0 when that is not positive; ties broken as in :func:`krum`). Then in
  every coordinate, of the ``theta`` picked values the ``beta = theta - 2f``
  nearest to their median are averaged. A round of ``n < 4f + 3`` real
  clients takes their coordinate-wise median instead.

  Args:
    num_byzantine: ``f >= 0``.

  Returns:
    A whole-cohort aggregator; tracing it for a cohort of fewer than ``4f +
    3`` clients raises ``ValueError``.

  Raises:
    ValueError: for a negative ``num_byzantine``.
  """
  f = _check_count('num_byzantine', num_byzantine, 0)

  def rule(rows, counted, weights):
    del weights
    size = counted.shape[0]
    n = jnp.sum(counted)
    theta = n - 2 * f
    keep = theta - 2 * f
    distances, _ = _squared_distances(rows, counted)
    order, near = _neighbours(distances)

    def pick(t, sets):
      remaining, chosen = sets
      best = _krum_order(distances, order, near, remaining,
                         n - t - f - 2)[0]
      return remaining.at[best].set(False), chosen.at[best].set(True)

    _, chosen = jax.lax.fori_loop(0, theta, pick,
                                  (counted, jnp.zeros(size, bool)))

    def nearest_to_median(x):
      values = _sorted_values(x, chosen)
      median = (jnp.take(values, (theta - 1) // 2, axis=0) +
                jnp.take(values, theta // 2, axis=0)) / 2
      gap = jnp.abs(values - median[None, :])
      _, by_gap = jax.lax.sort((gap, values), dimension=0, num_keys=1)
      kept = jnp.where(jnp.arange(size)[:, None] < keep, by_gap, 0)
      return jnp.sum(kept, axis=0) / keep.astype(x.dtype)

    return ([nearest_to_median(x) for x in rows], ~chosen,
            jnp.zeros((), jnp.int32))

  return _rule_aggregator(rule, minimum=4 * f + 3,
                          name=f'bulyan with num_byzantine={f}')


def geometric_median(*, iterations: int = 10,
                     epsilon: float = 1e-6) -> aggregate_lib.Aggregator:
  """The weighted geometric median by RFA's smoothed Weiszfeld iteration
  (Pillutla et al., IEEE TSP 2022).

  ``argmin_z sum_i alpha_i ||z - x_i||`` (each norm smoothed below ``nu``),
  with ``alpha_i`` the clients' aggregation weights (their example counts
  under FedAvg's default weighting, as in RFA); clients of weight 0 and
  clients whose output is not finite take no part. Starts from the
  weighted mean and runs ``iterations`` steps ``z <- sum_i beta_i x_i /
  sum_i beta_i``, ``beta_i = alpha_i / max(nu, ||z - x_i||)``. Tolerates
  Byzantine clients holding less than half the total weight.

  Args:
    iterations: Weiszfeld steps, ``>= 1``: a fixed count, so the program
      has one shape. A median that lies on a client's output is approached
      more slowly than one between them.
    epsilon: ``nu > 0``, the smoothing: distances below it count as ``nu``,
      so an iterate on a client's output does not divide by zero.

  Returns:
    A whole-cohort aggregator.

  Raises:
    ValueError: for ``iterations < 1`` or ``epsilon <= 0``.
  """
  steps = _check_count('iterations', iterations, 1)
  if not (_is_real(epsilon) and math.isfinite(epsilon) and epsilon > 0):
    raise ValueError(f'epsilon must be a finite number > 0, got {epsilon!r}.')
  nu = float(epsilon)

  def rule(rows, counted, weights):
    norms = sum(jnp.sum(jnp.square(x), axis=1) for x in rows)
    usable = counted & jnp.isfinite(norms)

    def mean(beta):
      beta = jnp.where(usable, beta, 0)
      total = jnp.sum(beta)
      total = jnp.where(total > 0, total, 1)
      return [jnp.sum(jnp.where(usable[:, None], beta[:, None] * x, 0),
                      axis=0) / total.astype(x.dtype) for x in rows]

    def step(_, z):
      distance = jnp.sqrt(sum(jnp.sum(jnp.square(x - v[None, :]), axis=1)
                              for x, v in zip(rows, z)))
      return mean(weights / jnp.maximum(distance, nu))

    return (jax.lax.fori_loop(0, steps, step, mean(weights)),
            jnp.zeros(counted.shape, bool), jnp.zeros((), jnp.int32))

  return _rule_aggregator(rule)


def _pass_client(state, output, row, key, client):
  del state, key, client
  return output, row, {}


def norm_bounded_mean(*, max_norm: float) -> aggregate_lib.Aggregator:
  """The weighted mean of the received outputs, each first scaled down by
  the server to L2 norm at most ``max_norm`` (norm bounding: Sun, Kairouz,
  Suresh, McMahan, "Can You Really Backdoor Federated Learning?", 2019).
  The server does it, so it bounds what attackers send too (a client-side
  :func:`fedjax_engine.transforms.clip` bounds only honest clients). It
  streams: no whole cohort is kept.

  Example:

    >>> import jax.numpy as jnp
    >>> agg = norm_bounded_mean(max_norm=1.0)
    >>> acc = agg.accumulate(agg.init(jnp.zeros(2)),
    ...                      jnp.array([[3., 4.], [0., 0.5]]), jnp.ones(2))
    >>> agg.finalize(acc).tolist()
    [0.30000001192092896, 0.6499999761581421]
  """
  if not (_is_real(max_norm) and math.isfinite(max_norm) and max_norm > 0):
    raise ValueError(f'max_norm must be a finite number > 0, got '
                     f'{max_norm!r}.')
  mean = aggregate_lib.weighted_mean()

  def accumulate(acc, outputs, weights):
    norms = jnp.sqrt(sum(
        jnp.sum(jnp.square(x.reshape(x.shape[0], -1)), axis=1)
        for x in jax.tree.leaves(outputs)))
    scale = jnp.minimum(1.0, max_norm / jnp.maximum(norms, 1e-30))
    bounded = jax.tree.map(
        lambda x: x * scale.reshape((-1,) + (1,) * (x.ndim - 1)).astype(
            x.dtype), outputs)
    return mean.accumulate(acc, bounded, weights)

  return aggregate_lib.Aggregator(mean.init, accumulate, mean.finalize)


def as_transform(aggregator: aggregate_lib.Aggregator, *,
                 max_reported: int = 32) -> transforms_lib.Transform:
  """A transform that installs ``aggregator`` as the reduction over clients,
  leaving the outputs as they are.

  For this module's aggregators the transform's server-side state is a
  :class:`RobustState` (what the rule left out); for others
  (:func:`fedjax_engine.aggregate.coordinate_median`, ...) it is ``()``.

  Give it to :func:`fedjax_engine.transforms.apply` after every transform
  that has a server part of its own (central noise, decoding): server parts
  run in reverse order, and this one must see the reduction first. Attack
  transforms, which act on clients only, may come after it; one that
  replaces the reduction itself (an attack built on the defense's
  aggregator) leaves this transform's state unchanged.

  Every round logs ``robust_discarded`` (how many real clients the rule
  left out), ``robust_discarded_ids`` (which: the smallest
  ``max_reported`` of their ids) and ``robust_degraded_rounds``.

  Args:
    aggregator: the reduction, e.g. ``krum(num_byzantine=2)``.
    max_reported: how many left-out ids a round reports (the server
      state holds that many).

  Returns:
    A :class:`fedjax_engine.transforms.Transform`.

  Example:

    >>> import optax, fedjax_engine as fe
    >>> model = fe.models.logistic_regression(num_features=60,
    ...                                       num_classes=10)
    >>> algo = fe.transforms.apply(
    ...     fe.algorithms.fedavg(model, client_optimizer=optax.sgd(0.1)),
    ...     fe.transforms.clip(max_norm=1.0),
    ...     as_transform(krum(num_byzantine=1)))
  """
  if not isinstance(aggregator, aggregate_lib.Aggregator):
    raise ValueError('aggregator must be a fedjax_engine.Aggregator, got '
                     f'{aggregator!r}.')
  if aggregator.finalize is not _finalize:
    return transforms_lib.Transform(client=_pass_client,
                                    aggregator=aggregator)

  reported = _check_count('max_reported', max_reported, 1)

  def init(params):
    del params
    # Separate arrays, not one thrice: the engine donates the server state,
    # and a buffer cannot be donated twice.
    return RobustState(*(jnp.zeros((), jnp.int32) for _ in range(3)),
                       jnp.full((reported,), -1, jnp.int32))

  def server(state, acc, info):
    del info
    if not isinstance(acc, RobustAcc):
      return acc, state
    discarded = jnp.sum(acc.left_out >= 0).astype(jnp.int32)
    # Ascending ids, the -1 of kept and padded clients after them.
    ids = jnp.sort(jnp.where(acc.left_out >= 0, acc.left_out,
                             jnp.iinfo(jnp.int32).max))
    ids = jnp.pad(ids, (0, max(reported - ids.shape[0], 0)),
                  constant_values=jnp.iinfo(jnp.int32).max)[:reported]
    return acc.aggregate, RobustState(
        discarded, state.total_discarded + discarded,
        state.degraded_rounds + acc.degraded,
        jnp.where(ids == jnp.iinfo(jnp.int32).max, -1, ids))

  def metrics(state):
    return {'robust_discarded': state.discarded.astype(jnp.float32),
            'robust_discarded_ids': state.discarded_ids,
            'robust_degraded_rounds': state.degraded_rounds.astype(
                jnp.float32)}

  # The reduction hands over its accumulator whole; finalizing it here is
  # what lets the counts through to the state.
  return transforms_lib.Transform(
      client=_pass_client, init=init, server=server,
      aggregator=aggregator._replace(finalize=lambda acc: acc),
      metrics=metrics)


def transforms_from_flags(*, aggregator: str = 'mean',
                          trim_fraction: float | None = None,
                          num_byzantine: int | None = None,
                          num_selected: int | None = None,
                          max_reported: int = 32
                          ) -> list[transforms_lib.Transform]:
  """The transforms for command-line flags ``--robust_aggregator``,
  ``--trim_fraction``, ``--num_byzantine`` and ``--multi_krum_selected``.

  Put them after the other transforms but before attacks:
  ``transforms.apply(algorithm, *privacy, *robust, *attacks)``.

  Args:
    aggregator: one of :data:`AGGREGATORS`; ``'mean'`` keeps the
      algorithm's own reduction (no transform).
    trim_fraction: ``beta`` of ``'trimmed_mean'``, in ``[0, 0.5)``.
    num_byzantine: ``f`` of ``'krum'``, ``'multi_krum'`` and ``'bulyan'``.
    num_selected: ``m`` of ``'multi_krum'``.
    max_reported: left-out client ids reported a round (the cohort size
      reports them all).

  Returns:
    A list of transforms, empty for ``'mean'``. Parameters the chosen
    aggregator does not use are ignored.

  Raises:
    ValueError: for an unknown aggregator, or a parameter it needs that is
      missing or out of range.
  """
  if aggregator not in AGGREGATORS:
    raise ValueError(f'aggregator must be one of {AGGREGATORS}, got '
                     f'{aggregator!r}.')

  def needed(name, value):
    if value is None:
      raise ValueError(f'{name} is required with aggregator={aggregator!r}, '
                       'got None.')
    return value

  if aggregator == 'mean':
    return []
  if aggregator == 'median':
    reduction = aggregate_lib.coordinate_median()
  elif aggregator == 'trimmed_mean':
    reduction = trimmed_mean(
        trim_fraction=needed('trim_fraction', trim_fraction))
  elif aggregator == 'krum':
    reduction = krum(num_byzantine=needed('num_byzantine', num_byzantine))
  elif aggregator == 'multi_krum':
    reduction = krum(num_byzantine=needed('num_byzantine', num_byzantine),
                     num_selected=needed('num_selected', num_selected))
  elif aggregator == 'bulyan':
    reduction = bulyan(num_byzantine=needed('num_byzantine', num_byzantine))
  else:
    reduction = geometric_median()
  return [as_transform(reduction, max_reported=max_reported)]
