"""FedProx: FedAvg whose clients keep close to the server's model.

Each client minimizes its loss plus a proximal term around the server
params ``w^t`` it started from (Li et al., "Federated Optimization in
Heterogeneous Networks", MLSys 2020, Algorithm 2):

  h_k(w; w^t) = F_k(w) + mu/2 * ||w - w^t||^2

so every local step follows ``grad F_k(w) + mu * (w - w^t)``. The server
averages the clients' models as FedAvg does (here: the example-weighted
mean, or another server optimizer on the mean delta). ``mu = 0`` is FedAvg.
The paper's other ingredient, clients doing different amounts of local work,
is a property of the simulation, not of the algorithm.

Example:

  >>> import optax, fedjax_engine as fe
  >>> model = fe.models.logistic_regression(num_features=60, num_classes=10)
  >>> algo = fedprox(model, client_optimizer=optax.sgd(0.01), mu=1.0)
"""

import math

import optax

from fedjax_engine import algorithm
from fedjax_engine.algorithms.fedavg import from_local_training
from fedjax_engine.model import Model


def fedprox(model: Model, *, client_optimizer: optax.GradientTransformation,
            server_optimizer: optax.GradientTransformation | None = None,
            mu: float = 0.01) -> algorithm.Algorithm:
  """FedProx.

  Args:
    model: the model every client trains.
    client_optimizer: local optimizer on the proximal objective (the paper
      uses SGD), restarted every round.
    server_optimizer: applied to the mean client delta; plain averaging
      (``optax.sgd(1.0)``) when None.
    mu: the proximal coefficient, >= 0 (the paper tries 0.001 to 1).

  Returns:
    The algorithm; client metrics ``train_loss`` (without the proximal term).
  """
  if not (isinstance(mu, (int, float)) and math.isfinite(mu) and mu >= 0):
    raise ValueError(f'mu must be a finite number >= 0, got {mu!r}.')
  train = algorithm.local_training(model, client_optimizer,
                                   proximal_mu=float(mu))
  return from_local_training(train, server_optimizer)
