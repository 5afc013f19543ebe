"""fedjax-engine: vectorized federated learning simulation in JAX.

Public API. Implementation modules are imported here name by name; anything
not re-exported is private. ``fedjax_engine.accounting`` (privacy accounting,
which loads dp-accounting and scipy) is imported on its own when needed.
"""

import os as _os

# In a source checkout algorithms/ and datasets/ sit beside this folder, and
# pyproject.toml installs them as fedjax_engine.algorithms/.datasets. When
# the checkout itself is imported (``python -m fedjax_engine.train`` run
# from the repository root, which puts the root first on sys.path), look
# for those subpackages beside this folder too.
_here = _os.path.dirname(_os.path.abspath(__file__))
if not _os.path.isdir(_os.path.join(_here, 'algorithms')):
  __path__.append(_os.path.dirname(_here))  # pylint: disable=undefined-variable

from fedjax_engine import tree as tree
from fedjax_engine import aggregate as aggregate
from fedjax_engine.aggregate import Aggregator as Aggregator
from fedjax_engine.aggregate import weighted_mean as weighted_mean
from fedjax_engine.algorithm import Algorithm as Algorithm
from fedjax_engine.algorithm import ClientInfo as ClientInfo
from fedjax_engine.algorithm import RoundInfo as RoundInfo
from fedjax_engine.algorithm import ServerState as ServerState
from fedjax_engine.algorithm import local_training as local_training
from fedjax_engine.algorithm import masked_loss as masked_loss
from fedjax_engine.algorithm import over_steps as over_steps
from fedjax_engine.algorithm import server_optimizer_step as server_optimizer_step
from fedjax_engine.data import Batching as Batching
from fedjax_engine.data import Cohort as Cohort
from fedjax_engine.data import DeviceData as DeviceData
from fedjax_engine.data import FederatedData as FederatedData
from fedjax_engine.model import Mean as Mean
from fedjax_engine.model import Model as Model
from fedjax_engine.model import accuracy as accuracy
from fedjax_engine.model import from_linen as from_linen
from fedjax_engine.model import from_nnx as from_nnx
from fedjax_engine.model import softmax_cross_entropy as softmax_cross_entropy
from fedjax_engine.simulate import Round as Round
from fedjax_engine.simulate import host_table as host_table
from fedjax_engine.simulate import make_round as make_round
from fedjax_engine.evaluate import Evaluator as Evaluator
from fedjax_engine.evaluate import make_evaluate as make_evaluate
from fedjax_engine.personal_evaluate import PersonalEvaluator as PersonalEvaluator
from fedjax_engine.personal_evaluate import make_personal_evaluate as make_personal_evaluate
from fedjax_engine import sampling as sampling
from fedjax_engine import checkpoint as checkpoint
from fedjax_engine import sweep as sweep
from fedjax_engine import testing as testing
from fedjax_engine import heterogeneity as heterogeneity
from fedjax_engine import hyperparameters as hyperparameters
from fedjax_engine import transforms as transforms
from fedjax_engine import attacks as attacks
from fedjax_engine import compression as compression
from fedjax_engine import diagnostics as diagnostics
from fedjax_engine import robust as robust
from fedjax_engine import privacy as privacy
from fedjax_engine import secure_aggregation as secure_aggregation
from fedjax_engine.heterogeneity import SystemHeterogeneity as SystemHeterogeneity
from fedjax_engine import models as models
from fedjax_engine import algorithms as algorithms
from fedjax_engine import datasets as datasets

__version__ = '0.1.0'
