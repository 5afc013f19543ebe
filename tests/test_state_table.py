"""The client-state table in host memory gives the device table's results."""

import jax
import numpy as np
import optax
import pytest

import fedjax_engine as fe
from fedjax_engine.runner import run_experiment

BATCHING = fe.Batching(batch_size=4, local_steps=3)
COHORTS = ([7, 2, 10, 0, 5], [1, 11, 6, 3, 9], [5, 3, 0, 8, 2])


def _algorithm(model):
  return fe.algorithms.scaffold(model, client_optimizer=optax.sgd(0.1))


@pytest.mark.parametrize('memmap', [False, True], ids=['memory', 'memmap'])
def test_host_table_equals_device_table(synthetic_train, logistic_model,
                                        tmp_path, memmap):
  algo = _algorithm(logistic_model)
  rnd = fe.make_round(algo, synthetic_train, batching=BATCHING,
                      clients_per_round=5)
  params = lambda: logistic_model.init(jax.random.key(0))  # rounds donate

  def run(table):
    state = algo.init(params())
    for r, ids in enumerate(COHORTS):
      state, table, metrics = rnd(state, table, rnd.select(ids),
                                  jax.random.key(r))
    return state, table, metrics

  device = run(jax.vmap(algo.init_client_state,
                        axis_size=synthetic_train.num_clients,
                        in_axes=None)(params()))
  table = fe.host_table(algo, params(), synthetic_train.num_clients,
                        folder=str(tmp_path) if memmap else None)
  host = run(table)
  assert host[1] is table   # updated in place
  leaf = jax.tree.leaves(table)[0]
  assert isinstance(leaf, np.memmap if memmap else np.ndarray)
  for a, b in zip(jax.tree.leaves(host), jax.tree.leaves(device)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6,
                               atol=1e-7)
  # Clients 4 and 12.. never took part: their rows are still zero.
  assert not np.any(np.asarray(leaf)[4])


def test_runner_with_host_table_equals_device_table(synthetic_train,
                                                    logistic_model):
  algo = _algorithm(logistic_model)
  runs = [run_experiment(algo, logistic_model, synthetic_train, None,
                         batching=BATCHING, clients_per_round=4, num_rounds=4,
                         rounds_per_call=2, progress=False, state_table=where)
          for where in ('device', 'host')]
  for a, b in zip(*runs):
    np.testing.assert_allclose(a['train_loss'], b['train_loss'], rtol=1e-6)


def test_fused_rounds_refuse_a_host_table(synthetic_train, logistic_model):
  algo = _algorithm(logistic_model)
  rnd = fe.make_round(algo, synthetic_train, batching=BATCHING,
                      clients_per_round=5)
  params = logistic_model.init(jax.random.key(0))
  sampler = fe.sampling.uniform(num_clients=synthetic_train.num_clients,
                                clients_per_round=5, key=jax.random.key(1))
  with pytest.raises(ValueError, match='needs the client-state table on the'):
    rnd.run_rounds(algo.init(params),
                   fe.host_table(algo, params, synthetic_train.num_clients),
                   sampler, jax.random.key(2), first_round=0, num_rounds=2)
