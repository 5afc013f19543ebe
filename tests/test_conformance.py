"""Conformance suite: every algorithm's compiled round against a Python loop.

Each algorithm in :data:`CONFORMANCE_CASES` must give, through
``fe.make_round``, the round that a plain loop over the real clients gives
(``client_update`` on each client's batches, a numpy weighted mean or the
algorithm's own aggregator over the whole cohort at once, then
``server_update``), and that result must not depend on padding, the chunk
size, the number of devices or the gathering path, must compile once, and
must be a deterministic function of the round key.

Compilation dominates the runtime on CPU, so compiled rounds, reference
results and jitted client updates are cached per (algorithm, configuration)
in this module and shared between tests; every call still starts from a fresh
server state, as the round donates its inputs.
"""


import gc

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import fedjax_engine as fe
from fedjax_engine import data as data_lib
from fedjax_engine import registry
from fedjax_engine import simulate
from fedjax_engine import attacks
from fedjax_engine import compression
from fedjax_engine import diagnostics
from fedjax_engine import privacy
from fedjax_engine import robust
from fedjax_engine import secure_aggregation
from fedjax_engine import testing
from fedjax_engine import transforms

# (name, build(model) -> Algorithm). Every entry of fedjax_engine.registry's
# ALGORITHMS must appear here (test_registry_algorithms_are_covered).
CONFORMANCE_CASES = [
    ('fedavg', lambda model: fe.algorithms.fedavg(
        model, client_optimizer=optax.sgd(0.1))),
    ('fedadam', lambda model: fe.algorithms.fedavg(
        model, client_optimizer=optax.sgd(0.1),
        server_optimizer=optax.adam(1e-2, eps=1e-3))),
    # Client momentum too: a padded local step that is not skipped would
    # still move the params (plain SGD's zero-gradient step would not).
    ('fedavgm', lambda model: fe.algorithms.fedavg(
        model, client_optimizer=optax.sgd(0.1, momentum=0.5),
        server_optimizer=optax.sgd(0.5, momentum=0.9))),
    ('fedyogi', lambda model: fe.algorithms.fedavg(
        model, client_optimizer=optax.sgd(0.1),
        server_optimizer=optax.yogi(1e-2, eps=1e-3))),
    ('fedadagrad', lambda model: fe.algorithms.fedavg(
        model, client_optimizer=optax.sgd(0.1),
        server_optimizer=registry.fed_adagrad(1e-1))),
    ('fedprox', lambda model: fe.algorithms.fedprox(
        model, client_optimizer=optax.sgd(0.1, momentum=0.5), mu=0.5)),
    ('fedsgd', lambda model: fe.algorithms.fedsgd(
        model, server_optimizer=optax.sgd(0.5))),
    ('ditto', lambda model: fe.algorithms.ditto(
        model, client_optimizer=optax.sgd(0.1), ditto_lambda=0.5)),
    ('feddyn', lambda model: fe.algorithms.feddyn(
        model, client_optimizer=optax.sgd(0.1), alpha=0.1)),
    ('fednova', lambda model: fe.algorithms.fednova(
        model, client_optimizer=optax.sgd(0.1),
        server_optimizer=optax.sgd(0.7))),
    ('mime', lambda model: fe.algorithms.mime(
        model, client_optimizer=optax.sgd(0.1), momentum=0.5)),
    ('mimelite', lambda model: fe.algorithms.mimelite(
        model, client_optimizer=optax.sgd(0.1), momentum=0.5)),
    ('qffl', lambda model: fe.algorithms.qffl(
        model, client_optimizer=optax.sgd(0.1), q=1.0, lipschitz=10.0)),
    ('fedbuff', lambda model: fe.algorithms.fedbuff(
        model, client_optimizer=optax.sgd(0.1), max_staleness=2)),
    ('afl', lambda model: fe.algorithms.afl(
        model, client_optimizer=optax.sgd(0.1), lambda_lr=1.0)),
    ('apfl', lambda model: fe.algorithms.apfl(
        model, client_optimizer=optax.sgd(0.1), alpha=0.5,
        adaptive_alpha=True, alpha_lr=0.1)),
    ('fedrep', lambda model: fe.algorithms.fedrep(
        model, client_optimizer=optax.sgd(0.1), head='Dense_0/bias',
        head_steps=5)),
    ('perfedavg', lambda model: fe.algorithms.perfedavg(
        model, client_optimizer=optax.sgd(0.1, momentum=0.5), inner_lr=0.05)),
    ('hypcluster', lambda model: fe.algorithms.hypcluster(
        model, client_optimizer=optax.sgd(0.1),
        server_optimizer=optax.sgd(1.0, momentum=0.5), num_clusters=3,
        init_noise=0.5)),
    ('scaffold', lambda model: fe.algorithms.scaffold(
        model, client_optimizer=optax.sgd(0.1),
        server_optimizer=optax.sgd(0.8))),
]



def _fedavg(model):
  return fe.algorithms.fedavg(model, client_optimizer=optax.sgd(0.1))


def _noisy_odd_clients():
  """A transform that reads the client's id and key: clients with odd ids
  add Gaussian noise to their outputs."""
  def client(state, output, row, key, client):
    del state
    odd = (client.id % 2).astype(jnp.float32)
    leaves, treedef = jax.tree.flatten(output)
    keys = jax.random.split(key, len(leaves))
    noisy = [x + 0.01 * odd * jax.random.normal(k, x.shape, x.dtype)
             for x, k in zip(leaves, keys)]
    return jax.tree.unflatten(treedef, noisy), row, {}
  return transforms.Transform(client=client)


def _median():
  return transforms.Transform(
      client=lambda state, output, row, key, client: (output, row, {}),
      aggregator=fe.aggregate.coordinate_median())


# Malicious clients of the attack cases: two in each of ROUNDS' cohorts.
_MALICIOUS = np.isin(np.arange(12), [2, 5, 6, 11])

# Transforms of client outputs (fedjax_engine.transforms) on an algorithm:
# privacy, robust aggregation, compression, attacks, and test transforms
# that read client ids and keys. A transform acts between client_update and
# server_update, so test_transform_round_equals_python_loop checks what it
# can change: the round against the loop on four devices, and on one device
# with a padded cohort in chunks (padding, chunking and the device count),
# and bitwise reproducibility. fe.testing.check_algorithm runs the full
# set on each of them (tests of their own modules).
def _with_diagnostics(transform):
  return transform, diagnostics.diagnostics(transform.aggregator)


TRANSFORM_CASES = [
    ('fedavg+clip', lambda model: transforms.apply(
        fe.algorithms.fedavg(model, client_optimizer=optax.sgd(0.1)),
        transforms.clip(max_norm=0.05))),
    ('fedprox+noise+median', lambda model: transforms.apply(
        fe.algorithms.fedprox(model, client_optimizer=optax.sgd(0.1), mu=0.1),
        _noisy_odd_clients(), _median())),
    ('scaffold+clip', lambda model: transforms.apply(
        fe.algorithms.scaffold(model, client_optimizer=optax.sgd(0.1)),
        transforms.clip(max_norm=0.1))),
    # Trims 1 of 5 at each end.
    ('fedavg+trimmed_mean', lambda model: transforms.apply(
        _fedavg(model),
        robust.as_transform(robust.trimmed_mean(trim_fraction=0.2)))),
    ('fedavg+multi_krum', lambda model: transforms.apply(
        _fedavg(model),
        robust.as_transform(robust.krum(num_byzantine=1, num_selected=3)))),
    ('fedavg+geometric_median', lambda model: transforms.apply(
        _fedavg(model), robust.as_transform(robust.geometric_median()))),
    # Deltas there have norms about 1: a clip of 1 binds for about half.
    ('fedavg+dp_fedavg', lambda model: transforms.apply(
        _fedavg(model), *privacy.dp_fedavg(
            clip_norm=1.0, noise_multiplier=0.5, expected_clients=5))),
    ('fedavg+dp_fedavg_adaptive', lambda model: transforms.apply(
        _fedavg(model), *privacy.dp_fedavg(
            clip_norm=1.0, noise_multiplier=0.3, expected_clients=5,
            target_quantile=0.5))),
    ('fedavg+local_dp', lambda model: transforms.apply(
        _fedavg(model), *privacy.local_gaussian(clip_norm=1.0,
                                                noise_multiplier=0.5))),
    ('fedavg+dp_ftrl', lambda model: transforms.apply(
        _fedavg(model), *privacy.dp_ftrl(
            clip_norm=1.0, noise_multiplier=0.5, expected_clients=5,
            seed=3))),
    ('fedavg+quantize', lambda model: transforms.apply(
        _fedavg(model), compression.quantize(bits=2))),
    # Error feedback: a residual per client in the state table.
    ('fedavg+top_k', lambda model: transforms.apply(
        _fedavg(model), compression.top_k(fraction=0.1))),
    ('fedavg+random_k', lambda model: transforms.apply(
        _fedavg(model), compression.random_k(fraction=0.1))),
    ('fedavg+drive', lambda model: transforms.apply(
        _fedavg(model), compression.drive())),
    ('fedavg+sign_flip', lambda model: transforms.apply(
        _fedavg(model), attacks.sign_flip(_MALICIOUS, scale=2.0))),
    ('fedavg+model_replacement', lambda model: transforms.apply(
        _fedavg(model), attacks.model_replacement(_MALICIOUS, boost=3.0))),
    ('fedavg+alie+median', lambda model: transforms.apply(
        _fedavg(model), attacks.a_little_is_enough(
            _MALICIOUS, z=1.0, aggregator=fe.aggregate.coordinate_median()))),
    # Diagnostics wrap the whole-cohort reduction they find.
    ('fedavg+multi_krum+diagnostics', lambda model: transforms.apply(
        _fedavg(model), *_with_diagnostics(robust.as_transform(
            robust.krum(num_byzantine=1, num_selected=3))))),
    # Masks with every participant; about one client in three drops after
    # masking. The sum is exact, so padding and devices change no bit of it.
    ('fedavg+secagg', lambda model: transforms.apply(
        _fedavg(model), secure_aggregation.secure_aggregation(
            clip=0.5, max_clients=8, dropout_rate=0.3, threshold=0.25))),
    # SecAgg+ on a ring of 2 neighbours, summing for central DP noise.
    ('fedavg+dp_fedavg+secagg_plus', lambda model: transforms.apply(
        _fedavg(model), *privacy.dp_fedavg(
            clip_norm=1.0, noise_multiplier=0.5, expected_clients=5),
        secure_aggregation.secure_aggregation(
            clip=1.0, max_clients=8, bits=24, neighbors=2, dropout_rate=0.2,
            mean=False, seed=5))),
]

BATCHING = fe.Batching(batch_size=4, local_steps=3)
# Local epochs: clients of 4 to 24 examples take 1 to 6 real steps, padded to
# the cohort's (bucketed) 6 steps.
EPOCHS_BATCHING = fe.Batching(batch_size=4, local_epochs=1)
# Two rounds, so server optimizer state (momentum, Adam moments) carries over.
# With BATCHING a client uses 12 examples: client 6 (24 examples) uses part of
# an epoch, client 9 (4 examples) three epochs. Ids are unsorted, so a
# client's position in the cohort is unrelated to its id.
ROUNDS = ([7, 2, 10, 0, 5], [1, 11, 6, 3, 9])
CLIENTS_PER_ROUND = 5
# The masked-steps test plans its cohort padded to this many clients.
REFERENCE_COHORT = 8
RTOL, ATOL = 1e-5, 1e-6


_round_key = testing.round_key
_initial_state = testing.initial_state
_initial_table = testing.initial_table


def _initial_client_state(algorithm, model):
  """One client's starting state; () for a stateless algorithm."""
  if algorithm.init_client_state is None:
    return ()
  return algorithm.init_client_state(model.init(jax.random.key(0)))


def _mesh(num_devices):
  return jax.sharding.Mesh(np.array(jax.devices()[:num_devices]), ('clients',))


def _assert_trees_close(actual, expected, rtol=RTOL, atol=ATOL):
  testing.assert_trees_close(actual, expected, 'conformance', rtol=rtol,
                             atol=atol)


def _max_abs_diff(a, b):
  return max(float(np.max(np.abs(np.asarray(x) - np.asarray(y))))
             for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


@pytest.fixture(scope='module')
def model(logistic_model):
  """Logistic regression with feature dropout: training uses its keys."""
  return testing.with_feature_dropout(logistic_model)


# ------------------------------------------ caches, shared by all the tests

_ALGORITHMS = {}
_CLIENT_UPDATES = {}
_REFERENCES = {}
_ROUNDS = {}


def _forget(name):
  """Drops everything cached for one case and JAX's compiled programs.

  Every compiled XLA:CPU program holds memory mappings of its own, and a
  process may hold about 65,000 (vm.max_map_count): the whole suite's
  programs at once went past it and crashed the compiler. Hence the cases
  run one after another (a module-scoped parameter groups each case's
  tests) and each one's programs are freed when it is done.
  """
  for cache in (_ROUNDS, _REFERENCES, _CLIENT_UPDATES):
    for key in [k for k in cache if k == name or k[0] == name]:
      del cache[key]
  _ALGORITHMS.pop(name, None)
  gc.collect()
  jax.clear_caches()


@pytest.fixture(scope='module', params=CONFORMANCE_CASES,
                ids=[n for n, _ in CONFORMANCE_CASES])
def case(request, model):
  """(name, algorithm), the algorithm built once per name; its compiled
  rounds are freed after its last test."""
  name, build = request.param
  if name not in _ALGORITHMS:
    _ALGORITHMS[name] = build(model)
  yield name, _ALGORITHMS[name]
  _forget(name)


def _client_update(name, algorithm):
  if name not in _CLIENT_UPDATES:
    _CLIENT_UPDATES[name] = jax.jit(algorithm.client_update)
  return _CLIENT_UPDATES[name]


def _round(name, algorithm, data, *, batching=BATCHING,
           clients_per_round=CLIENTS_PER_ROUND, num_devices=4,
           client_chunk_size=None, gather='device') -> testing.CountingRound:
  """The compiled round of one configuration, built once per module."""
  config = (name, batching, clients_per_round, num_devices, client_chunk_size,
            gather)
  if config not in _ROUNDS:
    _ROUNDS[config] = testing.CountingRound(
        algorithm, data, batching=batching,
        clients_per_round=clients_per_round, mesh=_mesh(num_devices),
        client_chunk_size=client_chunk_size, gather=gather)
  return _ROUNDS[config]


def _num_programs(rnd):
  """Executables the round's jitted function holds (one per input signature)."""
  return rnd.num_compiled


def _run_engine(rnd, algorithm, model, rounds=ROUNDS):
  return testing.engine_rounds(rnd, algorithm, model, rounds)


def _reference(name, algorithm, model, data, *, batching=BATCHING,
               rounds=ROUNDS):
  """The rounds as a Python loop over the real clients
  (:func:`fedjax_engine.testing.reference_rounds`), cached; returns
  ((state, table), [{'train_loss', 'clients'}])."""
  cache_key = (name, batching, tuple(map(tuple, rounds)))
  if cache_key not in _REFERENCES:
    result = testing.reference_rounds(
        algorithm, model, data, [list(ids) for ids in rounds],
        batching=batching, client_update=_client_update(name, algorithm))
    # The comparison means something only if training moved the params.
    initial = _initial_state(algorithm, model)
    assert _max_abs_diff(result[0][0].params, initial.params) > 1e-4
    _REFERENCES[cache_key] = result
  return _REFERENCES[cache_key]


def _assert_matches_reference(state, history, expected):
  expected_state, expected_history = expected
  _assert_trees_close(state, expected_state)
  assert len(history) == len(expected_history)
  for got, want in zip(history, expected_history):
    np.testing.assert_allclose(got['train_loss'], want['train_loss'],
                               rtol=RTOL)
    assert int(got['clients']) == want['clients']


# ----------------------------------------------------------------- tests


def test_registry_algorithms_are_covered():
  covered = {name for name, _ in CONFORMANCE_CASES}
  missing = sorted(set(registry.ALGORITHMS) - covered)
  assert not missing, (
      f'algorithms {missing} are in registry.ALGORITHMS but have no entry in '
      'tests/test_conformance.py CONFORMANCE_CASES; add one.')


@pytest.mark.parametrize('gather', ['device', 'host'])
def test_round_equals_python_loop(case, gather, synthetic_train, model):
  name, algorithm = case
  counted = _round(name, algorithm, synthetic_train, gather=gather)
  state, history = _run_engine(counted.round, algorithm, model)
  _assert_matches_reference(state, history, _reference(
      name, algorithm, model, synthetic_train))


def test_host_table_round_equals_python_loop(case, synthetic_train, model):
  # The state table in host memory: only the cohort's rows move.
  name, algorithm = case
  if algorithm.init_client_state is None:
    pytest.skip('keeps no client state')
  # Its own configuration (two devices), so the host table's program does
  # not count against the no-recompilation test's round.
  counted = _round(name, algorithm, synthetic_train, num_devices=2)
  (state, table), history = testing.engine_rounds(
      counted.round, algorithm, model, ROUNDS, host_table=True)
  assert simulate.is_host_table(table)
  _assert_matches_reference((state, table), history, _reference(
      name, algorithm, model, synthetic_train))


def test_local_epochs_round_equals_python_loop(case, synthetic_train, model):
  # Clients of different sizes take different numbers of real steps; the
  # rest of the cohort's steps are padding.
  name, algorithm = case
  counted = _round(name, algorithm, synthetic_train, batching=EPOCHS_BATCHING)
  state, history = _run_engine(counted.round, algorithm, model)
  _assert_matches_reference(state, history, _reference(
      name, algorithm, model, synthetic_train, batching=EPOCHS_BATCHING))


def test_padded_clients_change_nothing(case, synthetic_train, model):
  name, algorithm = case
  # One device, five clients a round: the cohort is exactly the real clients.
  full = _round(name, algorithm, synthetic_train, num_devices=1).round
  # Eight on the same device: three padded clients (id 0, fully masked).
  padded = _round(name, algorithm, synthetic_train, num_devices=1,
                  clients_per_round=8).round
  assert full.cohort_size == CLIENTS_PER_ROUND
  assert padded.cohort_size == 8
  cohort = padded.select(ROUNDS[0])
  assert int(np.sum(~np.asarray(cohort.client_mask))) == 3
  full_state, full_history = _run_engine(full, algorithm, model)
  padded_state, padded_history = _run_engine(padded, algorithm, model)
  _assert_trees_close(padded_state, full_state)
  for got, want in zip(padded_history, full_history):
    np.testing.assert_allclose(got['train_loss'], want['train_loss'],
                               rtol=RTOL)
    assert int(got['clients']) == int(want['clients']) == CLIENTS_PER_ROUND
  _assert_matches_reference(full_state, full_history, _reference(
      name, algorithm, model, synthetic_train))


def test_client_update_ignores_masked_steps_and_examples(case, synthetic_train,
                                                         model):
  name, algorithm = case
  data = synthetic_train
  # Client 3's 9 examples in local epochs of batch 4, as the second round of
  # the local-epochs test plans them: 3 real steps (the last with 1 example)
  # and 3 fully masked ones.
  client, position = 3, ROUNDS[1].index(3)
  cohort = data_lib.gather_on_host(
      data, data_lib.select(data, ROUNDS[1], num_padded=REFERENCE_COHORT),
      _round_key(1), batching=EPOCHS_BATCHING,
      num_steps=EPOCHS_BATCHING.num_steps(int(data.sizes[ROUNDS[1]].max())))
  batches = {k: v[position] for k, v in cohort.batches.items()}
  mask = cohort.example_mask[position]
  assert data.sizes[client] == 9
  np.testing.assert_array_equal(mask.sum(axis=1), [4, 4, 1, 0, 0, 0])
  # The same client without its padded steps, and with more padding: two
  # steps and three examples per batch more, holding garbage.
  trimmed_batches = {k: v[:3] for k, v in batches.items()}
  padded_batches, padded_mask = testing.pad_batches(
      batches, mask, extra_steps=2, extra_examples=3,
      rng=np.random.default_rng(0))
  state = _initial_state(algorithm, model)
  row = _initial_client_state(algorithm, model)
  key = jax.random.key(3)
  client_update = _client_update(name, algorithm)
  if algorithm.prepare is not None:
    # The state local training sees: the first exchange of this client alone
    # (Mime's initial state would otherwise take no step at all).
    state = algorithm.prepare.server(
        state, algorithm.prepare.client(state, row, trimmed_batches, mask[:3],
                                        key),
        fe.RoundInfo(num_clients=jnp.int32(1), total_weight=jnp.float32(9),
                     population=jnp.int32(data.num_clients)))
  expected = client_update(state, row, trimmed_batches, mask[:3], key)
  _assert_trees_close(client_update(state, row, batches, mask, key), expected,
                      rtol=1e-6, atol=1e-7)
  _assert_trees_close(client_update(state, row, padded_batches, padded_mask,
                                    key), expected, rtol=1e-6, atol=1e-7)
  # The garbage would show if it leaked: unmasking it changes the output.
  leaked = client_update(state, row, padded_batches,
                         np.ones_like(padded_mask), key)
  assert _max_abs_diff(leaked[0], expected[0]) > 1e-3
  if algorithm.prepare is not None:   # the first exchange masks them too
    send = jax.jit(algorithm.prepare.client)
    expected = send(state, row, trimmed_batches, mask[:3], key)
    for b, m in ((batches, mask), (padded_batches, padded_mask)):
      _assert_trees_close(send(state, row, b, m, key), expected, rtol=1e-6,
                          atol=1e-7)


@pytest.mark.parametrize('client_chunk_size', [1, 3, None])
def test_chunk_size_changes_nothing(case, client_chunk_size, synthetic_train,
                                    model):
  name, algorithm = case
  # One device and five clients: chunks of 1 (five chunks), 3 (cohort
  # padded to six, two chunks) and None (all five at once).
  rnd = _round(name, algorithm, synthetic_train, num_devices=1,
               client_chunk_size=client_chunk_size).round
  expected_cohort = {1: 5, 3: 6, None: 5}[client_chunk_size]
  assert rnd.cohort_size == expected_cohort
  state, history = _run_engine(rnd, algorithm, model)
  _assert_matches_reference(state, history, _reference(
      name, algorithm, model, synthetic_train))


def test_one_device_equals_four(case, synthetic_train, model):
  assert len(jax.devices()) == 4, 'conftest.py should force 4 CPU devices'
  name, algorithm = case
  one = _round(name, algorithm, synthetic_train, num_devices=1).round
  four = _round(name, algorithm, synthetic_train, num_devices=4).round
  assert one.mesh.devices.size == 1 and four.mesh.devices.size == 4
  one_state, _ = _run_engine(one, algorithm, model)
  four_state, four_history = _run_engine(four, algorithm, model)
  _assert_trees_close(four_state, one_state)
  _assert_matches_reference(four_state, four_history, _reference(
      name, algorithm, model, synthetic_train))


def test_no_recompilation_after_first_round(case, synthetic_train, model):
  name, algorithm = case
  counted = _round(name, algorithm, synthetic_train)
  rnd = counted.round
  state = _initial_state(algorithm, model)
  table = _initial_table(algorithm, model, synthetic_train)
  # Different clients, different numbers of real clients, different keys.
  cohorts = [[7, 2, 10, 0, 5], [1, 11, 6], [3, 9, 4, 8], [0, 1, 2, 3, 4]]
  for r, ids in enumerate(cohorts):
    state, table, _ = rnd(state, table, rnd.select(ids),
                          jax.random.key(100 + r))
    if r == 0:
      traces_after_first = counted.traces
      assert traces_after_first > 0
      assert _num_programs(rnd) == 1
  jax.block_until_ready(state)
  assert counted.traces == traces_after_first, 'client_update was retraced'
  assert _num_programs(rnd) == 1, 'the round was recompiled'


@pytest.mark.parametrize('name, build', TRANSFORM_CASES,
                         ids=[n for n, _ in TRANSFORM_CASES])
def test_transform_round_equals_python_loop(name, build, synthetic_train,
                                            model):
  algorithm = _ALGORITHMS.setdefault(name, build(model))
  expected = _reference(name, algorithm, model, synthetic_train)
  four = _round(name, algorithm, synthetic_train).round
  result = _run_engine(four, algorithm, model)
  _assert_matches_reference(*result, expected)
  # One device, a cohort padded to 8 in chunks of 2: three padded clients.
  one = _round(name, algorithm, synthetic_train, num_devices=1,
               clients_per_round=8, client_chunk_size=2).round
  _assert_matches_reference(*_run_engine(one, algorithm, model), expected)
  again = _run_engine(four, algorithm, model)
  for a, b in zip(jax.tree.leaves(jax.device_get(result)),
                  jax.tree.leaves(jax.device_get(again))):
    np.testing.assert_array_equal(a, b)
  _forget(name)


def test_recompilation_is_detected(synthetic_train, model):
  # The counters of test_no_recompilation_after_first_round do see a new
  # program: with local epochs, a cohort of small clients takes fewer
  # (bucketed) steps than one holding an 18-example client.
  name, build = CONFORMANCE_CASES[0]
  algorithm = _ALGORITHMS.setdefault(name, build(model))
  counted = _round(name, algorithm, synthetic_train, batching=EPOCHS_BATCHING)
  rnd = counted.round
  big, small = [7, 2, 10, 0, 5], [8, 9, 10, 11]
  assert rnd.num_steps(rnd.select(big)) != rnd.num_steps(rnd.select(small))
  state = _initial_state(algorithm, model)
  state, _, _ = rnd(state, (), rnd.select(big), jax.random.key(0))
  traces, programs = counted.traces, _num_programs(rnd)
  state, _, _ = rnd(state, (), rnd.select(small), jax.random.key(1))
  assert counted.traces > traces
  assert _num_programs(rnd) == programs + 1
  # Both programs are cached: neither cohort shape traces again.
  traces = counted.traces
  state, _, _ = rnd(state, (), rnd.select(big), jax.random.key(2))
  state, _, _ = rnd(state, (), rnd.select(small), jax.random.key(3))
  assert counted.traces == traces
  assert _num_programs(rnd) == programs + 1


def test_same_key_is_bitwise_reproducible(case, synthetic_train, model):
  name, algorithm = case
  rnd = _round(name, algorithm, synthetic_train).round
  ids = ROUNDS[0]

  def run(key):
    state, table, metrics = rnd(_initial_state(algorithm, model),
                                _initial_table(algorithm, model,
                                               synthetic_train),
                                rnd.select(ids), jax.random.key(key))
    return jax.device_get((state, table, metrics))

  first, again, other = run(11), run(11), run(12)
  for a, b in zip(jax.tree.leaves(first), jax.tree.leaves(again)):
    np.testing.assert_array_equal(a, b)
  # Another key draws other batches and dropout masks, so other params.
  assert _max_abs_diff(first[0].params, other[0].params) > 1e-5


# ------------------------------------------------- per-client state tables


def _participation_counter():
  """A stateful algorithm: each client counts the rounds it took part in.

  The client output is the client's new count, so the aggregate is the
  example-weighted mean count of the cohort, kept as the server's params.
  """
  def init(params):
    return fe.ServerState(params, (), jnp.zeros((), jnp.int32))

  def init_client_state(params):
    del params
    return {'rounds': jnp.zeros((), jnp.int32)}

  def client_update(server_state, client_state, batches, example_mask, key):
    del server_state, batches, example_mask, key
    rounds = client_state['rounds'] + 1
    return rounds.astype(jnp.float32), {'rounds': rounds}, {}

  def server_update(server_state, aggregate, info):
    del info
    return fe.ServerState(aggregate, (), server_state.round + 1)

  return fe.Algorithm(init=init, client_update=client_update,
                      server_update=server_update,
                      init_client_state=init_client_state)


def test_client_state_table_gather_and_scatter(synthetic_train):
  data = synthetic_train
  algorithm = _participation_counter()
  # Two devices, each training its two clients one chunk of one at a time.
  rnd = fe.make_round(
      algorithm, data, batching=fe.Batching(batch_size=2, local_steps=1),
      clients_per_round=3, client_chunk_size=1, mesh=_mesh(2))
  assert rnd.cohort_size == 4   # every cohort below has padded clients
  server_state = algorithm.init(jnp.zeros((), jnp.float32))
  # Distinct starting rows, so a row gathered from the wrong client shows.
  start = 1000 * np.arange(data.num_clients)
  table = {'rounds': jnp.asarray(start, jnp.int32)}
  # Padded clients carry id 0: client 0 sits out every round but the last,
  # so a padded client that wrote back would corrupt its row.
  cohorts = [[3, 5, 7], [5, 11], [7, 5, 3], [2], [0, 5, 9]]
  counts = np.zeros(data.num_clients, np.int64)
  for r, ids in enumerate(cohorts):
    server_state, table, metrics = rnd(server_state, table, rnd.select(ids),
                                       jax.random.key(r))
    counts[ids] += 1
    new = start[ids] + counts[ids]
    weights = data.sizes[ids].astype(np.float64)
    np.testing.assert_allclose(server_state.params,
                               np.sum(weights * new) / np.sum(weights),
                               rtol=1e-6)
    assert int(metrics['clients']) == len(ids)
    np.testing.assert_array_equal(np.asarray(table['rounds']), start + counts)
  assert int(server_state.round) == len(cohorts)


# ------------------------------------------------------------ fused rounds


@pytest.mark.parametrize('batching', [BATCHING, EPOCHS_BATCHING],
                         ids=['steps', 'epochs'])
def test_fused_rounds_equal_rounds_driven_from_python(case, batching,
                                                      synthetic_train, model):
  # run_rounds samples, plans and trains on the device; with the same
  # sampler and keys it must match round-by-round calls. With local epochs
  # it pads every round to the dataset's largest client, which by (b)
  # changes nothing.
  name, algorithm = case
  rnd = _round(name, algorithm, synthetic_train, batching=batching).round
  sampler = fe.sampling.uniform(num_clients=synthetic_train.num_clients,
                                clients_per_round=CLIENTS_PER_ROUND,
                                key=jax.random.key(3))
  key = jax.random.key(4)
  state = _initial_state(algorithm, model)
  table = _initial_table(algorithm, model, synthetic_train)
  history = []
  for r in range(3):
    state, table, metrics = rnd(state, table, rnd.select(sampler(r)),
                                jax.random.fold_in(key, r))
    history.append(jax.device_get(metrics))
  fused, fused_table, stacked = rnd.run_rounds(
      _initial_state(algorithm, model),
      _initial_table(algorithm, model, synthetic_train), sampler, key,
      first_round=0, num_rounds=3, block=4)
  _assert_trees_close((fused, fused_table), (state, table))
  for r, metrics in enumerate(history):
    for metric in ('train_loss', 'clients'):
      np.testing.assert_allclose(stacked[metric][r], metrics[metric],
                                 rtol=RTOL, atol=ATOL, err_msg=metric)
