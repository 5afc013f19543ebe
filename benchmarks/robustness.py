r"""Robustness: accuracy under attack, for each defense.

A fixed 20% of the clients (``fedjax_engine.attacks.malicious_clients``)
attack in every round they are sampled; the script runs every attack
against every defense, FedAvg underneath, and tabulates the final test
accuracy (and, for backdoors, the backdoor accuracy: the share of
triggered test images of other classes put in the target class).

Attacks (``fedjax_engine.attacks``):

* ``none``: no malicious clients, the clean accuracy of each defense;
* update attacks, on what a malicious client sends: ``sign_flip`` (-u),
  ``gaussian`` (N(0, 1) noise instead of u; Blanchard et al., NeurIPS
  2017), ``alie`` ("A little is enough", Baruch et al., NeurIPS 2019: the
  benign mean minus z_max benign standard deviations, built against the
  defense's own aggregator) and ``model_replacement`` (Bagdasaryan et al.,
  AISTATS 2020: the update of a backdoored client boosted by clients per
  round over malicious ones, here 5; its data are backdoored as below,
  since boosting a clean update is no attack);
* data attacks, on a malicious client's training data: ``label_flip``
  (y -> 9 - y; Tolpegin et al., ESORICS 2020) and ``backdoor`` (a 3x3
  white corner square stamped on half of a malicious client's images,
  relabelled 0).

Defenses: ``mean`` (FedAvg's example-weighted mean, no defense), the
coordinate-wise ``median`` and ``trimmed_mean`` (Yin et al., ICML 2018),
``krum`` and ``multi_krum`` (Blanchard et al., NeurIPS 2017), ``bulyan`` (El
Mhamdi et al., ICML 2018), ``geometric_median`` (RFA, Pillutla et al., IEEE
TSP 2022), all from ``fedjax_engine.robust``, and ``norm_bound``: every
update the server receives clipped to L2 norm M before the weighted mean
(Sun et al., arXiv:1911.07963, 2019; ``robust.norm_bounded_mean``, as the
CLI's ``--norm_bound``), so that it bounds what malicious clients send.

The setting is small, so that the 56 runs of the grid fit about 15 minutes
on 2 CPU cores: MNIST from ``../shared/data/mnist`` (Synthetic(1,1) when
absent, with a message), IID over 100 clients (``--partition=dirichlet``
for label skew), softmax regression, 20 clients per round, 200 rounds.

Everything runs in this process through ``fedjax_engine.runner.
run_experiment``. It prints a line per run and the attack x defense table,
and writes ``results/robustness.json`` and ``results/robustness.md``.

  python benchmarks/robustness.py          # 7 attacks x 8 defenses
  python benchmarks/robustness.py --quick  # smoke test, 3 rounds a run
  python benchmarks/robustness.py --attacks=alie --defenses=mean,krum
"""

import os
import sys
import time

from absl import app
from absl import flags
import optax

import fedjax_engine as fe

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
  sys.path.insert(0, HERE)

import transform_common as tc  # pylint: disable=g-import-not-at-top,wrong-import-position

ATTACKS = ('none', 'sign_flip', 'gaussian', 'model_replacement', 'alie',
           'label_flip', 'backdoor')
DEFENSES = ('mean', 'median', 'trimmed_mean', 'krum', 'multi_krum',
            'bulyan', 'geometric_median', 'norm_bound')
# The training data each attack poisons (model replacement boosts a
# backdoored client's update).
_DATA_ATTACK = {'label_flip': 'label_flip', 'backdoor': 'backdoor',
                'model_replacement': 'backdoor'}

FLAGS = flags.FLAGS
flags.DEFINE_list('attacks', list(ATTACKS), f'Attacks (rows), from '
                  f'{", ".join(ATTACKS)}.')
flags.DEFINE_list('defenses', list(DEFENSES), f'Defenses (columns), from '
                  f'{", ".join(DEFENSES)}.')
flags.DEFINE_float('malicious_fraction', 0.2, 'Fraction of the clients '
                   'that are malicious (a fixed set drawn from --seed).')
flags.DEFINE_integer('num_clients', 100, 'Training clients.', lower_bound=2)
flags.DEFINE_enum('partition', 'iid', ['iid', 'dirichlet'], 'How MNIST is '
                  'split into clients.')
flags.DEFINE_float('dirichlet_alpha', 0.5, '--partition=dirichlet: the '
                   'concentration.')
flags.DEFINE_integer('clients_per_round', 20, 'Clients per round (uniform, '
                     'without replacement).', lower_bound=1)
flags.DEFINE_integer('rounds', 200, 'Rounds per run.', lower_bound=1)
flags.DEFINE_enum('model', 'logistic', ['logistic', 'mlp'], 'Softmax '
                  'regression or the 2NN MLP on the 784 pixels.')
flags.DEFINE_float('client_lr', 0.05, 'Client SGD learning rate.')
flags.DEFINE_integer('batch_size', 20, 'Local batch size.', lower_bound=1)
flags.DEFINE_integer('local_steps', 20, 'Local steps per round.',
                     lower_bound=1)
flags.DEFINE_float('trim_fraction', 0.2, 'trimmed_mean: the fraction cut at '
                   'each end.')
flags.DEFINE_integer('num_byzantine', 4, 'krum, multi_krum, bulyan: f, the '
                     'Byzantine clients tolerated (bulyan needs clients per '
                     'round >= 4f + 3).', lower_bound=0)
flags.DEFINE_integer('multi_krum_selected', None, 'multi_krum: clients '
                     'averaged; default clients per round - f.')
flags.DEFINE_float('norm_bound', 0.3, 'norm_bound: M, the L2 norm every '
                   'received update is clipped to (benign updates of the '
                   'default setting measure about 0.9 in round 1, 0.2 by '
                   'round 30).', lower_bound=0)
flags.DEFINE_float('attack_scale', 1.0, 'sign_flip: the scale.')
flags.DEFINE_float('attack_stddev', 1.0, 'gaussian: the standard deviation.')
flags.DEFINE_float('attack_boost', None, 'model_replacement: the boost; '
                   'default clients per round over malicious ones.')
flags.DEFINE_float('alie_z', None, 'alie: the shift in standard deviations; '
                   'default the paper\'s z_max (as the CLI).')
flags.DEFINE_integer('backdoor_target', 0, 'backdoor: the target class.')
flags.DEFINE_float('backdoor_fraction', 0.5, 'backdoor: the share of each '
                   'malicious client\'s examples poisoned.')
flags.DEFINE_integer('eval_every', 25, 'Evaluate every this many rounds.',
                     lower_bound=1)
flags.DEFINE_integer('seed', 0, 'Seed of the params, sampling, malicious '
                     'clients and the split (the same for every run).')
flags.DEFINE_integer('rounds_per_call', 10, 'Rounds fused per compiled call '
                     '(1 with --quick, so that a steady round is timed).',
                     lower_bound=1)
flags.DEFINE_string('mnist_dir', os.path.join(tc.SHARED_DATA, 'mnist'),
                    'Folder with the four MNIST idx files; where absent, '
                    'Synthetic(1,1) is used instead.')
flags.DEFINE_bool('quick', False, 'Smoke test: 3 rounds per run (numbers '
                  'mean nothing); writes to a temporary folder unless --out '
                  'is given.')
flags.DEFINE_string('out', None, 'JSON output (the markdown goes beside it '
                    'with .md); default results/robustness.json.')
flags.DEFINE_integer('cpu_devices', 0, 'JAX CPU devices to shard cohorts '
                     'over; 0: one per core (as the CLI).', lower_bound=0)


def _defense(name, m):
  if name == 'norm_bound':
    return [fe.robust.as_transform(
        fe.robust.norm_bounded_mean(max_norm=FLAGS.norm_bound))]
  return fe.robust.transforms_from_flags(
      aggregator=name, trim_fraction=FLAGS.trim_fraction,
      num_byzantine=FLAGS.num_byzantine,
      num_selected=FLAGS.multi_krum_selected or m - FLAGS.num_byzantine)


def _poisoned(attack, train, test, malicious):
  """``(training data, backdoor test set or None)`` of ``attack``."""
  data_attack = _DATA_ATTACK.get(attack)
  if data_attack is None:
    return train, None
  return fe.attacks.poison_data(
      train, test, attack=data_attack, malicious=malicious, num_classes=10,
      target_label=FLAGS.backdoor_target,
      poison_fraction=FLAGS.backdoor_fraction, seed=FLAGS.seed)


def _check_names(given, known, what):
  unknown = [g for g in given if g not in known]
  if unknown:
    raise app.UsageError(f'unknown {what} {unknown}; known: '
                         f'{", ".join(known)}')


def main(argv):
  del argv
  _check_names(FLAGS.attacks, ATTACKS, 'attacks')
  _check_names(FLAGS.defenses, DEFENSES, 'defenses')
  out = tc.output_path(FLAGS.out, FLAGS.quick, 'robustness')
  info = tc.start(FLAGS.cpu_devices)
  start = time.perf_counter()
  train, test, data_text, note = tc.mnist_or_synthetic(
      FLAGS.mnist_dir, num_clients=FLAGS.num_clients,
      partition=FLAGS.partition, alpha=FLAGS.dirichlet_alpha, seed=FLAGS.seed)
  features = train.features['x'][0].size
  build = (fe.models.logistic_regression if FLAGS.model == 'logistic'
           else fe.models.mlp)
  model = build(num_features=features, num_classes=10)
  m = FLAGS.clients_per_round
  if m > train.num_clients:
    raise app.UsageError(f'--clients_per_round={m} exceeds the '
                         f'{train.num_clients} clients')
  rounds = 3 if FLAGS.quick else FLAGS.rounds
  base = fe.algorithms.fedavg(model,
                              client_optimizer=optax.sgd(FLAGS.client_lr))
  malicious = fe.attacks.malicious_clients(
      num_clients=train.num_clients, fraction=FLAGS.malicious_fraction,
      seed=FLAGS.seed)
  common = dict(
      batching=fe.Batching(batch_size=FLAGS.batch_size,
                           local_steps=FLAGS.local_steps),
      clients_per_round=m, num_rounds=rounds,
      eval_every=min(FLAGS.eval_every, rounds), seed=FLAGS.seed,
      rounds_per_call=1 if FLAGS.quick else FLAGS.rounds_per_call)
  print(f'{len(FLAGS.attacks)} attacks x {len(FLAGS.defenses)} defenses, '
        f'{rounds} rounds each; {data_text}; {int(malicious.sum())} '
        'malicious clients', flush=True)
  rows = []
  for attack in FLAGS.attacks:
    poisoned, backdoor_test = _poisoned(attack, train, test, malicious)
    more_tests = {'backdoor': backdoor_test} if backdoor_test else None
    for defense in FLAGS.defenses:
      stages = _defense(defense, m)
      if attack in fe.attacks.UPDATE_ATTACKS and attack != 'none':
        defended = fe.transforms.apply(base, *stages).aggregator
        stages += fe.attacks.transforms_from_flags(
            attack=attack, malicious=malicious, scale=FLAGS.attack_scale,
            stddev=FLAGS.attack_stddev, boost=FLAGS.attack_boost,
            clients_per_round=m, z=FLAGS.alie_z, aggregator=defended)
      algorithm = fe.transforms.apply(base, *stages)
      history, wall = tc.run(algorithm, model, poisoned, test,
                             more_tests=more_tests, **common)
      s = tc.summary(history, wall)
      last = tc.evaluations(history)[-1]
      s.update(attack=attack, defense=defense,
               backdoor_accuracy=last.get('test_backdoor_accuracy'))
      extra = ('' if s['backdoor_accuracy'] is None
               else f", backdoor accuracy {s['backdoor_accuracy']:.4f}")
      if 'mean_malicious' in s:
        extra += f", malicious share {s['mean_malicious']:.2f}"
      tc.progress(f'{attack} vs {defense}', s, extra)
      rows.append(s)
  result = dict(
      machine=info, quick=FLAGS.quick, data=data_text, note=note,
      malicious_clients=int(malicious.sum()), params=tc.params_size(model),
      flags={f.name: f.value for f in
             FLAGS.get_key_flags_for_module(sys.modules[__name__])},
      rows=rows, seconds=time.perf_counter() - start)
  tc.finish(result, markdown(result, rounds=rounds, m=m), out)


def _cell(row):
  if row is None:
    return ''
  text = tc.pct(row['test_accuracy'])
  if row['backdoor_accuracy'] is not None:
    text += f" (bd {tc.pct(row['backdoor_accuracy'])})"
  if row['first_nonfinite_round'] is not None:
    text += ' diverged'
  return text


def markdown(result, *, rounds, m):
  rows = {(r['attack'], r['defense']): r for r in result['rows']}
  attacks = list(dict.fromkeys(r['attack'] for r in result['rows']))
  defenses = list(dict.fromkeys(r['defense'] for r in result['rows']))
  lines = ['| attack \\ defense | ' + ' | '.join(defenses) + ' |',
           '|---|' + '---:|' * len(defenses)]
  for a in attacks:
    lines.append(f'| {a} | ' + ' | '.join(
        _cell(rows.get((a, d))) for d in defenses) + ' |')
  f = FLAGS
  seconds = [r['s_per_round'] for r in result['rows']]
  lines += [
      '',
      'Final test accuracy % (bd: backdoor accuracy %, the triggered test '
      'images of other classes classified as the target).',
      '',
      f"**Setup.** {result['data']}. Model: {f.model} "
      f"({result['params']} parameters). Every run: FedAvg, {m} clients per "
      f'round drawn uniformly, {f.local_steps} local steps of batch '
      f'{f.batch_size}, client SGD lr {f.client_lr:g}, server SGD lr 1, '
      f'{rounds} rounds, seed {f.seed}. Malicious: '
      f"{result['malicious_clients']} of the clients "
      f'({f.malicious_fraction:.0%}, fixed, drawn from the seed; a round '
      'holds however many of them were sampled). Attacks: sign_flip scale '
      f'{f.attack_scale:g}; gaussian std {f.attack_stddev:g}; alie z '
      + ('z_max of the 100 clients, as the CLI' if f.alie_z is None
         else f'{f.alie_z:g}')
      + '; model_replacement boost '
      + (f'{f.attack_boost:g}' if f.attack_boost else
         'clients per round / expected malicious per round')
      + ' on backdoored data; backdoor: 3x3 square of the data\'s maximum '
      f'in the corner, target class {f.backdoor_target}, '
      f'{f.backdoor_fraction:.0%} of a malicious client\'s examples; '
      'label_flip: y -> 9 - y. Defenses: trimmed_mean beta '
      f'{f.trim_fraction:g}; krum, multi_krum and bulyan f = '
      f'{f.num_byzantine}, multi_krum averaging '
      f'{f.multi_krum_selected or m - f.num_byzantine}; geometric_median 10 '
      f'Weiszfeld steps; norm_bound M = {f.norm_bound:g} on every received '
      'update. Robust rules count each client once; mean and norm_bound '
      f'weigh by examples. s/round: median {min(seconds):.4f}-'
      f'{max(seconds):.4f} over the runs (evaluation left out).']
  if result['note']:
    lines += ['', f"Note: {result['note']}"]
  return '\n'.join(lines)


if __name__ == '__main__':
  app.run(main)
