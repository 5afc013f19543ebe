"""FedDyn: dynamic regularization that aligns local and global optima.

Acar et al., "Federated Learning Based on Dynamic Regularization", ICLR 2021,
Algorithm 1. Client ``i`` keeps ``g_i``, the gradient of its loss at its last
local model (zero at first), in the engine's client-state table. From the
server params ``theta`` it minimizes, here by its local optimizer's steps,

  L_i(w) - <g_i, w> + alpha/2 * ||w - theta||^2

and updates ``g_i <- g_i - alpha * (w_i - theta)``. The server keeps ``h``
(zero at first) and, over the round's clients S of a population of N:

  h <- h - alpha * |S| / N * mean_{i in S}(w_i - theta)
  theta <- mean_{i in S}(w_i) - h / alpha

The paper's means are uniform over S (``weighting='uniform'``).

Example:

  >>> import optax, fedjax_engine as fe
  >>> model = fe.models.logistic_regression(num_features=60, num_classes=10)
  >>> algo = feddyn(model, client_optimizer=optax.sgd(0.1), alpha=0.01)
"""

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from fedjax_engine import algorithm
from fedjax_engine import tree
from fedjax_engine.model import Mean, Model


class FedDynState(NamedTuple):
  """The server state: params, the correction ``h`` and the round count."""
  params: Any
  h: Any
  round: Any


def feddyn(model: Model, *, client_optimizer: optax.GradientTransformation,
           alpha: float = 0.01) -> algorithm.Algorithm:
  """FedDyn.

  Args:
    model: the model every client trains.
    client_optimizer: local optimizer on the regularized objective,
      restarted every round.
    alpha: the regularization coefficient, > 0 (the paper uses 0.1, 0.01
      and 0.001).

  Returns:
    The algorithm, with a per-client gradient memory of the params' shape;
    client metrics ``train_loss`` (the loss without the regularizers).
  """
  if not (isinstance(alpha, (int, float)) and math.isfinite(alpha)
          and alpha > 0):
    raise ValueError(f'alpha must be a finite number > 0, got {alpha!r}.')
  grad_fn = algorithm.loss_grad(model)

  def init(params):
    return FedDynState(params, tree.zeros_like(params),
                       jnp.zeros((), jnp.int32))

  def init_client_state(params):
    return tree.zeros_like(params)

  def client_update(server_state, memory, batches, example_mask, key):
    theta = server_state.params

    def step(carry, batch, mask, i):
      params, opt_state, loss_sum = carry
      grads, loss = grad_fn(params, batch, mask, jax.random.fold_in(key, i))
      grads = jax.tree.map(lambda g, m, w, t: g - m + alpha * (w - t),
                           grads, memory, params, theta)
      params, opt_state = algorithm.optimizer_step(
          client_optimizer, grads, params, opt_state, loss.count > 0)
      return params, opt_state, jax.tree.map(jnp.add, loss_sum, loss)

    zero = jnp.zeros((), jnp.float32)
    params, _, loss = algorithm.over_steps(
        step, (theta, client_optimizer.init(theta), Mean(zero, zero)),
        batches, example_mask)
    change = tree.sub(params, theta)
    memory = tree.sub(memory, tree.scale(change, alpha))
    return change, memory, {'train_loss': loss}

  def server_update(server_state, mean_change, info):
    share = info.num_clients.astype(jnp.float32) / info.population
    h = tree.sub(server_state.h, tree.scale(mean_change, alpha * share))
    params = tree.sub(tree.add(server_state.params, mean_change),
                      tree.scale(h, 1.0 / alpha))
    return FedDynState(params, h, server_state.round + 1)

  return algorithm.Algorithm(init=init, client_update=client_update,
                             server_update=server_update,
                             init_client_state=init_client_state)
