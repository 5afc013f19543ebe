"""HypCluster: clients pick the best of several global models.

Mansour, Mohri, Ro and Suresh, "Three Approaches for Personalization with
Applications to Federated Learning", arXiv:2002.10619, 2020, HypCluster
(Algorithm 2 run as federated rounds). The server keeps ``q`` cluster
models ``h_1 .. h_q``. In a round each client ``k`` finds the cluster whose
model has the lowest loss on its batches,

  j_k = argmin_j f_k(h_j)      (ties: the lowest j)

trains that model locally as FedAvg does and sends its delta; each cluster
model moves by the weighted mean delta of the clients that picked it, and a
cluster nobody picked stays as it was:

  h_j <- h_j - server_opt(sum_{k: j_k = j} w_k delta_k / sum_{k: j_k = j} w_k)

A client personalizes by the same choice: its model is the cluster model
with the lowest loss on its batches.

The cluster models are the server state's ``clusters``, stacked on a leading
axis, with a server optimizer state per cluster that advances only in the
rounds its cluster is picked. The state's ``params``, which global
evaluation reads, are the cluster model that carried the most aggregation
weight in the last round (ties: the lowest index; unchanged in a round
without weight), and cluster 0 before the first round.

Clusters that start equal stay equal, every client picking the first, so
cluster ``j > 0`` starts at the given params plus Gaussian noise of standard
deviation ``init_noise``, drawn from a fixed key folded with ``j``; cluster
0 starts at the given params. ``num_clusters = 1`` is FedAvg.

Example:

  >>> import optax, fedjax_engine as fe
  >>> model = fe.models.logistic_regression(num_features=60, num_classes=10)
  >>> algo = hypcluster(model, client_optimizer=optax.sgd(0.1),
  ...                   num_clusters=3)
"""

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from fedjax_engine import algorithm
from fedjax_engine import tree
from fedjax_engine.model import Mean, Model

# The key the initial noise of the clusters is drawn from: fixed, so that
# ``init`` keeps the signature ``init(params)`` and is deterministic.
_INIT_SEED = 0


class HypClusterState(NamedTuple):
  """The server state: the evaluated ``params``, the ``clusters`` models
  stacked ``[q, ...]`` and their stacked server optimizer states."""
  params: Any
  opt_state: Any
  round: Any
  clusters: Any


def _per_cluster(values, like):
  """``values [q]`` shaped to broadcast against a stacked leaf ``[q, ...]``."""
  return values.reshape(values.shape + (1,) * (like.ndim - 1))


def hypcluster(model: Model, *, client_optimizer: optax.GradientTransformation,
               server_optimizer: optax.GradientTransformation | None = None,
               num_clusters: int = 2,
               init_noise: float = 0.01) -> algorithm.Algorithm:
  """HypCluster.

  Args:
    model: the model every client trains.
    client_optimizer: local optimizer of the picked cluster model, restarted
      every round.
    server_optimizer: applied to each cluster's mean delta over the clients
      that picked it; plain averaging (``optax.sgd(1.0)``) when None.
    num_clusters: q, the number of cluster models, an integer >= 1 (1 is
      FedAvg).
    init_noise: the standard deviation, >= 0, of the Gaussian noise added to
      the initial params to start clusters 1 .. q - 1 (0 leaves them equal
      to cluster 0, which every client then picks).

  Returns:
    The algorithm; client outputs are deltas laid out ``[q, ...]``, zero
    outside the picked cluster, and the picked cluster as a one-hot ``[q]``.
    Client metrics ``train_loss`` and ``cluster_<j>``, the share of clients
    that picked cluster ``j``.
  """
  if not (isinstance(num_clusters, int) and
          not isinstance(num_clusters, bool) and num_clusters >= 1):
    raise ValueError(f'num_clusters must be an integer >= 1, got '
                     f'{num_clusters!r}.')
  if not (isinstance(init_noise, (int, float)) and
          math.isfinite(init_noise) and init_noise >= 0):
    raise ValueError(f'init_noise must be a finite number >= 0, got '
                     f'{init_noise!r}.')
  server_optimizer = server_optimizer or optax.sgd(1.0)
  train = algorithm.local_training(model, client_optimizer)

  def init(params):
    leaves, treedef = jax.tree.flatten(params)
    base = jax.random.key(_INIT_SEED)

    def start(j):
      key = jax.random.fold_in(base, j)
      return treedef.unflatten([
          x + init_noise * jax.random.normal(
              jax.random.fold_in(key, n), x.shape, x.dtype)
          if j and jnp.issubdtype(x.dtype, jnp.floating) else x
          for n, x in enumerate(leaves)])

    clusters = tree.stack([start(j) for j in range(num_clusters)])
    return HypClusterState(params, jax.vmap(server_optimizer.init)(clusters),
                           jnp.zeros((), jnp.int32), clusters)

  def choose(clusters, batches, example_mask):
    """The index of the cluster with the lowest loss."""
    def step(total, batch, mask, i):
      del i
      losses = jax.vmap(lambda p: algorithm.masked_loss(
          model, p, batch, mask, None, train=False)[1].total)(clusters)
      return total + losses.astype(jnp.float32)

    totals = algorithm.over_steps(
        step, jnp.zeros((num_clusters,), jnp.float32), batches, example_mask)
    # The example count is the same for every cluster, so the lowest summed
    # loss is the lowest mean loss.
    return jnp.argmin(totals)

  def picked(clusters, j):
    return jax.tree.map(lambda c: c[j], clusters)

  def client_update(server_state, client_state, batches, example_mask, key):
    j = choose(server_state.clusters, batches, example_mask)
    onehot = jax.nn.one_hot(j, num_clusters)
    start = picked(server_state.clusters, j)
    params, loss = train(start, batches, example_mask, key)
    delta = jax.tree.map(
        lambda d: _per_cluster(onehot.astype(d.dtype), d[None]) * d[None],
        tree.sub(start, params))
    metrics = {'train_loss': loss}
    one = jnp.ones((), jnp.float32)
    for i in range(num_clusters):
      metrics[f'cluster_{i}'] = Mean(onehot[i], one)
    return (delta, onehot), client_state, metrics

  def server_update(server_state, aggregate, info):
    del info
    # The aggregate is the cohort's weighted mean: a cluster's mean delta
    # over the clients that picked it is its part divided by their share.
    mean_delta, share = aggregate
    chosen = share > 0
    safe_share = jnp.where(chosen, share, 1.0)
    delta = jax.tree.map(lambda d: d / _per_cluster(safe_share, d), mean_delta)

    def update(params, opt_state, grads):
      updates, opt_state = server_optimizer.update(grads, opt_state, params)
      return optax.apply_updates(params, updates), opt_state

    clusters, opt_state = jax.vmap(update)(
        server_state.clusters, server_state.opt_state, delta)

    def keep_unchosen(new, old):
      return jnp.where(_per_cluster(chosen, new), new, old)

    clusters = jax.tree.map(keep_unchosen, clusters, server_state.clusters)
    opt_state = jax.tree.map(keep_unchosen, opt_state, server_state.opt_state)
    params = tree.where(jnp.any(chosen), picked(clusters, jnp.argmax(share)),
                        server_state.params)
    return HypClusterState(params, opt_state, server_state.round + 1, clusters)

  def personalize(server_state, client_state, batches, example_mask, key):
    del client_state, key
    return picked(server_state.clusters,
                  choose(server_state.clusters, batches, example_mask))

  return algorithm.Algorithm(init=init, client_update=client_update,
                             server_update=server_update,
                             personalize=personalize)
