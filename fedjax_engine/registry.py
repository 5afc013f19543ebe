"""Names for algorithms, datasets, models and optimizers, and plug-ins.

Anything the CLI takes by name can also be given as ``"package.module:attr"``,
which is imported, so a lab's own method runs without touching this package:
``--algorithm=my_lab.my_method:build``.

* An algorithm factory is called as ``factory(model, **hyperparameters)``;
  the CLI passes ``client_optimizer`` and ``server_optimizer`` (built from
  its optimizer flags) only to factories that take them, and every other
  keyword-only parameter becomes a flag of its own (:func:`hyperparameters`):
  ``--algorithm=fedprox --mu=0.1``, or ``--algorithm=my_lab.method:build
  --my_param=3`` for a plug-in.
* A dataset entry is a :class:`DatasetEntry`; its ``load(**options)`` returns
  ``(train, test)`` FederatedData.
* A model factory is called as ``factory(*, input_shape, num_classes)``.

Example:

  >>> import fedjax_engine as fe
  >>> resolve(ALGORITHMS, 'fedavg', kind='algorithm') is fe.algorithms.fedavg
  True
  >>> resolve(ALGORITHMS, 'fedprox2', kind='algorithm')
  Traceback (most recent call last):
  ...
  ValueError: unknown algorithm 'fedprox2'; known: afl, apfl, ditto, fedadagrad, fedadam, fedavg, fedavgm, fedbuff, feddyn, fednova, fedprox, fedrep, fedsgd, fedyogi, hypcluster, mime, mimelite, perfedavg, qffl, scaffold, or a plug-in as 'package.module:attribute'.
"""

import functools
import importlib
import inspect
import math
from typing import Any, Callable, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import optax

from fedjax_engine import algorithms
from fedjax_engine import datasets
from fedjax_engine import models


class DatasetEntry(NamedTuple):
  """A dataset by name.

  ``load(**options)`` returns ``(train, test)`` FederatedData, or for a
  centralized dataset a :class:`fedjax_engine.datasets.Centralized` that the
  CLI splits into clients with a partitioner.
  """
  load: Callable[..., Any]
  num_classes: int
  centralized: bool = False


ALGORITHMS: Mapping[str, Callable] = {
    'afl': algorithms.afl,
    'apfl': algorithms.apfl,
    'ditto': algorithms.ditto,
    'fedavg': algorithms.fedavg,
    'fedavgm': algorithms.fedavg,
    'fedadam': algorithms.fedavg,
    'fedyogi': algorithms.fedavg,
    'fedadagrad': algorithms.fedavg,
    'fedbuff': algorithms.fedbuff,
    'feddyn': algorithms.feddyn,
    'fednova': algorithms.fednova,
    'fedprox': algorithms.fedprox,
    'fedrep': algorithms.fedrep,
    'fedsgd': algorithms.fedsgd,
    'hypcluster': algorithms.hypcluster,
    'mime': algorithms.mime,
    'mimelite': algorithms.mimelite,
    'perfedavg': algorithms.perfedavg,
    'qffl': algorithms.qffl,
    'scaffold': algorithms.scaffold,
}

# FedAvgM, FedAdam, FedYogi and FedAdagrad are FedAvg with another server
# optimizer (Reddi et al., "Adaptive Federated Optimization", ICLR 2021):
# their names set these optimizer flags unless the command line does. The
# learning rates are within the ranges the paper's grids found best (server
# lr 10^-2 to 10^-1.5 for adaptive methods on most tasks; Hsu et al. 2019
# use server momentum 0.9).
SERVER_DEFAULTS: Mapping[str, Mapping[str, Any]] = {
    'fedavgm': {'server_optimizer': 'sgd', 'server_momentum': 0.9},
    'fedadam': {'server_optimizer': 'adam', 'server_lr': 0.01},
    'fedyogi': {'server_optimizer': 'yogi', 'server_lr': 0.01},
    'fedadagrad': {'server_optimizer': 'adagrad', 'server_lr': 0.1},
}

# Hyperparameters the CLI builds from its own flags rather than taking one
# flag each.
OPTIMIZER_ARGUMENTS = ('client_optimizer', 'server_optimizer')


class Hyperparameter(NamedTuple):
  """A keyword-only parameter of an algorithm factory, as the CLI sees it."""
  name: str
  type: type          # bool, int, float or str
  default: Any        # None when the factory has no default
  help: str


def _arg_docs(factory) -> dict:
  """``name -> text`` from the ``Args:`` section of a Google docstring."""
  docs, current, in_args = {}, None, False
  for line in (inspect.getdoc(factory) or '').splitlines():
    stripped = line.strip()
    if stripped == 'Args:':
      in_args = True
      continue
    if in_args and stripped and not line.startswith(' '):
      break   # the next section
    indent = len(line) - len(line.lstrip())
    if in_args and indent == 2 and ':' in stripped:
      current, _, text = stripped.partition(':')
      docs[current] = text.strip()
    elif in_args and current and stripped:
      docs[current] += ' ' + stripped
  return docs


def hyperparameters(factory) -> list[Hyperparameter]:
  """The keyword-only parameters of ``factory`` that the CLI makes flags.

  The type comes from the default value, else from a bool/int/float/str
  annotation; a parameter of another type cannot be set from the command
  line and raises ``ValueError`` unless it has a default.
  """
  docs = _arg_docs(factory)
  simple = {t.__name__: t for t in (bool, int, float, str)}
  out = []
  for p in inspect.signature(factory).parameters.values():
    if p.kind != p.KEYWORD_ONLY or p.name in OPTIMIZER_ARGUMENTS:
      continue
    default = None if p.default is p.empty else p.default
    # The annotation first (``mu: float = 1`` takes 0.5), as a type or, under
    # ``from __future__ import annotations``, as its name.
    annotation = p.annotation if isinstance(p.annotation, str) else getattr(
        p.annotation, '__name__', None)
    kind = simple.get(annotation, type(default))
    if kind not in simple.values():
      if p.default is not p.empty:
        continue   # settable from Python only
      raise ValueError(
          f'hyperparameter {p.name!r} of {factory.__name__} has no default '
          'and no bool, int, float or str annotation, so no flag can set it.')
    out.append(Hyperparameter(p.name, kind, default,
                              docs.get(p.name, f'{factory.__name__}: {p.name}')))
  return out

DATASETS: Mapping[str, DatasetEntry] = {
    'synthetic': DatasetEntry(datasets.synthetic, num_classes=10),
    'emnist': DatasetEntry(datasets.emnist, num_classes=62),
    'emnist_digits': DatasetEntry(
        functools.partial(datasets.emnist, only_digits=True), num_classes=10),
    'leaf_femnist': DatasetEntry(datasets.leaf_femnist, num_classes=62),
    'leaf_shakespeare': DatasetEntry(datasets.leaf_shakespeare,
                                     num_classes=90),
    'leaf_sent140': DatasetEntry(datasets.leaf_sent140, num_classes=2),
    'shakespeare': DatasetEntry(datasets.shakespeare, num_classes=90),
    'stackoverflow_nwp': DatasetEntry(datasets.stackoverflow_nwp,
                                      num_classes=10004),
    # Multi-label: num_classes is the number of tags (TFF's default 500).
    'stackoverflow_tags': DatasetEntry(datasets.stackoverflow_tags,
                                       num_classes=500),
    'fed_cifar100': DatasetEntry(datasets.fed_cifar100, num_classes=100),
    'mnist': DatasetEntry(datasets.mnist, num_classes=10, centralized=True),
    'fashion_mnist': DatasetEntry(datasets.fashion_mnist, num_classes=10,
                                  centralized=True),
    'cifar10': DatasetEntry(datasets.cifar10, num_classes=10,
                            centralized=True),
    'cifar100': DatasetEntry(datasets.cifar100, num_classes=100,
                             centralized=True),
}

PARTITIONS = ('iid', 'dirichlet', 'shards', 'quantity_skew')


def _flat(shape):
  return math.prod(shape)


# Token ids shared by the sequence datasets: 0 pads, 2 ends a sequence; the
# Stack Overflow out-of-vocabulary id is the last one. Accuracy leaves out
# pad, end and out-of-vocabulary targets, as TFF and FedJAX report it.
_EOS = 2

# The model factories see only shapes and class counts; a word model needs
# the vocabulary size that leaf_sent140 uses by default.
_SENT140_VOCAB_SIZE = importlib.import_module(
    'fedjax_engine.datasets.leaf').SENT140_VOCAB_SIZE

MODELS: Mapping[str, Callable] = {
    'logistic': lambda *, input_shape, num_classes: models.logistic_regression(
        num_features=_flat(input_shape), num_classes=num_classes),
    'mlp': lambda *, input_shape, num_classes: models.mlp(
        num_features=_flat(input_shape), num_classes=num_classes),
    'emnist_cnn': lambda *, input_shape, num_classes: models.emnist_cnn(
        num_classes=num_classes),
    'femnist_cnn': lambda *, input_shape, num_classes: models.femnist_cnn(
        num_classes=num_classes),
    'char_lstm': lambda *, input_shape, num_classes: models.char_lstm(
        vocab_size=num_classes, accuracy_exclude=(_EOS,)),
    # LEAF's Shakespeare: only the character after each window (y [B]).
    'char_lstm_last': lambda *, input_shape, num_classes: models.char_lstm(
        vocab_size=num_classes, last_only=True),
    'sent140_lstm': lambda *, input_shape, num_classes: models.sent140_lstm(
        vocab_size=_SENT140_VOCAB_SIZE, num_classes=num_classes),
    'multilabel_logistic': lambda *, input_shape, num_classes: (
        models.multilabel_logistic_regression(
            num_features=_flat(input_shape), num_labels=num_classes)),
    'stackoverflow_lstm': lambda *, input_shape, num_classes: (
        models.stackoverflow_lstm(vocab_size=num_classes,
                                  accuracy_exclude=(_EOS, num_classes - 1))),
    'resnet18_gn': lambda *, input_shape, num_classes: models.resnet18_gn(
        num_classes=num_classes, input_shape=tuple(input_shape)),
    'transformer_lm': lambda *, input_shape, num_classes: models.transformer_lm(
        vocab_size=num_classes, max_len=input_shape[0]),
}


def make_optimizer(name: str, *, learning_rate: float, momentum: float = 0.0,
                   beta1: float = 0.9, beta2: float = 0.99,
                   epsilon: float = 1e-3) -> optax.GradientTransformation:
  """An optax optimizer by name: sgd, adam, yogi or adagrad.

  ``momentum`` applies to sgd (0 is plain SGD; FedAvgM uses server momentum).
  ``beta1``, ``beta2``, ``epsilon`` apply to adam and yogi, ``epsilon`` to
  adagrad; the defaults follow Reddi et al., "Adaptive Federated
  Optimization", ICLR 2021 (tau = 1e-3 as epsilon, beta2 = 0.99).
  """
  # A traced rate (a learning-rate sweep, fedjax_engine.hyperparameters)
  # was checked as a number before it was traced.
  if isinstance(learning_rate, (int, float)) and not learning_rate > 0:
    raise ValueError(f'learning rate must be positive, got {learning_rate}.')
  if name == 'sgd':
    return optax.sgd(learning_rate, momentum=momentum or None)
  if name == 'adam':
    return optax.adam(learning_rate, b1=beta1, b2=beta2, eps=epsilon)
  if name == 'yogi':
    return optax.yogi(learning_rate, b1=beta1, b2=beta2, eps=epsilon)
  if name == 'adagrad':
    return fed_adagrad(learning_rate, tau=epsilon)
  raise ValueError(f'unknown optimizer {name!r}; known: {", ".join(OPTIMIZERS)}.')


OPTIMIZERS = ('sgd', 'adam', 'yogi', 'adagrad')


def fed_adagrad(learning_rate: float, *, tau: float = 1e-3
                ) -> optax.GradientTransformation:
  """Adagrad as FedAdagrad writes it, tau outside the square root.

  ``v_t = v_{t-1} + g_t^2``, ``update = -lr * g_t / (sqrt(v_t) + tau)``
  (Reddi et al., ICLR 2021, Algorithm 2, with v_{-1} = 0). optax.adagrad
  puts its epsilon inside the square root and starts v at 0.1.
  """
  def init(params):
    return jax.tree.map(jnp.zeros_like, params)

  def update(grads, v, params=None):
    del params
    v = jax.tree.map(lambda a, g: a + g * g, v, grads)
    updates = jax.tree.map(
        lambda g, a: -learning_rate * g / (jnp.sqrt(a) + tau), grads, v)
    return updates, v

  return optax.GradientTransformation(init, update)


def resolve(table: Mapping[str, Any], name: str, *, kind: str):
  """Looks ``name`` up in ``table``, or imports ``"package.module:attr"``."""
  if ':' in name:
    module_name, _, attr = name.partition(':')
    try:
      module = importlib.import_module(module_name)
    except ImportError as e:
      raise ValueError(f'cannot import {kind} plug-in module {module_name!r} '
                       f'(from {name!r}): {e}') from e
    try:
      return getattr(module, attr)
    except AttributeError:
      raise ValueError(f'{kind} plug-in module {module_name!r} has no '
                       f'attribute {attr!r}.') from None
  if name not in table:
    raise ValueError(
        f'unknown {kind} {name!r}; known: {", ".join(sorted(table))}, or a '
        "plug-in as 'package.module:attribute'.")
  return table[name]
