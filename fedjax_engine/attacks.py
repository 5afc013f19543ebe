"""Attacks by a fixed set of malicious clients, to evaluate defenses.

A defense (a robust aggregator, norm clipping) is only as good as the attack
it was tried against, so this module provides the standard ones. A run picks
its malicious clients once (:func:`malicious_clients`, a fixed boolean mask
over the training clients); they then attack in every round they are
sampled, in one of two ways:

* Data poisoning, applied once to the training data before the run:

  - label flipping, ``y -> num_classes - 1 - y`` on every example of a
    malicious client (Tolpegin, Truex, Gursoy, Liu, "Data Poisoning Attacks
    Against Federated Learning Systems", ESORICS 2020);
  - a backdoor: a trigger pattern stamped on a fraction of the malicious
    clients' examples, relabeled to a target class, so that the global
    model learns "trigger -> target" while clean accuracy stays high
    (Bagdasaryan, Veit, Hua, Estrin, Shmatikov, "How To Backdoor Federated
    Learning", AISTATS 2020). :func:`backdoor_test` builds the matching
    test set; its accuracy under :func:`fedjax_engine.make_evaluate` is the
    attack success rate ("backdoor accuracy").

* Update poisoning: :class:`fedjax_engine.transforms.Transform` stages that
  replace a malicious client's output ``u`` (FedAvg's model delta) before
  aggregation; benign clients' outputs pass unchanged:

  - ``sign_flip``: ``-scale * u``;
  - ``gaussian``: ``N(0, stddev^2)`` noise of ``u``'s shape instead of
    ``u``, the Gaussian Byzantine worker of Blanchard, El Mhamdi, Guerraoui,
    Stainer, "Machine Learning with Adversaries: Byzantine Tolerant Gradient
    Descent", NeurIPS 2017;
  - ``model_replacement``: ``boost * u`` (Bagdasaryan et al. 2020, Eq. 3):
    with ``boost = n / eta``, ``n`` clients averaged and server learning rate
    ``eta``, one attacker's model replaces the global one; combine it with
    :func:`backdoor`;
  - ``a_little_is_enough`` (Baruch, Baruch, Goldberg, "A Little Is Enough:
    Circumventing Defenses For Distributed Learning", NeurIPS 2019): every
    malicious client sends ``mu - z * sigma``, the coordinate-wise mean and
    standard deviation of the round's BENIGN outputs, a shift small enough
    to pass robust aggregators yet consistent over rounds. ``z`` defaults to
    the paper's ``z_max`` (Algorithm 3): with ``n`` clients of which ``m``
    are malicious, ``s = floor(n / 2 + 1) - m`` benign clients must be
    swayed, and ``z_max = Phi^-1((n - s) / n)``.

A client transform sees one client only, so ALIE is split in two: its client
part tags each output with the client's malicious flag, ``u -> (u, flag)``,
and a whole-cohort aggregator (:func:`alie`) computes ``mu`` and ``sigma``
over the real benign rows, replaces the malicious rows, drops the flags and
hands the cohort to the defense's aggregator. Attacks model what a client
sends, so put attack transforms LAST in ``transforms.apply`` (after clipping
or noise a malicious client would not apply honestly), and give ALIE the
defense's aggregator rather than adding another aggregator after it.

Every update attack reports the client metric ``malicious``: the fraction
of the round's clients that were malicious.

Example:

  >>> import numpy as np, fedjax_engine as fe
  >>> bad = malicious_clients(num_clients=5, fraction=0.4, seed=0)
  >>> int(bad.sum())
  2
  >>> data = fe.FederatedData.from_clients({
  ...     'a': {'x': np.zeros((2, 1)), 'y': np.array([0, 2])},
  ...     'b': {'x': np.zeros((1, 1)), 'y': np.array([0])}})
  >>> flip_labels(data, np.array([True, False]),
  ...             num_classes=3).features['y'].tolist()
  [2, 0, 0]
  >>> round(alie_z_max(num_clients=50, num_malicious=12), 3)
  0.583
"""

import math
import numbers
import statistics
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from fedjax_engine import aggregate as aggregate_lib
from fedjax_engine import data as data_lib
from fedjax_engine import transforms as transforms_lib
from fedjax_engine import tree
from fedjax_engine.model import Mean

Trigger = Callable[[np.ndarray], np.ndarray]

UPDATE_ATTACKS = ('none', 'sign_flip', 'gaussian', 'model_replacement',
                  'alie')
DATA_ATTACKS = ('none', 'label_flip', 'backdoor')


def _is_int(value) -> bool:
  return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_real(value) -> bool:
  return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _positive(name: str, value) -> float:
  if not (_is_real(value) and math.isfinite(value) and value > 0):
    raise ValueError(f'{name} must be a finite number > 0, got {value!r}.')
  return float(value)


def _fraction(name: str, value) -> float:
  if not (_is_real(value) and 0 <= value <= 1):
    raise ValueError(f'{name} must be a number in [0, 1], got {value!r}.')
  return float(value)


def _seed(value) -> int:
  if not (_is_int(value) and value >= 0):
    raise ValueError(f'seed must be an integer >= 0, got {value!r}.')
  return int(value)


def _mask(malicious, num_clients: int | None = None) -> np.ndarray:
  """``malicious`` as a 1-D bool array, checked against ``num_clients``."""
  mask = np.asarray(malicious)
  if mask.ndim != 1 or mask.dtype != bool:
    raise ValueError('malicious must be a 1-D boolean array (one entry per '
                     f'training client), got dtype {mask.dtype} and shape '
                     f'{mask.shape}.')
  if num_clients is not None and mask.size != num_clients:
    raise ValueError(f'malicious has {mask.size} entries, expected one per '
                     f'client of the data ({num_clients}).')
  return mask


def malicious_clients(*, num_clients: int, fraction: float,
                      seed: int) -> np.ndarray:
  """A fixed set of malicious clients, the same in every round.

  Args:
    num_clients: clients in the training data.
    fraction: in [0, 1]; exactly ``round(fraction * num_clients)`` clients
      (Python's ``round``: halves go to the even number) are malicious.
    seed: which clients, drawn uniformly without replacement.

  Returns:
    bool ``[num_clients]``, True for a malicious client (indexed like the
    ``FederatedData`` and like the engine's ``client_id``).
  """
  if not (_is_int(num_clients) and num_clients >= 1):
    raise ValueError(f'num_clients must be an integer >= 1, got '
                     f'{num_clients!r}.')
  count = round(_fraction('fraction', fraction) * num_clients)
  chosen = np.random.default_rng(_seed(seed)).choice(
      num_clients, size=count, replace=False)
  mask = np.zeros(num_clients, bool)
  mask[chosen] = True
  return mask


def _labels(data: data_lib.FederatedData, *, one_per_example: bool):
  y = data.features.get('y')
  if y is None or not np.issubdtype(y.dtype, np.integer):
    raise ValueError('the data must have an integer label feature \'y\', got '
                     f'{None if y is None else y.dtype}.')
  if one_per_example and y.ndim != 1:
    raise ValueError(f'\'y\' must hold one class per example, shape [N], '
                     f'got shape {y.shape}.')
  return y


def flip_labels(data: data_lib.FederatedData, malicious, *,
                num_classes: int) -> data_lib.FederatedData:
  """Every label of a malicious client's examples becomes ``num_classes - 1
  - y`` (Tolpegin et al., ESORICS 2020); other clients are unchanged.

  Args:
    data: training clients with integer labels ``'y'`` in ``[0,
      num_classes)``, of any shape ``[N, ...]`` (each entry is flipped).
    malicious: bool ``[data.num_clients]``.
    num_classes: the number of classes.

  Returns:
    The data with the new ``'y'``; the other features are shared, not copied.
  """
  mask = _mask(malicious, data.num_clients)
  if not (_is_int(num_classes) and num_classes >= 2):
    raise ValueError(f'num_classes must be an integer >= 2, got '
                     f'{num_classes!r}.')
  y = _labels(data, one_per_example=False)
  if y.size and (y.min() < 0 or y.max() >= num_classes):
    raise ValueError(f'labels must lie in [0, num_classes={num_classes}), got '
                     f'{y.min()}..{y.max()}.')
  rows = np.repeat(mask, data.sizes).reshape((-1,) + (1,) * (y.ndim - 1))
  flipped = np.where(rows, num_classes - 1 - y, y).astype(y.dtype)
  return data.map(lambda features: {**features, 'y': flipped})


def square_trigger(*, size: int = 3, value: float = 1.0) -> Trigger:
  """A ``size x size`` square of ``value`` in the bottom-right corner of
  images ``[n, H, W]`` or ``[n, H, W, C]`` (every channel), the pixel-
  pattern backdoor of Bagdasaryan et al. (AISTATS 2020)."""
  if not (_is_int(size) and size >= 1):
    raise ValueError(f'size must be an integer >= 1, got {size!r}.')
  if not (_is_real(value) and math.isfinite(value)):
    raise ValueError(f'value must be a finite number, got {value!r}.')

  def stamp(x):
    if x.ndim not in (3, 4) or x.shape[1] < size or x.shape[2] < size:
      raise ValueError(f'square_trigger(size={size}) needs images [n, H, W] '
                       f'or [n, H, W, C] with H, W >= {size}, got shape '
                       f'{x.shape}.')
    out = np.array(x)
    out[:, -size:, -size:] = value
    return out

  return stamp


def feature_trigger(*, indices: Sequence[int], value: float) -> Trigger:
  """Features ``indices`` of flat examples ``[n, D]`` set to ``value``."""
  indices = list(indices)
  if not indices or not all(_is_int(i) and i >= 0 for i in indices):
    raise ValueError(f'indices must be a non-empty list of integers >= 0, '
                     f'got {indices!r}.')
  if not (_is_real(value) and math.isfinite(value)):
    raise ValueError(f'value must be a finite number, got {value!r}.')

  def stamp(x):
    if x.ndim != 2 or max(indices) >= x.shape[1]:
      raise ValueError(f'feature_trigger(indices={indices}) needs examples '
                       f'[n, D] with D > {max(indices)}, got shape '
                       f'{x.shape}.')
    out = np.array(x)
    out[:, indices] = value
    return out

  return stamp


def default_trigger(x: np.ndarray) -> Trigger:
  """A trigger for examples like ``x`` ``[N, ...]``, at the largest value in
  ``x`` (max intensity): a 3x3 corner square for images, else the last
  (up to) 4 features of flat examples."""
  value = float(np.max(x)) if x.size else 1.0
  if x.ndim in (3, 4):
    return square_trigger(size=min(3, x.shape[1], x.shape[2]), value=value)
  if x.ndim == 2 and x.shape[1] >= 1:
    d = x.shape[1]
    return feature_trigger(indices=list(range(max(0, d - 4), d)), value=value)
  raise ValueError(f'no default trigger for examples of shape {x.shape}: '
                   'expected images [N, H, W(, C)] or vectors [N, D].')


def _check_backdoor_args(target_label, trigger):
  if not (_is_int(target_label) and target_label >= 0):
    raise ValueError(f'target_label must be an integer >= 0, got '
                     f'{target_label!r}.')
  if not callable(trigger):
    raise ValueError(f'trigger must be a function stamping examples [n, ...], '
                     f'got {trigger!r}.')


def backdoor(data: data_lib.FederatedData, malicious, *, target_label: int,
             trigger: Trigger, poison_fraction: float,
             seed: int) -> data_lib.FederatedData:
  """Each malicious client's examples poisoned in part with a backdoor.

  Of each malicious client's ``n_k`` examples, ``round(poison_fraction *
  n_k)`` (halves to even), chosen by ``seed``, get ``trigger`` stamped on
  ``'x'`` and label ``target_label``; the rest stay clean, as Bagdasaryan et
  al. (AISTATS 2020) mix backdoor and clean examples so that the attacker's
  model keeps its main-task accuracy.

  Args:
    data: training clients with ``'x'`` and integer labels ``'y'`` ``[N]``.
    malicious: bool ``[data.num_clients]``.
    target_label: the class triggered inputs should get.
    trigger: ``stamp(x [n, ...]) -> x``, e.g. :func:`square_trigger`.
    poison_fraction: in [0, 1].
    seed: which examples are poisoned.

  Returns:
    The poisoned data (new ``'x'`` and ``'y'``, other features shared).
  """
  mask = _mask(malicious, data.num_clients)
  _check_backdoor_args(target_label, trigger)
  fraction = _fraction('poison_fraction', poison_fraction)
  y = _labels(data, one_per_example=True)
  sizes = data.sizes
  owners = np.repeat(np.arange(data.num_clients), sizes)
  # A random rank of every example within its client: the first `count` of
  # a client are poisoned, a uniform subset of exactly that size.
  candidates = np.flatnonzero(mask[owners])
  order = candidates[np.lexsort((
      np.random.default_rng(_seed(seed)).random(candidates.size),
      owners[candidates]))]
  grouped = owners[order]
  rank = np.arange(order.size) - np.searchsorted(grouped, grouped)
  count = np.round(fraction * sizes).astype(np.int64)
  chosen = order[rank < count[grouped]]
  x = np.array(data.features['x'])
  x[chosen] = trigger(x[chosen])
  new_y = np.array(y)
  new_y[chosen] = target_label
  return data.map(lambda features: {**features, 'x': x, 'y': new_y})


def backdoor_test(test_data: data_lib.FederatedData, *, target_label: int,
                  trigger: Trigger) -> data_lib.FederatedData:
  """The test examples whose label is not ``target_label``, with ``trigger``
  stamped and labeled ``target_label``.

  Evaluated like any test set, its accuracy is the backdoor accuracy
  (attack success rate): the fraction of triggered inputs of other classes
  that the model puts in the target class::

    evaluate = fe.make_evaluate(model, backdoor_test(test, target_label=0,
                                                     trigger=trigger))
    backdoor_accuracy = evaluate(params)['accuracy']

  Clients keep their ids and order; a client left without examples counts
  in no per-client metric.
  """
  _check_backdoor_args(target_label, trigger)
  y = _labels(test_data, one_per_example=True)
  keep = y != target_label
  owners = np.repeat(np.arange(test_data.num_clients), test_data.sizes)
  sizes = np.bincount(owners[keep], minlength=test_data.num_clients)
  features = {name: value[keep] for name, value in test_data.features.items()}
  features['x'] = trigger(features['x'])
  features['y'] = np.full(int(keep.sum()), target_label, y.dtype)
  return data_lib.FederatedData(
      features, np.concatenate([[0], np.cumsum(sizes)]), test_data.client_ids)


def _update_attack(malicious, replace: Callable) -> transforms_lib.Transform:
  """A transform sending ``replace(output, key)`` for malicious clients."""
  flags = _mask(malicious)

  def client(state, output, row, key, client):
    del state
    # Ids index the training clients; `malicious` must have one entry each
    # (an out-of-range id would be clamped by the gather).
    flag = jnp.asarray(flags)[client.id]
    sent = tree.where(flag, replace(output, key), output)
    return sent, row, {'malicious': Mean(flag.astype(jnp.float32),
                                         jnp.ones((), jnp.float32))}

  return transforms_lib.Transform(client=client)


def sign_flip(malicious, *, scale: float = 1.0) -> transforms_lib.Transform:
  """Malicious clients send ``-scale * u`` instead of their output ``u``.

  Args:
    malicious: bool ``[num_clients]`` of the training data.
    scale: > 0; with a fraction ``f`` of malicious clients in a weighted
      mean, the expected aggregate is ``(1 - f - f * scale)`` times the
      benign one, an ascent direction once ``scale > (1 - f) / f``.
  """
  scale = _positive('scale', scale)
  return _update_attack(malicious,
                        lambda output, key: tree.scale(output, -scale))


def gaussian(malicious, *, stddev: float) -> transforms_lib.Transform:
  """Malicious clients send i.i.d. ``N(0, stddev^2)`` noise shaped like
  their output (Blanchard et al., NeurIPS 2017), drawn from the client's
  own transform key, so a run stays a function of its seed."""
  stddev = _positive('stddev', stddev)

  def noise(output, key):
    leaves, treedef = jax.tree.flatten(output)
    keys = jax.random.split(key, len(leaves))
    return jax.tree.unflatten(treedef, [
        stddev * jax.random.normal(k, x.shape, x.dtype)
        for x, k in zip(leaves, keys)])

  return _update_attack(malicious, noise)


def model_replacement(malicious, *,
                      boost: float) -> transforms_lib.Transform:
  """Malicious clients send ``boost * u`` (Bagdasaryan et al., AISTATS 2020).

  With FedAvg's output ``u = x - x_k`` and uniform weights, ``boost =
  clients_per_round / malicious_per_round`` (times ``1 / server_lr``) makes
  the aggregate move the global model onto the attackers' models, as if
  they had replaced it; see :func:`replacement_boost`.
  """
  boost = _positive('boost', boost)
  return _update_attack(malicious,
                        lambda output, key: tree.scale(output, boost))


def replacement_boost(*, clients_per_round: int, fraction: float) -> float:
  """``clients_per_round / max(1, round(fraction * clients_per_round))``:
  the boost with which the expected number of malicious clients in a round
  replaces the global model (uniform weights, server learning rate 1)."""
  if not (_is_int(clients_per_round) and clients_per_round >= 1):
    raise ValueError(f'clients_per_round must be an integer >= 1, got '
                     f'{clients_per_round!r}.')
  per_round = round(_fraction('fraction', fraction) * clients_per_round)
  return clients_per_round / max(1, per_round)


def alie_z_max(*, num_clients: int, num_malicious: int) -> float:
  """The largest shift ``z`` of "A little is enough" (Baruch et al.,
  NeurIPS 2019, Algorithm 3) that keeps the malicious outputs inside the
  benign majority: ``s = floor(n / 2 + 1) - m``, ``z = Phi^-1((n - s) /
  n)``, with ``Phi`` the standard normal CDF.

  Args:
    num_clients: ``n``, the clients taking part.
    num_malicious: ``m``, with ``1 <= m < floor(n / 2 + 1)`` (a malicious
      majority needs no subtlety, and has no finite ``z``).
  """
  if not (_is_int(num_clients) and num_clients >= 2):
    raise ValueError(f'num_clients must be an integer >= 2, got '
                     f'{num_clients!r}.')
  majority = num_clients // 2 + 1
  if not (_is_int(num_malicious) and 1 <= num_malicious < majority):
    raise ValueError(f'num_malicious must be an integer in [1, {majority}) '
                     f'for num_clients={num_clients}, got {num_malicious!r}; '
                     'pass z yourself otherwise.')
  supporters = majority - num_malicious
  return statistics.NormalDist().inv_cdf(
      (num_clients - supporters) / num_clients)


def alie(base_aggregator: aggregate_lib.Aggregator, *,
         z: float) -> aggregate_lib.Aggregator:
  """The server side of "A little is enough": a whole-cohort aggregator of
  tagged outputs ``(u, flag)`` (from :func:`a_little_is_enough`'s client
  part).

  Over the clients with weight > 0 and ``flag == 0`` it computes, for every
  coordinate, ``mu`` and ``sigma`` (the population standard deviation, each
  client counted once as in the paper), replaces every malicious row by
  ``mu - z * sigma``, and reduces the untagged outputs with
  ``base_aggregator`` in one ``accumulate`` call (a streaming one such as
  ``weighted_mean`` included). Without benign clients ``mu = sigma = 0``.

  Args:
    base_aggregator: the defense under attack (``weighted_mean()``,
      ``coordinate_median()``, ...).
    z: finite, >= 0.
  """
  if not isinstance(base_aggregator, aggregate_lib.Aggregator):
    raise ValueError(f'base_aggregator must be a fedjax_engine.Aggregator, '
                     f'got {base_aggregator!r}.')
  if not (_is_real(z) and math.isfinite(z) and z >= 0):
    raise ValueError(f'z must be a finite number >= 0, got {z!r}.')
  z = float(z)

  def init(template):
    return base_aggregator.init(template[0])

  def accumulate(acc, outputs, weights, ids):
    updates, flags = outputs
    real = weights > 0
    attacker = real & (flags > 0)
    benign = real & (flags <= 0)
    count = jnp.maximum(jnp.sum(benign), 1).astype(jnp.float32)

    def replace(x):
      expand = lambda m: m.reshape((-1,) + (1,) * (x.ndim - 1))
      # `where`, not a product: padded rows may hold anything.
      kept = jnp.where(expand(benign), x, 0)
      mu = jnp.sum(kept, axis=0, keepdims=True) / count.astype(x.dtype)
      spread = jnp.where(expand(benign), x - mu, 0)
      sigma = jnp.sqrt(jnp.sum(jnp.square(spread), axis=0, keepdims=True) /
                       count.astype(x.dtype))
      return jnp.where(expand(attacker), mu - z * sigma, x)

    return aggregate_lib.accumulate_all(
        base_aggregator, acc, jax.tree.map(replace, updates), weights, ids)

  return aggregate_lib.Aggregator(init, accumulate, base_aggregator.finalize,
                                  whole_cohort=True)


def a_little_is_enough(malicious, *, z: float | None = None,
                       aggregator: aggregate_lib.Aggregator | None = None
                       ) -> transforms_lib.Transform:
  """ALIE, "A little is enough" (Baruch et al., NeurIPS 2019), against
  ``aggregator``: malicious clients send ``mu - z * sigma`` of the round's
  benign outputs (see :func:`alie`).

  The transform replaces the reduction, so it must be the last transform
  and must be given the defense's aggregator: the algorithm's own is not
  visible to a transform.

  Args:
    malicious: bool ``[num_clients]`` of the training data.
    z: the shift in standard deviations; by default :func:`alie_z_max` with
      ``n`` the clients and ``m`` the malicious ones of ``malicious``.
    aggregator: the reduction under attack; ``weighted_mean()`` by default.
  """
  flags = _mask(malicious)
  if z is None:
    z = alie_z_max(num_clients=int(flags.size),
                   num_malicious=int(flags.sum()))
  reduce = alie(aggregator or aggregate_lib.weighted_mean(), z=z)

  def client(state, output, row, key, client):
    del state, key
    flag = jnp.asarray(flags)[client.id].astype(jnp.float32)
    return (output, flag), row, {'malicious': Mean(
        flag, jnp.ones((), jnp.float32))}

  return transforms_lib.Transform(client=client, aggregator=reduce)


def transforms_from_flags(*, attack: str, malicious,
                          scale: float = 1.0, stddev: float = 1.0,
                          boost: float | None = None,
                          clients_per_round: int | None = None,
                          z: float | None = None,
                          aggregator: aggregate_lib.Aggregator | None = None
                          ) -> list[transforms_lib.Transform]:
  """The update attack named by the command line, as transforms to append
  LAST to ``transforms.apply`` (empty for ``'none'``).

  Args:
    attack: one of :data:`UPDATE_ATTACKS`.
    malicious: bool ``[num_clients]``, e.g. from :func:`malicious_clients`.
    scale: ``sign_flip``'s scale.
    stddev: ``gaussian``'s standard deviation.
    boost: ``model_replacement``'s boost; None: :func:`replacement_boost`
      from ``clients_per_round`` and the malicious fraction.
    clients_per_round: for the default boost.
    z: ALIE's shift; None: :func:`alie_z_max`.
    aggregator: ALIE: the reduction under attack (the defense's).
  """
  if attack not in UPDATE_ATTACKS:
    raise ValueError(f'attack must be one of {UPDATE_ATTACKS}, got '
                     f'{attack!r}.')
  if attack == 'none':
    return []
  if attack == 'sign_flip':
    return [sign_flip(malicious, scale=scale)]
  if attack == 'gaussian':
    return [gaussian(malicious, stddev=stddev)]
  if attack == 'model_replacement':
    if boost is None:
      if clients_per_round is None:
        raise ValueError('model_replacement needs boost, or '
                         'clients_per_round to derive it, got neither.')
      boost = replacement_boost(clients_per_round=clients_per_round,
                                fraction=float(np.mean(_mask(malicious))))
    return [model_replacement(malicious, boost=boost)]
  return [a_little_is_enough(malicious, z=z, aggregator=aggregator)]


def poison_data(train: data_lib.FederatedData,
                test: data_lib.FederatedData, *, attack: str, malicious,
                num_classes: int, target_label: int = 0,
                poison_fraction: float = 0.5, seed: int = 0,
                trigger: Trigger | None = None):
  """The data attack named by the command line.

  Args:
    train: the training clients.
    test: the test clients (only read, for the backdoor test set).
    attack: one of :data:`DATA_ATTACKS`.
    malicious: bool ``[train.num_clients]``.
    num_classes: for label flipping.
    target_label: the backdoor's class.
    poison_fraction: the part of a malicious client's examples backdoored.
    seed: which examples are backdoored.
    trigger: the backdoor's pattern; :func:`default_trigger` of the training
      examples when None.

  Returns:
    ``(train, backdoor_test)``: the poisoned training data, and for
    ``'backdoor'`` the test set whose accuracy is the backdoor accuracy
    (:func:`backdoor_test`), else None.
  """
  if attack not in DATA_ATTACKS:
    raise ValueError(f'attack must be one of {DATA_ATTACKS}, got {attack!r}.')
  if attack == 'none':
    _mask(malicious, train.num_clients)
    return train, None
  if attack == 'label_flip':
    return flip_labels(train, malicious, num_classes=num_classes), None
  trigger = trigger or default_trigger(train.features['x'])
  poisoned = backdoor(train, malicious, target_label=target_label,
                      trigger=trigger, poison_fraction=poison_fraction,
                      seed=seed)
  return poisoned, backdoor_test(test, target_label=target_label,
                                 trigger=trigger)
