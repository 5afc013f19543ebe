"""Diagnostics that explain a round: update norms and their agreement.

:func:`diagnostics` logs, every round, from what the clients send (after
every other transform, attacks included):

* ``update_norm_mean``: the mean L2 norm of the clients' outputs (every
  leaf together), and ``update_norm_p10``, ``_p50``, ``_p90`` and ``_max``,
  read off a histogram of the norms on :data:`NUM_BINS` bins spaced
  evenly in log scale from :data:`LOW` to :data:`HIGH`: each is the upper
  edge of the bin that holds it, so within a factor
  ``(HIGH / LOW)^(1 / NUM_BINS)`` (about 1.06) above the exact value;
* ``update_cosine``: the mean cosine similarity of the clients' outputs to
  the round's aggregate, ``(1 / n) sum_i <u_i, A> / (|u_i| |A|) = <sum_i
  u_i / |u_i|, A> / (n |A|)``: exact, and a sum like everything streamed,
  so it needs no client's output kept. Near 1 the clients agree; near 0
  or below, they pull apart (heterogeneity, or an attack).

Histogram counts and unit vectors are sums over clients, so they stream
in chunks and add across devices like the aggregate; the cost is one more
params-sized sum and :data:`NUM_BINS` counts a client.

Example:

  >>> import optax, fedjax_engine as fe
  >>> model = fe.models.logistic_regression(num_features=60, num_classes=10)
  >>> fedavg = fe.algorithms.fedavg(model, client_optimizer=optax.sgd(0.1))
  >>> algo = fe.transforms.apply(fedavg, diagnostics(fedavg.aggregator))
"""

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from fedjax_engine import aggregate as aggregate_lib
from fedjax_engine import robust
from fedjax_engine import tree
from fedjax_engine.model import Mean
from fedjax_engine.transforms import Transform

Array = Any
PyTree = Any

NUM_BINS = 640
LOW, HIGH = 1e-8, 1e8
QUANTILES = (0.1, 0.5, 0.9)


class Sent(NamedTuple):
  """A client's output, its direction and its norm's histogram bin."""
  output: PyTree
  unit: PyTree
  bin: Array     # [NUM_BINS] one-hot float32


class DiagnosticsAcc(NamedTuple):
  inner: PyTree
  unit: PyTree
  counts: Array  # [NUM_BINS]


class DiagnosticsState(NamedTuple):
  """The last round's server-side diagnostics (float32 scalars)."""
  cosine: Array
  quantiles: Array   # the norms' QUANTILES, then their max


def bin_edges() -> Array:
  """The upper edges of the norm histogram's bins."""
  return jnp.logspace(math.log10(LOW), math.log10(HIGH), NUM_BINS + 1)[1:]


def diagnostics(aggregator: aggregate_lib.Aggregator) -> Transform:
  """Norms and cosine similarities of the clients' outputs, as metrics.

  Args:
    aggregator: the reduction in force where this transform goes (the
      algorithm's, or the last robust or privacy transform's): this
      transform wraps it, so the aggregate stays what it was.

  Returns:
    The transform: client metric ``update_norm_mean``; server metrics
    ``update_cosine`` and ``update_norm_p10``, ``_p50``, ``_p90``, ``_max``.
  """
  if not isinstance(aggregator, aggregate_lib.Aggregator):
    raise ValueError('aggregator must be a fedjax_engine.Aggregator, got '
                     f'{aggregator!r}.')
  upper = bin_edges()

  def client(state, output, row, key, client):
    del state, key, client
    norm = tree.l2_norm(output)
    unit = tree.scale(output, 1.0 / jnp.maximum(norm, 1e-30))
    which = jnp.searchsorted(upper, norm)
    one_hot = jax.nn.one_hot(jnp.minimum(which, NUM_BINS - 1), NUM_BINS)
    return (Sent(output, unit, one_hot), row,
            {'update_norm_mean': Mean(norm, jnp.ones((), jnp.float32))})

  def init(params):
    del params
    return DiagnosticsState(jnp.zeros((), jnp.float32),
                            jnp.zeros((len(QUANTILES) + 1,), jnp.float32))

  def acc_init(template):
    return DiagnosticsAcc(
        aggregator.init(template.output),
        jax.tree.map(lambda t: jnp.zeros(t.shape, jnp.float32),
                     template.unit),
        jnp.zeros((NUM_BINS,), jnp.float32))

  def accumulate(acc, sent, weights, *ids):
    # ``ids`` come (one array) when the wrapped reduction is whole-cohort.
    counted = (weights > 0).astype(jnp.float32)
    return DiagnosticsAcc(
        aggregator.accumulate(acc.inner, sent.output, weights, *ids),
        tree.add(acc.unit, tree.weighted_sum(sent.unit, counted)),
        acc.counts + counted @ sent.bin)

  def finalize(acc):
    return aggregator.finalize(acc.inner), acc.unit, acc.counts

  def server(state, aggregate, info):
    del state, info
    aggregate, unit_sum, counts = aggregate
    # A robust rule's reduction reaches the server with its counts.
    values = (aggregate.aggregate if isinstance(aggregate, robust.RobustAcc)
              else aggregate)
    n = jnp.sum(counts)
    dot = sum(jnp.vdot(u, a) for u, a in zip(jax.tree.leaves(unit_sum),
                                              jax.tree.leaves(values)))
    cosine = dot / jnp.maximum(n * tree.l2_norm(values), 1e-30)
    cumulative = jnp.cumsum(counts)
    # The k-th smallest norm, k = ceil(q n), lies in the first bin whose
    # cumulative count reaches k.
    ranks = jnp.maximum(jnp.ceil(jnp.array(QUANTILES + (1.0,)) * n), 1.0)
    where = jnp.searchsorted(cumulative, ranks)
    quantiles = jnp.where(n > 0, upper[jnp.minimum(where, NUM_BINS - 1)], 0.0)
    return aggregate, DiagnosticsState(cosine, quantiles)

  def metrics(state):
    names = [f'update_norm_p{round(100 * q)}' for q in QUANTILES]
    out = {name: state.quantiles[i] for i, name in enumerate(names)}
    out['update_norm_max'] = state.quantiles[-1]
    out['update_cosine'] = state.cosine
    return out

  return Transform(
      client=client, init=init, server=server, metrics=metrics,
      aggregator=aggregate_lib.Aggregator(acc_init, accumulate, finalize,
                                          aggregator.whole_cohort))
