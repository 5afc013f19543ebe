"""Vectorized evaluation over every client's examples.

The examples of all clients are read once, in store order, in fixed-size
batches that ignore client boundaries, so nothing is padded but the last
batch; the batches are split over the devices. Each example's metrics are
added into its client's totals, and results come both ways papers report
them: averaged over all examples, and averaged per client (each client with
at least one example counts once). For every metric but the loss, the
spread over clients that fairness papers report comes too: the worst
client's value (``<name>_client_min``) and the 10th percentile over clients
(``<name>_client_p10``), e.g. q-FFL's (Li et al., ICLR 2020).

Example:

  >>> import jax, fedjax_engine as fe
  >>> _, test = fe.datasets.synthetic(num_clients=8, seed=0)
  >>> model = fe.models.logistic_regression(num_features=60, num_classes=10)
  >>> evaluate = make_evaluate(model, test, batch_size=32)
  >>> sorted(evaluate(model.init(jax.random.key(0))))
  ['accuracy', 'accuracy_client_min', 'accuracy_client_p10', 'accuracy_per_client', 'loss', 'loss_per_client']
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from fedjax_engine import data as data_lib
from fedjax_engine import simulate
from fedjax_engine.model import Mean, Model


def example_values(metrics, outputs, batch) -> dict:
  """``name -> (total [B], count)`` of each metric for a batch's examples.

  A plain per-example value counts once per example; a Mean carries its own
  count (tokens of a sequence, labels of an example), so ratios of sums are
  over those units.
  """
  out = {}
  for name, fn in metrics.items():
    value = fn(outputs, batch)
    out[name] = ((value.total, value.count) if isinstance(value, Mean)
                 else (value, 1.0))
  return out


class Evaluator:
  """Evaluates params on all clients of a dataset; see :func:`make_evaluate`.

  Example (the examples go to the device at once, the program is compiled
  at the first call):

    >>> import fedjax_engine as fe
    >>> _, test = fe.datasets.synthetic(num_clients=8, seed=0)
    >>> model = fe.models.logistic_regression(num_features=60, num_classes=10)
    >>> evaluate = make_evaluate(model, test, batch_size=32)
    >>> isinstance(evaluate, Evaluator), evaluate.num_clients
    (True, 8)
  """

  def __init__(self, model: Model, data: data_lib.FederatedData, *,
               batch_size: int, mesh: Mesh | None):
    data.check_not_empty('evaluation')
    if not isinstance(batch_size, int) or batch_size < 1:
      raise ValueError(f'batch_size must be a positive integer, got '
                       f'{batch_size!r}.')
    self.model = model
    self.mesh = mesh or simulate.default_mesh()
    self.num_clients = data.num_clients
    num_devices = self.mesh.devices.size
    n = data.num_examples
    # A small test set is not padded up to a large batch_size.
    batch_size = min(batch_size, math.ceil(n / num_devices))
    num_batches = math.ceil(n / batch_size / num_devices) * num_devices
    self.batch_size = batch_size
    self.batches_per_device = num_batches // num_devices
    pad = num_batches * batch_size - n

    def layout(values):
      padded = np.concatenate(
          [values, np.zeros((pad,) + values.shape[1:], values.dtype)])
      return padded.reshape((num_batches, batch_size) + values.shape[1:])

    owners = np.repeat(np.arange(data.num_clients, dtype=np.int32),
                       data.sizes)
    sharded = NamedSharding(self.mesh, P(simulate.AXIS))
    self._batches = data_lib.put_global(
        {name: layout(v) for name, v in data.features.items()}, sharded)
    self._owners = data_lib.put_global(layout(owners), sharded)
    self._mask = data_lib.put_global(layout(np.ones(n, bool)), sharded)
    self._jitted = jax.jit(self._evaluate)

  def __call__(self, params) -> dict:
    """Metric name -> value, example-weighted and ``<name>_per_client``.

    Returns once the values are computed: see :func:`simulate.settled`.
    """
    return simulate.settled(self._jitted(params, self._batches, self._mask,
                                         self._owners))

  def _evaluate(self, params, batches, mask, owners):
    metrics = {'loss': self.model.loss, **self.model.metrics}
    k = self.num_clients

    def on_device(params, batches, mask, owners):
      def body(acc, inputs):
        batch, m, own = inputs
        outputs = self.model.apply(params, batch, train=False)
        w = m.astype(jnp.float32)
        acc = dict(acc)
        for name, (total, count) in example_values(metrics, outputs,
                                                   batch).items():
          acc[name] = Mean(
              acc[name].total + jax.ops.segment_sum(total * w, own,
                                                    num_segments=k),
              acc[name].count + jax.ops.segment_sum(count * w, own,
                                                    num_segments=k))
        return acc, ()

      zeros = jnp.zeros(k, jnp.float32)
      acc0 = {name: Mean(zeros, zeros) for name in metrics}
      acc, _ = simulate.chunked(body, acc0, (batches, mask, owners),
                                self.batches_per_device)
      return jax.lax.psum(acc, simulate.AXIS)

    sums = jax.shard_map(
        on_device, mesh=self.mesh,
        in_specs=(P(), P(simulate.AXIS), P(simulate.AXIS), P(simulate.AXIS)),
        out_specs=P(), check_vma=False)(params, batches, mask, owners)
    out = {}
    for name, m in sums.items():
      out[name] = jnp.sum(m.total) / jnp.maximum(jnp.sum(m.count), 1e-12)
      counted = m.count > 0
      per_client = jnp.where(counted, m.total / jnp.maximum(m.count, 1e-12),
                             0.0)
      out[f'{name}_per_client'] = (jnp.sum(per_client) /
                                   jnp.maximum(jnp.sum(counted), 1))
      if name != 'loss':
        of_counted = jnp.where(counted, per_client, jnp.nan)
        out[f'{name}_client_min'] = jnp.nanmin(of_counted)
        out[f'{name}_client_p10'] = jnp.nanpercentile(of_counted, 10.0)
    return out


def make_evaluate(model: Model, data: data_lib.FederatedData, *,
                  batch_size: int = 1024,
                  mesh: Mesh | None = None) -> Evaluator:
  """Compiles evaluation of ``model`` on every client of ``data``.

  The examples stay on the device(s) between calls: the test split is placed
  there once, in batches split over the mesh.

  Args:
    model: the model; its ``loss`` and ``metrics`` are reported.
    data: the clients to evaluate (typically the test split).
    batch_size: examples per forward pass (fewer when the data is smaller).
    mesh: devices to split the batches over (all local devices by default).

  Returns:
    ``evaluate(params) -> {name: value, name_per_client: value}``.
  """
  return Evaluator(model, data, batch_size=batch_size, mesh=mesh)
