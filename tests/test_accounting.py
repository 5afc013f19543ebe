"""Tests for fedjax_engine.accounting against published numbers, the
dp_accounting library's own events, brute force and closed forms."""

import itertools
import math

import dp_accounting
from dp_accounting import rdp
import numpy as np
import pytest
from scipy import optimize
from scipy import stats

from fedjax_engine import accounting


def _analytic_gaussian_epsilon(multiplier, delta):
  """The exact epsilon of one Gaussian mechanism (noise std over
  sensitivity ``multiplier``) at ``delta``: the root of Balle and Wang's
  (ICML 2018, Theorem 8) ``delta(eps) = Phi(mu/2 - eps/mu) - e^eps
  Phi(-mu/2 - eps/mu)``, ``mu = 1 / multiplier``."""
  mu = 1 / multiplier

  def excess(eps):
    return (stats.norm.cdf(mu / 2 - eps / mu) -
            math.exp(eps) * stats.norm.cdf(-mu / 2 - eps / mu) - delta)

  return optimize.brentq(excess, 0.0, 500.0, xtol=1e-12)


def test_dp_sgd_mnist_setting_of_abadi_et_al():
  # Abadi et al., "Deep Learning with Differential Privacy", CCS 2016,
  # Section 3.1: q = L / N = 0.01, sigma = 4, delta = 1e-5, T = 10^4 steps
  # give epsilon ~ 1.26 with the moments accountant under Poisson sampling.
  # RDP over more orders, with a sharper conversion, can only do better;
  # privacy loss distributions better still.
  setting = dict(noise_multiplier=4.0, clients_per_round=600,
                 num_clients=60_000, rounds=10_000, delta=1e-5,
                 sampling='poisson')
  by_rdp = accounting.epsilon(accountant='rdp', **setting)
  by_pld = accounting.epsilon(accountant='pld', **setting)
  assert by_rdp <= 1.26
  assert 0.8 * by_rdp < by_pld <= by_rdp
  # The library's own number for the setting, stated with its events.
  acc = rdp.RdpAccountant()
  acc.compose(dp_accounting.SelfComposedDpEvent(
      dp_accounting.PoissonSampledDpEvent(
          0.01, dp_accounting.GaussianDpEvent(4.0)), 10_000))
  assert by_rdp == pytest.approx(acc.get_epsilon(1e-5), rel=1e-12)


@pytest.mark.parametrize('noise_multiplier, published', [(1.13, 19.74),
                                                         (8.83, 2.04)])
def test_dp_ftrl_stackoverflow_setting(noise_multiplier, published):
  # Kairouz et al., "Practical and Private (Deep) Learning without Sampling
  # or Shuffling", ICML 2021: StackOverflow (342,477 clients), 100 clients a
  # round for 1600 rounds, each client at most once, delta = 1e-6; the
  # epsilons are the paper's, as dp_accounting's test_compute_eps_tree
  # quotes them (the library's accounting may only improve on them).
  setting = dict(noise_multiplier=noise_multiplier, clients_per_round=100,
                 num_clients=342_477, rounds=1600, delta=1e-6,
                 mechanism='dp_ftrl', max_participations=1)
  by_rdp = accounting.epsilon(accountant='rdp', **setting)
  assert by_rdp < published
  acc = rdp.RdpAccountant(
      neighboring_relation=dp_accounting.NeighboringRelation.REPLACE_SPECIAL)
  acc.compose(dp_accounting.SingleEpochTreeAggregationDpEvent(
      noise_multiplier, 1600))
  assert by_rdp == pytest.approx(acc.get_epsilon(1e-6), rel=1e-9)
  assert accounting.epsilon(accountant='pld', **setting) < by_rdp


def _node_squares(rounds, pattern):
  """``sum_l sum_j c_{l,j}^2`` over the nodes that the prefix sums of
  ``rounds`` rounds use, for a client taking part in the rounds of
  ``pattern`` (1-based), counted node by node."""
  total = 0
  level = 0
  while 2**level <= rounds:
    size = 2**level
    for j in range(1, rounds // size + 1):
      c = sum((j - 1) * size < r <= j * size for r in pattern)
      total += c * c
    level += 1
  return total


@pytest.mark.parametrize('rounds', range(1, 10))
def test_tree_sensitivity_bounds_every_participation_pattern(rounds):
  for k in range(1, 4):
    worst = max(_node_squares(rounds, p)
                for n in range(1, k + 1)
                for p in itertools.combinations(range(1, rounds + 1), n))
    bound = accounting.tree_sensitivity(participations=k, rounds=rounds)**2
    assert worst <= bound + 1e-9, (rounds, k)
    if k == 1:   # one node per level: L = floor(log2 T) + 1
      assert worst == pytest.approx(bound)
      assert bound == pytest.approx(math.floor(math.log2(rounds)) + 1)
  # Rounds 1 and 2 share the nodes above level 0: 2 + 4 + 4.
  assert _node_squares(7, (1, 2)) == 10
  assert accounting.tree_sensitivity(participations=2, rounds=7)**2 == (
      pytest.approx(10))


def test_full_participation_is_one_gaussian_mechanism():
  # m = N: everyone takes part in all T = 4 rounds.
  z, delta = 3.0, 1e-5
  common = dict(noise_multiplier=z, clients_per_round=10, num_clients=10,
                rounds=4, delta=delta, accountant='pld')
  # Local: 4 messages of sensitivity 2 S: multiplier z / (2 * 2).
  assert accounting.epsilon(mechanism='local', **common) == pytest.approx(
      _analytic_gaussian_epsilon(z / 4, delta), rel=1e-6)
  # DP-FTRL: sensitivity^2 = 4 (1 + 2 + 4) = 28 over L = 3 levels.
  assert accounting.epsilon(mechanism='dp_ftrl', **common) == pytest.approx(
      _analytic_gaussian_epsilon(z / math.sqrt(28), delta), rel=1e-6)


def test_without_replacement_uses_the_replace_one_sensitivity():
  # With q = 1, sampling without replacement is no sampling: 4 rounds of a
  # Gaussian of sensitivity 2 S, RDP 4 * alpha * 2 / z^2.
  z, delta, rounds = 6.0, 1e-5, 4
  wor = accounting.epsilon(noise_multiplier=z, clients_per_round=10,
                           num_clients=10, rounds=rounds, delta=delta)
  poisson_half = accounting.epsilon(
      noise_multiplier=z / 2, clients_per_round=10, num_clients=10,
      rounds=rounds, delta=delta, sampling='poisson')
  assert wor == pytest.approx(poisson_half, rel=1e-9)
  exact = _analytic_gaussian_epsilon(z / (2 * math.sqrt(rounds)), delta)
  # Mironov's conversion, CSF 2017, Proposition 3.
  classic = min(rounds * 2 * a / z**2 + math.log(1 / delta) / (a - 1)
                for a in np.linspace(1.01, 200, 20_000))
  assert exact <= wor <= classic


def test_without_replacement_costs_more_than_poisson():
  common = dict(noise_multiplier=1.0, clients_per_round=100,
                num_clients=10_000, rounds=100, delta=1e-5)
  assert accounting.epsilon(**common) > 2 * accounting.epsilon(
      sampling='poisson', **common)


def test_random_participation_by_hand():
  z, delta = 3.0, 1e-5
  # One round, q = 1/2: at most once, so k = 1 with the whole delta.
  one = accounting.epsilon(noise_multiplier=z, clients_per_round=1,
                           num_clients=2, rounds=1, delta=delta,
                           mechanism='local', accountant='pld')
  assert one == pytest.approx(_analytic_gaussian_epsilon(z / 2, delta),
                              rel=1e-6)
  # Two rounds, q = 1/1000: P[k > 1] = 1e-6 < delta, P[k > 2] = 0. Either
  # k = 1 at delta - 1e-6, or k = 2 at delta, whichever is smaller.
  two = accounting.epsilon(noise_multiplier=z, clients_per_round=1,
                           num_clients=1000, rounds=2, delta=delta,
                           mechanism='local', accountant='pld')
  assert two == pytest.approx(min(
      _analytic_gaussian_epsilon(z / 2, delta - 1e-6),
      _analytic_gaussian_epsilon(z / (2 * math.sqrt(2)), delta)), rel=1e-6)


def test_random_participation_lies_between_bounds():
  # q = 0.05 over 200 rounds: 10 participations expected.
  common = dict(noise_multiplier=20.0, clients_per_round=50,
                num_clients=1000, rounds=200, delta=1e-6,
                mechanism='dp_ftrl')
  sampled = accounting.epsilon(**common)
  assert (accounting.epsilon(max_participations=10, **common) < sampled <
          accounting.epsilon(max_participations=200, **common))


@pytest.mark.parametrize('settings', [
    dict(mechanism='dp_fedavg', sampling='poisson', accountant='rdp'),
    dict(mechanism='dp_fedavg', sampling='poisson', accountant='pld'),
    dict(mechanism='dp_fedavg'),
    dict(mechanism='dp_ftrl', max_participations=2),
    dict(mechanism='local', accountant='pld'),
])
def test_noise_for_epsilon_inverts_epsilon(settings):
  common = dict(clients_per_round=20, num_clients=2000, rounds=50,
                delta=1e-5, **settings)
  target, rtol = 1.0, 1e-3
  z = accounting.noise_for_epsilon(target, rtol=rtol, **common)
  assert accounting.epsilon(noise_multiplier=z, **common) <= target
  assert accounting.epsilon(noise_multiplier=z * (1 - rtol), **common) > (
      target)


def test_edge_cases():
  common = dict(clients_per_round=10, num_clients=100, delta=1e-5)
  assert accounting.epsilon(noise_multiplier=0.0, rounds=5, **common) == (
      math.inf)
  assert accounting.epsilon(noise_multiplier=1.0, rounds=0, **common) == 0.0
  assert accounting.noise_for_epsilon(1.0, rounds=0, **common) == 0.0


@pytest.mark.parametrize('kwargs, name', [
    (dict(noise_multiplier=-1.0), 'noise_multiplier'),
    (dict(clients_per_round=101), 'clients_per_round'),
    (dict(num_clients=0), 'num_clients'),
    (dict(rounds=-1), 'rounds'),
    (dict(delta=0.0), 'delta'),
    (dict(mechanism='dp_sgd'), 'mechanism'),
    (dict(accountant='moments'), 'accountant'),
    (dict(sampling='shuffle'), 'sampling'),
    (dict(accountant='pld'), 'accountant'),   # pld without replacement
    (dict(max_participations=3), 'max_participations'),   # dp_fedavg
    (dict(mechanism='local', max_participations=0), 'max_participations'),
])
def test_invalid_arguments_name_the_parameter(kwargs, name):
  args = dict(noise_multiplier=1.0, clients_per_round=10, num_clients=100,
              rounds=10, delta=1e-5)
  with pytest.raises(ValueError, match=f'^{name} must be'):
    accounting.epsilon(**{**args, **kwargs})


def test_noise_for_epsilon_validates_its_target():
  with pytest.raises(ValueError, match='^target_epsilon must be'):
    accounting.noise_for_epsilon(0.0, clients_per_round=1, num_clients=10,
                                 rounds=1, delta=1e-5)
