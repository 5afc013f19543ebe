"""Dense classifiers: multinomial logistic regression and the MLP (2NN).

Inputs of any shape are flattened per example, so the same models take
Synthetic's 60 features and 28x28 images.

Example:

  >>> import jax
  >>> model = mlp(num_features=784, num_classes=62)
  >>> params = model.init(jax.random.key(0))
  >>> [p.shape for p in jax.tree.leaves(params)][:2]
  [(200,), (784, 200)]
"""

from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp

from fedjax_engine.model import Model, from_linen


class MLP(nn.Module):
  """Flatten, ReLU hidden layers, linear output (no hidden layer: logistic)."""
  hidden: Sequence[int]
  num_classes: int

  @nn.compact
  def __call__(self, x):
    x = x.reshape((x.shape[0], -1))
    for width in self.hidden:
      x = nn.relu(nn.Dense(width)(x))
    return nn.Dense(self.num_classes)(x)


def _sample(num_features):
  return {'x': jnp.zeros((1, num_features), jnp.float32)}


def logistic_regression(*, num_features: int, num_classes: int) -> Model:
  """Multinomial logistic regression, the model of the Synthetic benchmark.

  Li et al., "Federated Optimization in Heterogeneous Networks" (FedProx),
  MLSys 2020, Section 5.1.
  """
  return from_linen(MLP(hidden=(), num_classes=num_classes),
                    sample_batch=_sample(num_features))


def mlp(*, num_features: int, num_classes: int,
        hidden: Sequence[int] = (200, 200)) -> Model:
  """The MLP; with the default (200, 200) it is the "2NN" of McMahan et al.,
  "Communication-Efficient Learning of Deep Networks from Decentralized
  Data", AISTATS 2017.
  """
  return from_linen(MLP(hidden=tuple(hidden), num_classes=num_classes),
                    sample_batch=_sample(num_features))
