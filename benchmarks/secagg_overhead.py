r"""Secure aggregation's cost per round at 10, 100 and 1,000 clients.

FedAvg rounds of the benchmark suite's workloads (``workloads.py``: 10
local steps of batch 20, client SGD) with no secure
aggregation, with SecAgg (every participant masks with every other:
Bonawitz et al., CCS 2017) and with SecAgg+ (``2 ceil(log2 n)`` neighbours
on a random ring: Bell et al., CCS 2020), all from
``fedjax_engine.secure_aggregation`` with 32-bit words and 10% of the
clients dropping after masking. For each it reports the seconds of a
compiled round (median of the timed rounds, after a first round that
compiles), the first round, the uplink bits per client (the masked vector
plus the protocol's keys and shares) and the quantization step that the
modulus leaves: with values clipped to ``[-c, c]`` and at most ``n``
clients summed, a sum never overflows ``2^31`` when one level is ``c /
floor((2^31 - 1) / n)``.

Workloads: ``synthetic_logistic`` (610 params) and ``emnist_2nn``
(209,662 params, EMNIST-shaped clients). Full SecAgg is skipped where its
``n^2 d`` mask words a round pass ``--full_secagg_max_words`` (the 2NN at
1,000 clients would need 2 x 10^11).

  python benchmarks/secagg_overhead.py           # both models, ~10 min
  python benchmarks/secagg_overhead.py --quick   # smoke test
"""

import math
import os
import statistics
import sys
import time

from absl import app
from absl import flags
import jax
import numpy as np

import fedjax_engine as fe

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
  sys.path.insert(0, HERE)

import transform_common as tc  # pylint: disable=g-import-not-at-top,wrong-import-position
import workloads as wl  # pylint: disable=g-import-not-at-top,wrong-import-position

MODES = ('none', 'secagg', 'secagg_plus')

FLAGS = flags.FLAGS
flags.DEFINE_list('clients', ['10', '100', '1000'], 'Clients per round.')
flags.DEFINE_list('workloads', ['synthetic_logistic', 'emnist_2nn'],
                  'Workloads of the benchmark suite (benchmarks/workloads.py).')
flags.DEFINE_float('full_secagg_max_words', 3e9, 'Full SecAgg is skipped '
                   'where its n^2 d mask words a round exceed this.')
flags.DEFINE_integer('timed_rounds', 3, 'Rounds timed after the first.',
                     lower_bound=1)
flags.DEFINE_float('clip', 0.1, 'c: values clipped to [-c, c].')
flags.DEFINE_float('dropout', 0.1, 'Share of clients dropping after '
                   'masking.')
flags.DEFINE_bool('quick', False, 'Smoke test: 10 clients, one timed round.')
flags.DEFINE_string('out', None, 'JSON output (markdown beside it); default '
                    'results/secagg_overhead.json.')
flags.DEFINE_integer('cpu_devices', 0, 'JAX CPU devices; 0: one per core.',
                     lower_bound=0)


def _workload(name, num_clients):
  """The benchmark suite's workload: its data, model and FedAvg."""
  setup = wl.build(wl.WORKLOADS[name], num_clients=num_clients)
  return setup.train, setup.model, setup.algorithm, setup.batching


def _time(workload, n, mode):
  train, model, algorithm, batching = workload
  if mode != 'none':
    neighbors = (2 * math.ceil(math.log2(n)) if mode == 'secagg_plus'
                 else None)
    algorithm = fe.transforms.apply(
        algorithm, fe.secure_aggregation.secure_aggregation(
            clip=FLAGS.clip, max_clients=n, neighbors=neighbors,
            dropout_rate=FLAGS.dropout))
  rnd = fe.make_round(algorithm, train, clients_per_round=n,
                      batching=batching)
  state = algorithm.init(model.init(jax.random.key(0)))
  rng = np.random.default_rng(0)
  seconds, metrics = [], None
  for r in range(1 + FLAGS.timed_rounds):
    cohort = rnd.select(rng.choice(train.num_clients, n, replace=False))
    start = time.perf_counter()
    state, _, metrics = rnd(state, (), cohort, jax.random.key(r))
    jax.block_until_ready(state)
    seconds.append(time.perf_counter() - start)
  metrics = jax.device_get(metrics)
  row = dict(mode=mode, clients=n, first_s=seconds[0],
             round_s=statistics.median(seconds[1:]),
             train_loss=float(metrics['train_loss']))
  if mode != 'none':
    row.update(uplink_bits=float(metrics['uplink_bits']),
               neighbors=float(metrics['secagg_neighbors']),
               dropped=float(metrics['secagg_dropped']),
               step=FLAGS.clip / ((2 ** 31 - 1) // n))
  return row


def main(argv):
  del argv
  info = tc.start(FLAGS.cpu_devices)
  clients = [10] if FLAGS.quick else [int(c) for c in FLAGS.clients]
  if FLAGS.quick:
    FLAGS.timed_rounds = 1
  start = time.perf_counter()
  rows = []
  for name in FLAGS.workloads:
    workload = _workload(name, max(clients))
    d = tc.params_size(workload[1])
    for n in clients:
      for mode in MODES:
        if mode == 'secagg' and d * n * n > FLAGS.full_secagg_max_words:
          continue
        row = dict(model=name, params=d, **_time(workload, n, mode))
        rows.append(row)
        print(row, flush=True)
  lines = ['| model (params) | clients | secure aggregation | s / round | '
           'x plain | first round s | uplink bits / client | neighbours | '
           'quantization step |', '|---|---|---|---|---|---|---|---|---|']
  plain = {(r['model'], r['clients']): r['round_s'] for r in rows
           if r['mode'] == 'none'}
  for r in rows:
    ratio = r['round_s'] / plain[(r['model'], r['clients'])]
    bits = r.get('uplink_bits', 32 * r['params'])
    lines.append(
        f"| {r['model']} ({r['params']:,}) | {r['clients']} | {r['mode']} | "
        f"{r['round_s']:.3f} | {ratio:.1f} | {r['first_s']:.1f} | "
        f"{bits:,.0f} | {r.get('neighbors', 0):.0f} | "
        f"{r['step']:.1e} |" if 'step' in r else
        f"| {r['model']} ({r['params']:,}) | {r['clients']} | none | "
        f"{r['round_s']:.3f} | 1.0 | {r['first_s']:.1f} | {bits:,.0f} | | |")
  text = (f'FedAvg (workloads.py: 10 local steps of batch 20); 32-bit words, values clipped '
          f'to +-{FLAGS.clip}, {FLAGS.dropout:.0%} of clients dropping after '
          'masking; plain rows send float32 values (32 d bits).\n\n' +
          '\n'.join(lines))
  result = dict(machine=info, rows=rows, seconds=time.perf_counter() - start)
  tc.finish(result, text, tc.output_path(FLAGS.out, FLAGS.quick,
                                         'secagg_overhead'))


if __name__ == '__main__':
  app.run(main)
