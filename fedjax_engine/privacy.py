"""User-level differential privacy for any algorithm, as transforms.

Each factory returns a list of :class:`fedjax_engine.transforms.Transform`
to put onto ANY algorithm with :func:`fedjax_engine.transforms.apply`. A
client's whole output (FedAvg's model delta, SCAFFOLD's pair of deltas) is
the record, so the guarantees are user-level: they cover everything one
client sends in a round. Put these transforms after any other: a transform
that changes an output after it is clipped breaks the sensitivity bound.
:mod:`fedjax_engine.accounting` turns their noise into (epsilon, delta).

DP-FedAvg with a fixed clip (McMahan, Ramage, Talwar, Zhang, "Learning
Differentially Private Recurrent Language Models", ICLR 2018): client k's
output ``Delta_k`` is clipped to L2 norm ``S``, the server sums the real
clients' outputs, adds Gaussian noise once and divides by the planned cohort
size ``m`` (the paper's fixed-denominator estimator)::

  Delta = (sum_k Delta_k min(1, S / ||Delta_k||) + N(0, (z S)^2 I)) / m

The sum is unweighted: an example-count weight would scale one user's
contribution past ``S``, which the noise is calibrated to.

Adaptive clipping (Andrew, Thakkar, McMahan, Ramaswamy, "Differentially
Private Learning with Adaptive Clipping", NeurIPS 2021): the clip norm ``C``
tracks the ``gamma`` quantile of the update norms, itself privately. Each
client clips to the current ``C`` and also sends ``b_k = [||Delta_k|| <= C]
- 1/2``; the server estimates the unclipped fraction and moves ``C``
geometrically::

  b = (sum_k b_k + N(0, sigma_b^2)) / m + 1/2,   C <- C exp(-eta (b - gamma))

Their Theorem 1 noises the update sum with multiplier ``z_Delta = (z^-2 -
(2 sigma_b)^-2)^(-1/2)`` (std ``z_Delta C``), which makes the pair of sums
exactly as private as one sum with multiplier ``z``; its ``2 sigma_b`` is
the count's noise over a sensitivity of 1/2, which is why the bits are
centered: adding or removing a user then moves their sum by 1/2. With all
``m`` clients reporting, ``b`` is the noisy count of unclipped clients over
``m``, as in their Algorithm 1.

Local DP: each client clips its output to ``S`` and adds its own
``N(0, (z S)^2 I)`` before it leaves the client; the server is not trusted.

DP-FTRL (Kairouz, McMahan, Song, Thakkar, Thakurta, Xu, "Practical and
Private (Deep) Learning without Sampling or Shuffling", ICML 2021): the
server keeps noisy prefix sums of the clipped client sums by tree
aggregation, so privacy needs no sampling. Node ``(l, j)`` of a binary tree
over rounds covers rounds ``(j - 1) 2^l + 1 .. j 2^l`` and carries noise
``xi_{l,j} ~ N(0, (z S)^2 I)``; the noisy prefix sum of rounds ``1..t``
adds the nodes of the set bits of ``t``::

  P_t = sum_{s <= t} sum_k Delta_{k,s} + sum_{l : bit l of t} xi_{l, t >> l}

so its noise has variance ``popcount(t) (z S)^2`` per coordinate, and a
client that takes part once touches one node per level. The server's
aggregate at round ``t`` is ``(P_t - P_{t-1}) / m``; with server
``optax.sgd(lr)`` the params are ``params_0 - lr P_t / m``, FTRL without
momentum. Any other server optimizer is post-processing and keeps the
guarantee. Node noise is drawn from ``fold_in(fold_in(key(seed), l), j)``
(leaf ``i`` of the output from ``fold_in(that, i)``), so it is regenerated
when needed and the state is only the round counter.

The noise comes from JAX's counter-based PRNG, which is fine for simulation
but is not a cryptographically secure source for a deployment.

Example (DP-FedAvg with adaptive clipping on FedAvg):

  >>> import optax, fedjax_engine as fe
  >>> model = fe.models.logistic_regression(num_features=60, num_classes=10)
  >>> dp = dp_fedavg(clip_norm=0.1, noise_multiplier=1.0,
  ...                expected_clients=100, target_quantile=0.5)
  >>> algo = fe.transforms.apply(
  ...     fe.algorithms.fedavg(model, client_optimizer=optax.sgd(0.1)), *dp)
"""

import numbers

import jax
import jax.numpy as jnp

from fedjax_engine import aggregate as aggregate_lib
from fedjax_engine import transforms as transforms_lib
from fedjax_engine import tree
from fedjax_engine.model import Mean
from fedjax_engine.transforms import Transform

DP_MODES = ('none', 'dp_fedavg', 'dp_ftrl', 'local')


def _require(ok, name, value, expected):
  if not ok:
    raise ValueError(f'{name} must be {expected}, got {value!r}.')


def _is_real(value):
  return (isinstance(value, numbers.Real) and not isinstance(value, bool)
          and value == value and abs(value) != float('inf'))


def _is_int(value):
  return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _check_clip_and_noise(clip_norm, noise_multiplier):
  _require(_is_real(clip_norm) and clip_norm > 0, 'clip_norm', clip_norm,
           'a number > 0')
  _require(_is_real(noise_multiplier) and noise_multiplier >= 0,
           'noise_multiplier', noise_multiplier, 'a number >= 0')


def _check_expected_clients(expected_clients):
  _require(_is_int(expected_clients) and expected_clients >= 1,
           'expected_clients', expected_clients, 'an integer >= 1')


def client_sum() -> aggregate_lib.Aggregator:
  """``sum_k x_k`` over the real clients (weight > 0), each counted once
  whatever its weight: the sum query of DP-FedAvg and DP-FTRL, whose
  sensitivity is the clip norm.

  Example:

    >>> import jax.numpy as jnp
    >>> agg = client_sum()
    >>> acc = agg.accumulate(agg.init(jnp.zeros(2)), jnp.array(
    ...     [[1., 2.], [3., 4.], [9., 9.]]), jnp.array([10., 1., 0.]))
    >>> agg.finalize(acc).tolist()
    [4.0, 6.0]
  """
  def init(template):
    return jax.tree.map(lambda t: jnp.zeros(t.shape, t.dtype), template)

  def accumulate(acc, outputs, weights):
    counted = (weights > 0).astype(jnp.float32)
    return tree.add(acc, tree.weighted_sum(outputs, counted))

  return aggregate_lib.Aggregator(init, accumulate, lambda acc: acc)


def _gaussian_like(key, like, std):
  """``N(0, std^2)`` noise shaped like the tree ``like``, one key per leaf."""
  leaves, treedef = jax.tree.flatten(like)
  return jax.tree.unflatten(treedef, [
      jnp.asarray(std, x.dtype) *
      jax.random.normal(jax.random.fold_in(key, i), x.shape, x.dtype)
      for i, x in enumerate(leaves)])


def _unchanged(state, output, row, key, client):
  del state, key, client
  return output, row, {}


def _central_noise(*, noise_std: float, expected_clients: int) -> Transform:
  """The clients' outputs summed, noised once at the server, over ``m``."""
  def server(state, aggregate, info):
    noisy = tree.add(aggregate, _gaussian_like(info.key, aggregate, noise_std))
    return tree.scale(noisy, 1.0 / expected_clients), state

  return Transform(client=_unchanged, server=server, aggregator=client_sum())


def _adaptive_clip(*, clip_norm, noise_multiplier, expected_clients,
                   target_quantile, clip_lr, clipped_count_stddev):
  """Clipping to a norm that follows a quantile, with the noisy sum."""
  if noise_multiplier == 0:
    update_multiplier, bits_std = 0.0, 0.0
  else:
    update_multiplier = (noise_multiplier**-2 -
                         (2 * clipped_count_stddev)**-2)**-0.5
    bits_std = clipped_count_stddev

  def init(params):
    del params
    return jnp.asarray(clip_norm, jnp.float32)

  def client(clip, output, row, key, client):
    del key, client
    norm = tree.l2_norm(output)
    unclipped = (norm <= clip).astype(jnp.float32)
    scale = jnp.minimum(1.0, clip / jnp.maximum(norm, 1e-30))
    one = jnp.ones((), jnp.float32)
    return ((tree.scale(output, scale), unclipped - 0.5), row,
            {'update_norm': Mean(norm, one),
             'clipped': Mean(1.0 - unclipped, one),
             'clip_norm': Mean(clip, one)})

  def server(clip, aggregate, info):
    total, centered_bits = aggregate
    noisy = tree.add(total, _gaussian_like(
        jax.random.fold_in(info.key, 0), total, update_multiplier * clip))
    bits_noise = bits_std * jax.random.normal(
        jax.random.fold_in(info.key, 1), (), jnp.float32)
    unclipped = (centered_bits + bits_noise) / expected_clients + 0.5
    new_clip = clip * jnp.exp(-clip_lr * (unclipped - target_quantile))
    return tree.scale(noisy, 1.0 / expected_clients), new_clip

  return Transform(client=client, init=init, server=server,
                   aggregator=client_sum())


def dp_fedavg(*, clip_norm: float, noise_multiplier: float,
              expected_clients: int, target_quantile: float | None = None,
              clip_lr: float = 0.2,
              clipped_count_stddev: float | None = None) -> list[Transform]:
  """DP-FedAvg: clip, unweighted sum, central Gaussian noise, ``/ m``.

  Args:
    clip_norm: ``S``, the L2 norm every client's output is clipped to (the
      initial ``C`` with ``target_quantile``).
    noise_multiplier: ``z``; the sum gets noise of std ``z S`` per
      coordinate (the privacy of both sums together with adaptive clipping).
      0 adds no noise (clipping only, no privacy).
    expected_clients: ``m``, the planned clients per round, the fixed
      denominator.
    target_quantile: ``gamma`` in (0, 1) for adaptive clipping, the fraction
      of clients to leave unclipped (0.5 in Andrew et al.); None: fixed.
    clip_lr: ``eta`` > 0, the step of the geometric update of ``C``.
    clipped_count_stddev: ``sigma_b`` > 0, the std of the noise on the count
      of unclipped clients; default ``m / 20`` (Andrew et al.). Must exceed
      ``z / 2``, since the count spends part of the privacy of ``z``.

  Returns:
    The transforms to apply. Client metrics ``update_norm`` (before
    clipping) and ``clipped`` (fraction of clients scaled down); with
    adaptive clipping also ``clip_norm`` (the ``C`` of the round).

  Raises:
    ValueError: on an invalid argument, naming it.
  """
  _check_clip_and_noise(clip_norm, noise_multiplier)
  _check_expected_clients(expected_clients)
  if target_quantile is None:
    _require(clipped_count_stddev is None, 'clipped_count_stddev',
             clipped_count_stddev, 'None without target_quantile (it is the '
             'noise of adaptive clipping)')
    return [transforms_lib.clip(max_norm=clip_norm),
            _central_noise(noise_std=noise_multiplier * clip_norm,
                           expected_clients=expected_clients)]
  _require(_is_real(target_quantile) and 0 < target_quantile < 1,
           'target_quantile', target_quantile, 'None or a number in (0, 1)')
  _require(_is_real(clip_lr) and clip_lr > 0, 'clip_lr', clip_lr,
           'a number > 0')
  if clipped_count_stddev is None:
    clipped_count_stddev = expected_clients / 20
  _require(_is_real(clipped_count_stddev) and clipped_count_stddev > 0,
           'clipped_count_stddev', clipped_count_stddev, 'a number > 0')
  _require(noise_multiplier < 2 * clipped_count_stddev, 'noise_multiplier',
           noise_multiplier, f'< 2 * clipped_count_stddev = '
           f'{2 * clipped_count_stddev} (the noise on the unclipped count '
           f'alone would spend the whole privacy budget; raise '
           f'clipped_count_stddev, by default expected_clients / 20)')
  return [_adaptive_clip(
      clip_norm=clip_norm, noise_multiplier=noise_multiplier,
      expected_clients=expected_clients, target_quantile=target_quantile,
      clip_lr=clip_lr, clipped_count_stddev=clipped_count_stddev)]


def local_gaussian(*, clip_norm: float,
                   noise_multiplier: float) -> list[Transform]:
  """Local DP: each client clips to ``S`` and adds its own ``N(0, (z S)^2
  I)`` with its key, before aggregation (which stays the algorithm's).

  Args:
    clip_norm: ``S`` > 0.
    noise_multiplier: ``z`` >= 0; a message is a Gaussian mechanism of
      sensitivity ``2 S`` (any two clipped outputs differ by at most that).

  Returns:
    The transforms to apply; client metrics ``update_norm`` and ``clipped``.
  """
  _check_clip_and_noise(clip_norm, noise_multiplier)
  std = noise_multiplier * clip_norm

  def client(state, output, row, key, client):
    del state, client
    return tree.add(output, _gaussian_like(key, output, std)), row, {}

  return [transforms_lib.clip(max_norm=clip_norm), Transform(client=client)]


def _tree_node(root, level, index, like, std):
  """The noise of tree node ``(level, index)``, the same whenever drawn."""
  return _gaussian_like(
      jax.random.fold_in(jax.random.fold_in(root, level), index), like, std)


def _prefix_noise_step(root, t, like, std):
  """The noise of ``P_t`` minus that of ``P_{t-1}``, for ``t >= 1``.

  With ``l0`` the lowest set bit of ``t``, ``t`` and ``t - 1`` share their
  bits above ``l0``; ``t`` has bit ``l0`` where ``t - 1`` has every bit
  below it. So one node comes in and ``l0`` go out: two draws a round on
  average, instead of regenerating both prefixes.
  """
  low = jax.lax.population_count((t & -t) - 1)

  def drop(level, noise):
    return tree.sub(noise, _tree_node(root, level, (t - 1) >> level, like,
                                      std))

  return jax.lax.fori_loop(0, low, drop,
                           _tree_node(root, low, t >> low, like, std))


def dp_ftrl(*, clip_norm: float, noise_multiplier: float,
            expected_clients: int, seed: int = 0) -> list[Transform]:
  """DP-FTRL: clip, unweighted sum, tree-aggregation noise, ``/ m``.

  Args:
    clip_norm: ``S`` > 0.
    noise_multiplier: ``z`` >= 0; every tree node's noise has std ``z S``.
    expected_clients: ``m``, the planned clients per round.
    seed: the tree's noise; the same seed gives the same tree.

  Returns:
    The transforms to apply; client metrics ``update_norm`` and ``clipped``.
    The server state is the number of rounds done.
  """
  _check_clip_and_noise(clip_norm, noise_multiplier)
  _check_expected_clients(expected_clients)
  _require(_is_int(seed), 'seed', seed, 'an integer')
  std = noise_multiplier * clip_norm

  def init(params):
    del params
    return jnp.zeros((), jnp.int32)

  def server(rounds_done, aggregate, info):
    del info   # the tree's noise must not change with the round's key
    t = rounds_done + 1
    noise = _prefix_noise_step(jax.random.key(seed), t, aggregate, std)
    return tree.scale(tree.add(aggregate, noise), 1.0 / expected_clients), t

  return [transforms_lib.clip(max_norm=clip_norm),
          Transform(client=_unchanged, init=init, server=server,
                    aggregator=client_sum())]


def transforms_from_flags(*, dp: str, clip_norm: float,
                          noise_multiplier: float,
                          target_quantile: float | None,
                          clients_per_round: int,
                          seed: int) -> list[Transform]:
  """The transforms that the command line's DP flags ask for.

  Args:
    dp: one of ``DP_MODES``: 'none' (no transforms), 'dp_fedavg',
      'dp_ftrl' or 'local'.
    clip_norm: ``--dp_clip_norm``.
    noise_multiplier: ``--dp_noise_multiplier`` (or the one
      :func:`fedjax_engine.accounting.noise_for_epsilon` found for
      ``--target_epsilon``).
    target_quantile: ``--dp_target_quantile``: adaptive clipping, only with
      'dp_fedavg'; None: fixed clipping.
    clients_per_round: the planned cohort size, the fixed denominator.
    seed: the run's seed; DP-FTRL's tree noise is drawn from it.

  Returns:
    The list of transforms, empty for 'none'.
  """
  _require(dp in DP_MODES, 'dp', dp, f'one of {DP_MODES}')
  if dp == 'none':
    return []
  _require(target_quantile is None or dp == 'dp_fedavg', 'target_quantile',
           target_quantile, "None unless dp='dp_fedavg' (adaptive clipping "
           'is for DP-FedAvg)')
  if dp == 'dp_fedavg':
    return dp_fedavg(clip_norm=clip_norm, noise_multiplier=noise_multiplier,
                     expected_clients=clients_per_round,
                     target_quantile=target_quantile)
  if dp == 'dp_ftrl':
    return dp_ftrl(clip_norm=clip_norm, noise_multiplier=noise_multiplier,
                   expected_clients=clients_per_round, seed=seed)
  return local_gaussian(clip_norm=clip_norm,
                        noise_multiplier=noise_multiplier)
