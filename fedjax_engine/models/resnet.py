"""ResNet-18 with group normalisation, for CIFAR-sized images.

Batch normalisation keeps running statistics per client, which have no
federated meaning and fail under non-IID data; Hsieh et al., "The Non-IID
Data Quagmire of Decentralized Machine Learning", ICML 2020, replace it by
group normalisation (Wu & He, "Group Normalization", ECCV 2018), and Reddi
et al., "Adaptive Federated Optimization", ICLR 2021, train a ResNet-18
with group norm on CIFAR-10 and CIFAR-100. The default of two groups per
layer follows the setting attributed to Reddi et al.'s experiments; it was
not re-checked against the paper's text, and the TFF code below uses 32.

Architecture (He et al., "Deep Residual Learning for Image Recognition",
CVPR 2016, Table 1, ResNet-18: basic blocks [2, 2, 2, 2] of widths 64, 128,
256, 512), with the CIFAR stem common to CIFAR ResNet-18s: one 3x3 conv of
64 channels, stride 1, no max pool (He et al.'s own CIFAR networks, Sec.
4.2, also start with a single 3x3 conv and no pooling). Each block is
post-activation: conv3x3 - GN - relu - conv3x3 - GN, plus the shortcut
(identity, or 1x1 conv stride 2 - GN where the shape changes), then relu.
Stages 2-4 halve the resolution (32 -> 16 -> 8 -> 4), then global average
pooling and a dense layer. Convs have no bias (GN's shift plays that role).

Not the same network as TFF's ``create_resnet18`` that Reddi et al. ran: that
one is pre-activation (ResNet v2), has the ImageNet stem (7x7 conv stride 2
and a 3x3 max pool stride 2), keeps all four stages at the stem's
resolution, and uses tensorflow-addons' GroupNormalization default of 32
groups (``tensorflow_federated/python/simulation/models/resnet_models.py``).

Parameters (hand count, C classes): stem 3*3*3*64 + GN 2*64 = 1,856; stage 1
147,968; stage 2 525,568; stage 3 2,099,712; stage 4 8,393,728; dense
512*C + C. Total 11,168,832 + 513*C: 11,173,962 for CIFAR-10, 11,220,132 for
CIFAR-100 (the BN ResNet-18 for CIFAR has the same count: BN also has two
parameters per channel).

Example:

  >>> import jax, jax.numpy as jnp
  >>> model = resnet18_gn(num_classes=10)
  >>> # model.init(key) builds the parameters; eval_shape only traces.
  >>> params = jax.eval_shape(model.init, jax.random.key(0))
  >>> sum(p.size for p in jax.tree.leaves(params))
  11173962
  >>> batch = {'x': jnp.zeros((2, 32, 32, 3))}
  >>> jax.eval_shape(model.apply, params, batch).shape
  (2, 10)
"""

from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from fedjax_engine.model import Model, from_linen
from fedjax_engine.models.cnn import Conv2D


class BasicBlock(nn.Module):
  """Post-activation basic residual block with group norm."""
  features: int
  strides: int = 1
  groups: int = 2
  conv_impl: str = 'auto'

  @nn.compact
  def __call__(self, x):
    conv = lambda f, k, s: Conv2D(f, (k, k), strides=(s, s), use_bias=False,
                                  impl=self.conv_impl)
    norm = lambda: nn.GroupNorm(num_groups=self.groups, epsilon=1e-5)
    y = nn.relu(norm()(conv(self.features, 3, self.strides)(x)))
    y = norm()(conv(self.features, 3, 1)(y))
    if self.strides != 1 or x.shape[-1] != self.features:
      x = norm()(conv(self.features, 1, self.strides)(x))
    return nn.relu(x + y)


class ResNet18GN(nn.Module):
  """ResNet-18, CIFAR stem, group norm; NHWC inputs, logits out."""
  num_classes: int
  groups: int = 2
  stage_sizes: Sequence[int] = (2, 2, 2, 2)
  widths: Sequence[int] = (64, 128, 256, 512)
  conv_impl: str = 'auto'

  @nn.compact
  def __call__(self, x):
    x = jnp.asarray(x, jnp.float32)
    x = Conv2D(self.widths[0], (3, 3), use_bias=False, impl=self.conv_impl)(x)
    x = nn.relu(nn.GroupNorm(num_groups=self.groups, epsilon=1e-5)(x))
    for stage, (blocks, width) in enumerate(zip(self.stage_sizes,
                                                self.widths)):
      for block in range(blocks):
        strides = 2 if stage > 0 and block == 0 else 1
        x = BasicBlock(width, strides=strides, groups=self.groups,
                       conv_impl=self.conv_impl)(x)
    x = jnp.mean(x, axis=(1, 2))
    return nn.Dense(self.num_classes)(x)


def resnet18_gn(*, num_classes: int, groups: int = 2,
                input_shape: Sequence[int] = (32, 32, 3),
                conv_impl: str = 'auto') -> Model:
  """ResNet-18 with group norm (``groups`` groups per layer), CIFAR stem.

  See the module docstring for the architecture, its sources, and how it
  differs from TFF's ResNet-18.

  Args:
    num_classes: 10 for CIFAR-10, 100 for CIFAR-100.
    groups: groups per GroupNorm layer (Reddi et al.: 2); must divide 64.
    input_shape: ``(H, W, C)`` of one image; the parameters depend only on
      ``C`` (global average pooling), so other sizes, e.g. TFF's 24x24
      CIFAR-100 crops, run with the same parameters.
    conv_impl: 'auto', 'xla', 'slices' or 'winograd'; see
      :mod:`fedjax_engine.models.cnn`.

  Example:

    >>> import jax, jax.numpy as jnp
    >>> model = resnet18_gn(num_classes=100, input_shape=(24, 24, 3))
    >>> params = jax.eval_shape(model.init, jax.random.key(0))
    >>> sum(p.size for p in jax.tree.leaves(params))
    11220132
    >>> batch = {'x': jnp.zeros((1, 24, 24, 3))}
    >>> jax.eval_shape(model.apply, params, batch).shape
    (1, 100)
  """
  if 64 % groups:
    raise ValueError(f'groups must divide 64, got {groups}.')
  sample = {'x': np.zeros((1, *input_shape), np.float32)}
  return from_linen(ResNet18GN(num_classes=num_classes, groups=groups,
                               conv_impl=conv_impl), sample_batch=sample)
