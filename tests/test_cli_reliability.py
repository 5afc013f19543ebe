"""The CLI's failures, as a user meets them: one line and an exit code.

Bad numeric flags, reused or unusable output folders, a full disk,
divergence and Ctrl-C (issue 9). Every case runs the real program, except
the flag ranges, which are checked in-process flag by flag.
"""

import json
import math
import os
import resource
import signal
import subprocess
import sys
import time

from absl import flags
from absl.testing import flagsaver
import pytest

from fedjax_engine import train
from test_train_cli import SMALL, _read_jsonl, _train

BAD_VALUES = {
    'num_rounds': -1, 'clients_per_round': 0, 'local_steps': 0,
    'local_epochs': 0, 'batch_size': 0, 'client_lr': math.inf,
    'client_momentum': 1.0, 'server_lr': -0.1, 'server_momentum': -3.0,
    'server_beta1': 1.0, 'server_beta2': math.nan, 'server_epsilon': 0.0,
    'eval_every': -1, 'eval_batch_size': 0, 'seed': -1,
    'client_chunk_size': 0, 'cpu_devices': -1, 'rounds_per_call': 0,
    'call_seconds': math.nan,
    'num_processes': 0, 'process_id': -1, 'max_clients': 0,
    'max_examples': 0, 'num_clients': 0, 'dirichlet_alpha': 0.0,
    'shards_per_client': 0, 'synthetic_alpha': -1.0,
    'synthetic_beta': math.inf, 'client_dropout': 1.0, 'stragglers': -0.5,
    'synthetic_size_log_mean': math.nan, 'synthetic_size_log_sigma': -1.0,
    'synthetic_min_size': 1, 'synthetic_test_fraction': 1.0,
    'availability_period': -1, 'available_fraction': 0.0,
    'finetune_steps': -1, 'finetune_lr': 0.0, 'dp_clip_norm': 0.0,
    'dp_noise_multiplier': -1.0, 'target_epsilon': 0.0, 'dp_delta': 1.0,
    'dp_target_quantile': 0.0, 'trim_fraction': 0.5, 'num_byzantine': -1,
    'multi_krum_selected': 0, 'norm_bound': -1.0, 'quantize_bits': 0,
    'sparsity_fraction': 0.0, 'malicious_fraction': 1.0, 'attack_scale': 0.0,
    'attack_stddev': -1.0, 'attack_boost': 0.0, 'alie_z': math.inf,
    'backdoor_target': -1, 'backdoor_fraction': 0.0, 'secagg_bits': 33,
    'secagg_clip': 0.0, 'secagg_neighbors': 1, 'secagg_dropout': 1.0,
    'secagg_threshold': 0.0, 'checkpoint_every': -1, 'keep_checkpoints': 0,
    'data_seed': -1,
}


def test_every_numeric_flag_has_a_range():
  numeric = {f.name for f in train.FLAGS.get_flags_for_module(train)
             if isinstance(f.value, (int, float)) and
             not isinstance(f.value, bool) or f.name in BAD_VALUES}
  assert numeric == set(train.RANGES) == set(BAD_VALUES)


@pytest.mark.parametrize('name', sorted(BAD_VALUES))
def test_bad_numeric_flag_is_refused_naming_it(name):
  if not train.FLAGS.is_parsed():
    train.FLAGS.mark_as_parsed()
  with pytest.raises(flags.IllegalFlagValueError, match=f'--{name} must be'):
    with flagsaver.flagsaver(**{name: BAD_VALUES[name]}):
      pass


def _error_line(result):
  assert 'Traceback' not in result.stderr, result.stderr
  lines = [l for l in result.stderr.splitlines() if l.strip()]
  assert len(lines) == 1, result.stderr
  return lines[0]


def test_reused_output_folder_is_refused_overwritten_or_moved(tmp_path):
  out = tmp_path / 'run'
  args = [*SMALL, '--num_rounds=2', f'--output_dir={out}']
  assert _train(*args, cwd=tmp_path).returncode == 0
  first = (out / 'metrics.jsonl').read_text()

  again = _train(*args, '--num_rounds=3', cwd=tmp_path)
  assert again.returncode == 2
  assert 'already holds a run' in _error_line(again)
  assert (out / 'metrics.jsonl').read_text() == first   # untouched

  moved = _train(*args, '--num_rounds=3', '--output_exists=move_aside',
                 cwd=tmp_path)
  assert moved.returncode == 0, moved.stderr
  assert (tmp_path / 'run.1' / 'metrics.jsonl').read_text() == first
  assert [r['round'] for r in _read_jsonl(out / 'metrics.jsonl')] == [1, 2, 3]

  over = _train(*args, '--num_rounds=1', '--output_exists=overwrite',
                cwd=tmp_path)
  assert over.returncode == 0, over.stderr
  assert [r['round'] for r in _read_jsonl(out / 'metrics.jsonl')] == [1]
  flags_text = (out / 'flags.txt').read_text()
  assert '--num_rounds=1' in flags_text
  assert '--output_dir' not in flags_text and '--progress' not in flags_text


@pytest.mark.parametrize('where, message', [
    ('file', 'is a file, not a folder'),
    ('file/below', 'cannot create output folder'),
])
def test_unusable_output_folder_is_one_line(tmp_path, where, message):
  (tmp_path / 'file').write_text('not a folder')
  result = _train(*SMALL, '--num_rounds=1',
                  f'--output_dir={tmp_path / where}', cwd=tmp_path)
  assert result.returncode == 2
  assert message in _error_line(result)


def _small_file_limit():
  # Files this process writes may not grow past 2 KB: flags.txt fits, the
  # metrics of 40 rounds do not. Python ignores SIGXFSZ, so the write fails
  # with EFBIG, as a full disk fails with ENOSPC.
  resource.setrlimit(resource.RLIMIT_FSIZE, (2048, 2048))


def test_disk_full_while_writing_metrics_is_one_line(tmp_path):
  env = dict(os.environ)
  env.pop('XLA_FLAGS', None)
  result = subprocess.run(
      [sys.executable, '-m', 'fedjax_engine.train', *SMALL,
       '--num_rounds=40', '--rounds_per_call=1',
       f'--output_dir={tmp_path / "run"}'], capture_output=True, text=True,
      cwd=tmp_path, env=env, timeout=300, preexec_fn=_small_file_limit)
  assert result.returncode == 2
  line = _error_line(result)
  assert line.startswith(f'error: cannot write {tmp_path / "run"}'), line
  assert 'File too large' in line
  # What was written is whole lines of consecutive rounds.
  rounds = [r['round'] for r in _read_jsonl(tmp_path / 'run' /
                                            'metrics.jsonl')]
  assert rounds == list(range(1, len(rounds) + 1))


DIVERGING = ['--model=mlp', '--client_lr=50']


def test_divergence_stops_naming_the_round(tmp_path):
  out = tmp_path / 'run'
  result = _train(*SMALL, *DIVERGING, '--num_rounds=30', '--eval_every=5',
                  f'--output_dir={out}', cwd=tmp_path)
  assert result.returncode == 3, result.stderr
  line = _error_line(result)
  records = _read_jsonl(out / 'metrics.jsonl')
  first_bad = next(r['round'] for r in records
                   if not math.isfinite(r['train_loss']))
  assert f'training diverged at round {first_bad}: train_loss is nan' in line
  assert f'Metrics up to round {records[-1]["round"]} are in' in line
  assert records[-1]['round'] < 30


def test_divergence_warns_and_goes_on_by_flag(tmp_path):
  out = tmp_path / 'run'
  result = _train(*SMALL, *DIVERGING, '--num_rounds=10', '--eval_every=10',
                  '--nonfinite=warn', f'--output_dir={out}', cwd=tmp_path)
  assert result.returncode == 0, result.stderr
  assert 'training diverged at round' in result.stderr
  assert "'test_loss': nan" in result.stdout
  raw = (out / 'metrics.jsonl').read_text().splitlines()[-1]
  assert '"test_loss": NaN' in raw
  assert len(_read_jsonl(out / 'metrics.jsonl')) == 10


def test_ctrl_c_ends_with_one_line_and_intact_metrics(tmp_path):
  out = tmp_path / 'run'
  env = dict(os.environ)
  env.pop('XLA_FLAGS', None)
  proc = subprocess.Popen(
      [sys.executable, '-m', 'fedjax_engine.train', *SMALL,
       '--num_rounds=1000000', '--eval_every=0', f'--output_dir={out}'],
      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path,
      env=env)
  metrics = out / 'metrics.jsonl'
  deadline = time.monotonic() + 240
  while not (metrics.exists() and metrics.stat().st_size > 0):
    assert time.monotonic() < deadline and proc.poll() is None
    time.sleep(0.1)
  proc.send_signal(signal.SIGINT)
  _, stderr = proc.communicate(timeout=120)
  assert proc.returncode == 130, stderr
  lines = [l for l in stderr.splitlines() if l.strip()]
  assert len(lines) == 1, stderr
  records = [json.loads(l) for l in metrics.read_text().splitlines()]
  assert lines[0] == (f'interrupted after {records[-1]["round"]} rounds; '
                      f'their metrics are in {metrics}. A checkpoint is '
                      'saved: the same command with --resume goes on from '
                      'it.')
  assert os.listdir(out / 'checkpoints') == [str(records[-1]['round'])]
  assert [r['round'] for r in records] == list(range(1, len(records) + 1))
