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

The default-K engine row and the naive row save their params after round 0
(same cohort, key and initial params); they must agree (``harness.py``'s
``compare_params``), so both sides do the same work.

Workloads and runners live in ``workloads.py``, the measurement in
``harness.py`` (shared with ``suite.py``). Method: every configuration runs
in a fresh subprocess, so its compile cache
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
import json
import os
import shutil
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
  sys.path.insert(0, HERE)

import harness  # pylint: disable=g-import-not-at-top,wrong-import-position
import workloads as wl  # pylint: disable=g-import-not-at-top,wrong-import-position

MODELS = ('logistic', 'mlp')


def plan_cost(clients_per_round, repeats=5):
  """Steady-state seconds of the jitted index plan for one cohort."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import fedjax_engine as fe  # pylint: disable=g-import-not-at-top
  from fedjax_engine import data as data_lib  # pylint: disable=g-import-not-at-top
  train = wl.synthetic(wl.NUM_CLIENTS)
  batching = fe.Batching(batch_size=wl.BATCH_SIZE, local_steps=wl.LOCAL_STEPS)
  kwargs = wl.plan_kwargs(data_lib.plan_cohort, train)
  starts = jnp.asarray(train.offsets[:-1], jnp.int32)
  sizes = jnp.asarray(train.sizes, jnp.int32)
  times = []
  for r, ids in enumerate(wl.cohorts(wl.NUM_CLIENTS, clients_per_round,
                                     repeats + 1)):
    cohort = data_lib.select(train, ids, num_padded=clients_per_round)
    t0 = time.perf_counter()
    out = data_lib.plan_cohort(
        jax.random.fold_in(jax.random.key(0), r),
        jnp.asarray(cohort.client_ids), jnp.asarray(cohort.client_mask),
        starts, sizes, batching=batching, num_steps=wl.LOCAL_STEPS,
        **kwargs)
    jax.block_until_ready(out)
    if r:
      times.append(time.perf_counter() - t0)
  return dict(clients=clients_per_round, max_size=kwargs.get('max_size'),
              plan_s=sum(times) / len(times))


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
  args = p.parse_args()

  if args.quick:
    args.models, args.clients = 'logistic', '10'
    args.max_rounds, args.time_budget = 3, 1.0
  args.extra_chunks = sorted(
      {int(k) for k in args.extra_chunks.split(',') if k}, reverse=True)
  models = args.models.split(',')
  clients = [int(c) for c in args.clients.split(',')]
  info = harness.machine_info()
  print(f'# {harness.describe_machine(info)}', flush=True)

  plans = [plan_cost(c) for c in clients]
  for pc in plans:
    print(f"index plan alone, C={pc['clients']}: {pc['plan_s'] * 1e3:.1f} ms "
          + (f"(max_size={pc['max_size']})" if pc['max_size'] else ''),
          flush=True)

  results, checks = [], []
  scratch = tempfile.mkdtemp(prefix='round_speed_params_')
  t_all = time.perf_counter()
  try:
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
        # The default engine row and the naive row save their params after
        # round 0, compared below (the equal-work check).
        check_paths = {}
        seen = set()
        for cfg in cfgs:
          key = (cfg['impl'], cfg['chunk'], cfg.get('gather'))
          if key in seen:   # C=1: K=1 and K=all coincide
            continue
          seen.add(key)
          slow_naive = cfg['impl'] == 'naive' and c >= 1000
          checked = (not args.skip_check and cfg['chunk'] is None
                     and cfg['impl'] in ('engine', 'naive')
                     and cfg.get('gather', 'device') == 'device')
          if checked:
            check_paths[cfg['impl']] = os.path.join(
                scratch, f"{model}_{c}_{cfg['impl']}.npz")
          cfg.update(
              kind='round', model=model, workload=f'synthetic_{model}',
              clients=c, num_clients=wl.NUM_CLIENTS, devices=None,
              min_rounds=2 if slow_naive else args.min_rounds,
              max_rounds=2 if slow_naive else args.max_rounds,
              time_budget=args.time_budget,
              params_out=check_paths.get(cfg['impl']) if checked else None)
          r = harness.run_worker(cfg)
          r.pop('params_out', None)
          if 'error' in r:
            raise RuntimeError(f'{model} C={c} {label(r)}: {r["error"]}')
          results.append(r)
          print(f"{model:8s} C={c:5d} {label(r):32s} "
                f"{r['round_s_mean']:.4f} s/round ({r['rounds_timed']} rounds),"
                f" first {r['first_round_s']:.2f} s, peak RSS "
                f"{r['peak_rss_mib']:.0f} MiB, other procs' CPU "
                f'{harness.fmt_others(r)}', flush=True)
        if len(check_paths) == 2:
          check = dict(model=model, clients=c,
                       **harness.compare_params(check_paths['naive'],
                                                check_paths['engine']))
          checks.append(check)
          print(f"equal-work check {model} C={c}: "
                f"{'OK' if check['ok'] else 'MISMATCH'} (|difference| / "
                f"|update| = {check['rel_update_err']:.1e})", flush=True)
  finally:
    shutil.rmtree(scratch, ignore_errors=True)
  info['load_avg_end'] = os.getloadavg()
  info['benchmark_wall_s'] = time.perf_counter() - t_all
  for key in ('backend', 'device_kind', 'devices'):
    info[key] = results[0].get(key) if results else None

  lines, verdicts = verdict(results)
  if any(not c['ok'] for c in checks):
    lines.append('- EQUAL-WORK CHECK FAILED for: ' + ', '.join(
        f"{c['model']} C={c['clients']}" for c in checks if not c['ok']))
  md = table(results)
  print()
  print(f"Machine: {harness.describe_machine(info)}; {info['devices']} "
        'device(s)')
  print()
  print(md)
  print()
  print('\n'.join(lines))
  print('\nNaive loop at C >= 1000: 2 timed rounds only (after 1 warm-up); '
        'other rows: rounds until the time budget, see "rounds".')
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  with open(args.out, 'w') as f:
    json.dump(dict(
        workload=dict(dataset='synthetic(alpha=1, beta=1)',
                      num_clients=wl.NUM_CLIENTS, seed=wl.SEED,
                      batch_size=wl.BATCH_SIZE, local_steps=wl.LOCAL_STEPS,
                      client_optimizer=f'sgd({wl.CLIENT_LR})',
                      server_optimizer=f'sgd({wl.SERVER_LR})'),
        method=dict(
            isolation='one subprocess per configuration',
            first_round='round 0 wall time, includes tracing and compilation',
            warmup_rounds=1,
            timed_rounds='rounds 2.. until max_rounds or time_budget s '
                         '(at least min_rounds); naive at C>=1000: 2 rounds',
            min_rounds=args.min_rounds, max_rounds=args.max_rounds,
            time_budget_s=args.time_budget,
            peak_rss='VmHWM (/proc/self/status) of the subprocess',
            equal_work_check=(
                'naive vs engine (default K) params after round 0 from the '
                'same initial params: L2 norm of the difference at most '
                f'{wl.CHECK_MAX_REL_UPDATE_ERR:g} x the L2 norm of the '
                "round's update")),
        machine=info, checks=checks, plan_cost=plans, results=results,
        acceptance=verdicts, notes=lines), f, indent=1)
  print(f"\nwrote {args.out}")


if __name__ == '__main__':
  main()
