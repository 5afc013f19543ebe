r"""How the speed benchmarks measure: one configuration per fresh subprocess.

A configuration is a JSON-able dict. The parent (``suite.py``,
``round_speed.py``) hands it to :func:`run_worker`, which starts
``python benchmarks/harness.py --worker CONFIG`` with the XLA CPU device count
the configuration asks for and reads back one result row. In the worker:

* ``kind='matmul'``: the best time of a large f32 matmul, as FLOP/s.
* ``kind='round'``: build the workload (data, model, runner), then time
  round 0 ("first round", includes tracing and compilation), save the params
  after it when ``params_out`` is set (the parent compares engine and naive
  params on the same cohort and key), run round 1 as a warm-up unless round 0
  alone took longer than ``time_budget``, then time rounds one by one (each
  ended by ``jax.block_until_ready``) until ``max_rounds`` rounds, or
  ``time_budget`` seconds once ``min_rounds`` are done, or earlier when one
  more round would end past ``config_budget`` seconds after round 0 started
  (at least one round is always timed).

``suite.py`` times the implementations of one (workload, clients per
round) in turns with :func:`run_interleaved`: each in its own worker
(``--serve``), all set up and compiled one after the other, then timed in
alternating segments, so that a machine whose speed drifts (shared hosts
drift by tens of percent over minutes) slows them alike and their ratio
stays honest.

A fresh process per configuration gives each a cold compile cache and its own
peak RSS (``VmHWM`` of /proc/self/status: ``getrusage``'s ``ru_maxrss`` would
include the parent's, which a child inherits). The share of the machine's
CPU time other processes used while a row was timed is recorded with it
(from /proc/stat minus the worker's own CPU time), so rows timed on a busy
machine show.

The parent never initialises a JAX backend (on a GPU it would take the
memory the workers need); backend and devices are reported by the workers.
"""

import argparse
import datetime
import hashlib
import importlib.metadata
import json
import os
import platform
import resource
import select
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
  sys.path.insert(0, HERE)

import workloads as wl  # pylint: disable=g-import-not-at-top,wrong-import-position

DEVICE_FLAG = '--xla_force_host_platform_device_count'
# The engine's low-memory row (README, "Memory"): the round compiled with
# compile_for='memory' (XLA:CPU's loop emitters), and, process-wide, two
# malloc arenas: glibc gives each thread that allocates its own arena, where
# memory freed by XLA's worker threads stays mapped.
LOW_MEMORY_ENV = {'MALLOC_ARENA_MAX': '2'}
# --------------------------------------------------------------------------
# Process measurements.
# --------------------------------------------------------------------------

def peak_rss_mib():
  """Peak RSS of this process image so far (``VmHWM``), MiB."""
  try:
    with open('/proc/self/status') as f:
      for line in f:
        if line.startswith('VmHWM:'):
          return int(line.split()[1]) / 1024.0
  except OSError:
    pass
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def current_rss_mib():
  with open('/proc/self/statm') as f:
    return int(f.read().split()[1]) * os.sysconf('SC_PAGE_SIZE') / 2**20


def rss_parts_mib(pid='self'):
  """(private, file-backed) resident MiB of a process right now.

  ``RssAnon`` is the process's own memory: heaps, arrays, compiled code.
  ``RssFile`` is mostly the pages of shared libraries it has touched
  (jaxlib's is 350 MB on disk, libtorch's larger): clean, shared between
  processes and dropped first under memory pressure, yet part of RSS.
  """
  parts = {'RssAnon:': 0.0, 'RssFile:': 0.0}
  try:
    with open(f'/proc/{pid}/status') as f:
      for line in f:
        key = line.split(None, 1)[0]
        if key in parts:
          parts[key] = int(line.split()[1]) / 1024.0
  except OSError:
    pass
  return parts['RssAnon:'], parts['RssFile:']


def descendants():
  """Pids of this process's live descendants (a peer's helper processes).

  Flower's Ray (GCS, raylet, actors) runs a simulation's clients in
  processes of its own; their memory and CPU time are the peer's.
  """
  children = {}
  for d in os.listdir('/proc'):
    if not d.isdigit():
      continue
    try:
      with open(f'/proc/{d}/stat') as f:
        ppid = int(f.read().rsplit(')', 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
      continue   # gone since listdir
    children.setdefault(ppid, []).append(int(d))
  out, stack = [], list(children.get(os.getpid(), []))
  while stack:
    pid = stack.pop()
    out.append(pid)
    stack.extend(children.get(pid, []))
  return out


def _proc_hwm_mib(pid):
  try:
    with open(f'/proc/{pid}/status') as f:
      for line in f:
        if line.startswith('VmHWM:'):
          return int(line.split()[1]) / 1024.0
  except OSError:
    pass
  return 0.0


def peak_rss_tree_mib():
  """(own ``VmHWM`` + every live descendant's, descendants counted), MiB.

  The sum of the peaks bounds the peak of the sum from above.
  """
  pids = descendants()
  return peak_rss_mib() + sum(_proc_hwm_mib(p) for p in pids), len(pids)


def _proc_cpu_s(pid):
  try:
    with open(f'/proc/{pid}/stat') as f:
      fields = f.read().rsplit(')', 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf('SC_CLK_TCK')
  except (OSError, ValueError, IndexError):
    return 0.0


def cpu_busy_s():
  """(busy CPU seconds of the whole machine, CPU seconds of this process).

  This process's seconds include its live descendants' (a peer's helper
  processes are its own work, not other load).
  """
  with open('/proc/stat') as f:
    fields = [int(v) for v in f.readline().split()[1:]]
  tick = os.sysconf('SC_CLK_TCK')
  idle = fields[3] + (fields[4] if len(fields) > 4 else 0)   # idle + iowait
  busy = (sum(fields[:8]) - idle) / tick   # user..steal, without guest
  own = resource.getrusage(resource.RUSAGE_SELF)
  return busy, (own.ru_utime + own.ru_stime
                + sum(_proc_cpu_s(p) for p in descendants()))


def others_cpu_frac(before, after, wall):
  """Share of all cores' time OTHER processes used between two samples.

  0 on a quiet machine; 0.5 on 2 cores means one core was taken by others.
  /proc/stat counts 10 ms ticks: too coarse under half a second (None).
  """
  if wall < 0.5:
    return None
  busy = after[0] - before[0] - (after[1] - before[1])
  return min(max(busy, 0.0) / (wall * os.cpu_count()), 1.0)


def device_info():
  try:
    import jax  # pylint: disable=g-import-not-at-top
  except ImportError:   # a peer's venv without JAX (PyTorch peers)
    return dict(backend='cpu', devices=1, device_kind='cpu')
  devices = jax.devices()
  return dict(backend=jax.default_backend(), devices=len(devices),
              device_kind=devices[0].device_kind)


# --------------------------------------------------------------------------
# Worker side.
# --------------------------------------------------------------------------

def matmul_peak(size, repeats):
  """Best-of-``repeats`` FLOP/s of a ``size`` x ``size`` f32 matmul (jit)."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  ka, kb = jax.random.split(jax.random.key(0))
  a = jax.random.normal(ka, (size, size), jnp.float32)
  b = jax.random.normal(kb, (size, size), jnp.float32)
  dot = jax.jit(jnp.matmul)
  jax.block_until_ready(dot(a, b))   # compile and warm up
  times = []
  busy0 = cpu_busy_s()
  start = time.perf_counter()
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(dot(a, b))
    times.append(time.perf_counter() - t0)
  wall = time.perf_counter() - start
  flops = 2.0 * size ** 3
  return dict(kind='matmul', size=size, repeats=repeats,
              best_s=min(times), median_s=sorted(times)[len(times) // 2],
              flops_per_s=flops / min(times),
              other_cpu_frac=others_cpu_frac(busy0, cpu_busy_s(), wall),
              **device_info())


PEERS = ('fedjax', 'pfl', 'flower')   # benchmarks/peers/<peer>_worker.py


def peer_python(peer):
  """The peer's venv python (``bash benchmarks/peers/setup.sh`` makes it)."""
  return os.path.join(HERE, 'peers', '.venvs', peer, 'bin', 'python')


def peer_module(peer):
  """``benchmarks/peers/<peer>_worker.py`` (imported in the peer's venv)."""
  peers_dir = os.path.join(HERE, 'peers')
  if peers_dir not in sys.path:
    sys.path.insert(0, peers_dir)
  return importlib.import_module(f'{peer}_worker')


def make_runner(cfg, setup):
  workload = wl.WORKLOADS[cfg['workload']]
  impl = cfg['impl']
  if impl in PEERS:
    return peer_module(impl).Runner(setup, cfg)
  if impl == 'naive':
    return wl.NaiveRunner(setup, cfg['clients'], dropout=workload.dropout)
  if impl == 'engine_compute':
    return wl.EngineComputeRunner(setup, cfg['clients'], chunk=cfg.get('chunk'))
  if impl in ('engine', 'engine_fused', 'engine_lowmem'):
    return wl.EngineRunner(
        setup, cfg['clients'], chunk=cfg.get('chunk'),
        gather=cfg.get('gather', 'device'),
        fused_rounds=cfg.get('fused_rounds', 1),
        compile_for='memory' if impl == 'engine_lowmem' else 'speed')
  raise ValueError(f'unknown implementation {impl!r}')


_COMPILE_S = [0.0]   # seconds JAX spent tracing, lowering and compiling


def _count_compile_time():
  """Adds JAX's compile-duration events up in ``_COMPILE_S`` (once)."""
  if getattr(_count_compile_time, 'done', False):
    return
  try:
    import jax  # pylint: disable=g-import-not-at-top
    register = jax.monitoring.register_event_duration_secs_listener
  except (ImportError, AttributeError):   # a peer without JAX or too old a JAX
    _count_compile_time.done = True
    _COMPILE_S[0] = None
    return
  def listener(name, seconds, **_):
    if name.startswith('/jax/core/compile/'):
      _COMPILE_S[0] += seconds
  register(listener)
  _count_compile_time.done = True


class RoundTimer:
  """Rounds of one configuration, timed in one or more segments.

  Construction builds the workload and runner, times round 0 (``first
  round``: tracing and compilation included), saves the params after it when
  ``params_out`` is set, and runs one warm-up round unless round 0 alone took
  longer than ``time_budget``. JAX's compile-duration events during round 0
  give ``compile_s``. :meth:`segment` then times calls (each ended by
  ``jax.block_until_ready``); :meth:`result` is the row.
  """

  def __init__(self, cfg):
    self.cfg = cfg
    workload = wl.WORKLOADS[cfg['workload']]
    self.max_rounds = cfg['max_rounds']
    self.config_budget = cfg.get('config_budget') or float('inf')
    t0 = time.perf_counter()
    if cfg['impl'] in PEERS:   # the workload the engine exported
      peer_module(cfg['impl'])   # puts benchmarks/peers on sys.path
      import common  # pylint: disable=g-import-not-at-top
      self.setup = common.Setup(cfg['export_dir'], cfg['workload'],
                                cfg['clients'])
    else:
      self.setup = wl.build(workload, num_clients=cfg['num_clients'],
                            data_dir=cfg.get('data_dir'))
    self.runner = runner = make_runner(cfg, self.setup)
    self.setup_s = time.perf_counter() - t0
    self.base_rss = current_rss_mib()
    self.private_mib = rss_parts_mib()[0]
    self.ids = wl.cohorts(self.setup.train.num_clients, cfg['clients'],
                          2 + self.max_rounds)
    initial = runner.params() if cfg.get('params_out') else None
    _count_compile_time()
    compiled_before = _COMPILE_S[0]
    self.start = time.perf_counter()
    self.first_s = self._call(0)
    # No high-water mark exists for private memory alone: take the largest
    # of its values after setup, after round 0 (compilation) and at the end.
    self.private_mib = max(self.private_mib, rss_parts_mib()[0])
    # Tracing, lowering and XLA compilation of every program round 0 built,
    # as JAX's own compile-duration events report them.
    self.compile_s = (None if _COMPILE_S[0] is None
                      else _COMPILE_S[0] - compiled_before)
    self.r = self.first_n = self.last_n
    # The most rounds a call runs (a fused engine's first call runs one).
    self.rounds_per_call = getattr(runner, 'rounds_per_call', self.last_n)
    if cfg.get('params_out'):
      save_params(cfg['params_out'], initial, runner.params())
    self.warmup_s = None
    if self.first_s < cfg['time_budget']:
      self.warmup_s = self._call(self.r)
      self.r += self.last_n
    self.times = []   # seconds per round (a fused call's time / its rounds)
    self.busy_s = self.wall_s = self.own_s = 0.0

  def _call(self, r):
    ids = self.ids[r] if r < len(self.ids) else None
    self.runner.prepare(r, ids)
    t0 = time.perf_counter()
    self.last_n = self.runner.advance(r, ids)
    return time.perf_counter() - t0

  @property
  def done(self):
    return len(self.times) >= self.max_rounds

  def segment(self, budget_s, min_rounds, max_rounds=None):
    """Times calls until ``budget_s`` once ``min_rounds`` are timed.

    Also stops once ``max_rounds`` rounds are timed in the segment or in
    all, or when one more call would end past ``config_budget`` seconds
    after round 0 started; the configuration's first timed call always
    runs.
    """
    import numpy as np  # pylint: disable=g-import-not-at-top
    busy0 = cpu_busy_s()
    start = time.perf_counter()
    timed = 0
    while not self.done and timed < (max_rounds or self.max_rounds):
      now = time.perf_counter()
      if timed and timed >= min_rounds and now - start > budget_s:
        break
      if self.times and (now - self.start + self.rounds_per_call * float(
          np.mean(self.times)) > self.config_budget):
        break
      dt = self._call(self.r)
      n = self.last_n
      self.times.extend([dt / n] * n)
      self.r += n
      timed += n
    busy1 = cpu_busy_s()
    self.wall_s += time.perf_counter() - start
    self.busy_s += busy1[0] - busy0[0]
    self.own_s += busy1[1] - busy0[1]
    return timed

  def result(self):
    import numpy as np  # pylint: disable=g-import-not-at-top
    cfg, runner = self.cfg, self.runner
    workload = wl.WORKLOADS[cfg['workload']]
    c = cfg['clients']
    times = np.asarray(self.times)
    mean, median = float(times.mean()), float(np.median(times))
    round_flops = workload.round_flops(c)
    peak_tree, helpers = peak_rss_tree_mib()
    private_now, file_now = rss_parts_mib()
    helpers_private = sum(rss_parts_mib(p)[0] for p in descendants())
    out = dict(cfg)
    out.update(
        kind='round',
        chunk_used=getattr(runner, 'chunk_used', None),
        rounds_per_call=self.rounds_per_call,
        first_call_rounds=self.first_n,
        compile_for=getattr(getattr(runner, 'rnd', None), 'compile_for', None),
        setup_s=self.setup_s,
        first_round_s=self.first_s,
        warmup_round_s=self.warmup_s,
        compile_s_est=max(self.first_s - self.first_n * median, 0.0),
        compile_s=self.compile_s,
        rounds_timed=int(times.size),
        round_s_mean=mean,
        round_s_median=median,
        round_s_min=float(times.min()),
        round_s_std=float(times.std()),
        examples_per_s=c * wl.LOCAL_STEPS * wl.BATCH_SIZE / mean,
        flops_per_round=round_flops,
        flops_per_s=round_flops / mean,
        rss_after_setup_mib=self.base_rss,
        peak_rss_mib=peak_tree,
        peak_rss_own_mib=peak_rss_mib(),
        private_rss_mib=max(self.private_mib, private_now) + helpers_private,
        shared_lib_rss_mib=file_now,
        xla_flags=os.environ.get('XLA_FLAGS', ''),
        malloc_arena_max=os.environ.get('MALLOC_ARENA_MAX'),
        helper_processes=helpers,
        other_cpu_frac=others_cpu_frac((0.0, 0.0), (self.busy_s, self.own_s),
                                       self.wall_s),
        load_avg_1m=os.getloadavg()[0],
        dataset_clients=self.setup.train.num_clients,
        dataset_examples=self.setup.train.num_examples,
        **device_info())
    if hasattr(runner, 'info'):   # peers: versions, threads
      out.update(runner.info())
    if hasattr(runner, 'xla_round_flops'):
      out['xla_round_flops'] = runner.xla_round_flops()
    if hasattr(runner, 'xla_step_flops'):
      step = runner.xla_step_flops()
      out['xla_step_flops'] = step
      out['xla_flops_per_round_from_step'] = (
          step * c * wl.LOCAL_STEPS if step is not None else None)
    return out


def export_workload(cfg):
  """Writes a workload for the peers (``peers/common.py`` reads it).

  The clients (``x``, ``y``, ``offsets``), the engine's initial params by
  leaf path, and for each clients-per-round C the engine's index plan of
  round 0 (cohort 0 of :func:`workloads.cohorts`, round key
  ``fold_in(key(SEED), 0)``), its mask and the clients' weights.
  """
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from fedjax_engine import data as data_lib  # pylint: disable=g-import-not-at-top
  sys.path.insert(0, os.path.join(HERE, 'peers'))
  import common  # pylint: disable=g-import-not-at-top
  t0 = time.perf_counter()
  workload = wl.WORKLOADS[cfg['workload']]
  setup = wl.build(workload, num_clients=cfg['num_clients'],
                   data_dir=cfg.get('data_dir'))
  folder = cfg['export_dir']
  train = setup.train
  path = common.data_path(folder, workload.name)
  if not os.path.exists(path):
    np.savez(path, x=np.asarray(train.features['x']),
             y=np.asarray(train.features['y']),
             offsets=np.asarray(train.offsets))
    flat, _ = jax.tree_util.tree_flatten_with_path(setup.params)
    names = ['/'.join(str(getattr(k, 'key', k)) for k in kp) for kp, _ in flat]
    np.savez(common.params_path(folder, workload.name), names=np.array(names),
             **{f'p{i}': np.asarray(x) for i, (_, x) in enumerate(flat)})
  round_key = jax.random.fold_in(jax.random.key(wl.SEED), 0)
  for c in cfg['clients']:
    ids = wl.cohorts(train.num_clients, c, 1)[0]
    cohort = data_lib.select(train, ids, num_padded=len(ids))
    rows, mask = data_lib.plan_cohort(   # as data_lib.gather_on_host calls it
        round_key, jax.numpy.asarray(cohort.client_ids),
        jax.numpy.asarray(cohort.client_mask),
        jax.numpy.asarray(train.offsets[:-1], jax.numpy.int32),
        jax.numpy.asarray(train.sizes, jax.numpy.int32),
        batching=setup.batching, num_steps=wl.LOCAL_STEPS)
    np.savez(common.plan_path(folder, workload.name, c), ids=ids,
             rows=np.asarray(rows), mask=np.asarray(mask),
             weights=np.asarray(cohort.weights))
  return dict(export_s=time.perf_counter() - t0)


def time_rounds(cfg):
  """Times rounds of one configuration in one segment of ``time_budget``."""
  timer = RoundTimer(cfg)
  timer.segment(cfg['time_budget'], cfg['min_rounds'])
  return timer.result()


# A served worker's replies start with this, so that anything else a
# library prints to stdout cannot be mistaken for one.
REPLY = '@@harness '


def serve(cfg, out_path):
  """Times ``cfg`` in segments the parent asks for on stdin.

  Replies ``ready`` once round 0 and the warm-up are done; then, per line
  ``segment <seconds> <min_rounds> <max_rounds>``, times a segment and
  replies with the rounds it timed; ``result`` writes the row to ``out_path`` and ends.
  """
  timer = RoundTimer(cfg)
  print(REPLY + 'ready', flush=True)
  for line in sys.stdin:
    words = line.split()
    if words[0] == 'segment':
      n = timer.segment(float(words[1]), int(words[2]), int(words[3]))
      print(REPLY + f'timed {n}', flush=True)
    elif words[0] == 'result':
      with open(out_path, 'w') as f:
        json.dump(timer.result(), f)
      print(REPLY + 'done', flush=True)
      return


def worker_main(argv=None):
  p = argparse.ArgumentParser()
  p.add_argument('--worker', required=True, help='configuration, JSON')
  p.add_argument('--worker_out', required=True, help='result row, JSON')
  p.add_argument('--serve', action='store_true',
                 help='time in segments asked for on stdin (serve())')
  args = p.parse_args(argv)
  cfg = json.loads(args.worker)
  if args.serve:
    serve(cfg, args.worker_out)
    return
  if cfg['kind'] == 'matmul':
    out = dict(cfg, **matmul_peak(cfg['size'], cfg['repeats']))
  elif cfg['kind'] == 'export':
    out = dict(cfg, **export_workload(cfg))
  else:
    out = time_rounds(cfg)
  with open(args.worker_out, 'w') as f:
    json.dump(out, f)


# --------------------------------------------------------------------------
# Parent side.
# --------------------------------------------------------------------------

def child_env(devices, extra_flags=()):
  """The environment for a worker with ``devices`` XLA CPU devices.

  ``devices=None`` leaves the device count in ``XLA_FLAGS`` as it is (the
  caller's choice); ``extra_flags`` are added to ``XLA_FLAGS``.
  """
  env = dict(os.environ)
  flags = env.get('XLA_FLAGS', '').split()
  if devices is not None:
    flags = [f for f in flags if not f.startswith(DEVICE_FLAG)]
    flags.append(f'{DEVICE_FLAG}={devices}')
  flags += list(extra_flags)
  if flags:
    env['XLA_FLAGS'] = ' '.join(flags)
  return env


def worker_env(cfg):
  if cfg.get('impl') != 'engine_lowmem':
    return child_env(cfg.get('devices'))
  return dict(child_env(cfg.get('devices')), **LOW_MEMORY_ENV)


def run_worker(cfg, *, timeout=None):
  """Runs one configuration in a fresh subprocess; returns its result row.

  A worker that fails (or runs past ``timeout`` seconds) gives the
  configuration back with an ``error`` entry instead of raising, so one
  crash does not lose the rest of a long run.
  """
  fd, path = tempfile.mkstemp(suffix='.json')
  os.close(fd)
  cmd = [cfg.get('python') or sys.executable, os.path.abspath(__file__),
         '--worker', json.dumps(cfg), '--worker_out', path]
  try:
    proc = subprocess.run(cmd, env=worker_env(cfg),
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, timeout=timeout, check=False)
    if proc.returncode:
      tail = proc.stdout.strip().splitlines()[-20:] or ['']
      return dict(cfg, error=f'worker exited with {proc.returncode}: '
                  f'{tail[-1]}', output_tail=tail)
    with open(path) as f:
      return json.load(f)
  except subprocess.TimeoutExpired:
    return dict(cfg, error=f'worker ran past {timeout:.0f} s and was stopped')
  finally:
    os.unlink(path)


class _Served:
  """A worker in ``--serve`` mode and its replies (see :func:`serve`)."""

  def __init__(self, cfg, timeout):
    fd, self.out_path = tempfile.mkstemp(suffix='.json')
    os.close(fd)
    self.log = tempfile.TemporaryFile(mode='w+')
    self.proc = subprocess.Popen(
        [cfg.get('python') or sys.executable, os.path.abspath(__file__),
         '--worker', json.dumps(cfg), '--worker_out', self.out_path,
         '--serve'],
        env=worker_env(cfg), stdin=subprocess.PIPE,
        stdout=subprocess.PIPE, stderr=self.log)
    self.deadline = time.monotonic() + (timeout or float('inf'))
    self.pending = b''
    self.error = None

  def reply(self):
    """The next reply line; anything else on stdout is skipped."""
    fd = self.proc.stdout.fileno()
    while True:
      while b'\n' in self.pending:
        line, self.pending = self.pending.split(b'\n', 1)
        line = line.decode(errors='replace')
        if line.startswith(REPLY):
          return line[len(REPLY):].strip()
      left = self.deadline - time.monotonic()
      if left <= 0 or not select.select([fd], [], [], left)[0]:
        raise TimeoutError('ran past its time limit and was stopped')
      chunk = os.read(fd, 65536)
      if not chunk:
        raise EOFError(f'worker exited with {self.proc.wait()}')
      self.pending += chunk

  def ask(self, command):
    self.proc.stdin.write((command + '\n').encode())
    self.proc.stdin.flush()
    return self.reply()

  def fail(self, exc):
    self.proc.kill()
    self.proc.wait()
    self.log.seek(0)
    tail = self.log.read().strip().splitlines()[-20:] or ['']
    self.error = dict(error=f'{exc}: {tail[-1]}', output_tail=tail)

  def close(self):
    if self.proc.poll() is None:
      self.proc.kill()
      self.proc.wait()
    self.log.close()
    os.unlink(self.out_path)


def run_interleaved(cfgs, *, segments, timeout=None):
  """Times configurations in turns, so that they share the machine's mood.

  On a shared or throttled machine speed drifts by tens of percent over
  minutes; timing one configuration after the other puts that drift into
  their ratio. Here every configuration gets its own worker, started one
  after the other (compilation and round 0 never overlap); then each times
  ``time_budget / segments`` seconds in turn, ``segments`` times over, while
  the others wait idle. Returns one row per configuration, in order; a
  worker that fails gives an ``error`` row and the others go on.
  """
  served = []
  try:
    for cfg in cfgs:
      w = _Served(cfg, timeout)
      served.append(w)
      try:
        if w.reply() != 'ready':
          raise RuntimeError('unexpected reply')
      except (TimeoutError, EOFError, RuntimeError) as exc:
        w.fail(exc)
    for _ in range(segments):
      for w, cfg in zip(served, cfgs):
        if w.error is None:
          try:
            w.ask(f"segment {cfg['time_budget'] / segments} "
                  f"{-(-cfg['min_rounds'] // segments)} "
                  f"{-(-cfg['max_rounds'] // segments)}")
          except (TimeoutError, EOFError) as exc:
            w.fail(exc)
    rows = []
    for w, cfg in zip(served, cfgs):
      if w.error is None:
        try:
          w.ask('result')
          with open(w.out_path) as f:
            row = json.load(f)
          row['timing_segments'] = segments
          rows.append(row)
          continue
        except (TimeoutError, EOFError, OSError, ValueError) as exc:
          w.fail(exc)
      rows.append(dict(cfg, **w.error))
    return rows
  finally:
    for w in served:
      w.close()


def save_params(path, initial, final):
  """Saves a worker's params before and after round 0 (lists of arrays)."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  arrays = {f'initial_{i}': x for i, x in enumerate(initial)}
  arrays.update({f'final_{i}': x for i, x in enumerate(final)})
  np.savez(path, **arrays)


def load_params(path):
  import numpy as np  # pylint: disable=g-import-not-at-top
  with np.load(path) as f:
    n = len(f.files) // 2
    return ([f[f'initial_{i}'] for i in range(n)],
            [f[f'final_{i}'] for i in range(n)])


def compare_params(got_path, want_path, *,
                   tolerance=wl.CHECK_MAX_REL_UPDATE_ERR):
  """Do two workers' params after round 0 agree? (from :func:`save_params`)

  ``rel_update_err`` is ``|got - want| / |want - initial|`` in the L2 norm
  over all parameters; ``ok`` when the two started from the same params and
  it is at most ``tolerance`` (the workload's ``check_tolerance``).
  """
  import numpy as np  # pylint: disable=g-import-not-at-top
  (got_init, got), (want_init, want) = load_params(got_path), load_params(
      want_path)
  if [x.shape for x in got] != [x.shape for x in want]:
    return dict(ok=False, error='parameter shapes differ')
  norm = lambda xs: float(np.sqrt(sum(np.sum(np.square(
      x.astype(np.float64))) for x in xs)))
  same_start = all(np.array_equal(a, b) for a, b in zip(got_init, want_init))
  update = norm([w - s for w, s in zip(want, want_init)])
  got_update = norm([g - s for g, s in zip(got, got_init)])
  rel = norm([g - w for g, w in zip(got, want)]) / max(update, 1e-30)
  return dict(
      ok=bool(same_start and update > 0 and rel <= tolerance),
      same_initial_params=same_start, rel_update_err=rel, update_norm=update,
      update_norm_ratio=got_update / max(update, 1e-30),
      max_abs_err=max(float(np.max(np.abs(g - w))) for g, w in zip(got, want)),
      max_rel_update_err_allowed=tolerance)


def engine_version():
  """Git commit of the checkout and a digest of uncommitted engine changes."""
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
  """The machine and software, without initialising a JAX backend."""
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
  def version(pkg):
    try:
      return importlib.metadata.version(pkg)
    except importlib.metadata.PackageNotFoundError:
      return None
  return dict(
      cpu=cpu, cores=os.cpu_count(),
      affinity=len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity')
      else None,
      mem_gib=mem_gib, python=platform.python_version(),
      jax=version('jax'), jaxlib=version('jaxlib'),
      date=datetime.datetime.now(datetime.timezone.utc).isoformat(
          timespec='seconds'),
      load_avg_start=os.getloadavg(),
      xla_flags=os.environ.get('XLA_FLAGS', ''),
      engine=engine_version())


def describe_machine(info):
  engine = info['engine']
  return (f"{info['cpu']}, {info['cores']} cores, "
          + (f"{info['mem_gib']:.0f} GiB, " if info.get('mem_gib') else '')
          + f"Python {info['python']}, jax/jaxlib {info['jax']}/{info['jaxlib']}"
          + (f" ({info['backend']}, {info['device_kind']})"
             if info.get('backend') else '')
          + f", {info['date']}, engine commit {engine['commit']}"
          + (f" + uncommitted engine changes {engine['uncommitted_engine_changes']}"
             if engine['uncommitted_engine_changes'] else '')
          + f"; load avg at start {info['load_avg_start']}"
          + (f", at end {info['load_avg_end']}" if 'load_avg_end' in info
             else ''))


def fmt_others(r):
  frac = r.get('other_cpu_frac')
  return 'n/a' if frac is None else f'{100 * frac:.0f}%'


if __name__ == '__main__':
  worker_main()
