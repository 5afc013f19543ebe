"""Personalized evaluation: each client's own model on its own test examples.

For every client ``k`` of the dataset, in one compiled program over blocks of
clients (vmapped within a device, split over the devices):

1. its model: ``algorithm.personalize(server_state, client_state_k, batches_k,
   mask_k, key_k)`` when the algorithm has one (Ditto's personal model, a
   FedRep head on the global body, a HypCluster cluster model, ...), else the
   global ``server_state.params``; ``batches_k`` are the client's training
   examples planned as the round plans them;
2. optionally ``finetune_steps`` local steps of ``finetune_optimizer`` on its
   training examples (personalization by fine-tuning, e.g. Wang et al.,
   "Federated Evaluation of On-device Personalization", 2019);
3. its loss and metrics on its test examples.

Results come per client and summarized the way personalization and fairness
papers report them: the mean over clients (each client with a test example
counts once), the worst client (``_client_min``) and the 10th percentile
(``_client_p10``). Training and test data must hold the same clients in the
same order (a per-client split, as LEAF and TFF datasets have).

Example:

  >>> import jax, optax, fedjax_engine as fe
  >>> train, test = fe.datasets.synthetic(num_clients=8, seed=0)
  >>> model = fe.models.logistic_regression(num_features=60, num_classes=10)
  >>> algo = fe.algorithms.fedavg(model, client_optimizer=optax.sgd(0.1))
  >>> evaluate = make_personal_evaluate(
  ...     model, algo, train, test, batching=fe.Batching(8, local_steps=2),
  ...     finetune_steps=2, finetune_optimizer=optax.sgd(0.1))
  >>> scores = evaluate(algo.init(model.init(jax.random.key(0))))
  >>> sorted(scores)[:3]
  ['personal_accuracy', 'personal_accuracy_client_min', 'personal_accuracy_client_p10']
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from fedjax_engine import algorithm as algorithm_lib
from fedjax_engine import data as data_lib
from fedjax_engine import evaluate as evaluate_lib
from fedjax_engine import simulate
from fedjax_engine.model import Mean, Model

PREFIX = 'personal_'
# The fine-tuning plan's stream, apart from the personalization plan's.
_FINETUNE_STREAM = 3


class PersonalEvaluator:
  """Evaluates every client's own model; see :func:`make_personal_evaluate`.

  Example (Ditto's personal models, one per client of the dataset):

    >>> import optax, fedjax_engine as fe
    >>> train, test = fe.datasets.synthetic(num_clients=8, seed=0)
    >>> model = fe.models.logistic_regression(num_features=60, num_classes=10)
    >>> algo = fe.algorithms.ditto(model, client_optimizer=optax.sgd(0.1),
    ...                            ditto_lambda=0.5)
    >>> evaluate = make_personal_evaluate(
    ...     model, algo, train, test, batching=fe.Batching(8, local_steps=2))
    >>> isinstance(evaluate, PersonalEvaluator), evaluate.num_clients
    (True, 8)
  """

  def __init__(self, model: Model, algorithm: algorithm_lib.Algorithm,
               train: data_lib.FederatedData, test: data_lib.FederatedData, *,
               batching: data_lib.Batching, finetune_steps: int,
               finetune_optimizer: optax.GradientTransformation | None,
               batch_size: int, client_chunk_size: int | None,
               clients_per_call: int, mesh: Mesh | None):
    if train.num_clients != test.num_clients or not np.array_equal(
        train.client_ids, test.client_ids):
      raise ValueError(
          'personalized evaluation needs the same clients in the training and '
          f'test data, in the same order; got {train.num_clients} training and '
          f'{test.num_clients} test clients.')
    test.check_not_empty('personalized evaluation')
    for name, value in (('batch_size', batch_size),
                        ('clients_per_call', clients_per_call)):
      if not isinstance(value, int) or value < 1:
        raise ValueError(f'{name} must be a positive integer, got {value!r}.')
    if not isinstance(finetune_steps, int) or finetune_steps < 0:
      raise ValueError(f'finetune_steps must be an integer >= 0, got '
                       f'{finetune_steps!r}.')
    if finetune_steps and finetune_optimizer is None:
      raise ValueError(f'finetune_steps={finetune_steps} needs a '
                       'finetune_optimizer.')
    if client_chunk_size is not None and (
        not isinstance(client_chunk_size, int) or client_chunk_size < 1):
      raise ValueError(f'client_chunk_size must be a positive integer, got '
                       f'{client_chunk_size!r}.')
    self.model = model
    self.algorithm = algorithm
    self.batching = batching.validate()
    self.finetune_steps = finetune_steps
    self.mesh = mesh or simulate.default_mesh()
    self.num_clients = train.num_clients
    num_devices = self.mesh.devices.size
    self._chunk = client_chunk_size
    self._block = math.ceil(min(clients_per_call, self.num_clients) /
                            num_devices) * num_devices
    self._num_steps = self.batching.num_steps(int(train.sizes.max(initial=1)))
    self._finetune = (algorithm_lib.local_training(model, finetune_optimizer)
                      if finetune_steps else None)
    self._finetune_batching = data_lib.Batching(
        batch_size=self.batching.batch_size,
        local_steps=max(finetune_steps, 1), shuffle=self.batching.shuffle)
    replicated = NamedSharding(self.mesh, P())
    self._sharded = NamedSharding(self.mesh, P(simulate.AXIS))
    self._store = train.to_device(replicated)
    self._test = self._lay_out_test(test, batch_size)
    self._jitted = jax.jit(self._evaluate_block)

  def _lay_out_test(self, test, batch_size):
    """Each client's test examples as ``[blocks][clients, batches, B, ...]``
    with a mask, padded to the largest client; placed on the devices once."""
    largest = int(test.sizes.max())
    batch_size = min(batch_size, largest)
    per_client = math.ceil(largest / batch_size) * batch_size
    num_blocks = math.ceil(self.num_clients / self._block)
    padded_clients = num_blocks * self._block
    slot = np.arange(per_client)
    sizes = np.zeros(padded_clients, np.int64)
    sizes[:self.num_clients] = test.sizes
    starts = np.zeros(padded_clients, np.int64)
    starts[:self.num_clients] = test.offsets[:-1]
    mask = slot[None, :] < sizes[:, None]
    rows = np.where(mask, starts[:, None] + slot[None, :], 0)
    shape = (num_blocks, self._block, per_client // batch_size, batch_size)
    features = {name: np.take(v, rows, axis=0).reshape(shape + v.shape[1:])
                for name, v in test.features.items()}
    return [data_lib.put_global(
        ({n: f[b] for n, f in features.items()}, mask.reshape(shape)[b]),
        self._sharded) for b in range(num_blocks)]

  def per_client(self, server_state, client_states=(), key=None) -> dict:
    """Metric name -> ``np.ndarray [num_clients]`` of per-client values
    (NaN for a client without test examples).

    Args:
      server_state: the algorithm's server state.
      client_states: the client-state table (on the device, or a host table),
        or ``()`` for a stateless algorithm.
      key: randomness of the personalization and fine-tuning batches and
        steps; ``jax.random.key(0)`` when None, so repeated calls agree.
    """
    stateful = self.algorithm.init_client_state is not None
    if stateful and not jax.tree.leaves(client_states):
      raise ValueError('this algorithm keeps client state: pass its table '
                       '(client_states) to personalized evaluation.')
    key = jax.random.key(0) if key is None else key
    totals = []
    for b, (test_batches, test_mask) in enumerate(self._test):
      ids = np.arange(b * self._block, (b + 1) * self._block)
      ids = np.minimum(ids, self.num_clients - 1).astype(np.int32)
      rows = (jax.tree.map(lambda t, i=ids: t[i], client_states)
              if stateful else ())
      rows, ids_on_device = data_lib.put_global((rows, ids), self._sharded)
      totals.append(simulate.settled(self._jitted(
          server_state, rows, ids_on_device, key, self._store, test_batches,
          test_mask)))
    totals = jax.device_get(totals)
    out = {}
    for name in totals[0]:
      total = np.concatenate([t[name].total for t in totals])
      count = np.concatenate([t[name].count for t in totals])
      total, count = total[:self.num_clients], count[:self.num_clients]
      with np.errstate(invalid='ignore', divide='ignore'):
        out[name] = np.where(count > 0, total / count, np.nan)
    return out

  def __call__(self, server_state, client_states=(), key=None) -> dict:
    """``personal_<metric>`` (mean over clients), and for every metric but
    the loss ``personal_<metric>_client_min`` and ``_client_p10``."""
    return summarize(self.per_client(server_state, client_states, key))

  def _evaluate_block(self, server_state, rows, ids, key, store, test_batches,
                      test_mask):
    metrics = {'loss': self.model.loss, **self.model.metrics}
    algo = self.algorithm
    chunk = self._chunk or simulate.default_chunk_size(
        sum(x.size for x in jax.tree.leaves(server_state.params)),
        self._block // self.mesh.devices.size)

    def one_client(server_state, key, store, inputs):
      row, client, tests, test_mask = inputs
      client_key = jax.random.fold_in(key, client)
      train_key = jax.random.fold_in(client_key, data_lib.TRAIN_STREAM)
      if algo.personalize is None:
        params = server_state.params
      else:
        plan, mask = data_lib.plan_client(
            jax.random.fold_in(client_key, data_lib.DATA_STREAM),
            store.starts[client], store.sizes[client],
            batching=self.batching, num_steps=self._num_steps)
        params = algo.personalize(server_state, row,
                                  data_lib.gather(store.features, plan), mask,
                                  train_key)
      if self._finetune is not None:
        plan, mask = data_lib.plan_client(
            jax.random.fold_in(client_key, _FINETUNE_STREAM),
            store.starts[client], store.sizes[client],
            batching=self._finetune_batching,
            num_steps=self.finetune_steps)
        params, _ = self._finetune(
            params, data_lib.gather(store.features, plan), mask,
            jax.random.fold_in(train_key, _FINETUNE_STREAM))

      def batch_metrics(acc, inputs):
        batch, m = inputs
        outputs = self.model.apply(params, batch, train=False)
        w = m.astype(jnp.float32)
        acc = dict(acc)
        for name, (total, count) in evaluate_lib.example_values(
            metrics, outputs, batch).items():
          acc[name] = Mean(acc[name].total + jnp.sum(total * w),
                           acc[name].count + jnp.sum(count * w))
        return acc, ()

      zero = jnp.zeros((), jnp.float32)
      acc, _ = jax.lax.scan(batch_metrics,
                            {name: Mean(zero, zero) for name in metrics},
                            (tests, test_mask))
      return acc

    def on_device(server_state, key, store, rows, ids, test_batches,
                  test_mask):
      return jax.lax.map(
          lambda inputs: one_client(server_state, key, store, inputs),
          (rows, ids, test_batches, test_mask), batch_size=chunk)

    spec = P(simulate.AXIS)
    return jax.shard_map(
        on_device, mesh=self.mesh,
        in_specs=(P(), P(), P(), spec, spec, spec, spec),
        out_specs=spec, check_vma=False)(server_state, key, store, rows, ids,
                                         test_batches, test_mask)


def summarize(per_client: dict) -> dict:
  """Summary of per-client values (:meth:`PersonalEvaluator.per_client`):
  the mean over clients with a value and, for every metric but the loss, the
  minimum and 10th percentile."""
  out = {}
  for name, values in per_client.items():
    counted = values[~np.isnan(values)]
    out[PREFIX + name] = float(np.mean(counted))
    if name != 'loss':
      out[f'{PREFIX}{name}_client_min'] = float(np.min(counted))
      out[f'{PREFIX}{name}_client_p10'] = float(np.percentile(counted, 10.0))
  return out


def make_personal_evaluate(
    model: Model, algorithm: algorithm_lib.Algorithm,
    train: data_lib.FederatedData, test: data_lib.FederatedData, *,
    batching: data_lib.Batching, finetune_steps: int = 0,
    finetune_optimizer: optax.GradientTransformation | None = None,
    batch_size: int = 256, client_chunk_size: int | None = None,
    clients_per_call: int = 1024, mesh: Mesh | None = None
) -> PersonalEvaluator:
  """Compiles personalized evaluation of ``algorithm`` on every client.

  Args:
    model: the model; its ``loss`` and ``metrics`` are reported.
    algorithm: the algorithm whose ``personalize`` gives each client's model
      (the global params when it has none).
    train: the clients' training examples, which personalization and
      fine-tuning use.
    test: the same clients' test examples.
    batching: how a client's training examples become the batches handed to
      ``personalize`` (typically the training batching); fine-tuning uses its
      batch size.
    finetune_steps: local steps of ``finetune_optimizer`` each client takes
      from its model before it is tested (0: none).
    finetune_optimizer: e.g. ``optax.sgd(client_lr)``.
    batch_size: test examples per forward pass within a client.
    client_chunk_size: clients vmapped at once per device (default as for
      training rounds, :func:`fedjax_engine.simulate.default_chunk_size`).
    clients_per_call: clients per compiled call; a client-state table in
      host memory moves this many rows to the devices at a time.
    mesh: devices to split the clients over (all local devices by default).

  Returns:
    ``evaluate(server_state, client_states=(), key=None) -> {name: value}``;
    ``evaluate.per_client(...)`` gives the per-client values.
  """
  return PersonalEvaluator(
      model, algorithm, train, test, batching=batching,
      finetune_steps=finetune_steps, finetune_optimizer=finetune_optimizer,
      batch_size=batch_size, client_chunk_size=client_chunk_size,
      clients_per_call=clients_per_call, mesh=mesh)
