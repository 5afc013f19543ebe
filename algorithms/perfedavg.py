"""Per-FedAvg: FedAvg on a model-agnostic meta-learning objective.

Fallah, Mokhtari and Ozdaglar, "Personalized Federated Learning with
Theoretical Guarantees: A Model-Agnostic Meta-Learning Approach", NeurIPS
2020, Algorithm 1 with the first-order (FO) gradient estimate; the
Hessian-free (HF) variant is not implemented. The global model ``w`` is
trained for the one-step-adapted objective

  F(w) = 1/n sum_k f_k(w - alpha * grad f_k(w))

Each local step of client ``k`` takes two independent batches ``D`` and
``D'`` and updates

  w_tmp = w - alpha * grad f_k(w; D)
  w <- w - beta * grad f_k(w_tmp; D')

Here the client's consecutive batches are paired: steps ``(2j, 2j + 1)`` of
its plan give ``D`` and ``D'`` of local step ``j``, so ``S`` batches make
``ceil(S / 2)`` local steps. A pair whose second batch is empty (the last
of an odd number of batches, or a padded step) uses ``D`` as ``D'``; a pair
without an example changes nothing. ``alpha`` is ``inner_lr``; the outer
step is ``client_optimizer`` (``optax.sgd(beta)`` is the paper's). The
server averages the clients' deltas as FedAvg does.

A client personalizes by the adaptation the objective assumes: from the
global ``w``, ``personal_steps`` gradient steps of size ``alpha`` on the
mean loss over all of its batches' examples (the paper evaluates after one).

Example:

  >>> import optax, fedjax_engine as fe
  >>> model = fe.models.logistic_regression(num_features=60, num_classes=10)
  >>> algo = perfedavg(model, client_optimizer=optax.sgd(0.1), inner_lr=0.01)
"""

import math

import jax
import jax.numpy as jnp
import optax

from fedjax_engine import algorithm
from fedjax_engine import tree
from fedjax_engine.model import Mean, Model


def _pairs(batches, example_mask):
  """Batches ``[S, B, ...]`` as pairs ``[ceil(S / 2), 2, B, ...]``, an odd
  ``S`` completed by a fully masked step."""
  if example_mask.shape[0] % 2:
    pad = lambda x: jnp.concatenate([x, jnp.zeros_like(x[:1])])
    batches = jax.tree.map(pad, batches)
    example_mask = pad(example_mask)
  pair = lambda x: x.reshape((-1, 2) + x.shape[1:])
  return jax.tree.map(pair, batches), pair(example_mask)


def perfedavg(model: Model, *, client_optimizer: optax.GradientTransformation,
              server_optimizer: optax.GradientTransformation | None = None,
              inner_lr: float = 0.01,
              personal_steps: int = 1) -> algorithm.Algorithm:
  """Per-FedAvg (first-order).

  Args:
    model: the model every client trains.
    client_optimizer: the outer (meta) step on ``grad f_k(w_tmp; D')``;
      ``optax.sgd(beta)`` is the paper's. Restarted every round.
    server_optimizer: applied to the mean client delta; plain averaging
      (``optax.sgd(1.0)``) when None.
    inner_lr: alpha, >= 0: the step size of the inner adaptation step in
      training and of the personalization steps (the paper uses 0.001 to
      0.01).
    personal_steps: gradient steps of size ``inner_lr`` a client takes
      from the global model to personalize it, >= 0 (0: the global model).

  Returns:
    The algorithm; client outputs are deltas. Client metrics ``train_loss``
    (the loss at ``w`` on each local step's ``D``, before the step) and
    ``meta_loss`` (the loss at ``w_tmp`` on ``D'``, the objective the outer
    step descends).
  """
  if not (isinstance(inner_lr, (int, float)) and math.isfinite(inner_lr) and
          inner_lr >= 0):
    raise ValueError(f'inner_lr must be a finite number >= 0, got '
                     f'{inner_lr!r}.')
  if not (isinstance(personal_steps, int) and
          not isinstance(personal_steps, bool) and personal_steps >= 0):
    raise ValueError(f'personal_steps must be an integer >= 0, got '
                     f'{personal_steps!r}.')
  grad_fn = algorithm.loss_grad(model)
  init, server_update = algorithm.server_optimizer_step(
      server_optimizer or optax.sgd(1.0))
  first = lambda t: jax.tree.map(lambda x: x[0], t)
  second = lambda t: jax.tree.map(lambda x: x[1], t)

  def client_update(server_state, client_state, batches, example_mask, key):
    w = server_state.params

    def step(carry, pair, pair_mask, j):
      params, opt_state, loss_sum, meta_sum = carry
      inner_grads, loss = grad_fn(params, first(pair), pair_mask[0],
                                  jax.random.fold_in(key, 2 * j))
      adapted = tree.sub(params, tree.scale(inner_grads, inner_lr))
      has_outer = jnp.any(pair_mask[1])
      outer = tree.where(has_outer, second(pair), first(pair))
      outer_mask = jnp.where(has_outer, pair_mask[1], pair_mask[0])
      grads, meta = grad_fn(adapted, outer, outer_mask,
                            jax.random.fold_in(key, 2 * j + 1))
      params, opt_state = algorithm.optimizer_step(
          client_optimizer, grads, params, opt_state, meta.count > 0)
      return (params, opt_state, jax.tree.map(jnp.add, loss_sum, loss),
              jax.tree.map(jnp.add, meta_sum, meta))

    zero = jnp.zeros((), jnp.float32)
    params, _, loss, meta = algorithm.over_steps(
        step, (w, client_optimizer.init(w), Mean(zero, zero), Mean(zero, zero)),
        *_pairs(batches, example_mask))
    return (tree.sub(w, params), client_state,
            {'train_loss': loss, 'meta_loss': meta})

  def full_gradient(params, batches, example_mask, key):
    """The gradient of the mean loss over every unmasked example."""
    def step(carry, batch, mask, i):
      grad_sum, count = carry
      grads, loss = grad_fn(params, batch, mask, jax.random.fold_in(key, i))
      # The gradient of a batch's mean loss times its count is that of its
      # summed loss, so batches of any fill add up.
      return (tree.add(grad_sum, tree.scale(grads, loss.count)),
              count + loss.count)

    grad_sum, count = algorithm.over_steps(
        step, (tree.zeros_like(params), jnp.zeros((), jnp.float32)), batches,
        example_mask)
    return tree.scale(grad_sum, 1.0 / jnp.maximum(count, 1.0))

  def personalize(server_state, client_state, batches, example_mask, key):
    del client_state
    params = server_state.params
    for s in range(personal_steps):
      grads = full_gradient(params, batches, example_mask,
                            jax.random.fold_in(key, s))
      params = tree.sub(params, tree.scale(grads, inner_lr))
    return params

  return algorithm.Algorithm(init=init, client_update=client_update,
                             server_update=server_update,
                             personalize=personalize)
