"""A small causal decoder-only transformer language model.

Token ids ``x [B, T]`` (``T <= max_len``) -> next-token logits ``[B, T, V]``,
trained and evaluated like the LSTMs with the pad-excluding loss and metrics
of :mod:`fedjax_engine.models.sequence`.

Architecture: GPT-style pre-LayerNorm decoder (Radford et al., "Language
Models are Unsupervised Multitask Learners", 2019, Sec. 2.3: layer norm at
the input of each sub-block and after the last block; the block itself is
Vaswani et al., "Attention Is All You Need", NeurIPS 2017). Token embedding
plus learned position embedding; ``layers`` blocks of ``x + Attn(LN(x))``
(causal multi-head self-attention, ``heads`` heads of ``dim / heads``) and
``x + MLP(LN(x))`` (dense ``mlp_dim`` - GELU - dense ``dim``); final
LayerNorm; an untied dense output layer with bias. Dropout (``dropout``) on
the embeddings, the attention probabilities and each residual branch,
active only with ``train=True``.

Sequences are right-padded: with the causal mask a real position never
attends to a later (pad) position, so pads change no real position's
logits and need no attention mask of their own.

Parameters: ``V*d + L*d`` (embeddings) + per layer ``4*(d*d + d)``
(q, k, v, out) + ``(d*m + m) + (m*d + d)`` (MLP) + ``2*2*d`` (two
LayerNorms), + ``2*d`` (final LayerNorm) + ``d*V + V`` (output). With
``d = 128, heads = 4, m = 512, 2 layers, V = 100, L = 64``: 12,800 + 8,192
+ 2 * 198,272 + 256 + 12,900 = 430,692.

Example:

  >>> import jax, jax.numpy as jnp
  >>> model = transformer_lm(vocab_size=100, max_len=64)
  >>> # model.init(key) builds the parameters; eval_shape only traces.
  >>> params = jax.eval_shape(model.init, jax.random.key(0))
  >>> sum(p.size for p in jax.tree.leaves(params))
  430692
  >>> batch = {'x': jnp.ones((2, 10), jnp.int32)}
  >>> jax.eval_shape(model.apply, params, batch).shape
  (2, 10, 100)
"""

from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from fedjax_engine.model import Model, from_linen
from fedjax_engine.models import sequence


class DecoderBlock(nn.Module):
  """Pre-LN causal self-attention block and MLP block."""
  dim: int
  heads: int
  mlp_dim: int
  dropout: float = 0.0

  @nn.compact
  def __call__(self, x, mask, train: bool = False):
    drop = lambda: nn.Dropout(self.dropout, deterministic=not train)
    h = nn.MultiHeadDotProductAttention(
        num_heads=self.heads, dropout_rate=self.dropout,
        deterministic=not train)(nn.LayerNorm()(x), mask=mask)
    x = x + drop()(h)
    h = nn.Dense(self.mlp_dim)(nn.LayerNorm()(x))
    h = nn.Dense(self.dim)(nn.gelu(h))
    return x + drop()(h)


class TransformerLM(nn.Module):
  """Causal decoder-only LM; see the module docstring."""
  vocab_size: int
  max_len: int
  dim: int = 128
  heads: int = 4
  layers: int = 2
  mlp_dim: int = 512
  dropout: float = 0.0

  @nn.compact
  def __call__(self, x, train: bool = False):
    length = x.shape[1]
    if length > self.max_len:
      raise ValueError(f'sequence length {length} exceeds max_len '
                       f'{self.max_len}.')
    tokens = nn.Embed(self.vocab_size, self.dim, name='token_embed')(x)
    positions = self.param('position_embed', nn.initializers.normal(0.02),
                           (self.max_len, self.dim), jnp.float32)
    h = tokens + positions[None, :length]
    h = nn.Dropout(self.dropout, deterministic=not train)(h)
    mask = nn.make_causal_mask(x)
    for _ in range(self.layers):
      h = DecoderBlock(self.dim, self.heads, self.mlp_dim,
                       self.dropout)(h, mask, train)
    return nn.Dense(self.vocab_size)(nn.LayerNorm()(h))


def transformer_lm(*, vocab_size: int, max_len: int, dim: int = 128,
                   heads: int = 4, layers: int = 2, mlp_dim: int = 512,
                   dropout: float = 0.0, pad_id: int = 0,
                   accuracy_exclude: Sequence[int] = (),
                   never_predict: Sequence[int] = (),
                   loss_reduction: str = 'mean') -> Model:
  """A small causal transformer LM with per-position logits.

  Args:
    vocab_size: number of ids, special tokens included.
    max_len: longest sequence (size of the learned position table).
    dim, heads, layers, mlp_dim: model width, attention heads (must divide
      ``dim``), blocks, MLP width.
    dropout: dropout rate (0 disables it).
    pad_id, accuracy_exclude, never_predict, loss_reduction: as in
      :func:`fedjax_engine.models.rnn.char_lstm`.

  Example:

    >>> import jax, jax.numpy as jnp
    >>> model = transformer_lm(vocab_size=20, max_len=8, dim=16, heads=2,
    ...                        layers=1, mlp_dim=32, dropout=0.1)
    >>> params = jax.eval_shape(model.init, jax.random.key(0))
    >>> batch = {'x': jnp.ones((2, 8), jnp.int32)}
    >>> logits = jax.eval_shape(lambda p, b: model.apply(
    ...     p, b, key=jax.random.key(1), train=True), params, batch)
    >>> logits.shape
    (2, 8, 20)
  """
  if dim % heads:
    raise ValueError(f'heads ({heads}) must divide dim ({dim}).')
  module = TransformerLM(vocab_size=vocab_size, max_len=max_len, dim=dim,
                         heads=heads, layers=layers, mlp_dim=mlp_dim,
                         dropout=dropout)
  return from_linen(
      module, sample_batch={'x': np.zeros((1, max_len), np.int32)},
      loss=sequence.sequence_loss(pad_id, reduction=loss_reduction),
      metrics=sequence.sequence_metrics(
          pad_id, exclude=accuracy_exclude, never_predict=never_predict))
