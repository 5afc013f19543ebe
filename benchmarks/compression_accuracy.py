r"""Compression: accuracy against uplink bits.

(Not named ``compression.py``: on the script's path that name would shadow
the ``compression`` package that JAX imports at start-up.)

Each method is one ``fedjax_engine.compression`` transform on FedAvg's
client updates (the whole update as one vector of d values, as the papers
treat it); the script trains with it and reports the final test accuracy
beside the uplink bits the clients sent, from the transforms' own
``uplink_bits`` client metric:

* ``none``: 32 d bits per client (float32 values, no transform);
* ``quantize:b``: stochastic b-bit quantization between the update's min
  and max (Suresh, Yu, Kumar, McMahan, "Distributed Mean Estimation with
  Limited Communication", ICML 2017), b d + 64 bits;
* ``top_k:f`` and ``random_k:f``: the k = f d largest or random
  coordinates, with error feedback (Stich, Cordonnier, Jaggi, "Sparsified
  SGD with Memory", NeurIPS 2018; Karimireddy, Rebjock, Stich, Jaggi,
  "Error Feedback Fixes SignSGD and other Gradient Compression Schemes",
  ICML 2019), k (32 + ceil(log2 d)) and 32 k bits;
* ``drive``: one bit per coordinate after a randomized Hadamard rotation,
  and one scale (Vargaftik et al., "DRIVE: One-bit Distributed Mean
  Estimation", NeurIPS 2021), 2^ceil(log2 d) + 32 bits.

Setting: MNIST from ``../shared/data/mnist`` (Synthetic(1,1) when absent,
with a message), IID over 100 clients (``--partition=dirichlet`` for label
skew), the 2NN MLP (784-200-200-10, 199,210 parameters; ``--model=logistic``
for softmax regression), 20 clients per round, 20 local steps of batch 20,
client SGD lr 0.05, 200 rounds, the same for every method.

Everything runs in this process through ``fedjax_engine.runner.
run_experiment``. It prints a line per method and a markdown table, and
writes ``results/compression_accuracy.json`` and
``results/compression_accuracy.md``.

  python benchmarks/compression_accuracy.py          # 9 methods
  python benchmarks/compression_accuracy.py --quick  # smoke, 3 rounds each
  python benchmarks/compression_accuracy.py --methods=none,top_k:0.01 \
      --noerror_feedback
"""

import os
import sys
import time

from absl import app
from absl import flags
import numpy as np
import optax

import fedjax_engine as fe

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
  sys.path.insert(0, HERE)

import transform_common as tc  # pylint: disable=g-import-not-at-top,wrong-import-position

METHODS = ('none', 'quantize:2', 'quantize:4', 'quantize:8', 'top_k:0.01',
           'top_k:0.1', 'random_k:0.01', 'random_k:0.1', 'drive')

FLAGS = flags.FLAGS
flags.DEFINE_list('methods', list(METHODS), 'Methods, each none, drive, '
                  'quantize:BITS, top_k:FRACTION or random_k:FRACTION.')
flags.DEFINE_bool('error_feedback', True, 'top_k and random_k: keep what '
                  'was not sent in a per-client residual.')
flags.DEFINE_integer('num_clients', 100, 'Training clients.', lower_bound=2)
flags.DEFINE_enum('partition', 'iid', ['iid', 'dirichlet'], 'How MNIST is '
                  'split into clients.')
flags.DEFINE_float('dirichlet_alpha', 0.5, '--partition=dirichlet: the '
                   'concentration.')
flags.DEFINE_integer('clients_per_round', 20, 'Clients per round (uniform, '
                     'without replacement).', lower_bound=1)
flags.DEFINE_integer('rounds', 200, 'Rounds per method.', lower_bound=1)
flags.DEFINE_enum('model', 'mlp', ['logistic', 'mlp'], 'Softmax regression '
                  'or the 2NN MLP on the 784 pixels.')
flags.DEFINE_float('client_lr', 0.05, 'Client SGD learning rate.')
flags.DEFINE_integer('batch_size', 20, 'Local batch size.', lower_bound=1)
flags.DEFINE_integer('local_steps', 20, 'Local steps per round.',
                     lower_bound=1)
flags.DEFINE_integer('eval_every', 25, 'Evaluate every this many rounds.',
                     lower_bound=1)
flags.DEFINE_integer('seed', 0, 'Seed of the params, sampling, client keys '
                     'and the split (the same for every method).')
flags.DEFINE_integer('rounds_per_call', 10, 'Rounds fused per compiled call '
                     '(1 with --quick, so that a steady round is timed).',
                     lower_bound=1)
flags.DEFINE_string('mnist_dir', os.path.join(tc.SHARED_DATA, 'mnist'),
                    'Folder with the four MNIST idx files; where absent, '
                    'Synthetic(1,1) is used instead.')
flags.DEFINE_bool('quick', False, 'Smoke test: 3 rounds per method (numbers '
                  'mean nothing); writes to a temporary folder unless --out '
                  'is given.')
flags.DEFINE_string('out', None, 'JSON output (the markdown goes beside it '
                    'with .md); default results/compression_accuracy.json.')
flags.DEFINE_integer('cpu_devices', 0, 'JAX CPU devices to shard cohorts '
                     'over; 0: one per core (as the CLI).', lower_bound=0)


def parse_method(spec):
  """``'top_k:0.01'`` -> ``(label, list of transforms)``.

  Raises:
    app.UsageError: for an unknown name or a bad parameter.
  """
  name, _, value = spec.partition(':')
  try:
    if name == 'none' and not value:
      return 'none (float32)', []
    if name == 'drive' and not value:
      return 'drive', fe.compression.transforms_from_flags(compression=name)
    if name == 'quantize' and value:
      bits = int(value)
      return (f'quantize {bits} bits',
              fe.compression.transforms_from_flags(compression=name,
                                                   bits=bits))
    if name in ('top_k', 'random_k') and value:
      fraction = float(value)
      ef = FLAGS.error_feedback
      return (f'{name} {fraction:.0%}' + (' + EF' if ef else ''),
              fe.compression.transforms_from_flags(
                  compression=name, fraction=fraction, error_feedback=ef))
  except ValueError as e:
    raise app.UsageError(f'--methods: {spec!r}: {e}') from e
  raise app.UsageError(f'--methods: {spec!r} is not none, drive, '
                       'quantize:BITS, top_k:FRACTION or random_k:FRACTION')


def main(argv):
  del argv
  methods = [(spec,) + parse_method(spec) for spec in FLAGS.methods]
  out = tc.output_path(FLAGS.out, FLAGS.quick, 'compression_accuracy')
  info = tc.start(FLAGS.cpu_devices)
  start = time.perf_counter()
  train, test, data_text, note = tc.mnist_or_synthetic(
      FLAGS.mnist_dir, num_clients=FLAGS.num_clients,
      partition=FLAGS.partition, alpha=FLAGS.dirichlet_alpha, seed=FLAGS.seed)
  features = train.features['x'][0].size
  build = (fe.models.logistic_regression if FLAGS.model == 'logistic'
           else fe.models.mlp)
  model = build(num_features=features, num_classes=10)
  d = tc.params_size(model)
  m = FLAGS.clients_per_round
  if m > train.num_clients:
    raise app.UsageError(f'--clients_per_round={m} exceeds the '
                         f'{train.num_clients} clients')
  rounds = 3 if FLAGS.quick else FLAGS.rounds
  base = fe.algorithms.fedavg(model,
                              client_optimizer=optax.sgd(FLAGS.client_lr))
  common = dict(
      batching=fe.Batching(batch_size=FLAGS.batch_size,
                           local_steps=FLAGS.local_steps),
      clients_per_round=m, num_rounds=rounds,
      eval_every=min(FLAGS.eval_every, rounds), seed=FLAGS.seed,
      rounds_per_call=1 if FLAGS.quick else FLAGS.rounds_per_call)
  print(f'{len(methods)} methods, {rounds} rounds each; {data_text}; model '
        f'{FLAGS.model}, d = {d} parameters', flush=True)
  rows = []
  for spec, label, stages in methods:
    algorithm = fe.transforms.apply(base, *stages)
    history, wall = tc.run(algorithm, model, train, test, **common)
    s = tc.summary(history, wall)
    # Without a compressor nothing counts bits: a client sends d float32s.
    per_client = [h.get('uplink_bits', 32.0 * d) for h in history]
    clients = [h['clients'] for h in history]
    s.update(
        method=spec, label=label,
        uplink_bits_per_client=float(np.mean(per_client)),
        uplink_bits_uncompressed=32.0 * d,
        uplink_bits_total=float(np.dot(per_client, clients)))
    s['compression_ratio'] = (s['uplink_bits_uncompressed'] /
                              s['uplink_bits_per_client'])
    tc.progress(label, s, f", {s['uplink_bits_per_client']:,.0f} uplink bits"
                f" per client per round ({s['compression_ratio']:.1f}x "
                'smaller than float32)')
    rows.append(s)
  result = dict(
      machine=info, quick=FLAGS.quick, data=data_text, note=note, params=d,
      flags={f.name: f.value for f in
             FLAGS.get_key_flags_for_module(sys.modules[__name__])},
      rows=rows, seconds=time.perf_counter() - start)
  tc.finish(result, markdown(result, rounds=rounds, m=m), out)


def markdown(result, *, rounds, m):
  lines = [
      '| method | uplink bits / client / round | x smaller | total uplink '
      'MB | test acc % | wall s | s/round |',
      '|---|---:|---:|---:|---:|---:|---:|']
  for r in result['rows']:
    acc = tc.pct(r['test_accuracy'])
    if r['first_nonfinite_round'] is not None:
      acc += f" (diverged at round {r['first_nonfinite_round']})"
    lines.append(
        f"| {r['label']} | {r['uplink_bits_per_client']:,.0f} | "
        f"{r['compression_ratio']:.1f} | "
        f"{r['uplink_bits_total'] / 8e6:,.2f} | {acc} | {r['wall_s']:.1f} | "
        f"{r['s_per_round']:.4f} |")
  f = FLAGS
  lines += [
      '',
      f"**Setup.** {result['data']}. Model: {f.model} (d = "
      f"{result['params']:,} parameters). Every method: FedAvg, {m} clients "
      f'per round drawn uniformly, {f.local_steps} local steps of batch '
      f'{f.batch_size}, client SGD lr {f.client_lr:g}, server SGD lr 1, '
      f'example-weighted mean, {rounds} rounds, seed {f.seed}; error '
      f"feedback {'on' if f.error_feedback else 'off'} for top_k and "
      'random_k (random_k is then unscaled). Uplink bits: the mean over '
      'rounds of the clients\' `uplink_bits` metric (exact message sizes: '
      'values and scales as 32-bit floats, top_k\'s indices of '
      'ceil(log2 d) bits, random_k\'s indices derived from the shared '
      'key); float32 is 32 d. Total: summed over every client of every '
      'round (MB = 10^6 bytes). The downlink (the params, 32 d bits per '
      'client) is the same for every method. Accuracy is the last '
      'evaluation\'s, after the last round; s/round is the median round '
      '(evaluation left out).']
  if result['note']:
    lines += ['', f"Note: {result['note']}"]
  return '\n'.join(lines)


if __name__ == '__main__':
  app.run(main)
