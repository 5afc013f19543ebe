"""Every registered dataset trains from the CLI with a model of the zoo.

Each dataset's files are written small, in the real format, by the writers
of the loader tests (test_emnist, test_leaf, test_shakespeare, ...); the CLI
then runs two rounds on them, as a user would, and must write finite
metrics. A dataset added to the registry without a case here fails
``test_every_registered_dataset_has_a_case``.
"""

import math
import os
import pathlib

import numpy as np
import pytest

from fedjax_engine import registry
import test_cifar
import test_emnist
import test_leaf
import test_mnist
import test_shakespeare
import test_stackoverflow
from test_train_cli import _read_jsonl, _train


def _emnist(folder, prefix, num_classes):
  for split, seed in (('train', 1), ('test', 2)):
    rng = np.random.default_rng(seed)
    test_emnist.write_h5(os.path.join(folder, f'{prefix}_{split}.h5'), {
        cid: (test_emnist.images(*rng.uniform(size=3)),
              test_emnist.labels(*rng.integers(num_classes, size=3)))
        for cid in ('f0', 'f1')})


def _leaf_femnist(folder):
  for split in ('train', 'test'):
    test_leaf.write_leaf(pathlib.Path(folder, split, 'a.json'), {
        'u1': ([test_leaf.image(0.5), test_leaf.image(0.25)], [3, 61]),
        'u2': ([test_leaf.image(1.0, (3, 4))], [10])})


def _leaf_shakespeare(folder):
  # LEAF's 80-character windows, each labelled with the next character.
  text = 'To be, or not to be, that is the question: Whether tis nobler ' * 3
  windows = [text[k:k + 80] for k in range(3)]
  nexts = [text[k + 80] for k in range(3)]
  for split in ('train', 'test'):
    test_leaf.write_leaf(pathlib.Path(folder, split, 'a.json'), {
        'HAMLET': (windows, nexts), 'OPHELIA': (windows[:1], nexts[:1])})


def _leaf_sent140(folder):
  tweets = [test_leaf.tweet('what a good day'), test_leaf.tweet('so bad!'),
            test_leaf.tweet("it's fine, fine")]
  for split in ('train', 'test'):
    test_leaf.write_leaf(pathlib.Path(folder, split, 'a.json'), {
        'amy': (tweets, [1, 0, 1]), 'bob': (tweets[1:], [0, 1])})


def _shakespeare(folder):
  clients = {'ROMEO': [b'But soft, what light', b'through yonder window'],
             'JULIET': [b'O Romeo, Romeo!']}
  test_shakespeare.write_splits(folder, clients, clients)


def _stackoverflow(folder):
  # The CLI loads TFF's default vocabularies: 10,000 words and 500 tags.
  test_stackoverflow.write_vocab(
      folder, words=[f'w{k}' for k in range(10_000)],
      tags={f't{k}': 1000 - k for k in range(500)})
  clients = {'u1': [('w1 w2 w3 w9999 zzz', 'w4 w5', 't1|t2'),
                    ('w6 w1', 'w7', 't3')],
             'u2': [('w2 w2', 'w8', 't1|t499')]}
  for split in ('train', 'test'):
    test_stackoverflow.write_h5(
        os.path.join(folder, f'stackoverflow_{split}.h5'), clients)


def _cifar10(folder):
  test_cifar.write_folder(os.path.join(folder, 'cifar-10-batches-py'),
                          test_cifar.cifar10_files())


def _cifar100(folder):
  test_cifar.write_folder(os.path.join(folder, 'cifar-100-python'),
                          test_cifar.cifar100_files())


# dataset -> (model, writer of its files into a folder). The models are the
# cheapest of the zoo that fit; the datasets' own published models (CNNs,
# ResNet) are exercised on real data in test_train_cli and test_models_zoo.
CASES = {
    'emnist': ('logistic', lambda d: _emnist(d, 'fed_emnist', 62)),
    'emnist_digits': ('logistic',
                      lambda d: _emnist(d, 'fed_emnist_digitsonly', 10)),
    'leaf_femnist': ('logistic', _leaf_femnist),
    'leaf_shakespeare': ('char_lstm_last', _leaf_shakespeare),
    'leaf_sent140': ('sent140_lstm', _leaf_sent140),
    'shakespeare': ('char_lstm', _shakespeare),
    'stackoverflow_nwp': ('stackoverflow_lstm', _stackoverflow),
    'stackoverflow_tags': ('multilabel_logistic', _stackoverflow),
    'fed_cifar100': ('logistic', test_cifar.write_fed_pair),
    'mnist': ('logistic', test_mnist.write_dataset),
    'fashion_mnist': ('logistic', test_mnist.write_dataset),
    'cifar10': ('logistic', _cifar10),
    'cifar100': ('logistic', _cifar100),
}


def test_every_registered_dataset_has_a_case():
  # synthetic needs no files; test_train_cli runs it.
  assert set(registry.DATASETS) - {'synthetic'} == set(CASES)


def _run(tmp_path, dataset, model, *extra):
  folder = tmp_path / 'data'
  folder.mkdir()
  CASES[dataset][1](str(folder))
  out = tmp_path / 'run'
  result = _train(f'--dataset={dataset}', f'--data_dir={folder}',
                  f'--model={model}', '--num_clients=2',
                  '--clients_per_round=2', '--num_rounds=2', '--eval_every=1',
                  '--local_steps=2', '--batch_size=2', '--noprogress',
                  f'--output_dir={out}', *extra, cwd=tmp_path)
  assert result.returncode == 0, result.stderr
  records = _read_jsonl(out / 'metrics.jsonl')
  assert [r['round'] for r in records] == [1, 2]
  for record in records:
    for key, value in record.items():
      assert math.isfinite(value), (key, value)
  return records[-1]


@pytest.mark.parametrize('dataset', sorted(CASES))
def test_cli_trains_on(tmp_path, dataset):
  model = CASES[dataset][0]
  record = _run(tmp_path, dataset, model)
  assert record['test_loss'] > 0
  # Ratio metrics report the ratio itself, not its two parts.
  assert not [k for k in record if k.endswith(('_sum', '_count'))]
  names = (('recall_at_5', 'precision') if model == 'multilabel_logistic'
           else ('accuracy',))
  for name in names:
    assert 0.0 <= record[f'test_{name}'] <= 1.0
    assert 0.0 <= record[f'test_{name}_per_client'] <= 1.0


def test_tags_recall_counts_the_test_tags(tmp_path):
  record = _run(tmp_path, 'stackoverflow_tags', 'multilabel_logistic')
  assert sorted(k for k in record if k.startswith('test_')) == [
      'test_loss', 'test_loss_per_client', 'test_precision',
      'test_precision_client_min', 'test_precision_client_p10',
      'test_precision_per_client', 'test_recall_at_5',
      'test_recall_at_5_client_min', 'test_recall_at_5_client_p10',
      'test_recall_at_5_per_client']
  # Test tags: t1, t2, t3 in u1's rows, t1, t499 in u2's row. Whatever the
  # model predicts, a of u1's 3 tags and b of u2's 2 are in the top 5:
  # recall@5 is (a + b) / 5 over all tags and (a/3 + b/2) / 2 per client.
  assert any(
      record['test_recall_at_5'] == pytest.approx((a + b) / 5) and
      record['test_recall_at_5_per_client'] == pytest.approx(
          (a / 3 + b / 2) / 2)
      for a in range(4) for b in range(3))


def test_max_clients_and_examples_reach_the_loader(tmp_path):
  # u1 only, and only its first row in each split: test tags t1, t2.
  record = _run(tmp_path, 'stackoverflow_tags', 'multilabel_logistic',
                '--max_clients=1', '--max_examples=1', '--clients_per_round=1')
  # One client: its own means are the overall ones.
  for name in ('loss', 'recall_at_5', 'precision'):
    assert record[f'test_{name}_per_client'] == pytest.approx(
        record[f'test_{name}'])
  # Two tags: 0, 1 or 2 of them in the top 5.
  assert record['test_recall_at_5'] in (0.0, 0.5, 1.0)


def _usage_error(tmp_path, dataset, *flags):
  """stderr of a CLI run on ``dataset``'s files that must stop with exit 2
  and one message, no traceback."""
  folder = tmp_path / 'data'
  folder.mkdir()
  CASES[dataset][1](str(folder))
  result = _train(f'--dataset={dataset}', f'--data_dir={folder}', *flags,
                  '--num_rounds=1', '--noprogress', cwd=tmp_path)
  assert result.returncode == 2, result.stderr[-2000:]
  assert 'Traceback' not in result.stderr
  return result.stderr


@pytest.mark.parametrize('dataset, flag, message', [
    ('leaf_sent140', '--max_clients=1',
     '--max_clients is not an option of --dataset=leaf_sent140'),
    ('stackoverflow_tags', '--max_examples=0',
     '--max_examples must be >= 1'),
])
def test_max_flags_are_checked(tmp_path, dataset, flag, message):
  assert message in _usage_error(tmp_path, dataset, flag,
                                 '--clients_per_round=1')


def test_model_with_another_label_shape_is_caught(tmp_path):
  # char_lstm_last predicts one character per example ([B, 90]); TFF
  # Shakespeare's labels are 80 characters per example. On a single example
  # the two broadcast; the check uses two and wants one loss per example.
  stderr = _usage_error(tmp_path, 'shakespeare', '--model=char_lstm_last',
                        '--clients_per_round=2')
  assert ('--model=char_lstm_last does not take the examples of '
          '--dataset=shakespeare') in stderr


def test_wrong_model_for_a_dataset_is_one_message(tmp_path):
  stderr = _usage_error(tmp_path, 'leaf_sent140', '--model=emnist_cnn',
                        '--clients_per_round=2')
  assert ('--model=emnist_cnn does not take the examples of '
          '--dataset=leaf_sent140') in stderr
