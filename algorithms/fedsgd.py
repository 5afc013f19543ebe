"""Federated SGD: one server step per round on the clients' mean gradient.

Each client computes the gradient of its mean loss over all the examples in
its batches, at the server's params, without updating; the server averages
the gradients (weighted by examples, this is the full-batch gradient over the
cohort's data) and applies ``server_optimizer``. McMahan et al.,
"Communication-Efficient Learning of Deep Networks from Decentralized Data",
AISTATS 2017, Section 2 (FedSGD).

Example:

  >>> import optax, fedjax_engine as fe
  >>> model = fe.models.logistic_regression(num_features=60, num_classes=10)
  >>> algo = fedsgd(model, server_optimizer=optax.sgd(0.5))
"""

import jax
import jax.numpy as jnp
import optax

from fedjax_engine import algorithm
from fedjax_engine import tree
from fedjax_engine.model import Model


def fedsgd(model: Model, *, server_optimizer: optax.GradientTransformation
           ) -> algorithm.Algorithm:
  """FedSGD.

  Args:
    model: the model.
    server_optimizer: applied to the mean client gradient (``optax.sgd(lr)``
      for the paper's method).
  """
  def summed_loss(params, batch, mask, key):
    _, loss = algorithm.masked_loss(model, params, batch, mask, key)
    return loss.total, loss

  grad_fn = jax.grad(summed_loss, has_aux=True)

  def client_update(server_state, client_state, batches, example_mask, key):
    params = server_state.params

    def step(acc, batch, mask, i):
      grads, loss = grad_fn(params, batch, mask, jax.random.fold_in(key, i))
      grad_sum, total, count = acc
      return tree.add(grad_sum, grads), total + loss.total, count + loss.count

    acc0 = (tree.zeros_like(params), jnp.zeros(()), jnp.zeros(()))
    grad_sum, total, count = algorithm.over_steps(step, acc0, batches,
                                                  example_mask)
    grads = tree.scale(grad_sum, 1.0 / jnp.maximum(count, 1.0))
    return grads, client_state, {'train_loss': algorithm.Mean(total, count)}

  init, server_update = algorithm.server_optimizer_step(server_optimizer)
  return algorithm.Algorithm(init=init, client_update=client_update,
                             server_update=server_update)
