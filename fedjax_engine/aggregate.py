"""Aggregators: reductions of the cohort's client outputs.

An aggregator is a monoid over clients: ``init`` gives the empty accumulator,
``accumulate`` folds in a chunk of stacked client outputs with their weights,
``finalize`` turns the accumulator into the aggregate. Accumulators are *sums*
over clients, so the engine merges chunks and devices by addition (an
all-reduce); memory stays independent of the cohort size.

Example:

  >>> import jax.numpy as jnp
  >>> agg = weighted_mean()
  >>> acc = agg.init({'w': jnp.zeros(2)})
  >>> acc = agg.accumulate(acc, {'w': jnp.array([[1., 1.], [4., 0.]])},
  ...                      jnp.array([3., 1.]))
  >>> agg.finalize(acc)['w'].tolist()
  [1.75, 0.75]
"""

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from fedjax_engine import tree

PyTree = Any


class Aggregator(NamedTuple):
  """Streaming reduction of client outputs.

  Attributes:
    init: ``init(output_template) -> acc``, the template being one client's
      (unstacked) output, or a tree of ``jax.ShapeDtypeStruct``.
    accumulate: ``accumulate(acc, outputs, weights) -> acc`` with ``outputs``
      stacked ``[c, ...]`` and ``weights`` ``[c]`` (0 for padded clients).
      The returned acc must be additive: ``acc(A u B) = acc(A) + acc(B) -
      init``, which holds for sums started at zero.
    finalize: ``finalize(acc) -> aggregate``.
    whole_cohort: the aggregate is not a sum over clients (a median, Krum):
      the engine then keeps every client output of the round, ``[C, ...]``
      with ``C`` the padded cohort size, and calls ``accumulate(acc,
      outputs, weights, ids)`` once with all of them (weight 0 for padded
      and dropped clients, which must not count; ``ids`` ``[C]`` int32
      the clients', so a rule can say whom it left out) instead of
      streaming chunks into a sum. Memory then grows with the cohort: ``C``
      times the output size on every device.

  Example (a weighted sum, written by hand):

    >>> import jax.numpy as jnp
    >>> weighted_sum = Aggregator(
    ...     init=lambda template: jnp.zeros(template.shape, template.dtype),
    ...     accumulate=lambda acc, x, w: acc + jnp.tensordot(w, x, axes=1),
    ...     finalize=lambda acc: acc)
    >>> acc = weighted_sum.init(jnp.zeros(2))
    >>> acc = weighted_sum.accumulate(acc, jnp.array([[1., 2.], [3., 4.]]),
    ...                               jnp.array([2., 0.]))
    >>> weighted_sum.finalize(acc).tolist()
    [2.0, 4.0]
  """
  init: Callable[[PyTree], PyTree]
  accumulate: Callable[[PyTree, PyTree, Any], PyTree]
  finalize: Callable[[PyTree], PyTree]
  whole_cohort: bool = False


class MeanAcc(NamedTuple):
  total: PyTree
  weight: Any


def weighted_mean() -> Aggregator:
  """``sum_k w_k x_k / sum_k w_k``; zero when the cohort carries no weight.

  With ``w_k = n_k`` (examples) this is FedAvg's aggregation
  (McMahan et al., 2017, Algorithm 1); with ``w_k = 1`` it is uniform.
  """
  def init(template):
    zeros = jax.tree.map(lambda t: jnp.zeros(t.shape, t.dtype), template)
    return MeanAcc(zeros, jnp.zeros((), jnp.float32))

  def accumulate(acc, outputs, weights):
    return MeanAcc(tree.add(acc.total, tree.weighted_sum(outputs, weights)),
                   acc.weight + jnp.sum(weights))

  def finalize(acc):
    denom = jnp.where(acc.weight > 0, acc.weight, 1.0)
    return jax.tree.map(lambda t: t / denom.astype(t.dtype), acc.total)

  return Aggregator(init, accumulate, finalize)


def coordinate_median() -> Aggregator:
  """The coordinate-wise median of the clients' outputs, each client with
  weight > 0 counted once (Yin et al., "Byzantine-Robust Distributed
  Learning: Towards Optimal Statistical Rates", ICML 2018). Needs the whole
  cohort (``whole_cohort=True``).

  Example:

    >>> import jax.numpy as jnp
    >>> agg = coordinate_median()
    >>> acc = agg.accumulate(agg.init(jnp.zeros(2)), jnp.array(
    ...     [[1., 5.], [2., -1.], [100., 0.], [7., 7.]]),
    ...     jnp.array([1., 1., 1., 0.]), jnp.arange(4))
    >>> agg.finalize(acc).tolist()
    [2.0, 0.0]
  """
  def init(template):
    return jax.tree.map(lambda t: jnp.zeros(t.shape, t.dtype), template)

  def accumulate(acc, outputs, weights, ids):
    del acc, ids   # called once, with every client
    counted = weights > 0
    anyone = jnp.any(counted)

    def median(x):
      keep = counted.reshape((-1,) + (1,) * (x.ndim - 1))
      value = jnp.nanmedian(jnp.where(keep, x, jnp.nan), axis=0)
      # Zero when no client counts, as the weighted mean gives.
      return jnp.where(anyone, value, 0).astype(x.dtype)

    return jax.tree.map(median, outputs)

  return Aggregator(init, accumulate, lambda acc: acc, whole_cohort=True)


def accumulate_all(aggregator: Aggregator, acc, outputs, weights, ids):
  """``aggregator``'s ``accumulate`` over a whole cohort at once, with the
  clients' ``ids`` if it is a whole-cohort aggregator (which takes them)."""
  if aggregator.whole_cohort:
    return aggregator.accumulate(acc, outputs, weights, ids)
  return aggregator.accumulate(acc, outputs, weights)
