r"""Padding waste of local epochs on the FEMNIST subset, with and without
size bucketing.

With ``local_epochs``, client k takes ceil(n_k / B) steps. Clients trained
together (a chunk, vmapped) run as many steps as the busiest of them; the
engine's ``step_utilization`` round metric is the steps that held examples of
real clients over the steps the chunks ran. The engine sorts each cohort by
size before cutting it into chunks ("size bucketing"); this script reads the
metric (mean over rounds) from real engine rounds (FedAvg, logistic regression on the 784
pixels, 1 local epoch of batch 20) and, for comparison, computes what chunks
cut from the unsorted cohort would run, from the same clients' sizes.

Usage (needs ../shared/data/femnist, see its README):

  python benchmarks/padding.py [--data=../shared/data/femnist]

Writes ``benchmarks/results/padding.json`` and prints a markdown table.
"""

import argparse
import json
import os
import platform

import jax
import numpy as np
import optax

import fedjax_engine as fe

HERE = os.path.dirname(os.path.abspath(__file__))
BATCH = 20
ROUNDS = 30


def unsorted_utilization(sizes, chunk):
  """useful / executed steps for chunks cut from ``sizes`` in this order."""
  steps = np.ceil(sizes / BATCH)
  chunks = [steps[i:i + chunk] for i in range(0, len(steps), chunk)]
  return steps.sum() / sum(chunk * c.max() for c in chunks)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--data', default=os.path.join(
      HERE, '..', '..', 'shared', 'data', 'femnist'))
  parser.add_argument('--out', default=os.path.join(HERE, 'results',
                                                    'padding.json'))
  args = parser.parse_args()
  train, _ = fe.datasets.emnist(data_dir=args.data)
  train = train.map(lambda f: {'x': f['x'].reshape(len(f['x']), -1),
                               'y': f['y']})
  model = fe.models.logistic_regression(num_features=784, num_classes=62)
  algo = fe.algorithms.fedavg(model, client_optimizer=optax.sgd(0.01))
  mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), ('clients',))
  rows = []
  for cpr in (10, 100):
    sampler = fe.sampling.uniform(num_clients=train.num_clients,
                                  clients_per_round=cpr,
                                  key=jax.random.key(0))
    for chunk in sorted({1, 5, 10, cpr}):
      if chunk > cpr:
        continue
      rnd = fe.make_round(algo, train, batching=fe.Batching(
          batch_size=BATCH, local_epochs=1), clients_per_round=cpr,
                          client_chunk_size=chunk, mesh=mesh)
      state = algo.init(model.init(jax.random.key(0)))
      _, _, metrics = rnd.run_rounds(state, (), sampler, jax.random.key(1),
                                     first_round=0, num_rounds=ROUNDS)
      unsorted = [unsorted_utilization(train.sizes[sampler(r)], chunk)
                  for r in range(ROUNDS)]
      rows.append(dict(
          clients_per_round=cpr, chunk=chunk,
          sorted=float(np.mean(metrics['step_utilization'])),
          unsorted=float(np.mean(unsorted))))
      print(rows[-1], flush=True)
  sizes = train.sizes
  result = dict(
      dataset=f'FEMNIST subset, {train.num_clients} clients, sizes '
              f'{sizes.min()}-{sizes.max()} (median {int(np.median(sizes))})',
      batch_size=BATCH, local_epochs=1, rounds=ROUNDS,
      machine=platform.processor() or platform.machine(),
      jax=jax.__version__, rows=rows)
  os.makedirs(os.path.dirname(args.out), exist_ok=True)
  with open(args.out, 'w') as f:
    json.dump(result, f, indent=1)
  print('\n| clients/round | chunk | sorted (engine) | unsorted |')
  print('|---|---|---|---|')
  for r in rows:
    print(f"| {r['clients_per_round']} | {r['chunk']} | {r['sorted']:.3f} | "
          f"{r['unsorted']:.3f} |")


if __name__ == '__main__':
  main()
