"""The suite's models in PyTorch (pfl and Flower clients), engine params in.

Same functions as the engine's registry models: ``logistic`` (one linear
layer), the 2NN (784-200-200-62, ReLU) and the EMNIST CNN (3x3 conv 32,
ReLU, 3x3 conv 64, ReLU, 2x2 max pool, dropout 0.25, dense 128, ReLU,
dropout 0.5, dense 62; 'VALID' convolutions). Inputs ``[N, 28, 28]`` or
``[N, 60]``; loss: mean softmax cross entropy over the batch.
"""

import numpy as np
import torch
from torch import nn

import common


def set_threads(n):
  torch.set_num_threads(int(n))
  try:
    torch.set_num_interop_threads(1)
  except RuntimeError:   # already set in this process
    pass


class Net(nn.Module):
  """A stack of layers with the ``loss``/``metrics`` pfl asks for."""

  def __init__(self, workload):
    super().__init__()
    if workload == 'synthetic_logistic':
      self.body = nn.Sequential(nn.Flatten(), nn.Linear(60, 10))
    elif workload == 'synthetic_mlp':
      self.body = nn.Sequential(nn.Flatten(), nn.Linear(60, 200), nn.ReLU(),
                                nn.Linear(200, 200), nn.ReLU(),
                                nn.Linear(200, 10))
    elif workload == 'emnist_2nn':
      self.body = nn.Sequential(nn.Flatten(), nn.Linear(784, 200), nn.ReLU(),
                                nn.Linear(200, 200), nn.ReLU(),
                                nn.Linear(200, 62))
    elif workload == 'emnist_cnn':
      self.body = nn.Sequential(
          nn.Unflatten(1, (1, 28)), nn.Conv2d(1, 32, 3), nn.ReLU(),
          nn.Conv2d(32, 64, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Dropout(0.25),
          nn.Flatten(), nn.Linear(9216, 128), nn.ReLU(), nn.Dropout(0.5),
          nn.Linear(128, 62))
    else:
      raise ValueError(f'no PyTorch model for {workload!r}')
    self.loss_fn = nn.CrossEntropyLoss()

  def forward(self, x):
    return self.body(x)

  def loss(self, x, y, eval=False):  # pylint: disable=redefined-builtin
    self.train(not eval)
    return self.loss_fn(self(x), y.long())

  @torch.no_grad()
  def metrics(self, x, y, eval=True):  # pylint: disable=redefined-builtin
    from pfl.metrics import Weighted  # pylint: disable=g-import-not-at-top
    self.train(not eval)
    loss = self.loss_fn(self(x), y.long())
    return {'loss': Weighted.from_unweighted(float(loss))}

  def layers(self):
    return [m for m in self.body if isinstance(m, (nn.Linear, nn.Conv2d))]

  @torch.no_grad()
  def load_engine(self, params):
    """Engine params (leaf name -> array) into this module, layouts mapped."""
    for layer, (w, b) in zip(self.layers(), common.to_torch(params)):
      layer.weight.copy_(torch.from_numpy(w))
      layer.bias.copy_(torch.from_numpy(b))

  def engine_params(self, names):
    return common.from_torch(names, [
        (l.weight.detach().numpy().copy(), l.bias.detach().numpy().copy())
        for l in self.layers()])


def state_arrays(module):
  """The module's parameters as numpy arrays (Flower's wire format)."""
  return [p.detach().numpy().copy() for p in module.parameters()]


@torch.no_grad()
def load_arrays(module, arrays):
  for p, a in zip(module.parameters(), arrays):
    p.copy_(torch.from_numpy(np.asarray(a)))
