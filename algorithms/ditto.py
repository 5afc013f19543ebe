"""Ditto: a personal model per client, pulled toward the global one.

Li, Hu, Beirami and Smith, "Ditto: Fair and Robust Federated Learning
Through Personalization", ICML 2021, Algorithm 1. The global model ``w`` is
trained as FedAvg trains it. Each client also keeps a personal model ``v_k``
(in the engine's client-state table, starting at the initial global
params) and, in every round it takes part in, takes the same number of local
steps on

  F_k(v) + lambda/2 * ||v - w^t||^2

from its own ``v_k``, ``w^t`` being the global model the round started
from. ``lambda = 0`` gives purely local models, large ``lambda`` the global
one. The server state's ``params`` are the global model; the personal
models are the client-state table, and what personalized evaluation tests
(``personalize``).

Example:

  >>> import optax, fedjax_engine as fe
  >>> model = fe.models.logistic_regression(num_features=60, num_classes=10)
  >>> algo = ditto(model, client_optimizer=optax.sgd(0.1), ditto_lambda=0.1)
"""

import math

import optax

from fedjax_engine import algorithm
from fedjax_engine import tree
from fedjax_engine.model import Model


def ditto(model: Model, *, client_optimizer: optax.GradientTransformation,
          server_optimizer: optax.GradientTransformation | None = None,
          ditto_lambda: float = 0.1) -> algorithm.Algorithm:
  """Ditto.

  Args:
    model: the model every client trains.
    client_optimizer: local optimizer for both the global and the personal
      updates, restarted every round.
    server_optimizer: applied to the mean client delta of the global model;
      plain averaging (``optax.sgd(1.0)``) when None.
    ditto_lambda: lambda, >= 0: how strongly personal models are pulled to
      the global one (the paper tunes it in {0.05, 0.1, 0.2, 0.5, 1, 2}).

  Returns:
    The algorithm; the client state is the client's personal model. Client
    metrics ``train_loss`` (global update) and ``personal_loss``.
  """
  if not (isinstance(ditto_lambda, (int, float)) and math.isfinite(
      ditto_lambda) and ditto_lambda >= 0):
    raise ValueError(f'ditto_lambda must be a finite number >= 0, got '
                     f'{ditto_lambda!r}.')
  train = algorithm.local_training(model, client_optimizer)
  personal_train = algorithm.local_training(
      model, client_optimizer, proximal_mu=float(ditto_lambda))
  init, server_update = algorithm.server_optimizer_step(
      server_optimizer or optax.sgd(1.0))

  def client_update(server_state, personal, batches, example_mask, key):
    w = server_state.params
    params, loss = train(w, batches, example_mask, key)
    personal, personal_loss = personal_train(personal, batches, example_mask,
                                             key, anchor=w)
    return (tree.sub(w, params), personal,
            {'train_loss': loss, 'personal_loss': personal_loss})

  def personalize(server_state, personal, batches, example_mask, key):
    del server_state, batches, example_mask, key
    return personal

  return algorithm.Algorithm(init=init, client_update=client_update,
                             server_update=server_update,
                             init_client_state=lambda params: params,
                             personalize=personalize)
