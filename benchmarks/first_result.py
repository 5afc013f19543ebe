"""Time to the first result: compile time, and what the compilation cache saves.

Issue 13, item 3. The compiled round is fast per round but compiles first,
which a short run feels. For each workload this runs, each in its own fresh
subprocess (``harness.run_worker``, the suite's workloads and timers):

* **naive**: the suite's naive loop of jitted steps (compiles one small step);
* **engine (no cache)**: the fused engine round (``--fused_rounds`` rounds a
  call), JAX's persistent compilation cache off;
* **engine (cold cache)**: the same with an empty cache folder, which the run
  fills (what the first run of an experiment costs with
  ``--compilation_cache``);
* **engine (warm cache)**: again, with the folder the cold run filled (a
  rerun, a resumed run, another seed of the same experiment).

The cache is switched on as ``python -m fedjax_engine.train`` does it
(``--compilation_cache``), through JAX's environment variables. A row
reports the first call (``first_round_s``: the first call's rounds with
everything its programs compile), JAX's own compile-duration total and the
median seconds per round after it. From those, the time to run N rounds
(20, 100 and 1,000 here) is ``first + (N - k) * per_round`` where the first
call ran k rounds: the data set-up and the interpreter's start are left out
alike for all rows.

Usage::

  python benchmarks/first_result.py                      # logistic and CNN, C=10
  python benchmarks/first_result.py --workloads=synthetic_logistic --quick

Results: ``benchmarks/results/first_result.json``.
"""

import argparse
import json
import os
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # pylint: disable=g-import-not-at-top,wrong-import-position

ROUNDS = (20, 100, 1000)
# What train._enable_compilation_cache sets, as JAX's environment variables.
CACHE_ENV = {'JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS': '0',
             'JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES': '0',
             'JAX_COMPILATION_CACHE_MAX_SIZE': str(2 << 30)}
CONFIGS = (('naive', 'naive', None), ('engine (no cache)', 'engine_fused', None),
           ('engine (cold cache)', 'engine_fused', 'cold'),
           ('engine (warm cache)', 'engine_fused', 'warm'))


def totals(row):
  """Seconds to run each of ``ROUNDS`` rounds, from a worker's row."""
  first = row['first_round_s']
  k = row.get('first_call_rounds', row['rounds_per_call'])
  return {str(n): first + max(n - k, 0) * row['round_s_median'] for n in ROUNDS}


def run_config(args, workload, clients, impl, cache):
  """One row: the worker's result under the given cache setting."""
  env_keys = ['JAX_COMPILATION_CACHE_DIR', *CACHE_ENV]
  saved = {k: os.environ.get(k) for k in env_keys}
  try:
    for k in env_keys:
      os.environ.pop(k, None)
    if cache:
      os.environ.update(CACHE_ENV, JAX_COMPILATION_CACHE_DIR=cache)
    cfg = dict(kind='round', workload=workload, clients=clients, impl=impl,
               devices=1 if impl == 'naive' else args.cpu_devices,
               fused_rounds=args.fused_rounds if impl == 'engine_fused' else 1,
               num_clients=args.num_clients, data_dir=None,
               min_rounds=args.min_rounds, max_rounds=args.max_rounds,
               time_budget=args.time_budget, config_budget=240.0)
    return harness.run_worker(cfg, timeout=1200)
  finally:
    for k, v in saved.items():
      if v is None:
        os.environ.pop(k, None)
      else:
        os.environ[k] = v


def describe(label, row):
  if 'error' in row:
    return f'{label:22s} ERROR {row["error"]}'
  t = totals(row)
  compile_s = row.get('compile_s')
  return (f'{label:22s} first call {row["first_round_s"]:6.2f} s '
          f'({row.get("first_call_rounds", row["rounds_per_call"])} rounds; '
          f'JAX compile '
          f'{compile_s if compile_s is not None else float("nan"):5.2f} s)  '
          f'{row["round_s_median"] * 1e3:7.1f} ms/round  '
          + '  '.join(f'{n} rounds {t[str(n)]:7.1f} s' for n in ROUNDS)
          + f'  peak {row["peak_rss_mib"]:,.0f} MiB')


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--workloads', default='synthetic_logistic,emnist_cnn')
  p.add_argument('--clients', type=int, default=10)
  p.add_argument('--num_clients', type=int, default=1000)
  p.add_argument('--cpu_devices', type=int, default=2)
  p.add_argument('--fused_rounds', type=int, default=10)
  p.add_argument('--min_rounds', type=int, default=10)
  p.add_argument('--max_rounds', type=int, default=60)
  p.add_argument('--time_budget', type=float, default=5.0)
  p.add_argument('--quick', action='store_true',
                 help='a smoke run: few rounds, small budgets')
  p.add_argument('--out', default=os.path.join(
      harness.HERE, 'results', 'first_result.json'))
  args = p.parse_args(argv)
  if args.quick:
    args.min_rounds, args.max_rounds, args.time_budget = 1, 2, 0.5
  info = harness.machine_info()
  print(f'# {harness.describe_machine(info)}', flush=True)
  rows = []
  for workload in args.workloads.split(','):
    cache = tempfile.mkdtemp(prefix='first_result_cache_')
    try:
      for label, impl, state in CONFIGS:
        t0 = time.perf_counter()
        row = run_config(args, workload, args.clients, impl,
                         cache if state else None)
        row.update(label=label, cache=state,
                   process_s=time.perf_counter() - t0)
        if 'error' not in row:
          row['total_s'] = totals(row)
        rows.append(row)
        print(f'{workload} C={args.clients}: {describe(label, row)}',
              flush=True)
    finally:
      shutil.rmtree(cache, ignore_errors=True)
  os.makedirs(os.path.dirname(args.out) or '.', exist_ok=True)
  with open(args.out, 'w') as f:
    json.dump(dict(machine=info, method=__doc__, rounds=ROUNDS, rows=rows), f,
              indent=1)
  print(f'results: {args.out}')


if __name__ == '__main__':
  main()
