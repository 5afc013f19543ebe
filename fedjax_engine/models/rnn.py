"""Recurrent language models: Shakespeare characters, Stack Overflow words.

Both read int token ids ``x [B, T]`` and return next-token logits at every
position, ``[B, T, V]``; targets ``y [B, T]`` are the inputs shifted by one,
right-padded with ``pad_id``. Loss and metrics come from
:mod:`fedjax_engine.models.sequence` (pad excluded; see there for how the
engine's per-example averages relate to per-token numbers).

``vocab_size`` is the full number of ids, special tokens included (it sizes
the embedding and the output layer): for FedJAX's Shakespeare, 86 characters
+ pad, BOS, EOS, OOV = 90; for Stack Overflow, 10,000 words + pad, BOS, EOS
and one OOV bucket = 10,004.

The LSTMs are ``flax.linen.RNN(OptimizedLSTMCell)``, a ``lax.scan`` over
time: ``4 * h * (in + h + 1)`` parameters per layer (input kernels, recurrent
kernels, one bias), as in Keras and Haiku. Initialisers are flax's defaults
(LeCun-normal input kernels, orthogonal recurrent kernels, zero biases),
not TFF's Keras ones.

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
import jax.numpy as jnp

from fedjax_engine.model import Model, from_linen
from fedjax_engine.models import sequence


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
      h = nn.RNN(nn.OptimizedLSTMCell(self.hidden))(h)
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
      h = nn.RNN(nn.OptimizedLSTMCell(self.hidden))(h)
      h = nn.Dense(self.embed_dim)(h)
    return nn.Dense(self.vocab_size)(h)


def _sample():
  return {'x': jnp.zeros((1, 2), jnp.int32)}


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
    token_accuracy_count
    token_accuracy_sum
    token_loss_count
    token_loss_sum
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
