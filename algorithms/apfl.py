"""APFL: a personal model mixed with the global one by a per-client weight.

Deng, Kamani and Mahdavi, "Adaptive Personalized Federated Learning",
arXiv:2003.13461, 2020, Algorithm 1. Each client ``k`` keeps a personal
model ``v_k`` (starting at the initial global params) and a mixing weight
``alpha_k`` in [0, 1] (starting at ``alpha``) in the engine's client-state
table; its personalized model is

  vbar_k = alpha_k * v_k + (1 - alpha_k) * w_k.

In a round the client starts a local copy ``w_k`` at the global model ``w``
and, at every local step, with one batch and the step's values of ``w_k``,
``v_k`` and ``alpha_k``:

  w_k     <- w_k - lr * grad F_k(w_k)
  v_k     <- v_k - lr * alpha_k * grad F_k(vbar_k)
  alpha_k <- clip(alpha_k - alpha_lr * <v_k - w_k, grad F_k(vbar_k)>, 0, 1)

the last only with ``adaptive_alpha`` (``alpha_k * grad F_k(vbar_k)`` and
``<v_k - w_k, grad F_k(vbar_k)>`` are the gradients of ``F_k(vbar_k)`` with
respect to ``v_k`` and ``alpha_k``). The client sends ``w - w_k``, which the
server averages as FedAvg does. A client's personalized model for
evaluation is ``alpha_k * v_k + (1 - alpha_k) * w`` with the current global
``w``.

Example:

  >>> import optax, fedjax_engine as fe
  >>> model = fe.models.logistic_regression(num_features=60, num_classes=10)
  >>> algo = apfl(model, client_optimizer=optax.sgd(0.1), alpha=0.25,
  ...             adaptive_alpha=True)
"""

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from fedjax_engine import algorithm
from fedjax_engine import tree
from fedjax_engine.model import Mean, Model


class APFLState(NamedTuple):
  """A client's state: its personal model ``v_k`` and weight ``alpha_k``."""
  personal: Any
  alpha: Any


def _mix(alpha, personal, shared):
  return jax.tree.map(lambda v, w: alpha * v + (1 - alpha) * w, personal,
                      shared)


def _inner(a, b):
  return sum(jnp.vdot(x, y) for x, y in zip(jax.tree.leaves(a),
                                            jax.tree.leaves(b)))


def apfl(model: Model, *, client_optimizer: optax.GradientTransformation,
         server_optimizer: optax.GradientTransformation | None = None,
         alpha: float = 0.25, adaptive_alpha: bool = False,
         alpha_lr: float = 0.01) -> algorithm.Algorithm:
  """APFL.

  Args:
    model: the model every client trains.
    client_optimizer: local optimizer for both the local copy of the global
      model and the personal model (each with its own state), restarted
      every round.
    server_optimizer: applied to the mean client delta of the global model;
      plain averaging (``optax.sgd(1.0)``) when None.
    alpha: every client's initial mixing weight, in [0, 1]: 0 gives the
      global model, 1 a purely personal one (the paper tries 0.25, 0.5 and
      0.75).
    adaptive_alpha: whether each client learns its mixing weight by
      projected gradient descent on its loss (the paper's adaptive APFL);
      else the weights stay at ``alpha``.
    alpha_lr: the step size of the mixing-weight updates, >= 0; used only
      with ``adaptive_alpha``.

  Returns:
    The algorithm; the client state is an :class:`APFLState`. Client
    metrics ``train_loss`` (of the local copy of the global model) and
    ``personal_loss`` (of the mixed model ``vbar_k``), each step's before
    its update.
  """
  if not (isinstance(alpha, (int, float)) and not isinstance(alpha, bool)
          and 0 <= alpha <= 1):
    raise ValueError(f'alpha must be a number in [0, 1], got {alpha!r}.')
  if not isinstance(adaptive_alpha, bool):
    raise ValueError(f'adaptive_alpha must be a bool, got '
                     f'{adaptive_alpha!r}.')
  if not (isinstance(alpha_lr, (int, float)) and not isinstance(alpha_lr, bool)
          and math.isfinite(alpha_lr) and alpha_lr >= 0):
    raise ValueError(f'alpha_lr must be a finite number >= 0, got '
                     f'{alpha_lr!r}.')
  grad_fn = algorithm.loss_grad(model)
  init, server_update = algorithm.server_optimizer_step(
      server_optimizer or optax.sgd(1.0))

  def init_client_state(params):
    return APFLState(params, jnp.asarray(alpha, jnp.float32))

  def client_update(server_state, client_state, batches, example_mask, key):
    w = server_state.params

    def step(carry, batch, mask, i):
      local, local_opt, personal, personal_opt, weight, losses = carry
      step_key = jax.random.fold_in(key, i)
      mixed = _mix(weight, personal, local)
      # Both models see the same batch and, for stochastic layers, the
      # same key.
      local_grads, loss = grad_fn(local, batch, mask, step_key)
      mixed_grads, personal_loss = grad_fn(mixed, batch, mask, step_key)
      active = loss.count > 0
      new_weight = weight
      if adaptive_alpha:
        alpha_grad = _inner(tree.sub(personal, local), mixed_grads)
        new_weight = jnp.where(
            active, jnp.clip(weight - alpha_lr * alpha_grad, 0.0, 1.0),
            weight)
      local, local_opt = algorithm.optimizer_step(
          client_optimizer, local_grads, local, local_opt, active)
      personal, personal_opt = algorithm.optimizer_step(
          client_optimizer, tree.scale(mixed_grads, weight), personal,
          personal_opt, active)
      losses = jax.tree.map(jnp.add, losses, (loss, personal_loss))
      return local, local_opt, personal, personal_opt, new_weight, losses

    zero = jnp.zeros((), jnp.float32)
    personal, weight = client_state
    local, _, personal, _, weight, (loss, personal_loss) = (
        algorithm.over_steps(
            step, (w, client_optimizer.init(w), personal,
                   client_optimizer.init(personal), weight,
                   (Mean(zero, zero), Mean(zero, zero))),
            batches, example_mask))
    return (tree.sub(w, local), APFLState(personal, weight),
            {'train_loss': loss, 'personal_loss': personal_loss})

  def personalize(server_state, client_state, batches, example_mask, key):
    del batches, example_mask, key
    return _mix(client_state.alpha, client_state.personal,
                server_state.params)

  return algorithm.Algorithm(init=init, client_update=client_update,
                             server_update=server_update,
                             init_client_state=init_client_state,
                             personalize=personalize)
