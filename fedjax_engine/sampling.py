"""Client sampling schedules.

A sampler maps a round number to the cohort's client indices. It is a pure
function of its key and the round, computed in JAX, so the same cohorts come
out when a run resumes and whether rounds are driven from Python one at a
time (``sampler(r)``) or fused on the device (``sampler.on_device(r)``).

Example:

  >>> import jax
  >>> sample = uniform(num_clients=100, clients_per_round=3,
  ...                  key=jax.random.key(0))
  >>> len(set(sample(0).tolist())), (sample(0) == sample(0)).all()
  (3, np.True_)
"""

import jax
import jax.numpy as jnp
import numpy as np

from fedjax_engine import data as data_lib


class UniformSampler:
  """``clients_per_round`` distinct clients a round, uniformly at random.

  This is FedAvg's sampling (McMahan et al., AISTATS 2017, Algorithm 1).
  The cohort is the first ``clients_per_round`` positions of a keyed
  pseudo-random permutation of all clients (:func:`data.permute`): O(C)
  work and no sort, whatever the number of clients.
  """

  def __init__(self, *, num_clients: int, clients_per_round: int, key):
    if not 1 <= clients_per_round <= num_clients:
      raise ValueError(
          f'clients_per_round must lie in [1, {num_clients}] (the number of '
          f'clients), got {clients_per_round}.')
    self.num_clients = num_clients
    self.clients_per_round = clients_per_round
    self.key = key
    self._on_host = jax.jit(self.on_device)

  def on_device(self, round_num):
    """The cohort of ``round_num`` (traceable): int32 ``[clients_per_round]``."""
    key = jax.random.fold_in(self.key, round_num)
    round_keys = jax.random.bits(key, (data_lib.FEISTEL_ROUNDS,), jnp.uint32)
    slots = jnp.arange(self.clients_per_round, dtype=jnp.uint32)
    return data_lib.permute(slots, self.num_clients,
                            round_keys).astype(jnp.int32)

  def __call__(self, round_num: int) -> np.ndarray:
    return np.asarray(self._on_host(round_num))


def uniform(*, num_clients: int, clients_per_round: int,
            key) -> UniformSampler:
  """Uniform sampling without replacement; see :class:`UniformSampler`."""
  return UniformSampler(num_clients=num_clients,
                        clients_per_round=clients_per_round, key=key)
