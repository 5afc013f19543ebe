"""Federated datasets (``fedjax_engine.datasets``).

Every loader returns ``(train, test)`` :class:`fedjax_engine.FederatedData`
with the same clients in the same order.
"""

from fedjax_engine.datasets import partition as partition
from fedjax_engine.datasets.synthetic import synthetic as synthetic

__all__ = ['partition', 'synthetic']
