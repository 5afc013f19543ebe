r"""FedAvg with the EMNIST CNN on the 300-writer FEMNIST subset in ../shared/data.

Runs the CLI as a user would and records test accuracy by round and wall
time. Settings follow the federated EMNIST-62 reference run (10 clients a
round, batch 20, client SGD at 10^-1.5; Reddi et al., ICLR 2021), with one
local epoch as in McMahan et al. 2017. The bar to beat is pooled softmax
regression on the same data, about 69% (../shared/data/README.md).

  python benchmarks/femnist_accuracy.py                 # 300 rounds
  python benchmarks/femnist_accuracy.py --rounds=50     # quicker look
"""

import argparse
import os
import sys

import cli_run


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--data', default=os.path.join(
      os.path.dirname(__file__), '..', '..', 'shared', 'data', 'femnist'))
  parser.add_argument('--rounds', type=int, default=300)
  parser.add_argument('--eval_every', type=int, default=25)
  parser.add_argument('--out', default=os.path.join(
      os.path.dirname(__file__), 'results', 'femnist_accuracy.json'))
  args = parser.parse_args()
  if not os.path.isdir(args.data):
    sys.exit(f'FEMNIST subset not found at {args.data}')
  flags = ['--dataset=emnist', f'--data_dir={args.data}',
           '--model=emnist_cnn', '--local_epochs=1', '--batch_size=20',
           '--client_lr=0.0316', '--clients_per_round=10',
           f'--num_rounds={args.rounds}', f'--eval_every={args.eval_every}',
           '--noprogress']
  records, wall = cli_run.run_cli(flags)
  curve = [(r['round'], r['test_accuracy'], r['test_accuracy_per_client'])
           for r in records if 'test_accuracy' in r]
  result = dict(flags=flags, curve=curve, final_test_accuracy=curve[-1][1])
  for r, acc, per_client in curve:
    print(f'round {r:4d}: test accuracy {acc:.4f} (per client '
          f'{per_client:.4f})')
  cli_run.save(result, records, wall, args.out)


if __name__ == '__main__':
  main()
