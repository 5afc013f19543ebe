"""Tests for the model zoo: CNNs, LSTMs, ResNet-18 (GN), transformer LM,
multi-label logistic regression, and the pad-excluding sequence loss and
metrics.

Parameter counts are derived by hand below (the arithmetic is written out);
compiling conv and LSTM gradients is slow on CPU, so shapes and counts use
``jax.eval_shape`` and the executed tests use tiny batches.
"""

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedjax_engine.model import Mean
from fedjax_engine.models import cnn
from fedjax_engine.models import dense
from fedjax_engine.models import resnet
from fedjax_engine.models import rnn
from fedjax_engine.models import sequence
from fedjax_engine.models import transformer

KEY = jax.random.key(0)
LN2, LN3 = math.log(2.0), math.log(3.0)


def _shapes(model):
  return jax.eval_shape(model.init, KEY)


def _count(tree):
  return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(tree))


def _out_shape(model, batch, **kwargs):
  return jax.eval_shape(functools.partial(model.apply, **kwargs),
                        _shapes(model), batch).shape


def _lstm_params(in_dim, hidden):
  """Input kernels [in, 4h] + recurrent kernels [h, 4h] + biases [4h]."""
  return in_dim * 4 * hidden + hidden * 4 * hidden + 4 * hidden


# ----------------------------------------------------------------------------
# Parameter counts by hand.


def test_emnist_cnn_parameter_count():
  conv1 = 3 * 3 * 1 * 32 + 32            # 320
  conv2 = 3 * 3 * 32 * 64 + 64           # 18,496
  flat = 12 * 12 * 64                    # 28 -3+1-> 26 -> 24, pool -> 12
  dense = flat * 128 + 128               # 1,179,776
  for classes in (62, 10):
    out = 128 * classes + classes
    expected = conv1 + conv2 + dense + out
    params = _shapes(cnn.emnist_cnn(num_classes=classes))
    assert _count(params) == expected
  assert conv1 + conv2 + dense + 128 * 62 + 62 == 1_206_590
  assert params['Dense_0']['kernel'].shape == (128, 9216)   # [out, in]


def test_femnist_cnn_parameter_count():
  conv1 = 5 * 5 * 1 * 32 + 32            # 832
  conv2 = 5 * 5 * 32 * 64 + 64           # 51,264
  flat = 7 * 7 * 64                      # 'SAME' convs, pools 28 -> 14 -> 7
  dense = flat * 2048 + 2048             # 6,424,576
  out = 2048 * 62 + 62                   # 127,038
  params = _shapes(cnn.femnist_cnn(num_classes=62))
  assert _count(params) == conv1 + conv2 + dense + out == 6_603_710
  assert params['Dense_0']['kernel'].shape == (2048, 3136)   # [out, in]


def test_char_lstm_parameter_count():
  vocab, embed, hidden = 90, 8, 256      # 86 characters + pad/BOS/EOS/OOV
  expected = (vocab * embed                          # 720
              + _lstm_params(embed, hidden)          # 271,360
              + _lstm_params(hidden, hidden)         # 525,312
              + hidden * vocab + vocab)              # 23,130
  assert expected == 820_522
  assert _count(_shapes(rnn.char_lstm(vocab_size=vocab))) == expected


def test_stackoverflow_lstm_parameter_count():
  vocab, embed, hidden = 10_004, 96, 670
  expected = (vocab * embed                          # 960,384
              + _lstm_params(embed, hidden)          # 2,055,560
              + hidden * embed + embed               # 64,416 (projection)
              + embed * vocab + vocab)               # 970,388
  assert expected == 4_050_748
  assert _count(_shapes(rnn.stackoverflow_lstm(vocab_size=vocab))) == expected


def test_sent140_lstm_parameter_count():
  vocab, hidden, classes = 10_000, 100, 2
  expected = (vocab * hidden                         # 1,000,000 (embedding)
              + 2 * _lstm_params(hidden, hidden)     # 160,800
              + hidden * 128 + 128                   # 12,928
              + 128 * classes + classes)             # 258
  assert expected == 1_173_986
  assert _count(_shapes(rnn.sent140_lstm(vocab_size=vocab))) == expected


def test_resnet18_gn_parameter_count():
  gn = lambda c: 2 * c                               # scale and bias
  conv = lambda k, cin, cout: k * k * cin * cout     # no bias
  stem = conv(3, 3, 64) + gn(64)
  def block(cin, cout):
    shortcut = conv(1, cin, cout) + gn(cout) if cin != cout else 0
    return conv(3, cin, cout) + gn(cout) + conv(3, cout, cout) + gn(cout) + (
        shortcut)
  stages = sum(block(cin, cout) + block(cout, cout)
               for cin, cout in ((64, 64), (64, 128), (128, 256), (256, 512)))
  expected = stem + stages + 512 * 10 + 10
  assert expected == 11_173_962
  assert _count(_shapes(resnet.resnet18_gn(num_classes=10))) == expected


def test_transformer_parameter_count():
  v, length, d, m, layers = 100, 64, 128, 512, 2
  per_layer = 4 * (d * d + d) + (d * m + m) + (m * d + d) + 2 * 2 * d
  expected = v * d + length * d + layers * per_layer + 2 * d + d * v + v
  model = transformer.transformer_lm(vocab_size=v, max_len=length, dim=d,
                                     heads=4, layers=layers, mlp_dim=m)
  assert _count(_shapes(model)) == expected == 430_692


# ----------------------------------------------------------------------------
# Output shapes and argument checks (traced only).


def test_output_shapes():
  emnist = cnn.emnist_cnn(num_classes=62)
  for x in (jnp.zeros((3, 28, 28)), jnp.zeros((3, 28, 28, 1)),
            jnp.zeros((3, 784))):
    assert _out_shape(emnist, {'x': x}) == (3, 62)
  assert _out_shape(emnist, {'x': jnp.zeros((3, 28, 28))}, train=True,
                    key=KEY) == (3, 62)
  assert _out_shape(cnn.femnist_cnn(num_classes=10),
                    {'x': jnp.zeros((2, 28, 28))}) == (2, 10)
  tokens = {'x': jnp.zeros((2, 7), jnp.int32)}
  assert _out_shape(rnn.char_lstm(vocab_size=90), tokens) == (2, 7, 90)
  leaf = rnn.char_lstm(vocab_size=90, last_only=True)   # LEAF: y is [B]
  assert _out_shape(leaf, {'x': jnp.zeros((2, 80), jnp.int32)}) == (2, 90)
  assert _count(_shapes(leaf)) == 820_522
  assert jax.eval_shape(leaf.loss, jnp.zeros((2, 90)),
                        {'y': jnp.zeros((2,), jnp.int32)}).shape == (2,)
  assert _out_shape(rnn.stackoverflow_lstm(vocab_size=10_004),
                    tokens) == (2, 7, 10_004)
  assert _out_shape(transformer.transformer_lm(vocab_size=50, max_len=7),
                    tokens) == (2, 7, 50)
  net = resnet.resnet18_gn(num_classes=100)
  assert _out_shape(net, {'x': jnp.zeros((2, 32, 32, 3))}) == (2, 100)
  assert _out_shape(net, {'x': jnp.zeros((2, 24, 24, 3))}) == (2, 100)


def test_argument_errors():
  with pytest.raises(ValueError, match='conv_impl'):
    cnn.emnist_cnn(conv_impl='fft')
  with pytest.raises(ValueError, match='groups'):
    resnet.resnet18_gn(num_classes=10, groups=3)
  with pytest.raises(ValueError, match='heads'):
    transformer.transformer_lm(vocab_size=10, max_len=4, dim=10, heads=4)
  with pytest.raises(ValueError, match='reduction'):
    sequence.sequence_loss(0, reduction='token')
  model = transformer.transformer_lm(vocab_size=10, max_len=4)
  with pytest.raises(ValueError, match='max_len'):
    _out_shape(model, {'x': jnp.zeros((1, 5), jnp.int32)})


# ----------------------------------------------------------------------------
# Convolution as slices + matmul.


@pytest.mark.parametrize('strides,padding', [
    ((1, 1), 'SAME'), ((1, 1), 'VALID'), ((2, 2), 'SAME'), ((2, 1), 'VALID')])
def test_conv_slices_equals_native_conv(strides, padding):
  rng = np.random.default_rng(0)
  x = rng.normal(size=(2, 9, 8, 3)).astype(np.float32)
  kernel = rng.normal(size=(3, 3, 3, 4)).astype(np.float32)
  native = jax.lax.conv_general_dilated(
      x, kernel, strides, padding, dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
  sliced = cnn.conv2d_slices(x, kernel, strides=strides, padding=padding)
  assert sliced.shape == native.shape
  np.testing.assert_allclose(sliced, native, rtol=1e-5, atol=1e-5)


def test_conv_impls_give_the_same_model():
  x = {'x': jax.random.normal(jax.random.key(1), (2, 28, 28))}
  fast = cnn.femnist_cnn(conv_impl='slices')
  native = cnn.femnist_cnn(conv_impl='xla')
  both = jax.jit(lambda key, b: (fast.apply(fast.init(key), b),
                                 native.apply(fast.init(key), b)))
  a, b = both(KEY, x)
  np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


# ----------------------------------------------------------------------------
# Dropout.


def test_dropout_only_when_training():
  model = cnn.emnist_cnn(num_classes=10)
  plain = cnn.emnist_cnn(num_classes=10, dropout=False)
  params = jax.jit(model.init)(KEY)
  x = {'x': jax.random.normal(jax.random.key(1), (2, 28, 28))}
  k1, k2 = jax.random.key(2), jax.random.key(3)

  @jax.jit
  def outputs(params):
    return dict(
        eval1=model.apply(params, x, key=k1),
        eval2=model.apply(params, x, key=k2, train=False),
        train1=model.apply(params, x, key=k1, train=True),
        train1_again=model.apply(params, x, key=k1, train=True),
        train2=model.apply(params, x, key=k2, train=True),
        plain_eval=plain.apply(params, x),
        plain_train=plain.apply(params, x, key=k1, train=True))

  out = jax.tree.map(np.asarray, outputs(params))
  np.testing.assert_array_equal(out['eval1'], out['eval2'])
  np.testing.assert_array_equal(out['train1'], out['train1_again'])
  assert not np.allclose(out['train1'], out['train2'])
  assert not np.allclose(out['train1'], out['eval1'])
  np.testing.assert_array_equal(out['plain_eval'], out['eval1'])
  np.testing.assert_array_equal(out['plain_train'], out['eval1'])


# ----------------------------------------------------------------------------
# Sequence loss and metrics: pad (and excluded ids) never count.

PAD, EOS = 0, 3


def _peak(k, height=LN3, vocab=4):
  """Logits with ``height`` at ``k``: probability 3/6 there if ln 3."""
  row = [0.0] * vocab
  row[k] = height
  return row


# Vocabulary of 4 ids: 0 pad, 1 and 2 words, 3 EOS. With _peak(k) the
# cross entropy is ln 2 for target k and ln 6 for any other target; with
# uniform logits it is ln 4 and the argmax is id 0.
LOGITS = np.array([
    [_peak(1), _peak(3), _peak(1, 100.0)],   # y 1 (right), 2 (wrong), pad
    [_peak(3), [0.0] * 4, _peak(2, 100.0)],  # y EOS (right), EOS (wrong), pad
    [[0.0] * 4, _peak(1), _peak(2)],         # all pad
    [[0.0, 0.0, 1.0, 2.0], [0.0] * 4, [0.0] * 4],  # y 2, pad, pad
], np.float32)
TARGETS = np.array([[1, 2, PAD], [EOS, EOS, PAD], [PAD, PAD, PAD],
                    [2, PAD, PAD]], np.int32)
BATCH = {'y': jnp.asarray(TARGETS)}
# Row 3: target 2 under logits [0, 0, 1, 2]; the argmax (3) is wrong unless
# id 3 may not be predicted.
ROW3_CE = -(1.0 - math.log(2.0 + math.e + math.e**2))


def test_sequence_loss_excludes_pad():
  logits = jnp.asarray(LOGITS)
  mean = sequence.sequence_loss(PAD)(logits, BATCH)
  total = sequence.sequence_loss(PAD, reduction='sum')(logits, BATCH)
  np.testing.assert_allclose(
      mean, [(LN2 + math.log(6)) / 2, (LN2 + math.log(4)) / 2, 0.0, ROW3_CE],
      rtol=1e-6)
  np.testing.assert_allclose(
      total, [math.log(12), math.log(8), 0.0, ROW3_CE], rtol=1e-6)
  # A different pad id: now id 0 is a real target and counts.
  np.testing.assert_allclose(
      sequence.sequence_loss(pad_id=-1, reduction='sum')(logits, BATCH)[2],
      math.log(4) + math.log(6) + math.log(6), rtol=1e-6)


def test_sequence_accuracy_excludes_pad_and_chosen_ids():
  logits = jnp.asarray(LOGITS)
  acc = sequence.sequence_accuracy(PAD)
  np.testing.assert_array_equal(acc(logits, BATCH), [0.5, 0.5, 0.0, 0.0])
  no_eos = sequence.sequence_accuracy(PAD, exclude=(EOS,))
  np.testing.assert_array_equal(no_eos(logits, BATCH), [0.5, 0.0, 0.0, 0.0])
  no_eos_sum = sequence.sequence_accuracy(PAD, exclude=(EOS,),
                                          reduction='sum')
  np.testing.assert_array_equal(no_eos_sum(logits, BATCH), [1, 0, 0, 0])
  np.testing.assert_array_equal(
      sequence.token_count(PAD)(logits, BATCH), [2, 2, 0, 1])
  np.testing.assert_array_equal(
      sequence.token_count(PAD, exclude=(EOS,))(logits, BATCH), [2, 0, 0, 1])
  in_vocab = sequence.sequence_accuracy(PAD, never_predict=(EOS,))
  # Row 0's second token now predicts id 0 (still wrong); row 1's first
  # token can no longer predict EOS; row 3 now predicts id 2 (right).
  np.testing.assert_array_equal(in_vocab(logits, BATCH), [0.5, 0.0, 0.0, 1.0])


def test_sequence_metrics_count_tokens():
  """accuracy and token_loss are Means over tokens; evaluation divides their
  sums (tests/test_evaluate.py)."""
  logits = jnp.asarray(LOGITS)
  metrics = sequence.sequence_metrics(PAD, exclude=(EOS,))
  assert sorted(metrics) == ['accuracy', 'sequence_accuracy', 'token_loss']
  # Accuracy: row 0 1 right of 2; row 1's two EOS and row 2 not counted;
  # row 3 wrong (its argmax is id 3).
  accuracy = metrics['accuracy'](logits, BATCH)
  assert isinstance(accuracy, Mean)
  np.testing.assert_array_equal(accuracy.total, [1, 0, 0, 0])
  np.testing.assert_array_equal(accuracy.count, [2, 0, 0, 1])
  # The loss counts EOS: the sums of test_sequence_loss_excludes_pad.
  token_loss = metrics['token_loss'](logits, BATCH)
  np.testing.assert_allclose(
      token_loss.total, [math.log(12), math.log(8), 0.0, ROW3_CE], rtol=1e-6)
  np.testing.assert_array_equal(token_loss.count, [2, 2, 0, 1])
  # The per-sequence variant: each row's own fraction.
  np.testing.assert_array_equal(
      metrics['sequence_accuracy'](logits, BATCH), [0.5, 0.0, 0.0, 0.0])


# ----------------------------------------------------------------------------
# One gradient step lowers the loss, for each family.


def _step_lowers_loss(model, batch, learning_rate):
  @jax.jit  # init, loss, step and loss again: one compile
  def step(key):
    def loss(p):
      return jnp.mean(model.loss(model.apply(p, batch), batch))
    before, grads = jax.value_and_grad(loss)(model.init(key))
    params = jax.tree.map(lambda p, g: p - learning_rate * g,
                          model.init(key), grads)
    return before, loss(params)

  before, after = step(KEY)
  assert np.isfinite(before) and after < before, (before, after)


def _token_batch(vocab, shape=(2, 6)):
  x = jax.random.randint(jax.random.key(5), shape, 1, vocab)
  y = jnp.concatenate([x[:, 1:], jnp.zeros((shape[0], 1), jnp.int32)], 1)
  return {'x': x, 'y': y}


def test_gradient_step_cnn():
  batch = {'x': jax.random.normal(jax.random.key(4), (4, 28, 28)),
           'y': jnp.array([0, 1, 2, 3])}
  _step_lowers_loss(cnn.emnist_cnn(num_classes=10), batch, 0.05)


def test_gradient_step_lstms():
  _step_lowers_loss(rnn.char_lstm(vocab_size=12, hidden=32),
                    _token_batch(12), 0.5)
  _step_lowers_loss(
      rnn.stackoverflow_lstm(vocab_size=20, embed_dim=8, hidden=16),
      _token_batch(20), 0.5)


def test_gradient_step_resnet():
  # The full ResNet-18; 8x8 inputs keep the compile short (parameters do
  # not depend on the image size).
  batch = {'x': jax.random.normal(jax.random.key(4), (2, 8, 8, 3)),
           'y': jnp.array([1, 2])}
  _step_lowers_loss(resnet.resnet18_gn(num_classes=10, input_shape=(8, 8, 3)),
                    batch, 0.05)


def test_gradient_step_transformer():
  _step_lowers_loss(
      transformer.transformer_lm(vocab_size=20, max_len=6, dim=16, heads=2,
                                 layers=1, mlp_dim=32),
      _token_batch(20), 0.5)


# ----------------------------------------------------------------------------
# Right padding, vmap over stacked per-client params.


def test_right_padding_changes_no_earlier_logits():
  x = jax.random.randint(jax.random.key(6), (2, 6), 1, 20)
  padded = x.at[:, 4:].set(PAD)
  for model in (rnn.char_lstm(vocab_size=20, hidden=16),
                transformer.transformer_lm(vocab_size=20, max_len=6, dim=16,
                                           heads=2, layers=1, mlp_dim=32)):
    both = jax.jit(lambda key, m=model: (m.apply(m.init(key), {'x': x}),
                                         m.apply(m.init(key), {'x': padded})))
    a, b = both(KEY)
    np.testing.assert_allclose(a[:, :4], b[:, :4], rtol=1e-5, atol=1e-6)
    assert not np.allclose(a[:, 4:], b[:, 4:])


def _stack(trees):
  return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def test_vmap_over_stacked_params():
  # CNN: per-client gradients with per-client dropout keys, as the engine
  # vmaps client_update.
  model = cnn.emnist_cnn(num_classes=10)
  init = jax.jit(model.init)
  stacked = _stack([init(jax.random.key(1)), init(jax.random.key(2))])
  batch = {'x': jax.random.normal(jax.random.key(4), (2, 28, 28)),
           'y': jnp.array([3, 4])}

  def loss(params, key):
    logits = model.apply(params, batch, key=key, train=True)
    return jnp.mean(model.loss(logits, batch))

  keys = jax.random.split(jax.random.key(7), 2)
  grads = jax.jit(jax.vmap(jax.grad(loss)))(stacked, keys)
  assert grads['Dense_0']['kernel'].shape == (2, 128, 9216)
  assert not np.allclose(grads['Dense_1']['bias'][0],
                         grads['Dense_1']['bias'][1])

  # LSTM: vmapped apply equals each client's own apply.
  lstm = rnn.char_lstm(vocab_size=12, hidden=16)
  init = jax.jit(lstm.init)
  params = [init(jax.random.key(1)), init(jax.random.key(2))]
  tokens = {'x': _token_batch(12)['x']}
  batched, single = jax.jit(lambda s, p: (
      jax.vmap(lstm.apply, in_axes=(0, None))(s, tokens),
      lstm.apply(p, tokens)))(_stack(params), params[1])
  assert batched.shape == (2, 2, 6, 12)
  np.testing.assert_allclose(batched[1], single, rtol=1e-5, atol=1e-6)
  assert not np.allclose(batched[0], batched[1])


# ----------------------------------------------------------------------------
# The LSTM layer: flax's cell, with the input projection out of the loop.


def test_lstm_layer_equals_flax_optimized_lstm_cell():
  x = jax.random.normal(jax.random.key(1), (2, 5, 3))
  reference = nn.RNN(nn.OptimizedLSTMCell(4))
  cell = reference.init(KEY, x)['params']['cell']
  # Nonzero biases, so their placement is checked too.
  for k, gate in enumerate('ifgo'):
    cell['h' + gate]['bias'] = jax.random.normal(jax.random.key(k), (4,))
  gates = 'ifgo'                                     # flax's and our order
  params = {
      'input': {
          'kernel': jnp.concatenate([cell['i' + g]['kernel'] for g in gates],
                                    axis=1),
          'bias': jnp.concatenate([cell['h' + g]['bias'] for g in gates])},
      'scan': {'recurrent': {'kernel': jnp.concatenate(
          [cell['h' + g]['kernel'] for g in gates], axis=1)}}}
  np.testing.assert_allclose(rnn.LSTM(4).apply({'params': params}, x),
                             reference.apply({'params': {'cell': cell}}, x),
                             rtol=1e-5, atol=1e-6)


def test_lstm_recurrent_kernel_is_orthogonal_per_gate():
  kernel = rnn.LSTM(8).init(KEY, jnp.zeros((1, 2, 3)))['params']['scan'][
      'recurrent']['kernel']
  assert kernel.shape == (8, 32)
  for gate in range(4):
    block = kernel[:, 8 * gate:8 * (gate + 1)]
    np.testing.assert_allclose(block.T @ block, np.eye(8), atol=1e-5)


# ----------------------------------------------------------------------------
# Sent140 classifier and multi-label logistic regression.


def test_sent140_lstm_reads_after_the_last_word():
  model = rnn.sent140_lstm(vocab_size=20, hidden=8, dense=6)
  words = jnp.array([[5, 6, 7, 0, 0], [3, 0, 0, 0, 0]])
  longer = words.at[0, 3].set(9)                      # one more word in row 0
  logits = jax.jit(lambda key: tuple(
      model.apply(model.init(key), {'x': x})
      for x in (words, words[:, :3], longer)))(KEY)
  assert logits[0].shape == (2, 2)
  # Padding after the words changes nothing; another word does.
  np.testing.assert_allclose(logits[0], logits[1], rtol=1e-5, atol=1e-6)
  assert not np.allclose(logits[0][0], logits[2][0])
  np.testing.assert_allclose(logits[0][1], logits[2][1], rtol=1e-5, atol=1e-6)
  _step_lowers_loss(model, {'x': words, 'y': jnp.array([1, 0])}, 0.5)


def test_multilabel_loss_and_metrics_by_hand():
  model = dense.multilabel_logistic_regression(num_features=2, num_labels=6,
                                               top_k=2)
  logits = jnp.array([[3., 2., 1., 0., -1., -2.],
                      [0., 0., 0., 0., 0., 0.]])
  # Row 0: labels 1 and 2 (a count of 2 is one positive). Row 1: label 5.
  batch = {'y': jnp.array([[0., 1., 2., 0., 0., 0.],
                           [0., 0., 0., 0., 0., 1.]])}
  positives = np.array(batch['y'] > 0, np.float32)
  expected = np.mean(np.logaddexp(0.0, np.asarray(logits)) -
                     positives * np.asarray(logits), axis=1)
  np.testing.assert_allclose(model.loss(logits, batch), expected, rtol=1e-6)
  assert sorted(model.metrics) == ['precision', 'recall_at_2']
  recall = model.metrics['recall_at_2'](logits, batch)
  precision = model.metrics['precision'](logits, batch)
  # Top 2 of row 0 are labels 0 and 1: one of its two tags. Row 1 ties at
  # 0: top_k takes the first indices, not label 5. Evaluated, recall@2 is
  # (1 + 0) / (2 + 1) = 1/3.
  assert isinstance(recall, Mean)
  assert recall.total.tolist() == [1.0, 0.0]
  assert recall.count.tolist() == [2.0, 1.0]
  # Predicted (logit > 0): labels 0, 1, 2 in row 0, two of them right; none
  # in row 1. Evaluated, precision is 2/3.
  assert precision.total.tolist() == [2.0, 0.0]
  assert precision.count.tolist() == [3.0, 0.0]


def test_multilabel_argument_errors():
  with pytest.raises(ValueError, match='top_k must be a positive integer, '
                     'got 0'):
    dense.multilabel_logistic_regression(num_features=2, num_labels=3,
                                         top_k=0)
  with pytest.raises(ValueError, match='top_k=5 exceeds num_labels=3'):
    dense.multilabel_logistic_regression(num_features=2, num_labels=3)
