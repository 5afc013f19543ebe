"""FedSGD worked out by hand on two tiny clients.

The linear_model and two_clients fixtures (conftest.py), as in
test_fedavg_by_hand.py: 1-D linear regression ``pred = w * x + b``,
per-example loss ``0.5 * (pred - y)^2``, so a client's mean gradient is

  r_i = w * x_i + b - y_i
  dL/dw = mean_i(r_i * x_i),  dL/db = mean_i(r_i)

and the server takes one step ``x <- x - lr * (example-weighted mean
gradient)``. Client A has 2 examples, client B has 6, the batch size is 6, so
each client's batch is its data (A's three times over): the client gradient
is the full-batch gradient whatever the shuffling.
"""

import jax
import numpy as np
import optax
import pytest

import fedjax_engine as fe

# Gradients at (w, b) = (1, 0):
#   A, x = [1, 2], y = [1, 3]: r = [0, -1], r*x = [0, -2]
#      grad = (-2/2, -1/2) = (-1, -1/2)
#   B, x = [-2, -1, 0, 1, 2, 3], y = [-1, 0, 1, 1, 2, 3]: r = x - y
#      = [-1, -1, -1, 0, 0, 0], r*x = [2, 1, 0, 0, 0, 0]
#      grad = (3/6, -3/6) = (1/2, -1/2)
# Example-weighted mean (2 and 6 examples):
#   w: (2*(-1) + 6*(1/2))/8 = 1/8,  b: (2*(-1/2) + 6*(-1/2))/8 = -1/2
# Server SGD with lr 1/2:
#   w = 1 - 1/2*1/8 = 15/16 = 0.9375,  b = 0 - 1/2*(-1/2) = 1/4 = 0.25
EXAMPLE_WEIGHTED = (0.9375, 0.25)
# Uniform mean: w: (-1 + 1/2)/2 = -1/4,  b: (-1/2 - 1/2)/2 = -1/2
#   w = 1 - 1/2*(-1/4) = 9/8 = 1.125,  b = 1/4 = 0.25
UNIFORM = (1.125, 0.25)
# train_loss at (1, 0), losses 0.5*r^2: A [0, 1/2] three times (total 3/2,
# count 6), B [1/2, 1/2, 1/2, 0, 0, 0] (total 3/2, count 6):
#   (3/2 + 3/2) / 12 = 1/4
TRAIN_LOSS = 0.25


@pytest.mark.parametrize('weighting,expected', [
    ('examples', EXAMPLE_WEIGHTED), ('uniform', UNIFORM)])
def test_fedsgd_one_round(weighting, expected, linear_model, two_clients):
  model, data = linear_model, two_clients
  assert data.client(0)['x'].tolist() == [1, 2]
  assert data.client(0)['y'].tolist() == [1, 3]
  assert data.client(1)['x'].tolist() == [-2, -1, 0, 1, 2, 3]
  assert data.client(1)['y'].tolist() == [-1, 0, 1, 1, 2, 3]
  algorithm = fe.algorithms.fedsgd(model, server_optimizer=optax.sgd(0.5))
  rnd = fe.make_round(algorithm, data, clients_per_round=2,
                      weighting=weighting,
                      batching=fe.Batching(batch_size=6, local_steps=1))
  state = algorithm.init(model.init(jax.random.key(0)))
  state, _, metrics = rnd(state, (), rnd.select([0, 1]), jax.random.key(7))
  np.testing.assert_allclose([state.params['w'], state.params['b']], expected,
                             rtol=1e-6)
  np.testing.assert_allclose(metrics['train_loss'], TRAIN_LOSS, rtol=1e-6)
  assert int(metrics['clients']) == 2
  assert int(state.round) == 1
