"""SCAFFOLD: local steps corrected by control variates for client drift.

Karimireddy et al., "SCAFFOLD: Stochastic Controlled Averaging for Federated
Learning", ICML 2020, Algorithm 1 with option II. The server keeps params
``x`` and a control variate ``c``; client ``i`` keeps its own ``c_i`` (zero
at first) in the engine's client-state table. In a round, a client starts
from ``y = x`` and takes its K local steps along the corrected gradient

  y <- y - lr * (g_i(y) - c_i + c)

then updates its control variate, option II:

  c_i+ = c_i - c + (x - y) / (K * lr)

For SGD, ``x - y = lr * sum_k (g_k - c_i + c)``, so ``c_i+`` is the mean
of the K stochastic gradients ``g_k`` the client computed; that is how it is
computed here, which needs no learning rate and works with any client
optimizer. The client sends ``(x - y, c_i+ - c_i)``; the server applies its
optimizer to the mean of the first (``optax.sgd(eta_g)`` is the paper's
``x <- x + eta_g * mean(y - x)``) and moves its control variate by the
clients' changes over the whole population of N clients:

  c <- c + |S| / N * mean_{i in S}(c_i+ - c_i)

The paper averages uniformly over the cohort (``weighting='uniform'``); with
example weights the means are example-weighted.

Example:

  >>> import optax, fedjax_engine as fe
  >>> model = fe.models.logistic_regression(num_features=60, num_classes=10)
  >>> algo = scaffold(model, client_optimizer=optax.sgd(0.1))
"""

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from fedjax_engine import algorithm
from fedjax_engine import tree
from fedjax_engine.model import Mean, Model


class ScaffoldState(NamedTuple):
  """The server state: FedOpt's fields and the control variate ``c``."""
  params: Any
  opt_state: Any
  round: Any
  control: Any


def scaffold(model: Model, *, client_optimizer: optax.GradientTransformation,
             server_optimizer: optax.GradientTransformation | None = None
             ) -> algorithm.Algorithm:
  """SCAFFOLD, option II.

  Args:
    model: the model every client trains.
    client_optimizer: local optimizer on the corrected gradients (the paper
      uses SGD), restarted every round.
    server_optimizer: applied to the mean client delta ``x - y``;
      ``optax.sgd(1.0)`` (the paper's global step size 1) when None.

  Returns:
    The algorithm, with a per-client control variate of the params' shape;
    client metrics ``train_loss``.
  """
  server_optimizer = server_optimizer or optax.sgd(1.0)
  opt_init, opt_update = algorithm.server_optimizer_step(server_optimizer)
  grad_fn = algorithm.loss_grad(model)

  def init(params):
    state = opt_init(params)
    return ScaffoldState(state.params, state.opt_state, state.round,
                         tree.zeros_like(params))

  def init_client_state(params):
    return tree.zeros_like(params)

  def client_update(server_state, control, batches, example_mask, key):
    x, c = server_state.params, server_state.control
    correction = tree.sub(c, control)   # c - c_i

    def step(carry, batch, mask, i):
      params, opt_state, grad_sum, steps, loss_sum = carry
      grads, loss = grad_fn(params, batch, mask, jax.random.fold_in(key, i))
      active = loss.count > 0
      params, opt_state = algorithm.optimizer_step(
          client_optimizer, tree.add(grads, correction), params, opt_state,
          active)
      return (params, opt_state,
              tree.where(active, tree.add(grad_sum, grads), grad_sum),
              steps + active.astype(jnp.float32),
              jax.tree.map(jnp.add, loss_sum, loss))

    zero = jnp.zeros((), jnp.float32)
    y, _, grad_sum, steps, loss = algorithm.over_steps(
        step, (x, client_optimizer.init(x), tree.zeros_like(x), zero,
               Mean(zero, zero)), batches, example_mask)
    # A client without a step keeps its control variate.
    new_control = tree.where(steps > 0,
                             tree.scale(grad_sum, 1.0 / jnp.maximum(steps, 1)),
                             control)
    output = (tree.sub(x, y), tree.sub(new_control, control))
    return output, new_control, {'train_loss': loss}

  def server_update(server_state, aggregate, info):
    delta, control_delta = aggregate
    state = opt_update(server_state, delta, info)
    share = info.num_clients.astype(jnp.float32) / info.population
    control = tree.add(server_state.control, tree.scale(control_delta, share))
    return ScaffoldState(state.params, state.opt_state, state.round, control)

  return algorithm.Algorithm(init=init, client_update=client_update,
                             server_update=server_update,
                             init_client_state=init_client_state)
