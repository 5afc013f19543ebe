"""Mime: local steps that mimic centralized momentum SGD, drift corrected.

Karimireddy, Jaggi, Kale, Mohri, Reddi, Stich and Suresh, "Breaking the
centralized barrier for cross-device federated learning", NeurIPS 2021,
Algorithm 1 with SGD with momentum as the base optimizer. The server keeps
params ``x`` and the momentum ``m``. A round has two exchanges. First every
client of the cohort sends ``g_i(x)``, the gradient of its loss at ``x``
averaged over the examples of its round's batches, and the server keeps
their mean ``c = mean_i g_i(x)`` (``Algorithm.prepare``). Then each client
starts from ``y = x`` and, on each of its batches ``b``, steps with the
momentum held fixed and the gradient corrected as in SVRG,

  y <- y - lr * ((1 - beta) * (g_i(y; b) - g_i(x; b) + c) + beta * m)

``g_i(x; b)`` being the same batch's gradient at ``x`` (same randomness, so
the same dropout), and sends ``x - y``. The client optimizer is applied to
the bracket: ``optax.sgd(lr)`` is the paper's rule. The server moves the
params by its optimizer on the mean client delta (plain averaging by
default) and updates the momentum with ``c``, as centralized momentum SGD
would:

  m <- (1 - beta) * c + beta * m

MimeLite (``algorithms/mimelite.py``) is the same without the correction,
and so without the first exchange.

Example:

  >>> import optax, fedjax_engine as fe
  >>> model = fe.models.logistic_regression(num_features=60, num_classes=10)
  >>> algo = mime(model, client_optimizer=optax.sgd(0.1), momentum=0.9)
"""

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from fedjax_engine import algorithm
from fedjax_engine import tree
from fedjax_engine.model import Mean, Model


class MimeState(NamedTuple):
  """The server state: FedOpt's fields, the momentum ``m`` and the cohort's
  mean gradient ``c`` at ``params``, set by the round's first exchange."""
  params: Any
  opt_state: Any
  round: Any
  momentum: Any
  full_grad: Any


def mime(model: Model, *, client_optimizer: optax.GradientTransformation,
         server_optimizer: optax.GradientTransformation | None = None,
         momentum: float = 0.9) -> algorithm.Algorithm:
  """Mime with momentum SGD.

  Args:
    model: the model every client trains.
    client_optimizer: applied to ``(1 - beta) * (g(y) - g(x) + c) + beta *
      m`` at every local step, restarted every round; ``optax.sgd(lr)`` for
      the paper.
    server_optimizer: applied to the mean client delta; plain averaging
      (``optax.sgd(1.0)``) when None.
    momentum: beta, in [0, 1).

  Returns:
    The algorithm, with a first exchange (``prepare``) for the cohort's mean
    gradient at the server params; client metrics ``train_loss``.
  """
  if not (isinstance(momentum, (int, float)) and 0 <= momentum < 1):
    raise ValueError(f'momentum must be in [0, 1), got {momentum!r}.')
  beta = float(momentum)
  opt_init, opt_update = algorithm.server_optimizer_step(
      server_optimizer or optax.sgd(1.0))
  grad_fn = algorithm.loss_grad(model)

  def init(params):
    state = opt_init(params)
    return MimeState(state.params, state.opt_state, state.round,
                     tree.zeros_like(params), tree.zeros_like(params))

  def gradient_at_server(server_state, client_state, batches, example_mask,
                         key):
    del client_state
    return algorithm.gradient_over_steps(model, server_state.params, batches,
                                         example_mask, key)

  def keep_full_grad(server_state, mean_grad, info):
    del info
    return server_state._replace(full_grad=mean_grad)

  def client_update(server_state, client_state, batches, example_mask, key):
    x, m, c = (server_state.params, server_state.momentum,
               server_state.full_grad)

    def step(carry, batch, mask, i):
      y, opt_state, loss_sum = carry
      step_key = jax.random.fold_in(key, i)
      grads, loss = grad_fn(y, batch, mask, step_key)
      # The step's own key at x too, so dropout cancels in the correction.
      grads_at_x, _ = grad_fn(x, batch, mask, step_key)
      direction = jax.tree.map(
          lambda g, g0, cc, v: (1 - beta) * (g - g0 + cc) + beta * v,
          grads, grads_at_x, c, m)
      y, opt_state = algorithm.optimizer_step(
          client_optimizer, direction, y, opt_state, loss.count > 0)
      return y, opt_state, jax.tree.map(jnp.add, loss_sum, loss)

    zero = jnp.zeros((), jnp.float32)
    y, _, loss = algorithm.over_steps(
        step, (x, client_optimizer.init(x), Mean(zero, zero)), batches,
        example_mask)
    return tree.sub(x, y), client_state, {'train_loss': loss}

  def server_update(server_state, delta, info):
    state = opt_update(server_state, delta, info)
    c = server_state.full_grad
    m = jax.tree.map(lambda g, v: (1 - beta) * g + beta * v, c,
                     server_state.momentum)
    return MimeState(state.params, state.opt_state, state.round, m, c)

  return algorithm.Algorithm(
      init=init, client_update=client_update, server_update=server_update,
      prepare=algorithm.Prepare(client=gradient_at_server,
                                server=keep_full_grad))
