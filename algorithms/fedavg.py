"""Federated Averaging with server optimizers (FedAvg, FedAvgM, FedOpt).

Each client runs local training from the server's params and returns the
change ``delta_k = x - x_k``; the server treats the weighted mean delta as a
pseudo-gradient for its optimizer:

  x <- x - server_opt(sum_k w_k delta_k / sum_k w_k)

With ``server_optimizer=optax.sgd(1.0)`` this is plain FedAvg (McMahan et al.,
"Communication-Efficient Learning of Deep Networks from Decentralized Data",
AISTATS 2017): the new params are the weighted mean of the clients' params.
Momentum SGD gives FedAvgM (Hsu et al., 2019); ``optax.adam``, ``optax.yogi``
and ``optax.adagrad`` give FedAdam, FedYogi and FedAdagrad (Reddi et al.,
"Adaptive Federated Optimization", ICLR 2021, Algorithm 2).

Example:

  >>> import optax, fedjax_engine as fe
  >>> model = fe.models.logistic_regression(num_features=60, num_classes=10)
  >>> fedadam = fedavg(model, client_optimizer=optax.sgd(0.1),
  ...                  server_optimizer=optax.adam(1e-2, eps=1e-3))
"""

import optax

from fedjax_engine import algorithm
from fedjax_engine import tree
from fedjax_engine.model import Model


def fedavg(model: Model, *, client_optimizer: optax.GradientTransformation,
           server_optimizer: optax.GradientTransformation | None = None
           ) -> algorithm.Algorithm:
  """FedAvg/FedOpt.

  Args:
    model: the model every client trains.
    client_optimizer: local optimizer, restarted every round.
    server_optimizer: applied to the mean client delta; ``optax.sgd(1.0)``
      (plain FedAvg) when None.

  Returns:
    The algorithm; client outputs are deltas, client metrics ``train_loss``.
  """
  return from_local_training(
      algorithm.local_training(model, client_optimizer), server_optimizer)


def from_local_training(train, server_optimizer=None) -> algorithm.Algorithm:
  """FedAvg's round around a local-training function.

  ``train(params, batches, mask, key) -> (params, Mean loss)``, such as
  :func:`fedjax_engine.local_training` returns; methods that change only
  the local objective (FedProx) reuse FedAvg's server side this way.
  """
  server_optimizer = server_optimizer or optax.sgd(1.0)

  def client_update(server_state, client_state, batches, example_mask, key):
    params, loss = train(server_state.params, batches, example_mask, key)
    delta = tree.sub(server_state.params, params)
    return delta, client_state, {'train_loss': loss}

  init, server_update = algorithm.server_optimizer_step(server_optimizer)
  return algorithm.Algorithm(init=init, client_update=client_update,
                             server_update=server_update)
