"""What the privacy, robustness and compression benchmarks share.

``privacy_accuracy.py``, ``robustness.py`` and ``compression_accuracy.py``
each compare the transforms of one family (``fedjax_engine.privacy``,
``robust`` and ``attacks``, ``compression``) on top of FedAvg, in one
process through ``fedjax_engine.runner.run_experiment``, as
``algorithm_quality.py`` does for algorithms. This module holds the parts
they have in common: one run and its summary, the federated MNIST split
(with its Synthetic fallback), the machine header and the JSON + markdown
output.
"""

import json
import logging as py_logging
import math
import os
import statistics
import sys
import tempfile
import time

import jax
import numpy as np

import fedjax_engine as fe
from fedjax_engine.runner import run_experiment

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
  sys.path.insert(0, HERE)

import harness  # pylint: disable=g-import-not-at-top,wrong-import-position

SHARED_DATA = os.path.join(HERE, '..', '..', 'shared', 'data')

# Client metrics of the transforms, averaged over a run's rounds.
TRANSFORM_METRICS = ('update_norm', 'clipped', 'clip_norm', 'uplink_bits',
                     'uplink_bits_uncompressed', 'downlink_bits', 'malicious')


def run(algorithm, model, train, test, **kwargs):
  """One run: ``(history, wall seconds)``.

  Non-finite losses are recorded, not raised (``on_nonfinite='warn'``), so
  a point that diverges (a strong attack, heavy noise) keeps its row;
  ``kwargs`` go to ``run_experiment``.
  """
  start = time.perf_counter()
  history = run_experiment(algorithm, model, train, test, progress=False,
                           on_nonfinite='warn', **kwargs)
  return history, time.perf_counter() - start


def evaluations(history):
  return [h for h in history if 'test_loss' in h]


def first_nonfinite(history):
  for h in history:
    for key in ('train_loss', 'test_loss'):
      if key in h and not math.isfinite(h[key]):
        return h['round']
  return None


def summary(history, wall):
  """The numbers every row reports of one run.

  ``s_per_round`` is the median of the runner's per-round seconds (a fused
  call's time over its rounds, evaluations left out), ``s_per_round_min``
  the fastest: the steady round where a short run's median still holds
  compilation (rounds driven one by one compile in each of the first two,
  as measured on the 2NN); ``mean_<metric>``
  averages a transform's client metric over the rounds (rounds without
  clients, possible under Poisson sampling, left out).
  """
  last = evaluations(history)[-1]
  out = dict(
      test_accuracy=last.get('test_accuracy'), test_loss=last.get('test_loss'),
      rounds=history[-1]['round'], wall_s=wall,
      s_per_round=statistics.median(h['seconds'] for h in history),
      s_per_round_min=min(h['seconds'] for h in history),
      first_nonfinite_round=first_nonfinite(history),
      mean_clients=float(np.mean([h.get('clients', 0) for h in history])),
      curve=[[h['round'], h.get('test_accuracy')]
             for h in evaluations(history)])
  for name in TRANSFORM_METRICS:
    values = [h[name] for h in history
              if name in h and h.get('clients', 1) > 0]
    if values:
      out['mean_' + name] = float(np.mean(values))
  return out


def progress(label, s, extra=''):
  acc = s['test_accuracy']
  print(f'  {label}: {s["rounds"]} rounds in {s["wall_s"]:.1f} s '
        f'({s["s_per_round"]:.4f} s/round, fastest '
        f'{s["s_per_round_min"]:.4f}), test accuracy '
        + ('n/a' if acc is None else f'{acc:.4f}') + extra, flush=True)


def mnist_or_synthetic(mnist_dir, *, num_clients, partition, alpha, seed):
  """MNIST split into ``num_clients`` training clients, the test set one
  evaluation client (as the CLI's ``--dataset=mnist``).

  Returns ``(train, test, data name, fallback note or None)``. Where the
  MNIST files are absent, Synthetic(1,1) is generated with 600 clients,
  pooled and split the same way, and the note says so.
  """
  names = ('train-images-idx3-ubyte', 'train-labels-idx1-ubyte',
           't10k-images-idx3-ubyte', 't10k-labels-idx1-ubyte')
  if all(os.path.exists(os.path.join(mnist_dir, n)) or
         os.path.exists(os.path.join(mnist_dir, n + '.gz')) for n in names):
    d = fe.datasets.mnist(data_dir=mnist_dir, download=False)
    tx, ty, vx, vy, name, note = (d.train_x, d.train_y, d.test_x, d.test_y,
                                  'MNIST', None)
  else:
    note = (f'MNIST not found in {os.path.abspath(mnist_dir)}: using '
            'Synthetic(1,1) instead (600 generated clients pooled, 60 '
            'features, 10 classes, then split as MNIST would be).')
    print(f'WARNING: {note}', flush=True)
    gen_train, gen_test = fe.datasets.synthetic(alpha=1.0, beta=1.0,
                                                num_clients=600, seed=seed)
    tx, ty = gen_train.features['x'], gen_train.features['y']
    vx, vy = gen_test.features['x'], gen_test.features['y']
    name = 'Synthetic(1,1) pooled'
  if partition == 'iid':
    train = fe.datasets.partition.iid(tx, ty, num_clients=num_clients,
                                      seed=seed)
    split = f'IID split (equal sizes) over {num_clients} clients'
  else:
    train = fe.datasets.partition.dirichlet(tx, ty, num_clients=num_clients,
                                            alpha=alpha, seed=seed)
    split = (f'Dirichlet(alpha={alpha:g}) label split over {num_clients} '
             'clients')
  test = fe.FederatedData({'x': vx, 'y': vy}, [0, len(vy)], ['test'])
  sizes = train.sizes
  text = (f'{name} ({train.num_examples} training, {len(vy)} test '
          f'examples), {split} (data seed {seed}; client sizes '
          f'{int(sizes.min())} / {int(np.median(sizes))} / {int(sizes.max())} '
          'min / median / max), the whole test set as one evaluation client')
  return train, test, text, note


def params_size(model):
  return fe.tree.size(model.init(jax.random.key(0)))


def output_path(out, quick, name):
  """``out``; by default ``results/<name>.json``, or a temporary folder's
  with ``quick``."""
  if out:
    return out
  if quick:
    return os.path.join(tempfile.mkdtemp(prefix=name + '_'), name + '.json')
  return os.path.join(HERE, 'results', name + '.json')


def start(cpu_devices):
  """Sets the CPU device count (before any JAX computation) and prints the
  machine; returns its description (``harness.machine_info``)."""
  jax.config.update('jax_num_cpu_devices', cpu_devices or os.cpu_count() or 1)
  # As the CLI: no INFO line about the TPU backend that is not there.
  py_logging.getLogger('jax._src.xla_bridge').setLevel(py_logging.WARNING)
  info = harness.machine_info()
  info.update(harness.device_info())
  print(f'# {harness.describe_machine(info)}', flush=True)
  return info


def finish(result, text, out):
  """Prints ``text`` under the machine header and writes the JSON and the
  markdown (beside it, ``.md``)."""
  info = result['machine']
  info['load_avg_end'] = os.getloadavg()
  header = (f'Machine: {harness.describe_machine(info)}; '
            f"{info['devices']} {info['backend']} devices. Whole run "
            f"{result['seconds']:.0f} s.\n\n")
  print('\n' + header + text, flush=True)
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  with open(out, 'w') as f:
    json.dump(result, f, indent=1)
  md = os.path.splitext(out)[0] + '.md'
  with open(md, 'w') as f:
    f.write(header + text + '\n')
  print(f'\nwrote {out} and {md}')


def pct(value):
  return '' if value is None or not math.isfinite(value) else (
      f'{100 * value:.1f}')
