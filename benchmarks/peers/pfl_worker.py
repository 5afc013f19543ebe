"""pfl (Apple's pfl-research), PyTorch backend: a harness worker's runner.

FedAvg as pfl runs it: ``FederatedAveraging().run(...)`` with a
``SimulatedBackend`` over a ``FederatedDataset``, a ``PyTorchModel`` (local
``torch.optim.SGD(lr=0.05)``, central ``torch.optim.SGD(lr=1.0)`` applied
to the mean model difference), ``NNTrainHyperParams(local_num_epochs=1,
local_batch_size=20)`` on each client's 200 examples of the round.

Matching the engine:

* cohorts: the user sampler hands out the suite's cohort of the round, in
  order (``workloads.cohorts``);
* batches: pfl trains on a user's dataset in order and stops after one
  epoch, with no cycling of small clients; each round's user dataset is the
  200 examples of its plan (round 0: the engine's plan, exported; later
  rounds: reshuffled epochs, ``common.own_plan``);
* weights: pfl weighs a user by ``len(dataset)`` (200 here) or 1; a
  ``WeightingStrategy`` postprocessor weighs it by its number of examples,
  as the engine does;
* initial params: the engine's, layouts mapped (``torch_models``).

The round loop (``algorithm.run``) runs in a thread gated by a callback
(``common.Gate``): a round is timed from the go to the end of its central
iteration.
"""

import importlib.metadata

import numpy as np
import torch

import common
import torch_models
import workloads as wl


class Runner:

  def __init__(self, setup, cfg):
    from pfl.aggregate.simulate import SimulatedBackend  # pylint: disable=g-import-not-at-top
    from pfl.aggregate.weighting import WeightingStrategy  # pylint: disable=g-import-not-at-top
    from pfl.algorithm import FederatedAveraging, NNAlgorithmParams  # pylint: disable=g-import-not-at-top
    from pfl.callback.base import TrainingProcessCallback  # pylint: disable=g-import-not-at-top
    from pfl.data.dataset import Dataset  # pylint: disable=g-import-not-at-top
    from pfl.data.federated_dataset import FederatedDataset  # pylint: disable=g-import-not-at-top
    from pfl.hyperparam import NNEvalHyperParams, NNTrainHyperParams  # pylint: disable=g-import-not-at-top
    from pfl.metrics import Metrics  # pylint: disable=g-import-not-at-top
    from pfl.model.pytorch import PyTorchModel  # pylint: disable=g-import-not-at-top

    self.threads = int(cfg.get('threads') or 1)
    torch_models.set_threads(self.threads)
    torch.manual_seed(wl.SEED)
    self.setup = setup
    self.net = torch_models.Net(cfg['workload'])
    self.net.load_engine(setup.params)
    train = setup.train
    # Torch tensors of all examples: a user's batch is an index into them.
    self.x = torch.from_numpy(train.x)
    self.y = torch.from_numpy(train.y.astype(np.int64))
    sizes = train.sizes
    self.rng = np.random.default_rng(wl.SEED)
    self.queue = []
    self.rows = {}
    gate = self.gate = common.Gate(self._loop)

    def sample():
      return self.queue.pop(0)

    def make_dataset(uid):
      rows = self.rows[uid]
      return Dataset(raw_data=[self.x[rows], self.y[rows]], user_id=uid)

    class WeightByExamples(WeightingStrategy):
      def postprocess_one_user(self, *, stats, user_context):
        stats.reweight(float(sizes[int(user_context.user_id)]))
        return stats, Metrics()

    class Gated(TrainingProcessCallback):
      def on_train_begin(self, *, model):
        runner_start()
        return Metrics()

      def after_central_iteration(self, aggregate_metrics, model, *,
                                  central_iteration):
        gate.round_end()
        runner_start()
        return False, Metrics()

    def runner_start():
      self._start_round(gate.round_start())

    data = FederatedDataset(make_dataset, sample)
    self.backend = SimulatedBackend(training_data=data, val_data=data,
                                    postprocessors=[WeightByExamples()])
    self.model = PyTorchModel(
        model=self.net, local_optimizer_create=torch.optim.SGD,
        central_optimizer=torch.optim.SGD(self.net.parameters(),
                                          lr=wl.SERVER_LR))
    self.algorithm = FederatedAveraging()
    self.algorithm_params = NNAlgorithmParams(
        central_num_iterations=10**9, evaluation_frequency=10**9,
        train_cohort_size=setup.clients, val_cohort_size=0)
    self.train_params = NNTrainHyperParams(
        local_learning_rate=wl.CLIENT_LR, local_num_epochs=1,
        local_batch_size=wl.BATCH_SIZE)
    self.eval_params = NNEvalHyperParams(local_batch_size=wl.BATCH_SIZE)
    self.callbacks = [Gated()]

  def _loop(self):
    self.algorithm.run(self.algorithm_params, self.backend, self.model,
                       self.train_params, self.eval_params,
                       callbacks=self.callbacks)

  def _start_round(self, current):
    """Peer thread, before a round: its cohort and each user's 200 rows."""
    r, ids = current
    train = self.setup.train
    if r == 0:
      plan = self.setup.plan0
      assert np.array_equal(plan['ids'], ids)
      rows = plan['rows'].reshape(len(ids), -1)
    else:
      local = common.own_plan(train.sizes, ids, self.rng).reshape(len(ids), -1)
      rows = local + train.offsets[ids][:, None]
    self.rows = {str(i): torch.from_numpy(np.asarray(rw, np.int64))
                 for i, rw in zip(ids, rows)}
    self.queue = [str(i) for i in ids]

  def prepare(self, r, ids):
    """Untimed work before round ``r`` (none)."""

  def advance(self, r, ids):
    self.gate.step((r, np.asarray(ids)))
    return 1

  def params(self):
    return self.setup.leaves(self.net.engine_params(self.setup.names))

  def info(self):
    return dict(peer='pfl', peer_versions={
        p: importlib.metadata.version(p) for p in ('pfl', 'torch')},
                torch_threads=self.threads, backend='cpu (PyTorch)',
                devices=self.threads,   # the cores it uses
                device_kind=f'{self.threads} torch threads')
