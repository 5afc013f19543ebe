r"""Stress check: many short runs with several CPU devices must never hang.

Runs short trainings, each in its own process, with 2 and 4 CPU devices, on a
quiet machine and beside CPU-burning processes (one per core), and counts the
runs that finished, failed, or hung (did not finish within ``--timeout``).
A hung process's threads are dumped with gdb, when it is installed, into
``--out_dir`` before it is killed.

Two kinds of run:

* ``cli``: ``python -m fedjax_engine.train`` on small Stack Overflow tag
  files (two clients, two rounds, evaluation after each; the model has four
  metrics besides the loss), the command that hung in issue 9.
* ``api``: a Python script that drives the engine as a notebook would:
  ``run_experiment`` with fused rounds, then 40 rounds called one by one
  from Python with no wait between them, evaluations, and eager operations
  on their outputs.

A third kind, ``runahead``, not run by default, shows the cause without the
engine: plain JAX dispatching a small ``shard_map`` program with an
all-reduce 1,000 times without waiting for any of them, the pattern the
engine now avoids (``simulate.settled``). On the 2-core machine of the
README it hangs in every run (``--kinds=runahead --runs=3``).

XLA's own collective time-out is left at its default (abort after 20 + 40
s), so a stuck all-reduce ends a run instead of hanging past ``--timeout``;
either way the run counts as hung.

  python benchmarks/stress.py --runs=40 --out=benchmarks/results/stress.json

``--runs`` runs of each kind for each device count and load: 8 configurations,
so ``--runs=40`` is 320 runs (about 35 minutes on 2 cores).
"""

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, 'tests'))

import test_cli_datasets  # pylint: disable=g-import-not-at-top,wrong-import-position

API_SCRIPT = textwrap.dedent('''
    import sys
    import jax
    jax.config.update('jax_num_cpu_devices', int(sys.argv[1]))
    import jax.numpy as jnp
    import optax
    import fedjax_engine as fe
    from fedjax_engine.runner import run_experiment

    train, test = fe.datasets.synthetic(num_clients=40, seed=0)
    model = fe.models.logistic_regression(num_features=60, num_classes=10)
    algo = fe.algorithms.fedavg(model, client_optimizer=optax.sgd(0.1))
    batching = fe.Batching(batch_size=8, local_steps=2)
    run_experiment(algo, model, train, test, batching=batching,
                   clients_per_round=6, num_rounds=12, eval_every=3,
                   rounds_per_call=4, progress=False)
    rnd = fe.make_round(algo, train, clients_per_round=6, batching=batching)
    evaluate = fe.make_evaluate(model, test)
    state = algo.init(model.init(jax.random.key(0)))
    for r in range(40):
      state, _, metrics = rnd(state, (), rnd.select([r % 40, (r + 7) % 40]),
                              jax.random.key(r))
      loss = jnp.log(metrics['train_loss']) * 2 + 1
      if r % 10 == 9:
        scores = evaluate(state.params)
        total = sum(jnp.sqrt(v) for v in scores.values())
    print('done', float(loss), float(total))
''')


RUNAHEAD_SCRIPT = textwrap.dedent('''
    import sys
    import jax
    jax.config.update('jax_num_cpu_devices', int(sys.argv[1]))
    import jax.numpy as jnp
    import numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

    mesh = Mesh(np.array(jax.devices()), ('c',))

    @jax.jit
    def step(x):
      def body(x):
        for _ in range(3):
          x = jnp.tanh(x @ x.T)
        return jax.lax.psum(x, 'c')
      return jax.shard_map(body, mesh=mesh, in_specs=P('c'), out_specs=P(),
                           check_vma=False)(x)

    n = len(jax.devices())
    x = jax.device_put(np.ones((n * 64, 64), np.float32),
                       NamedSharding(mesh, P('c')))
    for _ in range(1000):
      y = step(x)          # no wait: calls queue behind each other
    jax.block_until_ready(y)
    print('done')
''')


def _command(kind, devices, work):
  if kind == 'runahead':
    return [sys.executable, f'{work}/runahead.py', str(devices)]
  if kind == 'cli':
    return [sys.executable, '-m', 'fedjax_engine.train',
            '--dataset=stackoverflow_tags', f'--data_dir={work}/data',
            '--model=multilabel_logistic', '--num_clients=2',
            '--clients_per_round=2', '--num_rounds=2', '--eval_every=1',
            '--local_steps=2', '--batch_size=2', '--noprogress',
            f'--cpu_devices={devices}']
  return [sys.executable, f'{work}/api.py', str(devices)]


def _dump_threads(pid, path):
  if shutil.which('gdb') is None:
    return
  result = subprocess.run(['gdb', '-p', str(pid), '-batch', '-ex',
                           'thread apply all bt 30'], capture_output=True,
                          text=True, timeout=120, check=False)
  with open(path, 'w') as f:
    f.write(result.stdout + result.stderr)


def _run_one(cmd, timeout, dump_path, cwd):
  env = dict(os.environ)
  env.pop('XLA_FLAGS', None)
  env['PYTHONPATH'] = ROOT + os.pathsep + env.get('PYTHONPATH', '')
  start = time.perf_counter()
  proc = subprocess.Popen(cmd, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, env=env, cwd=cwd)
  try:
    out, _ = proc.communicate(timeout=timeout)
  except subprocess.TimeoutExpired:
    _dump_threads(proc.pid, dump_path)
    proc.kill()
    proc.communicate()
    return 'hung', time.perf_counter() - start, ''
  seconds = time.perf_counter() - start
  if 'Termination timeout' in out or 'rendezvous' in out:
    return 'hung', seconds, out[-2000:]
  if proc.returncode != 0:
    return 'failed', seconds, out[-2000:]
  return 'ok', seconds, ''


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--runs', type=int, default=40,
                      help='runs per kind, device count and load')
  parser.add_argument('--timeout', type=float, default=180.0,
                      help='seconds after which a run counts as hung')
  parser.add_argument('--devices', default='2,4')
  parser.add_argument('--kinds', default='cli,api')
  parser.add_argument('--loads', default='quiet,busy')
  parser.add_argument('--out', default=None, help='JSON results file')
  parser.add_argument('--out_dir', default=None,
                      help='where thread dumps of hung runs go')
  args = parser.parse_args()

  work = tempfile.mkdtemp(prefix='fedjax_stress_')
  os.makedirs(f'{work}/data')
  # The small files tests/test_cli_datasets.py trains on.
  test_cli_datasets._stackoverflow(f'{work}/data')  # pylint: disable=protected-access
  with open(f'{work}/api.py', 'w') as f:
    f.write(API_SCRIPT)
  with open(f'{work}/runahead.py', 'w') as f:
    f.write(RUNAHEAD_SCRIPT)
  out_dir = args.out_dir or work
  os.makedirs(out_dir, exist_ok=True)

  configs = []
  for load in args.loads.split(','):
    burners = []
    if load == 'busy':
      burners = [subprocess.Popen([sys.executable, '-c', 'while True: pass'])
                 for _ in range(os.cpu_count() or 1)]
    try:
      for kind in args.kinds.split(','):
        for devices in map(int, args.devices.split(',')):
          counts = {'ok': 0, 'failed': 0, 'hung': 0}
          seconds, failures = [], []
          for i in range(args.runs):
            status, s, tail = _run_one(
                _command(kind, devices, work), args.timeout,
                os.path.join(out_dir, f'hang_{kind}_{devices}_{load}_{i}.txt'),
                cwd=work)
            counts[status] += 1
            seconds.append(s)
            if tail:
              failures.append(tail)
          config = dict(kind=kind, devices=devices, load=load, runs=args.runs,
                        **counts, median_s=sorted(seconds)[len(seconds) // 2],
                        max_s=max(seconds), failures=failures[:3])
          configs.append(config)
          print(json.dumps({k: v for k, v in config.items()
                            if k != 'failures'}), flush=True)
    finally:
      for b in burners:
        b.kill()
  total = {k: sum(c[k] for c in configs) for k in ('runs', 'ok', 'failed',
                                                   'hung')}
  total['runs'] = sum(c['runs'] for c in configs)
  print(f"{total['runs']} runs: {total['ok']} ok, {total['failed']} failed, "
        f"{total['hung']} hung")
  if args.out:
    commit = subprocess.run(['git', 'rev-parse', '--short', 'HEAD'],
                            capture_output=True, text=True, cwd=ROOT,
                            check=False).stdout.strip()
    with open(args.out, 'w') as f:
      json.dump(dict(total=total, configs=configs, commit=commit,
                     timeout_s=args.timeout, date=time.strftime('%Y-%m-%d'),
                     machine=dict(cpu_count=os.cpu_count(),
                                  python=platform.python_version(),
                                  platform=platform.platform())),
                f, indent=1)
  shutil.rmtree(work, ignore_errors=True)
  sys.exit(1 if total['hung'] or total['failed'] else 0)


if __name__ == '__main__':
  main()
