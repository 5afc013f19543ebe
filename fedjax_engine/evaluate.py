"""Vectorized evaluation over every client's examples.

Every client's data is read once, in order, in batches; all clients share the
params, so a chunk of clients is one large batched forward pass. Results come
both ways papers report them: averaged over all examples, and averaged per
client (each client with at least one example counts once).

Example:

  >>> import jax, fedjax_engine as fe
  >>> _, test = fe.datasets.synthetic(num_clients=8, seed=0)
  >>> model = fe.models.logistic_regression(num_features=60, num_classes=10)
  >>> evaluate = make_evaluate(model, test, batch_size=32)
  >>> sorted(evaluate(model.init(jax.random.key(0))))
  ['accuracy', 'accuracy_per_client', 'loss', 'loss_per_client']
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from fedjax_engine import data as data_lib
from fedjax_engine import simulate
from fedjax_engine.model import Model

class Evaluator:
  """Evaluates params on all clients of a dataset; see :func:`make_evaluate`."""

  def __init__(self, model: Model, data: data_lib.FederatedData, *,
               batch_size: int, client_chunk_size: int | None,
               mesh: Mesh | None):
    data.check_not_empty('evaluation')
    self.model = model
    self.mesh = mesh or simulate.default_mesh()
    max_size = int(data.sizes.max(initial=1))
    # A client's batch never exceeds its largest peer, so small test splits
    # are not padded up to batch_size; the chunk then fills a forward pass
    # of about batch_size examples with several clients.
    per_client_batch = min(batch_size, max_size)
    self.batching = data_lib.Batching(
        batch_size=per_client_batch, local_epochs=1, shuffle=False).validate()
    self.num_steps = math.ceil(max_size / per_client_batch)
    num_devices = self.mesh.devices.size
    per_device = math.ceil(data.num_clients / num_devices)
    if client_chunk_size is None:
      client_chunk_size = max(
          1, batch_size // (self.num_steps * per_client_batch))
    chunk = min(client_chunk_size, per_device)
    per_device = math.ceil(per_device / chunk) * chunk
    self.num_chunks = per_device // chunk
    cohort = data_lib.select(data, np.arange(data.num_clients),
                             num_padded=per_device * num_devices)
    sharded = NamedSharding(self.mesh, P(simulate.AXIS))
    self._ids = jax.device_put(cohort.client_ids, sharded)
    self._mask = jax.device_put(cohort.client_mask, sharded)
    self._store = data.to_device(NamedSharding(self.mesh, P()))
    self._loader = simulate.BatchLoader(self.batching)
    self._jitted = jax.jit(self._evaluate)

  def __call__(self, params) -> dict:
    """Metric name -> value, example-weighted and ``<name>_per_client``."""
    sums, counts = self._jitted(params, self._ids, self._mask, self._store)
    has_data = counts > 0
    out = {}
    for name, total in sums.items():
      out[name] = jnp.sum(total) / jnp.maximum(jnp.sum(counts), 1.0)
      per_client = jnp.where(has_data, total / jnp.maximum(counts, 1.0), 0.0)
      out[f'{name}_per_client'] = (jnp.sum(per_client) /
                                   jnp.maximum(jnp.sum(has_data), 1))
    return out

  def _client_sums(self, params, batches, mask):
    metrics = {'loss': self.model.loss, **self.model.metrics}

    def step(acc, inputs):
      batch, m = inputs
      outputs = self.model.apply(params, batch, train=False)
      w = m.astype(jnp.float32)
      return {k: acc[k] + jnp.sum(fn(outputs, batch) * w)
              for k, fn in metrics.items()}, None

    zeros = {k: jnp.zeros((), jnp.float32) for k in metrics}
    sums, _ = jax.lax.scan(step, zeros, (batches, mask))
    return sums, jnp.sum(mask.astype(jnp.float32))

  def _evaluate(self, params, ids, client_mask, store):
    def on_device(params, ids, client_mask, store):
      per_client = dict(client_ids=ids, client_mask=client_mask,
                        batches=None, example_mask=None)
      chunks = simulate.split_chunks(per_client, self.num_chunks)

      def body(carry, chunk):
        # Evaluation reads every example in order: the plan needs no key.
        keys = jnp.zeros(chunk['client_ids'].shape, jnp.uint32)
        keys = jax.vmap(jax.random.key)(keys)
        batches, mask = self._loader(store, chunk, keys, self.num_steps)
        return carry, jax.vmap(self._client_sums, in_axes=(None, 0, 0))(
            params, batches, mask)

      _, results = simulate.chunked(body, (), chunks, self.num_chunks)
      return simulate.merge_chunks(results)

    return jax.shard_map(
        on_device, mesh=self.mesh,
        in_specs=(P(), P(simulate.AXIS), P(simulate.AXIS), P()),
        out_specs=P(simulate.AXIS), check_vma=False)(
            params, ids, client_mask, store)


def make_evaluate(model: Model, data: data_lib.FederatedData, *,
                  batch_size: int = 1024, client_chunk_size: int | None = None,
                  mesh: Mesh | None = None) -> Evaluator:
  """Compiles evaluation of ``model`` on every client of ``data``.

  Args:
    model: the model; its ``loss`` and ``metrics`` are reported.
    data: the clients to evaluate (typically the test split).
    batch_size: examples per forward pass: a client's batches hold at most
      this many (and at most its largest peer's size), and by default a
      chunk of clients fills one pass of about this many examples.
    client_chunk_size: clients evaluated at once per device (default: see
      ``batch_size``).
    mesh: devices to shard the clients over.

  Returns:
    ``evaluate(params) -> {name: value, name_per_client: value}``.
  """
  return Evaluator(model, data, batch_size=batch_size,
                   client_chunk_size=client_chunk_size, mesh=mesh)
