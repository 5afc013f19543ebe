"""The Algorithm contract and reusable local-training building blocks.

An algorithm is a NamedTuple of pure functions. ``client_update`` trains ONE
client and is never batched by hand: the engine vmaps it over the cohort,
scans it over chunks of clients, and shards it over devices.

Example (a complete algorithm that averages the clients' mean label):

  >>> import jax.numpy as jnp
  >>> def client_update(server_state, client_state, batches, mask, key):
  ...   total = jnp.sum(batches['y'] * mask)
  ...   return total / jnp.maximum(mask.sum(), 1), client_state, {}
  >>> algo = Algorithm(
  ...     init=lambda params: ServerState(params, (), jnp.zeros((), jnp.int32)),
  ...     client_update=client_update,
  ...     server_update=lambda s, agg, info: s._replace(params=agg))
"""

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from fedjax_engine import aggregate as aggregate_lib
from fedjax_engine import tree
from fedjax_engine.model import Mean, Model

Array = Any
Params = Any
PyTree = Any


class ServerState(NamedTuple):
  """The server state most algorithms use. Every server state has ``params``.

  ``params`` is what evaluation reads; ``round`` counts finished rounds.
  """
  params: Params
  opt_state: PyTree
  round: Array


class RoundInfo(NamedTuple):
  """Facts about the round, passed to ``server_update``.

  Example:

    >>> info = RoundInfo(num_clients=3, total_weight=120.0, population=100)
    >>> info.total_weight / info.num_clients, info.key is None
    (40.0, True)
  """
  num_clients: Array    # real (unpadded) clients that took part
  total_weight: Array   # sum of their aggregation weights
  population: Array     # clients in the dataset (int32), e.g. for SCAFFOLD's
                        # server control variate, a mean over all of them
  key: Array = None     # the round's server-side randomness (central DP
                        # noise, ...), apart from every client's key


class ClientInfo(NamedTuple):
  """Who a client is in a round, passed to ``Algorithm.transform``.

  ``cohort`` lists the round's participants for protocols among them
  (secure aggregation's pairwise masks): the ids of the clients whose
  outputs the aggregator counts (aggregation weight > 0), ``-1`` in
  padded, dropped or weightless slots, the same array for every client
  of the round. Its order and length are the engine's (padding
  included) and carry no meaning; only the set of ids does.

  Example:

    >>> import numpy as np
    >>> client = ClientInfo(id=np.int32(7),
    ...                     cohort=np.array([7, -1, 2, -1], np.int32))
    >>> sorted(client.cohort[client.cohort >= 0].tolist())
    [2, 7]
  """
  id: Array       # int32, this client's index in the dataset
  cohort: Array   # [C] int32, the round's participants, -1 elsewhere


# The default aggregator of algorithms and first exchanges: one object, so
# the reference loop in testing.py knows it is the plain weighted mean.
WEIGHTED_MEAN = aggregate_lib.weighted_mean()


class Prepare(NamedTuple):
  """A first exchange within a round, before local training.

  Every client of the cohort sends ``client(server_state, client_state,
  batches, example_mask, key) -> output`` (its state read, not written;
  the same batches and key ``client_update`` then gets); the outputs are
  aggregated by ``aggregator``, and ``server(server_state, aggregate,
  round_info) -> server_state`` gives the state that local training then
  starts from. Mime uses it for the cohort's full-batch gradient at the
  server params, which every client's local steps need (Karimireddy et al.,
  NeurIPS 2021, Algorithm 1). The engine runs both exchanges in the same
  compiled round.
  """
  client: Callable[..., PyTree]
  server: Callable[[PyTree, PyTree, RoundInfo], PyTree]
  aggregator: aggregate_lib.Aggregator = WEIGHTED_MEAN


class Algorithm(NamedTuple):
  """A federated algorithm.

  Attributes:
    init: ``init(params) -> server_state``; the state has a ``params`` field.
    client_update: ``client_update(server_state, client_state, batches
      [S, B, ...], example_mask [S, B], key) -> (client_output,
      new_client_state, client_metrics)`` for ONE client. The server state is
      broadcast to every client unchanged. ``client_metrics`` maps names to
      :class:`Mean`.
    server_update: ``server_update(server_state, aggregate, round_info) ->
      server_state``, where ``aggregate = aggregator.finalize(...)`` over the
      cohort's client outputs.
    aggregator: how client outputs combine; example- or uniform-weighted mean
      by default (the weights come from the cohort).
    init_client_state: ``init_client_state(params) -> client_state`` for
      methods with per-client memory, else None (client_state is then ()).
    personalize: ``personalize(server_state, client_state, batches [S, B,
      ...], example_mask [S, B], key) -> params`` for ONE client: the model
      that client uses on its own data (a personal model kept in its state,
      a mix of personal and global, a cluster model it picks, a step of
      adaptation on its batches). Personalized evaluation
      (:func:`fedjax_engine.make_personal_evaluate`) vmaps it over clients;
      None means the global ``server_state.params``.
    prepare: a first exchange of the round before local training
      (:class:`Prepare`), or None.
    transform: ``transform(server_state, client_output, client_state, key,
      client) -> (client_output, client_state, client_metrics)`` for ONE
      client, applied to what ``client_update`` returned before it is
      aggregated: clipping and noise for differential privacy, compression
      with error feedback (a residual in the client state), an attack by
      the clients whose ids are malicious, secure aggregation's masks.
      ``client`` is a :class:`ClientInfo`. ``key`` is the client's own,
      apart from ``client_update``'s. None: outputs go to the aggregator
      as they are. :mod:`fedjax_engine.transforms` composes them.
    server_metrics: ``server_metrics(server_state) -> {name: scalar}``,
      read from the new server state after every round and logged beside
      the client metrics: what only the server knows (clients a robust
      rule left out, the cosine of updates to the aggregate), or None.
  """
  init: Callable[[Params], PyTree]
  client_update: Callable[..., tuple]
  server_update: Callable[[PyTree, PyTree, RoundInfo], PyTree]
  aggregator: aggregate_lib.Aggregator = WEIGHTED_MEAN
  init_client_state: Callable[[Params], PyTree] | None = None
  personalize: Callable[..., Params] | None = None
  prepare: Prepare | None = None
  transform: Callable[..., tuple] | None = None
  server_metrics: Callable[[PyTree], dict] | None = None


def masked_loss(model: Model, params, batch, mask, key, *, train=True):
  """Mean loss over the unmasked examples, and (sum, count) for reporting.

  Example (zero params: every class equally likely, a loss of log 3):

    >>> import jax, jax.numpy as jnp, fedjax_engine as fe
    >>> model = fe.models.logistic_regression(num_features=2, num_classes=3)
    >>> params = jax.tree.map(jnp.zeros_like, model.init(jax.random.key(0)))
    >>> batch = {'x': jnp.ones((2, 2)), 'y': jnp.array([0, 1])}
    >>> loss, reported = masked_loss(model, params, batch,
    ...                              jnp.array([True, False]), key=None)
    >>> round(float(loss), 4), float(reported.count)
    (1.0986, 1.0)
  """
  outputs = model.apply(params, batch, key=key, train=train)
  per_example = model.loss(outputs, batch)
  weights = mask.astype(per_example.dtype)
  total = jnp.sum(per_example * weights)
  count = jnp.sum(weights)
  return total / jnp.maximum(count, 1.0), Mean(total, count)


def loss_grad(model: Model):
  """``grad(params, batch, mask, key) -> (grads, Mean loss)`` of
  :func:`masked_loss`: the gradient of the mean loss over the unmasked
  examples, and the loss as (sum, count) for reporting."""
  return jax.grad(lambda p, b, m, k: masked_loss(model, p, b, m, k),
                  has_aux=True)


def loss_over_steps(model: Model, params, batches, example_mask, key, *,
                    train: bool = True) -> Mean:
  """The loss of fixed ``params`` over every unmasked example of a client's
  batches ``[S, B, ...]``, as ``Mean(sum, count)`` (step ``i`` with key
  ``fold_in(key, i)``): e.g. the loss at the server params that q-FFL and
  Agnostic FL weigh clients by."""
  def add(total, batch, mask, i):
    _, loss = masked_loss(model, params, batch, mask,
                          jax.random.fold_in(key, i), train=train)
    return jax.tree.map(jnp.add, total, loss)

  zero = jnp.zeros((), jnp.float32)
  return over_steps(add, Mean(zero, zero), batches, example_mask)


def gradient_over_steps(model: Model, params, batches, example_mask, key):
  """The gradient of the mean loss over every unmasked example of a
  client's batches at fixed ``params`` (each step's batch-mean gradient
  weighed by its examples; step ``i`` with key ``fold_in(key, i)``): the
  client's full-batch gradient of Mime and MimeLite."""
  grad_fn = loss_grad(model)

  def add(carry, batch, mask, i):
    grad_sum, count = carry
    grads, loss = grad_fn(params, batch, mask, jax.random.fold_in(key, i))
    return (tree.add(grad_sum, tree.scale(grads, loss.count)),
            count + loss.count)

  grad_sum, count = over_steps(
      add, (tree.zeros_like(params), jnp.zeros((), jnp.float32)), batches,
      example_mask)
  return tree.scale(grad_sum, 1.0 / jnp.maximum(count, 1.0))


def optimizer_step(optimizer: optax.GradientTransformation, grads, params,
                   opt_state, active):
  """``(params, opt_state)`` after one step of ``optimizer``, or unchanged
  when ``active`` is false (a step without examples)."""
  updates, new_opt_state = optimizer.update(grads, opt_state, params)
  return (tree.where(active, optax.apply_updates(params, updates), params),
          tree.where(active, new_opt_state, opt_state))


def busy_steps(example_mask):
  """The number of steps up to and including the last one with an example.

  Index plans put a client's padded steps last, so this is its real work.
  """
  num_steps = example_mask.shape[0]
  busy = jnp.any(example_mask.reshape(num_steps, -1), axis=1)
  return jnp.max(jnp.where(busy, jnp.arange(1, num_steps + 1), 0))


# The name of the engine's vmap axis over a chunk of clients (see
# :func:`over_steps`).
COHORT_AXIS = 'cohort'


def _chunk_steps(n):
  """The largest ``n`` among the clients vmapped together by the engine.

  Outside the engine's vmap (a client trained on its own, as the conformance
  tests do) the axis is unbound and ``n`` is returned.
  """
  try:
    return jax.lax.pmax(n, COHORT_AXIS)
  except NameError:
    return n


def over_steps(step, carry, batches, example_mask):
  """``carry = step(carry, batch, mask, i)`` for steps ``i < busy_steps``.

  A ``while_loop`` rather than a ``scan`` over all ``S`` steps, so padded
  steps cost nothing: a client with 3 of 24 steps runs 3. Under the engine's
  vmap the loop runs as many steps as the chunk's busiest client, with one
  trip count for the whole chunk (so the step index stays a scalar and each
  batch a slice, not a per-client gather); clients past their own last busy
  step keep their carry. That is why the engine groups clients of similar
  size into chunks.

  Example (the last step holds no example, so only two steps run):

    >>> import jax.numpy as jnp
    >>> batches = {'x': jnp.array([[1., 2.], [3., 4.], [5., 6.]])}
    >>> mask = jnp.array([[True, True], [True, False], [False, False]])
    >>> def add(total, batch, mask, i):
    ...   return total + jnp.sum(jnp.where(mask, batch['x'], 0.0))
    >>> float(over_steps(add, jnp.zeros(()), batches, mask))
    6.0
  """
  n = busy_steps(example_mask)
  bound = _chunk_steps(n)

  def body(state):
    i, carry = state
    batch = jax.tree.map(
        lambda x: jax.lax.dynamic_index_in_dim(x, i, keepdims=False), batches)
    mask = jax.lax.dynamic_index_in_dim(example_mask, i, keepdims=False)
    new_carry = step(carry, batch, mask, i)
    if bound is not n:
      new_carry = tree.where(i < n, new_carry, carry)
    return i + 1, new_carry

  return jax.lax.while_loop(lambda state: state[0] < bound, body,
                            (jnp.zeros((), jnp.int32), carry))[1]


def local_training(model: Model, optimizer: optax.GradientTransformation,
                   *, proximal_mu: float = 0.0):
  """Local training by ``optimizer`` over a client's batches.

  Returns ``train(params, batches [S, B, ...], example_mask [S, B], key) ->
  (params, Mean(train loss))``. The optimizer state starts fresh (a client
  keeps no optimizer memory between rounds). Steps run through
  :func:`over_steps`; a step whose batch is fully padded leaves params and
  optimizer state untouched, so padding steps change nothing. The reported
  loss is each step's loss before its update.

  ``proximal_mu > 0`` adds FedProx's proximal term ``mu/2 * ||w - w0||^2``
  to every step's objective, ``w0`` being the params training started from
  (the server's), or ``train(..., anchor=w0)`` when given (Ditto pulls a
  personal model toward the server's): its gradient ``mu * (w - w0)`` is
  added to the loss gradient. The reported loss leaves the term out.

  Example (3 steps on the same batch of 4 examples; its loss falls):

    >>> import jax, jax.numpy as jnp, optax, fedjax_engine as fe
    >>> model = fe.models.logistic_regression(num_features=2, num_classes=2)
    >>> train = local_training(model, optax.sgd(0.5))
    >>> batch = {'x': jnp.ones((4, 2)), 'y': jnp.zeros(4, jnp.int32)}
    >>> batches = jax.tree.map(lambda x: jnp.stack([x] * 3), batch)
    >>> mask = jnp.ones((3, 4), bool)
    >>> params = model.init(jax.random.key(0))
    >>> trained, loss = train(params, batches, mask, jax.random.key(1))
    >>> before, _ = masked_loss(model, params, batch, mask[0], key=None)
    >>> after, _ = masked_loss(model, trained, batch, mask[0], key=None)
    >>> float(loss.count), bool(after < before)
    (12.0, True)
  """
  grad_fn = loss_grad(model)

  def train(params, batches, example_mask, key, anchor=None):
    start = params if anchor is None else anchor

    def step(carry, batch, mask, i):
      params, opt_state, loss_sum = carry
      grads, loss = grad_fn(params, batch, mask, jax.random.fold_in(key, i))
      if proximal_mu:
        grads = jax.tree.map(lambda g, w, w0: g + proximal_mu * (w - w0),
                             grads, params, start)
      params, opt_state = optimizer_step(optimizer, grads, params, opt_state,
                                         loss.count > 0)
      return params, opt_state, jax.tree.map(jnp.add, loss_sum, loss)

    zero = jnp.zeros((), jnp.float32)
    params, _, loss = over_steps(
        step, (params, optimizer.init(params), Mean(zero, zero)), batches,
        example_mask)
    return params, loss

  return train


def server_optimizer_step(optimizer: optax.GradientTransformation):
  """``(init, server_update)`` applying ``optimizer`` to the aggregate.

  The aggregate is used as a (pseudo-)gradient: ``params <- params +
  optimizer.update(aggregate)``. This is the server side of FedAvg/FedOpt
  (Reddi et al., ICLR 2021, Algorithm 2) and FedSGD.

  Example (``optax.sgd(1.0)`` subtracts the aggregate, FedAvg's step):

    >>> import jax.numpy as jnp, optax
    >>> init, server_update = server_optimizer_step(optax.sgd(1.0))
    >>> state = init(jnp.array([1., 2.]))
    >>> info = RoundInfo(num_clients=2, total_weight=2.0, population=10)
    >>> state = server_update(state, jnp.array([0.5, -1.]), info)
    >>> state.params.tolist(), int(state.round)
    ([0.5, 3.0], 1)
  """
  def init(params):
    return ServerState(params, optimizer.init(params), jnp.zeros((), jnp.int32))

  def server_update(server_state, aggregate, info):
    del info
    updates, opt_state = optimizer.update(
        aggregate, server_state.opt_state, server_state.params)
    params = optax.apply_updates(server_state.params, updates)
    return ServerState(params, opt_state, server_state.round + 1)

  return init, server_update
