"""The Model contract: pure init/apply with per-example loss and metrics.

A batch is a dict of arrays with a leading example axis, ``{'x': ..., 'y': ...}``
for supervised data. Losses and metrics are *per example*; the engine applies
the example mask and the reductions, so padding never leaks into a result.

Example:

  >>> import jax, flax.linen as nn
  >>> model = from_linen(nn.Dense(3), sample_batch={'x': jax.numpy.zeros((1, 4))})
  >>> params = model.init(jax.random.key(0))
  >>> model.apply(params, {'x': jax.numpy.ones((2, 4))}).shape
  (2, 3)
"""

import inspect
from typing import Any, Callable, Mapping, NamedTuple

import jax
import jax.numpy as jnp

Array = Any
Params = Any
Batch = Mapping[str, Array]


class Mean(NamedTuple):
  """A value as (sum, count), so it adds across examples, steps, clients and
  devices; it reads as ``total / count``.

  Client metrics of an algorithm are ``{name: Mean}``. A model's metric may
  also return a ``Mean`` of per-example arrays, for a metric whose unit is
  not the example: a sequence's correct tokens over its counted tokens, an
  example's recalled labels over its positive labels. Evaluation then
  reports the ratio of the sums, which is what papers call token accuracy
  or micro-averaged recall.

  Example (two clients' losses add up before the division):

    >>> import jax
    >>> first, second = Mean(total=3.0, count=2.0), Mean(total=1.0, count=2.0)
    >>> both = jax.tree.map(lambda a, b: a + b, first, second)
    >>> both.total / both.count
    1.0
  """
  total: Array
  count: Array


class Model(NamedTuple):
  """A model as pure functions.

  Attributes:
    init: ``init(key) -> params``.
    apply: ``apply(params, batch, *, key=None, train=False) -> outputs``;
      ``key`` feeds dropout and other training-time randomness.
    loss: ``loss(outputs, batch) -> [batch]`` per-example loss.
    metrics: name -> ``fn(outputs, batch)``, a per-example metric ``[batch]``
      averaged over examples (and over clients) by evaluation, or a
      :class:`Mean` of two ``[batch]`` arrays whose sums evaluation divides
      (a mean over tokens, labels, ...).

  Example (a linear classifier written by hand):

    >>> import jax, jax.numpy as jnp
    >>> model = Model(
    ...     init=lambda key: {'w': jax.random.normal(key, (4, 3))},
    ...     apply=lambda params, batch, key=None, train=False: (
    ...         batch['x'] @ params['w']),
    ...     loss=softmax_cross_entropy, metrics={'accuracy': accuracy})
    >>> logits = model.apply(model.init(jax.random.key(0)),
    ...                      {'x': jnp.ones((2, 4))})
    >>> model.loss(logits, {'y': jnp.array([0, 2])}).shape
    (2,)
  """
  init: Callable[[Array], Params]
  apply: Callable[..., Array]
  loss: Callable[[Array, Batch], Array]
  metrics: Mapping[str, Callable[[Array, Batch], Array]]


def integer_cross_entropy(logits, labels):
  """Cross entropy of ``logits [..., K]`` against integer ``labels [...]``.

  Picks the label's log-probability with a one-hot product rather than
  ``take_along_axis``: under ``grad`` the latter becomes a scatter-add, which
  XLA:CPU runs several times slower than the fused elementwise product.
  """
  log_probs = jax.nn.log_softmax(logits, axis=-1)
  one_hot = jax.nn.one_hot(labels, logits.shape[-1], dtype=log_probs.dtype)
  return -jnp.sum(one_hot * log_probs, axis=-1)


def softmax_cross_entropy(logits, batch: Batch):
  """Per-example cross entropy against integer labels ``batch['y']``.

  Example (equal logits over 3 classes: log 3 for every example):

    >>> import jax.numpy as jnp
    >>> logits, batch = jnp.zeros((2, 3)), {'y': jnp.array([0, 2])}
    >>> [round(x, 4) for x in softmax_cross_entropy(logits, batch).tolist()]
    [1.0986, 1.0986]
  """
  return integer_cross_entropy(logits, batch['y'])


def accuracy(logits, batch: Batch):
  """Per-example 0/1 accuracy against integer labels ``batch['y']``.

  Example:

    >>> import jax.numpy as jnp
    >>> logits = jnp.array([[2., 1.], [0., 3.]])
    >>> accuracy(logits, {'y': jnp.array([0, 0])}).tolist()
    [1.0, 0.0]
  """
  return (jnp.argmax(logits, axis=-1) == batch['y']).astype(jnp.float32)


CLASSIFICATION_METRICS = {'loss': softmax_cross_entropy, 'accuracy': accuracy}


def from_linen(module, *, sample_batch: Batch, input_key: str = 'x',
               loss=softmax_cross_entropy,
               metrics: Mapping[str, Callable] | None = None) -> Model:
  """Wraps a flax linen module as a :class:`Model`.

  The module is called on ``batch[input_key]``. If its ``__call__`` takes a
  ``train`` argument, it is passed, and ``key`` becomes the ``'dropout'`` rng.

  Args:
    module: a ``flax.linen.Module`` holding only ``params`` (no batch
      statistics: client-side normalisation state has no federated meaning;
      use group or layer norm).
    sample_batch: a batch used to shape the parameters at ``init``.
    input_key: the batch entry the module consumes.
    loss: per-example loss ``loss(outputs, batch)``.
    metrics: per-example metrics; defaults to loss and accuracy.
  """
  takes_train = 'train' in inspect.signature(module.__call__).parameters

  def call_kwargs(train):
    return {'train': train} if takes_train else {}

  # Jitted: run op by op, flax's initialisers compile one small XLA program
  # per operation and shape, and each holds over 1 MB of host memory for
  # the life of the process (the EMNIST CNN: 160 MB, against 50 MB jitted).
  @jax.jit
  def init(key):
    variables = module.init(key, sample_batch[input_key], **call_kwargs(False))
    extra = sorted(set(variables) - {'params'})
    if extra:
      raise ValueError(
          f'{type(module).__name__} has variable collections {extra} besides '
          "'params'; only stateless modules are supported (use GroupNorm or "
          'LayerNorm instead of BatchNorm).')
    return variables['params']

  def apply(params, batch, *, key=None, train=False):
    rngs = {'dropout': key} if key is not None else None
    return module.apply({'params': params}, batch[input_key], rngs=rngs,
                        **call_kwargs(train))

  return Model(init, apply, loss, dict(metrics or CLASSIFICATION_METRICS))


def from_nnx(make_module: Callable, *, input_key: str = 'x',
             loss=softmax_cross_entropy,
             metrics: Mapping[str, Callable] | None = None) -> Model:
  """Wraps a flax nnx module as a :class:`Model`.

  nnx modules are stateful objects; crossing into ``vmap``/``jit`` uses the
  functional API (``nnx.split``/``nnx.merge``), so params travel as a pytree.

  Args:
    make_module: ``make_module(rngs: nnx.Rngs) -> nnx.Module``.
    input_key, loss, metrics: as in :func:`from_linen`.

  Example:

    >>> import jax, jax.numpy as jnp
    >>> from flax import nnx
    >>> model = from_nnx(lambda rngs: nnx.Linear(4, 3, rngs=rngs))
    >>> params = model.init(jax.random.key(0))
    >>> model.apply(params, {'x': jnp.ones((2, 4))}).shape
    (2, 3)
  """
  from flax import nnx  # pylint: disable=g-import-not-at-top

  abstract = jax.eval_shape(lambda: make_module(nnx.Rngs(0)))
  graphdef, _, rest = nnx.split(abstract, nnx.Param, ...)
  if jax.tree.leaves(rest):
    raise ValueError(
        f'{type(abstract).__name__} holds state besides nnx.Param '
        f'({sorted(str(p) for p, _ in nnx.to_flat_state(rest))[:3]}); only '
        'parameter-only modules are supported (use GroupNorm or LayerNorm '
        'instead of BatchNorm).')

  @jax.jit   # one program, not one per operation: see from_linen
  def init(key):
    _, params = nnx.split(make_module(nnx.Rngs(key)), nnx.Param)
    return params

  def apply(params, batch, *, key=None, train=False):
    del key, train  # parameter-only modules carry no dropout rng state
    module = nnx.merge(graphdef, params)
    return module(batch[input_key])

  return Model(init, apply, loss, dict(metrics or CLASSIFICATION_METRICS))
