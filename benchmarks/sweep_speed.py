r"""Seeds in one program against the same seeds run one after another.

For each workload of the benchmark suite (``workloads.py``: FedAvg, 10
local steps of batch 20) it times ``--num_seeds`` seeds of one experiment
two ways, end to end with compilation and the final evaluation, in this
process:

* ``solo``: ``fedjax_engine.runner.run_experiment`` once per seed;
* ``sweep``: ``fedjax_engine.sweep.run_sweep`` with every seed at once.

With ``--client_lrs`` the runs are every client learning rate with every
seed (the rates traced from the server state,
``fedjax_engine.hyperparameters``), against the same runs one after
another, each with its rate as a constant.

It checks that both give each run the same final train loss (to float
rounding) and reports the wall times, their ratio and the compiled
programs' share of them (the first call of each).

  python benchmarks/sweep_speed.py            # logistic and 2NN, ~5 min
  python benchmarks/sweep_speed.py --num_seeds=2 --client_lrs=0.02,0.05,0.1,0.2
  python benchmarks/sweep_speed.py --quick    # smoke test
"""

import os
import sys
import time

from absl import app
from absl import flags
import numpy as np
import optax

import fedjax_engine as fe
from fedjax_engine import runner

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
  sys.path.insert(0, HERE)

import transform_common as tc  # pylint: disable=g-import-not-at-top,wrong-import-position
import workloads as wl  # pylint: disable=g-import-not-at-top,wrong-import-position

FLAGS = flags.FLAGS
flags.DEFINE_list('workloads', ['synthetic_logistic', 'emnist_2nn'],
                  'Workloads of the benchmark suite.')
flags.DEFINE_integer('num_seeds', 8, 'Seeds per experiment.', lower_bound=2)
flags.DEFINE_integer('clients_per_round', 10, 'Clients per round.',
                     lower_bound=1)
flags.DEFINE_integer('rounds', 100, 'Rounds per seed.', lower_bound=1)
flags.DEFINE_integer('rounds_per_call', 10, 'Rounds fused per call.',
                     lower_bound=1)
flags.DEFINE_list('client_lrs', [], 'A learning-rate grid: every rate with '
                  'every seed (default: the workloads\' rate only).')
flags.DEFINE_bool('quick', False, 'Smoke test: 2 seeds, 4 rounds.')
flags.DEFINE_string('out', None, 'JSON output (markdown beside it); default '
                    'results/sweep_speed.json.')
flags.DEFINE_integer('cpu_devices', 0, 'JAX CPU devices; 0: one per core.',
                     lower_bound=0)


def _fedavg(setup, client_lr):
  return fe.algorithms.fedavg(setup.model,
                              client_optimizer=optax.sgd(client_lr),
                              server_optimizer=optax.sgd(wl.SERVER_LR))


def _time(name, seeds, rounds, lrs):
  setup = wl.build(wl.WORKLOADS[name])
  test = setup.train   # evaluation is not what is timed; any clients do
  kwargs = dict(batching=setup.batching,
                clients_per_round=FLAGS.clients_per_round,
                num_rounds=rounds, eval_every=0,
                rounds_per_call=FLAGS.rounds_per_call, progress=False)
  start = time.perf_counter()
  if lrs:
    solo = [runner.run_experiment(_fedavg(setup, lr), setup.model,
                                  setup.train, test, seed=s, **kwargs)
            for lr in lrs for s in seeds]
  else:
    solo = [runner.run_experiment(setup.algorithm, setup.model, setup.train,
                                  test, seed=s, **kwargs) for s in seeds]
  solo_s = time.perf_counter() - start
  start = time.perf_counter()
  if lrs:
    swept = fe.sweep.run_sweep(
        lambda client_lr: _fedavg(setup, client_lr), setup.model,
        setup.train, test, seeds=seeds,
        hyperparameters=[{'client_lr': lr} for lr in lrs], **kwargs)
  else:
    swept = fe.sweep.run_sweep(setup.algorithm, setup.model, setup.train,
                               test, seeds=seeds, **kwargs)
  sweep_s = time.perf_counter() - start
  # A record's seconds are its call's over the call's rounds.
  first = min(FLAGS.rounds_per_call, rounds)
  gap = max(abs(a[-1]['train_loss'] - b[-1]['train_loss']) /
            abs(b[-1]['train_loss']) for a, b in zip(swept, solo))
  return dict(
      workload=name, seeds=len(seeds), client_lrs=lrs, runs=len(solo),
      rounds=rounds,
      clients_per_round=FLAGS.clients_per_round, solo_s=solo_s,
      sweep_s=sweep_s, ratio=solo_s / sweep_s,
      solo_first_s=first * float(np.sum([h[0]['seconds'] for h in solo])),
      sweep_first_s=first * swept[0][0]['seconds'],
      max_relative_loss_gap=gap)


def main(argv):
  del argv
  info = tc.start(FLAGS.cpu_devices)
  seeds = list(range(2 if FLAGS.quick else FLAGS.num_seeds))
  rounds = 4 if FLAGS.quick else FLAGS.rounds
  start = time.perf_counter()
  rows = []
  for name in FLAGS.workloads:
    row = _time(name, seeds, rounds, [float(lr) for lr in FLAGS.client_lrs])
    rows.append(row)
    print(row, flush=True)
  lines = ['| workload | runs x rounds | one after another s | one sweep s | '
           'speed-up | first call s (solo, summed / sweep) | final loss gap |',
           '|---|---|---:|---:|---:|---|---:|']
  for r in rows:
    lines.append(
        f"| {wl.WORKLOADS[r['workload']].description} | {r['runs']} "
        f"({len(r['client_lrs']) or 1} rates x {r['seeds']} seeds) x "
        f"{r['rounds']} | {r['solo_s']:.1f} | {r['sweep_s']:.1f} | "
        f"{r['ratio']:.1f}x | {r['solo_first_s']:.1f} / "
        f"{r['sweep_first_s']:.1f} | {r['max_relative_loss_gap']:.1e} |")
  text = (f'FedAvg (workloads.py: 10 local steps of batch 20), '
          f'{FLAGS.clients_per_round} clients per round, '
          f'{FLAGS.rounds_per_call} rounds per call, a final evaluation; '
          'wall time end to end with compilation. "final loss gap": the '
          'largest relative difference of a seed\'s final train loss, sweep '
          'against alone.\n\n' + '\n'.join(lines))
  result = dict(machine=info, rows=rows, seconds=time.perf_counter() - start)
  tc.finish(result, text, tc.output_path(FLAGS.out, FLAGS.quick,
                                         'sweep_speed'))


if __name__ == '__main__':
  app.run(main)
