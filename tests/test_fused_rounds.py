"""run_rounds: program reuse, resumption, the stateful table, bad input.

Equality with rounds driven from Python, for every registry algorithm, is
in test_conformance.py.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import fedjax_engine as fe

BATCHING = fe.Batching(batch_size=4, local_steps=2)


@pytest.fixture(scope='module')
def setup(synthetic_train, logistic_model):
  algo = fe.algorithms.fedavg(logistic_model, client_optimizer=optax.sgd(0.1))
  rnd = fe.make_round(algo, synthetic_train, batching=BATCHING,
                      clients_per_round=4)
  sampler = fe.sampling.uniform(num_clients=synthetic_train.num_clients,
                                clients_per_round=4, key=jax.random.key(0))
  return algo, logistic_model, rnd, sampler


def _state(algo, model):
  return algo.init(model.init(jax.random.key(1)))


def test_shorter_calls_reuse_the_block_program_and_resume_exactly(setup):
  algo, model, rnd, sampler = setup
  key = jax.random.key(2)
  whole, _, m_whole = rnd.run_rounds(_state(algo, model), (), sampler, key,
                                     first_round=0, num_rounds=5, block=5)
  programs = rnd.num_compiled
  # The same 5 rounds as 3 + 2, resuming from round 3: one program.
  state, _, m_a = rnd.run_rounds(_state(algo, model), (), sampler, key,
                                 first_round=0, num_rounds=3, block=5)
  state, _, m_b = rnd.run_rounds(state, (), sampler, key, first_round=3,
                                 num_rounds=2, block=5)
  assert rnd.num_compiled == programs
  assert m_a['train_loss'].shape == (3,) and m_b['train_loss'].shape == (2,)
  for a, b in zip(jax.tree.leaves(whole.params), jax.tree.leaves(state.params)):
    np.testing.assert_array_equal(a, b)
  np.testing.assert_array_equal(
      np.concatenate([m_a['train_loss'], m_b['train_loss']]),
      m_whole['train_loss'])
  assert int(state.round) == 5


def test_a_last_shorter_call_compiles_nothing(setup):
  """Not the round (num_compiled) and not a program to cut the metrics."""
  algo, model, rnd, sampler = setup
  key = jax.random.key(3)
  state, _, _ = rnd.run_rounds(_state(algo, model), (), sampler, key,
                               first_round=0, num_rounds=4, block=4)
  compiled = []
  jax.monitoring.register_event_duration_secs_listener(
      lambda name, *_, **__: compiled.append(name)
      if name == '/jax/core/compile/backend_compile_duration' else None)
  try:
    for n in (3, 1):
      state, _, metrics = rnd.run_rounds(state, (), sampler, key,
                                         first_round=4, num_rounds=n, block=4)
      assert metrics['train_loss'].shape == (n,)
  finally:
    jax.monitoring.clear_event_listeners()
  assert compiled == []


def test_rounds_differ_from_each_other(setup):
  algo, model, rnd, sampler = setup
  _, _, metrics = rnd.run_rounds(_state(algo, model), (), sampler,
                                 jax.random.key(2), first_round=0,
                                 num_rounds=4)
  assert len(set(np.asarray(metrics['train_loss']).tolist())) == 4


def test_client_state_table_is_carried_between_rounds(synthetic_train):
  # Each client counts its rounds; after fused rounds the table holds how
  # often the sampler drew each client.
  def client_update(server_state, client_state, batches, mask, key):
    del batches, mask, key
    return jnp.zeros(()), {'n': client_state['n'] + 1}, {}

  algo = fe.Algorithm(
      init=lambda p: fe.ServerState(p, (), jnp.zeros((), jnp.int32)),
      client_update=client_update,
      server_update=lambda s, agg, info: s._replace(round=s.round + 1),
      init_client_state=lambda p: {'n': jnp.zeros((), jnp.int32)})
  k = synthetic_train.num_clients
  rnd = fe.make_round(algo, synthetic_train, batching=BATCHING,
                      clients_per_round=3, client_chunk_size=1)
  sampler = fe.sampling.uniform(num_clients=k, clients_per_round=3,
                                key=jax.random.key(7))
  table = {'n': jnp.zeros(k, jnp.int32)}
  _, table, _ = rnd.run_rounds(algo.init(jnp.zeros(())), table, sampler,
                               jax.random.key(0), first_round=0, num_rounds=6)
  expected = np.zeros(k, np.int64)
  for r in range(6):
    expected[sampler(r)] += 1
  np.testing.assert_array_equal(np.asarray(table['n']), expected)


def test_bad_input_is_refused_clearly(setup, synthetic_train, logistic_model):
  algo, model, rnd, sampler = setup
  with pytest.raises(ValueError, match=r'num_rounds must lie in \[1, '
                     r'block=2\], got 3'):
    rnd.run_rounds(_state(algo, model), (), sampler, jax.random.key(0),
                   first_round=0, num_rounds=3, block=2)
  other = fe.sampling.uniform(num_clients=synthetic_train.num_clients,
                              clients_per_round=9, key=jax.random.key(0))
  with pytest.raises(ValueError, match='draws 9 of'):
    rnd.run_rounds(_state(algo, model), (), other, jax.random.key(0),
                   first_round=0, num_rounds=1)
  host = fe.make_round(algo, synthetic_train, batching=BATCHING,
                       clients_per_round=4, gather='host')
  with pytest.raises(ValueError, match="needs gather='device'"):
    host.run_rounds(_state(algo, model), (), sampler, jax.random.key(0),
                    first_round=0, num_rounds=1)


def test_a_round_synchronizes_the_devices_once(setup):
  # XLA:CPU's all-reduce pays one cross-device rendezvous per buffer: the
  # round packs its aggregate, metric sums and facts into one buffer.
  algo, model, rnd, sampler = setup
  assert rnd.mesh.devices.size > 1
  num_steps = rnd.batching.num_steps(int(rnd.data.sizes.max()))
  state = jax.device_put(_state(algo, model), rnd._replicated)  # pylint: disable=protected-access
  hlo = rnd._fused.lower(  # pylint: disable=protected-access
      state, (), jax.random.key(0), rnd._store, np.int32(0), np.int32(2),  # pylint: disable=protected-access
      sampler=sampler, block=2, num_steps=num_steps).compile().as_text()
  assert hlo.count(' all-reduce(') == 1, hlo.count(' all-reduce(')
