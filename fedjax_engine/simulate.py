"""The engine: a federated round as one compiled program.

Inside the program, ``client_update`` is vmapped over a chunk of clients, a
scan walks the chunks while the aggregator streams their outputs into a fixed
size accumulator, and the cohort axis is split over a device mesh axis named
``'clients'`` with ``shard_map``; the per-device accumulators are combined by
one all-reduce. When the example store lives on the device, each chunk's
batches are planned and gathered inside the scan, so memory depends on the
chunk size and not on the cohort size.

Example:

  >>> import jax, optax, fedjax_engine as fe
  >>> train, _ = fe.datasets.synthetic(num_clients=20, seed=0)
  >>> model = fe.models.logistic_regression(num_features=60, num_classes=10)
  >>> algo = fe.algorithms.fedavg(model, client_optimizer=optax.sgd(0.1))
  >>> rnd = make_round(algo, train, clients_per_round=4,
  ...                  batching=fe.Batching(batch_size=8, local_steps=2))
  >>> state = algo.init(model.init(jax.random.key(0)))
  >>> state, _, metrics = rnd(state, (), rnd.select([0, 1, 2, 3]),
  ...                         jax.random.key(1))
  >>> sorted(metrics)
  ['clients', 'step_utilization', 'train_loss']

Reference for the round structure: McMahan et al., "Communication-Efficient
Learning of Deep Networks from Decentralized Data", AISTATS 2017.
"""

import functools
import math
import os
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from fedjax_engine import algorithm as algorithm_lib
from fedjax_engine import data as data_lib
from fedjax_engine import heterogeneity
from fedjax_engine import sampling as sampling_lib
from fedjax_engine import tree
from fedjax_engine.algorithm import Algorithm, Mean, RoundInfo

PyTree = Any
AXIS = 'clients'
COMPILE_FOR = ('speed', 'memory')
# How long a fused call (Round.run_rounds) may run before the runner fuses
# fewer rounds: XLA:CPU holds memory that grows while a call runs and is
# given back when it returns (measured with the EMNIST CNN at 100 clients a
# round: 2.2-2.4 MiB/s, 150-270 MiB over a 10-round call), and a call is
# also the unit in which metrics are written and progress is shown.
CALL_SECONDS = 1.0


def default_mesh() -> Mesh:
  """All local devices on one ``'clients'`` axis."""
  return Mesh(np.array(jax.devices()), (AXIS,))


def default_chunk_size(num_params: int, per_device_clients: int,
                       backend: str | None = None) -> int:
  """How many clients one device trains at once, when the user does not say.

  On accelerators, all of them. On CPU, vmapping per-client weights turns one
  large matmul into many small batched ones, which XLA:CPU runs slowly; past a
  few thousand parameters, clients one after another inside the compiled
  scan are faster (measured in benchmarks/round_speed.py).
  """
  backend = backend or jax.default_backend()
  if backend != 'cpu' or num_params <= CPU_VMAP_MAX_PARAMS:
    return per_device_clients
  return 1


# Largest model (parameters) that is vmapped across clients on CPU by default.
CPU_VMAP_MAX_PARAMS = 20_000


def rounds_for_call(seconds_per_round: float | None, *, rounds_per_call: int,
                    call_seconds: float = CALL_SECONDS) -> int:
  """Rounds the next fused call runs: those that fit in ``call_seconds``.

  ``seconds_per_round`` is the last call's time over its rounds (``None``
  before the first call, which then runs one round: it compiles, and its
  result comes soonest). A round longer than ``call_seconds`` runs alone;
  short ones are fused up to ``rounds_per_call``. Calls of any length use
  the same compiled program (:meth:`Round.run_rounds` with ``block``).

  Example:

    >>> rounds_for_call(None, rounds_per_call=10)
    1
    >>> rounds_for_call(0.004, rounds_per_call=10), rounds_for_call(
    ...     0.3, rounds_per_call=10), rounds_for_call(9.0, rounds_per_call=10)
    (10, 3, 1)
  """
  if seconds_per_round is None:
    return 1
  if seconds_per_round * rounds_per_call <= call_seconds:
    return rounds_per_call
  return max(1, int(call_seconds / seconds_per_round))


def compiler_options(compile_for: str, mesh: Mesh) -> dict[str, Any] | None:
  """XLA options for the round's programs; ``compile_for`` as make_round's.

  ``'memory'`` on CPU compiles with XLA:CPU's loop emitters instead of its
  MLIR fusion emitters, whose compilation leaves 80-230 MiB more in the
  process (freed, but kept by malloc; EMNIST CNN, 2NN and logistic rounds,
  ``benchmarks/README.md``). On other backends nothing changes.
  """
  if compile_for not in COMPILE_FOR:
    raise ValueError(f"compile_for must be 'speed' or 'memory', got "
                     f'{compile_for!r}.')
  if compile_for == 'memory' and mesh.devices.flat[0].platform == 'cpu':
    return {'xla_cpu_use_fusion_emitters': False}
  return None


def chunked(body, acc, xs, num_chunks: int):
  """``lax.scan`` over chunks, skipped when there is one chunk.

  A single chunk calls the body directly: no loop in the program, which also
  keeps XLA:CPU's slow in-loop convolution gradients out of that case.
  """
  if num_chunks == 1:
    acc, ys = body(acc, jax.tree.map(lambda x: x[0], xs))
    return acc, jax.tree.map(lambda y: y[None], ys)
  return jax.lax.scan(body, acc, xs)


def split_chunks(tree, num_chunks):
  return jax.tree.map(
      lambda x: x.reshape((num_chunks, x.shape[0] // num_chunks) + x.shape[1:]),
      tree)


def merge_chunks(tree):
  return jax.tree.map(lambda x: x.reshape((-1,) + x.shape[2:]), tree)


def psum_packed(tree, axis_name):
  """``lax.psum`` of a pytree as one buffer per element type.

  XLA:CPU's in-process all-reduce synchronizes the devices once per
  buffer; packing a round's accumulators (every leaf of the aggregate and
  the metric sums) into one vector makes that one rendezvous, not one per
  leaf.
  """
  leaves, treedef = jax.tree.flatten(tree)
  groups = {}
  for i, leaf in enumerate(leaves):
    groups.setdefault(jnp.result_type(leaf), []).append(i)
  out = list(leaves)
  for indices in groups.values():
    flat = jnp.concatenate([jnp.ravel(leaves[i]) for i in indices])
    flat = jax.lax.psum(flat, axis_name)
    offset = 0
    for i in indices:
      size = math.prod(jnp.shape(leaves[i]))
      out[i] = flat[offset:offset + size].reshape(jnp.shape(leaves[i]))
      offset += size
  return jax.tree.unflatten(treedef, out)


def _sum_metrics(metrics, client_mask):
  """Sums per-client ``Mean`` metrics over the chunk, padded clients out."""
  def masked_sum(x):
    m = client_mask.astype(x.dtype).reshape((-1,) + (1,) * (x.ndim - 1))
    return jnp.sum(x * m, axis=0)
  return jax.tree.map(masked_sum, metrics)


# Round metric: local steps that held examples of real clients over the
# steps the chunks ran (each chunk runs as many as its busiest client).
UTILIZATION = 'step_utilization'


def _step_utilization(mask, client_mask) -> Mean:
  """``Mean(useful, executed)`` steps of a chunk with step-major ``mask``."""
  busy = jax.vmap(algorithm_lib.busy_steps, in_axes=1)(mask)
  useful = jnp.sum(jnp.where(client_mask, busy, 0)).astype(jnp.float32)
  executed = (busy.shape[0] * jnp.max(busy)).astype(jnp.float32)
  return Mean(useful, executed)


def settled(outputs):
  """Returns ``outputs`` once every shard of every array in it is computed.

  Every engine call that runs a program with a cross-device all-reduce ends
  here, so no later dispatch is queued behind such a program. On CPU, XLA
  runs each device's part of a multi-device program on a thread pool of
  about one thread per device, and a part that reaches an all-reduce holds
  its thread until every other part arrives. Work dispatched ahead, while
  that program still runs (such as eager operations on its outputs, which
  JAX dispatches without waiting), can take the remaining threads: a
  dispatch that finds its device's queue of in-flight computations full
  blocks its pool thread until the queue drains, which it cannot while the
  all-reduce waits for a part that has no thread left to run on. The
  program then never finishes (XLA logs "Expected 2 threads to join the
  rendezvous"). Waiting here costs the overlap of Python with the device
  for one call, which fused rounds make small.
  """
  return jax.block_until_ready(outputs)


def _finalize_metrics(sums):
  return {name: m.total / jnp.maximum(m.count, 1e-12)
          for name, m in sums.items()}


class BatchLoader(NamedTuple):
  """Produces a chunk's batches, step-major: ``[S, chunk, B, ...]``.

  Step-major because ``client_update`` scans over steps: with the client
  axis second, every step's slice is contiguous and vmap of the scan needs
  no transpose of the batches (on CPU that transpose cost as much as a
  quarter of a logistic-regression round).
  """
  batching: data_lib.Batching

  def __call__(self, store, chunk, keys, num_steps):
    if chunk['batches'] is not None:
      return (jax.tree.map(lambda x: jnp.swapaxes(x, 0, 1), chunk['batches']),
              jnp.swapaxes(chunk['example_mask'], 0, 1))
    data_keys = jax.vmap(
        lambda k: jax.random.fold_in(k, data_lib.DATA_STREAM))(keys)
    plan = jax.vmap(functools.partial(
        data_lib.plan_client, batching=self.batching, num_steps=num_steps))
    ids = chunk['client_ids']
    rows, mask = plan(data_keys, store.starts[ids], store.sizes[ids])
    mask = mask & chunk['client_mask'][:, None, None]
    rows, mask = jnp.swapaxes(rows, 0, 1), jnp.swapaxes(mask, 0, 1)
    return data_lib.gather(store.features, rows), mask


class Round:
  """A compiled federated round; build it with :func:`make_round`.

  Call it as ``round(server_state, client_states, cohort, round_key) ->
  (server_state, client_states, metrics)``. ``client_states`` is the table
  of every client's state (leading axis = clients of the dataset), or ``()``
  for stateless algorithms. The server and client states are donated: do
  not reuse the arrays passed in.

  The table lives on the device (JAX arrays, replicated over the mesh), or
  in host memory (numpy arrays, possibly memory-mapped: see
  :func:`host_table`) when it does not fit there. A host table is updated
  in place: only the cohort's rows travel to the device and back each
  round, and results are the same either way (tested). Fused rounds
  (:meth:`run_rounds`) need the table on the device.

  Example (nothing is compiled before the first call):

    >>> import optax, fedjax_engine as fe
    >>> train, _ = fe.datasets.synthetic(num_clients=10, seed=0)
    >>> model = fe.models.logistic_regression(num_features=60, num_classes=10)
    >>> algo = fe.algorithms.fedavg(model, client_optimizer=optax.sgd(0.1))
    >>> rnd = make_round(algo, train, clients_per_round=3,
    ...                  batching=fe.Batching(batch_size=8, local_steps=1))
    >>> cohort = rnd.select([7, 2, 5])
    >>> sorted(cohort.client_ids[cohort.client_mask].tolist()), rnd.num_compiled
    ([2, 5, 7], 0)
  """

  def __init__(self, algorithm: Algorithm, data: data_lib.FederatedData, *,
               batching: data_lib.Batching, clients_per_round: int,
               client_chunk_size: int | None, mesh: Mesh | None,
               weighting: str, gather: str,
               system: heterogeneity.SystemHeterogeneity | None = None,
               compile_for: str = 'speed'):
    data.check_not_empty('training')
    if algorithm.prepare is not None and (
        algorithm.prepare.aggregator.whole_cohort):
      raise ValueError('the aggregator of a first exchange (Algorithm.'
                       'prepare) must stream: whole_cohort=False.')
    self.system = (system or heterogeneity.SystemHeterogeneity()).validate()
    self.algorithm = algorithm
    self.data = data
    self.batching = batching.validate()
    self.mesh = mesh or default_mesh()
    self.weighting = weighting
    num_devices = self.mesh.devices.size
    if clients_per_round < 1 or clients_per_round > data.num_clients:
      raise ValueError(
          f'clients_per_round must lie in [1, {data.num_clients}] (the '
          f'number of clients), got {clients_per_round}.')
    per_device = math.ceil(clients_per_round / num_devices)
    if client_chunk_size is not None:
      if client_chunk_size < 1:
        raise ValueError(
            f'client_chunk_size must be positive, got {client_chunk_size}.')
      client_chunk_size = min(client_chunk_size, per_device)
      per_device = math.ceil(per_device / client_chunk_size) * client_chunk_size
    # When None, the default is picked at the first call from the model size;
    # both defaults (all clients, or one) divide per_device, so the cohort
    # size is already final.
    self.chunk_size = client_chunk_size
    self.per_device = per_device
    self.cohort_size = per_device * num_devices
    if gather not in ('device', 'host'):
      raise ValueError(f"gather must be 'device' or 'host', got {gather!r}.")
    if weighting not in ('examples', 'uniform'):
      raise ValueError(f"weighting must be 'examples' or 'uniform', got "
                       f'{weighting!r}.')
    self.gather = gather
    self._replicated = NamedSharding(self.mesh, P())
    self._store = (data.to_device(self._replicated) if gather == 'device'
                   else None)
    self._sharded = NamedSharding(self.mesh, P(AXIS))
    self._loader = BatchLoader(self.batching)
    self.compile_for = compile_for
    options = compiler_options(compile_for, self.mesh)
    self._jitted = jax.jit(self._round, donate_argnums=(0, 1),
                           static_argnames=('num_steps', 'rows_only'),
                           compiler_options=options)
    self._fused = jax.jit(self._rounds, donate_argnums=(0, 1),
                          static_argnames=('sampler', 'block', 'num_steps'),
                          compiler_options=options)
    self._swept = jax.jit(self._sweep_rounds, donate_argnums=(0, 1),
                          static_argnames=('sampler', 'block', 'num_steps'),
                          compiler_options=options)

  def select(self, client_ids) -> data_lib.Cohort:
    """A cohort of these clients, padded to the round's fixed size.

    The clients are ordered for the devices and chunks (:meth:`_arrange`);
    the order changes no result beyond float rounding.
    """
    cohort = data_lib.select(self.data, client_ids,
                             num_padded=self.cohort_size,
                             weighting=self.weighting)
    real = int(np.sum(cohort.client_mask))
    sizes = self.data.sizes[cohort.client_ids[:real]]
    order = np.concatenate([np.argsort(-sizes, kind='stable'),
                            np.arange(real, self.cohort_size)])
    return jax.tree.map(lambda x: self._arrange(x[order]), cohort)

  def _arrange(self, x):
    """Deals clients sorted largest first to the devices in turn.

    Every device then gets a similar mix of sizes, and the consecutive
    clients that form each of its chunks are of similar size, so a chunk,
    which runs as many local steps as its busiest client, wastes few (see
    the ``step_utilization`` metric).
    """
    d = self.mesh.devices.size
    return x.reshape((-1, d) + x.shape[1:]).swapaxes(0, 1).reshape(x.shape)

  def num_steps(self, cohort: data_lib.Cohort) -> int:
    sizes = self.data.sizes[np.asarray(cohort.client_ids)]
    sizes = sizes[np.asarray(cohort.client_mask)]
    return self.batching.num_steps(int(sizes.max(initial=1)))

  @property
  def num_compiled(self) -> int:
    """Programs compiled so far: one per step bucket met (one with
    ``local_steps``), plus one per block length of :meth:`run_rounds`."""
    return (self._jitted._cache_size()  # pylint: disable=protected-access
            + self._fused._cache_size()  # pylint: disable=protected-access
            + self._swept._cache_size())  # pylint: disable=protected-access

  @property
  def num_chunks(self) -> int:
    return self.per_device // self.chunk_size

  def __call__(self, server_state, client_states, cohort, round_key):
    if self.chunk_size is None:
      self.chunk_size = default_chunk_size(
          tree.size(server_state.params), self.per_device)
    num_steps = self.num_steps(cohort)
    if self.gather == 'host':
      cohort = data_lib.gather_on_host(
          self.data, cohort, round_key, batching=self.batching,
          num_steps=num_steps)
    cohort = data_lib.put_global(cohort, self._sharded)
    if is_host_table(client_states):
      return self._call_with_host_table(server_state, client_states, cohort,
                                        round_key, num_steps)
    # States returned by a round are replicated over the mesh; placing the
    # first round's inputs the same way keeps one compiled program.
    server_state, client_states = jax.device_put(
        (server_state, client_states), self._replicated)
    return settled(self._jitted(server_state, client_states, cohort,
                                round_key, self._store, num_steps=num_steps))

  def _call_with_host_table(self, server_state, table, cohort, round_key,
                            num_steps):
    """The round with the cohort's rows of a host table: copied to the
    devices (split like the cohort), trained, and written back in place."""
    ids = np.asarray(jax.device_get(cohort.client_ids))
    real = np.asarray(jax.device_get(cohort.client_mask))
    rows = data_lib.put_global(jax.tree.map(lambda t: t[ids], table),
                               self._sharded)
    server_state = jax.device_put(server_state, self._replicated)
    server_state, rows, metrics = settled(self._jitted(
        server_state, rows, cohort, round_key, self._store,
        num_steps=num_steps, rows_only=True))
    rows = jax.device_get(rows)
    for t, new in zip(jax.tree.leaves(table), jax.tree.leaves(rows)):
      t[ids[real]] = new[real]
    return server_state, table, metrics

  def run_rounds(self, server_state, client_states, sampler, rounds_key, *,
                 first_round: int, num_rounds: int, block: int | None = None):
    """Runs several rounds in one compiled program, no Python between them.

    Round ``r`` trains the cohort ``sampler.on_device(r)`` with the round key
    ``fold_in(rounds_key, r)``: the same as calling this Round with
    ``select(sampler(r))`` and that key, but the sampling, planning and
    gathering of every round happen on the device inside one ``lax.scan``.
    Needs ``gather='device'``. With ``local_epochs`` every round takes the
    step count of the dataset's largest client (padded steps change
    nothing).

    Args:
      server_state, client_states: as for ``__call__`` (donated).
      sampler: a :mod:`fedjax_engine.sampling` sampler with ``on_device``.
      rounds_key: the experiment's key; round keys are folded from it.
      first_round: the number of the first round to run.
      num_rounds: rounds to run, at most ``block``.
      block: rounds the compiled scan holds (default ``num_rounds``); rounds
        past ``num_rounds`` are skipped, so calls with fewer rounds, as at
        the end of a run, reuse the same program.

    Returns:
      ``(server_state, client_states, metrics)``, metrics stacked over the
      rounds run: ``{name: [num_rounds]}`` numpy arrays, on the host.
    """
    block = num_rounds if block is None else block
    if self.gather != 'device':
      raise ValueError("run_rounds needs gather='device' (the example store "
                       f'on the device), got gather={self.gather!r}.')
    if is_host_table(client_states):
      raise ValueError('run_rounds needs the client-state table on the '
                       'device; with a host table, call the round once per '
                       'round.')
    if not 1 <= num_rounds <= block:
      raise ValueError(f'num_rounds must lie in [1, block={block}], got '
                       f'{num_rounds}.')
    if (sampler.num_clients != self.data.num_clients or
        sampler.clients_per_round > self.cohort_size):
      raise ValueError(
          f'the sampler draws {sampler.clients_per_round} of '
          f'{sampler.num_clients} clients; this round trains up to '
          f'{self.cohort_size} of {self.data.num_clients}.')
    if self.chunk_size is None:
      self.chunk_size = default_chunk_size(
          tree.size(server_state.params), self.per_device)
    num_steps = self.batching.num_steps(int(self.data.sizes.max(initial=1)))
    server_state, client_states = jax.device_put(
        (server_state, client_states), self._replicated)
    server_state, client_states, metrics = self._fused(
        server_state, client_states, rounds_key, self._store,
        np.int32(first_round), np.int32(num_rounds), sampler=sampler,
        block=block, num_steps=num_steps)
    server_state, client_states = settled((server_state, client_states))
    # Cut on the host: a slice on the device would compile a program for
    # each length, as at a run's last, shorter call.
    metrics = jax.tree.map(lambda m: np.asarray(m)[:num_rounds], metrics)
    return server_state, client_states, metrics

  def run_sweep(self, server_states, client_states, sampler, rounds_keys,
                sample_keys, *, first_round: int, num_rounds: int,
                block: int | None = None):
    """:meth:`run_rounds` for several runs of one experiment at once, in
    one compiled program: the runs (seeds) are vmapped, or, where clients
    train one at a time (``chunk_size`` 1), run one after another.

    Run ``i`` starts from ``server_states[i]`` and ``client_states[i]``
    (every leaf stacked over the runs), samples with ``sampler`` keyed by
    ``sample_keys[i]`` and folds its round keys from ``rounds_keys[i]``,
    so it computes what :meth:`run_rounds` computes for that run alone (to
    float rounding: batched products may sum in another order).

    Returns:
      ``(server_states, client_states, metrics)``, metrics
      ``{name: [runs, num_rounds]}`` numpy arrays, on the host.
    """
    block = num_rounds if block is None else block
    if not isinstance(sampler, sampling_lib.UniformSampler):
      raise ValueError('a sweep samples clients uniformly; got '
                       f'{type(sampler).__name__}.')
    if self.gather != 'device' or is_host_table(client_states):
      raise ValueError("a sweep needs gather='device' and the client-state "
                       'table on the device.')
    if not 1 <= num_rounds <= block:
      raise ValueError(f'num_rounds must lie in [1, block={block}], got '
                       f'{num_rounds}.')
    if self.chunk_size is None:
      self.chunk_size = default_chunk_size(
          tree.size(server_states.params) // rounds_keys.shape[0],
          self.per_device)
    num_steps = self.batching.num_steps(int(self.data.sizes.max(initial=1)))
    server_states, client_states = jax.device_put(
        (server_states, client_states), self._replicated)
    server_states, client_states, metrics = settled(self._swept(
        server_states, client_states, rounds_keys, sample_keys, self._store,
        np.int32(first_round), np.int32(num_rounds), sampler=sampler,
        block=block, num_steps=num_steps))
    metrics = jax.tree.map(lambda m: np.asarray(m)[:, :num_rounds], metrics)
    return server_states, client_states, metrics

  def _sweep_rounds(self, server_states, client_states, rounds_keys,
                    sample_keys, store, first_round, num_rounds, *, sampler,
                    block, num_steps):
    def one_run(server_state, client_state, rounds_key, sample_key):
      return self._rounds(server_state, client_state, rounds_key, store,
                          first_round, num_rounds,
                          sampler=sampler.with_key(sample_key), block=block,
                          num_steps=num_steps)
    runs = (server_states, client_states, rounds_keys, sample_keys)
    if self.chunk_size > 1:
      return jax.vmap(one_run)(*runs)
    # Where clients train one at a time (larger models on CPU, where small
    # batched products run slower), so do the runs: one after another in
    # the same program, which still saves a compile and a dispatch per run.
    return jax.lax.map(lambda run: one_run(*run), runs)

  def _device_cohort(self, ids, store) -> data_lib.Cohort:
    """What :meth:`select` builds on the host, built inside the program.

    Slots holding -1 (no client available) become padded clients.
    """
    pad = self.cohort_size - ids.shape[0]
    real = ids >= 0
    ids = jnp.maximum(ids, 0)
    # Largest first; empty slots last, as select() pads after the clients.
    order = jnp.argsort(jnp.where(real, -store.sizes[ids], 1), stable=True)
    ids, real = ids[order], real[order]
    weights = (store.sizes[ids].astype(jnp.float32)
               if self.weighting == 'examples'
               else jnp.ones(ids.shape, jnp.float32))
    cohort = data_lib.Cohort(
        client_ids=jnp.concatenate([jnp.where(real, ids, 0),
                                    jnp.zeros(pad, jnp.int32)]),
        client_mask=jnp.concatenate([real, jnp.zeros(pad, bool)]),
        weights=jnp.concatenate([jnp.where(real, weights, 0.0),
                                 jnp.zeros(pad, jnp.float32)]))
    return jax.tree.map(self._arrange, cohort)

  def _rounds(self, server_state, client_states, rounds_key, store,
              first_round, num_rounds, *, sampler, block, num_steps):
    def run(carry, r):
      cohort = self._device_cohort(sampler.on_device(r), store)
      server_state, client_states, metrics = self._round(
          *carry, cohort, jax.random.fold_in(rounds_key, r), store,
          num_steps=num_steps)
      return (server_state, client_states), metrics

    carry = (server_state, client_states)
    metrics_shape = jax.eval_shape(run, carry, first_round)[1]

    def step(carry, i):
      # A real conditional (not vmapped), so skipped rounds cost nothing.
      return jax.lax.cond(
          i < num_rounds, lambda c: run(c, first_round + i),
          lambda c: (c, jax.tree.map(
              lambda s: jnp.zeros(s.shape, s.dtype), metrics_shape)), carry)

    (server_state, client_states), metrics = jax.lax.scan(
        step, carry, jnp.arange(block))
    return server_state, client_states, metrics

  def _round(self, server_state, client_states, cohort, round_key, store, *,
             num_steps, rows_only=False):
    """One round. ``client_states`` is the whole table, or with
    ``rows_only`` the cohort's rows, which come back updated (rows of
    clients that did not take part unchanged)."""
    algo = self.algorithm
    stateful = algo.init_client_state is not None
    ids = cohort.client_ids
    if rows_only:
      cohort_states = client_states
    else:
      cohort_states = (jax.tree.map(
          lambda t: jnp.take(t, ids, axis=0, mode='clip'), client_states)
                       if stateful else ())
    keys = data_lib.client_keys(round_key, ids)
    client_mask, weights = cohort.client_mask, cohort.weights
    if self.system.dropout_rate:
      # A failed client is treated as absent: weight 0, no state written,
      # no examples (so no work), not counted.
      client_mask = client_mask & ~heterogeneity.dropped(
          keys, self.system.dropout_rate)
      weights = jnp.where(client_mask, weights, 0.0)
    per_client = dict(client_ids=ids, client_mask=client_mask,
                      weights=weights, keys=keys, states=cohort_states,
                      batches=cohort.batches, example_mask=cohort.example_mask)

    # The round's participants as every client sees them (ClientInfo): the
    # clients whose outputs the aggregator counts.
    participants = jnp.where(client_mask & (weights > 0), ids,
                             -1).astype(jnp.int32)

    def on_device(server_state, per_client, store, server_key, participants):
      chunks = split_chunks(per_client, self.num_chunks)

      def vmapped(fn):
        return jax.vmap(fn, in_axes=(None, 0, 1, 1, 0),
                        axis_name=algorithm_lib.COHORT_AXIS)

      def chunk_inputs(chunk):
        """A chunk's batches, example mask and training keys."""
        batches, mask = self._loader(store, chunk, chunk['keys'], num_steps)
        if self.system.dropout_rate:   # host-gathered batches of the failed
          mask = mask & chunk['client_mask'][None, :, None]
        if self.system.straggler_rate:
          busy = jax.vmap(algorithm_lib.busy_steps, in_axes=1)(mask)
          done = heterogeneity.straggler_steps(
              chunk['keys'], busy, self.system.straggler_rate)
          mask = mask & (jnp.arange(mask.shape[0])[:, None, None] <
                         done[None, :, None])
        train_keys = jax.vmap(
            lambda k: jax.random.fold_in(k, data_lib.TRAIN_STREAM))(
                chunk['keys'])
        return batches, mask, train_keys

      # The round's facts ride on an all-reduce the round runs anyway. XLA
      # combines all-reduces of one element type only, so the client count
      # travels as float32 (exact below 2^24 clients).
      counts = (jnp.sum(per_client['client_mask'].astype(jnp.float32)),
                jnp.sum(per_client['weights']))

      def round_info(counts):
        num_clients, total_weight = counts
        return RoundInfo(num_clients=num_clients.astype(jnp.int32),
                         total_weight=total_weight,
                         population=jnp.int32(self.data.num_clients),
                         key=server_key)

      def first_exchange(server_state):
        """The server state after ``algo.prepare``, and the round info."""
        prepare = algo.prepare
        send = vmapped(prepare.client)

        def run_chunk(chunk):
          batches, mask, keys = chunk_inputs(chunk)
          return send(server_state, chunk['states'], batches, mask, keys)

        out_shape = jax.eval_shape(
            lambda c: jax.tree.map(lambda x: x[0], run_chunk(c)),
            jax.tree.map(lambda x: x[0], chunks))

        def body(acc, chunk):
          return prepare.aggregator.accumulate(acc, run_chunk(chunk),
                                               chunk['weights']), ()

        acc, _ = chunked(body, prepare.aggregator.init(out_shape), chunks,
                         self.num_chunks)
        acc, summed = psum_packed((acc, counts), AXIS)
        info = round_info(summed)
        return prepare.server(server_state, prepare.aggregator.finalize(acc),
                              info), info

      if algo.prepare is not None:
        server_state, info = first_exchange(server_state)
      train = vmapped(algo.client_update)

      def run_chunk(chunk):
        batches, mask, train_keys = chunk_inputs(chunk)
        outputs, new_states, metrics = train(
            server_state, chunk['states'], batches, mask, train_keys)
        if algo.transform is not None:
          keys = jax.vmap(
              lambda k: jax.random.fold_in(k, data_lib.TRANSFORM_STREAM))(
                  chunk['keys'])
          outputs, new_states, more = jax.vmap(
              algo.transform, in_axes=(None, 0, 0, 0,
                                       algorithm_lib.ClientInfo(0, None)),
              axis_name=algorithm_lib.COHORT_AXIS)(
                  server_state, outputs, new_states, keys,
                  algorithm_lib.ClientInfo(chunk['client_ids'], participants))
          metrics = {**metrics, **more}
        metrics = _sum_metrics(metrics, chunk['client_mask'])
        metrics[UTILIZATION] = _step_utilization(mask, chunk['client_mask'])
        return outputs, new_states, metrics

      first = jax.tree.map(lambda x: x[0], chunks)
      out_shape = jax.eval_shape(
          lambda c: jax.tree.map(lambda x: x[0], run_chunk(c)[:2]), first)
      metrics_shape = jax.eval_shape(lambda c: run_chunk(c)[2], first)
      acc0 = (algo.aggregator.init(out_shape[0]),
              jax.tree.map(jnp.zeros_like, metrics_shape))

      def body(acc, chunk):
        outputs, new_states, metrics = run_chunk(chunk)
        agg_acc, metric_acc = acc
        agg_acc = algo.aggregator.accumulate(agg_acc, outputs, chunk['weights'])
        metric_acc = jax.tree.map(jnp.add, metric_acc, metrics)
        return (agg_acc, metric_acc), new_states

      def keep_outputs(metric_acc, chunk):
        outputs, new_states, metrics = run_chunk(chunk)
        return (jax.tree.map(jnp.add, metric_acc, metrics),
                (new_states, outputs))

      if algo.aggregator.whole_cohort:
        # Every device holds the whole cohort's outputs, in cohort order,
        # and reduces them alike; only the metric sums are summed below.
        metric_acc, (new_states, outputs) = chunked(
            keep_outputs, acc0[1], chunks, self.num_chunks)
        everyone = jax.lax.all_gather(
            (merge_chunks(outputs), per_client['weights'],
             per_client['client_ids']), AXIS, tiled=True)
        acc = (algo.aggregator.accumulate(acc0[0], *everyone), metric_acc)
      else:
        acc, new_states = chunked(body, acc0, chunks, self.num_chunks)
      agg_acc, metric_acc = acc
      whole = algo.aggregator.whole_cohort
      # A whole-cohort aggregate is already the same on every device.
      to_sum = metric_acc if whole else acc
      # One all-reduce a round (two with a first exchange, whose server
      # state then leaves the devices too).
      if algo.prepare is None:
        to_sum, summed_counts = psum_packed((to_sum, counts), AXIS)
        info = round_info(summed_counts)
      else:
        to_sum = psum_packed(to_sum, AXIS)
      acc = (agg_acc, to_sum) if whole else to_sum
      results = (acc, info)
      if algo.prepare is not None:
        results += (server_state,)
      return results, merge_chunks(new_states)

    client_spec = jax.tree.map(lambda _: P(AXIS), per_client)
    results, new_states = jax.shard_map(
        on_device, mesh=self.mesh,
        in_specs=(P(), client_spec, P(), P(), P()),
        out_specs=(P(), P(AXIS)), check_vma=False)(
            server_state, per_client, store, data_lib.server_key(round_key),
            participants)
    (agg_acc, metric_sums), info = results[:2]
    if algo.prepare is not None:
      server_state = results[2]

    server_state = algo.server_update(
        server_state, algo.aggregator.finalize(agg_acc), info)
    if stateful and rows_only:
      client_states = jax.tree.map(
          lambda new, old: jnp.where(
              client_mask.reshape((-1,) + (1,) * (new.ndim - 1)), new, old),
          new_states, client_states)
    elif stateful:
      table_size = jax.tree.leaves(client_states)[0].shape[0]
      rows = jnp.where(client_mask, ids, table_size)
      client_states = jax.tree.map(
          lambda t, new: t.at[rows].set(new, mode='drop'),
          client_states, new_states)
    metrics = _finalize_metrics(metric_sums)
    metrics['clients'] = info.num_clients
    if algo.server_metrics is not None:
      metrics.update(algo.server_metrics(server_state))
    return server_state, client_states, metrics


def is_host_table(client_states) -> bool:
  """Whether a client-state table lives in host memory (numpy arrays)."""
  leaves = jax.tree.leaves(client_states)
  return bool(leaves) and all(isinstance(x, np.ndarray) for x in leaves)


def host_table(algorithm: Algorithm, params, num_clients: int, *,
               folder: str | None = None):
  """Every client's initial state, in host memory, for a :class:`Round`.

  For tables larger than device memory: the round moves only the cohort's
  rows. With ``folder``, each leaf is a memory-mapped file there
  (``state_<i>.npy``), so the table may be larger than host memory too and
  the operating system pages rows in and out.

  Args:
    algorithm: a stateful algorithm (``init_client_state`` set).
    params: the initial params, passed to ``init_client_state``.
    num_clients: rows of the table (the dataset's clients).
    folder: where to keep memory-mapped files (created if missing); in
      memory when None.

  Returns:
    The table: the tree of ``init_client_state(params)`` with numpy leaves
    of shape ``[num_clients, ...]``.

  Example (SCAFFOLD's control variates, one row per client):

    >>> import jax, optax, fedjax_engine as fe
    >>> model = fe.models.logistic_regression(num_features=60, num_classes=10)
    >>> algo = fe.algorithms.scaffold(model, client_optimizer=optax.sgd(0.1))
    >>> table = host_table(algo, model.init(jax.random.key(0)), num_clients=100)
    >>> [leaf.shape for leaf in jax.tree.leaves(table)]
    [(100, 10), (100, 10, 60)]
  """
  if algorithm.init_client_state is None:
    raise ValueError('the algorithm keeps no client state '
                     '(init_client_state is None).')
  row = jax.device_get(algorithm.init_client_state(params))
  leaves, treedef = jax.tree.flatten(row)
  table = []
  for i, leaf in enumerate(leaves):
    leaf = np.asarray(leaf)
    shape = (num_clients,) + leaf.shape
    if folder is None:
      t = np.zeros(shape, leaf.dtype)
    else:
      os.makedirs(folder, exist_ok=True)
      t = np.lib.format.open_memmap(os.path.join(folder, f'state_{i}.npy'),
                                    mode='w+', dtype=leaf.dtype, shape=shape)
    # Both start as zeros that take no memory until written (pages the
    # operating system maps lazily), so a zero initial state (SCAFFOLD's
    # control variates) costs nothing until clients are first sampled.
    if np.any(leaf):
      t[...] = leaf
    table.append(t)
  return jax.tree.unflatten(treedef, table)


def make_round(algorithm: Algorithm, data: data_lib.FederatedData, *,
               batching: data_lib.Batching, clients_per_round: int,
               client_chunk_size: int | None = None, mesh: Mesh | None = None,
               weighting: str = 'examples', gather: str = 'device',
               system: heterogeneity.SystemHeterogeneity | None = None,
               compile_for: str = 'speed') -> Round:
  """Compiles ``algorithm``'s round over clients of ``data``.

  Args:
    algorithm: the federated algorithm.
    data: the training clients.
    batching: local batch size and steps or epochs.
    clients_per_round: real clients per round; the cohort is padded up to a
      multiple of (devices x chunk size) with zero-weight clients.
    client_chunk_size: clients vmapped at once on each device; the rest are
      scanned chunk after chunk with streaming aggregation. ``None`` picks a
      default for the backend and model size (:func:`default_chunk_size`).
    mesh: devices to shard the cohort over (axis ``'clients'``); all local
      devices by default.
    weighting: ``'examples'`` or ``'uniform'`` aggregation weights.
    gather: ``'device'`` places the example store on every device once and
      gathers batches inside the compiled round; ``'host'`` gathers each
      round's cohort with numpy (for data larger than device memory).
    system: clients that fail or stop early
      (:class:`fedjax_engine.heterogeneity.SystemHeterogeneity`); none by
      default.
    compile_for: ``'speed'`` (default) or ``'memory'``: on CPU, compile
      the round with XLA's loop emitters, which leaves 80-230 MiB less at
      peak and costs 0-40% of the speed of small models (none for the EMNIST
      CNN; see :func:`compiler_options`). Results are the same to float
      rounding.
  """
  return Round(algorithm, data, batching=batching,
               clients_per_round=clients_per_round,
               client_chunk_size=client_chunk_size, mesh=mesh,
               weighting=weighting, gather=gather, system=system,
               compile_for=compile_for)
