"""Recurrent models: Shakespeare characters, Stack Overflow words, Sent140.

The language models read int token ids ``x [B, T]`` and return next-token
logits at every position, ``[B, T, V]``; targets ``y [B, T]`` are the inputs
shifted by one, right-padded with ``pad_id``. Loss and metrics come from
:mod:`fedjax_engine.models.sequence` (pad excluded; ``accuracy`` is token
accuracy, ``sequence_accuracy`` the per-sequence mean). The Sent140
classifier (:func:`sent140_lstm`) reads word ids and returns class logits
``[B, C]``, one row per sequence.

``vocab_size`` is the full number of ids, special tokens included (it sizes
the embedding and the output layer): for FedJAX's Shakespeare, 86 characters
+ pad, BOS, EOS, OOV = 90; for Stack Overflow, 10,000 words + pad, BOS, EOS
and one OOV bucket = 10,004.

Each LSTM layer is :class:`LSTM`: the equations of flax's
``OptimizedLSTMCell`` (gates i, f, g, o), with the input projection of all
time steps done as one matmul before the ``lax.scan`` over time, so the loop
body holds only the recurrent matmul. On XLA:CPU that made a training step
of the Shakespeare model 1.4-1.7x faster at batch 4 (2-core CPU) than
``nn.RNN(OptimizedLSTMCell)``, which projects the input inside the loop.
``4 * h * (in + h + 1)`` parameters per layer (input kernel with the bias,
recurrent kernel), as in Keras and Haiku. Initialisers are flax's
``OptimizedLSTMCell`` ones (LeCun-normal input kernels, one orthogonal
``h x h`` recurrent kernel per gate, zero biases), not TFF's Keras ones.

Example:

  >>> import jax, jax.numpy as jnp
  >>> model = char_lstm(vocab_size=90)
  >>> # model.init(key) builds the parameters; eval_shape only traces.
  >>> params = jax.eval_shape(model.init, jax.random.key(0))
  >>> sum(p.size for p in jax.tree.leaves(params))
  820522
  >>> batch = {'x': jnp.ones((2, 5), jnp.int32)}
  >>> jax.eval_shape(model.apply, params, batch).shape
  (2, 5, 90)
"""

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from fedjax_engine.model import Model, from_linen
from fedjax_engine.models import sequence


def _orthogonal_per_gate(key, shape, dtype=jnp.float32):
  """``[h, 4h]``: one orthogonal ``[h, h]`` block per gate, as flax's
  ``OptimizedLSTMCell`` initialises its four recurrent kernels (one
  orthogonal ``[h, 4h]`` matrix would leave each gate's block about half
  the gain).
  """
  hidden, gates = shape
  blocks = [nn.initializers.orthogonal()(k, (hidden, hidden), dtype)
            for k in jax.random.split(key, gates // hidden)]
  return jnp.concatenate(blocks, axis=1)


class _LSTMStep(nn.Module):
  """One time step given the input's share of the gates, ``[B, 4h]``."""
  hidden: int

  @nn.compact
  def __call__(self, carry, input_gates):
    c, h = carry
    z = input_gates + nn.Dense(4 * self.hidden, use_bias=False,
                               kernel_init=_orthogonal_per_gate,
                               name='recurrent')(h)
    i, f, g, o = jnp.split(z, 4, axis=-1)
    c = nn.sigmoid(f) * c + nn.sigmoid(i) * jnp.tanh(g)
    h = nn.sigmoid(o) * jnp.tanh(c)
    return (c, h), h


class LSTM(nn.Module):
  """An LSTM layer over ``[B, T, in]`` -> outputs ``[B, T, hidden]``.

  Zero initial state. The input kernel and bias (``input``, ``[in, 4h]``)
  apply to all ``T`` steps in one matmul; the scan over time carries only
  the recurrent kernel (``scan/recurrent``, ``[h, 4h]``, no bias).
  """
  hidden: int

  @nn.compact
  def __call__(self, x):
    input_gates = nn.Dense(4 * self.hidden, name='input')(x)
    steps = nn.scan(_LSTMStep, variable_broadcast='params',
                    split_rngs={'params': False}, in_axes=1, out_axes=1)
    zeros = jnp.zeros(x.shape[:1] + (self.hidden,), input_gates.dtype)
    _, outputs = steps(self.hidden, name='scan')((zeros, zeros), input_gates)
    return outputs


class CharLSTM(nn.Module):
  """Embedding - ``num_layers`` stacked LSTMs - dense per position (or, with
  ``last_only``, at the last position only)."""
  vocab_size: int
  embed_dim: int = 8
  hidden: int = 256
  num_layers: int = 2
  last_only: bool = False

  @nn.compact
  def __call__(self, x):
    h = nn.Embed(self.vocab_size, self.embed_dim)(x)
    for _ in range(self.num_layers):
      h = LSTM(self.hidden)(h)
    if self.last_only:
      h = h[:, -1]
    return nn.Dense(self.vocab_size)(h)


class StackOverflowLSTM(nn.Module):
  """Embedding - LSTM - dense projection to ``embed_dim`` - dense vocab."""
  vocab_size: int
  embed_dim: int = 96
  hidden: int = 670
  num_layers: int = 1

  @nn.compact
  def __call__(self, x):
    h = nn.Embed(self.vocab_size, self.embed_dim)(x)
    for _ in range(self.num_layers):
      h = LSTM(self.hidden)(h)
      h = nn.Dense(self.embed_dim)(h)
    return nn.Dense(self.vocab_size)(h)


class Sent140LSTM(nn.Module):
  """Embedding - ``num_layers`` LSTMs - dense ``dense`` (linear) - dense
  classes, read after each sequence's last non-pad token."""
  vocab_size: int
  num_classes: int = 2
  hidden: int = 100
  num_layers: int = 2
  dense: int = 128
  pad_id: int = 0

  @nn.compact
  def __call__(self, x):
    h = nn.Embed(self.vocab_size, self.hidden)(x)
    for _ in range(self.num_layers):
      h = LSTM(self.hidden)(h)
    # Sequences are right-padded: the output after the last word is the one
    # that has read the whole text and no padding. A one-hot product picks
    # it, as model.integer_cross_entropy does, to keep a scatter-add out of
    # the gradient.
    last = jnp.maximum(jnp.sum(x != self.pad_id, axis=-1) - 1, 0)
    h = jnp.einsum('bt,bth->bh', jax.nn.one_hot(last, x.shape[-1],
                                                dtype=h.dtype), h)
    return nn.Dense(self.num_classes)(nn.Dense(self.dense)(h))


def _sample():
  return {'x': np.zeros((1, 2), np.int32)}


def _sequence_model(module, pad_id, accuracy_exclude, never_predict,
                    loss_reduction):
  return from_linen(
      module, sample_batch=_sample(),
      loss=sequence.sequence_loss(pad_id, reduction=loss_reduction),
      metrics=sequence.sequence_metrics(
          pad_id, exclude=accuracy_exclude, never_predict=never_predict))


def char_lstm(*, vocab_size: int, embed_dim: int = 8, hidden: int = 256,
              num_layers: int = 2, pad_id: int = 0,
              accuracy_exclude: Sequence[int] = (),
              never_predict: Sequence[int] = (),
              loss_reduction: str = 'mean', last_only: bool = False) -> Model:
  """The Shakespeare character LSTM.

  Embedding of 8, two LSTM layers of 256 units, a dense layer to the
  vocabulary at every position: McMahan et al., "Communication-Efficient
  Learning of Deep Networks from Decentralized Data", AISTATS 2017 (the
  Shakespeare model: characters embedded in 8 dimensions, two LSTM layers
  of 256 nodes); Reddi et al., "Adaptive Federated Optimization", ICLR 2021;
  FedJAX ``fedjax/models/shakespeare.py`` (``embed_size=8,
  lstm_hidden_size=256, lstm_num_layers=2``). FedJAX's Haiku version
  applies an extra ``tanh`` to each LSTM's output; this one, like TFF's Keras
  model, does not. FedJAX's training loss is the per-sequence sum of
  non-pad token losses divided by the padded length ``T``, a constant
  multiple of ``loss_reduction='sum'``; the default here is the mean over
  each sequence's own tokens.

  LEAF's Shakespeare task (Caldas et al., 2018, ``models/shakespeare/
  stacked_lstm.py``: the same embedding 8 and two LSTMs of 256) predicts
  only the character after an 80-character window: ``last_only=True``
  returns the last position's logits ``[B, V]`` and uses the plain
  classification loss and accuracy against ``y [B]`` (the pad and accuracy
  options then do not apply; LEAF windows have no padding).

  Parameters: ``V*e + sum_l 4*h*(in_l + h + 1) + (h*V + V)`` with ``in_1 =
  e``, ``in_l = h`` after: for ``V = 90, e = 8, h = 256``: 720 + 271,360 +
  525,312 + 23,130 = 820,522.

  Args:
    vocab_size: number of ids, special tokens included.
    embed_dim, hidden, num_layers: the sizes above.
    pad_id: padding id of the targets, excluded from loss and metrics.
    accuracy_exclude: further target ids left out of accuracy (e.g. EOS, as
      FedJAX's ``accuracy_no_eos``; add OOV for TFF's in-vocabulary accuracy).
    never_predict: ids never predicted by the accuracy's argmax.
    loss_reduction: 'mean' or 'sum' per sequence; see
      :mod:`fedjax_engine.models.sequence`.
    last_only: LEAF's next-character classifier (see above).

  Example:

    >>> import jax, jax.numpy as jnp
    >>> model = char_lstm(vocab_size=90, accuracy_exclude=(2,))  # 2: EOS
    >>> params = jax.eval_shape(model.init, jax.random.key(0))
    >>> batch = {'x': jnp.zeros((3, 80), jnp.int32)}
    >>> jax.eval_shape(model.apply, params, batch).shape
    (3, 80, 90)
    >>> for name in sorted(model.metrics):  # the engine adds 'loss' itself
    ...   print(name)
    accuracy
    sequence_accuracy
    token_loss
  """
  module = CharLSTM(vocab_size=vocab_size, embed_dim=embed_dim, hidden=hidden,
                    num_layers=num_layers, last_only=last_only)
  if last_only:
    return from_linen(module, sample_batch=_sample())
  return _sequence_model(module, pad_id, accuracy_exclude, never_predict,
                         loss_reduction)


def stackoverflow_lstm(*, vocab_size: int, embed_dim: int = 96,
                       hidden: int = 670, num_layers: int = 1,
                       pad_id: int = 0,
                       accuracy_exclude: Sequence[int] = (),
                       never_predict: Sequence[int] = (),
                       loss_reduction: str = 'mean') -> Model:
  """The Stack Overflow next-word LSTM of Reddi et al. (2021).

  Embedding 96 - LSTM 670 - dense 96 (linear projection back to the
  embedding size) - dense ``vocab_size`` (linear): Reddi et al., "Adaptive
  Federated Optimization", ICLR 2021, built by TFF's
  ``create_recurrent_model(vocab_size=10000, num_oov_buckets=1,
  embedding_size=96, latent_size=670, num_layers=1)`` (a Dense(embedding)
  after each LSTM, then Dense(extended vocab), no activations), and FedJAX
  ``fedjax/models/stackoverflow.py`` (same sizes; Haiku adds a ``tanh`` on
  the LSTM output, omitted here as in TFF).

  Parameters: ``V*96 + 4*670*(96 + 670 + 1) + (670*96 + 96) + (96*V + V)``:
  for ``V = 10,004``: 960,384 + 2,055,560 + 64,416 + 970,388 = 4,050,748.

  FedJAX trains this model with the per-sequence *sum* of token losses
  (``loss_reduction='sum'``), TFF with a token-weighted batch mean; the
  default here is the per-sequence mean. For TFF's reported accuracy pass
  ``accuracy_exclude=(eos_id, oov_id)``.

  Args:
    vocab_size: number of ids, special tokens included (10,004).
    embed_dim, hidden, num_layers: the sizes above.
    pad_id, accuracy_exclude, never_predict, loss_reduction: as in
      :func:`char_lstm`.

  Example:

    >>> import jax, jax.numpy as jnp
    >>> model = stackoverflow_lstm(vocab_size=10004)
    >>> params = jax.eval_shape(model.init, jax.random.key(0))
    >>> sum(p.size for p in jax.tree.leaves(params))
    4050748
    >>> batch = {'x': jnp.zeros((2, 20), jnp.int32)}
    >>> jax.eval_shape(model.apply, params, batch).shape
    (2, 20, 10004)
  """
  return _sequence_model(
      StackOverflowLSTM(vocab_size=vocab_size, embed_dim=embed_dim,
                        hidden=hidden, num_layers=num_layers),
      pad_id, accuracy_exclude, never_predict, loss_reduction)


def sent140_lstm(*, vocab_size: int, num_classes: int = 2, hidden: int = 100,
                 num_layers: int = 2, dense: int = 128,
                 pad_id: int = 0) -> Model:
  """LEAF's Sent140 classifier: a stacked LSTM over a tweet's word ids.

  Embedding of ``hidden`` (100), two LSTM layers of 100, a linear dense
  layer of 128 and a dense layer to the classes, softmax cross entropy:
  Caldas et al., "LEAF: A Benchmark for Federated Settings",
  arXiv:1812.01097 (``models/sent140/stacked_lstm.py``, ``MODEL_PARAMS
  'sent140.stacked_lstm'``: sequences of 25 words, 2 classes, 100 hidden).
  Two differences: the embedding is trained from scratch (LEAF's variant
  with a GloVe vocabulary needs files not shipped here), and the classifier
  reads the LSTM's output after the last non-pad word, where LEAF reads the
  last position after its padding. Input ``x`` int ``[B, T]`` word ids,
  right-padded with ``pad_id`` (as :func:`fedjax_engine.datasets.leaf_sent140`
  writes them); output logits ``[B, num_classes]`` against ``y [B]``.

  Parameters: ``V*h + sum_l 4*h*(in_l + h + 1) + (h*128 + 128) +
  (128*C + C)``: for ``V = 10,000, h = 100, C = 2``: 1,000,000 + 160,800 +
  12,928 + 258 = 1,173,986.

  Args:
    vocab_size: number of word ids, pad and unknown included.
    num_classes: sentiment classes (2).
    hidden: embedding and LSTM size.
    num_layers: stacked LSTM layers.
    dense: width of the linear layer before the output.
    pad_id: the padding id that ends a sequence's words.

  Example:

    >>> import jax, jax.numpy as jnp
    >>> model = sent140_lstm(vocab_size=10000)
    >>> params = jax.eval_shape(model.init, jax.random.key(0))
    >>> sum(p.size for p in jax.tree.leaves(params))
    1173986
    >>> batch = {'x': jnp.zeros((3, 25), jnp.int32)}
    >>> jax.eval_shape(model.apply, params, batch).shape
    (3, 2)
  """
  module = Sent140LSTM(vocab_size=vocab_size, num_classes=num_classes,
                       hidden=hidden, num_layers=num_layers, dense=dense,
                       pad_id=pad_id)
  return from_linen(module, sample_batch=_sample())
