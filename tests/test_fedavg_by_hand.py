"""FedAvg, FedOpt and FedAvgM rounds worked out by hand on two tiny clients.

The model is 1-D linear regression, ``pred = w * x + b`` with per-example loss
``0.5 * (pred - y)^2``, so one local SGD step with learning rate ``lr`` on a
full batch is

  r_i = w * x_i + b - y_i
  w <- w - lr * mean_i(r_i * x_i)
  b <- b - lr * mean_i(r_i)

Client A has 2 examples, client B has 6. The batch size is 6, so B's every
batch is its whole data and A's every batch is its data three times: each
local step is a full-batch gradient step for both clients, whatever the
shuffling. Every expected number below is derived in the comments from these
rules (exact fractions, then the float literal).
"""

import jax
import numpy as np
import optax

import fedjax_engine as fe

CLIENT_LR = 0.25

# Round 1 from (w, b) = (1, 0), two local steps with lr = 1/4.
#
# Client A, x = [1, 2], y = [1, 3]:
#   step 1: r = [1*1+0-1, 1*2+0-3] = [0, -1]
#           mean(r*x) = (0 + -2)/2 = -1,  mean(r) = -1/2
#           w = 1 - 1/4*(-1) = 5/4,  b = 0 - 1/4*(-1/2) = 1/8
#           per-example losses 0.5*r^2 = [0, 1/2]
#   step 2: r = [5/4+1/8-1, 5/2+1/8-3] = [3/8, -3/8]
#           mean(r*x) = (3/8 - 6/8)/2 = -3/16,  mean(r) = 0
#           w = 5/4 + 1/4*3/16 = 83/64,  b = 1/8
#           losses = [9/128, 9/128]
#   A: (w, b) = (83/64, 1/8), delta = x - x_A = (-19/64, -1/8)
#
# Client B, x = [-2, -1, 0, 1, 2, 3], y = [-1, 0, 1, 1, 2, 3]:
#   step 1: r = x + 0 - y = [-1, -1, -1, 0, 0, 0]
#           r*x = [2, 1, 0, 0, 0, 0]: mean(r*x) = 3/6 = 1/2, mean(r) = -1/2
#           w = 1 - 1/8 = 7/8,  b = 0 + 1/8 = 1/8
#           losses = [1/2, 1/2, 1/2, 0, 0, 0]
#   step 2: r = 7/8*x + 1/8 - y = [-5/8, -3/4, -7/8, 0, -1/8, -1/4]
#           r*x = [5/4, 3/4, 0, 0, -1/4, -3/4]: mean(r*x) = 1/6
#           mean(r) = (-5-6-7+0-1-2)/8/6 = -21/48 = -7/16
#           w = 7/8 - 1/4*1/6 = 5/6,  b = 1/8 + 1/4*7/16 = 15/64
#           losses = [25/128, 9/32, 49/128, 0, 1/128, 1/32], sum 115/128
#   B: (w, b) = (5/6, 15/64), delta = (1/6, -15/64)

# Example-weighted mean (weights 2 and 6, i.e. 1/4 and 3/4):
#   w = 1/4*83/64 + 3/4*5/6 = 83/256 + 160/256 = 243/256 = 0.94921875
#   b = 1/4*1/8 + 3/4*15/64 = 8/256 + 45/256 = 53/256 = 0.20703125
EXAMPLE_WEIGHTED = (0.94921875, 0.20703125)

# Uniform mean:
#   w = (83/64 + 5/6)/2 = (249/192 + 160/192)/2 = 409/384 = 1.0651041666...
#   b = (1/8 + 15/64)/2 = (8/64 + 15/64)/2 = 23/128 = 0.1796875
UNIFORM = (409 / 384, 0.1796875)

# train_loss: every step's batch has 6 entries (A's two examples 3 times), the
# loss is taken before each step's update, and the engine adds totals and
# counts over steps and clients:
#   A: 3*(0 + 1/2) + 3*(9/128 + 9/128) = 3/2 + 27/64
#   B: (1/2 + 1/2 + 1/2) + 115/128 = 3/2 + 115/128
#   (3/2 + 27/64 + 3/2 + 115/128) / 24 = (192 + 54 + 192 + 115)/128/24
#                                     = 553/3072 = 0.18001302083...
TRAIN_LOSS = 553 / 3072


def _check_data(data):
  """The clients the derivations above assume (conftest's two_clients)."""
  assert data.client(0)['x'].tolist() == [1, 2]
  assert data.client(0)['y'].tolist() == [1, 3]
  assert data.client(1)['x'].tolist() == [-2, -1, 0, 1, 2, 3]
  assert data.client(1)['y'].tolist() == [-1, 0, 1, 1, 2, 3]


def _run(model, data, algorithm, *, local_steps, weighting='examples',
         num_rounds=1):
  _check_data(data)
  algorithm = algorithm(model)
  rnd = fe.make_round(
      algorithm, data, clients_per_round=2, weighting=weighting,
      batching=fe.Batching(batch_size=6, local_steps=local_steps))
  state = algorithm.init(model.init(jax.random.key(0)))
  np.testing.assert_array_equal([state.params['w'], state.params['b']], [1, 0])
  history = []
  for r in range(num_rounds):
    state, _, metrics = rnd(state, (), rnd.select([0, 1]), jax.random.key(r))
    history.append(metrics)
  return state, history


def _fedavg(server_optimizer=None):
  return lambda model: fe.algorithms.fedavg(
      model, client_optimizer=optax.sgd(CLIENT_LR),
      server_optimizer=server_optimizer)


def _assert_params(params, expected):
  np.testing.assert_allclose([params['w'], params['b']], expected, rtol=1e-6)


def test_fedavg_example_weighted(linear_model, two_clients):
  # Server SGD with learning rate 1: x <- x - 1 * mean delta = weighted mean
  # of the clients' params.
  state, history = _run(linear_model, two_clients, _fedavg(), local_steps=2)
  _assert_params(state.params, EXAMPLE_WEIGHTED)
  np.testing.assert_allclose(history[0]['train_loss'], TRAIN_LOSS, rtol=1e-6)
  assert int(history[0]['clients']) == 2
  assert int(state.round) == 1


def test_fedavg_uniform_weighting(linear_model, two_clients):
  state, history = _run(linear_model, two_clients, _fedavg(), local_steps=2,
                        weighting='uniform')
  _assert_params(state.params, UNIFORM)
  # Weighting only changes the aggregate; the loss metric counts examples.
  np.testing.assert_allclose(history[0]['train_loss'], TRAIN_LOSS, rtol=1e-6)


def test_fedopt_server_learning_rate(linear_model, two_clients):
  # Server SGD with learning rate 1/2: x <- x - 1/2 * mean delta.
  #   mean delta = x - EXAMPLE_WEIGHTED = (1 - 243/256, 0 - 53/256)
  #              = (13/256, -53/256)
  #   w = 1 - 1/2*13/256 = 499/512 = 0.974609375
  #   b = 0 + 1/2*53/256 = 53/512 = 0.103515625
  state, _ = _run(linear_model, two_clients, _fedavg(optax.sgd(0.5)),
                  local_steps=2)
  _assert_params(state.params, (0.974609375, 0.103515625))


def test_fedavgm_server_momentum(linear_model, two_clients):
  # Server SGD, learning rate 1, momentum 1/2 (optax.sgd: t <- g + 1/2 * t,
  # x <- x - t), two rounds of ONE local step each, so that round 2 stays
  # short to write out.
  #
  # Round 1 from (1, 0); the steps are the first steps worked out above:
  #   A: (5/4, 1/8), delta = (-1/4, -1/8)
  #   B: (7/8, 1/8), delta = (1/8, -1/8)
  #   mean delta (1/4, 3/4) = (-1/16 + 3/32, -1/32 - 3/32) = (1/32, -1/8)
  #   t1 = (1/32, -1/8);  x1 = (1 - 1/32, 0 + 1/8) = (31/32, 1/8)
  #
  # Round 2 from (31/32, 1/8):
  #   A: r = [31/32+1/8-1, 31/16+1/8-3] = [3/32, -15/16]
  #      mean(r*x) = (3/32 - 15/8)/2 = -57/64,  mean(r) = (3/32 - 30/32)/2
  #      = -27/64;  delta = lr * grad = (-57/256, -27/256)
  #   B: r = 31/32*x + 1/8 - y
  #        = [-26/32, -27/32, -28/32, 3/32, 2/32, 1/32]
  #      r*x = [52/32, 27/32, 0, 3/32, 4/32, 3/32], sum 89/32:
  #      mean(r*x) = 89/192;  mean(r) = -75/32/6 = -25/64
  #      delta = (89/768, -25/256)
  #   mean delta: w: 1/4*(-57/256) + 3/4*(89/768) = -57/1024 + 89/1024
  #                  = 32/1024 = 1/32
  #               b: 1/4*(-27/256) + 3/4*(-25/256) = (-27 - 75)/1024
  #                  = -51/512
  #   t2 = (1/32 + 1/2*1/32, -51/512 + 1/2*(-1/8)) = (3/64, -83/512)
  #   x2 = (31/32 - 3/64, 1/8 + 83/512) = (59/64, 147/512)
  #      = (0.921875, 0.287109375)
  # (Without momentum x2 would be (31/32 - 1/32, 1/8 + 51/512) = (15/16,
  # 115/512): the test tells the two apart.)
  state, _ = _run(linear_model, two_clients,
                  _fedavg(optax.sgd(1.0, momentum=0.5)), local_steps=1,
                  num_rounds=2)
  _assert_params(state.params, (0.921875, 0.287109375))
  # The momentum buffer is t2.
  trace = jax.tree.leaves(state.opt_state)
  np.testing.assert_allclose(sorted(float(t) for t in trace),
                             sorted([3 / 64, -83 / 512]), rtol=1e-6)
  assert int(state.round) == 2


def test_fedprox_proximal_term(linear_model, two_clients):
  # FedProx with mu = 1: every step's gradient gains mu * (w - w0), w0 =
  # (1, 0) the round's starting params. Step 1 starts at w0, so it is
  # FedAvg's first step; step 2 adds mu * (w1 - w0).
  #
  # Client A: w1 = (5/4, 1/8), loss gradient at w1 (above) (-3/16, 0)
  #   proximal (1/4, 1/8); sum (1/16, 1/8)
  #   w2 = (5/4 - 1/4*1/16, 1/8 - 1/4*1/8) = (79/64, 3/32)
  # Client B: w1 = (7/8, 1/8), loss gradient at w1 (1/6, -7/16)
  #   proximal (-1/8, 1/8); sum (1/24, -5/16)
  #   w2 = (7/8 - 1/96, 1/8 + 5/64) = (83/96, 13/64)
  # Example-weighted mean (1/4, 3/4):
  #   w = 79/256 + 83/128 = 245/256 = 0.95703125
  #   b = 3/128 + 39/256 = 45/256 = 0.17578125
  # The reported loss leaves the proximal term out: the losses before each
  # step are FedAvg's, so train_loss is TRAIN_LOSS.
  state, history = _run(
      linear_model, two_clients,
      lambda model: fe.algorithms.fedprox(
          model, client_optimizer=optax.sgd(CLIENT_LR), mu=1.0),
      local_steps=2)
  _assert_params(state.params, (0.95703125, 0.17578125))
  np.testing.assert_allclose(history[0]['train_loss'], TRAIN_LOSS, rtol=1e-6)


def test_fedprox_without_mu_is_fedavg(linear_model, two_clients):
  state, _ = _run(
      linear_model, two_clients,
      lambda model: fe.algorithms.fedprox(
          model, client_optimizer=optax.sgd(CLIENT_LR), mu=0.0),
      local_steps=2)
  _assert_params(state.params, EXAMPLE_WEIGHTED)
