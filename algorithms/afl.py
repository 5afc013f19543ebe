"""Agnostic Federated Learning: minimize the worst mixture of client losses.

Mohri, Sivek and Suresh, "Agnostic Federated Learning", ICML 2019. The
objective is the minimax problem over the N clients' losses ``L_k``

  min_w max_{lambda in simplex} sum_k lambda_k L_k(w),

which the paper's Stochastic-AFL solves by a gradient step on ``w`` for the
current mixture ``lambda`` and a projected gradient ascent step on
``lambda``, whose gradient is the loss vector ``(L_1(w), ..., L_N(w))``.
Here the ascent is the mirror-ascent (exponentiated-gradient) variant on the
simplex, a standard alternative that needs no projection:

  lambda_k <- lambda_k * exp(gamma * L_k(w)) / Z.

With federated cohorts. Client ``k`` keeps its unnormalized log weight
``s_k`` (zero at first) in the engine's client-state table, so ``lambda_k =
exp(s_k) / sum_j exp(s_j)``; the server state holds ``log_norm = log(mean_j
exp(s_j))`` over the whole population: the mean rather than the sum, so
it is exactly zero at first whatever N (which ``init`` does not see). In a
round client ``k`` of cohort S

* computes its loss ``L_k`` at the server params ``w`` over its round's
  batches (in evaluation mode, e.g. without dropout) and its relative
  weight ``u_k = exp(s_k - log_norm) = N lambda_k`` (1 under uniform
  weights, at most N: no overflow);
* trains locally from ``w`` to ``w_k`` (one full-batch SGD step gives the
  paper's stochastic AFL gradient step) and sets ``s_k <- s_k + gamma L_k``;
* sends ``(u_k (w - w_k), u_k, u_k * expm1(gamma L_k))``, the last being the
  change of its relative weight.

The aggregate is the SUM of these over the cohort's real clients (weight
> 0; a dropped client's state is not written, so its change is not counted
either): the cohort's example weights play no part, since the clients'
mixture weights replace them. The server steps its optimizer on the
pseudo-gradient

  sum_{k in S} lambda_k (w - w_k) / sum_{k in S} lambda_k

(a self-normalized estimate of ``sum_k lambda_k grad L_k`` over the
population; ``optax.sgd(1.0)`` gives the lambda-weighted mean of the
clients' models) and updates the norm by the cohort's weight changes,
``log_norm <- log_norm + log1p(sum_{k in S} (u_k' - u_k) / N)``, which
keeps it exact for clients outside the cohort too. ``gamma = 0`` is FedAvg
with uniform weighting. A client's mixture weight is ``exp(s_k -
log_norm) / N`` from the table and the server state. ``gamma`` applies per
round a client takes part in: under uniform sampling of ``M`` of ``N``
clients the paper's step on ``lambda`` is ``gamma * M / N`` a round. The
paper restricts ``lambda`` to a convex subset of the simplex and reports
averaged iterates; here ``lambda`` ranges over the whole simplex and the
last iterate is the model.

Example:

  >>> import optax, fedjax_engine as fe
  >>> model = fe.models.logistic_regression(num_features=60, num_classes=10)
  >>> algo = afl(model, client_optimizer=optax.sgd(0.1), lambda_lr=0.1)
"""

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from fedjax_engine import aggregate as aggregate_lib
from fedjax_engine import algorithm
from fedjax_engine import tree
from fedjax_engine.model import Mean, Model


class AFLState(NamedTuple):
  """The server state: FedOpt's fields and ``log_norm``, the log of the
  population's mean ``exp(s_k)``."""
  params: Any
  opt_state: Any
  round: Any
  log_norm: Any


def _client_sum() -> aggregate_lib.Aggregator:
  """``sum_k x_k`` over the clients of positive weight (the real ones)."""
  def init(template):
    return jax.tree.map(lambda t: jnp.zeros(t.shape, t.dtype), template)

  def accumulate(acc, outputs, weights):
    return tree.add(acc, tree.weighted_sum(outputs, weights > 0))

  return aggregate_lib.Aggregator(init, accumulate, lambda acc: acc)


def afl(model: Model, *, client_optimizer: optax.GradientTransformation,
        server_optimizer: optax.GradientTransformation | None = None,
        lambda_lr: float = 0.1) -> algorithm.Algorithm:
  """Agnostic Federated Learning with exponentiated-gradient mixture weights.

  Args:
    model: the model every client trains.
    client_optimizer: local optimizer, restarted every round.
    server_optimizer: applied to the mixture-weighted mean client delta;
      ``optax.sgd(1.0)`` when None.
    lambda_lr: gamma, >= 0: the step size of the exponentiated-gradient
      ascent on the mixture weights, per round a client takes part in (0
      keeps them uniform: FedAvg with uniform weighting).

  Returns:
    The algorithm; the client state is the client's log weight ``s_k``.
    Client metrics ``train_loss``, ``start_loss`` (the loss at the server
    params, ``L_k``) and ``mixture_loss`` (the cohort's start losses weighted
    by their mixture weights, an estimate of the objective).
  """
  if not (isinstance(lambda_lr, (int, float)) and math.isfinite(lambda_lr)
          and lambda_lr >= 0):
    raise ValueError(f'lambda_lr must be a finite number >= 0, got '
                     f'{lambda_lr!r}.')
  train = algorithm.local_training(model, client_optimizer)
  opt_init, opt_update = algorithm.server_optimizer_step(
      server_optimizer or optax.sgd(1.0))

  def init(params):
    state = opt_init(params)
    return AFLState(state.params, state.opt_state, state.round,
                    jnp.zeros((), jnp.float32))

  def init_client_state(params):
    del params
    return jnp.zeros((), jnp.float32)

  def client_update(server_state, log_weight, batches, example_mask, key):
    w = server_state.params
    start = algorithm.loss_over_steps(model, w, batches, example_mask, key,
                                      train=False)
    start_loss = start.total / jnp.maximum(start.count, 1.0)
    params, loss = train(w, batches, example_mask, key)
    weight = jnp.exp(log_weight - server_state.log_norm)
    step = lambda_lr * start_loss
    output = (tree.scale(tree.sub(w, params), weight), weight,
              weight * jnp.expm1(step))
    return output, log_weight + step, {
        'train_loss': loss, 'start_loss': start,
        'mixture_loss': Mean(weight * start_loss, weight)}

  def server_update(server_state, aggregate, info):
    weighted_delta, weight, weight_change = aggregate
    delta = jax.tree.map(lambda t: t / jnp.where(weight > 0, weight, 1.0),
                         weighted_delta)
    state = opt_update(server_state, delta, info)
    log_norm = server_state.log_norm + jnp.log1p(
        weight_change / info.population.astype(jnp.float32))
    return AFLState(state.params, state.opt_state, state.round, log_norm)

  return algorithm.Algorithm(init=init, client_update=client_update,
                             server_update=server_update,
                             aggregator=_client_sum(),
                             init_client_state=init_client_state)
