r"""Privacy against accuracy: DP-FedAvg, adaptive clipping and DP-FTRL.

For each mechanism and each noise multiplier ``z`` it trains FedAvg with the
mechanism's transforms (``fedjax_engine.privacy``) on the FEMNIST subset in
``../shared/data/femnist`` and reports the final test accuracy beside the
epsilon that ``fedjax_engine.accounting`` gives for the run, at the same
clients per round, rounds and delta for every point:

* ``dp_fedavg``: DP-FedAvg with a fixed clip norm S (McMahan, Ramage,
  Talwar, Zhang, "Learning Differentially Private Recurrent Language
  Models", ICLR 2018): updates clipped to S, summed, Gaussian noise of std
  z S added once, divided by the planned m clients.
* ``dp_fedavg_adaptive``: the same with the clip norm following the median
  of the update norms, privately (Andrew, Thakkar, McMahan, Ramaswamy,
  "Differentially Private Learning with Adaptive Clipping", NeurIPS 2021;
  target quantile 0.5, clip step 0.2, count noise m / 20, S the initial
  clip norm); z is the privacy of both noisy sums together.
* ``dp_ftrl``: DP-FTRL with tree-aggregated noise (Kairouz, McMahan, Song,
  Thakkar, Thakurta, Xu, "Practical and Private (Deep) Learning without
  Sampling or Shuffling", ICML 2021).

Both DP-FedAvg variants sample clients as their papers account for them:
Poisson sampling, each client in a round with probability m / N
(``run_experiment(poisson_rate=m / N)``, the CLI's
``--dp_sampling=poisson``). DP-FTRL needs no sampling amplification and uses
the engine's uniform sampling of m clients without replacement, accounted
for with each client's Binomial(T, m / N) participations. z = 0 clips
without noise (epsilon infinite); a FedAvg row without clipping or noise is
the non-private baseline.

The model is the 2NN (784-200-200-62, 209,662 parameters) by default: the
LEAF FEMNIST CNN (``--model=cnn``, 6,603,710 parameters) is too slow for a
grid of points on 2 CPU cores, where even the smaller EMNIST CNN (1.2
million) takes about 3.6 s a round at 10 clients (``femnist_accuracy.py``).
Without the FEMNIST files the script says so and uses Synthetic(1,1)
instead.

Everything runs in this process through ``fedjax_engine.runner.
run_experiment``. It prints a line per point and a markdown table, and
writes ``results/privacy_accuracy.json`` and ``results/privacy_accuracy.md``.

  python benchmarks/privacy_accuracy.py          # 16 points of 200 rounds
  python benchmarks/privacy_accuracy.py --quick  # smoke test, 3 rounds a point
  python benchmarks/privacy_accuracy.py --mechanisms=dp_ftrl \
      --noise_multipliers=0.5,1,2
"""

import os
import sys
import time

from absl import app
from absl import flags
from absl import logging
import numpy as np
import optax

import fedjax_engine as fe
from fedjax_engine import accounting

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
  sys.path.insert(0, HERE)

import transform_common as tc  # pylint: disable=g-import-not-at-top,wrong-import-position

MECHANISMS = ('dp_fedavg', 'dp_fedavg_adaptive', 'dp_ftrl')

FLAGS = flags.FLAGS
flags.DEFINE_list('mechanisms', list(MECHANISMS),
                  f'Mechanisms to run, from {", ".join(MECHANISMS)}.')
flags.DEFINE_list('noise_multipliers', ['0', '0.3', '0.5', '1', '2'],
                  'Noise multipliers z of every mechanism (0: clipping '
                  'without noise).')
flags.DEFINE_bool('baseline', True, 'Also run FedAvg without clipping or '
                  'noise (uniform sampling).')
flags.DEFINE_integer('clients_per_round', 30, 'm: the planned clients per '
                     'round (the fixed denominator; Poisson rate m / N).',
                     lower_bound=1)
flags.DEFINE_integer('rounds', 200, 'Rounds per point.', lower_bound=1)
flags.DEFINE_float('delta', None, 'delta of the reported epsilon; default '
                   'N^-1.1 with N the training clients (the CLI\'s).')
flags.DEFINE_enum('accountant', 'rdp', accounting.ACCOUNTANTS,
                  'dp-accounting\'s accountant.')
flags.DEFINE_float('clip_norm', 0.3, 'S: the clip norm (the initial one of '
                   'adaptive clipping).', lower_bound=0)
flags.DEFINE_float('target_quantile', 0.5, 'dp_fedavg_adaptive: the '
                   'quantile of the update norms the clip norm follows.')
flags.DEFINE_enum('model', 'mlp', ['logistic', 'mlp', 'cnn'], 'logistic: '
                  'softmax regression on the 784 pixels; mlp: the 2NN '
                  '(784-200-200); cnn: fe.models.femnist_cnn (slow on CPU).')
flags.DEFINE_float('client_lr', 10**-1.5, 'Client SGD learning rate (the '
                   'federated EMNIST reference\'s).')
flags.DEFINE_integer('batch_size', 20, 'Local batch size.', lower_bound=1)
flags.DEFINE_integer('local_epochs', 1, 'Local epochs per round.',
                     lower_bound=1)
flags.DEFINE_float('server_lr', 1.0, 'Server SGD learning rate.')
flags.DEFINE_float('server_momentum', 0.0, 'Server SGD momentum (0: plain '
                   'FedAvg); post-processing, so the privacy is the same.')
flags.DEFINE_integer('eval_every', 20, 'Evaluate every this many rounds.',
                     lower_bound=1)
flags.DEFINE_integer('seed', 0, 'Seed of the params, sampling, client keys '
                     'and noise (the same for every point).')
flags.DEFINE_integer('rounds_per_call', 10, 'Rounds fused per compiled call '
                     '(1 with --quick, so that a steady round is timed).',
                     lower_bound=1)
flags.DEFINE_string('femnist_dir', os.path.join(tc.SHARED_DATA, 'femnist'),
                    'Folder with fed_emnist_{train,test}.h5; where absent, '
                    'Synthetic(1,1) is used instead.')
flags.DEFINE_bool('quick', False, 'Smoke test: 3 rounds per point (numbers '
                  'mean nothing); writes to a temporary folder unless --out '
                  'is given.')
flags.DEFINE_string('out', None, 'JSON output (the markdown goes beside it '
                    'with .md); default results/privacy_accuracy.json.')
flags.DEFINE_integer('cpu_devices', 0, 'JAX CPU devices to shard cohorts '
                     'over; 0: one per core (as the CLI).', lower_bound=0)


def _data():
  """``(train, test, text, fallback note or None, image data?)``."""
  folder = FLAGS.femnist_dir
  files = [os.path.join(folder, f'fed_emnist_{s}.h5') for s in ('train',
                                                               'test')]
  if all(os.path.exists(f) for f in files):
    train, test = fe.datasets.emnist(data_dir=folder, download=False)
    sizes = train.sizes
    text = (f'FEMNIST subset ({os.path.abspath(folder)}): {train.num_clients}'
            f' writers, {train.num_examples} training / {test.num_examples} '
            f'test images, 62 classes, TFF pixels (1 = background); '
            f'{int(sizes.min())} / {int(np.median(sizes))} / '
            f'{int(sizes.max())} training images per writer (min / '
            'median / max); each writer tested on its own test images, '
            'accuracy pooled over all test images')
    return train, test, text, None, True
  note = (f'FEMNIST not found in {os.path.abspath(folder)}: using '
          'Synthetic(1,1) with 300 clients instead (60 features, 10 '
          'classes); the defaults were chosen for FEMNIST.')
  print(f'WARNING: {note}', flush=True)
  train, test = fe.datasets.synthetic(alpha=1.0, beta=1.0, num_clients=300,
                                      seed=0)
  text = (f'Synthetic(1,1), 300 clients, {train.num_examples} training / '
          f'{test.num_examples} test examples')
  return train, test, text, note, False


def _model(images):
  features, classes = (784, 62) if images else (60, 10)
  if FLAGS.model == 'logistic':
    return (fe.models.logistic_regression(num_features=features,
                                          num_classes=classes),
            f'softmax regression ({features}-{classes})')
  if FLAGS.model == 'cnn' and images:
    return fe.models.femnist_cnn(num_classes=classes), 'the FEMNIST CNN'
  if FLAGS.model == 'cnn':
    print('WARNING: --model=cnn needs images; using the MLP.', flush=True)
  return (fe.models.mlp(num_features=features, num_classes=classes),
          f'the 2NN MLP ({features}-200-200-{classes})')


def _epsilon(mechanism, z, *, m, n, rounds, delta):
  """The run's epsilon, None for no privacy (no noise, or no mechanism)."""
  if mechanism == 'none' or z == 0:
    return None
  # dp_accounting logs a warning for every RDP order it cannot evaluate.
  verbosity = logging.get_verbosity()
  logging.set_verbosity(logging.ERROR)
  try:
    return accounting.epsilon(
        noise_multiplier=z, clients_per_round=m, num_clients=n,
        rounds=rounds, delta=delta,
        mechanism='dp_ftrl' if mechanism == 'dp_ftrl' else 'dp_fedavg',
        accountant=FLAGS.accountant,
        sampling='without_replacement' if mechanism == 'dp_ftrl'
        else 'poisson')
  finally:
    logging.set_verbosity(verbosity)


def _transforms(mechanism, z, m):
  if mechanism == 'none':
    return []
  if mechanism == 'dp_ftrl':
    return fe.privacy.dp_ftrl(clip_norm=FLAGS.clip_norm, noise_multiplier=z,
                              expected_clients=m, seed=FLAGS.seed)
  return fe.privacy.dp_fedavg(
      clip_norm=FLAGS.clip_norm, noise_multiplier=z, expected_clients=m,
      target_quantile=(FLAGS.target_quantile
                       if mechanism == 'dp_fedavg_adaptive' else None))


def main(argv):
  del argv
  unknown = [m for m in FLAGS.mechanisms if m not in MECHANISMS]
  if unknown:
    raise app.UsageError(f'unknown mechanisms {unknown}; known: '
                         f'{", ".join(MECHANISMS)}')
  noises = [float(z) for z in FLAGS.noise_multipliers]
  if any(z < 0 for z in noises):
    raise app.UsageError(f'--noise_multipliers must be >= 0, got {noises}')
  out = tc.output_path(FLAGS.out, FLAGS.quick, 'privacy_accuracy')
  info = tc.start(FLAGS.cpu_devices)
  start = time.perf_counter()
  train, test, data_text, note, images = _data()
  model, model_text = _model(images)
  n, m = train.num_clients, FLAGS.clients_per_round
  if m > n:
    raise app.UsageError(f'--clients_per_round={m} exceeds the {n} clients')
  rounds = 3 if FLAGS.quick else FLAGS.rounds
  delta = FLAGS.delta or n ** -1.1
  batching = fe.Batching(batch_size=FLAGS.batch_size,
                         local_epochs=FLAGS.local_epochs)
  base = fe.algorithms.fedavg(
      model, client_optimizer=optax.sgd(FLAGS.client_lr),
      server_optimizer=optax.sgd(FLAGS.server_lr,
                                 momentum=FLAGS.server_momentum or None))
  common = dict(batching=batching, clients_per_round=m, num_rounds=rounds,
                eval_every=min(FLAGS.eval_every, rounds), seed=FLAGS.seed,
                rounds_per_call=1 if FLAGS.quick else FLAGS.rounds_per_call)
  points = ([('none', 0.0)] if FLAGS.baseline else []) + [
      (mech, z) for mech in FLAGS.mechanisms for z in noises]
  print(f'{len(points)} points, {rounds} rounds each; {data_text}; model '
        f'{model_text}', flush=True)
  rows = []
  for mechanism, z in points:
    poisson = mechanism.startswith('dp_fedavg')
    algorithm = fe.transforms.apply(base, *_transforms(mechanism, z, m))
    history, wall = tc.run(algorithm, model, train, test,
                           poisson_rate=m / n if poisson else None, **common)
    s = tc.summary(history, wall)
    clips = [h['clip_norm'] for h in history if h.get('clients', 0) > 0
             and 'clip_norm' in h]
    s.update(
        mechanism=mechanism, noise_multiplier=z,
        clip_norm=None if mechanism == 'none' else FLAGS.clip_norm,
        adaptive=mechanism == 'dp_fedavg_adaptive',
        final_clip_norm=clips[-1] if clips else None,
        clients_per_round=m, num_clients=n, delta=delta,
        sampling=('poisson' if poisson else 'uniform without replacement'),
        epsilon=_epsilon(mechanism, z, m=m, n=n, rounds=rounds, delta=delta))
    eps = s['epsilon']
    label = ('FedAvg, no clipping or noise' if mechanism == 'none'
             else f'{mechanism} z={z:g}')
    tc.progress(label, s, (f', epsilon {eps:.3g}' if eps is not None
                           else ', epsilon inf') +
                (f", update norm {s['mean_update_norm']:.3f}, clipped "
                 f"{s['mean_clipped']:.2f}" if 'mean_update_norm' in s
                 else ''))
    rows.append(s)
  result = dict(
      machine=info, quick=FLAGS.quick, data=data_text, model=model_text,
      note=note, flags={f.name: f.value for f in
                        FLAGS.get_key_flags_for_module(sys.modules[__name__])},
      rows=rows, seconds=time.perf_counter() - start)
  tc.finish(result, markdown(result, rounds=rounds, m=m, n=n, delta=delta),
            out)


def markdown(result, *, rounds, m, n, delta):
  lines = [
      '| mechanism | noise z | clip S | clients/round | rounds | delta | '
      'sampling | epsilon | test acc % | mean update norm | clipped | '
      'final clip | wall s | s/round |',
      '|---|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|']
  for r in result['rows']:
    eps = r['epsilon']
    acc = tc.pct(r['test_accuracy'])
    if r['first_nonfinite_round'] is not None:
      acc += f" (diverged at round {r['first_nonfinite_round']})"
    opt = lambda key, fmt: '' if r.get(key) is None else format(r[key], fmt)
    lines.append(
        f"| {'FedAvg (no DP)' if r['mechanism'] == 'none' else r['mechanism']}"
        f" | {r['noise_multiplier']:g} | {opt('clip_norm', 'g')} | "
        f"{r['clients_per_round']} | {r['rounds']} | {r['delta']:.3g} | "
        f"{r['sampling']} | {'inf' if eps is None else f'{eps:.3g}'} | {acc} |"
        f" {opt('mean_update_norm', '.3f')} | {opt('mean_clipped', '.2f')} | "
        f"{opt('final_clip_norm', '.3f')} | {r['wall_s']:.1f} | "
        f"{r['s_per_round']:.4f} |")
  f = FLAGS
  lines += [
      '',
      f"**Setup.** {result['data']}. Model: {result['model']}. Every point: "
      f'FedAvg, {f.local_epochs} local epoch(s) of batch {f.batch_size}, '
      f'client SGD lr {f.client_lr:.4g}, server SGD lr {f.server_lr:g} '
      f'momentum {f.server_momentum:g}, m = {m} planned clients per round '
      f'of N = {n}, {rounds} rounds, seed {f.seed}, clip norm S = '
      f'{f.clip_norm:g} (adaptive: initial, target quantile '
      f'{f.target_quantile:g}), delta = {delta:.3g}; epsilon from '
      f"fedjax_engine.accounting ({f.accountant}) for the run's rounds. "
      'DP-FedAvg (fixed and adaptive) samples each client with probability '
      'm / N (Poisson) and divides the noisy sum by m; DP-FTRL samples m '
      'clients without replacement and is accounted with Binomial(T, m / N) '
      'participations per client (no amplification); FedAvg (no DP) samples '
      'm without replacement and averages by example counts. '
      '"mean update norm" and "clipped" average the clients\' L2 update '
      'norms before clipping and the fraction clipped over the rounds; '
      '"final clip" is the adaptive clip norm of the last round. Accuracy '
      'is the last evaluation\'s, after the last round; s/round is the '
      'median round (evaluation left out).',
      '',
      '**Published numbers.** None reproducible at this scale: DP-FedAvg '
      '(McMahan et al. 2018) trains on 763,430 users, adaptive clipping '
      '(Andrew et al. 2021) and DP-FTRL (Kairouz et al. 2021) on federated '
      'EMNIST with all 3,400 writers and on Stack Overflow; with the 300 '
      'writers here the same noise buys far less privacy (epsilon grows '
      'with m / N and with the rounds each client joins), so neither their '
      'epsilons nor their accuracies carry over.']
  if result['note']:
    lines += ['', f"Note: {result['note']}"]
  return '\n'.join(lines)


if __name__ == '__main__':
  app.run(main)
