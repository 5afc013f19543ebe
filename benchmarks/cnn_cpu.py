"""The EMNIST CNN FedAvg round on CPU: the engine against plain PyTorch.

Issue 13, item 1: the engine's compiled round must be at least 1.5x faster
than PyTorch on the same workload at 10 and 100 clients per round. The
workload is the suite's ``emnist_cnn`` (``workloads.py``): FedAvg, 10 local
SGD steps (lr 0.05) of batch 20 per client, server SGD 1.0, the EMNIST CNN
(1,206,590 parameters, about 143 GFLOP a round at C = 10).

Rows, each timed in its own subprocess:

* **engine**: ``fe.make_round`` as ``workloads.EngineRunner`` runs it (one
  compiled call per round, batches gathered on the device), with
  ``--conv_impls`` (default 'auto' and 'slices'; 'auto' is Winograd for the
  second convolution on CPU) on 1 and 2 XLA CPU devices
  (``--xla_force_host_platform_device_count``).
* **torch**: ``cnn_cpu_torch.py`` under ``--torch_python``: the same model
  and round in plain PyTorch, clients one after another, at
  ``torch.set_num_threads`` 1 and 2; the faster is the baseline.

Every row runs ``--segments`` times, the rows in turns (``engine 1 dev,
engine 2 dev, torch 1, torch 2, engine 1 dev, ...``), so drifts of the
machine's speed (and other processes) fall on all rows alike; a row's
s/round is the median of its timed rounds over all segments. The large-matmul
peak (4096 x 4096 f32, jitted, best of 5) is measured first. ``--profile``
instead times the pieces of one local step (batch 20): forward, weight
gradient and input gradient of each layer for each convolution form, the
pooling, the dropout masks, and a whole local step.

Usage::

  bash benchmarks/peers/setup.sh pfl     # a venv with PyTorch 2.13 (CPU)
  python benchmarks/cnn_cpu.py           # its python is the default
  python benchmarks/cnn_cpu.py --profile

Results: ``benchmarks/results/cnn_cpu.json`` (``cnn_cpu_profile.json``).
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import workloads as wl  # pylint: disable=g-import-not-at-top,wrong-import-position

RESULTS = os.path.join(HERE, 'results')


def _env(devices):
  env = dict(os.environ)
  flags = env.get('XLA_FLAGS', '')
  env['XLA_FLAGS'] = (
      f'{flags} --xla_force_host_platform_device_count={devices}').strip()
  return env


def _jax_timeit(fn, *args, seconds=0.5, blocks=5):
  """Best per-call time over ``blocks`` blocks of calls of jitted ``fn``."""
  import jax  # pylint: disable=g-import-not-at-top
  fn = jax.jit(fn)
  jax.block_until_ready(fn(*args))
  start, calls = time.perf_counter(), 0
  while time.perf_counter() - start < seconds / 2:
    jax.block_until_ready(fn(*args))
    calls += 1
  per_block = max(1, calls // blocks)
  best = float('inf')
  for _ in range(blocks):
    t = time.perf_counter()
    for _ in range(per_block):
      out = fn(*args)
    jax.block_until_ready(out)
    best = min(best, (time.perf_counter() - t) / per_block)
  return best


def engine_worker(clients, conv_impl, rounds):
  """Times ``rounds`` engine rounds after two untimed ones; JSON lines."""
  import jax  # pylint: disable=g-import-not-at-top
  from fedjax_engine.models import cnn  # pylint: disable=g-import-not-at-top
  workload = wl.WORKLOADS['emnist_cnn']._replace(
      model=lambda: cnn.emnist_cnn(conv_impl=conv_impl))
  setup = wl.build(workload)
  runner = wl.EngineRunner(setup, clients)
  ids = wl.cohorts(wl.NUM_CLIENTS, clients, rounds + 2)
  t = time.perf_counter()
  runner.advance(0, ids[0])
  first = time.perf_counter() - t
  runner.advance(1, ids[1])
  for r in range(2, rounds + 2):
    t = time.perf_counter()
    runner.advance(r, ids[r])
    print(json.dumps(dict(
        impl='engine', conv_impl=conv_impl, clients=clients,
        devices=jax.device_count(), chunk=runner.chunk_used, round=r,
        round_s=time.perf_counter() - t, first_round_s=first,
        peak_rss_mib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    )), flush=True)


def matmul_peak():
  import harness  # pylint: disable=g-import-not-at-top
  print(json.dumps(harness.matmul_peak(4096, 5)), flush=True)


def _run(cmd, env=None, timeout=1800):
  proc = subprocess.run(cmd, env=env, capture_output=True, text=True,
                        timeout=timeout, check=False)
  rows = [json.loads(line) for line in proc.stdout.splitlines()
          if line.startswith('{')]
  if proc.returncode or not rows:
    return [dict(error=proc.stderr[-2000:], cmd=' '.join(cmd))]
  return rows


def _loadavg():
  with open('/proc/loadavg') as f:
    return [float(v) for v in f.read().split()[:3]]


def profile(args):
  """Times of the pieces of one local step at batch 20, on this process."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  import fedjax_engine as fe  # pylint: disable=g-import-not-at-top
  from fedjax_engine.models import cnn  # pylint: disable=g-import-not-at-top
  batch = wl.BATCH_SIZE
  rng = np.random.default_rng(0)
  rows = []

  def add(piece, impl, seconds, flops):
    rows.append(dict(piece=piece, impl=impl, ms=seconds * 1e3,
                     gflop=flops / 1e9, gflop_per_s=flops / seconds / 1e9))
    print(f'{piece:28s} {impl:9s} {seconds * 1e3:7.2f} ms '
          f'{flops / seconds / 1e9:6.1f} GFLOP/s', flush=True)

  def conv(impl):
    if impl == 'xla':
      return lambda x, k: jax.lax.conv_general_dilated(
          x, k, (1, 1), 'VALID', dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
    if impl == 'slices':
      return lambda x, k: cnn.conv2d_slices(x, k, padding='VALID')
    tile = int(impl[len('winograd'):] or 4)
    return lambda x, k: cnn.conv2d_winograd(x, k, padding='VALID', tile=tile)

  # FLOPs are the direct convolution's, so GFLOP/s compare across forms.
  for name, x_shape, k_shape, in_grad in (
      ('conv1 1->32', (batch, 28, 28, 1), (3, 3, 1, 32), False),
      ('conv2 32->64', (batch, 26, 26, 32), (3, 3, 32, 64), True)):
    x = jnp.asarray(rng.normal(size=x_shape), jnp.float32)
    k = jnp.asarray(rng.normal(size=k_shape) * 0.1, jnp.float32)
    out = x_shape[1] - 2
    flops = 2 * batch * out * out * 9 * k_shape[2] * k_shape[3]
    for impl in ('xla', 'slices', 'winograd2', 'winograd4'):
      f = conv(impl)
      dy = jnp.ones((batch, out, out, k_shape[3]), jnp.float32)
      add(f'{name} forward', impl, _jax_timeit(f, x, k), flops)
      add(f'{name} weight grad', impl, _jax_timeit(
          lambda x, k, dy, f=f: jax.vjp(lambda k: f(x, k), k)[1](dy)[0],
          x, k, dy), flops)
      if in_grad:
        add(f'{name} input grad', impl, _jax_timeit(
            lambda x, k, dy, f=f: jax.vjp(lambda x: f(x, k), x)[1](dy)[0],
            x, k, dy), flops)
  x = jnp.asarray(rng.normal(size=(batch, 9216)), jnp.float32)
  w = jnp.asarray(rng.normal(size=(128, 9216)) * 0.01, jnp.float32)
  dy = jnp.ones((batch, 128), jnp.float32)
  flops = 2 * batch * 9216 * 128
  dense = lambda x, w: x @ w.T
  add('dense1 9216->128 forward', 'matmul', _jax_timeit(dense, x, w), flops)
  add('dense1 weight grad', 'matmul', _jax_timeit(
      lambda x, w, dy: jax.vjp(lambda w: dense(x, w), w)[1](dy)[0], x, w, dy),
      flops)
  add('dense1 input grad', 'matmul', _jax_timeit(
      lambda x, w, dy: jax.vjp(lambda x: dense(x, w), x)[1](dy)[0], x, w, dy),
      flops)
  x = jnp.asarray(rng.normal(size=(batch, 24, 24, 64)), jnp.float32)
  dy = jnp.ones((batch, 12, 12, 64), jnp.float32)
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  for impl, pool in (
      ('flax', lambda x: nn.max_pool(jax.nn.relu(x), (2, 2), (2, 2))),
      ('reshape', lambda x: jax.nn.relu(cnn._max_pool(x)))):  # pylint: disable=protected-access
    add('relu+maxpool fwd+bwd', impl, _jax_timeit(
        lambda x, dy, pool=pool: jax.vjp(pool, x)[1](dy)[0], x, dy), 0)
  for impl in ('threefry2x32', 'rbg'):
    key = jax.random.key(0, impl=impl)
    add('dropout masks', impl, _jax_timeit(lambda k: (
        jax.random.bernoulli(k, 0.75, (batch, 12, 12, 64)),
        jax.random.bernoulli(jax.random.fold_in(k, 1), 0.5, (batch, 128))),
                                           key), 0)
  # A whole local step (loss, gradient, SGD), as the engine runs it.
  data = {'x': jnp.asarray(rng.random((batch, 28, 28)), jnp.float32),
          'y': jnp.asarray(rng.integers(0, 62, batch), jnp.int32)}
  mask = jnp.ones((batch,), bool)
  for impl in ('slices', 'auto'):
    model = cnn.emnist_cnn(conv_impl=impl)
    params = model.init(jax.random.key(0))
    opt = optax.sgd(wl.CLIENT_LR)

    def step(p, key, model=model, opt=opt):
      g, _ = jax.grad(lambda p: fe.masked_loss(model, p, data, mask, key),
                      has_aux=True)(p)
      return optax.apply_updates(p, opt.update(g, opt.init(p))[0])

    add('whole local step', impl, _jax_timeit(step, params, jax.random.key(1)),
        wl.WORKLOADS['emnist_cnn'].train_flops * batch)
  with open(os.path.join(RESULTS, 'cnn_cpu_profile.json'), 'w') as f:
    json.dump(dict(batch=batch, devices=jax.device_count(),
                   load_avg=_loadavg(), rows=rows), f, indent=1)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--torch_python', default=os.path.join(
      HERE, 'peers', '.venvs', 'pfl', 'bin', 'python'),
                      help='an interpreter with PyTorch (default: the pfl '
                      "peer's venv, bash benchmarks/peers/setup.sh pfl)")
  parser.add_argument('--clients', default='10,100')
  parser.add_argument('--devices', default='1,2')
  parser.add_argument('--threads', default='1,2')
  parser.add_argument('--conv_impls', default='auto,slices')
  parser.add_argument('--segments', type=int, default=2)
  parser.add_argument('--rounds', type=int, default=3,
                      help='timed rounds per row and segment')
  parser.add_argument('--profile', action='store_true')
  parser.add_argument('--out', default=os.path.join(RESULTS, 'cnn_cpu.json'))
  parser.add_argument('--worker', help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.worker == 'engine':
    return engine_worker(int(args.clients), args.conv_impls, args.rounds)
  if args.worker == 'matmul':
    return matmul_peak()
  if args.profile:
    return profile(args)
  me = [sys.executable, os.path.abspath(__file__)]
  torch_script = os.path.join(HERE, 'cnn_cpu_torch.py')
  load_start = _loadavg()
  peak = _run(me + ['--worker=matmul'], env=_env(1))[0]
  print('matmul peak', peak.get('flops_per_s', 0) / 1e9, 'GFLOP/s', flush=True)
  rows = []
  for clients in [int(c) for c in args.clients.split(',')]:
    configs = [('engine', impl, int(d)) for impl in args.conv_impls.split(',')
               for d in args.devices.split(',')]
    configs += [('torch', None, int(t)) for t in args.threads.split(',')]
    for segment in range(args.segments):
      for kind, impl, n in configs:
        if kind == 'engine':
          got = _run(me + ['--worker=engine', f'--clients={clients}',
                           f'--conv_impls={impl}', f'--rounds={args.rounds}'],
                     env=_env(n))
        else:
          got = _run([args.torch_python, torch_script, f'--clients={clients}',
                      f'--threads={n}', f'--rounds={args.rounds}'])
        for row in got:
          row.update(segment=segment, load_avg=_loadavg(),
                     config=f'{kind} {impl or ""} {n}'.replace('  ', ' '))
          print(json.dumps(row), flush=True)
        rows += got
  summary = summarize(rows, peak.get('flops_per_s'))
  for line in summary:
    print(json.dumps(line))
  os.makedirs(RESULTS, exist_ok=True)
  with open(args.out, 'w') as f:
    json.dump(dict(workload='emnist_cnn', method=__doc__, matmul=peak,
                   load_avg_start=load_start, load_avg_end=_loadavg(),
                   summary=summary, rows=rows), f, indent=1)


def summarize(rows, peak):
  """Median s/round per (config, clients), and the engine/torch ratios."""
  import statistics  # pylint: disable=g-import-not-at-top
  groups = {}
  for r in rows:
    if 'round_s' in r:
      groups.setdefault((r['config'], r['clients']), []).append(r)
  out = []
  for (config, clients), rs in sorted(groups.items()):
    med = statistics.median(r['round_s'] for r in rs)
    flops = wl.WORKLOADS['emnist_cnn'].round_flops(clients)
    out.append(dict(config=config, clients=clients, round_s_median=med,
                    round_s_min=min(r['round_s'] for r in rs),
                    rounds=len(rs), gflop_per_s=flops / med / 1e9,
                    pct_of_matmul_peak=100 * flops / med / peak if peak else None,
                    peak_rss_mib=max(r['peak_rss_mib'] for r in rs)))
  for clients in sorted({o['clients'] for o in out}):
    best = {}
    for o in out:
      if o['clients'] == clients:
        kind = o['config'].split()[0]
        if o['round_s_median'] < best.get(kind, (float('inf'),))[0]:
          best[kind] = (o['round_s_median'], o['config'])
    if 'engine' in best and 'torch' in best:
      out.append(dict(clients=clients, best_engine=best['engine'],
                      best_torch=best['torch'],
                      torch_over_engine=best['torch'][0] / best['engine'][0]))
  return out


if __name__ == '__main__':
  main()
