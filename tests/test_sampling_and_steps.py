"""Uniform sampling, busy-step loops and the step_utilization metric."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import fedjax_engine as fe


def test_uniform_draws_distinct_clients_in_range_reproducibly():
  sample = fe.sampling.uniform(num_clients=37, clients_per_round=10,
                               key=jax.random.key(0))
  for r in range(20):
    ids = sample(r)
    assert ids.shape == (10,) and ids.dtype == np.int32
    assert len(set(ids.tolist())) == 10
    assert ids.min() >= 0 and ids.max() < 37
    np.testing.assert_array_equal(ids, sample(r))
  assert not np.array_equal(sample(0), sample(1))
  np.testing.assert_array_equal(np.sort(fe.sampling.uniform(
      num_clients=5, clients_per_round=5, key=jax.random.key(1))(3)),
                                np.arange(5))


def test_uniform_on_device_equals_host():
  sample = fe.sampling.uniform(num_clients=100, clients_per_round=7,
                               key=jax.random.key(3))
  on_device = jax.jit(jax.vmap(sample.on_device))(jnp.arange(5))
  for r in range(5):
    np.testing.assert_array_equal(np.asarray(on_device[r]), sample(r))


def test_uniform_is_uniform():
  # 4000 rounds of 10 of 50 clients: each client's count is Binomial(4000,
  # 0.2), mean 800, sd 25.3. Chi-square over the 50 counts has 49 degrees
  # of freedom; 100 is beyond its 99.99th percentile (about 96).
  k, c, rounds = 50, 10, 4000
  sample = fe.sampling.uniform(num_clients=k, clients_per_round=c,
                               key=jax.random.key(5))
  ids = jax.jit(jax.vmap(sample.on_device))(jnp.arange(rounds))
  counts = np.bincount(np.asarray(ids).ravel(), minlength=k)
  expected = rounds * c / k
  assert np.sum((counts - expected) ** 2 / expected) < 100


@pytest.mark.parametrize('c', [0, 6])
def test_uniform_refuses_bad_cohort_size(c):
  with pytest.raises(ValueError, match=rf'must lie in \[1, 5\].*got {c}'):
    fe.sampling.uniform(num_clients=5, clients_per_round=c,
                        key=jax.random.key(0))


def test_over_steps_runs_only_busy_steps():
  # Steps 0-2 hold examples, 3-7 are padding: the loop body runs 3 times.
  mask = np.zeros((8, 4), bool)
  mask[:3, :2] = True
  mask[2, 1] = False
  batches = {'x': jnp.arange(32.0).reshape(8, 4)}

  def step(carry, batch, m, i):
    calls, total = carry
    return calls + 1, total + jnp.sum(batch['x'] * m) + 100 * i

  calls, total = jax.jit(lambda b, m: fe.over_steps(
      step, (0, 0.0), b, m))(batches, jnp.asarray(mask))
  assert int(calls) == 3
  # Examples 0, 1 (step 0), 4, 5 (step 1), 8 (step 2); plus 100 * (0+1+2).
  assert float(total) == 0 + 1 + 4 + 5 + 8 + 300


def test_over_steps_vmapped_runs_each_lane_its_own_steps():
  mask = np.zeros((2, 5, 1), bool)
  mask[0, :1] = True
  mask[1, :4] = True
  step = lambda carry, b, m, i: carry + 1
  calls = jax.jit(jax.vmap(lambda b, m: fe.over_steps(step, 0, b, m)))(
      {'x': jnp.zeros((2, 5, 1))}, jnp.asarray(mask))
  np.testing.assert_array_equal(np.asarray(calls), [1, 4])


def test_over_steps_in_the_engine_vmap_runs_the_chunk_max_once():
  # Under the engine's named vmap axis the loop runs the chunk's largest
  # step count (one scalar trip count); each lane still gets only its own.
  mask = np.zeros((3, 5, 1), bool)
  mask[0, :1] = True
  mask[1, :4] = True
  step = lambda carry, b, m, i: (carry[0] + 1, carry[1] + jnp.sum(b['x'] * m))
  batches = {'x': jnp.arange(15.0).reshape(3, 5, 1)}
  fn = jax.vmap(lambda b, m: fe.over_steps(step, (0, 0.0), b, m),
                axis_name=fe.algorithm.COHORT_AXIS)
  calls, total = jax.jit(fn)(batches, jnp.asarray(mask))
  np.testing.assert_array_equal(np.asarray(calls), [1, 4, 0])
  np.testing.assert_array_equal(np.asarray(total), [0.0, 5 + 6 + 7 + 8, 0.0])
  # The step index is one scalar, so XLA reads each step as a slice.
  hlo = jax.jit(fn).lower(batches, jnp.asarray(mask)).compile().as_text()
  assert ' gather(' not in hlo and ' dynamic-slice(' in hlo


def _utilization(data, ids, devices, chunk):
  model = fe.models.logistic_regression(num_features=60, num_classes=10)
  algo = fe.algorithms.fedavg(model, client_optimizer=optax.sgd(0.1))
  mesh = jax.sharding.Mesh(np.array(jax.devices()[:devices]), ('clients',))
  rnd = fe.make_round(algo, data, batching=fe.Batching(batch_size=5,
                                                       local_epochs=1),
                      clients_per_round=len(ids), client_chunk_size=chunk,
                      mesh=mesh)
  state = algo.init(model.init(jax.random.key(0)))
  _, _, metrics = rnd(state, (), rnd.select(ids), jax.random.key(1))
  return float(metrics['step_utilization'])


def _sized(sizes):
  rng = np.random.default_rng(0)
  return fe.FederatedData.from_clients({
      k: {'x': rng.normal(size=(n, 60)).astype(np.float32),
          'y': rng.integers(0, 10, n).astype(np.int32)}
      for k, n in enumerate(sizes)})


def test_step_utilization_by_hand():
  # Clients of 20, 20, 1, 1 examples, batch 5, one epoch: 4, 4, 1, 1 steps,
  # 10 useful. Chunks of 2 on one device. Sorted largest first the chunks
  # are (20, 20) and (1, 1): they run 2*4 + 2*1 = 10 steps, utilization 1.
  # In the order given, (20, 1) and (20, 1) would run 16 (10/16 = 0.625).
  data = _sized([20, 1, 20, 1])
  assert _utilization(data, [0, 1, 2, 3], devices=1, chunk=2) == 1.0
  # One chunk of all four: 4*4 = 16 steps run for 10 useful.
  assert _utilization(data, [0, 1, 2, 3], devices=1, chunk=4) == 10 / 16
  # One client per chunk: every client runs its own steps.
  assert _utilization(data, [3, 2, 1, 0], devices=1, chunk=1) == 1.0


def test_step_utilization_counts_padded_clients():
  # 3 clients in a cohort of 4 (2 devices x chunk 2). Sorted 20, 20, 1 and
  # dealt to devices in turn: device 0 gets (20, 1), device 1 gets (20,
  # padding). Both chunks run 4 steps for 2 clients: 16 run, 4+1+4 = 9
  # useful.
  data = _sized([20, 1, 20, 1])
  assert _utilization(data, [0, 1, 2], devices=2, chunk=2) == 9 / 16
