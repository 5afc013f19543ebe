"""Attacks by malicious clients (fedjax_engine.attacks), worked out by hand.

Update attacks run through the engine on conftest's two clients and 1-D
linear regression, ``pred = w * x + b``, loss ``0.5 * (pred - y)^2``, from
``(w, b) = (1, 0)``, with ONE local SGD step of learning rate 1/4 on a full
batch (batch size 6: B's batch is its data, A's its data three times).
From tests/test_fedavg_by_hand.py, that step gives

  A (x = [1, 2], y = [1, 3]): r = [0, -1], grad (-1, -1/2),
      params (5/4, 1/8), delta dA = x - x_A = (-1/4, -1/8)
  B (x = [-2..3], y = [-1, 0, 1, 1, 2, 3]): r = [-1, -1, -1, 0, 0, 0],
      grad (1/2, -1/2), params (7/8, 1/8), delta dB = (1/8, -1/8)

and FedAvg's new params are ``(1, 0) - (1/4 * sent_A + 3/4 * sent_B)``
(example weights 2 and 6). Every expected number below follows from these.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import fedjax_engine as fe
from fedjax_engine import attacks

A, B = 0, 1
D_A = np.array([-1 / 4, -1 / 8])
D_B = np.array([1 / 8, -1 / 8])



def _client(i):
  """A transform's view of client ``i`` (the participants do not matter)."""
  return fe.ClientInfo(jnp.int32(i), jnp.arange(4, dtype=jnp.int32))

def _check_data(data):
  assert data.client(A)['x'].tolist() == [1, 2]
  assert data.client(A)['y'].tolist() == [1, 3]
  assert data.client(B)['x'].tolist() == [-2, -1, 0, 1, 2, 3]
  assert data.client(B)['y'].tolist() == [-1, 0, 1, 1, 2, 3]


def _one_round(model, data, *transforms):
  _check_data(data)
  algo = fe.transforms.apply(
      fe.algorithms.fedavg(model, client_optimizer=optax.sgd(0.25)),
      *transforms)
  rnd = fe.make_round(algo, data, clients_per_round=2,
                      batching=fe.Batching(batch_size=6, local_steps=1))
  state = algo.init(model.init(jax.random.key(0)))
  state, _, metrics = rnd(state, (), rnd.select([0, 1]), jax.random.key(0))
  return np.array([state.params['w'], state.params['b']]), metrics


def _mask(*bad):
  mask = np.zeros(2, bool)
  mask[list(bad)] = True
  return mask


# --- the malicious set --------------------------------------------------------


@pytest.mark.parametrize('num_clients, fraction, count', [
    (10, 0.3, 3), (12, 0.4, 5), (7, 0.0, 0), (7, 1.0, 7), (8, 0.5, 4),
    (1, 0.4, 0)])
def test_malicious_clients_exact_count(num_clients, fraction, count):
  # round(12 * 0.4) = round(4.8) = 5; round(0.4) = 0.
  mask = attacks.malicious_clients(num_clients=num_clients,
                                   fraction=fraction, seed=0)
  assert mask.dtype == bool and mask.shape == (num_clients,)
  assert int(mask.sum()) == count


def test_malicious_clients_fixed_by_seed():
  again = [attacks.malicious_clients(num_clients=100, fraction=0.5, seed=s)
           for s in (0, 0, 1)]
  np.testing.assert_array_equal(again[0], again[1])
  # Two draws of 50 of 100 agree with probability 1 / C(100, 50) ~ 1e-29.
  assert not np.array_equal(again[0], again[2])


@pytest.mark.parametrize('kwargs, name', [
    (dict(num_clients=0, fraction=0.1, seed=0), 'num_clients'),
    (dict(num_clients=5, fraction=1.5, seed=0), 'fraction'),
    (dict(num_clients=5, fraction=0.5, seed=-1), 'seed')])
def test_malicious_clients_validates(kwargs, name):
  with pytest.raises(ValueError, match=name):
    attacks.malicious_clients(**kwargs)


def test_malicious_set_is_fixed_across_rounds(logistic_model,
                                              synthetic_train):
  # 3 of 12 clients are malicious; each round samples 5 others. The metric
  # is the fraction of the round's cohort in the fixed set.
  bad = attacks.malicious_clients(num_clients=12, fraction=0.25, seed=3)
  assert int(bad.sum()) == 3
  algo = fe.transforms.apply(
      fe.algorithms.fedavg(logistic_model, client_optimizer=optax.sgd(0.1)),
      attacks.sign_flip(bad))
  rnd = fe.make_round(algo, synthetic_train, clients_per_round=5,
                      batching=fe.Batching(batch_size=4, local_steps=1))
  state = algo.init(logistic_model.init(jax.random.key(0)))
  rng = np.random.default_rng(0)
  fractions = []
  for r in range(4):
    ids = rng.choice(12, 5, replace=False)
    state, _, metrics = rnd(state, (), rnd.select(ids), jax.random.key(r))
    np.testing.assert_allclose(metrics['malicious'], bad[ids].sum() / 5,
                               rtol=1e-6)
    fractions.append(float(metrics['malicious']))
  assert len(set(fractions)) > 1, fractions   # the cohorts differed


# --- data attacks -------------------------------------------------------------


def _labeled(sizes, labels, shape=(2,)):
  """Clients 'c0', 'c1', ... with x = example index (every entry) and the
  given labels."""
  clients, start = {}, 0
  for k, n in enumerate(sizes):
    index = np.arange(start, start + n, dtype=np.float32)
    clients[f'c{k}'] = {
        'x': np.broadcast_to(index.reshape((n,) + (1,) * len(shape)),
                             (n,) + shape).copy(),
        'y': np.array(labels[start:start + n], np.int32)}
    start += n
  return fe.FederatedData.from_clients(clients)


def test_flip_labels_exact():
  data = _labeled([3, 1, 2], [0, 1, 2, 3, 1, 1])
  flipped = attacks.flip_labels(data, np.array([True, False, True]),
                                num_classes=4)
  # c0: 3 - [0, 1, 2] = [3, 2, 1]; c1 unchanged; c2: 3 - [1, 1] = [2, 2].
  assert flipped.features['y'].tolist() == [3, 2, 1, 3, 2, 2]
  assert flipped.features['y'].dtype == np.int32
  assert flipped.features['x'] is data.features['x']
  assert data.features['y'].tolist() == [0, 1, 2, 3, 1, 1]   # not mutated
  np.testing.assert_array_equal(flipped.offsets, data.offsets)


def test_flip_labels_validates():
  data = _labeled([3, 1], [0, 1, 2, 3])
  with pytest.raises(ValueError, match='malicious'):
    attacks.flip_labels(data, np.array([True]), num_classes=4)
  with pytest.raises(ValueError, match='malicious'):
    attacks.flip_labels(data, np.array([1, 0]), num_classes=4)
  with pytest.raises(ValueError, match='num_classes'):
    attacks.flip_labels(data, np.array([True, False]), num_classes=3)


@pytest.mark.parametrize('shape', [(4, 4), (4, 4, 1)])
def test_backdoor_on_images_exact(shape):
  # c0 (malicious, 4 examples): round(0.5 * 4) = 2 poisoned; c1 (5
  # examples, malicious): round(2.5) = 2 (halves to even); c2 benign.
  data = _labeled([4, 5, 3], [1, 2, 3, 1, 1, 2, 3, 1, 2, 3, 1, 2], shape)
  trigger = attacks.square_trigger(size=2, value=9.0)
  poisoned = attacks.backdoor(data, np.array([True, True, False]),
                              target_label=0, trigger=trigger,
                              poison_fraction=0.5, seed=0)
  x, y = poisoned.features['x'], poisoned.features['y']
  x0, y0 = data.features['x'], data.features['y']
  changed = np.flatnonzero(np.any(x != x0, axis=tuple(range(1, x.ndim))))
  owners = np.repeat(np.arange(3), [4, 5, 3])
  assert np.bincount(owners[changed], minlength=3).tolist() == [2, 2, 0]
  for i in range(12):
    if i in changed:
      expected = np.full(shape, float(i), np.float32)
      expected[2:, 2:] = 9.0     # the bottom-right 2x2, every channel
      np.testing.assert_array_equal(x[i], expected)
      assert y[i] == 0
    else:
      np.testing.assert_array_equal(x[i], x0[i])
      assert y[i] == y0[i]


def test_backdoor_selection_is_seeded():
  data = _labeled([6, 6], [1] * 12)

  def chosen(seed):
    return np.flatnonzero(attacks.backdoor(
        data, np.array([True, False]), target_label=0,
        trigger=attacks.feature_trigger(indices=[1], value=-1.0),
        poison_fraction=0.5, seed=seed).features['y'] == 0).tolist()

  assert chosen(0) == chosen(0)
  subsets = {tuple(chosen(s)) for s in range(6)}
  # 3 of c0's 6 examples each time; 6 draws of C(6, 3) = 20 subsets all
  # equal with probability 20^-5.
  assert all(len(s) == 3 and max(s) < 6 for s in subsets)
  assert len(subsets) > 1


def test_backdoor_all_and_nothing_on_vectors():
  data = _labeled([2, 3], [1, 2, 3, 4, 5], (3,))
  trigger = attacks.feature_trigger(indices=[0, 2], value=7.0)
  everything = attacks.backdoor(data, np.array([False, True]),
                                target_label=4, trigger=trigger,
                                poison_fraction=1.0, seed=0)
  assert everything.features['y'].tolist() == [1, 2, 4, 4, 4]
  assert everything.features['x'].tolist() == [
      [0, 0, 0], [1, 1, 1], [7, 2, 7], [7, 3, 7], [7, 4, 7]]
  nothing = attacks.backdoor(data, np.array([False, True]), target_label=4,
                             trigger=trigger, poison_fraction=0.0, seed=0)
  np.testing.assert_array_equal(nothing.features['x'], data.features['x'])
  np.testing.assert_array_equal(nothing.features['y'], data.features['y'])


def test_backdoor_test_and_backdoor_accuracy():
  test = _labeled([3, 2, 1], [0, 1, 2, 0, 0, 2], (2,))
  trigger = attacks.feature_trigger(indices=[0], value=1.0)
  triggered = attacks.backdoor_test(test, target_label=0, trigger=trigger)
  # Examples 1, 2 (c0) and 5 (c2) are not of class 0; c1 keeps none.
  assert triggered.sizes.tolist() == [2, 0, 1]
  assert triggered.client_ids.tolist() == ['c0', 'c1', 'c2']
  assert triggered.features['x'].tolist() == [[1, 1], [1, 2], [1, 5]]
  assert triggered.features['y'].tolist() == [0, 0, 0]

  # A model that answers class 0 exactly when feature 0 is 1 (the
  # trigger), else class 1; the backdoor accuracy is then 1. A model that
  # always answers class 1 has backdoor accuracy 0.
  def model(backdoored):
    def apply(params, batch, *, key=None, train=False):
      del params, key, train
      hit = (batch['x'][:, 0] == 1.0).astype(jnp.float32)
      if not backdoored:
        hit = jnp.zeros_like(hit)
      return jnp.stack([2.0 * hit, jnp.ones_like(hit), jnp.zeros_like(hit)],
                       axis=-1)
    return fe.Model(init=lambda key: {}, apply=apply,
                    loss=fe.softmax_cross_entropy,
                    metrics={'accuracy': fe.accuracy})

  for backdoored, expected in ((True, 1.0), (False, 0.0)):
    result = fe.make_evaluate(model(backdoored), triggered)({})
    assert float(result['accuracy']) == expected


def test_default_trigger():
  images = np.zeros((2, 5, 5, 3), np.float32)
  images[0, 0, 0, 0] = 0.75
  stamped = attacks.default_trigger(images)(images)
  np.testing.assert_array_equal(stamped[:, 2:, 2:], 0.75)
  np.testing.assert_array_equal(stamped[:, :2], images[:, :2])
  vectors = np.arange(12, dtype=np.float32).reshape(2, 6)
  assert attacks.default_trigger(vectors)(vectors).tolist() == [
      [0, 1, 11, 11, 11, 11], [6, 7, 11, 11, 11, 11]]


def test_poison_data():
  train = _labeled([2, 2], [0, 1, 2, 1], (3,))
  test = _labeled([2], [1, 2], (3,))
  bad = np.array([True, False])
  same, none = attacks.poison_data(train, test, attack='none',
                                   malicious=bad, num_classes=3)
  assert same is train and none is None
  flipped, none = attacks.poison_data(train, test, attack='label_flip',
                                      malicious=bad, num_classes=3)
  assert flipped.features['y'].tolist() == [2, 1, 2, 1] and none is None
  poisoned, triggered = attacks.poison_data(
      train, test, attack='backdoor', malicious=bad, num_classes=3,
      target_label=2, poison_fraction=1.0)
  # The default trigger: the last 3 of 3 features at the training max, 3.
  assert poisoned.features['x'][:2].tolist() == [[3, 3, 3]] * 2
  assert poisoned.features['y'].tolist() == [2, 2, 2, 1]
  assert triggered.features['x'].tolist() == [[3, 3, 3]]
  assert triggered.features['y'].tolist() == [2]
  with pytest.raises(ValueError, match='attack'):
    attacks.poison_data(train, test, attack='sign_flip', malicious=bad,
                        num_classes=3)


# --- update attacks in the engine ---------------------------------------------


def test_no_attack_is_fedavg(linear_model, two_clients):
  # (1, 0) - (1/4 dA + 3/4 dB) = (1 - (-1/16 + 3/32), 0 - (-1/32 - 3/32))
  #                            = (31/32, 1/8)
  params, metrics = _one_round(linear_model, two_clients,
                               attacks.sign_flip(_mask()))
  np.testing.assert_allclose(params, [31 / 32, 1 / 8], rtol=1e-6)
  assert float(metrics['malicious']) == 0.0


def test_sign_flip_by_hand(linear_model, two_clients):
  # B sends -2 dB = (-1/4, 1/4):
  #   mean = (1/4*(-1/4) + 3/4*(-1/4), 1/4*(-1/8) + 3/4*(1/4))
  #        = (-1/4, -1/32 + 6/32) = (-1/4, 5/32)
  #   params = (1 + 1/4, -5/32) = (5/4, -5/32)
  params, metrics = _one_round(linear_model, two_clients,
                               attacks.sign_flip(_mask(B), scale=2.0))
  np.testing.assert_allclose(params, [5 / 4, -5 / 32], rtol=1e-6)
  np.testing.assert_allclose(metrics['malicious'], 0.5)


def test_sign_flip_of_client_a_by_hand(linear_model, two_clients):
  # A sends -dA = (1/4, 1/8) (A is also the id of the engine's padded
  # clients here, which must not count):
  #   mean = (1/16 + 3/32, 1/32 - 3/32) = (5/32, -1/16)
  #   params = (27/32, 1/16)
  params, metrics = _one_round(linear_model, two_clients,
                               attacks.sign_flip(_mask(A)))
  np.testing.assert_allclose(params, [27 / 32, 1 / 16], rtol=1e-6)
  np.testing.assert_allclose(metrics['malicious'], 0.5)


def test_model_replacement_by_hand(linear_model, two_clients):
  # B sends 4 dB = (1/2, -1/2):
  #   mean = (-1/16 + 3/8, -1/32 - 3/8) = (5/16, -13/32)
  #   params = (11/16, 13/32)
  params, _ = _one_round(linear_model, two_clients,
                         attacks.model_replacement(_mask(B), boost=4.0))
  np.testing.assert_allclose(params, [11 / 16, 13 / 32], rtol=1e-6)


def test_model_replacement_replaces_the_model(linear_model, two_clients):
  # Bagdasaryan et al.'s point: with boost = 1 / (B's weight) = 4/3, the
  # aggregate is 1/4 dA + dB, so that the new model is B's own model moved
  # by A's small share: (7/8, 1/8) - 1/4 * dA = (7/8 + 1/16, 1/8 + 1/32)
  # = (15/16, 5/32).
  params, _ = _one_round(linear_model, two_clients,
                         attacks.model_replacement(_mask(B), boost=4 / 3))
  np.testing.assert_allclose(params, [15 / 16, 5 / 32], rtol=1e-6)


def test_gaussian_in_the_engine(linear_model, two_clients):
  # B's share 3/4 * noise replaces 3/4 * dB: the noise is recovered from
  # the params, and must be B's transform noise, not dB.
  params, metrics = _one_round(linear_model, two_clients,
                               attacks.gaussian(_mask(B), stddev=0.1))
  noise = (np.array([1.0, 0.0]) - params - D_A / 4) * 4 / 3
  assert np.all(np.abs(noise) < 0.6) and not np.allclose(noise, D_B)
  np.testing.assert_allclose(metrics['malicious'], 0.5)


def test_gaussian_noise_statistics():
  # 2 x 20000 draws: the sample mean's standard error is 0.5 / sqrt(n) and
  # the sample standard deviation's about 0.5 / sqrt(2n); 5 standard
  # errors fail with probability < 1e-6.
  transform = attacks.gaussian(np.array([False, True]), stddev=0.5)
  output = {'a': jnp.ones(20000), 'b': jnp.ones((100, 200))}
  sent, row, metrics = transform.client((), output, (), jax.random.key(7),
                                        _client(1))
  assert row == () and float(metrics['malicious'].total) == 1.0
  n = 20000
  for leaf in (sent['a'], sent['b']):
    values = np.asarray(leaf, np.float64).ravel()
    assert abs(values.mean()) < 5 * 0.5 / np.sqrt(n)
    assert abs(values.std() - 0.5) < 5 * 0.5 / np.sqrt(2 * n)
  # The leaves draw different noise.
  assert not np.allclose(sent['a'], np.ravel(sent['b']))
  benign, _, metrics = transform.client((), output, (), jax.random.key(7),
                                        _client(0))
  np.testing.assert_array_equal(benign['a'], output['a'])
  assert float(metrics['malicious'].total) == 0.0


@pytest.mark.parametrize('bad, expected', [
    # Only A is benign: sigma = 0 and B sends mu = dA; mean = dA, params
    # = A's (5/4, 1/8).
    (B, [5 / 4, 1 / 8]),
    # Only B is benign: A sends dB; params = B's (7/8, 1/8).
    (A, [7 / 8, 1 / 8])])
def test_alie_in_the_engine(linear_model, two_clients, bad, expected):
  params, metrics = _one_round(
      linear_model, two_clients, attacks.a_little_is_enough(_mask(bad),
                                                            z=1.0))
  np.testing.assert_allclose(params, expected, rtol=1e-6)
  np.testing.assert_allclose(metrics['malicious'], 0.5)


# --- ALIE's aggregator by hand ------------------------------------------------

# Four clients and one padded row. Benign: rows 0, 1; malicious: 2, 3.
#   'w': benign [1, 10], [3, 14]: mu = [2, 12], sigma = [1, 2] (deviations
#        +-1 and +-2); with z = 1.5 attackers send [2 - 1.5, 12 - 3]
#        = [0.5, 9].
#   'b': benign 4, 8: mu = 6, sigma = 2; attackers send 6 - 3 = 3.
UPDATES = {'w': np.array([[1, 10], [3, 14], [50, -7], [-20, 0], [999, 999]],
                         np.float32),
           'b': np.array([4, 8, 100, 100, 7], np.float32)}
FLAGS = np.array([0, 0, 1, 1, 1], np.float32)
WEIGHTS = np.array([1, 1, 2, 1, 0], np.float32)


def _alie_aggregate(base, order=None):
  agg = attacks.alie(base, z=1.5)
  order = np.arange(5) if order is None else np.asarray(order)
  updates = jax.tree.map(lambda x: jnp.asarray(x[order]), UPDATES)
  template = jax.tree.map(lambda x: x[0], (updates, jnp.asarray(FLAGS)))
  return agg.finalize(agg.accumulate(
      agg.init(template), (updates, jnp.asarray(FLAGS[order])),
      jnp.asarray(WEIGHTS[order]), jnp.asarray(order, jnp.int32)))


def test_alie_mu_minus_z_sigma_by_hand():
  # Rows after the attack: w [1, 10], [3, 14], [0.5, 9], [0.5, 9];
  # b 4, 8, 3, 3. Weighted mean, weights 1, 1, 2, 1 (sum 5):
  #   w: (1 + 3 + 1 + 0.5)/5 = 1.1, (10 + 14 + 18 + 9)/5 = 10.2
  #   b: (4 + 8 + 6 + 3)/5 = 4.2
  mean = _alie_aggregate(fe.aggregate.weighted_mean())
  np.testing.assert_allclose(mean['w'], [1.1, 10.2], rtol=1e-6)
  np.testing.assert_allclose(mean['b'], 4.2, rtol=1e-6)
  # Coordinate median of the 4 real rows (each counted once):
  #   w: sorted [0.5, 0.5, 1, 3] -> 0.75; [9, 9, 10, 14] -> 9.5
  #   b: sorted [3, 3, 4, 8] -> 3.5
  median = _alie_aggregate(fe.aggregate.coordinate_median())
  np.testing.assert_allclose(median['w'], [0.75, 9.5], rtol=1e-6)
  np.testing.assert_allclose(median['b'], 3.5, rtol=1e-6)
  # Neither the order of the clients nor the padded row matters.
  shuffled = _alie_aggregate(fe.aggregate.weighted_mean(), [4, 2, 0, 3, 1])
  np.testing.assert_allclose(shuffled['w'], [1.1, 10.2], rtol=1e-6)


def test_alie_z_max():
  # n = 50, m = 12: s = floor(26) - 12 = 14, Phi^-1(36/50 = 0.72)
  # = 0.5828415 (normal table). n = 4, m = 2: s = 3 - 2 = 1,
  # Phi^-1(3/4) = 0.6744898. n = 10, m = 1: s = 5, Phi^-1(1/2) = 0.
  assert attacks.alie_z_max(num_clients=50, num_malicious=12) == (
      pytest.approx(0.5828415, abs=1e-6))
  assert attacks.alie_z_max(num_clients=4, num_malicious=2) == (
      pytest.approx(0.6744898, abs=1e-6))
  assert attacks.alie_z_max(num_clients=10, num_malicious=1) == (
      pytest.approx(0.0, abs=1e-12))
  for m in (0, 3):   # none, or a majority (floor(4/2 + 1) = 3)
    with pytest.raises(ValueError, match='num_malicious'):
      attacks.alie_z_max(num_clients=4, num_malicious=m)


def test_alie_default_z_and_aggregator():
  # 2 of 4 clients malicious: z = Phi^-1(3/4), as computed above; with
  # the benign rows [0, 2] (mu 1, sigma 1) attackers send 1 - 0.6744898.
  transform = attacks.a_little_is_enough(
      np.array([False, True, False, True]),
      aggregator=fe.aggregate.coordinate_median())
  agg = transform.aggregator
  assert agg.whole_cohort
  rows = jnp.array([[0.0], [50.0], [2.0], [-50.0]])
  sent = [transform.client((), rows[i], (), jax.random.key(0), _client(i))
          for i in range(4)]
  assert [float(s[0][1]) for s in sent] == [0, 1, 0, 1]
  outputs = (rows, jnp.stack([s[0][1] for s in sent]))
  result = agg.finalize(agg.accumulate(agg.init((rows[0], outputs[1][0])),
                                       outputs, jnp.ones(4), jnp.arange(4)))
  # Median of [0, 2, 0.3255102, 0.3255102] = 0.3255102.
  np.testing.assert_allclose(result, [1 - 0.6744898], rtol=1e-6)


# --- validation and the flag builder ------------------------------------------


@pytest.mark.parametrize('build, name', [
    (lambda: attacks.sign_flip(_mask(B), scale=0.0), 'scale'),
    (lambda: attacks.gaussian(_mask(B), stddev=-1.0), 'stddev'),
    (lambda: attacks.model_replacement(_mask(B), boost=float('nan')),
     'boost'),
    (lambda: attacks.a_little_is_enough(_mask(B), z=-1.0), 'z'),
    (lambda: attacks.alie('median', z=1.0), 'base_aggregator'),
    (lambda: attacks.sign_flip([[True]]), 'malicious'),
    (lambda: attacks.backdoor(_labeled([1], [0]), np.array([True]),
                              target_label=-1, trigger=lambda x: x,
                              poison_fraction=0.5, seed=0), 'target_label'),
    (lambda: attacks.square_trigger(size=0), 'size'),
    (lambda: attacks.feature_trigger(indices=[], value=1.0), 'indices'),
    (lambda: attacks.transforms_from_flags(attack='bogus',
                                           malicious=_mask()), 'attack'),
    (lambda: attacks.transforms_from_flags(attack='model_replacement',
                                           malicious=_mask(B)), 'boost')])
def test_validation(build, name):
  with pytest.raises(ValueError, match=name):
    build()


def test_transforms_from_flags():
  bad = attacks.malicious_clients(num_clients=12, fraction=0.4, seed=0)
  assert attacks.transforms_from_flags(attack='none', malicious=bad) == []
  one = jnp.ones(2)
  attacker = int(np.flatnonzero(bad)[0])

  def sent(attack, **kwargs):
    (transform,) = attacks.transforms_from_flags(attack=attack,
                                                 malicious=bad, **kwargs)
    return transform, transform.client((), one, (), jax.random.key(0),
                                       _client(attacker))[0]

  np.testing.assert_allclose(sent('sign_flip', scale=3.0)[1], [-3, -3])
  np.testing.assert_allclose(sent('model_replacement', boost=2.0)[1], [2, 2])
  # Default boost: 12 / round(5/12 * 12) = 12/5.
  np.testing.assert_allclose(
      sent('model_replacement', clients_per_round=12)[1], [2.4, 2.4],
      rtol=1e-6)
  assert not np.allclose(sent('gaussian', stddev=1.0)[1], one)
  transform, tagged = sent('alie', z=0.5)
  assert float(tagged[1]) == 1.0 and transform.aggregator.whole_cohort


# --- an effect, and a defense -------------------------------------------------


@pytest.fixture(scope='module')
def iid_clients():
  """Twelve Synthetic-IID clients of 28 to 83 examples: benign updates
  agree, so a robust aggregator can tell the attackers apart."""
  train, _ = fe.datasets.synthetic(num_clients=12, iid=True, seed=0,
                                   size_log_mean=3.0, min_size=30)
  return train


def test_sign_flip_stops_fedavg_and_median_restores_it(logistic_model,
                                                       iid_clients):
  # 5 of 12 clients send -4 times their update: FedAvg's mean update is
  # (7 - 4 * 5)/12 = -13/12 of the benign one, an ascent. The coordinate
  # median of 12 outputs lies between the benign ones wherever they agree.
  bad = attacks.malicious_clients(num_clients=12, fraction=0.4, seed=0)
  evaluate = fe.make_evaluate(logistic_model, iid_clients)
  median = fe.transforms.Transform(
      client=lambda state, output, row, key, client: (output, row, {}),
      aggregator=fe.aggregate.coordinate_median())

  def loss_after(*transforms, rounds=5):
    algo = fe.transforms.apply(fe.algorithms.fedavg(
        logistic_model, client_optimizer=optax.sgd(0.1)), *transforms)
    rnd = fe.make_round(algo, iid_clients, clients_per_round=12,
                        weighting='uniform',
                        batching=fe.Batching(batch_size=32, local_steps=2))
    state = algo.init(logistic_model.init(jax.random.key(0)))
    for r in range(rounds):
      state, _, _ = rnd(state, (), rnd.select(range(12)), jax.random.key(r))
    return float(evaluate(state.params)['loss'])

  start = float(evaluate(logistic_model.init(jax.random.key(0)))['loss'])
  attack = attacks.sign_flip(bad, scale=4.0)
  attacked = loss_after(attack)
  defended = loss_after(median, attack)
  assert attacked > 2 * start, (start, attacked)
  assert defended < 0.8 * start, (start, defended)
