"""Federated algorithms, one module per method (``fedjax_engine.algorithms``).

FedAvgM, FedAdam, FedYogi and FedAdagrad are :func:`fedavg` with another
server optimizer (Reddi et al., "Adaptive Federated Optimization", ICLR 2021).
"""

from fedjax_engine.algorithms.ditto import ditto as ditto
from fedjax_engine.algorithms.fedavg import fedavg as fedavg
from fedjax_engine.algorithms.feddyn import feddyn as feddyn
from fedjax_engine.algorithms.fednova import fednova as fednova
from fedjax_engine.algorithms.fedprox import fedprox as fedprox
from fedjax_engine.algorithms.scaffold import scaffold as scaffold
from fedjax_engine.algorithms.fedsgd import fedsgd as fedsgd
from fedjax_engine.algorithms.mimelite import mimelite as mimelite
from fedjax_engine.algorithms.qffl import qffl as qffl

__all__ = ['ditto', 'fedavg', 'feddyn', 'fednova', 'fedprox', 'fedsgd', 'mimelite',
           'qffl', 'scaffold']
