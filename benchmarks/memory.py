r"""Peak memory of a round as the cohort grows, at a fixed client chunk size.

Each configuration runs in its own subprocess. It first builds the data and
the model, records its resident set size (the baseline) and resets the
kernel's peak-RSS mark (``/proc/self/clear_refs``, Linux), then runs rounds
and reads the peak (``VmHWM``); the table shows the peak and the growth over
the baseline, which includes compilation. With streaming aggregation and
batches gathered chunk by chunk inside the compiled round, the growth should
not depend on the number of clients per round.

  python benchmarks/memory.py                       # MLP, 100/1000/10000
  python benchmarks/memory.py --cohorts=100,1000 --model=logistic
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import time

CHILD = r'''
import json, sys, time
import jax, numpy as np, optax
import fedjax_engine as fe

cohort, chunk, model_name, num_clients, rounds = sys.argv[1:6]
cohort, chunk, num_clients, rounds = int(cohort), int(chunk), int(num_clients), int(rounds)
train, _ = fe.datasets.synthetic(num_clients=num_clients, seed=0)
make = fe.models.mlp if model_name == 'mlp' else fe.models.logistic_regression
model = make(num_features=60, num_classes=10)
algo = fe.algorithms.fedavg(model, client_optimizer=optax.sgd(0.05))
rnd = fe.make_round(algo, train, clients_per_round=cohort,
                    batching=fe.Batching(batch_size=20, local_steps=10),
                    client_chunk_size=chunk)
state = algo.init(model.init(jax.random.key(0)))
jax.block_until_ready(state)

def status_kib(field):
  with open('/proc/self/status') as f:
    for line in f:
      if line.startswith(field + ':'):
        return int(line.split()[1])

baseline = status_kib('VmRSS')
with open('/proc/self/clear_refs', 'w') as f:
  f.write('5')  # resets the peak (VmHWM) to the current RSS
rng = np.random.default_rng(0)
times = []
for r in range(rounds):
  t = time.perf_counter()
  ids = rng.choice(train.num_clients, cohort, replace=False)
  state, _, metrics = rnd(state, (), rnd.select(ids), jax.random.key(r))
  jax.block_until_ready(metrics)
  times.append(time.perf_counter() - t)
peak = status_kib('VmHWM')
print(json.dumps(dict(baseline_kib=baseline, peak_kib=peak,
                      first_round_s=times[0],
                      round_s=float(np.median(times[1:])) if rounds > 1 else None,
                      train_loss=float(metrics['train_loss']))))
'''


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--cohorts', default='100,1000,10000')
  parser.add_argument('--chunk', type=int, default=100)
  parser.add_argument('--model', default='mlp', choices=['mlp', 'logistic'])
  parser.add_argument('--num_clients', type=int, default=10000)
  parser.add_argument('--rounds', type=int, default=3)
  parser.add_argument('--out', default=os.path.join(
      os.path.dirname(__file__), 'results', 'memory.json'))
  args = parser.parse_args()

  rows = []
  for cohort in [int(c) for c in args.cohorts.split(',')]:
    out = subprocess.run(
        [sys.executable, '-c', CHILD, str(cohort), str(args.chunk), args.model,
         str(args.num_clients), str(args.rounds)],
        capture_output=True, text=True, check=True)
    row = json.loads(out.stdout.strip().splitlines()[-1])
    row['clients_per_round'] = cohort
    rows.append(row)
    print(f"{cohort:>6} clients/round: peak {row['peak_kib'] / 1024:8.1f} MiB,"
          f" growth over baseline {(row['peak_kib'] - row['baseline_kib']) / 1024:7.1f} MiB,"
          f" round {row['round_s']:.3f} s", flush=True)

  machine = dict(python=platform.python_version(), cpu_count=os.cpu_count(),
                 date=time.strftime('%Y-%m-%d'), processor=_cpu_model())
  os.makedirs(os.path.dirname(args.out), exist_ok=True)
  with open(args.out, 'w') as f:
    json.dump(dict(args=vars(args), machine=machine, rows=rows), f, indent=1)
  print(f'wrote {args.out}')


def _cpu_model():
  try:
    with open('/proc/cpuinfo') as f:
      for line in f:
        if line.startswith('model name'):
          return line.split(':', 1)[1].strip()
  except OSError:
    pass
  return platform.processor()


if __name__ == '__main__':
  main()
