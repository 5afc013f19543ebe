"""Reading run folders back: compare's table, plot's lines, TensorBoard events.

The runs are written by hand with known numbers; every expected value below
is worked out from them.
"""

import json
import math
import os
import struct
import subprocess
import sys

from matplotlib import image
import numpy as np
import pytest
from tensorboardX.proto import event_pb2

from fedjax_engine import compare
from fedjax_engine import plot
from fedjax_engine import run_reader
from fedjax_engine import tensorboard

NAN = float('nan')


def write_run(folder, records, flags=None):
  """A run folder: ``records`` as metrics.jsonl, ``flags`` as flags.txt."""
  os.makedirs(folder)
  with open(os.path.join(folder, 'metrics.jsonl'), 'w') as f:
    f.writelines(json.dumps(r) + '\n' for r in records)
  if flags is not None:
    with open(os.path.join(folder, 'flags.txt'), 'w') as f:
      f.writelines(f'--{k}={v}\n' for k, v in flags.items())
      f.write('--download\n')
  return str(folder)


def four_rounds(seconds, train_loss, at2, at4):
  """Rounds 1 to 4, each taking ``seconds``; evaluations at rounds 2, 4."""
  return [{'round': r, 'seconds': seconds, 'clients': 5,
           'train_loss': train_loss[r - 1], **({2: at2, 4: at4}.get(r, {}))}
          for r in range(1, 5)]


@pytest.fixture
def runs(tmp_path):
  """Three seeds of client_lr=0.1, and one run of client_lr=0.2.

  seed:               0          1          2       | lr=0.2
  seconds per round:  1          1.5        2       | 0.5
  test_accuracy r2:   0.6        0.8        0.7     | 0.3
  test_accuracy r4:   0.5        0.6        0.7     | 0.4
  test_loss r2:       1.0        NaN        1.2     | 2.0
  test_loss r4:       0.8        0.9        1.0     | 1.5
  epsilon r2, r4:     0.5, 1.0 in every run
  train_loss:         1.0 - 0.1 (round - 1) + seed
  """
  table = {0: (1.0, (0.6, 0.5), (1.0, 0.8)),
           1: (1.5, (0.8, 0.6), (NAN, 0.9)),
           2: (2.0, (0.7, 0.7), (1.2, 1.0))}
  dirs = []
  for seed, (seconds, acc, loss) in table.items():
    dirs.append(write_run(
        tmp_path / f'lr0.1_seed{seed}',
        four_rounds(seconds, [1.0 + seed, 0.9 + seed, 0.8 + seed, 0.7 + seed],
                    {'test_accuracy': acc[0], 'test_loss': loss[0],
                     'epsilon': 0.5},
                    {'test_accuracy': acc[1], 'test_loss': loss[1],
                     'epsilon': 1.0}),
        flags={'client_lr': 0.1, 'seed': seed}))
  dirs.append(write_run(
      tmp_path / 'lr0.2',
      four_rounds(0.5, [2.0, 1.9, 1.8, 1.7],
                  {'test_accuracy': 0.3, 'test_loss': 2.0, 'epsilon': 0.5},
                  {'test_accuracy': 0.4, 'test_loss': 1.5, 'epsilon': 1.0}),
      flags={'client_lr': 0.2, 'seed': 0}))
  return dirs


# The standard deviation (numpy's, over n) of 0.5, 0.6, 0.7 and alike.
STD_TENTHS = math.sqrt(0.02 / 3)


def test_compare_final_and_best_over_seeds(runs):
  group, lone = compare.compare_runs(runs)
  assert group['label'] == 'client_lr=0.1 (3 seeds)'
  assert group['run_dirs'] == runs[:3] and group['runs'] == 3
  assert group['rounds'] == 4 and group['rounds_std'] == 0
  assert group['seconds'] == pytest.approx(6.0)       # 4, 6, 8
  assert group['seconds_std'] == pytest.approx(math.sqrt(8 / 3))
  # train_loss is in every round: not an evaluation metric.
  assert list(group['metrics']) == ['epsilon', 'test_accuracy', 'test_loss']
  accuracy = group['metrics']['test_accuracy']
  assert accuracy['final'] == pytest.approx(0.6)      # 0.5, 0.6, 0.7
  assert accuracy['final_std'] == pytest.approx(STD_TENTHS)
  assert accuracy['best'] == pytest.approx(0.7)       # 0.6, 0.8, 0.7
  assert accuracy['best_std'] == pytest.approx(STD_TENTHS)
  loss = group['metrics']['test_loss']
  assert loss['final'] == pytest.approx(0.9)          # 0.8, 0.9, 1.0
  assert loss['best'] == pytest.approx(0.9)           # the NaN is no best
  assert loss['best_std'] == pytest.approx(STD_TENTHS)
  assert group['metrics']['epsilon'] == {
      'final': 1.0, 'final_std': 0.0, 'best': None, 'best_std': None}
  assert lone['label'] == 'client_lr=0.2' and lone['runs'] == 1
  assert lone['seconds'] == 2.0 and lone['seconds_std'] == 0.0
  assert lone['metrics']['test_accuracy'] == {
      'final': 0.4, 'final_std': 0.0, 'best': 0.4, 'best_std': 0.0}
  assert lone['metrics']['test_loss']['best'] == 1.5


def test_compare_table_is_aligned(runs):
  rows = compare.compare_runs(runs, metrics=['test_accuracy', 'epsilon'])
  lines = compare.format_table(rows).splitlines()
  assert lines == [
      'run                      rounds    seconds  metric                   '
      'final             best',
      'client_lr=0.1 (3 seeds)       4  6.0 ± 1.6  test_accuracy  '
      '0.6000 ± 0.0816  0.7000 ± 0.0816',
      44 * ' ' + 'epsilon        1.0000 ± 0.0000                -',
      'client_lr=0.2                 4        2.0  test_accuracy           '
      '0.4000           0.4000',
      44 * ' ' + 'epsilon                 1.0000                -',
  ]
  assert {line.index(word) for line, word in zip(lines, [
      'metric', 'test_accuracy', 'epsilon', 'test_accuracy', 'epsilon'])} == {
          44}


def test_a_final_nan_stays_nan(tmp_path):
  folder = write_run(tmp_path / 'run', [
      {'round': 1, 'test_accuracy': 0.5},
      {'round': 2, 'test_accuracy': NAN}])
  (row,) = compare.compare_runs([folder])
  values = row['metrics']['test_accuracy']
  assert math.isnan(values['final']) and values['best'] == 0.5
  assert 'nan' in compare.format_table([row])


def test_plot_series_are_the_seed_means(runs):
  drawn = plot.series(runs)
  assert list(drawn) == ['test_accuracy', 'test_loss', 'train_loss']
  group, lone = drawn['test_accuracy']
  assert group.label == 'client_lr=0.1 (3 seeds)' and group.runs == 3
  assert group.x.tolist() == [2, 4]
  np.testing.assert_allclose(group.y, [0.7, 0.6])      # rounds 2 and 4
  np.testing.assert_allclose(group.low, [0.6, 0.5])
  np.testing.assert_allclose(group.high, [0.8, 0.7])
  assert (lone.label, lone.runs) == ('client_lr=0.2', 1)
  np.testing.assert_allclose(lone.y, [0.3, 0.4])
  np.testing.assert_allclose(lone.low, lone.y)
  # One seed's NaN makes the group's point NaN, not a mean of the others.
  group_loss = drawn['test_loss'][0]
  assert math.isnan(group_loss.y[0]) and group_loss.y[1] == pytest.approx(0.9)
  group_train = drawn['train_loss'][0]
  assert group_train.x.tolist() == [1, 2, 3, 4]
  np.testing.assert_allclose(group_train.y, [2.0, 1.9, 1.8, 1.7])
  np.testing.assert_allclose(group_train.low, [1.0, 0.9, 0.8, 0.7])


def test_plot_series_against_seconds(runs):
  group, lone = plot.series(runs, x='seconds',
                            metrics=['test_accuracy'])['test_accuracy']
  # Cumulative seconds at rounds 2 and 4: (2, 3, 4) and (4, 6, 8).
  np.testing.assert_allclose(group.x, [3.0, 6.0])
  np.testing.assert_allclose(lone.x, [1.0, 2.0])


def test_plot_writes_a_picture(runs, tmp_path):
  out = plot.plot_runs(runs, out=str(tmp_path / 'all.png'))
  pixels = image.imread(out)
  # Three panels of 550 x 400 pixels side by side.
  assert pixels.shape[:2] == (400, 1650)
  ink = (pixels[..., :3] < 0.9).any(axis=-1).mean()
  assert 0.02 < ink < 0.5, ink
  one = plot.plot_runs(runs, out=str(tmp_path / 'one.png'), x='seconds',
                       metrics=['test_loss'])
  assert image.imread(one).shape[:2] == (400, 550)


def test_groups_and_labels(tmp_path):
  a = write_run(tmp_path / 'plain_a', [{'round': 1, 'train_loss': 1.0}])
  b = write_run(tmp_path / 'plain_b', [{'round': 1, 'train_loss': 2.0}])
  s0, s1 = (write_run(tmp_path / f'lr_s{s}', [{'round': 1}],
                      flags={'client_lr': 0.1, 'seed': s}) for s in (0, 1))
  runs = run_reader.read_runs([a, s0, b, s1])
  groups = run_reader.group_by_seed(runs)
  assert [(g.label, [r.name for r in g.runs]) for g in groups] == [
      ('plain_a', ['plain_a']), ('lr_s (2 seeds)', ['lr_s0', 'lr_s1']),
      ('plain_b', ['plain_b'])]
  assert run_reader.read_flags(s0) == {'client_lr': '0.1', 'seed': '0',
                                       'download': None}


def test_a_sweep_folder_stands_for_its_runs(tmp_path):
  for lr in (0.05, 0.2):
    for seed in (0, 1):
      write_run(tmp_path / 'grid' / f'client_lr_{lr}' / f'seed_{seed}',
                [{'round': 1, 'train_loss': lr + seed}],
                flags={'client_lr': lr, 'seed': seed})
  other = write_run(tmp_path / 'other', [{'round': 1, 'train_loss': 9.0}])
  runs = run_reader.read_runs([str(tmp_path / 'grid'), other])
  assert [os.path.relpath(r.path, tmp_path) for r in runs] == [
      'grid/client_lr_0.05/seed_0', 'grid/client_lr_0.05/seed_1',
      'grid/client_lr_0.2/seed_0', 'grid/client_lr_0.2/seed_1', 'other']
  groups = run_reader.group_by_seed(runs)
  assert [g.label for g in groups] == [
      'client_lr=0.05 (2 seeds)', 'client_lr=0.2 (2 seeds)', 'other']
  # A folder with no runs below it is still an error naming it.
  os.makedirs(tmp_path / 'empty')
  with pytest.raises(run_reader.RunError, match='empty'):
    run_reader.read_runs([str(tmp_path / 'empty')])


def test_a_cut_off_last_line_is_skipped(tmp_path):
  folder = tmp_path / 'killed'
  folder.mkdir()
  (folder / 'metrics.jsonl').write_text(
      '{"round": 1, "train_loss": 1.0}\n{"round": 2, "train_loss": 0.5}\n'
      '{"round": 3, "train_lo')
  records = run_reader.read_metrics(str(folder))
  assert [r['round'] for r in records] == [1, 2]
  # A whole last line without its newline is kept.
  (folder / 'metrics.jsonl').write_text('{"round": 1}\n{"round": 2}')
  assert [r['round'] for r in run_reader.read_metrics(str(folder))] == [1, 2]
  # A broken line before the last is no cut-off: an error naming it.
  (folder / 'metrics.jsonl').write_text('{"round": 1}\n{"rou\n{"round": 3}\n')
  with pytest.raises(run_reader.RunError, match=r'metrics.jsonl line 2 '):
    run_reader.read_metrics(str(folder))


@pytest.mark.parametrize('case, message', [
    ('missing', 'no such folder'),
    ('no_metrics', 'holds no metrics.jsonl'),
    ('empty', 'holds no rounds'),
    ('only_cut_off', 'holds no rounds'),
])
def test_unreadable_runs(tmp_path, case, message):
  folder = tmp_path / case
  if case != 'missing':
    folder.mkdir()
  if case == 'empty':
    (folder / 'metrics.jsonl').write_text('')
  if case == 'only_cut_off':
    (folder / 'metrics.jsonl').write_text('{"round": 1, "tr')
  with pytest.raises(run_reader.RunError, match=message) as error:
    compare.compare_runs([str(folder)])
  assert str(folder) in str(error.value)


def test_unknown_metric_names_what_there_is(runs):
  with pytest.raises(run_reader.RunError,
                     match=r"'test_acc' is in none of the runs; they have: "
                     r'clients, epsilon, seconds, test_accuracy, '):
    plot.series(runs, metrics=['test_acc'])


def cli(module, *args):
  env = {k: v for k, v in os.environ.items() if k != 'XLA_FLAGS'}
  return subprocess.run([sys.executable, '-m', f'fedjax_engine.{module}',
                         *map(str, args)], env=env, capture_output=True,
                        text=True, timeout=300)


def test_cli_plot_and_compare(runs, tmp_path):
  out = tmp_path / 'cli.png'
  done = cli('plot', *runs, f'--out={out}', '--x=seconds',
             '--metrics=test_accuracy,train_loss')
  assert done.returncode == 0, done.stderr
  assert done.stdout.strip() == f'wrote {out}'
  assert image.imread(str(out)).shape[:2] == (400, 1100)
  # A run killed mid-write: its cut-off line is skipped, with a warning.
  with open(os.path.join(runs[3], 'metrics.jsonl'), 'a') as f:
    f.write('{"round": 5, "train_')
  done = cli('compare', *runs, '--metrics=test_accuracy')
  assert done.returncode == 0, done.stderr
  assert 'lr0.2/metrics.jsonl: skipped its cut-off last line 5' in done.stderr
  assert done.stdout.splitlines()[1].split() == [
      'client_lr=0.1', '(3', 'seeds)', '4', '6.0', '±', '1.6',
      'test_accuracy', '0.6000', '±', '0.0816', '0.7000', '±', '0.0816']


@pytest.mark.parametrize('module, bad, expected', [
    ('plot', 'missing', 'no such folder; expected a run folder'),
    ('compare', 'no_metrics', 'holds no metrics.jsonl; expected a run'),
    ('compare', 'empty', 'holds no rounds; expected one JSON object'),
    ('plot', '--metrics=nope', "metric 'nope' is in none of the runs"),
    ('compare', '--metrics=nope', "metric 'nope' is in none of the runs"),
    ('plot', '--x=minutes', '--x'),
])
def test_cli_bad_input(runs, tmp_path, module, bad, expected):
  args = [runs[0]]
  if bad.startswith('--'):
    args.append(bad)
  else:
    folder = tmp_path / bad
    if bad != 'missing':
      folder.mkdir()
    if bad == 'empty':
      (folder / 'metrics.jsonl').write_text('')
    args.append(folder)
  if module == 'plot':
    args.append(f'--out={tmp_path / "bad.png"}')
  done = cli(module, *args)
  assert done.returncode == 2, done.stderr
  assert 'Traceback' not in done.stderr
  lines = done.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith('error: '), done.stderr
  assert expected in lines[0]
  assert bad.split('=')[-1] in lines[0]
  assert not (tmp_path / 'bad.png').exists()


def read_events(folder):
  """The scalars of the one event file in ``folder``: ``{(tag, step):
  value}``. tensorboardX has no reader: the TFRecord framing (a length, its
  CRC, an Event, its CRC) is undone here and only the Event protos parsed
  with its classes."""
  (name,) = os.listdir(folder)
  assert name.startswith('events.out.tfevents.')
  with open(os.path.join(folder, name), 'rb') as f:
    data = f.read()
  scalars = {}
  at = 0
  while at < len(data):
    (length,) = struct.unpack('<Q', data[at:at + 8])
    event = event_pb2.Event.FromString(data[at + 12:at + 12 + length])
    at += 12 + length + 4
    for value in event.summary.value:
      scalars[value.tag, event.step] = value.simple_value
  assert at == len(data)
  return scalars


def test_tensorboard_sink_writes_every_number(tmp_path):
  folder = str(tmp_path / 'tb')
  with tensorboard.TensorBoardSink(folder) as sink:
    sink.write([{'round': 1, 'seconds': 0.25, 'clients': 5,
                 'train_loss': 1.5, 'note': 'text', 'flag': True,
                 'per_client': [1.0, 2.0]}])
    sink.write([{'round': 2, 'train_loss': NAN, 'test_loss': math.inf},
                {'round': 3, 'train_loss': 0.75}])
  scalars = read_events(folder)
  assert math.isnan(scalars.pop(('train_loss', 2)))
  assert scalars == {('seconds', 1): 0.25, ('clients', 1): 5.0,
                     ('train_loss', 1): 1.5, ('test_loss', 2): math.inf,
                     ('train_loss', 3): 0.75}


def test_tensorboard_sink_needs_a_round(tmp_path):
  with tensorboard.TensorBoardSink(str(tmp_path / 'tb')) as sink:
    with pytest.raises(ValueError, match='integer "round"'):
      sink.write([{'train_loss': 1.0}])


def test_cli_run_writes_tensorboard_events_that_match_its_metrics(tmp_path):
  out = tmp_path / 'run'
  result = cli('train', '--num_clients=20', '--clients_per_round=5',
               '--local_steps=2', '--num_rounds=4', '--eval_every=2',
               '--noprogress', '--tensorboard', f'--output_dir={out}')
  assert result.returncode == 0, result.stderr
  scalars = read_events(str(out / 'tensorboard'))
  records = run_reader.read_metrics(str(out))
  assert len(records) == 4
  for record in records:
    assert scalars['train_loss', record['round']] == pytest.approx(
        record['train_loss'])
  assert scalars['test_accuracy', 4] == pytest.approx(
      records[-1]['test_accuracy'])
