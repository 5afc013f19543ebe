"""Client sampling schedules.

A sampler is a function ``round -> client indices``; it is a pure function of
the seed and the round number, so a resumed run samples the same cohorts.

Example:

  >>> sample = uniform(num_clients=100, clients_per_round=3, seed=0)
  >>> len(set(sample(0))), (sample(0) == sample(0)).all()
  (3, np.True_)
"""

import numpy as np


def uniform(*, num_clients: int, clients_per_round: int, seed: int):
  """Each round, ``clients_per_round`` distinct clients drawn uniformly.

  This is FedAvg's sampling (McMahan et al., AISTATS 2017, Algorithm 1).
  """
  if not 1 <= clients_per_round <= num_clients:
    raise ValueError(f'clients_per_round must lie in [1, {num_clients}] (the '
                     f'number of clients), got {clients_per_round}.')

  def sample(round_num: int) -> np.ndarray:
    rng = np.random.default_rng([seed, round_num])
    return rng.choice(num_clients, clients_per_round, replace=False)

  return sample
