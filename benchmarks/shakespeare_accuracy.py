r"""FedAvg with the character LSTM on federated Shakespeare in ../shared/data.

Runs the CLI as a user would and records next-character test accuracy by
round and wall time. Settings follow the Shakespeare FedAvg run of Reddi et
al., "Adaptive Federated Optimization", ICLR 2021 (10 clients a round, batch
4, client SGD at learning rate 1, server SGD at 1, sequences of 80), with
two changes. Each client takes 10 local steps of batch 4 (40 sequences,
about one epoch of the mean client's 53) instead of exactly one epoch: with
epochs a round's cost follows its clients' sizes (one client has 1,003
sequences, 251 steps) and every new bucket of step counts compiles again;
fixed steps keep one compiled shape and a steady cost per round on a
2-core CPU. And it runs 100 rounds, not Reddi et al.'s 1,200, to finish in
about 20 minutes there (``--rounds``).

Accuracy is over the test split's target characters, token-weighted, with
padding and the end-of-snippet token left out (FedJAX's ``accuracy_no_eos``;
the CLI's ``char_lstm``). The bar it must clear is the unigram predictor,
the most frequent target character of the train split, scored on the same
test tokens; this script computes it.

  python benchmarks/shakespeare_accuracy.py                 # 100 rounds
  python benchmarks/shakespeare_accuracy.py --rounds=10     # quicker look
"""

import argparse
import importlib
import os
import sys
import time

import numpy as np

from fedjax_engine import datasets

import cli_run

# The package exports the loader under the module's name; this is the module.
shakespeare_lib = importlib.import_module('fedjax_engine.datasets.shakespeare')


def unigram_baseline(data_dir: str) -> dict:
  """Accuracy of always predicting the train split's most frequent target.

  Counts the targets the model's token accuracy counts: every ``y`` but
  padding and the end-of-snippet token.
  """
  train, test = datasets.shakespeare(data_dir=data_dir)

  def counted(data):
    y = data.features['y']
    return y[(y != shakespeare_lib.PAD) & (y != shakespeare_lib.EOS)]

  train_y, test_y = counted(train), counted(test)
  top = int(np.argmax(np.bincount(train_y,
                                  minlength=shakespeare_lib.vocab_size)))
  char = shakespeare_lib.VOCAB[top - shakespeare_lib.NUM_RESERVED]
  return dict(char=char, test_accuracy=float(np.mean(test_y == top)),
              test_tokens=int(test_y.size))


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--data', default=os.path.join(
      os.path.dirname(__file__), '..', '..', 'shared', 'data', 'shakespeare'))
  parser.add_argument('--rounds', type=int, default=100)
  parser.add_argument('--eval_every', type=int, default=10)
  parser.add_argument('--run_dir', default=None, help='Keep the CLI output '
                      '(metrics.jsonl, flags.txt) here; default: a temporary '
                      'folder.')
  parser.add_argument('--out', default=os.path.join(
      os.path.dirname(__file__), 'results', 'shakespeare_accuracy.json'))
  args = parser.parse_args()
  if not os.path.isdir(args.data):
    sys.exit(f'Shakespeare data not found at {args.data}')
  baseline = unigram_baseline(args.data)
  print(f"unigram baseline (always {baseline['char']!r}): test accuracy "
        f"{baseline['test_accuracy']:.4f} over {baseline['test_tokens']} "
        'tokens')
  flags = ['--dataset=shakespeare', f'--data_dir={args.data}',
           '--model=char_lstm', '--local_steps=10', '--batch_size=4',
           '--client_lr=1', '--server_lr=1', '--clients_per_round=10',
           f'--num_rounds={args.rounds}', f'--eval_every={args.eval_every}',
           '--noprogress']
  load_before = os.getloadavg()
  records, wall = cli_run.run_cli(flags, args.run_dir)
  load_after = os.getloadavg()
  # The model's accuracy is token accuracy (total correct / total counted
  # tokens, models/sequence.py), the number papers report; the
  # per-sequence mean is kept beside it to show how far the two differ.
  curve = [(r['round'], r['test_accuracy'], r['test_sequence_accuracy'])
           for r in records if 'test_accuracy' in r]
  result = dict(
      flags=flags,
      curve_columns=['round', 'test_token_accuracy',
                     'test_accuracy_per_sequence'],
      curve=curve, final_test_token_accuracy=curve[-1][1],
      unigram_baseline=baseline)
  for r, acc, per_sequence in curve:
    print(f'round {r:4d}: test token accuracy {acc:.4f} (per sequence '
          f'{per_sequence:.4f})')
  cli_run.save(result, records, wall, args.out,
               load_average_before=load_before, load_average_after=load_after)


if __name__ == '__main__':
  main()
