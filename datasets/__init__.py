"""Federated datasets (``fedjax_engine.datasets``).

Federated loaders return ``(train, test)`` :class:`fedjax_engine.FederatedData`
with the same clients in the same order; centralized ones (MNIST,
Fashion-MNIST, CIFAR) return :class:`Centralized` arrays to split with
:mod:`fedjax_engine.datasets.partition`.

Loaders share their names with their modules; reach a module itself with
``importlib.import_module('fedjax_engine.datasets.mnist')``.

Example (Synthetic is generated, not downloaded):

  >>> train, test = synthetic(num_clients=5, seed=0)
  >>> train.num_clients == test.num_clients, train.features['x'].shape[1:]
  (True, (60,))
"""

from fedjax_engine.datasets import partition as partition
from fedjax_engine.datasets.cifar import cifar10 as cifar10
from fedjax_engine.datasets.cifar import cifar100 as cifar100
from fedjax_engine.datasets.cifar import fed_cifar100 as fed_cifar100
from fedjax_engine.datasets.emnist import emnist as emnist
from fedjax_engine.datasets.leaf import leaf_femnist as leaf_femnist
from fedjax_engine.datasets.leaf import leaf_sent140 as leaf_sent140
from fedjax_engine.datasets.leaf import leaf_shakespeare as leaf_shakespeare
from fedjax_engine.datasets.mnist import Centralized as Centralized
from fedjax_engine.datasets.mnist import fashion_mnist as fashion_mnist
from fedjax_engine.datasets.mnist import mnist as mnist
from fedjax_engine.datasets.shakespeare import shakespeare as shakespeare
from fedjax_engine.datasets.stackoverflow import stackoverflow_nwp as stackoverflow_nwp
from fedjax_engine.datasets.stackoverflow import stackoverflow_tags as stackoverflow_tags
from fedjax_engine.datasets.synthetic import synthetic as synthetic

__all__ = [
    'Centralized', 'cifar10', 'cifar100', 'emnist', 'fashion_mnist',
    'fed_cifar100', 'leaf_femnist', 'leaf_sent140', 'leaf_shakespeare',
    'mnist', 'partition', 'shakespeare', 'stackoverflow_nwp',
    'stackoverflow_tags', 'synthetic',
]
