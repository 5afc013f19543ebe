"""FedNova worked out by hand: clients that take different numbers of steps.

Model: ``pred = w * x + b``, loss ``0.5 * (pred - y)^2``, SGD lr 1/4, one
local epoch of batch 2, from (w, b) = (1, 0).

Client A: x = [1, 2], y = [1, 3]: one step (its whole data).
  r = [0, -1]; g = (mean(r * x), mean(r)) = (-1, -1/2)
  y_A = (1 + 1/4, 0 + 1/8) = (5/4, 1/8); x - y_A = (-1/4, -1/8); tau_A = 1
  d_A = (-1/4, -1/8)
Client B: six copies of x = 1, y = 2: three steps, every batch the same
point, r = w + b - 2 and g = (r, r).
  step 1: r = -1:    (5/4, 1/4)
  step 2: r = -1/2:  (11/8, 3/8)
  step 3: r = -1/4:  (23/16, 7/16)
  x - y_B = (-7/16, -7/16); tau_B = 3; d_B = (-7/48, -7/48)
Example weights 2 and 6: p = (1/4, 3/4).
  sum p d = (-1/16 - 7/64, -1/32 - 7/64) = (-11/64, -9/64)
  tau_eff = 1/4 * 1 + 3/4 * 3 = 5/2
  x1 = x - tau_eff * sum p d = (1 + 55/128, 45/128) = (183/128, 45/128)
FedAvg would give x - sum p (x - y) = (1 + 1/16 + 21/64, 1/32 + 21/64)
= (89/64, 23/64): B's three steps pull it further.
"""

import jax
import numpy as np
import optax

import fedjax_engine as fe


def test_fednova_normalizes_by_local_steps(linear_model):
  f32 = lambda v: np.array(v, np.float32)
  data = fe.FederatedData.from_clients({
      'A': {'x': f32([1, 2]), 'y': f32([1, 3])},
      'B': {'x': f32([1] * 6), 'y': f32([2] * 6)},
  })
  results = {}
  for name in ('fednova', 'fedavg'):
    algorithm = getattr(fe.algorithms, name)(
        linear_model, client_optimizer=optax.sgd(0.25))
    rnd = fe.make_round(algorithm, data, clients_per_round=2,
                        batching=fe.Batching(batch_size=2, local_epochs=1))
    state = algorithm.init(linear_model.init(jax.random.key(0)))
    state, _, _ = rnd(state, (), rnd.select([0, 1]), jax.random.key(0))
    results[name] = [float(state.params['w']), float(state.params['b'])]
  np.testing.assert_allclose(results['fednova'], [183 / 128, 45 / 128],
                             rtol=1e-6)
  np.testing.assert_allclose(results['fedavg'], [89 / 64, 23 / 64], rtol=1e-6)
