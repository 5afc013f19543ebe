"""MimeLite: clients apply the server's momentum, frozen for the round.

Karimireddy et al., "Breaking the centralized barrier for cross-device
federated learning" (Mime), NeurIPS 2021, Algorithm 1 without the SVRG
correction (MimeLite), with SGD with momentum as the base optimizer. The
server keeps params ``x`` and the momentum ``m``. Each client takes its
local steps with the momentum held fixed,

  y <- y - lr * ((1 - beta) * g_i(y) + beta * m)

(the client optimizer applied to the bracket: ``optax.sgd(lr)`` is the
paper's rule), and also computes the gradient of its loss at ``x``, ``g_i(x)``, averaged
over the examples of its round's batches. The server moves the params by
its optimizer on the mean client delta (plain averaging by default) and
updates the momentum with the clients' gradients at ``x``, as centralized
momentum SGD would:

  m <- (1 - beta) * mean_i g_i(x) + beta * m

Mime proper also corrects each local gradient with the cohort's mean
gradient at ``x``, which needs a first exchange within the round: see
``algorithms/mime.py``.

Example:

  >>> import optax, fedjax_engine as fe
  >>> model = fe.models.logistic_regression(num_features=60, num_classes=10)
  >>> algo = mimelite(model, client_optimizer=optax.sgd(0.1), momentum=0.9)
"""

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from fedjax_engine import algorithm
from fedjax_engine import tree
from fedjax_engine.model import Mean, Model


class MimeLiteState(NamedTuple):
  """The server state: FedOpt's fields and the momentum ``m``."""
  params: Any
  opt_state: Any
  round: Any
  momentum: Any


def mimelite(model: Model, *, client_optimizer: optax.GradientTransformation,
             momentum: float = 0.9,
             server_optimizer: optax.GradientTransformation | None = None
             ) -> algorithm.Algorithm:
  """MimeLite with momentum SGD.

  Args:
    model: the model every client trains.
    client_optimizer: applied to ``(1 - beta) * g + beta * m`` at every
      local step, restarted every round; ``optax.sgd(lr)`` for the paper.
    momentum: beta, in [0, 1).
    server_optimizer: applied to the mean client delta; plain averaging
      (``optax.sgd(1.0)``) when None.

  Returns:
    The algorithm; client metrics ``train_loss``.
  """
  if not (isinstance(momentum, (int, float)) and 0 <= momentum < 1):
    raise ValueError(f'momentum must be in [0, 1), got {momentum!r}.')
  beta = float(momentum)
  opt_init, opt_update = algorithm.server_optimizer_step(
      server_optimizer or optax.sgd(1.0))
  grad_fn = algorithm.loss_grad(model)

  def init(params):
    state = opt_init(params)
    return MimeLiteState(state.params, state.opt_state, state.round,
                         tree.zeros_like(params))

  def client_update(server_state, client_state, batches, example_mask, key):
    x, m = server_state.params, server_state.momentum

    grad_at_x = algorithm.gradient_over_steps(model, x, batches,
                                              example_mask, key)
    zero = jnp.zeros((), jnp.float32)

    def step(carry, batch, mask, i):
      params, opt_state, loss_sum = carry
      grads, loss = grad_fn(params, batch, mask, jax.random.fold_in(key, i))
      direction = jax.tree.map(lambda g, v: (1 - beta) * g + beta * v,
                               grads, m)
      params, opt_state = algorithm.optimizer_step(
          client_optimizer, direction, params, opt_state, loss.count > 0)
      return params, opt_state, jax.tree.map(jnp.add, loss_sum, loss)

    y, _, loss = algorithm.over_steps(
        step, (x, client_optimizer.init(x), Mean(zero, zero)), batches,
        example_mask)
    return (tree.sub(x, y), grad_at_x), client_state, {'train_loss': loss}

  def server_update(server_state, aggregate, info):
    delta, mean_grad = aggregate
    state = opt_update(server_state, delta, info)
    m = jax.tree.map(lambda g, v: (1 - beta) * g + beta * v, mean_grad,
                     server_state.momentum)
    return MimeLiteState(state.params, state.opt_state, state.round, m)

  return algorithm.Algorithm(init=init, client_update=client_update,
                             server_update=server_update)
