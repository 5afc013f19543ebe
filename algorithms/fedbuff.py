"""FedBuff: buffered asynchronous aggregation, with simulated staleness.

Nguyen, Malik, Zhan, Yousefpour, Rabbat, Malek and Huba, "Federated
Learning with Buffered Asynchronous Aggregation", AISTATS 2022, Algorithm 1.
Clients train asynchronously, each from the server model it downloaded,
which may be ``tau`` server updates old by the time its update arrives. The
server adds the arriving updates to a buffer and, once it holds ``K`` of
them, takes a step and empties it:

  Delta_i = y_0 - y_Q              (y_0: the model client i started from)
  w <- w - eta_g * (1/K) * sum_i s(tau_i) * Delta_i

with the paper's polynomial staleness weight ``s(tau) = 1 / sqrt(1 + tau)``
(here ``(1 + tau)^(-staleness_exponent)``). The weighted updates are not
renormalized by the sum of the weights, so stale updates shrink the step, as
in the paper.

The simulation runs one server step per engine round: the round's cohort is
the buffer (``K = clients_per_round``). Each client draws its staleness
uniformly from ``{0, ..., min(max_staleness, round)}`` (never older than the
initial model) and trains from the server model of ``tau`` rounds ago, read
from a ring of the last ``max_staleness + 1`` server models kept in the
server state. The paper's mean over the buffer is uniform
(``weighting='uniform'``); with example weights it is example-weighted. The
server step is ``server_optimizer`` on the mean weighted delta
(``optax.sgd(eta_g)`` is the rule above). ``max_staleness = 0`` is FedAvg.

Example:

  >>> import optax, fedjax_engine as fe
  >>> model = fe.models.logistic_regression(num_features=60, num_classes=10)
  >>> algo = fedbuff(model, client_optimizer=optax.sgd(0.1), max_staleness=4)
"""

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from fedjax_engine import algorithm
from fedjax_engine.model import Mean, Model

# Folded into a client's key for its staleness draw. Local training folds
# step indices into the same key, and no client takes this many steps.
_STALENESS_STREAM = 2**31 - 1


class FedBuffState(NamedTuple):
  """The server state: FedOpt's fields and the ring of recent models.

  ``history`` has the params' structure with a leading axis of
  ``max_staleness + 1``: slot ``tau`` is the server model of ``tau`` rounds
  ago, slot 0 the current one (equal to ``params``).
  """
  params: Any
  opt_state: Any
  round: Any
  history: Any


def fedbuff(model: Model, *, client_optimizer: optax.GradientTransformation,
            server_optimizer: optax.GradientTransformation | None = None,
            max_staleness: int = 4, staleness_exponent: float = 0.5
            ) -> algorithm.Algorithm:
  """FedBuff with simulated uniform staleness.

  The server state holds ``max_staleness + 1`` copies of the params (the
  ring of recent models) besides ``params`` itself; mind the memory for
  large models and staleness bounds.

  Args:
    model: the model every client trains.
    client_optimizer: local optimizer, restarted every round.
    server_optimizer: applied to the mean staleness-weighted client delta;
      ``optax.sgd(1.0)`` (a server learning rate of 1) when None.
    max_staleness: the largest staleness a client draws, an int >= 0: each
      client trains from the server model of tau rounds ago, tau uniform in
      {0, ..., min(max_staleness, round)}. 0 is FedAvg.
    staleness_exponent: a, >= 0: a client's delta is weighted by (1 +
      tau)^(-a); the paper's 0.5 gives 1/sqrt(1 + tau), 0 no discount.

  Returns:
    The algorithm; client metrics ``train_loss`` and ``staleness`` (the
    mean drawn tau).
  """
  if not (isinstance(max_staleness, int) and not isinstance(
      max_staleness, bool) and max_staleness >= 0):
    raise ValueError(f'max_staleness must be an int >= 0, got '
                     f'{max_staleness!r}.')
  if not (isinstance(staleness_exponent, (int, float)) and math.isfinite(
      staleness_exponent) and staleness_exponent >= 0):
    raise ValueError(f'staleness_exponent must be a finite number >= 0, got '
                     f'{staleness_exponent!r}.')
  exponent = float(staleness_exponent)
  train = algorithm.local_training(model, client_optimizer)
  opt_init, opt_update = algorithm.server_optimizer_step(
      server_optimizer or optax.sgd(1.0))

  def init(params):
    state = opt_init(params)
    history = jax.tree.map(
        lambda p: jnp.broadcast_to(p, (max_staleness + 1,) + p.shape), params)
    return FedBuffState(state.params, state.opt_state, state.round, history)

  def client_update(server_state, client_state, batches, example_mask, key):
    oldest = jnp.minimum(server_state.round, max_staleness)
    tau = jax.random.randint(jax.random.fold_in(key, _STALENESS_STREAM), (),
                             0, oldest + 1)
    start = jax.tree.map(lambda h: h[tau], server_state.history)
    params, loss = train(start, batches, example_mask, key)
    weight = jnp.power(1.0 + tau.astype(jnp.float32), -exponent)
    delta = jax.tree.map(lambda w0, w: (w0 - w) * weight.astype(w.dtype),
                         start, params)
    one = jnp.ones((), jnp.float32)
    return delta, client_state, {
        'train_loss': loss, 'staleness': Mean(tau.astype(jnp.float32), one)}

  def server_update(server_state, aggregate, info):
    state = opt_update(server_state, aggregate, info)
    history = jax.tree.map(
        lambda h, p: jnp.concatenate([p[None], h[:-1]]),
        server_state.history, state.params)
    return FedBuffState(state.params, state.opt_state, state.round, history)

  return algorithm.Algorithm(init=init, client_update=client_update,
                             server_update=server_update)
