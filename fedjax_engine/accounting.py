"""Privacy accounting: the (epsilon, delta) of a run with DP transforms.

The numbers come from Google's ``dp_accounting`` library, either from its
Renyi-DP accountant (Mironov, "Renyi Differential Privacy", CSF 2017) or
from privacy loss distributions (Koskela, Jalko, Honkela, "Computing Tight
Differential Privacy Guarantees Using FFT", AISTATS 2020; Doroshenko,
Ghazi, Kamath, Kumar, Manurangsi, "Connect the Dots: Tighter Discrete
Approximations of Privacy Loss Distributions", PETS 2022), tighter and
slower. A record is one client: the guarantees are user-level, for the
transforms of :mod:`fedjax_engine.privacy` with noise multiplier ``z``.

What is assumed about sampling matters as much as the noise. The engine's
uniform sampler (:func:`fedjax_engine.sampling.uniform`) draws a cohort of
exactly ``m = clients_per_round`` of the ``N = num_clients`` clients, WITHOUT
replacement, afresh every round; so each client takes part in a round with
probability ``q = m / N``, independently across rounds.

* ``dp_fedavg``, ``sampling='without_replacement'`` (the default, what the
  engine does): privacy amplification by sampling without replacement
  (Wang, Balle, Kasiviswanathan, "Subsampled Renyi Differential Privacy and
  Analytical Moments Accountant", AISTATS 2019), which ``dp_accounting``
  has for its RDP accountant only (``SampledWithoutReplacementDpEvent``) and
  only for REPLACE-ONE neighbours: a user is swapped for another, ``N``
  stays public, as fixed-size cohorts need (adding a user would change
  ``N`` and so ``q``). Two clipped outputs differ by up to ``2 S``, so the
  Gaussian event gets the multiplier ``z / 2`` (the library's multiplier is
  noise over sensitivity). The bound is loose: for the same ``z`` it is
  several times the add/remove epsilon of Poisson sampling. Adaptive
  clipping's pair of sums counts as one sum of multiplier ``z`` here too:
  under replace-one the update's sensitivity (``2 C``) and the bit count's
  (1) are both twice their add/remove values of Theorem 1 of Andrew et al.
* ``dp_fedavg``, ``sampling='poisson'``: every client joins each round
  independently with probability ``q`` (``PoissonSampledDpEvent``), the
  ADD/REMOVE-ONE analysis of DP-SGD (Abadi, Chu, Goodfellow, McMahan,
  Mironov, Talwar, Zhang, "Deep Learning with Differential Privacy", CCS
  2016) and of DP-FedAvg, with sensitivity ``S``. The engine's sampler
  does NOT sample this way; the number is what the literature reports for
  the same ``z``, ``q`` and rounds, not a guarantee of an engine run. Both
  accountants support it.
* ``dp_ftrl`` needs no sampling (Kairouz, McMahan, Song, Thakkar, Thakurta,
  Xu, "Practical and Private (Deep) Learning without Sampling or
  Shuffling", ICML 2021). Its noisy tree nodes are one Gaussian mechanism;
  a client that takes part ``k`` times in ``T`` rounds changes node
  ``(l, j)`` by at most ``c_{l,j} S`` with ``c_{l,j}`` its rounds under the
  node, ``sum_j c_{l,j} = k`` and ``c_{l,j} <= min(k, 2^l)``, so the
  sensitivity of all nodes together is ``S sqrt(k sum_{l<L} min(k, 2^l))``
  with ``L = floor(log2 T) + 1`` levels (:func:`tree_sensitivity`; for
  ``k = 1`` it is ``S sqrt(L)``, the paper's ``rho = L / (2 z^2)``-zCDP,
  as ``dp_accounting``'s ``SingleEpochTreeAggregationDpEvent``). Clients
  adapt to what they saw, and for Gaussian noise on linear queries this
  costs nothing (Denisov, McMahan, Rush, Smith, Thakurta, "Improved
  Differential Privacy for SGD via Optimal Private Linear Operators on
  Adaptive Streams", NeurIPS 2022). Neighbours: a user's data
  replaced by nothing (REPLACE-SPECIAL), taking part in the same rounds.
* ``local``: each message is a Gaussian mechanism of sensitivity ``2 S``;
  ``k`` of them compose to one with multiplier ``z / (2 sqrt(k))``.

For ``dp_ftrl`` and ``local``, ``max_participations`` bounds ``k`` when the
data pipeline enforces it. Otherwise ``k`` is random, Binomial(``T``,
``q``), under the engine's sampler: the run is then a mixture, over the
data-independent participation patterns, of mechanisms that are (epsilon,
delta_1)-DP whenever the user takes part at most ``k`` times, so it is
(epsilon, delta_1 + P[Binomial(T, q) > k])-DP; the best ``k`` is searched.
The availability sampler's cohorts follow another law: none of this
applies to it.

Example:

  >>> round(epsilon(noise_multiplier=1.0, clients_per_round=100,
  ...               num_clients=10_000, rounds=100, delta=1e-5,
  ...               sampling='poisson'), 3)
  1.214
"""

import functools
import math
import numbers

import dp_accounting
from dp_accounting import pld
from dp_accounting import rdp
import numpy as np
from scipy import optimize
from scipy import stats

MECHANISMS = ('dp_fedavg', 'dp_ftrl', 'local')
ACCOUNTANTS = ('rdp', 'pld')
SAMPLINGS = ('without_replacement', 'poisson')

# Tail probabilities of participation counts below this fraction of delta
# are negligible: a larger bound would only add sensitivity.
_NEGLIGIBLE_TAIL = 1e-3


def _require(ok, name, value, expected):
  if not ok:
    raise ValueError(f'{name} must be {expected}, got {value!r}.')


def _is_real(value):
  return (isinstance(value, numbers.Real) and not isinstance(value, bool)
          and value == value)


def _is_int(value):
  return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def tree_sensitivity(*, participations: int, rounds: int) -> float:
  """The L2 sensitivity, in units of the clip norm, of all the tree nodes
  over ``rounds`` rounds when a client takes part ``participations``
  times: ``sqrt(k sum_{l < L} min(k, 2^l))`` (see the module).

  Example:

    >>> round(tree_sensitivity(participations=1, rounds=1600) ** 2, 9)
    11.0
    >>> round(tree_sensitivity(participations=2, rounds=7) ** 2, 9)
    10.0
  """
  _require(_is_int(participations) and participations >= 1, 'participations',
           participations, 'an integer >= 1')
  _require(_is_int(rounds) and rounds >= 1, 'rounds', rounds,
           'an integer >= 1')
  k = participations
  levels = int(rounds).bit_length()
  return math.sqrt(k * sum(min(k, 2**level) for level in range(levels)))


def _gaussian_epsilon(multiplier, delta, accountant):
  """Epsilon of one Gaussian mechanism with noise/sensitivity
  ``multiplier``: the RDP bound, or the exact value (Balle, Wang,
  "Improving the Gaussian Mechanism for Differential Privacy", ICML 2018),
  which a privacy loss distribution would approximate."""
  if accountant == 'pld':
    return float(dp_accounting.get_epsilon_gaussian(multiplier, delta))
  acc = rdp.RdpAccountant()
  acc.compose(dp_accounting.GaussianDpEvent(multiplier))
  return float(acc.get_epsilon(delta))


def _sampled_fedavg_epsilon(noise_multiplier, clients_per_round, num_clients,
                            rounds, delta, accountant, sampling):
  if sampling == 'without_replacement':
    acc = rdp.RdpAccountant(
        neighboring_relation=dp_accounting.NeighboringRelation.REPLACE_ONE)
    event = dp_accounting.SampledWithoutReplacementDpEvent(
        num_clients, clients_per_round,
        dp_accounting.GaussianDpEvent(noise_multiplier / 2))
  else:
    acc = (rdp.RdpAccountant() if accountant == 'rdp'
           else pld.PLDAccountant())
    event = dp_accounting.PoissonSampledDpEvent(
        clients_per_round / num_clients,
        dp_accounting.GaussianDpEvent(noise_multiplier))
  acc.compose(dp_accounting.SelfComposedDpEvent(event, rounds))
  return float(acc.get_epsilon(delta))


def _participation_epsilon(multiplier_for, q, rounds, delta, accountant,
                           max_participations):
  """Epsilon when a client taking part ``k`` times makes the run a Gaussian
  mechanism of multiplier ``multiplier_for(k)``; ``k`` is bounded by
  ``max_participations`` or else Binomial(``rounds``, ``q``)."""
  if max_participations is not None:
    k = min(max_participations, rounds)
    return _gaussian_epsilon(multiplier_for(k), delta, accountant)
  if q == 1:
    return _gaussian_epsilon(multiplier_for(rounds), delta, accountant)
  counts = np.arange(rounds + 1)
  tails = stats.binom.sf(counts, rounds, q)    # P[k' > k]
  usable = counts[tails < delta]
  # Never empty: the tail beyond k = rounds is 0.
  last = usable[tails[usable] <= _NEGLIGIBLE_TAIL * delta][0]
  return min(
      _gaussian_epsilon(multiplier_for(int(k)), delta - float(tails[k]),
                        accountant)
      for k in usable[usable <= last])


def epsilon(*, noise_multiplier: float, clients_per_round: int,
            num_clients: int, rounds: int, delta: float,
            mechanism: str = 'dp_fedavg', accountant: str = 'rdp',
            sampling: str = 'without_replacement',
            max_participations: int | None = None) -> float:
  """The epsilon of ``rounds`` rounds of a DP mechanism at ``delta``.

  Args:
    noise_multiplier: ``z`` of the transforms (noise std over clip norm); 0
      gives infinity.
    clients_per_round: ``m``, the cohort size.
    num_clients: ``N``, the clients in the dataset.
    rounds: ``T``, the rounds trained (0 gives 0).
    delta: in (0, 1), well below ``1 / N``.
    mechanism: 'dp_fedavg' (fixed or adaptive clipping), 'dp_ftrl' or
      'local'.
    accountant: 'rdp' or 'pld' (tighter; for 'dp_fedavg' only with
      ``sampling='poisson'``, ``dp_accounting`` lacking sampling without
      replacement for it; for 'dp_ftrl' and 'local', whose run is one
      Gaussian mechanism, the exact epsilon of that mechanism).
    sampling: for 'dp_fedavg': 'without_replacement' (the engine's sampler,
      replace-one neighbours) or 'poisson' (the literature's assumption,
      add/remove neighbours); see the module.
    max_participations: for 'dp_ftrl' and 'local', a bound on how often a
      client takes part that the data pipeline enforces; None: the engine's
      uniform sampler, participation Binomial(``T``, ``m / N``).

  Returns:
    Epsilon, possibly ``math.inf``.

  Raises:
    ValueError: on an invalid argument, naming it.
  """
  _require(_is_real(noise_multiplier) and noise_multiplier >= 0,
           'noise_multiplier', noise_multiplier, 'a number >= 0')
  _require(_is_int(num_clients) and num_clients >= 1, 'num_clients',
           num_clients, 'an integer >= 1')
  _require(_is_int(clients_per_round) and
           1 <= clients_per_round <= num_clients, 'clients_per_round',
           clients_per_round, f'an integer in [1, {num_clients}] '
           '(num_clients)')
  _require(_is_int(rounds) and rounds >= 0, 'rounds', rounds,
           'an integer >= 0')
  _require(_is_real(delta) and 0 < delta < 1, 'delta', delta,
           'a number in (0, 1)')
  _require(mechanism in MECHANISMS, 'mechanism', mechanism,
           f'one of {MECHANISMS}')
  _require(accountant in ACCOUNTANTS, 'accountant', accountant,
           f'one of {ACCOUNTANTS}')
  _require(sampling in SAMPLINGS, 'sampling', sampling, f'one of {SAMPLINGS}')
  _require(max_participations is None or
           (_is_int(max_participations) and max_participations >= 1),
           'max_participations', max_participations, 'None or an integer >= 1')
  if mechanism == 'dp_fedavg':
    _require(max_participations is None, 'max_participations',
             max_participations, "None for mechanism='dp_fedavg' (its "
             'accounting rests on sampling, not on a participation bound)')
    _require(accountant == 'rdp' or sampling == 'poisson', 'accountant',
             accountant, "'rdp' with sampling='without_replacement' "
             "(dp_accounting's PLD accountant has no sampling without "
             "replacement; sampling='poisson' assumes Poisson sampling)")
  if rounds == 0:
    return 0.0
  if noise_multiplier == 0:
    return math.inf
  q = clients_per_round / num_clients
  if mechanism == 'dp_fedavg':
    return _sampled_fedavg_epsilon(noise_multiplier, clients_per_round,
                                   num_clients, rounds, delta, accountant,
                                   sampling)
  if mechanism == 'dp_ftrl':
    def multiplier_for(k):
      return noise_multiplier / tree_sensitivity(participations=k,
                                                 rounds=rounds)
  else:
    def multiplier_for(k):
      return noise_multiplier / (2 * math.sqrt(k))
  return _participation_epsilon(multiplier_for, q, rounds, delta, accountant,
                                max_participations)


def noise_for_epsilon(target_epsilon: float, *, clients_per_round: int,
                      num_clients: int, rounds: int, delta: float,
                      mechanism: str = 'dp_fedavg', accountant: str = 'rdp',
                      sampling: str = 'without_replacement',
                      max_participations: int | None = None,
                      rtol: float = 1e-3) -> float:
  """The smallest noise multiplier, within ``rtol``, whose :func:`epsilon`
  is at most ``target_epsilon``. The other arguments are :func:`epsilon`'s.

  Epsilon falls as the noise grows, and ``log epsilon`` is nearly linear in
  ``log z``, so Brent's method on the logs finds the root in a few calls
  (a privacy loss distribution costs seconds a call).

  Returns:
    ``z`` with ``epsilon(z) <= target_epsilon < epsilon(z (1 - rtol))``.

  Raises:
    ValueError: on an invalid argument, or a target no noise below ``2^40``
      reaches.
  """
  _require(_is_real(target_epsilon) and target_epsilon > 0, 'target_epsilon',
           target_epsilon, 'a number > 0')
  _require(_is_real(rtol) and 0 < rtol < 1, 'rtol', rtol,
           'a number in (0, 1)')

  @functools.cache   # Brent's method starts from the bracket's ends
  def eps(z):
    return epsilon(noise_multiplier=z, clients_per_round=clients_per_round,
                   num_clients=num_clients, rounds=rounds, delta=delta,
                   mechanism=mechanism, accountant=accountant,
                   sampling=sampling, max_participations=max_participations)

  if eps(1.0) <= target_epsilon:
    if rounds == 0:
      return 0.0
    low, high = 0.5, 1.0
    while eps(low) <= target_epsilon:
      low, high = low / 2, low
  else:
    low, high = 1.0, 2.0
    while eps(high) > target_epsilon:
      _require(high < 2.0**40, 'target_epsilon', target_epsilon,
               'reachable with a noise multiplier below 2^40')
      low, high = high, high * 2

  def log_gap(log_z):
    return math.log(max(eps(math.exp(log_z)), 1e-300) / target_epsilon)

  # In logs, Brent's tolerance is relative; a step past the root it returns
  # lands at or above the true root.
  step = rtol / 4
  root = optimize.brentq(log_gap, math.log(low), math.log(high), xtol=step)
  z = min(math.exp(root + 2 * step), high)
  while eps(z) > target_epsilon:   # a PLD's discretization can jitter
    z *= 1 + step
  return z
