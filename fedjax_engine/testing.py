"""Conformance checks for federated algorithms, built-in or your own.

:func:`check_algorithm` runs an algorithm through the checks every method of
this package passes (``tests/test_conformance.py`` uses the same pieces):

* the compiled, vmapped round equals a plain Python loop over the clients
  (``client_update`` on each client's batches, its row of the client-state
  table read and written back, a float64 weighted mean, ``server_update``),
  with batches gathered on the device and on the host;
* padded clients, the chunk size and the number of devices change nothing;
* ``client_update`` ignores masked steps and examples, whatever they hold;
* fused rounds (``Round.run_rounds``) equal rounds driven from Python;
* nothing compiles again after the first round;
* the same key gives the same result, bit for bit.

A failed check raises ``AssertionError`` naming the check.

Example (a plug-in: FedAvg whose clients scale their update):

  >>> import optax, fedjax_engine as fe
  >>> def build(model):
  ...   inner = fe.algorithms.fedavg(model, client_optimizer=optax.sgd(0.1))
  ...   def client_update(server_state, client_state, batches, mask, key):
  ...     delta, state, metrics = inner.client_update(
  ...         server_state, client_state, batches, mask, key)
  ...     return fe.tree.scale(delta, 0.5), state, metrics
  ...   return inner._replace(client_update=client_update)
  >>> check_algorithm(build)        # doctest: +SKIP
  ['round equals a Python loop (device gather)', ...]
"""

import functools
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from fedjax_engine import aggregate as aggregate_lib
from fedjax_engine import algorithm as algorithm_lib
from fedjax_engine import data as data_lib
from fedjax_engine import sampling
from fedjax_engine import simulate
from fedjax_engine.algorithm import Algorithm, ClientInfo, RoundInfo
from fedjax_engine.model import Model

RTOL, ATOL = 1e-5, 1e-6


def initial_state(algorithm: Algorithm, model: Model):
  """The server state from the model's params at key 0."""
  return algorithm.init(model.init(jax.random.key(0)))


def initial_table(algorithm: Algorithm, model: Model,
                  data: data_lib.FederatedData):
  """Every client's starting state stacked (``()`` when stateless)."""
  if algorithm.init_client_state is None:
    return ()
  row = algorithm.init_client_state(model.init(jax.random.key(0)))
  return jax.tree.map(
      lambda x: jnp.broadcast_to(x, (data.num_clients,) + x.shape), row)


def round_key(r: int):
  """The key of round ``r`` in these checks."""
  return jax.random.fold_in(jax.random.key(42), r)


def _aggregate(aggregator, outputs, weights, ids):
  """The clients' outputs combined: a float64 weighted mean for the default
  aggregator, else ``aggregator`` over all of them at once."""
  if aggregator is algorithm_lib.WEIGHTED_MEAN:
    mean = jax.tree.map(
        lambda *xs: np.tensordot(weights, np.stack(xs).astype(np.float64), 1)
        / weights.sum(), *outputs)
    return jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), mean)
  return aggregator.finalize(aggregate_lib.accumulate_all(
      aggregator, aggregator.init(outputs[0]),
      jax.tree.map(lambda *xs: np.stack(xs), *outputs),
      jnp.asarray(weights, jnp.float32), jnp.asarray(ids, jnp.int32)))


def reference_rounds(algorithm: Algorithm, model: Model,
                     data: data_lib.FederatedData, cohorts, *,
                     batching: data_lib.Batching,
                     client_update: Callable | None = None):
  """The rounds as a plain Python loop over the real clients.

  Batches come from the engine's index plan gathered on the host, and each
  client's key is ``fold_in(fold_in(round_key, client_id), TRAIN_STREAM)``,
  so the loop sees exactly the engine's randomness. A stateful algorithm's
  clients read their row of the state table and write it back; a first
  exchange (``algorithm.prepare``) runs over the clients before training,
  and ``algorithm.transform`` on each client's output after it.
  Aggregation
  is a float64 example-weighted mean, or for an algorithm with its own
  aggregator, that aggregator's ``accumulate`` over all the real clients at
  once (the engine streams chunks of a padded cohort and sums devices).

  Returns:
    ``((server_state, table), [{'train_loss', 'clients'}])``.
  """
  client_update = client_update or jax.jit(algorithm.client_update)
  state = initial_state(algorithm, model)
  table = initial_table(algorithm, model, data)
  padded = max(len(ids) for ids in cohorts)
  history = []
  for r, ids in enumerate(cohorts):
    ids = np.asarray(ids, np.int32)
    key = round_key(r)
    cohort = data_lib.select(data, ids, num_padded=padded)
    cohort = data_lib.gather_on_host(
        data, cohort, key, batching=batching,
        num_steps=batching.num_steps(int(data.sizes[ids].max())))
    keys = data_lib.client_keys(key, jnp.asarray(ids))
    weights = data.sizes[ids].astype(np.float64)
    info = RoundInfo(num_clients=jnp.asarray(len(ids), jnp.int32),
                     total_weight=jnp.asarray(weights.sum(), jnp.float32),
                     population=jnp.asarray(data.num_clients, jnp.int32),
                     key=data_lib.server_key(key))

    def client_inputs(i, client):
      return (jax.tree.map(lambda t, c=client: t[c], table),
              {k: v[i] for k, v in cohort.batches.items()},
              cohort.example_mask[i],
              jax.random.fold_in(keys[i], data_lib.TRAIN_STREAM))

    if algorithm.prepare is not None:
      sent = [jax.device_get(algorithm.prepare.client(
          state, *client_inputs(i, client))) for i, client in enumerate(ids)]
      state = algorithm.prepare.server(
          state, _aggregate(algorithm.prepare.aggregator, sent, weights, ids),
          info)
    participants = jnp.asarray(np.where(weights > 0, ids, -1), jnp.int32)
    outputs, loss_total, loss_count = [], 0.0, 0.0
    for i, client in enumerate(ids):
      output, row, metrics = client_update(state, *client_inputs(i, client))
      if algorithm.transform is not None:
        output, row, more = algorithm.transform(
            state, output, row,
            jax.random.fold_in(keys[i], data_lib.TRANSFORM_STREAM),
            ClientInfo(jnp.int32(client), participants))
        metrics = {**metrics, **more}
      table = jax.tree.map(lambda t, v, c=client: t.at[c].set(v), table, row)
      outputs.append(jax.device_get(output))
      if 'train_loss' in metrics:
        loss_total += float(metrics['train_loss'].total)
        loss_count += float(metrics['train_loss'].count)
    state = algorithm.server_update(
        state, _aggregate(algorithm.aggregator, outputs, weights, ids), info)
    history.append({'train_loss': loss_total / max(loss_count, 1.0),
                    'clients': len(ids)})
  return (state, table), history


def assert_trees_close(actual, expected, what: str, rtol=RTOL, atol=ATOL):
  """Asserts equal structure and values within tolerance, naming ``what``."""
  assert jax.tree.structure(actual) == jax.tree.structure(expected), (
      f'{what}: tree structures differ: {jax.tree.structure(actual)} vs '
      f'{jax.tree.structure(expected)}')
  for a, e in zip(jax.tree.leaves(actual), jax.tree.leaves(expected)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(e), rtol=rtol,
                               atol=atol, err_msg=what)


def with_feature_dropout(model: Model, rate: float = 0.25) -> Model:
  """``model`` dropping input features while training, one mask per step,
  so that training uses the key the engine hands each client."""
  def apply(params, batch, *, key=None, train=False):
    if train and key is not None:
      x = batch['x']
      keep = jax.random.bernoulli(key, 1.0 - rate, x.shape[-1:])
      batch = dict(batch, x=x * keep.astype(x.dtype)[None, :] / (1.0 - rate))
    return model.apply(params, batch, key=key, train=train)
  return model._replace(apply=apply)


def pad_batches(batches, mask, extra_steps, extra_examples, rng):
  """Appends fully masked steps and masked examples holding garbage values
  (valid labels for integer features), as numpy arrays."""
  def pad(x):
    s, b = x.shape[:2]
    shape = (s + extra_steps, b + extra_examples) + x.shape[2:]
    if np.issubdtype(x.dtype, np.integer):
      out = rng.integers(0, int(x.max()) + 1, shape).astype(x.dtype)
    else:
      out = (10.0 * rng.standard_normal(shape)).astype(x.dtype)
    out[:s, :b] = x
    return out
  padded_mask = np.zeros((mask.shape[0] + extra_steps,
                          mask.shape[1] + extra_examples), bool)
  padded_mask[:mask.shape[0], :mask.shape[1]] = mask
  return {k: pad(np.asarray(v)) for k, v in batches.items()}, padded_mask


def _default_setup():
  from fedjax_engine import datasets, models  # pylint: disable=g-import-not-at-top
  data, _ = datasets.synthetic(num_clients=12, seed=0, size_log_mean=2.0,
                               min_size=3)
  model = with_feature_dropout(
      models.logistic_regression(num_features=60, num_classes=10))
  return model, data


class CountingRound:
  """``make_round`` of an algorithm whose ``client_update`` counts how often
  it is traced (``.traces``); the round is ``.round``."""

  def __init__(self, algorithm, data, **config):
    self.traces = 0

    @functools.wraps(algorithm.client_update)
    def client_update(*args):
      self.traces += 1
      return algorithm.client_update(*args)

    self.round = simulate.make_round(
        algorithm._replace(client_update=client_update), data, **config)


def engine_rounds(rnd, algorithm, model, cohorts, *, host_table=False):
  """Runs ``cohorts`` through the compiled round ``rnd`` from a fresh state
  and state table (in host memory with ``host_table``), with
  :func:`round_key` keys; returns ``((state, table), [metrics])``."""
  state = initial_state(algorithm, model)
  if host_table:
    table = simulate.host_table(algorithm, model.init(jax.random.key(0)),
                                rnd.data.num_clients)
  else:
    table = initial_table(algorithm, model, rnd.data)
  history = []
  for r, ids in enumerate(cohorts):
    state, table, metrics = rnd(state, table, rnd.select(ids), round_key(r))
    history.append(jax.device_get(metrics))
  return (state, table), history


def check_algorithm(build: Callable[[Model], Algorithm], *,
                    model: Model | None = None,
                    data: data_lib.FederatedData | None = None,
                    batching: data_lib.Batching | None = None) -> list[str]:
  """Runs ``build(model)`` through the conformance checks; see the module.

  Args:
    build: ``build(model) -> Algorithm``, e.g. a factory with its
      hyperparameters bound.
    model: default: logistic regression with feature dropout on ``data``.
    data: default: 12 small LEAF Synthetic clients (4 to 24 examples).
    batching: default: batches of 4, 3 local steps.

  Returns:
    The names of the checks that passed (all of them).

  Raises:
    AssertionError: naming the first check that failed.
  """
  if (model is None) != (data is None):
    raise ValueError('pass both model and data, or neither.')
  if model is None:
    model, data = _default_setup()
  batching = batching or data_lib.Batching(batch_size=4, local_steps=3)
  algorithm = build(model)
  cohorts = ([7, 2, 10, 0, 5], [1, 11, 6, 3, 9])
  cohorts = [[c % data.num_clients for c in ids] for ids in cohorts]
  size = len(cohorts[0])
  devices = jax.devices()

  def mesh(n):
    return jax.sharding.Mesh(np.array(devices[:n]), (simulate.AXIS,))

  (ref_state, ref_table), ref_history = reference_rounds(
      algorithm, model, data, cohorts, batching=batching)
  passed = []

  def matches(result, what):
    (state, table), history = result
    assert_trees_close((state, table), (ref_state, ref_table), what)
    for got, want in zip(history, ref_history):
      np.testing.assert_allclose(got['train_loss'], want['train_loss'],
                                 rtol=RTOL, err_msg=what)
      assert int(got['clients']) == want['clients'], what
    passed.append(what)

  counted = CountingRound(algorithm, data, batching=batching,
                     clients_per_round=size, mesh=mesh(len(devices)))
  matches(engine_rounds(counted.round, algorithm, model, cohorts),
          'round equals a Python loop (device gather)')
  traces = counted.traces
  engine_rounds(counted.round, algorithm, model, cohorts)
  # With local epochs, cohorts of other sizes may take another step bucket.
  programs = 1 if batching.local_epochs is None else len(cohorts)
  assert (counted.traces == traces and
          counted.round.num_compiled <= programs), (
              'no recompilation after the first round: client_update was '
              f'traced {counted.traces - traces} more times, '
              f'{counted.round.num_compiled} programs')
  passed.append('no recompilation after the first round')
  host = simulate.make_round(algorithm, data, batching=batching,
                             clients_per_round=size, gather='host')
  matches(engine_rounds(host, algorithm, model, cohorts),
          'round equals a Python loop (host gather)')
  if algorithm.init_client_state is not None:
    matches(engine_rounds(counted.round, algorithm, model, cohorts,
                          host_table=True),
            'a client-state table in host memory gives the same rounds')
  # One client's batches, then with garbage in two more masked steps and
  # three more masked examples per step.
  client = cohorts[0][0]
  cohort = data_lib.gather_on_host(
      data, data_lib.select(data, [client], num_padded=1), round_key(0),
      batching=batching, num_steps=batching.num_steps(int(data.sizes[client])))
  batches = {k: v[0] for k, v in cohort.batches.items()}
  mask = np.asarray(cohort.example_mask[0])
  garbage, garbage_mask = pad_batches(batches, mask, 2, 3,
                                      np.random.default_rng(0))
  update = jax.jit(algorithm.client_update)
  state = initial_state(algorithm, model)
  row = jax.tree.map(lambda t: t[client], initial_table(algorithm, model,
                                                          data))
  assert_trees_close(update(state, row, garbage, garbage_mask, round_key(0)),
                     update(state, row, batches, mask, round_key(0)),
                     'masked steps and examples change nothing')
  if algorithm.prepare is not None:
    send = jax.jit(algorithm.prepare.client)
    assert_trees_close(send(state, row, garbage, garbage_mask, round_key(0)),
                       send(state, row, batches, mask, round_key(0)),
                       'masked steps and examples change nothing (prepare)')
  passed.append('masked steps and examples change nothing')
  padded = simulate.make_round(algorithm, data, batching=batching,
                               clients_per_round=size + 3, mesh=mesh(1))
  matches(engine_rounds(padded, algorithm, model, cohorts),
          'padded clients change nothing')
  for chunk in (1, 2):
    rnd = simulate.make_round(algorithm, data, batching=batching,
                              clients_per_round=size, mesh=mesh(1),
                              client_chunk_size=chunk)
    matches(engine_rounds(rnd, algorithm, model, cohorts),
            f'chunks of {chunk} change nothing')

  sampler = sampling.uniform(num_clients=data.num_clients,
                             clients_per_round=size, key=jax.random.key(3))
  rnd = counted.round
  key = jax.random.key(4)
  state = initial_state(algorithm, model)
  table = initial_table(algorithm, model, data)
  for r in range(3):
    state, table, _ = rnd(state, table, rnd.select(sampler(r)),
                          jax.random.fold_in(key, r))
  fused = rnd.run_rounds(initial_state(algorithm, model),
                         initial_table(algorithm, model, data), sampler, key,
                         first_round=0, num_rounds=3, block=4)
  assert_trees_close(fused[:2], (state, table),
                     'fused rounds equal rounds driven from Python')
  passed.append('fused rounds equal rounds driven from Python')

  def once():
    return jax.device_get(rnd(initial_state(algorithm, model),
                              initial_table(algorithm, model, data),
                              rnd.select(cohorts[0]), jax.random.key(11)))
  for a, b in zip(jax.tree.leaves(once()), jax.tree.leaves(once())):
    np.testing.assert_array_equal(a, b, err_msg='same key, same result')
  passed.append('same key, same result')
  return passed
