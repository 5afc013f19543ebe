"""Shared by the accuracy benchmarks: run the CLI, save what it measured."""

import json
import os
import platform
import subprocess
import sys
import tempfile
import time


def run_cli(flags, run_dir=None):
  """Runs ``python -m fedjax_engine.train`` with ``flags``.

  Returns its ``metrics.jsonl`` records and the wall time in seconds. The
  output goes to ``run_dir`` (kept), or to a temporary folder.
  """
  with tempfile.TemporaryDirectory() as scratch:
    out_dir = run_dir or scratch
    start = time.perf_counter()
    subprocess.run([sys.executable, '-m', 'fedjax_engine.train', *flags,
                    f'--output_dir={out_dir}'], check=True)
    wall = time.perf_counter() - start
    with open(os.path.join(out_dir, 'metrics.jsonl')) as f:
      return [json.loads(line) for line in f], wall


def save(result: dict, records, wall: float, out: str, **machine):
  """Adds timing and machine facts to ``result``, prints and writes it."""
  seconds = [r['seconds'] for r in records]
  result.update(
      wall_seconds=wall, first_round_seconds=seconds[0],
      median_round_seconds=sorted(seconds)[len(seconds) // 2],
      machine=dict(cpu_count=os.cpu_count(), python=platform.python_version(),
                   date=time.strftime('%Y-%m-%d'), **machine))
  print(f'{len(records)} rounds in {wall:.0f} s wall; median round '
        f"{result['median_round_seconds']:.2f} s")
  os.makedirs(os.path.dirname(out), exist_ok=True)
  with open(out, 'w') as f:
    json.dump(result, f, indent=1)
  print(f'wrote {out}')
