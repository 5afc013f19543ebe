"""System heterogeneity: clients that fail, and clients that stop early.

Simulated for any algorithm, decided per client and round from the client's
own key (``fold_in(client_key, SYSTEM_STREAM)``), so it does not depend on
the client's position in the cohort, the chunk size or the device count:

* **Dropout** (``dropout_rate``): a client fails after training and sends
  nothing. It counts as absent: its output gets weight 0, its state is not
  written back, and it is left out of the round's ``clients`` and metrics.
  (The engine does not even train it: nothing it would compute is seen.)
* **Stragglers** (``straggler_rate``): a client completes only part of its
  local work, a uniformly random number of steps between 1 and all of its
  steps, as FedProx's experiments let stragglers run 1 to E epochs (Li et
  al., "Federated Optimization in Heterogeneous Networks", MLSys 2020,
  section 5.2). Its remaining steps are masked, so they cost nothing.

Both are off by default, and a round without them compiles no extra work.

Example:

  >>> import jax, optax, fedjax_engine as fe
  >>> train, _ = fe.datasets.synthetic(num_clients=20, seed=0)
  >>> model = fe.models.logistic_regression(num_features=60, num_classes=10)
  >>> algo = fe.algorithms.fedprox(model, client_optimizer=optax.sgd(0.01),
  ...                              mu=1.0)
  >>> rnd = fe.make_round(algo, train, clients_per_round=10,
  ...                     batching=fe.Batching(batch_size=10, local_epochs=2),
  ...                     system=SystemHeterogeneity(straggler_rate=0.9))
"""

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from fedjax_engine import data as data_lib


class SystemHeterogeneity(NamedTuple):
  """Rates of failing clients and of stragglers, each in [0, 1)."""
  dropout_rate: float = 0.0
  straggler_rate: float = 0.0

  def validate(self) -> 'SystemHeterogeneity':
    for name in self._fields:
      value = getattr(self, name)
      if not (isinstance(value, (int, float)) and math.isfinite(value)
              and 0 <= value < 1):
        raise ValueError(f'{name} must be in [0, 1), got {value!r}.')
    return self


def _uniforms(client_keys):
  """Independent uniforms per client: [clients, 3] (fails, straggles, how
  much of its work a straggler does)."""
  return jax.vmap(lambda k: jax.random.uniform(
      jax.random.fold_in(k, data_lib.SYSTEM_STREAM), (3,)))(client_keys)


def dropped(client_keys, rate: float):
  """Bool ``[clients]``: the clients that fail this round."""
  return _uniforms(client_keys)[:, 0] < rate


def straggler_steps(client_keys, busy_steps, rate: float):
  """Int ``[clients]``: steps each client completes of its ``busy_steps``.

  A straggler (probability ``rate``) completes ``1 + floor(u * busy)``
  steps, ``u`` uniform in [0, 1); the others all of theirs.
  """
  u = _uniforms(client_keys)
  partial = 1 + jnp.floor(u[:, 2] * busy_steps).astype(jnp.int32)
  return jnp.where(u[:, 1] < rate, jnp.minimum(partial, busy_steps),
                   busy_steps)
