"""What happens to client outputs between training and the server update.

A :class:`Transform` acts on every client's output inside the compiled
round, per client and vectorized (clipping, noise, quantization,
sparsification with error feedback, an attack), may replace the reduction
over clients (a sum for differential privacy, a median for robustness), and
may act on the aggregate at the server (central noise, decoding, updating
an adaptive clipping norm). :func:`apply` puts transforms onto ANY
algorithm and returns an algorithm again, so they compose with FedAvg,
SCAFFOLD, Ditto, plug-ins, and with each other:

  client_update -> t1.client -> t2.client -> aggregator -> t2.server
    -> t1.server -> server_update

A transform's server-side state (an adaptive clipping norm, a tree of
noise) lives in the wrapped server state, which stays a pytree, and its
per-client state (an error-feedback residual) in the client-state table
beside the algorithm's own. Its client part gets the client's id, so a
fixed set of clients can be malicious, the round's participants, for
protocols among them, and a key of its own; its server
part gets the round's server key (``RoundInfo.key``).

Example (clip every client's output to L2 norm 1 before FedAvg's mean):

  >>> import optax, fedjax_engine as fe
  >>> model = fe.models.logistic_regression(num_features=60, num_classes=10)
  >>> algo = apply(fe.algorithms.fedavg(model, client_optimizer=optax.sgd(0.1)),
  ...              clip(max_norm=1.0))
"""

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from fedjax_engine import aggregate as aggregate_lib
from fedjax_engine import algorithm as algorithm_lib
from fedjax_engine import tree
from fedjax_engine.model import Mean

PyTree = Any


def _no_state(params):
  del params
  return ()


def _pass_through(state, aggregate, info):
  del info
  return aggregate, state


class Transform(NamedTuple):
  """One stage between a client's output and the server update.

  Attributes:
    client: ``client(state, output, client_state, key, client) ->
      (output, client_state, metrics)`` for ONE client: ``state`` is this
      transform's server-side state (read only), ``client_state`` its row
      of the client-state table (``()`` without ``init_client_state``),
      ``client`` a :class:`fedjax_engine.ClientInfo` (its id and the
      round's participants), ``metrics`` names to
      :class:`fedjax_engine.Mean`.
    init: ``init(params) -> state``, the server-side state.
    server: ``server(state, aggregate, round_info) -> (aggregate, state)``
      at the server, after the reduction over clients.
    aggregator: replaces the reduction over clients (the algorithm's, or an
      earlier transform's), or None to keep it.
    init_client_state: ``init_client_state(params) -> row`` for a transform
      with per-client memory, else None.
    metrics: ``metrics(state) -> {name: scalar}``, logged every round from
      the state ``server`` returned (``Algorithm.server_metrics``), or None.
  """
  client: Callable[..., tuple]
  init: Callable[[PyTree], PyTree] = _no_state
  server: Callable[..., tuple] = _pass_through
  aggregator: aggregate_lib.Aggregator | None = None
  init_client_state: Callable[[PyTree], PyTree] | None = None
  metrics: Callable[[PyTree], dict] | None = None


class TransformedState(NamedTuple):
  """The server state of an algorithm with transforms: the algorithm's own
  (``inner``) and one state per transform (``extra``). ``params`` are the
  algorithm's."""
  inner: PyTree
  extra: tuple

  @property
  def params(self):
    return self.inner.params

  @property
  def round(self):
    return self.inner.round


class TransformedRow(NamedTuple):
  """A client's row: the algorithm's (``inner``) and one per transform."""
  inner: PyTree
  extra: tuple


def apply(algorithm: algorithm_lib.Algorithm,
          *transforms: Transform) -> algorithm_lib.Algorithm:
  """``algorithm`` with ``transforms`` applied to its clients' outputs.

  Transforms run in order on each client's output (after any transform the
  algorithm already has) and in reverse order at the server. The last one
  that sets an ``aggregator`` decides the reduction.
  """
  if not transforms:
    return algorithm
  transforms = tuple(transforms)
  stateful_rows = (algorithm.init_client_state is not None or any(
      t.init_client_state is not None for t in transforms))
  aggregator = algorithm.aggregator
  for t in transforms:
    aggregator = t.aggregator or aggregator

  def init(params):
    # Copies: a transform may hand back one array in two places (or the
    # params themselves), and the round donates every buffer of the state.
    extra = jax.tree.map(jnp.array, tuple(t.init(params) for t in transforms))
    return TransformedState(algorithm.init(params), extra)

  def init_client_state(params):
    inner = (algorithm.init_client_state(params)
             if algorithm.init_client_state is not None else ())
    return TransformedRow(inner, tuple(
        t.init_client_state(params) if t.init_client_state is not None
        else () for t in transforms))

  def split(row):
    return (row.inner, row.extra) if stateful_rows else (row, None)

  def join(inner, extra):
    return TransformedRow(inner, extra) if stateful_rows else inner

  def client_update(state, row, batches, example_mask, key):
    inner, extra = split(row)
    output, inner, metrics = algorithm.client_update(
        state.inner, inner, batches, example_mask, key)
    return output, join(inner, extra), metrics

  def transform(state, output, row, key, client):
    inner, extra = split(row)
    metrics = {}
    if algorithm.transform is not None:
      output, inner, metrics = algorithm.transform(
          state.inner, output, inner, jax.random.fold_in(key, len(transforms)),
          client)
      metrics = dict(metrics)
    rows = list(extra) if stateful_rows else [()] * len(transforms)
    for i, t in enumerate(transforms):
      output, rows[i], more = t.client(state.extra[i], output, rows[i],
                                       jax.random.fold_in(key, i), client)
      metrics.update(more)
    return output, join(inner, tuple(rows)), metrics

  def server_update(state, aggregate, info):
    extra = list(state.extra)
    for i in reversed(range(len(transforms))):
      server_info = info._replace(key=jax.random.fold_in(info.key, i))
      aggregate, extra[i] = transforms[i].server(extra[i], aggregate,
                                                 server_info)
    inner = algorithm.server_update(
        state.inner, aggregate,
        info._replace(key=jax.random.fold_in(info.key, len(transforms))))
    return TransformedState(inner, tuple(extra))

  def personalize(state, row, batches, example_mask, key):
    return algorithm.personalize(state.inner, split(row)[0], batches,
                                 example_mask, key)

  prepare = None
  if algorithm.prepare is not None:
    def prepare_client(state, row, batches, example_mask, key):
      return algorithm.prepare.client(state.inner, split(row)[0], batches,
                                      example_mask, key)

    def prepare_server(state, aggregate, info):
      return state._replace(inner=algorithm.prepare.server(
          state.inner, aggregate, info))

    prepare = algorithm_lib.Prepare(prepare_client, prepare_server,
                                    algorithm.prepare.aggregator)

  server_metrics = None
  if algorithm.server_metrics is not None or any(
      t.metrics is not None for t in transforms):
    def server_metrics(state):
      metrics = (dict(algorithm.server_metrics(state.inner))
                 if algorithm.server_metrics is not None else {})
      for t, extra in zip(transforms, state.extra):
        if t.metrics is not None:
          metrics.update(t.metrics(extra))
      return metrics

  return algorithm_lib.Algorithm(
      init=init, client_update=client_update, server_update=server_update,
      aggregator=aggregator,
      init_client_state=init_client_state if stateful_rows else None,
      personalize=personalize if algorithm.personalize else None,
      prepare=prepare, transform=transform, server_metrics=server_metrics)


def clip(*, max_norm: float) -> Transform:
  """Scales each client's whole output down to L2 norm at most ``max_norm``
  (every leaf together), as user-level DP-FedAvg clips a client's update
  (McMahan et al., "Learning Differentially Private Recurrent Language
  Models", ICLR 2018). Client metrics ``update_norm`` (before clipping) and
  ``clipped`` (the fraction of clients scaled down)."""
  if not (isinstance(max_norm, (int, float)) and max_norm > 0):
    raise ValueError(f'max_norm must be a number > 0, got {max_norm!r}.')

  def client(state, output, row, key, client):
    del key, client
    norm = tree.l2_norm(output)
    scale = jnp.minimum(1.0, max_norm / jnp.maximum(norm, 1e-30))
    one = jnp.ones((), jnp.float32)
    return (tree.scale(output, scale), row,
            {'update_norm': Mean(norm, one),
             'clipped': Mean((norm > max_norm).astype(jnp.float32), one)})

  return Transform(client=client)
