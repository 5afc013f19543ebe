r"""Algorithm quality: the papers' comparisons, run on this engine.

Four experiments, each a published claim about one method against FedAvg,
with the same learning rate, rounds and local work for the methods compared:

* ``fedprox_stragglers``: FedProx (mu = 1) keeping the partial work of 90%
  stragglers against FedAvg dropping them, on Synthetic(1,1) generated as
  the FedProx authors' script does (Li et al., "Federated Optimization in
  Heterogeneous Networks", MLSys 2020, Figure 1; the preset
  ``presets/fedprox_synthetic_1_1.txt``).
* ``scaffold_label_skew``: SCAFFOLD against FedAvg on MNIST split by a
  Dirichlet(0.1) label skew over 100 clients: rounds to target accuracies
  (Karimireddy et al., "SCAFFOLD: Stochastic Controlled Averaging for
  Federated Learning", ICML 2020).
* ``personalization_label_skew``: on the same split, each client's accuracy
  on its own test examples: FedAvg's global model, FedAvg plus local
  fine-tuning, Ditto's personal models (Li et al., ICML 2021) and FedRep's
  personal heads (Collins et al., ICML 2021).
* ``qffl_fairness``: q-FFL against FedAvg on Synthetic(1,1) with 100 clients
  as in the q-FFL authors' generator: mean, 10th percentile and worst client
  accuracy (Li et al., "Fair Resource Allocation in Federated Learning",
  ICLR 2020).

Everything runs in this process through ``fedjax_engine.runner.
run_experiment``. It prints a markdown table and per-experiment notes and
writes ``results/algorithm_quality.json`` and ``results/algorithm_quality.md``.

  python benchmarks/algorithm_quality.py          # all four, one seed: ~6 min
  python benchmarks/algorithm_quality.py --quick  # smoke test, 3 rounds: ~1 min
  python benchmarks/algorithm_quality.py --experiments=scaffold_label_skew \
      --seeds=3
"""

import csv
import math
import os
import sys
import tempfile
import time

from absl import app
from absl import flags
import jax
import numpy as np
import optax

import fedjax_engine as fe
from fedjax_engine.runner import run_experiment

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
  sys.path.insert(0, HERE)

import harness  # pylint: disable=g-import-not-at-top,wrong-import-position
import transform_common  # pylint: disable=g-import-not-at-top,wrong-import-position

EXPERIMENTS = ('fedprox_stragglers', 'scaffold_label_skew',
               'personalization_label_skew', 'qffl_fairness')

FLAGS = flags.FLAGS
flags.DEFINE_list('experiments', list(EXPERIMENTS),
                  f'Experiments to run, from {", ".join(EXPERIMENTS)}.')
flags.DEFINE_integer('seeds', 1, 'Runs per method, with seeds 0..N-1 (the '
                     'initial params, client sampling, stragglers and local '
                     'shuffling); the table shows the mean. The data are '
                     'the same for every seed (--data_seed).', lower_bound=1)
flags.DEFINE_integer('data_seed', 0, 'Seed of the generated data and of the '
                     'Dirichlet split.')
flags.DEFINE_bool('quick', False, 'Smoke test: 3 rounds per run (numbers '
                  'mean nothing); writes to a temporary folder unless --out '
                  'is given.')
flags.DEFINE_string('out', None, 'JSON output (the markdown goes beside it '
                    'with .md); default results/algorithm_quality.json.')
flags.DEFINE_integer('cpu_devices', 0, 'JAX CPU devices to shard cohorts '
                     'over; 0: one per core (as the CLI).', lower_bound=0)
flags.DEFINE_string('mnist_dir', os.path.join(HERE, '..', '..', 'shared',
                                              'data', 'mnist'),
                    'Folder with the four MNIST idx files; where absent, the '
                    'label-skew experiments use Synthetic-IID instead.')
# fedprox_stragglers
flags.DEFINE_integer('fedprox_rounds', 200, 'fedprox_stragglers: rounds (the '
                     "paper's 200).")
flags.DEFINE_float('stragglers', 0.9, 'fedprox_stragglers: fraction of each '
                   'cohort that straggles (FedProx keeps their partial work, '
                   'FedAvg drops them).')
flags.DEFINE_float('fedprox_mu', 1.0, 'fedprox_stragglers: mu of FedProx.')
# scaffold_label_skew and personalization_label_skew
flags.DEFINE_float('dirichlet_alpha', 0.1, 'Label-skew experiments: '
                   'Dirichlet concentration of the split.')
flags.DEFINE_integer('label_skew_clients', 100, 'Label-skew experiments: '
                     'clients.')
flags.DEFINE_integer('scaffold_rounds', 300, 'scaffold_label_skew: rounds.')
flags.DEFINE_enum('scaffold_model', 'logistic', ['logistic', 'mlp'],
                  'scaffold_label_skew: model.')
flags.DEFINE_list('targets', ['0.85', '0.9'], 'scaffold_label_skew: test '
                  'accuracies whose first round is reported.')
flags.DEFINE_integer('personal_rounds', 200, 'personalization_label_skew: '
                     'rounds.')
flags.DEFINE_integer('finetune_steps', 5, 'personalization_label_skew: '
                     'FedAvg + fine-tuning local steps.')
flags.DEFINE_float('ditto_lambda', 0.1, 'personalization_label_skew: Ditto '
                   'lambda.')
flags.DEFINE_integer('head_steps', 10, 'personalization_label_skew: FedRep '
                     'head steps.')
# qffl_fairness
flags.DEFINE_integer('qffl_rounds', 5000, 'qffl_fairness: rounds (the '
                     'authors suggest 20,000 for Synthetic).')
flags.DEFINE_list('qffl_q', ['1'], 'qffl_fairness: q values to run (the '
                  'paper uses q = 1 on Synthetic, 5 on Vehicle).')

# A row's summary of a run's last evaluation: column -> history key.
_GLOBAL = {
    'test_accuracy': 'test_accuracy',
    'client_accuracy': 'test_accuracy_per_client',
    'client_accuracy_p10': 'test_accuracy_client_p10',
    'client_accuracy_min': 'test_accuracy_client_min',
    'test_loss': 'test_loss',
}
_PERSONAL = {
    'personal_accuracy': 'test_personal_accuracy',
    'personal_accuracy_p10': 'test_personal_accuracy_client_p10',
    'personal_accuracy_min': 'test_personal_accuracy_client_min',
}


def _rounds(default):
  return 3 if FLAGS.quick else default


# --------------------------------------------------------------------------
# Running and summarizing.


def _run(algorithm, model, train, test, *, seed, eval_every, **kwargs):
  """One run: (history, wall seconds, per-client personal values or None).

  Non-finite losses are recorded, not raised, so a diverging method keeps
  its row; ``kwargs`` go to run_experiment.
  """
  with tempfile.TemporaryDirectory() as out_dir:
    start = time.perf_counter()
    history = run_experiment(
        algorithm, model, train, test, seed=seed, eval_every=eval_every,
        progress=False, on_nonfinite='warn',
        output_dir=out_dir if kwargs.get('personal_eval') else None,
        **kwargs)
    wall = time.perf_counter() - start
    per_client = None
    path = os.path.join(out_dir, 'personal_per_client.csv')
    if os.path.exists(path):
      with open(path) as f:
        records = list(csv.DictReader(f))
      per_client = {k: [float(r[k]) for r in records]
                    for k in records[0] if k != 'client_id'}
  return history, wall, per_client


def _evaluations(history):
  return [h for h in history if 'test_loss' in h]


def _first_nonfinite(history):
  for h in history:
    for key in ('train_loss', 'test_loss'):
      if key in h and not math.isfinite(h[key]):
        return h['round']
  return None


def _summary(history, wall, columns):
  """The numbers a row reports of one run."""
  last = _evaluations(history)[-1]
  out = {name: last[key] for name, key in columns.items() if key in last}
  seconds = sorted(h['seconds'] for h in history)
  out.update(wall_s=wall, rounds=history[-1]['round'],
             s_per_round=seconds[len(seconds) // 2] if seconds else None,
             first_nonfinite_round=_first_nonfinite(history))
  return out


def _mean_row(method, per_seed, **extra):
  """A table row: the mean of each number over seeds, and the seeds' own."""
  row = dict(method=method, seeds=len(per_seed), per_seed=per_seed, **extra)
  row['first_nonfinite_round'] = next(
      (s['first_nonfinite_round'] for s in per_seed
       if s['first_nonfinite_round'] is not None), None)
  for key in per_seed[0]:
    if key == 'first_nonfinite_round':
      continue
    values = [s.get(key) for s in per_seed]
    if all(isinstance(v, (int, float)) and not isinstance(v, bool)
           for v in values):
      row[key] = float(np.mean(values))
      if len(values) > 1:
        row[key + '_std'] = float(np.std(values))
  return row


def _curve(history, *keys):
  return [[h['round']] + [h.get(k) for k in keys]
          for h in _evaluations(history)]


def _header(name):
  print(f'\n=== {name} ===', flush=True)


def _progress(label, seed, s):
  acc = s.get('test_accuracy')
  print(f'  {label}, seed {seed}: {s["rounds"]} rounds in {s["wall_s"]:.1f} s '
        f'({s["s_per_round"]:.4f} s/round)'
        + (f', test accuracy {acc:.4f}' if acc is not None else ''),
        flush=True)


# --------------------------------------------------------------------------
# Data.


def _label_skew_data():
  """Centralized (train_x, train_y, test_x, test_y), its name, and a note.

  MNIST from --mnist_dir; where absent, Synthetic(1,1) pooled into one
  centralized set (its IID variant is no use: one shared labelling puts
  nearly every example in two or three classes).
  """
  names = ('train-images-idx3-ubyte', 'train-labels-idx1-ubyte',
           't10k-images-idx3-ubyte', 't10k-labels-idx1-ubyte')
  folder = FLAGS.mnist_dir
  if all(os.path.exists(os.path.join(folder, n)) or
         os.path.exists(os.path.join(folder, n + '.gz')) for n in names):
    d = fe.datasets.mnist(data_dir=folder, download=False)
    return (d.train_x, d.train_y, d.test_x, d.test_y), 'MNIST', None
  note = (f'MNIST not found in {os.path.abspath(folder)}: the label-skew '
          'experiments use Synthetic(1,1) instead (600 generated clients '
          'pooled, 60 features, then split as below); the target '
          'accuracies were chosen for MNIST.')
  print(f'WARNING: {note}', flush=True)
  train, test = fe.datasets.synthetic(alpha=1.0, beta=1.0, num_clients=600,
                                      seed=FLAGS.data_seed)
  return ((train.features['x'], train.features['y'], test.features['x'],
           test.features['y']), 'Synthetic(1,1) pooled', note)


def label_skew_split(train_x, train_y, test_x, test_y, *, num_clients, alpha,
                     seed):
  """Dirichlet label skew, with each client's test set of its own label mix.

  The training examples are split by ``partition.dirichlet`` (as the CLI's
  ``--partition=dirichlet``). The test set is split with the same shares:
  client k gets ``n_kc / n_c`` of class c's test examples (largest
  remainders), so every test example is used once, the pooled test set is
  the centralized one, and each client is tested on its own label
  distribution (as personalization needs).
  """
  train = fe.datasets.partition.dirichlet(
      train_x, train_y, num_clients=num_clients, alpha=alpha, seed=seed)
  num_classes = int(max(train_y.max(), test_y.max())) + 1
  counts = fe.datasets.partition.split_summary(
      train, num_classes=num_classes).label_counts            # [K, C]
  rng = np.random.default_rng(seed)
  owner = np.empty(len(test_y), np.int64)
  for c in range(num_classes):
    rows = rng.permutation(np.flatnonzero(test_y == c))
    quota = len(rows) * counts[:, c] / max(counts[:, c].sum(), 1)
    take = np.floor(quota).astype(np.int64)
    take[np.argsort(take - quota, kind='stable')[:len(rows) - take.sum()]] += 1
    owner[rows] = np.repeat(np.arange(num_clients), take)
  order = np.argsort(owner, kind='stable')
  offsets = np.concatenate([[0], np.cumsum(np.bincount(
      owner, minlength=num_clients))])
  test = fe.FederatedData({'x': test_x[order], 'y': test_y[order]}, offsets,
                          train.client_ids)
  return train, test


def _fedprox_synthetic(num_clients):
  """Synthetic(1,1) as the FedProx/q-FFL authors' generator makes it."""
  return fe.datasets.synthetic(
      alpha=1.0, beta=1.0, num_clients=num_clients, size_log_mean=4.0,
      size_log_sigma=2.0, min_size=50, test_fraction=0.1,
      seed=FLAGS.data_seed)


# --------------------------------------------------------------------------
# Experiments.


def fedprox_stragglers():
  """FedProx keeping stragglers' partial work against FedAvg dropping them."""
  rounds = _rounds(FLAGS.fedprox_rounds)
  eval_every = min(10, rounds)
  lr, rate, mu = 0.01, FLAGS.stragglers, FLAGS.fedprox_mu
  train, test = _fedprox_synthetic(30)
  model = fe.models.logistic_regression(num_features=60, num_classes=10)
  batching = fe.Batching(batch_size=10, local_epochs=20)
  methods = [
      (f'FedProx mu={mu:g}, stragglers keep partial work',
       fe.algorithms.fedprox(model, client_optimizer=optax.sgd(lr), mu=mu),
       fe.SystemHeterogeneity(straggler_rate=rate)),
      ('FedProx mu=0, stragglers keep partial work',
       fe.algorithms.fedprox(model, client_optimizer=optax.sgd(lr), mu=0.0),
       fe.SystemHeterogeneity(straggler_rate=rate)),
      ('FedAvg, stragglers dropped',
       fe.algorithms.fedavg(model, client_optimizer=optax.sgd(lr)),
       fe.SystemHeterogeneity(dropout_rate=rate)),
  ]
  rows = []
  for label, algorithm, system in methods:
    per_seed = []
    for seed in range(FLAGS.seeds):
      common = dict(seed=seed, eval_every=eval_every, batching=batching,
                    clients_per_round=10, num_rounds=rounds, system=system)
      history, wall, _ = _run(algorithm, model, train, test, **common)
      # The paper's training loss is the objective over all training
      # examples: a second, identical run (same seed) evaluates on them.
      on_train, wall_train, _ = _run(algorithm, model, train, train, **common)
      s = _summary(history, wall, _GLOBAL)
      train_curve = [h['test_loss'] for h in _evaluations(on_train)]
      half = train_curve[len(train_curve) // 2:]
      s.update(
          train_loss=train_curve[-1], train_loss_last_half_min=min(half),
          train_loss_last_half_max=max(half), wall_s_train_eval=wall_train,
          empty_rounds=sum(h['clients'] == 0 for h in history),
          twin_runs_identical=bool(np.array_equal(
              [h.get('train_loss') for h in history],
              [h.get('train_loss') for h in on_train], equal_nan=True)),
          curve=[c + [t] for c, t in zip(
              _curve(history, 'test_accuracy', 'test_loss'), train_curve)])
      _progress(label, seed, s)
      print('    training loss by round: '
            + ', '.join(f'{c[0]}: {c[3]:.3f}' for c in s['curve']),
            flush=True)
      per_seed.append(s)
    rows.append(_mean_row(label, per_seed))
  for row in rows:
    row['other'] = (f"train loss {row['train_loss']:.3f} (last half of "
                    f"training {row['train_loss_last_half_min']:.3f}-"
                    f"{row['train_loss_last_half_max']:.3f})")
  setup = (f'Synthetic(1,1) as the FedProx authors generate it: 30 clients, '
           f'sizes 50 + floor(LogNormal(4, 2)), 90/10 train/test per client '
           f'(data seed {FLAGS.data_seed}: {train.num_examples} training '
           f'examples, largest client {int(train.sizes.max())}); multinomial '
           f'logistic regression; 10 clients per round drawn uniformly, '
           f'example-weighted averaging; every method: SGD lr {lr}, 20 local '
           f'epochs of batch 10, {rounds} rounds. {rate:.0%} of each cohort '
           'straggles: FedProx runs a straggler for a uniformly random '
           'number of its steps (1 to all) and keeps its update; FedAvg '
           'drops stragglers (client dropout at the same rate): it keeps on '
           f'average {(1 - rate) * 10:g} of the 10 sampled clients, and '
           f'{rate ** 10:.0%} of its rounds keep none. Training loss: the loss '
           'of the global model over all training examples, from a second '
           'run with the same seed evaluated on the training split '
           '("twin_runs_identical" in the JSON checks the two runs agree).')
  paper = ('Li et al., MLSys 2020, Figure 1 (Synthetic(1,1), 90% '
           'stragglers, 200 rounds): FedAvg, dropping the stragglers, is '
           'unstable and its training loss does not settle; FedProx with '
           'mu=0 (partial work kept) does better, and mu=1 converges '
           'smoothly to the lowest training loss. The paper gives curves, '
           'no table. Differences: the authors sample clients with '
           'probability proportional to their size and average uniformly; '
           'here sampling is uniform and averaging example-weighted.')
  return dict(setup=setup, paper=paper, rows=rows)


def _label_skew_setup():
  """(train, test, a sentence describing them, a fallback note or None)."""
  (tx, ty, vx, vy), name, note = _label_skew_data()
  train, test = label_skew_split(
      tx, ty, vx, vy, num_clients=FLAGS.label_skew_clients,
      alpha=FLAGS.dirichlet_alpha, seed=FLAGS.data_seed)
  sizes = train.sizes
  text = (f'{name}, {train.num_clients} clients, Dirichlet(alpha='
          f'{FLAGS.dirichlet_alpha:g}) label split of the training set '
          f'(fedjax_engine.datasets.partition.dirichlet, data seed '
          f'{FLAGS.data_seed}; client sizes {int(sizes.min())} / '
          f'{int(np.median(sizes))} / {int(sizes.max())} min / median / '
          'max); the test set is split with the same per-class shares, so '
          "each client is tested on its own label mix and the pooled test "
          f'set is the whole {name} test set')
  return train, test, text, note


def scaffold_label_skew():
  """SCAFFOLD against FedAvg under label skew: rounds to target accuracy."""
  train, test, data_text, note = _label_skew_setup()
  rounds = _rounds(FLAGS.scaffold_rounds)
  targets = [float(t) for t in FLAGS.targets]
  lr, steps, batch = 0.05, 20, 20
  features = int(np.prod(train.features['x'].shape[1:]))
  build = (fe.models.logistic_regression if FLAGS.scaffold_model == 'logistic'
           else fe.models.mlp)
  model = build(num_features=features, num_classes=10)
  methods = [
      ('FedAvg', fe.algorithms.fedavg(model, client_optimizer=optax.sgd(lr))),
      ('SCAFFOLD', fe.algorithms.scaffold(model,
                                          client_optimizer=optax.sgd(lr))),
  ]
  rows = []
  for label, algorithm in methods:
    per_seed = []
    for seed in range(FLAGS.seeds):
      history, wall, _ = _run(
          algorithm, model, train, test, seed=seed, eval_every=1,
          batching=fe.Batching(batch_size=batch, local_steps=steps),
          clients_per_round=10, num_rounds=rounds)
      s = _summary(history, wall, _GLOBAL)
      for t in targets:
        s[f'rounds_to_{t:g}'] = next(
            (h['round'] for h in _evaluations(history)
             if h['test_accuracy'] >= t), None)
      s['curve'] = _curve(history, 'test_accuracy')
      _progress(label, seed, s)
      per_seed.append(s)
    row = _mean_row(label, per_seed)
    parts = []
    for t in targets:
      reached = [s[f'rounds_to_{t:g}'] for s in per_seed
                 if s[f'rounds_to_{t:g}'] is not None]
      if len(reached) == len(per_seed):
        row[f'rounds_to_{t:g}'] = float(np.mean(reached))
        parts.append(f'to {t:.0%}: {np.mean(reached):g} rounds')
      else:
        row[f'rounds_to_{t:g}'] = None
        parts.append(f'to {t:.0%}: not reached in {rounds} rounds'
                     + (f' ({len(reached)}/{len(per_seed)} seeds did)'
                        if reached else ''))
    row['other'] = '; '.join(parts)
    rows.append(row)
  setup = (f'{data_text}. Model: {FLAGS.scaffold_model} ({features} '
           f'inputs). Both methods: 10 clients per round drawn uniformly, '
           f'{steps} local steps of batch {batch}, client SGD lr {lr}, '
           'server step 1, example-weighted averaging, '
           f'{rounds} rounds, evaluated after every round (rounds to '
           'target = first evaluation at or above it).')
  paper = ('Karimireddy et al., ICML 2020: SCAFFOLD needs fewer rounds than '
           'FedAvg when client data are dissimilar, and FedAvg slows as '
           'local steps grow (logistic regression on EMNIST with '
           'controlled similarity; Section 7). Their setting (EMNIST, '
           'similarity levels, uniform averaging) differs, so no number '
           'of theirs is comparable to these.')
  return dict(setup=setup, paper=paper, rows=rows, note=note)


def personalization_label_skew():
  """Per-client accuracy of global, fine-tuned, Ditto and FedRep models."""
  train, test, data_text, note = _label_skew_setup()
  rounds = _rounds(FLAGS.personal_rounds)
  eval_every = min(100, rounds)
  lr, steps, batch = 0.05, 20, 20
  features = int(np.prod(train.features['x'].shape[1:]))
  model = fe.models.mlp(num_features=features, num_classes=10)
  opt = optax.sgd(lr)
  ft = FLAGS.finetune_steps
  methods = [
      ('FedAvg', fe.algorithms.fedavg(model, client_optimizer=opt),
       dict(finetune_steps=ft, finetune_optimizer=opt), ''),
      (f'Ditto lambda={FLAGS.ditto_lambda:g}',
       fe.algorithms.ditto(model, client_optimizer=opt,
                           ditto_lambda=FLAGS.ditto_lambda), {},
       f'{steps} global + {steps} personal steps a round; its global model '
       'is FedAvg\'s'),
      (f'FedRep head_steps={FLAGS.head_steps}',
       fe.algorithms.fedrep(model, client_optimizer=opt,
                            head_steps=FLAGS.head_steps), {},
       f'{FLAGS.head_steps} head + {steps} body steps a round; its global '
       'model has the untrained initial head (global columns mean little)'),
  ]
  rows = []
  for label, algorithm, extra, other in methods:
    per_seed = []
    for seed in range(FLAGS.seeds):
      history, wall, _ = _run(
          algorithm, model, train, test, seed=seed, eval_every=eval_every,
          batching=fe.Batching(batch_size=batch, local_steps=steps),
          clients_per_round=10, num_rounds=rounds, personal_eval=True,
          **extra)
      s = _summary(history, wall, {**_GLOBAL, **_PERSONAL})
      s['curve'] = _curve(history, 'test_accuracy', 'test_personal_accuracy')
      _progress(label, seed, s)
      print(f"    personal accuracy {s['personal_accuracy']:.4f} (p10 "
            f"{s['personal_accuracy_p10']:.4f})", flush=True)
      per_seed.append(s)
    if label == 'FedAvg':
      # The global model on each client's own test set is the runner's
      # per-client test accuracy; personal_* of this run are fine-tuned.
      glob = [dict(s, personal_accuracy=s['client_accuracy'],
                   personal_accuracy_p10=s['client_accuracy_p10'],
                   personal_accuracy_min=s['client_accuracy_min'])
              for s in per_seed]
      rows.append(_mean_row('FedAvg (global model)', glob,
                            other='personal = global model'))
      rows.append(_mean_row(
          f'FedAvg + {ft} fine-tuning steps', per_seed,
          other=f'same run as the row above; {ft} local SGD steps (batch '
          f'{batch}, lr {lr}) from the global model before testing'))
    else:
      rows.append(_mean_row(label, per_seed, other=other))
  setup = (f'{data_text}. Model: the 2NN MLP ({features}-200-200-10; '
           'FedRep\'s head is the output layer). Every method: 10 clients '
           f'per round drawn uniformly, {steps} local steps of batch {batch}, '
           f'client SGD lr {lr}, example-weighted averaging, {rounds} rounds. '
           'Personal accuracy: each client\'s own model (Ditto\'s personal '
           'model, FedRep\'s head on the global body, FedAvg\'s global '
           'model, optionally fine-tuned) on its own test examples, mean '
           'and 10th percentile over clients (runner personal_eval).')
  paper = ('FedRep (Collins et al., ICML 2021) reports its personal '
           'accuracy above FedAvg\'s global model and above FedAvg + '
           'fine-tuning on label-skewed splits; Ditto (Li et al., ICML 2021) '
           'reports personal models more accurate than the global one, and '
           'a higher worst-client accuracy. Their datasets and splits '
           'differ from this one; no number of theirs is comparable.')
  return dict(setup=setup, paper=paper, rows=rows, note=note)


def qffl_fairness():
  """q-FFL against FedAvg: spread of accuracy over clients."""
  rounds = _rounds(FLAGS.qffl_rounds)
  eval_every = max(1, rounds // 6)
  lr, batch = 0.1, 10
  train, test = _fedprox_synthetic(100)
  model = fe.models.logistic_regression(num_features=60, num_classes=10)
  opt = optax.sgd(lr)
  methods = [('FedAvg (q=0)', fe.algorithms.fedavg(model,
                                                   client_optimizer=opt))]
  for q in FLAGS.qffl_q:
    methods.append((f'q-FFL q={float(q):g}', fe.algorithms.qffl(
        model, client_optimizer=opt, q=float(q), lipschitz=1.0 / lr)))
  rows = []
  for label, algorithm in methods:
    per_seed = []
    for seed in range(FLAGS.seeds):
      history, wall, per_client = _run(
          algorithm, model, train, test, seed=seed, eval_every=eval_every,
          batching=fe.Batching(batch_size=batch, local_epochs=1),
          clients_per_round=10, num_rounds=rounds, weighting='uniform',
          personal_eval=True)
      s = _summary(history, wall, _GLOBAL)
      acc = np.array(per_client['accuracy'])
      acc = acc[~np.isnan(acc)]
      # The q-FFL paper's spread statistics: variance in %^2, best 10%.
      s['client_accuracy_variance_pct2'] = float(np.var(100 * acc))
      s['client_accuracy_p90'] = float(np.percentile(acc, 90))
      s['curve'] = _curve(history, 'test_accuracy', 'test_accuracy_per_client',
                          'test_accuracy_client_p10')
      _progress(label, seed, s)
      per_seed.append(s)
    row = _mean_row(label, per_seed)
    row['other'] = (f"variance {row['client_accuracy_variance_pct2']:.0f} "
                    f"(%^2); p90 {100 * row['client_accuracy_p90']:.1f}")
    rows.append(row)
  setup = (f'Synthetic(1,1) as the q-FFL authors generate it: 100 clients, '
           f'sizes 50 + floor(LogNormal(4, 2)), 90/10 train/test per client '
           f'(data seed {FLAGS.data_seed}); multinomial logistic '
           f'regression. Every method: 10 clients per round drawn uniformly, '
           f'uniform weighting (q-FFL\'s; q-FFL with q=0 is this FedAvg), '
           f'1 local epoch of batch {batch}, client SGD lr {lr} (q-FFL\'s '
           f'L = 1/lr = {1 / lr:g}), {rounds} rounds. Client statistics are '
           'over the clients\' test sets (each client counts once).')
  paper = ('Li et al., ICLR 2020, Table 1 and Figure 1: on Synthetic, '
           'q-FFL with q=1 raises the accuracy of the worst 10% of devices '
           'and lowers the variance of accuracy across devices, with '
           'similar average accuracy. The authors run about 20,000 rounds '
           'on Synthetic (their README) and sample devices in proportion '
           'to their size, so their numbers are not comparable to these.')
  return dict(setup=setup, paper=paper, rows=rows)


# --------------------------------------------------------------------------
# Output.


def _pct(value):
  return '' if value is None else f'{100 * value:.1f}'


def markdown(result):
  """The table and the notes, as markdown."""
  lines = [
      '| experiment | method | rounds | wall s | s/round | test acc % | '
      'client acc % (mean) | client acc % (p10) | client acc % (worst) | '
      'personal acc % (mean) | personal acc % (p10) | other |',
      '|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|']
  for name, exp in result['experiments'].items():
    for row in exp['rows']:
      other = row.get('other', '')
      if row.get('first_nonfinite_round') is not None:
        other += ' (non-finite loss: diverged)'
      seeds = f" ({row['seeds']} seeds)" if row['seeds'] > 1 else ''
      lines.append(
          f"| {name} | {row['method']}{seeds} | {row['rounds']:.0f} | "
          f"{row['wall_s']:.1f} | {row['s_per_round']:.4f} | "
          f"{_pct(row.get('test_accuracy'))} | "
          f"{_pct(row.get('client_accuracy'))} | "
          f"{_pct(row.get('client_accuracy_p10'))} | "
          f"{_pct(row.get('client_accuracy_min'))} | "
          f"{_pct(row.get('personal_accuracy'))} | "
          f"{_pct(row.get('personal_accuracy_p10'))} | {other} |")
  lines.append('')
  lines.append('Wall s: one run of the method (the mean over seeds), with '
               'compilation and evaluations; s/round: the median round. '
               'Accuracies are the last evaluation\'s, after the last round.')
  for name, exp in result['experiments'].items():
    lines += ['', f'**{name}.** {exp["setup"]}']
    if exp.get('note'):
      lines += ['', f'Note: {exp["note"]}']
    lines += ['', f'Paper: {exp["paper"]}']
  return '\n'.join(lines)


def main(argv):
  del argv
  unknown = [e for e in FLAGS.experiments if e not in EXPERIMENTS]
  if unknown:
    raise app.UsageError(f'unknown experiments {unknown}; known: '
                         f'{", ".join(EXPERIMENTS)}')
  jax.config.update('jax_num_cpu_devices',
                    FLAGS.cpu_devices or os.cpu_count() or 1)
  out = FLAGS.out or (
      os.path.join(tempfile.mkdtemp(prefix='algorithm_quality_'),
                   'algorithm_quality.json') if FLAGS.quick else
      os.path.join(HERE, 'results', 'algorithm_quality.json'))
  info = harness.machine_info()
  info.update(harness.device_info())
  print(f'# {harness.describe_machine(info)}', flush=True)
  result = dict(machine=info, quick=FLAGS.quick, seeds=FLAGS.seeds,
                data_seed=FLAGS.data_seed,
                flags={f.name: f.value for f in FLAGS.get_key_flags_for_module(
                    sys.modules[__name__])},
                experiments={})
  start = time.perf_counter()
  for name in FLAGS.experiments:
    _header(name)
    t0 = time.perf_counter()
    result['experiments'][name] = globals()[name]()
    result['experiments'][name]['seconds'] = time.perf_counter() - t0
    print(f'  {name}: {time.perf_counter() - t0:.0f} s', flush=True)
  result['seconds'] = time.perf_counter() - start
  transform_common.finish(result, markdown(result), out)

if __name__ == '__main__':
  app.run(main)
