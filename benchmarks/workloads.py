"""What the speed benchmarks run: workloads, their FLOP counts, and runners.

A workload is data: a dataset builder, a model builder and the
multiply-accumulates (MACs) per example of the model's matmul and
convolution layers. Every workload trains FedAvg with 10 local steps of
batch 20, client ``optax.sgd(0.05)`` and server ``optax.sgd(1.0)``.

Two runners execute rounds of a workload on the same cohorts and keys:

* :class:`EngineRunner`: ``fe.make_round`` (optionally the fused
  ``run_rounds``, several rounds in one compiled program, when the engine
  has it);
* :class:`NaiveRunner`: the FedJAX pattern, one jitted SGD step per client
  per local step called from Python, batches gathered on the host.

Training FLOPs per example (:attr:`Workload.train_flops`) are counted from
the layer shapes: a layer with ``m`` MACs per example costs ``2m`` FLOPs
forward, ``2m`` for its weight gradient and ``2m`` for its input gradient,
except the first layer, whose input needs no gradient. So
``6 * sum(macs) - 2 * macs[0]``. Elementwise work (activations, softmax,
bias, the SGD update) is not counted. ``tests/test_benchmark_suite.py``
checks these counts against the matmuls and convolutions in the jaxpr of a
training step.

This module imports JAX lazily, so a parent process that only plans
configurations stays light.
"""

import functools
import math
import time
from typing import Callable, NamedTuple

BATCH_SIZE = 20
LOCAL_STEPS = 10
CLIENT_LR = 0.05
SERVER_LR = 1.0
SEED = 0
COHORT_SEED = 1234
NUM_CLIENTS = 1000

# EMNIST-shaped clients: sizes drawn from a lognormal with the mean of
# federated EMNIST-62's training split (671,585 images over 3,400 writers:
# 197.5 per writer; TFF) and the coefficient of variation of LEAF FEMNIST
# (226.83 +- 88.94 images per writer, Caldas et al. 2018, Table 1: 0.39).
EMNIST_MEAN_SIZE = 197.5
EMNIST_SIZE_CV = 0.39
EMNIST_IMAGE = (28, 28)
EMNIST_CLASSES = 62


def dense_macs(*widths):
  """MACs per example of a chain of dense layers ``widths[0] -> ...``."""
  return tuple(a * b for a, b in zip(widths, widths[1:]))


def conv_macs(height, width, kernel, in_channels, out_channels):
  """MACs per example of a 'VALID' stride-1 square convolution."""
  out = (height - kernel + 1) * (width - kernel + 1)
  return out * kernel * kernel * in_channels * out_channels


# Engine and naive params after round 0 on the same cohort and key agree when
# the L2 norm of their difference is at most this fraction of the L2 norm of
# the round's update. Measured: a different cohort or dropout key gives 0.7-0.8;
# float32 sums in another order give 1e-7 to 6e-7 for the dense models.
CHECK_MAX_REL_UPDATE_ERR = 1e-2
# The EMNIST CNN's 10 local steps amplify rounding: pre-activations come
# within 1e-8 of a ReLU or max-pool boundary, a rounding flips the odd unit
# and later steps carry it. Measured on the naive loop itself: the same
# round from initial params nudged by one ulp (jnp.nextafter) moves the
# result by 1.2e-2 to 1.3e-2 of the update with either convolution. The
# engine against the naive loop measured 2e-5 (both on 2 devices) to 1.1e-2
# (naive on 1 device: other thread splits, other rounding). So the CNN is
# held to a few times that floor, still far below a real mismatch (0.7).
CNN_CHECK_MAX_REL_UPDATE_ERR = 3e-2


class Workload(NamedTuple):
  """A benchmark workload.

  Attributes:
    name: short name used on the command line and in the results.
    description: one line for the table's legend.
    dataset: ``dataset(num_clients, data_dir) -> FederatedData``, the
      training clients (generated, or read from ``data_dir`` where the
      builder can).
    model: ``model() -> fe.Model``.
    layer_macs: MACs per example of each matmul/convolution, input first.
    dropout: the model draws randomness in training (the naive loop then
      passes every step the key the engine uses).
    check_tolerance: the equal-work check's bound on ``|difference| /
      |update|`` after round 0 (``harness.compare_params``).
  """
  name: str
  description: str
  dataset: Callable
  model: Callable
  layer_macs: tuple
  dropout: bool = False
  check_tolerance: float = CHECK_MAX_REL_UPDATE_ERR

  @property
  def train_flops(self) -> int:
    """Matmul/convolution FLOPs of one example's forward and backward pass."""
    return 6 * sum(self.layer_macs) - 2 * self.layer_macs[0]

  def round_flops(self, clients_per_round: int) -> int:
    """Training FLOPs of a round: every client takes 10 full batches of 20."""
    return self.train_flops * clients_per_round * LOCAL_STEPS * BATCH_SIZE


@functools.lru_cache(maxsize=None)
def synthetic(num_clients=NUM_CLIENTS, data_dir=None):
  """LEAF Synthetic(1, 1), training split (seed 0); always generated."""
  import fedjax_engine as fe  # pylint: disable=g-import-not-at-top
  if data_dir:
    raise ValueError('Synthetic(1, 1) is generated; it reads no data_dir.')
  return fe.datasets.synthetic(alpha=1, beta=1, num_clients=num_clients,
                               seed=SEED)[0]


@functools.lru_cache(maxsize=None)
def emnist_shaped(num_clients=NUM_CLIENTS, data_dir=None):
  """Random EMNIST-shaped clients, or real federated EMNIST from ``data_dir``.

  Generated: ``x`` float32 ``[n, 28, 28]`` uniform in [0, 1) (the layout of
  ``fe.datasets.emnist``; the models add the channel axis), ``y`` uniform
  over 62 classes, client sizes lognormal (mean 197.5, CV 0.39, at least 1).
  The work per round does not depend on the pixel values.
  """
  import numpy as np  # pylint: disable=g-import-not-at-top
  import fedjax_engine as fe  # pylint: disable=g-import-not-at-top
  if data_dir:
    return fe.datasets.emnist(data_dir=data_dir)[0]
  rng = np.random.default_rng(SEED)
  sigma = math.sqrt(math.log1p(EMNIST_SIZE_CV ** 2))
  mu = math.log(EMNIST_MEAN_SIZE) - sigma ** 2 / 2
  sizes = np.maximum(np.rint(rng.lognormal(mu, sigma, num_clients)), 1)
  offsets = np.concatenate([[0], np.cumsum(sizes.astype(np.int64))])
  n = int(offsets[-1])
  # Generated into aligned memory: the store is then used in place, not
  # copied (fedjax_engine.data.ALIGNMENT).
  x = rng.random((n,) + EMNIST_IMAGE, dtype=np.float32,
                 out=fe.data.aligned_empty((n,) + EMNIST_IMAGE, np.float32))
  features = {'x': x,
              'y': rng.integers(0, EMNIST_CLASSES, n, dtype=np.int32)}
  return fe.FederatedData(features, offsets, np.arange(num_clients))


def _registry_model(name, input_shape, num_classes):
  from fedjax_engine import registry  # pylint: disable=g-import-not-at-top
  return registry.MODELS[name](input_shape=input_shape,
                               num_classes=num_classes)


WORKLOADS = {w.name: w for w in (
    Workload('synthetic_logistic',
             'Synthetic(1,1), logistic regression 60-10 (610 params)',
             synthetic,
             functools.partial(_registry_model, 'logistic', (60,), 10),
             dense_macs(60, 10)),
    Workload('synthetic_mlp',
             'Synthetic(1,1), MLP 60-200-200-10 (54,410 params)',
             synthetic,
             functools.partial(_registry_model, 'mlp', (60,), 10),
             dense_macs(60, 200, 200, 10)),
    Workload('emnist_2nn',
             'EMNIST-shaped, 2NN 784-200-200-62 (209,662 params)',
             emnist_shaped,
             functools.partial(_registry_model, 'mlp', EMNIST_IMAGE,
                               EMNIST_CLASSES),
             dense_macs(784, 200, 200, 62)),
    Workload('emnist_cnn',
             'EMNIST-shaped, EMNIST CNN (1,206,590 params, dropout)',
             emnist_shaped,
             functools.partial(_registry_model, 'emnist_cnn', EMNIST_IMAGE,
                               EMNIST_CLASSES),
             (conv_macs(28, 28, 3, 1, 32), conv_macs(26, 26, 3, 32, 64))
             + dense_macs(12 * 12 * 64, 128, EMNIST_CLASSES),
             dropout=True, check_tolerance=CNN_CHECK_MAX_REL_UPDATE_ERR),
)}


class Setup(NamedTuple):
  train: object
  model: object
  algorithm: object
  batching: object
  params: object
  client_optimizer: object


def build(workload: Workload, *, num_clients=NUM_CLIENTS, data_dir=None):
  """Data, model, FedAvg and initial params of ``workload``."""
  import jax  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  import fedjax_engine as fe  # pylint: disable=g-import-not-at-top
  train = workload.dataset(num_clients, data_dir)
  model = workload.model()
  client_opt = optax.sgd(CLIENT_LR)
  algo = fe.algorithms.fedavg(model, client_optimizer=client_opt,
                              server_optimizer=optax.sgd(SERVER_LR))
  batching = fe.Batching(batch_size=BATCH_SIZE, local_steps=LOCAL_STEPS)
  return Setup(train, model, algo, batching, model.init(jax.random.key(SEED)),
               client_opt)


def cohorts(num_clients, clients_per_round, num_rounds):
  """The same sequence of distinct-client cohorts for every configuration."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(COHORT_SEED)
  return [np.sort(rng.choice(num_clients, clients_per_round, replace=False))
          for _ in range(num_rounds)]


def plan_kwargs(fn, data):
  """``max_size=...`` for index-plan functions that take it.

  The sort-based plan of engine versions before ``bd4ceae`` padded every
  client to the dataset's bucketed largest size; the sort-free plan has no
  such argument. Kept so the benchmarks run against those commits too.
  """
  import inspect  # pylint: disable=g-import-not-at-top
  from fedjax_engine import data as data_lib  # pylint: disable=g-import-not-at-top
  fn = getattr(fn, '__wrapped__', fn)
  if 'max_size' in inspect.signature(fn).parameters:
    return dict(max_size=data_lib.bucket(int(data.sizes.max(initial=1))))
  return {}


def _as_numpy(tree):
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  return [np.array(x, copy=True) for x in jax.tree.leaves(tree)]


class EngineRunner:
  """Rounds of ``fe.make_round``.

  ``advance(r, ids)`` runs round ``r`` on clients ``ids`` and returns 1. With
  ``fused_rounds=n > 1`` and an engine that has ``Round.run_rounds``, it runs
  rounds ``r .. r+n-1`` in one compiled call and returns n; their cohorts
  are drawn on the device by ``fedjax_engine.sampling.uniform`` (uniform
  without replacement, like ``ids``, but not the same draws).
  """

  def __init__(self, setup: Setup, clients_per_round, *, chunk=None,
               gather='device', fused_rounds=1, compile_for='speed'):
    import jax  # pylint: disable=g-import-not-at-top
    import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
    import fedjax_engine as fe  # pylint: disable=g-import-not-at-top
    # Only engines that have the choice are given it (the suite also runs
    # older commits for before-and-after comparisons).
    options = {} if compile_for == 'speed' else dict(compile_for=compile_for)
    self.rnd = fe.make_round(
        setup.algorithm, setup.train, clients_per_round=clients_per_round,
        batching=setup.batching, client_chunk_size=chunk, gather=gather,
        **options)
    # The round donates the state: start from a copy of the shared params.
    # (One jitted copy: copied leaf by leaf, each shape compiles a program.)
    self.state = setup.algorithm.init(
        jax.jit(lambda t: jax.tree.map(jnp.copy, t))(setup.params))
    self.client_states = ()
    self.key = jax.random.key(SEED)
    self.fused_rounds = (fused_rounds if fused_rounds > 1
                         and hasattr(self.rnd, 'run_rounds') else 1)
    # Engines with fe.simulate.rounds_for_call fuse as many rounds into a
    # call as their runner would: one in the first call, then as many as fit
    # in about a second (at most fused_rounds).
    self._rounds_for_call = getattr(fe.simulate, 'rounds_for_call', None)
    self._per_round = None
    if self.fused_rounds > 1:
      from fedjax_engine import sampling  # pylint: disable=g-import-not-at-top
      self.sampler = sampling.uniform(
          num_clients=setup.train.num_clients,
          clients_per_round=clients_per_round, key=jax.random.key(COHORT_SEED))
    self._last_cohort = None

  @property
  def rounds_per_call(self):
    """The most rounds a call runs."""
    return self.fused_rounds

  @property
  def chunk_used(self):
    return self.rnd.chunk_size

  def prepare(self, r, ids):
    """Untimed work before round ``r`` (none: the whole round is timed)."""

  def advance(self, r, ids):
    import jax  # pylint: disable=g-import-not-at-top
    if self.fused_rounds > 1:
      n = (self.fused_rounds if self._rounds_for_call is None
           else self._rounds_for_call(self._per_round,
                                      rounds_per_call=self.fused_rounds))
      start = time.perf_counter()
      self.state, self.client_states, metrics = self.rnd.run_rounds(
          self.state, self.client_states, self.sampler, self.key,
          first_round=r, num_rounds=n, block=self.fused_rounds)
      jax.block_until_ready((self.state, metrics))
      self._per_round = (time.perf_counter() - start) / n
      return n
    cohort = self.rnd.select(ids)
    self._last_cohort = cohort
    self.state, self.client_states, metrics = self.rnd(
        self.state, self.client_states, cohort, jax.random.fold_in(self.key, r))
    jax.block_until_ready((self.state, metrics))
    return 1

  def params(self):
    return _as_numpy(self.state.params)

  def xla_round_flops(self):
    """XLA's cost analysis of the compiled round (counts loop bodies once).

    Lowering and compiling again hit JAX's caches after the first round.
    """
    import jax  # pylint: disable=g-import-not-at-top
    rnd = self.rnd
    if self._last_cohort is None or not hasattr(rnd, '_jitted'):
      return None
    try:
      cohort = self._last_cohort
      num_steps = rnd.num_steps(cohort)
      cohort = jax.device_put(cohort, rnd._sharded)  # pylint: disable=protected-access
      state = jax.device_put(self.state, rnd._replicated)  # pylint: disable=protected-access
      compiled = rnd._jitted.lower(  # pylint: disable=protected-access
          state, self.client_states, cohort, self.key, rnd._store,  # pylint: disable=protected-access
          num_steps=num_steps).compile()
      cost = compiled.cost_analysis()
      cost = cost[0] if isinstance(cost, (list, tuple)) else cost
      return float(cost['flops'])
    except Exception:  # pylint: disable=broad-except
      return None   # private API of another engine version: not essential


class EngineComputeRunner(EngineRunner):
  """Diagnostic: the engine's compiled round alone, without plan and gather.

  The cohort's batches are planned and gathered on the host and placed on
  the device *before* the timer starts; the timed part is the compiled round
  program (local training, aggregation, server update) on those batches.
  Uses the Round's private ``_jitted``; the difference to the full engine
  rows is the cost of the index plan, the gather and Python dispatch.
  """

  def __init__(self, setup, clients_per_round, *, chunk=None):
    super().__init__(setup, clients_per_round, chunk=chunk, gather='host')
    self._prepared = None

  def prepare(self, r, ids):
    import jax  # pylint: disable=g-import-not-at-top
    from fedjax_engine import data as data_lib  # pylint: disable=g-import-not-at-top
    from fedjax_engine import simulate  # pylint: disable=g-import-not-at-top
    from fedjax_engine import tree  # pylint: disable=g-import-not-at-top
    rnd = self.rnd
    if rnd.chunk_size is None:
      rnd.chunk_size = simulate.default_chunk_size(
          tree.size(self.state.params), rnd.per_device)
    key = jax.random.fold_in(self.key, r)
    cohort = rnd.select(ids)
    num_steps = rnd.num_steps(cohort)
    cohort = data_lib.gather_on_host(
        rnd.data, cohort, key, batching=rnd.batching, num_steps=num_steps,
        **plan_kwargs(data_lib.gather_on_host, rnd.data))
    cohort = jax.device_put(cohort, rnd._sharded)  # pylint: disable=protected-access
    self._prepared = jax.block_until_ready((cohort, key, num_steps))

  def advance(self, r, ids):
    import jax  # pylint: disable=g-import-not-at-top
    rnd = self.rnd
    cohort, key, num_steps = self._prepared
    state = self.state
    if hasattr(rnd, '_replicated'):
      state = jax.device_put(state, rnd._replicated)  # pylint: disable=protected-access
    self.state, _, metrics = rnd._jitted(  # pylint: disable=protected-access
        state, (), cohort, key, None, num_steps=num_steps)
    jax.block_until_ready((self.state, metrics))
    return 1

  def xla_round_flops(self):
    return None


class NaiveRunner:
  """One jitted SGD step per client per local step, called from Python.

  Per round: the cohort's batches ``[C, S, B, ...]`` are gathered on the
  host from the engine's index plans (one vectorised numpy gather, kinder to
  the baseline than per-client Python batching); for each client, the
  jitted step is called once per local step; the client's delta is pulled
  to numpy and averaged there with example weights; a jitted
  ``server_update`` applies the mean. For a model with dropout, each step
  gets the key the engine would use
  (``fold_in(fold_in(fold_in(round_key, client), TRAIN_STREAM), step)``,
  all of a round's keys drawn in one jitted call); other models get no key.
  """

  def __init__(self, setup: Setup, clients_per_round, *, dropout=False):
    import jax  # pylint: disable=g-import-not-at-top
    import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
    import optax  # pylint: disable=g-import-not-at-top
    import fedjax_engine as fe  # pylint: disable=g-import-not-at-top
    from fedjax_engine import data as data_lib  # pylint: disable=g-import-not-at-top
    self.data = setup.train
    self.batching = setup.batching
    self.plan_kwargs = plan_kwargs(data_lib.gather_on_host, setup.train)
    self.key = jax.random.key(SEED)
    self.state = setup.algorithm.init(setup.params)
    self.server_update = jax.jit(setup.algorithm.server_update)
    self.client_opt = client_opt = setup.client_optimizer
    self.dropout = dropout
    model = setup.model

    def step(p, opt_state, batch, mask, key_data):
      key = None if key_data is None else jax.random.wrap_key_data(key_data)
      grads, loss = jax.grad(
          lambda p: fe.masked_loss(model, p, batch, mask, key),
          has_aux=True)(p)
      updates, opt_state = client_opt.update(grads, opt_state, p)
      return optax.apply_updates(p, updates), opt_state, loss

    self.step = jax.jit(step)

    @jax.jit
    def step_keys(round_key, ids):
      """Key data ``[C, S, 2]``: each client's key of each local step."""
      def client(k):
        k = jax.random.fold_in(k, data_lib.TRAIN_STREAM)
        return jax.vmap(lambda s: jax.random.key_data(
            jax.random.fold_in(k, s)))(jnp.arange(LOCAL_STEPS))
      return jax.vmap(client)(data_lib.client_keys(round_key, ids))

    self.step_keys = step_keys
    self._step_args = None

  def prepare(self, r, ids):
    """Untimed work before round ``r`` (none: the whole round is timed)."""

  def advance(self, r, ids):
    import jax  # pylint: disable=g-import-not-at-top
    import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
    import numpy as np  # pylint: disable=g-import-not-at-top
    import fedjax_engine as fe  # pylint: disable=g-import-not-at-top
    from fedjax_engine import data as data_lib  # pylint: disable=g-import-not-at-top
    round_key = jax.random.fold_in(self.key, r)
    cohort = data_lib.select(self.data, ids, num_padded=len(ids))
    cohort = data_lib.gather_on_host(
        self.data, cohort, round_key, batching=self.batching,
        num_steps=LOCAL_STEPS, **self.plan_kwargs)
    xs, ys, masks = cohort.batches['x'], cohort.batches['y'], cohort.example_mask
    keys = (np.asarray(self.step_keys(round_key, cohort.client_ids))
            if self.dropout else np.full((len(ids), LOCAL_STEPS), None))
    server_params = self.state.params
    server_np = jax.tree.map(np.asarray, server_params)
    total = jax.tree.map(np.zeros_like, server_np)
    total_weight = 0.0
    for i in range(len(ids)):
      p = server_params
      opt_state = self.client_opt.init(p)
      for s in range(LOCAL_STEPS):
        batch = {'x': xs[i, s], 'y': ys[i, s]}
        p, opt_state, _ = self.step(p, opt_state, batch, masks[i, s],
                                    keys[i, s])
      w = float(cohort.weights[i])
      total = jax.tree.map(lambda t, sv, cp: t + w * (sv - np.asarray(cp)),
                           total, server_np, p)
      total_weight += w
      if self._step_args is None:
        self._step_args = (server_params, self.client_opt.init(server_params),
                           batch, masks[i, 0], keys[i, 0])
    mean_delta = jax.tree.map(lambda t: t / total_weight, total)
    info = fe.RoundInfo(
        num_clients=jnp.asarray(len(ids), jnp.int32),
        total_weight=jnp.asarray(total_weight, jnp.float32),
        population=jnp.asarray(self.data.num_clients, jnp.int32))
    self.state = self.server_update(self.state, mean_delta, info)
    jax.block_until_ready(self.state)
    return 1

  def params(self):
    return _as_numpy(self.state.params)

  def xla_step_flops(self):
    """XLA's cost analysis of one compiled local step (no loops: reliable)."""
    if self._step_args is None:
      return None
    cost = self.step.lower(*self._step_args).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost['flops'])
