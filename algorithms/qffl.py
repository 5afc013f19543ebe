"""q-FFL (q-FedAvg): fair federated learning by reweighting lossy clients.

Li, Sanjabi, Beirami and Smith, "Fair Resource Allocation in Federated
Learning", ICLR 2020, Algorithm 2 (q-FedAvg). The objective
``sum_k F_k(w)^(q+1) / (q+1)`` weighs clients with a high loss more as ``q``
grows (``q = 0`` is FedAvg). Client ``k`` measures its loss ``F_k`` at the
server params ``w``, trains locally to ``w_k``, and sends, with ``L`` an
estimate of the Lipschitz constant of the gradient (``1 / lr`` for local
SGD with learning rate ``lr``),

  dw_k = L * (w - w_k)
  Delta_k = F_k^q * dw_k
  h_k = q * F_k^(q-1) * ||dw_k||^2 + L * F_k^q

and the server steps ``w <- w - sum_k Delta_k / sum_k h_k``. The sums are
over the cohort; with ``weighting='uniform'`` (the paper's) the engine's
means give the same ratio, with example weights a weighted one. ``F_k`` is
the mean loss over the examples of the client's round batches.

Example:

  >>> import optax, fedjax_engine as fe
  >>> model = fe.models.logistic_regression(num_features=60, num_classes=10)
  >>> algo = qffl(model, client_optimizer=optax.sgd(0.1), q=1.0,
  ...             lipschitz=10.0)
"""

import math

import jax.numpy as jnp
import optax

from fedjax_engine import algorithm
from fedjax_engine import tree
from fedjax_engine.model import Model


def qffl(model: Model, *, client_optimizer: optax.GradientTransformation,
         q: float = 1.0, lipschitz: float = 10.0) -> algorithm.Algorithm:
  """q-FedAvg.

  Args:
    model: the model every client trains.
    client_optimizer: local optimizer, restarted every round.
    q: the fairness exponent, >= 0 (the paper uses 0.001 to 15 by task).
    lipschitz: L, > 0; ``1 / client learning rate`` for local SGD, as in
      the paper's code.

  Returns:
    The algorithm; client metrics ``train_loss`` and ``start_loss`` (the
    loss at the server params, ``F_k``).
  """
  for name, value, low in (('q', q, 0.0), ('lipschitz', lipschitz, None)):
    valid = isinstance(value, (int, float)) and math.isfinite(value) and (
        value >= low if low is not None else value > 0)
    if not valid:
      raise ValueError(f'{name} must be a finite number '
                       f'{">= 0" if low is not None else "> 0"}, got '
                       f'{value!r}.')
  train = algorithm.local_training(model, client_optimizer)
  init, _ = algorithm.server_optimizer_step(optax.sgd(1.0))

  def client_update(server_state, client_state, batches, example_mask, key):
    w = server_state.params
    start = algorithm.loss_over_steps(model, w, batches, example_mask, key)
    f = start.total / jnp.maximum(start.count, 1.0)
    params, loss = train(w, batches, example_mask, key)
    dw = tree.scale(tree.sub(w, params), lipschitz)
    fq = f ** q
    # F^(q-1) * q: written as q * F^q / F would divide by a zero loss.
    h = (q * f ** (q - 1) * jnp.square(tree.l2_norm(dw)) if q else 0.0
         ) + lipschitz * fq
    return ((tree.scale(dw, fq), h), client_state,
            {'train_loss': loss, 'start_loss': start})

  def server_update(server_state, aggregate, info):
    del info
    delta, h = aggregate
    params = tree.sub(server_state.params,
                      tree.scale(delta, 1.0 / jnp.maximum(h, 1e-12)))
    return algorithm.ServerState(params, server_state.opt_state,
                                 server_state.round + 1)

  return algorithm.Algorithm(init=init, client_update=client_update,
                             server_update=server_update)
