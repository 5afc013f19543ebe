"""Compressors of client outputs, checked by hand and by independent routes.

Every compressor flattens the client's whole output (leaves in
``jax.tree.leaves`` order, so ``{'b', 'w'}`` gives ``[b, w]``) into one
vector of ``d`` coordinates. Expected values come from:

* small vectors worked out by hand in the comments (top-k's choice and its
  residual, quantization levels, bit counts, DRIVE on two coordinates);
* two FedAvg rounds of top-k with error feedback on the 1-D linear model
  and the two clients of conftest.py, derived below from the update rule of
  test_fedavg_by_hand.py;
* numpy with an explicit Hadamard matrix (``scipy.linalg.hadamard``) for the
  fast transform and for DRIVE's decode ``x_hat = R^T (S sign(R x))``,
  ``R = H D / sqrt(n)``, ``S = ||x||^2 / ||R x||_1``, over every sign
  vector ``D``;
* statistics over many keys that fail for a biased quantizer and for a
  non-uniform random-k.
"""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import scipy.linalg

import fedjax_engine as fe
from fedjax_engine import compression

CLIENT = fe.ClientInfo(jnp.int32(0), jnp.zeros(1, jnp.int32))


def _send(transform, output, row=(), key=0, params=None):
  """One client's ``(sent, row, metrics)``; ``params`` (default: shaped like
  the output) only set ``downlink_bits``."""
  state = transform.init(output if params is None else params)
  return transform.client(state, output, row, jax.random.key(key), CLIENT)


def _many(transform, output, num_keys):
  """The decoded output for keys 0 .. num_keys - 1, stacked."""
  state = transform.init(output)
  keys = jax.vmap(jax.random.key)(jnp.arange(num_keys))
  return jax.jit(jax.vmap(
      lambda k: transform.client(state, output, (), k, CLIENT)[0]))(keys)


def _bits(metrics):
  return {name: float(m.total) / float(m.count) for name, m in metrics.items()}


# --- The fast Walsh-Hadamard transform -------------------------------------


@pytest.mark.parametrize('n', [1, 2, 4, 8, 32])
def test_hadamard_transform_is_the_explicit_matrix(n):
  x = np.random.default_rng(n).standard_normal((3, n)).astype(np.float32)
  expected = x @ scipy.linalg.hadamard(n).T / np.sqrt(n)
  got = compression.hadamard_transform(jnp.asarray(x))
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
  # Orthonormal and symmetric: its own inverse.
  np.testing.assert_allclose(compression.hadamard_transform(got), x,
                             rtol=1e-5, atol=1e-6)


def test_hadamard_transform_by_hand():
  # H_4 = [[1, 1, 1, 1], [1, -1, 1, -1], [1, 1, -1, -1], [1, -1, -1, 1]]
  # x = [1, 2, 3, 4]: H x = [10, -2, -4, 0], divided by sqrt(4) = 2.
  got = compression.hadamard_transform(jnp.array([1., 2., 3., 4.]))
  np.testing.assert_allclose(got, [5., -1., -2., 0.], atol=1e-6)


def test_hadamard_transform_needs_a_power_of_two():
  with pytest.raises(ValueError, match='power-of-2'):
    compression.hadamard_transform(jnp.zeros(6))


# --- Quantization -------------------------------------------------------------


def test_quantize_nearest_levels_by_hand():
  # bits = 2: s = 3 intervals over [min, max] = [0, 1], delta = 1/3, levels
  # 0, 1/3, 2/3, 1; u = x / delta = [0, 0.6, 1.2, 2.7, 3] rounds to
  # [0, 1, 1, 3, 3].
  sent, row, metrics = _send(compression.quantize(bits=2, stochastic=False),
                             jnp.array([0., .2, .4, .9, 1.]))
  np.testing.assert_allclose(sent, [0., 1 / 3, 1 / 3, 1., 1.], rtol=1e-6)
  assert row == ()
  # 2 bits for each of 5 coordinates, min and max as floats: 10 + 64.
  assert _bits(metrics) == {'uplink_bits': 74.0,
                            'uplink_bits_uncompressed': 160.0,
                            'downlink_bits': 160.0}


def test_quantize_goes_to_a_neighbouring_level_of_the_whole_output():
  # One range for every leaf: min -1 (in 'a'), max 2 (in 'b'); bits = 2
  # gives delta = 1 and levels -1, 0, 1, 2. 0.5 and 0.2 go to 0 or 1; the
  # ends and 1.0 (a level) stay.
  output = {'a': jnp.array([-1., .5]), 'b': jnp.array([[2., .2, 1.]])}
  sent = _many(compression.quantize(bits=2), output, 200)
  np.testing.assert_allclose(sent['a'][:, 0], -1., atol=1e-6)
  np.testing.assert_allclose(sent['b'][:, 0, 0], 2., atol=1e-6)
  np.testing.assert_allclose(sent['b'][:, 0, 2], 1., atol=1e-6)
  for values in (sent['a'][:, 1], sent['b'][:, 0, 1]):
    assert set(np.round(np.asarray(values), 5).tolist()) == {0., 1.}


def test_quantize_constant_output_is_exact():
  sent, _, _ = _send(compression.quantize(bits=1), jnp.full((4,), 0.3))
  np.testing.assert_allclose(sent, 0.3, rtol=1e-6)


# x on [min, max] = [0, 1]; the interior coordinates sit at fractions 0.1 to
# 0.9 of a level interval (bits 1: the interval is [0, 1]; bits 2: [1/3,
# 2/3] and [0, 1/3]).
UNBIASED_X = jnp.array([0., .1, .35, .5, .72, .9, 1., 0.4, .05])
NUM_KEYS = 4000


def _biased(bits, stochastic):
  """Whether the mean over NUM_KEYS keys misses x by more than 5 standard
  errors anywhere; a level draw has standard deviation <= delta / 2."""
  mean = np.asarray(_many(compression.quantize(
      bits=bits, stochastic=stochastic), UNBIASED_X, NUM_KEYS)).mean(axis=0)
  delta = 1.0 / (2 ** bits - 1)
  tolerance = 5 * (delta / 2) / np.sqrt(NUM_KEYS)
  return np.max(np.abs(mean - np.asarray(UNBIASED_X))) > tolerance


@pytest.mark.parametrize('bits', [1, 2])
def test_quantize_is_unbiased(bits):
  assert not _biased(bits, stochastic=True)
  # The same test catches the bias of rounding to the nearest level (up to
  # delta / 2 = 0.5 or 1/6 here, against a tolerance of 0.04 or 0.013).
  assert _biased(bits, stochastic=False)


def test_quantize_draws_up_with_the_fraction():
  # bits = 1, x = 0.35 between levels 0 and 1: P(1) = 0.35.
  sent = np.asarray(_many(compression.quantize(bits=1), UNBIASED_X, NUM_KEYS))
  share = np.mean(sent[:, 2] > 0.5)
  assert abs(share - 0.35) < 5 * np.sqrt(0.35 * 0.65 / NUM_KEYS)


# --- Top-k with error feedback ------------------------------------------------


def test_top_k_by_hand_with_residual():
  # Leaves in order 'a', 'b': x = [0.5, -3, 1, 2, -0.1], d = 5, fraction 0.4:
  # k = round(2.0) = 2. The largest magnitudes are -3 and 2.
  #   sent = [0, -3, 0, 2, 0], residual = [0.5, 0, 1, 0, -0.1]
  # Next output [1, 0, -1.5, 0, 0] + residual = [1.5, 0, -0.5, 0, -0.1]:
  #   sent = [1.5, 0, -0.5, 0, 0], residual = [0, 0, 0, 0, -0.1]
  t = compression.top_k(fraction=0.4)
  first = {'a': jnp.array([.5, -3.]), 'b': jnp.array([[1., 2., -.1]])}
  row = t.init_client_state(first)
  np.testing.assert_array_equal(row['a'], [0., 0.])
  sent, row, metrics = _send(t, first, row)
  np.testing.assert_allclose(sent['a'], [0., -3.])
  np.testing.assert_allclose(sent['b'], [[0., 2., 0.]])
  np.testing.assert_allclose(row['a'], [.5, 0.])
  np.testing.assert_allclose(row['b'], [[1., 0., -.1]], rtol=1e-6)
  # Per value 32 bits and an index of ceil(log2 5) = 3 bits: 2 * 35.
  assert _bits(metrics)['uplink_bits'] == 70.0
  assert _bits(metrics)['uplink_bits_uncompressed'] == 160.0
  second = {'a': jnp.array([1., 0.]), 'b': jnp.array([[-1.5, 0., 0.]])}
  sent, row, _ = _send(t, second, row, key=1)
  np.testing.assert_allclose(sent['a'], [1.5, 0.])
  np.testing.assert_allclose(sent['b'], [[-.5, 0., 0.]])
  np.testing.assert_allclose(row['a'], [0., 0.], atol=1e-7)
  np.testing.assert_allclose(row['b'], [[0., 0., -.1]], rtol=1e-6)


def test_top_k_without_memory_keeps_nothing():
  t = compression.top_k(fraction=0.4, error_feedback=False)
  assert t.init_client_state is None
  sent, row, _ = _send(t, jnp.array([.5, -3., 1., 2., -.1]))
  np.testing.assert_allclose(sent, [0., -3., 0., 2., 0.])
  assert row == ()


# Two rounds of FedAvg (server SGD with lr 1, example weights 1/4 and 3/4)
# with top-k, fraction 0.5 of d = 2 (k = 1), and error feedback. Output
# order [b, w]. Round 1 takes two local steps with lr 1/4, round 2 one (a
# second Round on the same state and table), so that round 2 stays short.
#
# Round 1 from (w, b) = (1, 0); the deltas are test_fedavg_by_hand.py's:
#   A: delta = (w, b) = (-19/64, -1/8); |w| = 19/64 > 8/64: sends w
#      sent_A = (-19/64, 0), residual_A = (0, -1/8)
#   B: delta = (1/6, -15/64); |b| = 15/64 > 1/6: sends b
#      sent_B = (0, -15/64), residual_B = (1/6, 0)
#   mean: w = 1/4 * -19/64 = -19/256, b = 3/4 * -15/64 = -45/256
#   x1 = (1 + 19/256, 45/256) = (275/256, 45/256)
#
# Round 2 from x1, one step, delta = lr * (mean(r x), mean(r)),
# r = w x + b - y:
#   A: r = [320/256 - 1, 595/256 - 3] = [64/256, -173/256]
#      mean(r x) = (64 - 346)/512 = -141/256, mean(r) = -109/512
#      delta = (-141/1024, -109/2048)
#      + residual_A = (-141/1024, -109/2048 - 256/2048) = (-282/2048,
#      -365/2048): |b| larger, sends b (plain top-k would send w)
#      sent_A = (0, -365/2048), residual_A = (-141/1024, 0)
#   B: r = (275 x + 45)/256 - y = [-249, -230, -211, 64, 83, 102] / 256
#      mean(r x) = (498 + 230 + 0 + 64 + 166 + 306)/256/6 = 1264/1536
#                = 79/96;  mean(r) = -441/256/6 = -147/512
#      delta = (79/384, -147/2048)
#      + residual_B = (79/384 + 64/384, -147/2048) = (143/384, -147/2048)
#      sent_B = (143/384, 0), residual_B = (0, -147/2048)
#   mean: w = 3/4 * 143/384 = 143/512, b = 1/4 * -365/2048 = -365/8192
#   x2 = (275/256 - 143/512, 45/256 + 365/8192) = (407/512, 1805/8192)
#      = (0.794921875, 0.2203369140625)
# (Without error feedback round 2 would send A's w and B's w: x2 =
# (3909/4096, 45/256).)
def test_top_k_error_feedback_two_fedavg_rounds(linear_model, two_clients):
  algorithm = fe.transforms.apply(
      fe.algorithms.fedavg(linear_model, client_optimizer=optax.sgd(0.25)),
      compression.top_k(fraction=0.5))
  rounds = [fe.make_round(algorithm, two_clients, clients_per_round=2,
                          batching=fe.Batching(batch_size=6,
                                               local_steps=steps))
            for steps in (2, 1)]
  state = algorithm.init(linear_model.init(jax.random.key(0)))
  table = fe.testing.initial_table(algorithm, linear_model, two_clients)

  state, table, metrics = rounds[0](state, table, rounds[0].select([0, 1]),
                                    jax.random.key(0))
  np.testing.assert_allclose([state.params['w'], state.params['b']],
                             [275 / 256, 45 / 256], rtol=1e-6)
  residual = table.extra[0]
  np.testing.assert_allclose(residual['w'], [0., 1 / 6], atol=1e-7,
                             rtol=1e-6)
  np.testing.assert_allclose(residual['b'], [-1 / 8, 0.], atol=1e-7,
                             rtol=1e-6)
  # d = 2, k = 1: a 32-bit value and a 1-bit index.
  assert float(metrics['uplink_bits']) == 33.0
  assert float(metrics['uplink_bits_uncompressed']) == 64.0
  assert float(metrics['downlink_bits']) == 64.0

  state, table, _ = rounds[1](state, table, rounds[1].select([0, 1]),
                              jax.random.key(1))
  np.testing.assert_allclose([state.params['w'], state.params['b']],
                             [407 / 512, 1805 / 8192], rtol=1e-6)
  residual = table.extra[0]
  np.testing.assert_allclose(residual['w'], [-141 / 1024, 0.], atol=1e-7,
                             rtol=1e-6)
  np.testing.assert_allclose(residual['b'], [0., -147 / 2048], atol=1e-7,
                             rtol=1e-6)


def test_error_feedback_needs_an_output_shaped_like_the_params(
    linear_model, two_clients):
  t = compression.random_k(fraction=0.5)
  params = {'w': jnp.ones(()), 'b': jnp.zeros(())}
  with pytest.raises(ValueError, match='residual shaped like the params'):
    _send(t, (params, params), t.init_client_state(params))
  # SCAFFOLD sends (delta, control_delta): refused when the round is traced.
  algorithm = fe.transforms.apply(
      fe.algorithms.scaffold(linear_model, client_optimizer=optax.sgd(0.25)),
      compression.top_k(fraction=0.5))
  rnd = fe.make_round(algorithm, two_clients, clients_per_round=2,
                      batching=fe.Batching(batch_size=6, local_steps=1))
  with pytest.raises(ValueError, match='residual shaped like the params'):
    rnd(algorithm.init(linear_model.init(jax.random.key(0))),
        fe.testing.initial_table(algorithm, linear_model, two_clients),
        rnd.select([0, 1]), jax.random.key(0))


# --- Random-k -----------------------------------------------------------------

# d = 10 coordinates, none zero; fraction 0.3: k = 3.
RANDOM_X = jnp.arange(1., 11.)


def test_random_k_is_a_function_of_the_key_and_sends_exactly_k():
  t = compression.random_k(fraction=0.3)
  row = t.init_client_state(RANDOM_X)
  sent, new_row, metrics = _send(t, RANDOM_X, row, key=5)
  again, _, _ = _send(t, RANDOM_X, row, key=5)
  np.testing.assert_array_equal(sent, again)
  kept = np.flatnonzero(np.asarray(sent))
  assert len(kept) == 3
  # With memory the kept values go as they are and the rest stays behind.
  sent, new_row, x = (np.asarray(a) for a in (sent, new_row, RANDOM_X))
  np.testing.assert_array_equal(sent[kept], x[kept])
  np.testing.assert_array_equal(sent + new_row, x)
  # 3 values of 32 bits; the indices follow from the key.
  assert _bits(metrics)['uplink_bits'] == 96.0
  others = [np.flatnonzero(np.asarray(_send(t, RANDOM_X, row, key=k)[0]))
            for k in range(6, 12)]
  assert any(set(o) != set(kept) for o in others)


def test_random_k_picks_uniformly_and_is_unbiased_without_memory():
  t = compression.random_k(fraction=0.3, error_feedback=False)
  assert t.init_client_state is None
  sent = np.asarray(_many(t, RANDOM_X, NUM_KEYS))
  assert np.all(np.count_nonzero(sent, axis=1) == 3)
  # Kept values are scaled by d / k = 10 / 3.
  picked = sent != 0
  np.testing.assert_allclose(sent[picked], (np.asarray(RANDOM_X) * 10 / 3)[
      np.nonzero(picked)[1]], rtol=1e-6)
  # Each coordinate is kept with probability k / d = 0.3, so the mean of
  # what is sent is x.
  share = picked.mean(axis=0)
  assert np.max(np.abs(share - 0.3)) < 5 * np.sqrt(0.3 * 0.7 / NUM_KEYS)
  standard_error = np.asarray(RANDOM_X) * 10 / 3 * np.sqrt(0.21 / NUM_KEYS)
  assert np.all(np.abs(sent.mean(axis=0) - np.asarray(RANDOM_X))
                < 5 * standard_error)


# --- DRIVE --------------------------------------------------------------------


@pytest.mark.parametrize('x, expected', [([3., 1.], [10 / 3, 0.]),
                                         ([1., -3.], [0., -10 / 3])])
def test_drive_by_hand_on_two_coordinates(x, expected):
  # n = d = 2, R = H_2 D / sqrt(2) with H_2 = [[1, 1], [1, -1]]. For
  # x = (3, 1) and D = +-(1, 1): y = +-(4, 2)/sqrt(2); for D = +-(1, -1):
  # y = +-(2, 4)/sqrt(2). Either way ||y||_1 = 6/sqrt(2), S = ||x||^2 /
  # ||y||_1 = 10 sqrt(2)/6, and x_hat = D H_2 (S sign(y)) / sqrt(2)
  # = (10/6) D H_2 (+-1, +-1) = (10/3, 0) (D = (1, 1): H_2 (1, 1) = (2, 0);
  # D = (1, -1): the same). Likewise (1, -3) gives (0, -10/3): DRIVE on two
  # coordinates keeps the larger one, scaled so <x_hat, x> = ||x||^2 = 10.
  t = compression.drive()
  for key in range(4):
    sent, _, metrics = _send(t, jnp.array(x), key=key)
    np.testing.assert_allclose(sent, expected, rtol=1e-6, atol=1e-6)
  # n = 2 sign bits and a 32-bit scale.
  assert _bits(metrics) == {'uplink_bits': 34.0,
                            'uplink_bits_uncompressed': 64.0,
                            'downlink_bits': 64.0}


def _drive_decodes(x):
  """x_hat = R^T (S sign(R x)) for every sign vector D, by numpy with an
  explicit Hadamard matrix; x padded with zeros to a power of 2."""
  d = len(x)
  n = 1 << (d - 1).bit_length()
  padded = np.concatenate([x, np.zeros(n - d)])
  h = scipy.linalg.hadamard(n) / np.sqrt(n)
  decodes = []
  for signs in itertools.product([1., -1.], repeat=n):
    rotation = h @ np.diag(signs)
    y = rotation @ padded
    scale = padded @ padded / np.abs(y).sum()
    decodes.append((rotation.T @ (scale * np.where(y >= 0, 1., -1.)))[:d])
  return np.array(decodes)


@pytest.mark.parametrize('x', [[1., -2., .5], [.3, -1.2, 2., .7, -.1]])
def test_drive_is_the_decode_formula_for_some_signs(x):
  x = np.array(x)
  candidates = _drive_decodes(x)
  sent = np.asarray(_many(compression.drive(), jnp.asarray(x, jnp.float32),
                          16), np.float64)
  for got in sent:
    closest = np.min(np.max(np.abs(candidates - got), axis=1))
    assert closest < 1e-5, (got, closest)
    # The unbiased scale: <x_hat, x> = ||x||^2 for every draw.
    np.testing.assert_allclose(got @ x, x @ x, rtol=1e-5)
  if len(x) == 5:
    # n = 8: the keys draw different rotations, hence different decodes.
    assert len({tuple(np.round(s, 4)) for s in sent}) > 1
  # n sign bits (n = 4 or 8) and a 32-bit scale.
  _, _, metrics = _send(compression.drive(), jnp.asarray(x, jnp.float32))
  assert _bits(metrics)['uplink_bits'] == (36.0 if len(x) == 3 else 40.0)


def test_drive_of_zero_is_zero():
  sent, _, _ = _send(compression.drive(), jnp.zeros(3))
  np.testing.assert_array_equal(sent, [0., 0., 0.])


# --- Bit counts, parameters, flags --------------------------------------------


def test_bit_counts_on_the_logistic_model_by_hand():
  # d = 60 * 10 + 10 = 610 coordinates; uncompressed 32 * 610 = 19520.
  output = {'kernel': jnp.full((60, 10), .01), 'bias': jnp.full((10,), -.02)}
  expected = {
      # 3 bits each, min and max: 1830 + 64.
      'quantize': (compression.quantize(bits=3), 1894.0),
      # k = round(61.0) = 61; an index takes ceil(log2 610) = 10 bits.
      'top_k': (compression.top_k(fraction=0.1, error_feedback=False),
                61 * 42.0),
      'random_k': (compression.random_k(fraction=0.1), 61 * 32.0),
      # Padded to n = 1024 sign bits, one scale.
      'drive': (compression.drive(), 1056.0),
  }
  for name, (t, bits) in expected.items():
    row = t.init_client_state(output) if t.init_client_state else ()
    _, _, metrics = _send(t, output, row, params={'w': jnp.zeros((5, 3))})
    assert _bits(metrics) == {'uplink_bits': bits,
                              'uplink_bits_uncompressed': 19520.0,
                              'downlink_bits': 32 * 15.0}, name


@pytest.mark.parametrize('fraction, size, k', [
    (0.1, 610, 61), (0.5, 2, 1), (0.25, 2, 1), (1e-9, 5, 1), (1.0, 7, 7),
    (0.3, 10, 3), (0.35, 10, 4)])
def test_num_kept(fraction, size, k):
  assert compression.num_kept(fraction, size) == k


@pytest.mark.parametrize('build, message', [
    (lambda: compression.quantize(bits=0), 'bits must be an int in'),
    (lambda: compression.quantize(bits=25), 'bits must be an int in'),
    (lambda: compression.quantize(bits=2.0), 'bits must be an int in'),
    (lambda: compression.quantize(bits=True), 'bits must be an int in'),
    (lambda: compression.quantize(bits=4, stochastic=1), 'stochastic must'),
    (lambda: compression.top_k(fraction=0), 'fraction must be a number'),
    (lambda: compression.top_k(fraction=1.5), 'fraction must be a number'),
    (lambda: compression.random_k(fraction='0.1'),
     'fraction must be a number'),
    (lambda: compression.random_k(fraction=0.1, error_feedback=None),
     'error_feedback must'),
    (lambda: compression.transforms_from_flags(compression='zip'),
     'compression must be one of'),
    (lambda: compression.transforms_from_flags(compression='top_k',
                                               fraction=-1.0),
     'fraction must be a number'),
])
def test_bad_parameters_are_refused(build, message):
  with pytest.raises(ValueError, match=message):
    build()


def test_non_float_outputs_are_refused():
  with pytest.raises(ValueError, match='floating-point'):
    _send(compression.drive(), jnp.arange(4))


def test_transforms_from_flags():
  assert compression.transforms_from_flags(compression='none') == []
  # Values the chosen compressor does not read are not checked.
  assert compression.transforms_from_flags(compression='none', bits=0) == []
  x = jnp.array([.5, -3., 1., 2., -.1])
  (t,) = compression.transforms_from_flags(compression='top_k', fraction=0.4,
                                           error_feedback=False)
  assert t.init_client_state is None
  np.testing.assert_allclose(_send(t, x)[0], [0., -3., 0., 2., 0.])
  (t,) = compression.transforms_from_flags(compression='random_k',
                                           fraction=0.4)
  assert t.init_client_state is not None
  (t,) = compression.transforms_from_flags(compression='quantize', bits=5)
  assert _bits(_send(t, x)[2])['uplink_bits'] == 5 * 5 + 64.0
  (t,) = compression.transforms_from_flags(compression='drive')
  assert _bits(_send(t, x)[2])['uplink_bits'] == 8 + 32.0
