"""FedRep: a shared representation (body) and a personal head per client.

Collins, Hassani, Mokhtari and Shakkottai, "Exploiting Shared
Representations for Personalized Federated Learning", ICML 2021,
Algorithm 1. The params split into a body ``phi``, shared by all clients,
and a head ``h_k`` that each client keeps (in the engine's client-state
table, starting at the initial params' head). In a round, client ``k``

  1. adapts its head to the current body, ``tau`` gradient steps with the
     body frozen: ``h_k <- h_k - lr * grad_h F_k(phi, h_k)``;
  2. then trains the body with its new head frozen, one pass over its round
     batches: ``phi_k <- phi_k - lr * grad_phi F_k(phi_k, h_k)`` from
     ``phi_k = phi``;

and sends ``phi - phi_k``; the server averages the bodies (FedAvg on the
body). Here the ``tau = head_steps`` head steps cycle through the round's
batches (step ``j`` takes batch ``j mod n`` of the client's ``n``), so
``tau`` counts updates as Algorithm 1 does whatever the client's size; the
paper's experiments train the head for 10 local epochs, which is
``head_steps = 10 * n`` for a client with ``n`` batches a round. The body
pass is the engine's local training (its local steps or epochs).

The head is named by key paths into the params (see ``head`` below). The
server state's ``params`` hold the global body and, as the head, the
initial params' head, which the server never changes: global evaluation
reads a model whose head was never trained, and personalized evaluation
(the global body with the client's own head) is FedRep's measure.

Example:

  >>> import jax, optax, fedjax_engine as fe
  >>> model = fe.models.mlp(num_features=60, num_classes=10)
  >>> algo = fedrep(model, client_optimizer=optax.sgd(0.1), head_steps=10)
  >>> sorted(algo.init_client_state(model.init(jax.random.key(0))))
  ['Dense_2/bias', 'Dense_2/kernel']
"""

import re

import jax
import jax.numpy as jnp
import optax

from fedjax_engine import algorithm
from fedjax_engine import tree
from fedjax_engine.model import Mean, Model


def _entry_name(entry) -> str:
  for attr in ('key', 'name', 'idx'):
    if hasattr(entry, attr):
      return str(getattr(entry, attr))
  return str(entry)


def _leaf_paths(params) -> list[tuple[str, ...]]:
  return [tuple(_entry_name(e) for e in path)
          for path, _ in jax.tree_util.tree_flatten_with_path(params)[0]]


def _natural(name: str):
  """Sorts 'Dense_10' after 'Dense_2'."""
  return [(0, int(part), '') if part.isdigit() else (1, 0, part)
          for part in re.split(r'(\d+)', name)]


def _contains(path: tuple[str, ...], parts: tuple[str, ...]) -> bool:
  return any(path[i:i + len(parts)] == parts
             for i in range(len(path) - len(parts) + 1))


class _Split:
  """The body/head split of a params tree, both as ``{'a/b': leaf}`` dicts.

  ``names`` are the ``head`` hyperparameter's key paths; empty means the
  last top-level key.
  """

  def __init__(self, names: tuple[tuple[str, ...], ...]):
    self._names = names

  def head_paths(self, params) -> set[str]:
    """The '/'-joined paths of the head's leaves; ValueError if the head
    is empty or leaves no body."""
    paths = _leaf_paths(params)
    listing = ', '.join('/'.join(p) for p in paths)
    if self._names:
      for parts in self._names:
        if not any(_contains(p, parts) for p in paths):
          raise ValueError(f'head: {"/".join(parts)!r} names no parameter; '
                           f'the params are {listing}.')
      head = [p for p in paths if any(_contains(p, n) for n in self._names)]
    else:
      last = max({p[0] for p in paths if p}, key=_natural, default=None)
      head = [p for p in paths if p and p[0] == last]
    if not head or len(head) == len(paths):
      raise ValueError(f'head must name some but not all of the params '
                       f'({listing}), got {len(head)} of {len(paths)} '
                       'leaves; name it with head=...')
    return {'/'.join(p) for p in head}

  def __call__(self, params):
    """``(body, head)`` of ``params``."""
    head_paths = self.head_paths(params)
    flat, _ = jax.tree_util.tree_flatten_with_path(params)
    body, head = {}, {}
    for path, leaf in flat:
      name = '/'.join(_entry_name(e) for e in path)
      (head if name in head_paths else body)[name] = leaf
    return body, head

  def merge(self, params, body, head):
    """``params`` with its leaves taken from ``body`` and ``head``."""
    parts = {**body, **head}
    flat, treedef = jax.tree_util.tree_flatten_with_path(params)
    return treedef.unflatten(
        [parts['/'.join(_entry_name(e) for e in path)] for path, _ in flat])


def fedrep(model: Model, *, client_optimizer: optax.GradientTransformation,
           server_optimizer: optax.GradientTransformation | None = None,
           head: str = '', head_steps: int = 10) -> algorithm.Algorithm:
  """FedRep.

  Args:
    model: the model every client trains.
    client_optimizer: local optimizer for the head steps and the body pass
      (each with its own state), restarted every round.
    server_optimizer: applied to the mean client delta of the body; plain
      averaging (``optax.sgd(1.0)``) when None.
    head: the params that form the personal head: comma-separated key
      paths, '/' between keys ('Dense_2', 'Dense_0/bias'); a path names
      every parameter under keys that contain it consecutively, at any
      depth. Empty: the last top-level key in natural order ('Dense_10'
      after 'Dense_2'), the output layer of this package's models. A path
      that names nothing, or a head that leaves no body, raises ValueError
      when the algorithm first sees the params.
    head_steps: tau, >= 0: gradient steps on the head each round before the
      body pass, cycling through the round's batches (the paper trains the
      head for 10 local epochs).

  Returns:
    The algorithm; the client state is the client's head as a dict from
    '/'-joined key paths to arrays. Client metrics ``train_loss`` (the body
    pass) and ``head_loss`` (the head steps), each step's before its
    update.
  """
  if not isinstance(head, str):
    raise ValueError(f'head must be a string of comma-separated key paths, '
                     f'got {head!r}.')
  names = tuple(tuple(name.strip().split('/')) for name in head.split(','))
  if head.strip() and any('' in parts for parts in names):
    raise ValueError(f'head must be comma-separated key paths such as '
                     f"'Dense_2' or 'Dense_0/bias', got {head!r}.")
  if not (isinstance(head_steps, int) and not isinstance(head_steps, bool)
          and head_steps >= 0):
    raise ValueError(f'head_steps must be an integer >= 0, got '
                     f'{head_steps!r}.')
  split = _Split(names if head.strip() else ())
  server_optimizer = server_optimizer or optax.sgd(1.0)

  def init(params):
    body, _ = split(params)
    return algorithm.ServerState(params, server_optimizer.init(body),
                                 jnp.zeros((), jnp.int32))

  def init_client_state(params):
    return split(params)[1]

  def client_update(server_state, head_params, batches, example_mask, key):
    params = server_state.params
    body, _ = split(params)
    head_key, body_key = jax.random.split(key)
    head_grad = algorithm.loss_grad(model._replace(
        apply=lambda h, batch, **kw: model.apply(
            split.merge(params, body, h), batch, **kw)))
    # Index plans put padded steps last: the first n steps hold the data.
    num_busy = jnp.maximum(algorithm.busy_steps(example_mask), 1)

    def head_step(j, carry):
      h, opt_state, losses = carry
      i = j % num_busy
      batch = jax.tree.map(
          lambda x: jax.lax.dynamic_index_in_dim(x, i, keepdims=False),
          batches)
      mask = jax.lax.dynamic_index_in_dim(example_mask, i, keepdims=False)
      grads, loss = head_grad(h, batch, mask, jax.random.fold_in(head_key, j))
      h, opt_state = algorithm.optimizer_step(client_optimizer, grads, h,
                                              opt_state, loss.count > 0)
      return h, opt_state, jax.tree.map(jnp.add, losses, loss)

    zero = jnp.zeros((), jnp.float32)
    head_params, _, head_loss = jax.lax.fori_loop(
        0, head_steps, head_step,
        (head_params, client_optimizer.init(head_params), Mean(zero, zero)))
    body_train = algorithm.local_training(
        model._replace(apply=lambda b, batch, **kw: model.apply(
            split.merge(params, b, head_params), batch, **kw)),
        client_optimizer)
    new_body, loss = body_train(body, batches, example_mask, body_key)
    return (tree.sub(body, new_body), head_params,
            {'train_loss': loss, 'head_loss': head_loss})

  def server_update(server_state, aggregate, info):
    del info
    body, head_params = split(server_state.params)
    updates, opt_state = server_optimizer.update(
        aggregate, server_state.opt_state, body)
    params = split.merge(server_state.params,
                         optax.apply_updates(body, updates), head_params)
    return algorithm.ServerState(params, opt_state, server_state.round + 1)

  def personalize(server_state, head_params, batches, example_mask, key):
    del batches, example_mask, key
    body, _ = split(server_state.params)
    return split.merge(server_state.params, body, head_params)

  return algorithm.Algorithm(init=init, client_update=client_update,
                             server_update=server_update,
                             init_client_state=init_client_state,
                             personalize=personalize)
