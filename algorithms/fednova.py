"""FedNova: averaging normalized by each client's amount of local work.

When clients take different numbers of local steps, FedAvg's average leans
toward the clients that took more, and the global model converges to the
optimum of a different objective. FedNova (Wang et al., "Tackling the
Objective Inconsistency Problem in Heterogeneous Federated Optimization",
NeurIPS 2020, eq. 6 with plain local SGD) divides client ``i``'s change by
its number of local steps ``tau_i`` and rescales the weighted mean by the
weighted mean number of steps:

  d_i = (x - y_i) / tau_i
  x <- x - tau_eff * sum_i p_i d_i,   tau_eff = sum_i p_i tau_i

``p_i`` are the round's aggregation weights (example counts by default, as
in the paper). ``tau_i`` counts the steps that held examples, so clients
with local epochs of different sizes, or stragglers that stop early, are
normalized by the work they did. Other server optimizers take
``tau_eff * sum_i p_i d_i`` as their pseudo-gradient. With local momentum
the paper's normalizer differs; this module normalizes by the step count,
the paper's rule for SGD.

Example:

  >>> import optax, fedjax_engine as fe
  >>> model = fe.models.logistic_regression(num_features=60, num_classes=10)
  >>> algo = fednova(model, client_optimizer=optax.sgd(0.1))
"""

import jax.numpy as jnp
import optax

from fedjax_engine import algorithm
from fedjax_engine import tree
from fedjax_engine.model import Model


def fednova(model: Model, *, client_optimizer: optax.GradientTransformation,
            server_optimizer: optax.GradientTransformation | None = None
            ) -> algorithm.Algorithm:
  """FedNova with local SGD.

  Args:
    model: the model every client trains.
    client_optimizer: local optimizer (the paper's rule assumes SGD),
      restarted every round.
    server_optimizer: applied to ``tau_eff * sum_i p_i d_i``; plain
      ``optax.sgd(1.0)`` when None.

  Returns:
    The algorithm; client metrics ``train_loss``.
  """
  server_optimizer = server_optimizer or optax.sgd(1.0)
  train = algorithm.local_training(model, client_optimizer)
  opt_init, opt_update = algorithm.server_optimizer_step(server_optimizer)

  def client_update(server_state, client_state, batches, example_mask, key):
    params, loss = train(server_state.params, batches, example_mask, key)
    steps = algorithm.busy_steps(example_mask).astype(jnp.float32)
    normalized = tree.scale(tree.sub(server_state.params, params),
                            1.0 / jnp.maximum(steps, 1.0))
    return (normalized, steps), client_state, {'train_loss': loss}

  def server_update(server_state, aggregate, info):
    mean_normalized, tau_eff = aggregate
    return opt_update(server_state, tree.scale(mean_normalized, tau_eff),
                      info)

  return algorithm.Algorithm(init=opt_init, client_update=client_update,
                             server_update=server_update)
