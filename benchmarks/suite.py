r"""The benchmark suite: the engine against a naive loop, four workloads, one run.

Workloads (``workloads.py``), each FedAvg with 10 local steps of batch 20,
client ``sgd(0.05)``, server ``sgd(1.0)``, at 10, 100 and 1,000 clients per
round drawn from 1,000 clients:

* ``synthetic_logistic``: Synthetic(1,1), logistic regression 60-10;
* ``synthetic_mlp``: Synthetic(1,1), MLP 60-200-200-10;
* ``emnist_2nn``: EMNIST-shaped data, 2NN 784-200-200-62;
* ``emnist_cnn``: EMNIST-shaped data, the EMNIST CNN (with dropout).

Implementations: ``engine`` (``fe.make_round``, one call per round, the
cohort sharded over ``--cpu_devices`` XLA CPU devices), ``naive`` (one jitted
SGD step per client per local step from Python, one device), and, on
request, ``engine_fused`` (``Round.run_rounds``: up to ``--fused_rounds``
rounds per call, as many as fit in about a second, as the engine's runner
does, when the engine has it) and ``engine_lowmem`` (the same, with the
low-memory settings: the round compiled with ``compile_for='memory'`` and
two malloc arenas, ``harness.LOW_MEMORY_ENV``). Peers, on
request: ``fedjax``, ``pfl`` and ``flower`` (``benchmarks/peers``, each in
its own venv made by ``bash benchmarks/peers/setup.sh``) train on the
workload the engine exports
(clients, initial params, round 0's batches); their params after round 0
are checked against the naive loop's, and a peer that is not installed
gets a row that says so.

Also measured in the same run, in its own subprocess at the start and at the
end: the FLOP/s of a large f32 matmul (best of several), the reference for
the achieved FLOP/s of every row (training FLOPs per round, counted from the
layer shapes, over seconds per round).

Every configuration runs in a fresh subprocess (``harness.py``). Engine and
naive params after round 0 (same cohort, same key, same initial params) are
compared for every (workload, clients per round) where both ran. A
configuration that would take longer than ``--config_budget`` seconds
(compile plus two rounds, extrapolated linearly in the clients per round from
the same implementation's largest smaller cohort) is not run and is shown as
skipped with its estimate.

Usage:

  python benchmarks/suite.py                 # everything, ~15 min on 2 cores
  python benchmarks/suite.py --quick         # C=10 of every workload, ~2 min
  python benchmarks/suite.py --workloads=emnist_cnn --clients=10,100
  python benchmarks/suite.py --impls=engine,engine_fused,naive --fused_rounds=10
  python benchmarks/suite.py --impls=engine,naive,fedjax,pfl,flower --quick

Writes ``benchmarks/results/suite.json`` and prints a markdown table and the
issue's targets.
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

DEFAULT_WORKLOADS = ('synthetic_logistic', 'synthetic_mlp', 'emnist_2nn',
                     'emnist_cnn')
PEERS = harness.PEERS   # benchmarks/peers: FedJAX, pfl, Flower in own venvs
IMPLS = ('engine', 'engine_fused', 'engine_lowmem', 'naive') + PEERS
ENGINES = ('engine', 'engine_fused', 'engine_lowmem')
FUSED = ('engine_fused', 'engine_lowmem')
PEER_LABELS = {'fedjax': 'FedJAX 0.0.17', 'pfl': 'pfl 0.6.0 (PyTorch)',
               'flower': 'Flower 1.42 (Ray simulation)'}
# (workload, clients per round, engine at least this many times the naive
# loop's speed): issue 4, "Done when".
SPEEDUP_TARGETS = (('synthetic_logistic', 100, 10.0), ('emnist_2nn', 100, 2.0),
                   ('emnist_cnn', 10, 1.6))
CNN_COMPILE_TARGET_S = 10.0


def estimate(prev, clients):
  """Seconds one configuration needs at least, from a smaller measured one.

  Round time is taken as linear in the clients per round; the minimum run is
  compilation, the first call and one timed call (a fused call runs
  ``rounds_per_call`` rounds).
  """
  round_s = prev['round_s_median'] * clients / prev['clients']
  call_s = round_s * prev.get('rounds_per_call', 1)
  return dict(round_s=round_s, total_s=prev['compile_s_est'] + 2 * call_s,
              from_clients=prev['clients'])


def label(r):
  if r['impl'] == 'naive':
    return 'naive loop'
  if r['impl'] in PEERS:
    s = PEER_LABELS[r['impl']]
    if r.get('threads') and r['impl'] != 'fedjax':
      s += f" {r['threads']} thread{'s' if r['threads'] > 1 else ''}"
      s += ' per client' if r['impl'] == 'flower' else ''
    return s
  s = 'engine'
  if r['impl'] in FUSED:
    used = r.get('rounds_per_call')
    s += (f' fused (up to {used} rounds/call)' if used and used > 1
          else ' fused (n/a: no run_rounds, per-round calls)'
          if used else ' fused')
  if r['impl'] == 'engine_lowmem':
    s += ', low-memory settings'
  if r.get('chunk_used') is not None:
    s += f" K={r['chunk_used']}"
  return s


def compile_s(r):
  """Measured compile seconds (JAX's events), else the estimate.

  The estimate (first round less a timed one) is the start-up of peers
  without JAX: pfl's first round, Flower's Ray start and node registration.
  """
  measured = r.get('compile_s')
  return r['compile_s_est'] if measured is None else measured


def speedups(results):
  naive = {(r['workload'], r['clients']): r['round_s_mean'] for r in results
           if r['impl'] == 'naive' and 'round_s_mean' in r}
  return {id(r): naive[(r['workload'], r['clients'])] / r['round_s_mean']
          for r in results if 'round_s_mean' in r
          and (r['workload'], r['clients']) in naive}


def table(results, peak):
  lines = [
      '| workload | C | implementation | devices | s/round (mean) | median '
      '| rounds | first round (incl. compile) s | compile or start-up s '
      '| examples/s | speedup vs naive | GFLOP/round | achieved GFLOP/s '
      '| % of matmul peak | peak RSS MiB (after setup) | private MiB '
      '| others\' CPU |',
      '|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:'
      '|---:|---:|---:|']
  speed = speedups(results)
  for r in results:
    head = f"| {r['workload']} | {r['clients']} | {label(r)} | "
    gflop = wl.WORKLOADS[r['workload']].round_flops(r['clients']) / 1e9
    gflop = f'{gflop:,.0f}' if gflop >= 100 else f'{gflop:.3g}'
    if 'round_s_mean' not in r:
      why = (f"skipped: would take ~{r['estimated_round_s']:.0f} s/round"
             if r.get('skipped') else f"failed: {r.get('error', '?')[:80]}")
      lines.append(head + f"{r.get('devices') or '-'} | {why} | "
                   + ' | '.join(['-'] * 6) + f' | {gflop} | - | - | - | - | - |')
      continue
    s = speed.get(id(r))
    lines.append(
        head + f"{r['devices']} | {r['round_s_mean']:.4f} | "
        f"{r['round_s_median']:.4f} | {r['rounds_timed']} | "
        f"{r['first_round_s']:.2f} | {compile_s(r):.2f} | "
        f"{r['examples_per_s']:,.0f} | "
        + (f'{s:.2f}x' if s is not None else '-') + ' | '
        f"{gflop} | {r['flops_per_s'] / 1e9:,.1f} | "
        + (f"{100 * r['flops_per_s'] / peak:.1f}%" if peak else '-') + ' | '
        f"{r['peak_rss_mib']:.0f} ({r['rss_after_setup_mib']:.0f}) | "
        + (f"{r['private_rss_mib']:.0f}" if 'private_rss_mib' in r else '-')
        + f' | {harness.fmt_others(r)} |')
  return '\n'.join(lines)


def targets(results, peak):
  """The issue's targets, checked on the measured rows."""
  speed = speedups(results)
  lines, verdicts = [], {}
  for workload, c, want in SPEEDUP_TARGETS:
    engines = [r for r in results if r['workload'] == workload
               and r['clients'] == c and r['impl'] in ENGINES
               and id(r) in speed]
    key = f'{workload}_{c}_speedup_at_least_{want:g}x'
    if not engines:
      lines.append(f'- {workload}, C={c}: engine >= {want:g}x naive -> not '
                   'measured')
      continue
    best = max(engines, key=lambda r: speed[id(r)])
    got = speed[id(best)]
    verdicts[key] = got >= want
    lines.append(f"- {workload}, C={c}: {label(best)} is {got:.2f}x the naive "
                 f"loop's speed -> {'PASS' if got >= want else 'FAIL'} "
                 f'(>= {want:g}x)')
  cnn = [r for r in results if r['workload'] == 'emnist_cnn'
         and r['impl'] in ENGINES and 'compile_s_est' in r]
  if cnn:
    worst = max(cnn, key=compile_s)
    ok = compile_s(worst) < CNN_COMPILE_TARGET_S
    verdicts['emnist_cnn_compile_under_10s'] = ok
    lines.append(f"- emnist_cnn: engine compile at most "
                 f"{compile_s(worst):.1f} s (C={worst['clients']}; first "
                 f"round {worst['first_round_s']:.1f} s) -> "
                 f"{'PASS' if ok else 'FAIL'} (< {CNN_COMPILE_TARGET_S:g} s)")
  measured = [r for r in results if 'flops_per_s' in r]
  ok = bool(peak) and bool(measured)
  verdicts['flops_reported_against_matmul_peak'] = ok
  lines.append(f'- achieved FLOP/s against the matmul peak '
               f"({peak / 1e9 if peak else 0:,.1f} GFLOP/s): "
               f'{len(measured)} measured rows -> '
               f"{'reported' if ok else 'MISSING'}")
  lines.append('- memory flat from 100 to 10,000 clients per round: measured '
               'by benchmarks/memory.py (results/memory.json)')
  return lines, verdicts


def flop_counts(results):
  """Analytic FLOPs against XLA's cost analysis, per workload."""
  out = {}
  for name in dict.fromkeys(r['workload'] for r in results):
    rows = [r for r in results if r['workload'] == name]
    step = next((r['xla_step_flops'] for r in rows
                 if r.get('xla_step_flops')), None)
    rnd = next((r for r in rows if r.get('xla_round_flops')), None)
    out[name] = dict(
        analytic_per_example=wl.WORKLOADS[name].train_flops,
        xla_step_per_example=step / wl.BATCH_SIZE if step else None,
        xla_round_over_analytic=(
            rnd['xla_round_flops'] / rnd['flops_per_round'] if rnd else None),
        xla_round_clients=rnd['clients'] if rnd else None)
  return out


def flop_lines(counts):
  lines = []
  for name, c in counts.items():
    s = f"- {name}: {c['analytic_per_example']:,} FLOPs per example (analytic)"
    if c['xla_step_per_example']:
      s += (f"; XLA cost analysis of one naive step: "
            f"{c['xla_step_per_example']:,.0f} per example "
            f"({c['xla_step_per_example'] / c['analytic_per_example']:.3f}x, "
            'elementwise work included)')
    if c['xla_round_over_analytic']:
      s += (f"; of the compiled engine round at C={c['xla_round_clients']}: "
            f"{c['xla_round_over_analytic']:.4f}x the analytic round (loop "
            'bodies counted once)')
    lines.append(s)
  return lines


def progress(r):
  if 'round_s_mean' in r:
    return (f"{r['workload']:18s} C={r['clients']:5d} {label(r):24s} "
            f"{r['round_s_mean']:.4f} s/round ({r['rounds_timed']} rounds), "
            f"first {r['first_round_s']:.2f} s, "
            f"{r['flops_per_s'] / 1e9:.1f} GFLOP/s, peak RSS "
            f"{r['peak_rss_mib']:.0f} MiB, others' CPU {harness.fmt_others(r)}")
  if r.get('skipped'):
    return (f"{r['workload']:18s} C={r['clients']:5d} {label(r):24s} skipped: "
            f"~{r['estimated_round_s']:.0f} s/round, ~{r['estimated_s']:.0f} s "
            f"in all > --config_budget")
  return f"{r['workload']:18s} C={r['clients']:5d} {label(r):24s} {r['error']}"


def matmul(args, when):
  r = harness.run_worker(dict(kind='matmul', size=args.matmul_size,
                              repeats=args.matmul_repeats, devices=1),
                         timeout=600)
  if 'error' in r:
    print(f'matmul peak ({when}): {r["error"]}', flush=True)
  else:
    print(f"matmul peak ({when}): {args.matmul_size}^2 f32, best of "
          f"{args.matmul_repeats}: {r['flops_per_s'] / 1e9:.1f} GFLOP/s "
          f"({r['best_s'] * 1e3:.0f} ms), others' CPU {harness.fmt_others(r)}",
          flush=True)
  return dict(r, when=when)


def peer_unavailable(peer, export_error):
  """Why ``peer`` cannot run here (its row then says so), or None."""
  if export_error:
    return f'export failed: {export_error}'
  python = harness.peer_python(peer)
  if os.path.exists(python):
    return None
  # .venvs/<peer>.failed: setup.sh tried and failed; its last line says why.
  log = os.path.dirname(os.path.dirname(python)) + '.failed'
  if os.path.exists(log):
    with open(log) as f:
      lines = [line.strip() for line in f if line.strip()]
    return f"not installed: {lines[-1] if lines else 'setup.sh failed'}"
  return 'not installed: run bash benchmarks/peers/setup.sh'


# A peer's params after round 0 against the naive loop's. Without dropout
# both train on the same batches: the engine's tolerance applies. With
# dropout (the CNN) the peer draws its own masks (no peer takes the engine's
# keys), so the params differ as with another key (0.5-0.8 of the update);
# the check is then that the update's L2 norm is within this fraction of
# the naive loop's (same data, same initial params, other masks).
DROPOUT_NORM_TOL = 0.05


def peer_check(check, dropout):
  """Verdict of a peer's round-0 check (``check`` from compare_params)."""
  if 'rel_update_err' not in check:
    return dict(verdict='FAILED', tolerance='-', ok=False)
  if not dropout:
    return dict(ok=check['ok'], verdict='OK' if check['ok'] else 'MISMATCH',
                tolerance=f'{wl.CHECK_MAX_REL_UPDATE_ERR:g}')
  ok = bool(check['same_initial_params']
            and abs(check['update_norm_ratio'] - 1) <= DROPOUT_NORM_TOL)
  return dict(ok=ok, verdict='OK (dropout: norms)' if ok else 'MISMATCH',
              tolerance=f'|update| within {DROPOUT_NORM_TOL:.0%} (dropout '
              'masks differ)')


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--workloads', default=','.join(DEFAULT_WORKLOADS),
                 help=f'comma-separated, from {", ".join(wl.WORKLOADS)}')
  p.add_argument('--clients', default='10,100,1000',
                 help='clients per round, comma-separated')
  p.add_argument('--impls', default='engine,naive',
                 help=f'comma-separated, from {", ".join(IMPLS)}')
  p.add_argument('--cpu_devices', type=int, default=os.cpu_count(),
                 help='XLA CPU devices the engine shards the cohort over (the '
                 'naive loop always gets 1); ignored by GPU/TPU backends')
  p.add_argument('--fused_rounds', type=int, default=10,
                 help='rounds per call for engine_fused')
  p.add_argument('--segments', type=int, default=5,
                 help='timed turns per implementation, interleaved '
                      '(harness.run_interleaved)')
  p.add_argument('--min_rounds', type=int, default=3)
  p.add_argument('--max_rounds', type=int, default=200)
  p.add_argument('--time_budget', type=float, default=5.0,
                 help='stop timing a configuration after this many seconds, '
                 'once min_rounds are timed')
  p.add_argument('--config_budget', type=float, default=240.0,
                 help='skip (or cut short) a configuration whose compile and '
                 'rounds would take longer than this many seconds')
  p.add_argument('--num_clients', type=int, default=wl.NUM_CLIENTS,
                 help='clients of each dataset (cohorts are drawn from them)')
  p.add_argument('--emnist_dir', default=None,
                 help='read real federated EMNIST (fed_emnist_train.h5) from '
                 'this folder instead of generating EMNIST-shaped data')
  p.add_argument('--peer_threads', type=int, default=1,
                 help='PyTorch threads of the pfl and Flower workers (Flower: '
                 'also the CPUs each Ray client actor asks for)')
  p.add_argument('--matmul_size', type=int, default=4096)
  p.add_argument('--matmul_repeats', type=int, default=5)
  p.add_argument('--quick', action='store_true',
                 help='C=10 only, few rounds, 100 clients per dataset, 2048 '
                 'matmul')
  p.add_argument('--out', default=os.path.join(HERE, 'results', 'suite.json'))
  args = p.parse_args(argv)
  if args.quick:
    if args.clients == p.get_default('clients'):
      args.clients = '10'
    args.min_rounds, args.max_rounds, args.time_budget = 1, 5, 1.0
    args.num_clients = min(args.num_clients, 100)
    args.matmul_size = min(args.matmul_size, 2048)
    args.matmul_repeats = min(args.matmul_repeats, 3)
  names = args.workloads.split(',')
  impls = args.impls.split(',')
  for name in names:
    if name not in wl.WORKLOADS:
      p.error(f'unknown workload {name!r}; known: {", ".join(wl.WORKLOADS)}')
  for impl in impls:
    if impl not in IMPLS:
      p.error(f'unknown implementation {impl!r}; known: {", ".join(IMPLS)}')
  clients = sorted({int(c) for c in args.clients.split(',')})

  info = harness.machine_info()
  print(f'# {harness.describe_machine(info)}', flush=True)
  t_all = time.perf_counter()
  peaks = [matmul(args, 'start')]
  scratch = tempfile.mkdtemp(prefix='suite_params_')
  results, checks = [], []
  try:
    for name in names:
      prev = {}   # impl -> largest smaller measured row
      export_error = None
      if any(i in PEERS for i in impls):
        ex = harness.run_worker(dict(
            kind='export', workload=name, num_clients=args.num_clients,
            data_dir=(args.emnist_dir if wl.WORKLOADS[name].dataset
                      is wl.emnist_shaped else None),
            clients=clients, export_dir=scratch, devices=1), timeout=1200)
        export_error = ex.get('error')
        print(f'exported {name} for the peers: '
              + (export_error or f"{ex['export_s']:.1f} s"), flush=True)
      for c in clients:
        rows, to_run = {}, []
        for impl in impls:
          cfg = dict(
              kind='round', workload=name, clients=c, impl=impl,
              devices=1 if impl == 'naive' else args.cpu_devices,
              fused_rounds=args.fused_rounds if impl in FUSED else 1,
              num_clients=args.num_clients,
              data_dir=(args.emnist_dir if wl.WORKLOADS[name].dataset
                        is wl.emnist_shaped else None),
              min_rounds=args.min_rounds, max_rounds=args.max_rounds,
              time_budget=args.time_budget, config_budget=args.config_budget,
              params_out=(None if impl in FUSED else
                          os.path.join(scratch, f'{name}_{c}_{impl}.npz')))
          if impl in PEERS:
            cfg.update(devices=1, python=harness.peer_python(impl),
                       export_dir=scratch, threads=args.peer_threads,
                       params_out=os.path.join(scratch,
                                               f'{name}_{c}_{impl}.npz'))
            missing = peer_unavailable(impl, export_error)
            if missing:
              rows[impl] = (dict(cfg, error=missing), None)
              continue
          est = estimate(prev[impl], c) if impl in prev else None
          if est and est['total_s'] > args.config_budget:
            rows[impl] = (dict(cfg, skipped=True,
                               estimated_round_s=est['round_s'],
                               estimated_s=est['total_s'],
                               estimated_from_clients=est['from_clients']),
                          cfg['params_out'])
          else:
            to_run.append(cfg)
        measured = harness.run_interleaved(
            to_run, segments=args.segments,
            timeout=len(to_run) * (3 * args.config_budget + 600))
        for cfg, r in zip(to_run, measured):
          rows[cfg['impl']] = (r, cfg['params_out'])
          if 'round_s_mean' in r:
            prev[cfg['impl']] = r
        for impl in impls:
          r = rows[impl][0]
          r.pop('params_out', None)
          r.pop('export_dir', None)
          results.append(r)
          print(progress(r), flush=True)
        paths = [rows[i][1] for i in ('naive', 'engine') if i in rows]
        if len(paths) == 2 and all(p and os.path.exists(p) for p in paths):
          check = dict(workload=name, clients=c, **harness.compare_params(
              *paths, tolerance=wl.WORKLOADS[name].check_tolerance))
          checks.append(check)
          print(f"equal work {name} C={c}: engine vs naive params after round "
                f"0: {'OK' if check['ok'] else 'MISMATCH'} (|difference| / "
                f"|update| = {check.get('rel_update_err', float('nan')):.1e}, "
                f"tolerance {check.get('max_rel_update_err_allowed', 0):g}, "
                f"max abs err {check.get('max_abs_err', float('nan')):.1e})",
                flush=True)
        naive_path = rows['naive'][1] if 'naive' in rows else None
        for impl in (i for i in impls if i in PEERS):
          path = rows[impl][1]
          if not (naive_path and path and os.path.exists(naive_path)
                  and os.path.exists(path)):
            continue
          check = dict(workload=name, clients=c, impl=impl, against='naive',
                       **harness.compare_params(path, naive_path))
          check.update(peer_check(check, wl.WORKLOADS[name].dropout))
          checks.append(check)
          print(f"equal work {name} C={c}: {impl} vs naive params after round "
                f"0: {check['verdict']} (|difference| / |update| = "
                f"{check.get('rel_update_err', float('nan')):.1e}, tolerance "
                f"{check['tolerance']}; |update| ratio "
                f"{check.get('update_norm_ratio', float('nan')):.4f})",
                flush=True)
  finally:
    shutil.rmtree(scratch, ignore_errors=True)
  peaks.append(matmul(args, 'end'))
  info['load_avg_end'] = os.getloadavg()
  info['benchmark_wall_s'] = time.perf_counter() - t_all
  for key in ('backend', 'device_kind'):
    info[key] = next((m[key] for m in peaks if key in m), None)
  peak = max((m['flops_per_s'] for m in peaks if 'flops_per_s' in m),
             default=None)

  md = table(results, peak)
  lines, verdicts = targets(results, peak)
  if any(not c['ok'] for c in checks):
    lines.append('- EQUAL-WORK CHECK FAILED for: ' + ', '.join(
        f"{c['workload']} C={c['clients']} {c.get('impl', 'engine')}"
        for c in checks if not c['ok']))
  print(f'\nMachine: {harness.describe_machine(info)}')
  print(f"Large-matmul peak: {peak / 1e9 if peak else float('nan'):,.1f} "
        f"GFLOP/s ({args.matmul_size}x{args.matmul_size} f32, best of "
        f"{args.matmul_repeats}, max of start and end); suite took "
        f"{info['benchmark_wall_s'] / 60:.1f} min\n")
  counts = flop_counts(results)
  print(md)
  print()
  print('\n'.join(lines))
  print('\nFLOP counts:')
  print('\n'.join(flop_lines(counts)))
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  with open(args.out, 'w') as f:
    json.dump(dict(
        workloads={n: dict(description=wl.WORKLOADS[n].description,
                           layer_macs=wl.WORKLOADS[n].layer_macs,
                           train_flops_per_example=wl.WORKLOADS[n].train_flops)
                   for n in names},
        training=dict(batch_size=wl.BATCH_SIZE, local_steps=wl.LOCAL_STEPS,
                      client_optimizer=f'sgd({wl.CLIENT_LR})',
                      server_optimizer=f'sgd({wl.SERVER_LR})',
                      algorithm='fedavg', num_clients=args.num_clients,
                      emnist_data=args.emnist_dir or 'generated'),
        method=dict(
            isolation='one subprocess per configuration',
            interleaving=(
                f'the implementations of a (workload, C) are timed in turns: '
                f'{args.segments} segments of time_budget/{args.segments} s '
                'each, so drift of the machine speed hits them alike'),
            cpu_devices_engine=args.cpu_devices, cpu_devices_naive=1,
            first_round='round 0 wall time, includes tracing and compilation',
            compile='tracing, lowering and XLA compilation during round 0, '
                    "summed from JAX's /jax/core/compile/* duration events",
            warmup_rounds='1, unless round 0 took longer than time_budget',
            timed_rounds='until max_rounds, or time_budget s once min_rounds '
                         'are timed, or when the next round would end past '
                         'config_budget s (at least 1)',
            min_rounds=args.min_rounds, max_rounds=args.max_rounds,
            time_budget_s=args.time_budget, config_budget_s=args.config_budget,
            skip_rule='skipped when compile + 2 rounds, extrapolated linearly '
                      'in C from the same implementation, exceed '
                      'config_budget',
            flops='analytic matmul/conv FLOPs of forward and backward per '
                  'example x C x 10 x 20 (XLA cost analysis counts a loop '
                  'body once; see xla_* fields)',
            peak_rss='VmHWM (/proc/self/status) of the subprocess, plus '
                     "that of its live descendants (Flower's Ray processes)",
            private_rss=('RssAnon, the largest of its values after setup, '
                         'after round 0 and at the end, plus live '
                         "descendants' at the end: RSS less the touched "
                         'pages of shared libraries (shared_lib_rss_mib)'),
            compile_peers='FedJAX: JAX compile events; pfl, Flower: first '
                          'round less the median round (start-up)',
            equal_work_check=(
                'engine and peers vs naive params after round 0 from the same '
                'initial params: L2 norm of the difference at most '
                f'{wl.CHECK_MAX_REL_UPDATE_ERR:g} x the L2 norm of the '
                "round's update (the CNN, whose 10 steps amplify rounding: "
                f'{wl.CNN_CHECK_MAX_REL_UPDATE_ERR:g}, see workloads.py); '
                'peers on the CNN (own dropout masks): the '
                f"update's norm within {DROPOUT_NORM_TOL:.0%} of the naive "
                "loop's")),
        machine=info, matmul=peaks, matmul_peak_flops_per_s=peak,
        flop_counts=counts, results=results, checks=checks,
        targets=verdicts, notes=lines),
              f, indent=1)
  print(f'\nwrote {args.out}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
