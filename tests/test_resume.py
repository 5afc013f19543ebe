"""Checkpoints: a killed run resumes to the metrics of a run never stopped.

Each test runs the command line in subprocesses. The experiment keeps
state everywhere a resume could lose it: SCAFFOLD's control variates in
the client-state table and the server's, DP-FTRL's tree of noise in a
transform's server state, and rounds fused three to a call.
"""

import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from fedjax_engine import checkpoint

ARGS = ['--num_clients=30', '--clients_per_round=6', '--local_steps=2',
        '--batch_size=8', '--noprogress', '--num_rounds=12', '--eval_every=4',
        '--rounds_per_call=3', '--algorithm=scaffold', '--dp=dp_ftrl',
        '--dp_noise_multiplier=0.5', '--checkpoint_every=3']


def _command(*args):
  return [sys.executable, '-m', 'fedjax_engine.train', *ARGS, *args]


def _env():
  env = dict(os.environ)
  env.pop('XLA_FLAGS', None)
  return env


def _run(*args, cwd):
  return subprocess.run(_command(*args), capture_output=True, text=True,
                        env=_env(), timeout=300, cwd=cwd)


def _metrics(folder):
  """Every record but its wall time."""
  with open(os.path.join(folder, 'metrics.jsonl')) as f:
    return [{k: v for k, v in json.loads(line).items() if k != 'seconds'}
            for line in f]


def _lines(folder):
  try:
    with open(os.path.join(folder, 'metrics.jsonl')) as f:
      return f.read().count('\n')
  except FileNotFoundError:
    return 0


def _start_and_stop(folder, cwd, *, sig, after_rounds):
  """Starts a run and sends ``sig`` once it has written ``after_rounds``
  rounds of metrics."""
  process = subprocess.Popen(_command(f'--output_dir={folder}'),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, env=_env(), cwd=cwd)
  deadline = time.monotonic() + 240
  while _lines(folder) < after_rounds and process.poll() is None:
    assert time.monotonic() < deadline, 'the run made no progress'
    time.sleep(0.02)
  assert process.poll() is None, 'the run ended before it could be stopped'
  process.send_signal(sig)
  out, err = process.communicate(timeout=120)
  return process.returncode, out, err


@pytest.fixture(scope='module')
def whole_run(tmp_path_factory):
  folder = tmp_path_factory.mktemp('whole') / 'run'
  result = _run(f'--output_dir={folder}', cwd=folder.parent)
  assert result.returncode == 0, result.stderr
  return folder


def test_sigkill_then_resume_gives_identical_metrics(whole_run, tmp_path):
  folder = tmp_path / 'run'
  code, _, _ = _start_and_stop(folder, tmp_path, sig=signal.SIGKILL,
                               after_rounds=7)
  assert code == -signal.SIGKILL
  saved = checkpoint.Checkpoints(str(folder)).latest()
  assert saved is not None and saved < 12
  result = _run(f'--output_dir={folder}', '--resume', cwd=tmp_path)
  assert result.returncode == 0, result.stderr
  assert _metrics(folder) == _metrics(whole_run)
  # The final model is kept, the same as the run's that never stopped.
  params = checkpoint.load_params(str(folder))
  expected = checkpoint.load_params(str(whole_run))
  assert jax.tree.structure(params) == jax.tree.structure(expected)
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(expected)):
    np.testing.assert_array_equal(a, b)


def test_sigterm_stops_cleanly_and_resumes(whole_run, tmp_path):
  folder = tmp_path / 'run'
  code, _, err = _start_and_stop(folder, tmp_path, sig=signal.SIGTERM,
                                 after_rounds=4)
  assert code == 130, err
  assert 'A checkpoint is saved' in err and '--resume' in err
  assert 'Traceback' not in err
  done = _lines(folder)
  assert checkpoint.Checkpoints(str(folder)).latest() == done
  result = _run(f'--output_dir={folder}', '--resume', cwd=tmp_path)
  assert result.returncode == 0, result.stderr
  assert _metrics(folder) == _metrics(whole_run)


def test_evaluate_run_scores_the_saved_model(whole_run, tmp_path):
  result = subprocess.run(
      [sys.executable, '-m', 'fedjax_engine.evaluate_run', str(whole_run)],
      capture_output=True, text=True, env=_env(), timeout=300, cwd=tmp_path)
  assert result.returncode == 0, result.stderr
  scores = json.loads(result.stdout.split(': ', 2)[-1])
  last = _metrics(whole_run)[-1]
  assert scores['test_accuracy'] == pytest.approx(last['test_accuracy'],
                                                  abs=1e-4)
  assert scores['test_loss'] == pytest.approx(last['test_loss'], abs=1e-4)
  assert 'after 12 rounds' in result.stdout


@pytest.fixture(scope='module')
def killed_run(tmp_path_factory):
  """A run killed after 4 rounds, with checkpoints; tests take copies."""
  folder = tmp_path_factory.mktemp('killed') / 'run'
  code, _, _ = _start_and_stop(folder, folder.parent, sig=signal.SIGKILL,
                               after_rounds=4)
  assert code == -signal.SIGKILL
  assert checkpoint.Checkpoints(str(folder)).latest() is not None
  return folder


def _copy(folder, tmp_path):
  return pathlib.Path(shutil.copytree(folder, tmp_path / 'run'))


def test_a_checkpoint_of_other_flags_is_refused(killed_run, tmp_path):
  folder = _copy(killed_run, tmp_path)
  result = _run(f'--output_dir={folder}', '--resume', '--seed=7',
                cwd=tmp_path)
  assert result.returncode == 2
  assert 'is of another experiment' in result.stderr
  assert '--seed=7' in result.stderr
  assert 'Traceback' not in result.stderr


def test_a_damaged_checkpoint_is_refused(killed_run, tmp_path):
  folder = _copy(killed_run, tmp_path)
  latest = checkpoint.Checkpoints(str(folder)).latest()
  for root, _, files in os.walk(folder / 'checkpoints' / str(latest)):
    for name in files:
      with open(os.path.join(root, name), 'wb') as f:
        f.write(b'not a checkpoint')
  result = _run(f'--output_dir={folder}', '--resume', cwd=tmp_path)
  assert result.returncode == 2
  assert f'checkpoints/{latest}' in result.stderr
  assert 'Traceback' not in result.stderr


def test_a_run_without_checkpoints_cannot_resume(tmp_path):
  folder = tmp_path / 'run'
  folder.mkdir()
  (folder / 'metrics.jsonl').write_text('{"round": 1}\n')
  (folder / 'flags.txt').write_text('')
  result = _run(f'--output_dir={folder}', '--resume', cwd=tmp_path)
  assert result.returncode == 2
  assert 'no checkpoint to resume it from' in result.stderr


def test_overwrite_removes_the_old_checkpoints(killed_run, tmp_path):
  folder = _copy(killed_run, tmp_path)
  result = _run(f'--output_dir={folder}', '--output_exists=overwrite',
                '--num_rounds=2', '--checkpoint_every=0', cwd=tmp_path)
  assert result.returncode == 0, result.stderr
  assert os.listdir(folder / 'checkpoints') == ['2']
