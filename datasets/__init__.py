"""Federated datasets (``fedjax_engine.datasets``).

Every loader returns ``(train, test)`` :class:`fedjax_engine.FederatedData`
with the same clients in the same order.
"""

from fedjax_engine.datasets import partition as partition
from fedjax_engine.datasets.cifar import cifar10 as cifar10
from fedjax_engine.datasets.cifar import cifar100 as cifar100
from fedjax_engine.datasets.cifar import fed_cifar100 as fed_cifar100
from fedjax_engine.datasets.mnist import Centralized as Centralized
from fedjax_engine.datasets.mnist import fashion_mnist as fashion_mnist
from fedjax_engine.datasets.mnist import mnist as mnist
from fedjax_engine.datasets.synthetic import synthetic as synthetic

__all__ = ['Centralized', 'cifar10', 'cifar100', 'fashion_mnist', 'fed_cifar100',
           'mnist', 'partition', 'synthetic']
