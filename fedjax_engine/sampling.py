"""Client sampling schedules.

A sampler maps a round number to the cohort's client indices. It is a pure
function of its key and the round, computed in JAX, so the same cohorts come
out when a run resumes and whether rounds are driven from Python one at a
time (``sampler(r)``) or fused on the device (``sampler.on_device(r)``).
On the device a cohort is ``clients_per_round`` slots; a slot that no client
fills (fewer clients available than asked for) holds -1, and ``sampler(r)``
returns only the filled slots.

Example:

  >>> import jax
  >>> sample = uniform(num_clients=100, clients_per_round=3,
  ...                  key=jax.random.key(0))
  >>> len(set(sample(0).tolist())), (sample(0) == sample(0)).all()
  (3, np.True_)
"""

import math

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

  def with_key(self, key) -> 'UniformSampler':
    """The same sampling under another key (a sweep's run, traced)."""
    return UniformSampler(num_clients=self.num_clients,
                          clients_per_round=self.clients_per_round, key=key)


def uniform(*, num_clients: int, clients_per_round: int,
            key) -> UniformSampler:
  """Uniform sampling without replacement; see :class:`UniformSampler`."""
  return UniformSampler(num_clients=num_clients,
                        clients_per_round=clients_per_round, key=key)


class AvailabilitySampler:
  """Uniform sampling among the clients available in the round.

  Client ``k`` is available in round ``r`` when ``(r + phase_k) mod period
  < available_fraction * period``, with ``phase_k`` drawn uniformly from
  ``[0, period)`` once per client: a diurnal pattern in which each client
  is online for the same share of every period, at its own time of day
  (cross-device FL trains on phones that are idle and charging, mostly at
  night; Bonawitz et al., "Towards Federated Learning at Scale: System
  Design", MLSys 2019). Each round draws ``clients_per_round`` of the
  available clients uniformly without replacement, or all of them when
  fewer are available (the rest of the cohort stays empty).
  """

  def __init__(self, *, num_clients: int, clients_per_round: int, key,
               period: int = 24, available_fraction: float = 0.5):
    if not 1 <= clients_per_round <= num_clients:
      raise ValueError(
          f'clients_per_round must lie in [1, {num_clients}] (the number of '
          f'clients), got {clients_per_round}.')
    if not (isinstance(period, int) and period >= 1):
      raise ValueError(f'period must be an integer >= 1, got {period!r}.')
    if not 0 < available_fraction <= 1:
      raise ValueError(f'available_fraction must lie in (0, 1], got '
                       f'{available_fraction!r}.')
    self.num_clients = num_clients
    self.clients_per_round = clients_per_round
    self.key = key
    self.period = period
    self.available_fraction = available_fraction
    # The phases have a stream of their own, apart from the rounds' keys.
    phase_key, self._round_key = jax.random.split(key)
    self.phases = jax.random.randint(phase_key, (num_clients,), 0, period)
    self._on_host = jax.jit(self.on_device)

  def available(self, round_num):
    """Bool ``[num_clients]``: who can be sampled in ``round_num``."""
    hour = (round_num + self.phases) % self.period
    return hour < self.available_fraction * self.period

  def on_device(self, round_num):
    """The cohort of ``round_num`` (traceable): int32 ``[clients_per_round]``,
    -1 in slots no available client fills."""
    scores = jax.random.uniform(
        jax.random.fold_in(self._round_key, round_num), (self.num_clients,))
    available = self.available(round_num)
    scores = jnp.where(available, scores, jnp.inf)
    _, ids = jax.lax.top_k(-scores, self.clients_per_round)
    return jnp.where(jnp.isfinite(scores[ids]), ids, -1).astype(jnp.int32)

  def __call__(self, round_num: int) -> np.ndarray:
    ids = np.asarray(self._on_host(round_num))
    return ids[ids >= 0]


def available(*, num_clients: int, clients_per_round: int, key,
              period: int = 24,
              available_fraction: float = 0.5) -> AvailabilitySampler:
  """Diurnal availability; see :class:`AvailabilitySampler`."""
  return AvailabilitySampler(num_clients=num_clients,
                             clients_per_round=clients_per_round, key=key,
                             period=period,
                             available_fraction=available_fraction)


class PoissonSampler:
  """Each client takes part in a round independently with probability
  ``rate``: the sampling that the privacy accounting of DP-SGD and DP-FedAvg
  assumes (Abadi et al., CCS 2016; McMahan et al., ICLR 2018).

  The cohort varies in size; the round holds ``capacity`` slots (the
  ``clients_per_round`` a round is compiled for), clients fill them in a
  random order and empty slots hold -1. A round that draws more clients
  than ``capacity`` leaves the extra ones out, which the accounting does
  not cover; the default capacity, the mean plus 7 standard deviations of
  the cohort size (and at least 8), makes that rarer than about one round
  in 10^11.
  """

  def __init__(self, *, num_clients: int, rate: float, key,
               capacity: int | None = None):
    if not 0 < rate <= 1:
      raise ValueError(f'rate must lie in (0, 1], got {rate!r}.')
    mean = rate * num_clients
    if capacity is None:
      capacity = math.ceil(mean + 7 * math.sqrt(mean * (1 - rate)))
      capacity = min(num_clients, max(capacity, min(8, num_clients)))
    if not 1 <= capacity <= num_clients:
      raise ValueError(f'capacity must lie in [1, {num_clients}] (the number '
                       f'of clients), got {capacity}.')
    self.num_clients = num_clients
    self.rate = rate
    self.clients_per_round = capacity
    self.key = key
    self._on_host = jax.jit(self.on_device)

  def on_device(self, round_num):
    """The cohort of ``round_num`` (traceable): int32 ``[capacity]``, -1 in
    empty slots."""
    draws = jax.random.uniform(jax.random.fold_in(self.key, round_num),
                               (2, self.num_clients))
    # Who takes part, and, independently, the order that fills the slots.
    scores = jnp.where(draws[0] < self.rate, draws[1], jnp.inf)
    _, ids = jax.lax.top_k(-scores, self.clients_per_round)
    return jnp.where(jnp.isfinite(scores[ids]), ids, -1).astype(jnp.int32)

  def __call__(self, round_num: int) -> np.ndarray:
    ids = np.asarray(self._on_host(round_num))
    return ids[ids >= 0]


def poisson(*, num_clients: int, rate: float, key,
            capacity: int | None = None) -> PoissonSampler:
  """Poisson sampling; see :class:`PoissonSampler`."""
  return PoissonSampler(num_clients=num_clients, rate=rate, key=key,
                        capacity=capacity)
