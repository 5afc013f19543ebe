"""Engine calls return computed arrays, so nothing queues behind an all-reduce.

On CPU, a multi-device program whose all-reduce is still waiting for its
other devices can be starved of threads by work dispatched behind it (see
``simulate.settled``). Every engine call that runs such a program therefore
returns only once all of its outputs, on every device, are computed. These
tests check that invariant directly, with the conftest's four CPU devices;
``benchmarks/stress.py`` checks the absence of hangs over hundreds of runs.
"""

import jax
import optax
import pytest

import fedjax_engine as fe


def _all_ready(tree):
  return all(x.is_ready() for x in jax.tree.leaves(tree)
             if isinstance(x, jax.Array))


@pytest.fixture(scope='module')
def setup(synthetic_train, logistic_model):
  algo = fe.algorithms.fedavg(logistic_model,
                              client_optimizer=optax.sgd(0.1))
  rnd = fe.make_round(algo, synthetic_train, clients_per_round=8,
                      batching=fe.Batching(batch_size=4, local_steps=3))
  return algo, rnd


def test_round_returns_computed_outputs(setup, logistic_model):
  algo, rnd = setup
  state = algo.init(logistic_model.init(jax.random.key(0)))
  for r in range(3):
    out = rnd(state, (), rnd.select(list(range(8))), jax.random.key(r))
    assert _all_ready(out)
    state = out[0]


def test_fused_rounds_return_computed_outputs(setup, logistic_model,
                                              synthetic_train):
  algo, rnd = setup
  state = algo.init(logistic_model.init(jax.random.key(0)))
  sampler = fe.sampling.uniform(num_clients=synthetic_train.num_clients,
                                clients_per_round=8, key=jax.random.key(1))
  # A short call of a longer block also slices its metrics: both settle.
  out = rnd.run_rounds(state, (), sampler, jax.random.key(2), first_round=0,
                       num_rounds=2, block=4)
  assert _all_ready(out)
  assert out[2]['train_loss'].shape == (2,)


def test_evaluate_returns_computed_values(synthetic_train, logistic_model):
  evaluate = fe.make_evaluate(logistic_model, synthetic_train)
  scores = evaluate(logistic_model.init(jax.random.key(0)))
  assert _all_ready(scores)
  assert set(scores) == {'loss', 'accuracy', 'loss_per_client',
                         'accuracy_per_client', 'accuracy_client_min',
                         'accuracy_client_p10'}
