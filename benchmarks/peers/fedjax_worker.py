"""FedJAX (google/fedjax 0.0.17, JAX 0.4.13): a harness worker's runner.

FedAvg as FedJAX ships it: ``fedjax.algorithms.fed_avg.federated_averaging``
with ``fedjax.model_grad`` of the model, ``fedjax.optimizers.sgd(0.05)`` on
the clients and ``sgd(1.0)`` on the server, and
``ShuffleRepeatBatchHParams(batch_size=20, num_steps=10, num_epochs=None)``
(each client: 10 batches of 20 from reshuffled epochs). Each round,
``algorithm.apply(state, [(id, ClientDataset, rng), ...])``; FedJAX runs
the clients one after the other with jitted per-step functions
(``for_each_client``), weighs each client's delta by ``len(dataset)`` (its
number of examples, as the engine does) and applies the mean.

Models: FedJAX's own ``fedjax.models.emnist.create_dense_model`` (2NN) and
``create_conv_model`` (the EMNIST CNN with dropout); for Synthetic(1,1)
the engine's logistic regression and MLP in Haiku, through
``fedjax.create_model_from_haiku``. The
engine's initial params are loaded into them (``hk.Linear`` ``w`` is the
engine's kernel transposed; ``hk.Conv2D`` is HWIO like the engine).

Round 0 trains on the engine's exported plan: each client's dataset is a
view that keeps its length (the weight) and yields the engine's batches.
Later rounds use FedJAX's own shuffling. Dropout keys are FedJAX's (not
the engine's).
"""

import importlib.metadata

import numpy as np

import common
import workloads as wl


class _Planned:
  """A client dataset that yields given batches and has the client's length."""

  def __init__(self, length, batches):
    self.length, self.batches = length, batches

  def __len__(self):
    return self.length

  def shuffle_repeat_batch(self, hparams):
    del hparams
    return self.batches


def _layer_order(name):
  """Haiku module names ('conv2_d_1', 'linear') in network order."""
  base = name.split('/')[-1]
  kind = 0 if base.startswith('conv') else 1
  idx = base.rsplit('_', 1)
  num = int(idx[1]) if len(idx) == 2 and idx[1].isdigit() else 0
  return (kind, num)


# Synthetic(1,1) models (60 features, 10 classes): FedJAX ships none.
SYNTHETIC_HIDDEN = {'synthetic_logistic': (), 'synthetic_mlp': (200, 200)}


def _synthetic_model(hidden):
  """The engine's ``MLP``: ReLU hidden layers of ``hidden``, then 10 logits."""
  import fedjax  # pylint: disable=g-import-not-at-top
  import haiku as hk  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top

  def forward(batch):
    x = batch['x']
    for width in hidden:
      x = jax.nn.relu(hk.Linear(width)(x))
    return hk.Linear(10)(x)

  return fedjax.create_model_from_haiku(
      transformed_forward_pass=hk.transform(forward),
      sample_batch={'x': np.zeros((1, 60), np.float32),
                    'y': np.zeros(1, np.int32)},
      train_loss=lambda b, p: fedjax.metrics.unreduced_cross_entropy_loss(
          b['y'], p),
      eval_metrics={})


def model_for(workload):
  """The FedJAX model of a suite workload."""
  from fedjax.models import emnist  # pylint: disable=g-import-not-at-top
  if workload == 'emnist_2nn':
    return emnist.create_dense_model(only_digits=False, hidden_units=200)
  if workload == 'emnist_cnn':
    return emnist.create_conv_model(only_digits=False)
  if workload in SYNTHETIC_HIDDEN:
    return _synthetic_model(SYNTHETIC_HIDDEN[workload])
  raise ValueError(f'no FedJAX model for {workload!r}')


def haiku_params(model, engine_params):
  """The engine's params in ``model``'s Haiku layout; and its layer names."""
  import haiku as hk  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  params = model.init(jax.random.PRNGKey(wl.SEED))
  layers = sorted(params, key=_layer_order)
  params = hk.data_structures.to_mutable_dict(params)
  for layer, (w, b) in zip(layers, common.to_haiku(engine_params)):
    assert params[layer]['w'].shape == w.shape, (layer, w.shape)
    params[layer] = {'w': jax.numpy.asarray(w), 'b': jax.numpy.asarray(b)}
  return params, layers


class Runner:

  def __init__(self, setup, cfg):
    import fedjax  # pylint: disable=g-import-not-at-top
    import jax  # pylint: disable=g-import-not-at-top
    from fedjax.algorithms import fed_avg  # pylint: disable=g-import-not-at-top
    self.jax = jax
    self.fedjax = fedjax
    self.setup = setup
    model = model_for(cfg['workload'])
    x = setup.train.x
    if cfg['workload'] == 'emnist_cnn':
      x = x.reshape(x.shape + (1,))   # NHWC, as FedJAX's EMNIST data
    self.x, self.y = x, setup.train.y
    params, self.haiku_layers = haiku_params(model, setup.params)
    self.algorithm = fed_avg.federated_averaging(
        grad_fn=fedjax.model_grad(model),
        client_optimizer=fedjax.optimizers.sgd(wl.CLIENT_LR),
        server_optimizer=fedjax.optimizers.sgd(wl.SERVER_LR),
        client_batch_hparams=fedjax.ShuffleRepeatBatchHParams(
            batch_size=wl.BATCH_SIZE, num_epochs=None,
            num_steps=wl.LOCAL_STEPS))
    self.state = self.algorithm.init(params)
    self.key = jax.random.PRNGKey(wl.SEED)

  def prepare(self, r, ids):
    """Untimed work before round ``r`` (none)."""

  def _clients(self, r, ids):
    train = self.setup.train
    rngs = self.jax.random.split(self.jax.random.fold_in(self.key, r), len(ids))
    out = []
    if r == 0:
      plan = self.setup.plan0
      assert np.array_equal(plan['ids'], ids)
      for j, i in enumerate(ids):
        batches = [{'x': self.x[rows], 'y': self.y[rows]}
                   for rows in plan['rows'][j]]
        out.append((int(i), _Planned(int(train.sizes[i]), batches), rngs[j]))
      return out
    for j, i in enumerate(ids):
      s, e = train.offsets[i], train.offsets[i + 1]
      ds = self.fedjax.ClientDataset({'x': self.x[s:e], 'y': self.y[s:e]})
      out.append((int(i), ds, rngs[j]))
    return out

  def advance(self, r, ids):
    self.state, _ = self.algorithm.apply(self.state, self._clients(r, ids))
    self.jax.block_until_ready(self.state.params)
    return 1

  def params(self):
    weights = [(np.asarray(self.state.params[l]['w']),
                np.asarray(self.state.params[l]['b']))
               for l in self.haiku_layers]
    return self.setup.leaves(common.from_haiku(self.setup.names, weights))

  def info(self):
    return dict(peer='fedjax', peer_versions={
        p: importlib.metadata.version(p)
        for p in ('fedjax', 'jax', 'jaxlib', 'dm-haiku', 'optax')})
