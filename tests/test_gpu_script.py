"""benchmarks/gpu.py, the prepared accelerator run, at tiny sizes on CPU.

It checks that every part runs and writes what the README's GPU section
reads, not how fast anything is.
"""

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_gpu_script_runs_every_part_and_writes_them(tmp_path):
  out = tmp_path / 'gpu.json'
  proc = subprocess.run(
      [sys.executable, os.path.join(ROOT, 'benchmarks', 'gpu.py'), '--smoke',
       f'--out={out}'], capture_output=True, text=True, timeout=900,
      cwd=ROOT)
  assert proc.returncode == 0, proc.stderr[-3000:]
  result = json.loads(out.read_text())
  assert result['smoke'] and result['machine']['backend'] == 'cpu'
  assert [row['clients'] for row in result['cnn']] == [2]
  for row in result['cnn'] + [result['resnet']]:
    assert row['s_per_round'] > 0 and row['rounds_timed'] == 2, row
    assert row['train_loss'] > 0, row
  assert result['compass']['rounds'] == 3
  assert 0 <= result['compass']['test_accuracy'] <= 1
  assert result['resnet']['clients'] == 3


def test_gpu_script_names_an_unknown_part():
  proc = subprocess.run(
      [sys.executable, os.path.join(ROOT, 'benchmarks', 'gpu.py'),
       '--parts=cnn,vit'], capture_output=True, text=True, timeout=120,
      cwd=ROOT)
  assert proc.returncode == 2
  assert "unknown --parts ['vit']" in proc.stderr
