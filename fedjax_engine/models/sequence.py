"""Per-example loss and metrics for sequence models, padding excluded.

A sequence batch has ``x`` int ``[B, T]`` inputs and ``y`` int ``[B, T]``
targets; the model returns logits ``[B, T, V]``. Target positions equal to
``pad_id`` (0 by the FedJAX/TFF convention) are not tokens: they count in no
loss and no metric. Sequences are right-padded.

**Weighting.** Evaluation averages a per-example metric over examples, here
sequences. A metric that returns a :class:`~fedjax_engine.model.Mean` carries
its own count, and evaluation divides the sum of its totals by the sum of its
counts. :func:`sequence_metrics` returns ``accuracy`` as ``Mean(correct
tokens, counted tokens)`` of each sequence, so the reported ``accuracy`` is
total correct over total counted tokens: the token accuracy of FedJAX's
``SequenceTokenAccuracy`` and TFF's ``MaskedCategoricalAccuracy``, the number
papers report. ``token_loss`` is the mean cross entropy per token the same
way (FedJAX's ``SequenceTokenCrossEntropyLoss``). ``accuracy_per_client`` is
each client's own token accuracy, averaged over the clients that have a
counted token. ``sequence_accuracy`` is the per-sequence variant: each
sequence's fraction correct, averaged over sequences, so a sequence of one
token weighs as much as one of eighty.

The training loss stays per sequence: :func:`sequence_loss` with
``reduction='mean'`` (the default) is each sequence's mean over its tokens,
so training, and the ``loss`` evaluation reports, weigh every sequence once;
``reduction='sum'`` is each sequence's sum, which averaged over sequences is
``total / num_sequences`` (FedJAX's training loss up to a constant factor).

**Which tokens count.** The loss counts every non-pad target. Accuracy can
also exclude target ids (``exclude``): FedJAX's Shakespeare and Stack
Overflow models report ``accuracy_no_eos`` with ``masked_target_values=(pad,
eos)`` (``fedjax/models/shakespeare.py``, ``stackoverflow.py``), and TFF's
Stack Overflow baseline (used by Reddi et al., ICLR 2021) reports
``accuracy_without_out_of_vocab_or_end_of_sentence`` with pad, EOS and the
OOV ids masked (``tff.simulation.baselines.stackoverflow``; BOS never occurs
as a target). ``never_predict`` removes ids from the argmax, as FedJAX's
``accuracy_in_vocab`` does with its logits mask over pad, BOS, EOS and OOV.

Example: two sequences, one right of two tokens and one right of one.

  >>> import jax.numpy as jnp
  >>> logits = jnp.array([[[0., 5.], [5., 0.], [0., 5.]],    # predicts 1, 0, 1
  ...                     [[0., 5.], [0., 5.], [0., 5.]]])   # predicts 1, 1, 1
  >>> batch = {'y': jnp.array([[1, 1, 0], [1, 0, 0]])}       # 0 is pad
  >>> metrics = sequence_metrics(0)
  >>> correct, counted = metrics['accuracy'](logits, batch)   # a Mean
  >>> correct, counted
  (Array([1., 1.], dtype=float32), Array([2., 1.], dtype=float32))
  >>> metrics['sequence_accuracy'](logits, batch)
  Array([0.5, 1. ], dtype=float32)

  Evaluated on these two, ``accuracy`` is (1 + 1) / (2 + 1) = 2/3, and
  ``sequence_accuracy`` (0.5 + 1) / 2 = 0.75.
"""

from typing import Callable, Sequence

import jax.numpy as jnp

from fedjax_engine import model as model_lib

REDUCTIONS = ('mean', 'sum')


def _check_reduction(reduction):
  if reduction not in REDUCTIONS:
    raise ValueError(f'reduction must be one of {REDUCTIONS}, got '
                     f'{reduction!r}.')


def _counted(targets, pad_id, exclude=()):
  """Float ``[B, T]``: 1 where the target is a counted token."""
  keep = targets != pad_id
  for token in exclude:
    keep = keep & (targets != token)
  return keep.astype(jnp.float32)


def _reduce(values, weights, reduction):
  total = jnp.sum(values * weights, axis=-1)
  if reduction == 'sum':
    return total
  return total / jnp.maximum(jnp.sum(weights, axis=-1), 1.0)


def token_cross_entropy(logits, targets):
  """``[B, T]`` cross entropy of each position against integer targets."""
  return model_lib.integer_cross_entropy(logits, targets)


def sequence_loss(pad_id: int = 0, *, reduction: str = 'mean') -> Callable:
  """Per-example token cross entropy, pad excluded.

  Args:
    pad_id: the padding target id.
    reduction: 'mean' (per-sequence mean over non-pad tokens, 0 for a
      sequence without any) or 'sum' (per-sequence sum). See the module
      docstring for what the engine's average over examples then means.

  Returns:
    ``loss(logits [B, T, V], batch) -> [B]``.
  """
  _check_reduction(reduction)

  def loss(logits, batch):
    targets = batch['y']
    return _reduce(token_cross_entropy(logits, targets),
                   _counted(targets, pad_id), reduction)

  return loss


def sequence_accuracy(pad_id: int = 0, *, exclude: Sequence[int] = (),
                      never_predict: Sequence[int] = (),
                      reduction: str = 'mean') -> Callable:
  """Per-sequence next-token accuracy over counted targets.

  Each sequence's own fraction (or number) correct. Averaged over sequences
  this is the per-sequence accuracy; the token accuracy papers report is
  ``accuracy`` of :func:`sequence_metrics`.

  Args:
    pad_id: the padding target id, never counted.
    exclude: more target ids not counted (e.g. EOS and OOV).
    never_predict: ids removed from the prediction (their logits are set to
      -inf before the argmax), so predicting them is impossible.
    reduction: 'mean' (fraction correct per sequence, 0 without counted
      tokens) or 'sum' (number correct per sequence).

  Returns:
    ``accuracy(logits [B, T, V], batch) -> [B]``.
  """
  _check_reduction(reduction)
  exclude, never_predict = tuple(exclude), tuple(never_predict)

  def accuracy(logits, batch):
    targets = batch['y']
    if never_predict:
      banned = jnp.zeros((logits.shape[-1],), bool)
      banned = banned.at[jnp.asarray(never_predict)].set(True)
      logits = jnp.where(banned.reshape((1, 1, -1)), -jnp.inf, logits)
    correct = (jnp.argmax(logits, axis=-1) == targets).astype(jnp.float32)
    return _reduce(correct, _counted(targets, pad_id, exclude), reduction)

  return accuracy


def token_count(pad_id: int = 0, *, exclude: Sequence[int] = ()) -> Callable:
  """Per-example number of counted target tokens, as float32 ``[B]``."""
  exclude = tuple(exclude)

  def count(logits, batch):
    del logits
    return jnp.sum(_counted(batch['y'], pad_id, exclude), axis=-1)

  return count


def sequence_metrics(pad_id: int = 0, *, exclude: Sequence[int] = (),
                     never_predict: Sequence[int] = ()) -> dict:
  """The metrics of a sequence model: token means and the per-sequence one.

  Args:
    pad_id: the padding target id, never counted.
    exclude: more target ids not counted by the accuracies.
    never_predict: ids the accuracies' argmax never picks.

  Returns:
    A dict of metrics ``fn(logits [B, T, V], batch)``:

    * ``accuracy``: token accuracy, ``Mean(correct tokens, counted
      tokens)`` per sequence (pad and ``exclude`` not counted), which
      evaluation reports as total correct / total counted.
    * ``token_loss``: ``Mean(summed cross entropy, non-pad tokens)`` per
      sequence, reported as the mean cross entropy per token.
    * ``sequence_accuracy``: the per-sequence variant, each sequence's
      fraction correct ``[B]``, reported as its mean over sequences.

    The loss is the model's own ``loss`` (:func:`sequence_loss`).
  """
  correct = sequence_accuracy(pad_id, exclude=exclude,
                              never_predict=never_predict, reduction='sum')
  counted = token_count(pad_id, exclude=exclude)
  summed_loss = sequence_loss(pad_id, reduction='sum')
  tokens = token_count(pad_id)

  def accuracy(logits, batch):
    return model_lib.Mean(correct(logits, batch), counted(logits, batch))

  def token_loss(logits, batch):
    return model_lib.Mean(summed_loss(logits, batch), tokens(logits, batch))

  return {
      'accuracy': accuracy,
      'token_loss': token_loss,
      'sequence_accuracy': sequence_accuracy(pad_id, exclude=exclude,
                                             never_predict=never_predict),
  }
