"""Per-example loss and metrics for sequence models, padding excluded.

A sequence batch has ``x`` int ``[B, T]`` inputs and ``y`` int ``[B, T]``
targets; the model returns logits ``[B, T, V]``. Target positions equal to
``pad_id`` (0 by the FedJAX/TFF convention) are not tokens: they count in no
loss and no metric. Sequences are right-padded.

**Weighting.** The engine reduces every per-example value the same way:
``sum_i mask_i * f_i / sum_i mask_i``, a mean over *examples* (sequences).
A per-example function cannot see the example mask or the other examples, so
it cannot turn that into a mean over *tokens* by itself. Two reductions are
therefore offered, and neither hides which one you get:

* ``reduction='mean'`` (the default for ``loss`` and ``accuracy``): ``f_i``
  is sequence ``i``'s mean over its counted tokens (0 if it has none). The
  engine's average is then a *per-sequence* mean: every sequence counts once,
  whatever its length.
* ``reduction='sum'``: ``f_i`` is the sum over sequence ``i``'s counted
  tokens. Averaged by the engine this is ``total / num_sequences``.

**Exact token-weighted numbers** (what FedJAX's ``SequenceTokenAccuracy`` and
``SequenceTokenCrossEntropyLoss`` and TFF's ``MaskedCategoricalAccuracy``
report) come from a ratio of two engine averages over the same examples:
``mean_i(sum of correct tokens_i) / mean_i(number of tokens_i)`` =
``total correct / total tokens``, because the example count cancels.
:func:`sequence_metrics` returns such pairs (``<name>_sum``,
``<name>_count``) and :func:`token_weighted` divides them. This holds for the
example-weighted results of evaluation and of client training metrics; the
``*_per_client`` variants of a ``_sum``/``_count`` pair are per-client means
of each part, and their ratio is not a per-client token mean.

**Which tokens count.** The loss counts every non-pad target. Accuracy can
also exclude target ids (``exclude``): FedJAX's Shakespeare and Stack
Overflow models report ``accuracy_no_eos`` with ``masked_target_values=(pad,
eos)`` (``fedjax/models/shakespeare.py``, ``stackoverflow.py``), and TFF's
Stack Overflow baseline (used by Reddi et al., ICLR 2021) reports
``accuracy_without_out_of_vocab_or_end_of_sentence`` with pad, EOS and the
OOV ids masked (``tff.simulation.baselines.stackoverflow``; BOS never occurs
as a target). ``never_predict`` removes ids from the argmax, as FedJAX's
``accuracy_in_vocab`` does with its logits mask over pad, BOS, EOS and OOV.

Example:

  >>> import jax.numpy as jnp
  >>> logits = jnp.array([[[0., 5.], [5., 0.], [0., 5.]]])   # predicts 1, 0, 1
  >>> batch = {'y': jnp.array([[1, 1, 0]])}                  # last one is pad
  >>> sequence_accuracy(0)(logits, batch)                     # 1 of 2 tokens
  Array([0.5], dtype=float32)
  >>> sequence_accuracy(0, reduction='sum')(logits, batch)
  Array([1.], dtype=float32)
  >>> token_count(0)(logits, batch)
  Array([2.], dtype=float32)
"""

from typing import Callable, Mapping, Sequence

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
  """Per-example next-token accuracy over counted targets.

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
  """The metrics of a sequence model, per sequence and token-weighted.

  Returns a dict of per-example metrics:

  * ``accuracy``: per-sequence accuracy (``reduction='mean'``).
  * ``token_loss_sum`` / ``token_loss_count``: summed cross entropy and number
    of non-pad tokens.
  * ``token_accuracy_sum`` / ``token_accuracy_count``: number correct and
    number counted (pad and ``exclude`` left out).

  The loss is the model's own ``loss``. Feed the engine's results to
  :func:`token_weighted` to get ``token_loss`` and ``token_accuracy``, the
  exact means over tokens.
  """
  return {
      'accuracy': sequence_accuracy(pad_id, exclude=exclude,
                                    never_predict=never_predict),
      'token_loss_sum': sequence_loss(pad_id, reduction='sum'),
      'token_loss_count': token_count(pad_id),
      'token_accuracy_sum': sequence_accuracy(
          pad_id, exclude=exclude, never_predict=never_predict,
          reduction='sum'),
      'token_accuracy_count': token_count(pad_id, exclude=exclude),
  }


def token_weighted(results: Mapping[str, float]) -> dict:
  """Adds ``<name> = <name>_sum / <name>_count`` for every such pair.

  ``results`` are example-weighted averages from the engine (evaluation or
  client training metrics), so the ratio is the exact mean over tokens.
  ``*_per_client`` entries are left alone (their ratio is not a per-client
  token mean). A pair with a zero count gives 0.

  Example:

    >>> results = {'token_accuracy_sum': 1.5, 'token_accuracy_count': 6.0,
    ...            'accuracy': 0.3}
    >>> token_weighted(results)['token_accuracy']
    0.25
  """
  out = dict(results)
  for key, total in results.items():
    if not key.endswith('_sum'):
      continue
    name = key[:-len('_sum')]
    count = results.get(f'{name}_count')
    if count is None:
      continue
    count = float(count)
    out[name] = float(total) / count if count > 0 else 0.0
  return out
