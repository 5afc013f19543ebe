"""Federated algorithms, one module per method (``fedjax_engine.algorithms``).

FedAvgM, FedAdam, FedYogi and FedAdagrad are :func:`fedavg` with another
server optimizer (Reddi et al., "Adaptive Federated Optimization", ICLR 2021).

Example (an algorithm is pure functions; its server state starts at round 0):

  >>> import jax, optax, fedjax_engine as fe
  >>> model = fe.models.logistic_regression(num_features=60, num_classes=10)
  >>> fedavgm = fedavg(model, client_optimizer=optax.sgd(0.1),
  ...                  server_optimizer=optax.sgd(1.0, momentum=0.9))
  >>> state = fedavgm.init(model.init(jax.random.key(0)))
  >>> int(state.round), state.params['Dense_0']['kernel'].shape
  (0, (10, 60))
"""

from fedjax_engine.algorithms.afl import afl as afl
from fedjax_engine.algorithms.apfl import apfl as apfl
from fedjax_engine.algorithms.ditto import ditto as ditto
from fedjax_engine.algorithms.fedavg import fedavg as fedavg
from fedjax_engine.algorithms.fedbuff import fedbuff as fedbuff
from fedjax_engine.algorithms.feddyn import feddyn as feddyn
from fedjax_engine.algorithms.fednova import fednova as fednova
from fedjax_engine.algorithms.fedprox import fedprox as fedprox
from fedjax_engine.algorithms.fedrep import fedrep as fedrep
from fedjax_engine.algorithms.scaffold import scaffold as scaffold
from fedjax_engine.algorithms.fedsgd import fedsgd as fedsgd
from fedjax_engine.algorithms.hypcluster import hypcluster as hypcluster
from fedjax_engine.algorithms.mime import mime as mime
from fedjax_engine.algorithms.mimelite import mimelite as mimelite
from fedjax_engine.algorithms.perfedavg import perfedavg as perfedavg
from fedjax_engine.algorithms.qffl import qffl as qffl

__all__ = ['afl', 'apfl', 'ditto', 'fedavg', 'fedbuff', 'feddyn', 'fednova',
           'fedprox', 'fedrep', 'fedsgd', 'hypcluster', 'mime', 'mimelite',
           'perfedavg', 'qffl', 'scaffold']
