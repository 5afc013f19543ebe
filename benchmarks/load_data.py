r"""Load time and peak memory of the real datasets in ../shared/data.

Each dataset loads in a fresh subprocess, which reports the wall time of the
loader call, the size of the arrays it returned, and the growth of the peak
resident set size (``VmHWM``, reset just before the load through
``/proc/self/clear_refs``, Linux) over the resident size before the load.

  python benchmarks/load_data.py
  python benchmarks/load_data.py --data=/path/to/shared/data
"""

import argparse
import json
import os
import subprocess
import sys

CHILD = r'''
import json, sys, time
import fedjax_engine as fe

name, folder = sys.argv[1:3]

def status_kib(field):
  with open('/proc/self/status') as f:
    for line in f:
      if line.startswith(field + ':'):
        return int(line.split()[1])

loaders = {
    'emnist (FEMNIST subset, TFF h5)': lambda: fe.datasets.emnist(data_dir=folder),
    'shakespeare (TFF h5)': lambda: fe.datasets.shakespeare(data_dir=folder),
    'mnist (idx)': lambda: fe.datasets.mnist(data_dir=folder),
}
before = status_kib('VmRSS')
with open('/proc/self/clear_refs', 'w') as f:
  f.write('5')
start = time.perf_counter()
result = loaders[name]()
seconds = time.perf_counter() - start
peak = status_kib('VmHWM')
if hasattr(result, 'train_x'):  # centralized arrays
  nbytes = sum(a.nbytes for a in result[:4])
  summary = dict(train=len(result.train_y), test=len(result.test_y))
else:  # (train, test) FederatedData
  nbytes = sum(d.nbytes for d in result)
  summary = {split: dict(clients=d.num_clients, examples=d.num_examples)
             for split, d in zip(('train', 'test'), result)}
print(json.dumps(dict(seconds=seconds, array_mib=nbytes / 2**20,
                      peak_growth_mib=(peak - before) / 1024,
                      summary=summary)))
'''

DATASETS = {
    'emnist (FEMNIST subset, TFF h5)': 'femnist',
    'shakespeare (TFF h5)': 'shakespeare',
    'mnist (idx)': 'mnist',
}


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--data', default=os.path.join(
      os.path.dirname(__file__), '..', '..', 'shared', 'data'))
  parser.add_argument('--out', default=os.path.join(
      os.path.dirname(__file__), 'results', 'load_data.json'))
  args = parser.parse_args()
  rows = {}
  for name, sub in DATASETS.items():
    folder = os.path.join(args.data, sub)
    if not os.path.isdir(folder):
      print(f'{name}: skipped, {folder} not found')
      continue
    out = subprocess.run([sys.executable, '-c', CHILD, name, folder],
                         capture_output=True, text=True, check=True)
    row = json.loads(out.stdout.strip().splitlines()[-1])
    rows[name] = row
    print(f"{name:34s} {row['seconds']:5.2f} s, arrays "
          f"{row['array_mib']:7.1f} MiB, peak growth "
          f"{row['peak_growth_mib']:7.1f} MiB "
          f"({row['peak_growth_mib'] / row['array_mib']:.2f}x), "
          f"{row['summary']}", flush=True)
  os.makedirs(os.path.dirname(args.out), exist_ok=True)
  with open(args.out, 'w') as f:
    json.dump(rows, f, indent=1)
  print(f'wrote {args.out}')


if __name__ == '__main__':
  main()
