r"""Round speed: the compiled engine round vs. a naive Python loop of jitted steps.

Workload: FedAvg on LEAF Synthetic(1, 1) (1,000 clients, seed 0), 10 local
steps of batch 20 per client, client ``optax.sgd(0.05)``, server
``optax.sgd(1.0)``; models: multinomial logistic regression (610 params) and
the 60-200-200-10 MLP (54,410 params); 10, 100 and 1,000 clients per round.

Measured for every (model, clients per round):

* ``engine``: ``fe.make_round(..., client_chunk_size=K)`` for K = None (the
  engine's default; the K it picked is recorded), 1 and C (all clients in one
  vmap), with the default ``gather='device'``; plus the default K with
  ``gather='host'``.
* ``naive``: the pattern of FedJAX and most FL simulators: per round, the
  cohort's batches are gathered on the host from the same index plans
  (``fedjax_engine.data.gather_on_host``), then, in Python, for each client,
  one jitted SGD step is called per local step, the client's delta is pulled
  to numpy and averaged there, and a jitted server update applies the mean.

Before any timing, the naive round's params after one round are asserted
equal to the engine's (default chunk size) on the same cohort and key, so
both sides do the same work.

Method: every configuration runs in a fresh subprocess, so its compile cache
is cold and its peak RSS (``VmHWM`` in /proc/self/status) is its own; the RSS
after imports and data generation is recorded too, so the peak can be read as
a delta. In a subprocess: round 0 is timed as "first round (incl. compile)",
round 1 is a warm-up, then rounds 2, 3, ... are timed one by one (each ended
by ``jax.block_until_ready`` on the new server state and metrics) until
``--max_rounds`` rounds or ``--time_budget`` seconds, with at least
``--min_rounds``. Each round draws a different cohort (numpy
``choice(N, C, replace=False)`` from one seeded generator, the same sequence
for every configuration) and uses the key ``fold_in(key, round)``. Timed
rounds include ``rnd.select`` (engine) and the host gather (naive). The
share of CPU time other processes used while a row was timed (from
/proc/stat) is recorded with it, so rows measured on a busy machine show.

Usage:

  python benchmarks/round_speed.py                   # full run, ~5-10 min
  python benchmarks/round_speed.py --quick           # smoke test, ~1 min
  python benchmarks/round_speed.py --models=mlp --clients=100
  python benchmarks/round_speed.py --models=mlp --extra_chunks=5,10,25
  # the cohort split over one XLA CPU device per core:
  XLA_FLAGS=--xla_force_host_platform_device_count=2 \
      python benchmarks/round_speed.py --out=benchmarks/results/x.json

Writes ``benchmarks/results/round_speed.json`` and prints a markdown table.
"""

import argparse
import datetime
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
NUM_CLIENTS = 1000
BATCH_SIZE = 20
LOCAL_STEPS = 10
CLIENT_LR = 0.05
SERVER_LR = 1.0
SEED = 0
MODELS = ('logistic', 'mlp')


# --------------------------------------------------------------------------
# Workload (imported lazily so the parent process stays light).
# --------------------------------------------------------------------------

def build(model_name):
  import jax  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  import fedjax_engine as fe  # pylint: disable=g-import-not-at-top
  train, _ = fe.datasets.synthetic(alpha=1, beta=1, num_clients=NUM_CLIENTS,
                                   seed=SEED)
  if model_name == 'logistic':
    model = fe.models.logistic_regression(num_features=60, num_classes=10)
  elif model_name == 'mlp':
    model = fe.models.mlp(num_features=60, num_classes=10)
  else:
    raise ValueError(f'unknown model {model_name!r}')
  client_opt = optax.sgd(CLIENT_LR)
  server_opt = optax.sgd(SERVER_LR)
  algo = fe.algorithms.fedavg(model, client_optimizer=client_opt,
                              server_optimizer=server_opt)
  batching = fe.Batching(batch_size=BATCH_SIZE, local_steps=LOCAL_STEPS)
  params = model.init(jax.random.key(SEED))
  return train, model, algo, batching, params, client_opt


def cohorts(num_rounds, clients_per_round):
  """The same sequence of distinct-client cohorts for every configuration."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(1234)
  return [np.sort(rng.choice(NUM_CLIENTS, clients_per_round, replace=False))
          for _ in range(num_rounds)]


def plan_kwargs(fn, data):
  """``max_size=...`` for index-plan functions that take it.

  The sort-based plan of earlier engine versions padded every client to the
  dataset's bucketed largest size; the sort-free plan has no such argument.
  """
  import inspect  # pylint: disable=g-import-not-at-top
  from fedjax_engine import data as data_lib  # pylint: disable=g-import-not-at-top
  fn = getattr(fn, '__wrapped__', fn)
  if 'max_size' in inspect.signature(fn).parameters:
    return dict(max_size=data_lib.bucket(int(data.sizes.max(initial=1))))
  return {}


class EngineRunner:
  """Runs rounds of ``fe.make_round``."""

  def __init__(self, model_name, clients_per_round, chunk, gather='device'):
    import jax  # pylint: disable=g-import-not-at-top
    import fedjax_engine as fe  # pylint: disable=g-import-not-at-top
    train, _, algo, batching, params, _ = build(model_name)
    self.rnd = fe.make_round(algo, train, clients_per_round=clients_per_round,
                             batching=batching, client_chunk_size=chunk,
                             gather=gather)
    self.state = algo.init(params)
    self.key = jax.random.key(SEED)

  def prepare(self, r, ids):
    """Untimed work before round ``r`` (none: the whole round is timed)."""

  def round(self, r, ids):
    import jax  # pylint: disable=g-import-not-at-top
    cohort = self.rnd.select(ids)
    self.state, _, metrics = self.rnd(self.state, (), cohort,
                                      jax.random.fold_in(self.key, r))
    jax.block_until_ready((self.state, metrics))

  @property
  def params(self):
    return self.state.params


class EngineComputeRunner(EngineRunner):
  """Diagnostic: the engine's compiled round alone, without plan and gather.

  The cohort's batches are planned and gathered on the host and placed on
  the device *before* the timer starts; the timed part is the compiled
  round program (local training, aggregation, server update) on those
  batches. Uses the Round's private ``_jitted``; the difference to the full
  engine rows is the cost of the index plan and the gather.
  """

  def __init__(self, model_name, clients_per_round, chunk):
    super().__init__(model_name, clients_per_round, chunk, gather='host')
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

  def round(self, r, ids):
    import jax  # pylint: disable=g-import-not-at-top
    rnd = self.rnd
    cohort, key, num_steps = self._prepared
    state = self.state
    if hasattr(rnd, '_replicated'):
      state = jax.device_put(state, rnd._replicated)  # pylint: disable=protected-access
    self.state, _, metrics = rnd._jitted(  # pylint: disable=protected-access
        state, (), cohort, key, None, num_steps=num_steps)
    jax.block_until_ready((self.state, metrics))


class NaiveRunner:
  """One jitted SGD step per client per local step, called from Python."""

  def __init__(self, model_name, clients_per_round):
    import jax  # pylint: disable=g-import-not-at-top
    import optax  # pylint: disable=g-import-not-at-top
    import fedjax_engine as fe  # pylint: disable=g-import-not-at-top
    from fedjax_engine import data as data_lib  # pylint: disable=g-import-not-at-top
    train, model, algo, batching, params, client_opt = build(model_name)
    self.data = train
    self.batching = batching
    self.plan_kwargs = plan_kwargs(data_lib.gather_on_host, train)
    self.num_padded = clients_per_round
    self.key = jax.random.key(SEED)
    self.state = algo.init(params)
    self.server_update = jax.jit(algo.server_update)
    self.client_opt = client_opt

    def loss_fn(p, batch, mask):
      return fe.masked_loss(model, p, batch, mask, None)

    grad_fn = jax.grad(loss_fn, has_aux=True)

    @jax.jit
    def step(p, opt_state, batch, mask):
      grads, loss = grad_fn(p, batch, mask)
      updates, opt_state = client_opt.update(grads, opt_state, p)
      return optax.apply_updates(p, updates), opt_state, loss

    self.step = step

  def prepare(self, r, ids):
    """Untimed work before round ``r`` (none: the whole round is timed)."""

  def round(self, r, ids):
    import jax  # pylint: disable=g-import-not-at-top
    import numpy as np  # pylint: disable=g-import-not-at-top
    from fedjax_engine import data as data_lib  # pylint: disable=g-import-not-at-top
    round_key = jax.random.fold_in(self.key, r)
    cohort = data_lib.select(self.data, ids, num_padded=len(ids))
    cohort = data_lib.gather_on_host(
        self.data, cohort, round_key, batching=self.batching,
        num_steps=LOCAL_STEPS, **self.plan_kwargs)
    xs, ys, masks = cohort.batches['x'], cohort.batches['y'], cohort.example_mask
    server_params = self.state.params
    server_np = jax.tree.map(np.asarray, server_params)
    total = jax.tree.map(np.zeros_like, server_np)
    total_weight = 0.0
    for i in range(len(ids)):
      p = server_params
      opt_state = self.client_opt.init(p)
      for s in range(LOCAL_STEPS):
        p, opt_state, _ = self.step(p, opt_state, {'x': xs[i, s], 'y': ys[i, s]},
                                    masks[i, s])
      w = float(cohort.weights[i])
      total = jax.tree.map(lambda t, sv, cp: t + w * (sv - np.asarray(cp)),
                           total, server_np, p)
      total_weight += w
    mean_delta = jax.tree.map(lambda t: t / total_weight, total)
    info = fe_round_info(len(ids), total_weight)
    self.state = self.server_update(self.state, mean_delta, info)
    jax.block_until_ready(self.state)

  @property
  def params(self):
    return self.state.params


def fe_round_info(num_clients, total_weight):
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import fedjax_engine as fe  # pylint: disable=g-import-not-at-top
  return fe.RoundInfo(num_clients=jnp.asarray(num_clients, jnp.int32),
                      total_weight=jnp.asarray(total_weight, jnp.float32))


def make_runner(cfg):
  if cfg['impl'] == 'naive':
    return NaiveRunner(cfg['model'], cfg['clients'])
  if cfg['impl'] == 'engine_compute':
    return EngineComputeRunner(cfg['model'], cfg['clients'], cfg['chunk'])
  return EngineRunner(cfg['model'], cfg['clients'], cfg['chunk'],
                      gather=cfg.get('gather', 'device'))


def rss_mib():
  """Peak RSS of this process image so far, MiB.

  ``VmHWM`` from /proc/self/status: unlike ``getrusage``'s ``ru_maxrss``,
  which a child inherits from its parent across fork and exec, the
  high-water mark belongs to the exec'd image, so it is this worker's own.
  """
  try:
    with open('/proc/self/status') as f:
      for line in f:
        if line.startswith('VmHWM:'):
          return int(line.split()[1]) / 1024.0
  except OSError:
    pass
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def cpu_busy_s():
  """(busy CPU seconds of the whole machine, CPU seconds of this process)."""
  with open('/proc/stat') as f:
    fields = [int(v) for v in f.readline().split()[1:]]
  tick = os.sysconf('SC_CLK_TCK')
  idle = fields[3] + (fields[4] if len(fields) > 4 else 0)   # idle + iowait
  busy = (sum(fields[:8]) - idle) / tick   # user..steal, without guest
  own = resource.getrusage(resource.RUSAGE_SELF)
  return busy, own.ru_utime + own.ru_stime


def current_rss_mib():
  with open('/proc/self/statm') as f:
    return int(f.read().split()[1]) * os.sysconf('SC_PAGE_SIZE') / 2**20


# --------------------------------------------------------------------------
# Worker: one configuration in a fresh process.
# --------------------------------------------------------------------------

def run_config(cfg, *, min_rounds, max_rounds, time_budget):
  import numpy as np  # pylint: disable=g-import-not-at-top
  c = cfg['clients']
  t0 = time.perf_counter()
  runner = make_runner(cfg)
  setup_s = time.perf_counter() - t0
  base_rss = current_rss_mib()
  all_cohorts = cohorts(2 + max_rounds, c)

  runner.prepare(0, all_cohorts[0])
  t0 = time.perf_counter()
  runner.round(0, all_cohorts[0])
  first_s = time.perf_counter() - t0
  runner.prepare(1, all_cohorts[1])
  t0 = time.perf_counter()
  runner.round(1, all_cohorts[1])
  warmup_s = time.perf_counter() - t0

  times = []
  busy0, own0 = cpu_busy_s()
  start = time.perf_counter()
  for r in range(2, 2 + max_rounds):
    if len(times) >= min_rounds and time.perf_counter() - start > time_budget:
      break
    runner.prepare(r, all_cohorts[r])
    t0 = time.perf_counter()
    runner.round(r, all_cohorts[r])
    times.append(time.perf_counter() - t0)
  wall = time.perf_counter() - start
  busy1, own1 = cpu_busy_s()
  # Share of the machine's CPU time used by other processes while timing.
  # /proc/stat counts in clock ticks (10 ms): too coarse under half a second.
  others = (min(max(busy1 - busy0 - (own1 - own0), 0.0)
                / (wall * os.cpu_count()), 1.0) if wall >= 0.5 else None)
  times = np.asarray(times)
  mean = float(times.mean())
  out = dict(cfg)
  chunk_used = None
  if cfg['impl'] != 'naive':
    chunk_used = runner.rnd.chunk_size
  out.update(
      chunk_used=chunk_used,
      setup_s=setup_s,
      first_round_s=first_s,
      warmup_round_s=warmup_s,
      compile_s_est=max(first_s - float(np.median(times)), 0.0),
      rounds_timed=int(times.size),
      round_s_mean=mean,
      round_s_median=float(np.median(times)),
      round_s_min=float(times.min()),
      round_s_std=float(times.std()),
      examples_per_s=c * LOCAL_STEPS * BATCH_SIZE / mean,
      rss_after_setup_mib=base_rss,
      peak_rss_mib=rss_mib(),
      # Fraction of all cores' time that OTHER processes used while the
      # rounds were timed (from /proc/stat minus this process's CPU time):
      # 0 on a quiet machine; 0.5 on 2 cores = one core taken by others.
      other_cpu_frac=others,
      load_avg_1m=os.getloadavg()[0],
  )
  return out


def worker_main(args):
  cfg = json.loads(args.worker)
  out = run_config(cfg, min_rounds=args.min_rounds, max_rounds=args.max_rounds,
                   time_budget=args.time_budget)
  with open(args.worker_out, 'w') as f:
    json.dump(out, f)


# --------------------------------------------------------------------------
# Parent: equality check, then every configuration in its own subprocess.
# --------------------------------------------------------------------------

def check_equal_work(model_name, clients_per_round):
  """Naive and engine (default chunk) params after one round match."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  ids = cohorts(1, clients_per_round)[0]
  engine = EngineRunner(model_name, clients_per_round, None)
  naive = NaiveRunner(model_name, clients_per_round)
  start = jax.tree.map(np.asarray, engine.params)
  engine.round(0, ids)
  naive.round(0, ids)
  got, want = (jax.tree.map(np.asarray, naive.params),
               jax.tree.map(np.asarray, engine.params))
  moved = max(float(np.abs(w - s).max()) for w, s in
              zip(jax.tree.leaves(want), jax.tree.leaves(start)))
  assert moved > 1e-3, 'the round did not change the params'
  worst = 0.0
  for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-6)
    worst = max(worst, float(np.max(np.abs(g - w) / (np.abs(w) + 1e-6))))
  return dict(model=model_name, clients=clients_per_round,
              max_rel_err=worst, max_param_change=moved)


def plan_cost(clients_per_round, repeats=5):
  """Steady-state seconds of the jitted index plan for one cohort."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import fedjax_engine as fe  # pylint: disable=g-import-not-at-top
  from fedjax_engine import data as data_lib  # pylint: disable=g-import-not-at-top
  train, _ = fe.datasets.synthetic(alpha=1, beta=1, num_clients=NUM_CLIENTS,
                                   seed=SEED)
  batching = fe.Batching(batch_size=BATCH_SIZE, local_steps=LOCAL_STEPS)
  kwargs = plan_kwargs(data_lib.plan_cohort, train)
  starts = jnp.asarray(train.offsets[:-1], jnp.int32)
  sizes = jnp.asarray(train.sizes, jnp.int32)
  times = []
  for r, ids in enumerate(cohorts(repeats + 1, clients_per_round)):
    cohort = data_lib.select(train, ids, num_padded=clients_per_round)
    t0 = time.perf_counter()
    out = data_lib.plan_cohort(
        jax.random.fold_in(jax.random.key(0), r),
        jnp.asarray(cohort.client_ids), jnp.asarray(cohort.client_mask),
        starts, sizes, batching=batching, num_steps=LOCAL_STEPS,
        **kwargs)
    jax.block_until_ready(out)
    if r:
      times.append(time.perf_counter() - t0)
  return dict(clients=clients_per_round, max_size=kwargs.get('max_size'),
              plan_s=sum(times) / len(times))


def engine_version():
  """Git commit of the checkout and a digest of uncommitted engine changes."""
  import hashlib  # pylint: disable=g-import-not-at-top
  root = os.path.dirname(HERE)
  def git(*argv):
    try:
      return subprocess.run(('git', '-C', root) + argv, capture_output=True,
                            text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
      return None
  commit = git('rev-parse', '--short', 'HEAD')
  diff = git('diff', 'HEAD', '--', 'fedjax_engine', 'algorithms', 'datasets')
  return dict(
      commit=commit.strip() if commit else None,
      uncommitted_engine_changes=(
          hashlib.sha1(diff.encode()).hexdigest()[:10] if diff else None))


def machine_info():
  import jax  # pylint: disable=g-import-not-at-top
  import jaxlib  # pylint: disable=g-import-not-at-top
  cpu = platform.processor() or 'unknown'
  try:
    with open('/proc/cpuinfo') as f:
      for line in f:
        if line.startswith('model name'):
          cpu = line.split(':', 1)[1].strip()
          break
  except OSError:
    pass
  try:
    with open('/proc/meminfo') as f:
      mem_gib = int(f.readline().split()[1]) / 2**20
  except (OSError, ValueError, IndexError):
    mem_gib = None
  return dict(
      cpu=cpu, cores=os.cpu_count(),
      affinity=len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity')
      else None,
      mem_gib=mem_gib, python=platform.python_version(),
      jax=jax.__version__, jaxlib=jaxlib.__version__,
      backend=jax.default_backend(), devices=len(jax.devices()),
      date=datetime.datetime.now(datetime.timezone.utc).isoformat(
          timespec='seconds'),
      load_avg_start=os.getloadavg(),
      xla_flags=os.environ.get('XLA_FLAGS', ''),
      engine=engine_version())


def run_subprocess(cfg, args):
  with tempfile.NamedTemporaryFile(suffix='.json', delete=False) as f:
    path = f.name
  cmd = [sys.executable, os.path.abspath(__file__), '--worker', json.dumps(cfg),
         '--worker_out', path, '--min_rounds', str(cfg['min_rounds']),
         '--max_rounds', str(cfg['max_rounds']),
         '--time_budget', str(cfg['time_budget'])]
  try:
    subprocess.run(cmd, check=True)
    with open(path) as f:
      return json.load(f)
  finally:
    os.unlink(path)


def label(r):
  if r['impl'] == 'naive':
    return 'naive loop'
  if r['impl'] == 'engine_compute':
    return (f"engine K=default (->{r['chunk_used']}), compiled round only "
            '(no plan/gather)')
  k = 'default' if r['chunk'] is None else ('all' if r['chunk'] == r['clients']
                                            else str(r['chunk']))
  s = f"engine K={k}"
  if r['chunk'] is None:
    s += f" (->{r['chunk_used']})"
  if r.get('gather', 'device') == 'host':
    s += ', host gather'
  return s


def table(results):
  lines = [
      '| model | C | implementation | s/round (mean) | median | rounds | first round '
      '(incl. compile) s | compile (est.) s | examples/s | speedup vs naive '
      '| peak RSS MiB (after setup) | others\' CPU |',
      '|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|']
  naive = {(r['model'], r['clients']): r['round_s_mean'] for r in results
           if r['impl'] == 'naive'}
  for r in results:
    base = naive.get((r['model'], r['clients']))
    speed = f"{base / r['round_s_mean']:.1f}x" if base else '-'
    lines.append(
        f"| {r['model']} | {r['clients']} | {label(r)} | "
        f"{r['round_s_mean']:.4f} | {r['round_s_median']:.4f} | "
        f"{r['rounds_timed']} | {r['first_round_s']:.2f} | "
        f"{r['compile_s_est']:.2f} | "
        f"{r['examples_per_s']:,.0f} | {speed} | "
        f"{r['peak_rss_mib']:.0f} ({r['rss_after_setup_mib']:.0f}) | "
        + (f"{100 * r['other_cpu_frac']:.0f}% |"
           if r.get('other_cpu_frac') is not None else 'n/a |'))
  return '\n'.join(lines)


def verdict(results):
  """The acceptance criteria, checked on the measured numbers."""
  by = {}
  for r in results:
    by.setdefault((r['model'], r['clients']), []).append(r)
  lines = []
  def get(model, c, pred):
    return [r for r in by.get((model, c), []) if pred(r)]
  default = lambda r: (r['impl'] == 'engine' and r['chunk'] is None
                       and r.get('gather', 'device') == 'device')
  naive = lambda r: r['impl'] == 'naive'
  verdicts = {}
  d, n = get('logistic', 100, default), get('logistic', 100, naive)
  if d and n:
    s = n[0]['round_s_mean'] / d[0]['round_s_mean']
    verdicts['logistic_100_at_least_10x'] = s >= 10
    lines.append(f"- logistic, C=100: engine (default) is {s:.1f}x the naive "
                 f"loop's speed -> {'PASS' if s >= 10 else 'FAIL'} (>= 10x)")
  for c in (10, 100, 1000):
    d, n = get('mlp', c, default), get('mlp', c, naive)
    if d and n:
      s = n[0]['round_s_mean'] / d[0]['round_s_mean']
      verdicts[f'mlp_{c}_not_slower'] = s >= 1
      lines.append(f"- mlp, C={c}: engine (default) is {s:.2f}x the naive "
                   f"loop's speed -> {'PASS' if s >= 1 else 'FAIL'} (>= 1x)")
  for (model, c), rs in sorted(by.items()):
    d = [r for r in rs if default(r)]
    others = [r for r in rs if r['impl'] == 'engine' and not default(r)
              and r.get('gather', 'device') == 'device']
    if d and others:
      best = min(others, key=lambda r: r['round_s_mean'])
      ratio = d[0]['round_s_mean'] / best['round_s_mean']
      if best['chunk'] != d[0]['chunk_used'] and ratio > 1.05:
        lines.append(
            f"- {model}, C={c}: default chunk K={d[0]['chunk_used']} is "
            f"{ratio:.2f}x slower than {label(best)} "
            f"({d[0]['round_s_mean']:.4f} vs {best['round_s_mean']:.4f} s/round)")
  return lines, verdicts


def main():
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--models', default=','.join(MODELS))
  p.add_argument('--clients', default='10,100,1000')
  p.add_argument('--min_rounds', type=int, default=3,
                 help='timed rounds at least (2 for the naive loop at C>=1000)')
  p.add_argument('--max_rounds', type=int, default=200)
  p.add_argument('--time_budget', type=float, default=5.0,
                 help='stop timing a configuration after this many seconds '
                 '(once min_rounds are done)')
  p.add_argument('--quick', action='store_true',
                 help='smoke test: logistic, C=10, few rounds')
  p.add_argument('--extra_chunks', default='',
                 help='comma-separated extra client_chunk_size values to time '
                 '(those strictly between 1 and C), e.g. 5,10,25')
  p.add_argument('--skip_check', action='store_true')
  p.add_argument('--breakdown', action=argparse.BooleanOptionalAction,
                 default=True,
                 help='also time the compiled round alone on batches gathered '
                 'beforehand (default K), to separate plan+gather cost')
  p.add_argument('--out', default=os.path.join(HERE, 'results',
                                               'round_speed.json'))
  p.add_argument('--worker', help=argparse.SUPPRESS)
  p.add_argument('--worker_out', help=argparse.SUPPRESS)
  args = p.parse_args()
  if args.worker:
    return worker_main(args)

  if args.quick:
    args.models, args.clients = 'logistic', '10'
    args.max_rounds, args.time_budget = 3, 1.0
  args.extra_chunks = sorted(
      {int(k) for k in args.extra_chunks.split(',') if k}, reverse=True)
  models = args.models.split(',')
  clients = [int(c) for c in args.clients.split(',')]
  info = machine_info()
  print(f"# {info['cpu']}, {info['cores']} cores, jax {info['jax']} "
        f"({info['backend']}), {info['date']}, load avg {info['load_avg_start']}"
        f", engine {info['engine']}", flush=True)

  checks = []
  if not args.skip_check:
    for model in models:
      for c in clients:
        checks.append(check_equal_work(model, c))
        print(f'equal-work check {model} C={c}: OK (max rel err '
              f"{checks[-1]['max_rel_err']:.1e})", flush=True)
  plans = [plan_cost(c) for c in clients]
  for pc in plans:
    print(f"index plan alone, C={pc['clients']}: {pc['plan_s'] * 1e3:.1f} ms "
          + (f"(max_size={pc['max_size']})" if pc['max_size'] else ''),
          flush=True)

  results = []
  t_all = time.perf_counter()
  for model in models:
    for c in clients:
      cfgs = [dict(impl='engine', chunk=None), dict(impl='engine', chunk=1),
              dict(impl='engine', chunk=c),
              dict(impl='engine', chunk=None, gather='host'),
              dict(impl='naive', chunk=None)]
      for k in args.extra_chunks:
        if 1 < k < c:
          cfgs.insert(3, dict(impl='engine', chunk=k))
      if args.breakdown:
        cfgs.insert(len(cfgs) - 1, dict(impl='engine_compute', chunk=None))
      seen = set()
      for cfg in cfgs:
        key = (cfg['impl'], cfg['chunk'], cfg.get('gather'))
        if key in seen:   # C=1: K=1 and K=all coincide
          continue
        seen.add(key)
        cfg.update(model=model, clients=c)
        slow_naive = cfg['impl'] == 'naive' and c >= 1000
        cfg['min_rounds'] = 2 if slow_naive else args.min_rounds
        cfg['max_rounds'] = 2 if slow_naive else args.max_rounds
        cfg['time_budget'] = args.time_budget
        r = run_subprocess(cfg, args)
        results.append(r)
        print(f"{model:8s} C={c:5d} {label(r):32s} "
              f"{r['round_s_mean']:.4f} s/round ({r['rounds_timed']} rounds), "
              f"first {r['first_round_s']:.2f} s, peak RSS "
              f"{r['peak_rss_mib']:.0f} MiB, other procs' CPU "
        + (f"{100 * r['other_cpu_frac']:.0f}%"
           if r['other_cpu_frac'] is not None else 'n/a'),
        flush=True)
  info['load_avg_end'] = os.getloadavg()
  info['benchmark_wall_s'] = time.perf_counter() - t_all

  lines, verdicts = verdict(results)
  md = table(results)
  print()
  print(f"Machine: {info['cpu']}, {info['cores']} cores, {info['mem_gib']:.0f} "
        f"GiB, jax/jaxlib {info['jax']}/{info['jaxlib']} ({info['backend']}, "
        f"{info['devices']} device(s)), "
        f"{info['date']}; engine commit {info['engine']['commit']}"
        + (f" + uncommitted changes {info['engine']['uncommitted_engine_changes']}"
           if info['engine']['uncommitted_engine_changes'] else '')
        + f"; load avg start {info['load_avg_start']}, end "
        f"{info['load_avg_end']}")
  print()
  print(md)
  print()
  print('\n'.join(lines))
  print('\nNaive loop at C >= 1000: 2 timed rounds only (after 1 warm-up); '
        'other rows: rounds until the time budget, see "rounds".')
  os.makedirs(os.path.dirname(args.out), exist_ok=True)
  with open(args.out, 'w') as f:
    json.dump(dict(
        workload=dict(dataset='synthetic(alpha=1, beta=1)',
                      num_clients=NUM_CLIENTS, seed=SEED,
                      batch_size=BATCH_SIZE, local_steps=LOCAL_STEPS,
                      client_optimizer=f'sgd({CLIENT_LR})',
                      server_optimizer=f'sgd({SERVER_LR})'),
        method=dict(
            isolation='one subprocess per configuration',
            first_round='round 0 wall time, includes tracing and compilation',
            warmup_rounds=1,
            timed_rounds='rounds 2.. until max_rounds or time_budget s '
                         '(at least min_rounds); naive at C>=1000: 2 rounds',
            min_rounds=args.min_rounds, max_rounds=args.max_rounds,
            time_budget_s=args.time_budget,
            peak_rss='VmHWM (/proc/self/status) of the subprocess',
            equal_work_check='naive vs engine(default K) params after one '
                             'round, rtol 1e-4, atol 1e-6'),
        machine=info, checks=checks, plan_cost=plans, results=results,
        acceptance=verdicts, notes=lines), f, indent=1)
  print(f"\nwrote {args.out}")


if __name__ == '__main__':
  main()
