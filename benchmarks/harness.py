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
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
  sys.path.insert(0, HERE)

import workloads as wl  # pylint: disable=g-import-not-at-top,wrong-import-position

DEVICE_FLAG = '--xla_force_host_platform_device_count'
# Engine and naive params after round 0 on the same cohort and key agree when
# the L2 norm of their difference is at most this fraction of the L2 norm of
# the round's update. Measured: a different cohort or dropout key gives 0.7-0.8;
# float32 sums in another order give 1e-7 to 6e-7 for the dense models, and
# up to 2.3e-3 for the CNN, whose pre-activations come within 1e-8 of a ReLU
# or max-pool boundary, so rounding flips the odd unit and the update
# carries it.
CHECK_MAX_REL_UPDATE_ERR = 1e-2


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


def cpu_busy_s():
  """(busy CPU seconds of the whole machine, CPU seconds of this process)."""
  with open('/proc/stat') as f:
    fields = [int(v) for v in f.readline().split()[1:]]
  tick = os.sysconf('SC_CLK_TCK')
  idle = fields[3] + (fields[4] if len(fields) > 4 else 0)   # idle + iowait
  busy = (sum(fields[:8]) - idle) / tick   # user..steal, without guest
  own = resource.getrusage(resource.RUSAGE_SELF)
  return busy, own.ru_utime + own.ru_stime


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
  import jax  # pylint: disable=g-import-not-at-top
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


def make_runner(cfg, setup):
  workload = wl.WORKLOADS[cfg['workload']]
  impl = cfg['impl']
  if impl == 'naive':
    return wl.NaiveRunner(setup, cfg['clients'], dropout=workload.dropout)
  if impl == 'engine_compute':
    return wl.EngineComputeRunner(setup, cfg['clients'], chunk=cfg.get('chunk'))
  if impl in ('engine', 'engine_fused'):
    return wl.EngineRunner(setup, cfg['clients'], chunk=cfg.get('chunk'),
                           gather=cfg.get('gather', 'device'),
                           fused_rounds=cfg.get('fused_rounds', 1))
  raise ValueError(f'unknown implementation {impl!r}')


def time_rounds(cfg):
  """Times rounds of one configuration (see the module docstring)."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  workload = wl.WORKLOADS[cfg['workload']]
  c = cfg['clients']
  max_rounds, min_rounds = cfg['max_rounds'], cfg['min_rounds']
  time_budget = cfg['time_budget']
  config_budget = cfg.get('config_budget') or float('inf')
  t0 = time.perf_counter()
  setup = wl.build(workload, num_clients=cfg['num_clients'],
                   data_dir=cfg.get('data_dir'))
  runner = make_runner(cfg, setup)
  setup_s = time.perf_counter() - t0
  base_rss = current_rss_mib()
  ids = wl.cohorts(setup.train.num_clients, c, 2 + max_rounds)
  ids_of = lambda r: ids[r] if r < len(ids) else None

  initial = runner.params() if cfg.get('params_out') else None
  start = time.perf_counter()
  runner.prepare(0, ids_of(0))
  t0 = time.perf_counter()
  r = runner.advance(0, ids_of(0))
  first_s = time.perf_counter() - t0
  rounds_per_call = r
  if cfg.get('params_out'):
    save_params(cfg['params_out'], initial, runner.params())
  warmup_s = None
  if first_s < time_budget:
    runner.prepare(r, ids_of(r))
    t0 = time.perf_counter()
    r += runner.advance(r, ids_of(r))
    warmup_s = time.perf_counter() - t0

  times = []   # seconds per round (a fused call's time / its rounds)
  busy0 = cpu_busy_s()
  timing_start = time.perf_counter()
  while len(times) < max_rounds:
    if times:
      now = time.perf_counter()
      if len(times) >= min_rounds and now - timing_start > time_budget:
        break
      if now - start + rounds_per_call * float(np.mean(times)) > config_budget:
        break
    runner.prepare(r, ids_of(r))
    t0 = time.perf_counter()
    n = runner.advance(r, ids_of(r))
    dt = time.perf_counter() - t0
    times.extend([dt / n] * n)
    r += n
  wall = time.perf_counter() - timing_start
  others = others_cpu_frac(busy0, cpu_busy_s(), wall)

  times = np.asarray(times)
  mean, median = float(times.mean()), float(np.median(times))
  round_flops = workload.round_flops(c)
  out = dict(cfg)
  out.update(
      kind='round',
      chunk_used=getattr(runner, 'chunk_used', None),
      rounds_per_call=rounds_per_call,
      setup_s=setup_s,
      first_round_s=first_s,
      warmup_round_s=warmup_s,
      compile_s_est=max(first_s - rounds_per_call * median, 0.0),
      rounds_timed=int(times.size),
      round_s_mean=mean,
      round_s_median=median,
      round_s_min=float(times.min()),
      round_s_std=float(times.std()),
      examples_per_s=c * wl.LOCAL_STEPS * wl.BATCH_SIZE / mean,
      flops_per_round=round_flops,
      flops_per_s=round_flops / mean,
      rss_after_setup_mib=base_rss,
      peak_rss_mib=peak_rss_mib(),
      other_cpu_frac=others,
      load_avg_1m=os.getloadavg()[0],
      dataset_clients=setup.train.num_clients,
      dataset_examples=setup.train.num_examples,
      **device_info())
  if hasattr(runner, 'xla_round_flops'):
    out['xla_round_flops'] = runner.xla_round_flops()
  if hasattr(runner, 'xla_step_flops'):
    step = runner.xla_step_flops()
    out['xla_step_flops'] = step
    out['xla_flops_per_round_from_step'] = (
        step * c * wl.LOCAL_STEPS if step is not None else None)
  return out


def worker_main(argv=None):
  p = argparse.ArgumentParser()
  p.add_argument('--worker', required=True, help='configuration, JSON')
  p.add_argument('--worker_out', required=True, help='result row, JSON')
  args = p.parse_args(argv)
  cfg = json.loads(args.worker)
  if cfg['kind'] == 'matmul':
    out = dict(cfg, **matmul_peak(cfg['size'], cfg['repeats']))
  else:
    out = time_rounds(cfg)
  with open(args.worker_out, 'w') as f:
    json.dump(out, f)


# --------------------------------------------------------------------------
# Parent side.
# --------------------------------------------------------------------------

def child_env(devices):
  """The environment for a worker with ``devices`` XLA CPU devices.

  ``devices=None`` leaves ``XLA_FLAGS`` as it is (the caller's choice).
  """
  env = dict(os.environ)
  if devices is not None:
    flags = [f for f in env.get('XLA_FLAGS', '').split()
             if not f.startswith(DEVICE_FLAG)]
    env['XLA_FLAGS'] = ' '.join(flags + [f'{DEVICE_FLAG}={devices}'])
  return env


def run_worker(cfg, *, timeout=None):
  """Runs one configuration in a fresh subprocess; returns its result row.

  A worker that fails (or runs past ``timeout`` seconds) gives the
  configuration back with an ``error`` entry instead of raising, so one
  crash does not lose the rest of a long run.
  """
  fd, path = tempfile.mkstemp(suffix='.json')
  os.close(fd)
  cmd = [sys.executable, os.path.abspath(__file__), '--worker', json.dumps(cfg),
         '--worker_out', path]
  try:
    proc = subprocess.run(cmd, env=child_env(cfg.get('devices')),
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


def compare_params(got_path, want_path):
  """Do two workers' params after round 0 agree? (from :func:`save_params`)

  ``rel_update_err`` is ``|got - want| / |want - initial|`` in the L2 norm
  over all parameters; ``ok`` when the two started from the same params and
  it is at most ``CHECK_MAX_REL_UPDATE_ERR``.
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
  rel = norm([g - w for g, w in zip(got, want)]) / max(update, 1e-30)
  return dict(
      ok=bool(same_start and update > 0 and rel <= CHECK_MAX_REL_UPDATE_ERR),
      same_initial_params=same_start, rel_update_err=rel, update_norm=update,
      max_abs_err=max(float(np.max(np.abs(g - w))) for g, w in zip(got, want)),
      max_rel_update_err_allowed=CHECK_MAX_REL_UPDATE_ERR)


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
