"""Privacy, robustness, compression and attacks from the command line."""

import json
import os
import subprocess
import sys

import pytest

SMALL = ['--num_clients=20', '--clients_per_round=10', '--local_steps=2',
         '--batch_size=8', '--noprogress', '--num_rounds=2',
         '--eval_every=2']


def _train(*args, cwd):
  env = dict(os.environ)
  env.pop('XLA_FLAGS', None)
  return subprocess.run([sys.executable, '-m', 'fedjax_engine.train', *SMALL,
                         *args], capture_output=True, text=True, cwd=cwd,
                        env=env, timeout=300)


def _last_record(out):
  with open(out / 'metrics.jsonl') as f:
    return json.loads(f.readlines()[-1])


def test_dp_reports_epsilon(tmp_path):
  out = tmp_path / 'run'
  result = _train('--algorithm=fedprox', '--dp=dp_fedavg',
                  '--dp_noise_multiplier=1.0', '--dp_clip_norm=0.5',
                  f'--output_dir={out}', cwd=tmp_path)
  assert result.returncode == 0, result.stderr
  record = _last_record(out)
  assert record['epsilon'] > 0
  assert record['delta'] == pytest.approx(20 ** -1.1)
  assert record['noise_multiplier'] == 1.0
  assert 0 <= record['clipped'] <= 1


def test_target_epsilon_picks_the_noise(tmp_path):
  out = tmp_path / 'run'
  result = _train('--dp=dp_fedavg', '--target_epsilon=8',
                  f'--output_dir={out}', cwd=tmp_path)
  assert result.returncode == 0, result.stderr
  record = _last_record(out)
  assert record['epsilon'] == pytest.approx(8, rel=0.01)


def test_attack_defense_and_compression(tmp_path):
  out = tmp_path / 'run'
  result = _train('--algorithm=scaffold', '--malicious_fraction=0.2',
                  '--attack=sign_flip', '--robust_aggregator=trimmed_mean',
                  '--trim_fraction=0.2', '--compression=quantize',
                  '--quantize_bits=4', f'--output_dir={out}', cwd=tmp_path)
  assert result.returncode == 0, result.stderr
  with open(out / 'metrics.jsonl') as f:
    records = [json.loads(line) for line in f]
  # 4 of the 20 clients are malicious: 2 in the first round's 10.
  assert [r['malicious'] for r in records] == [pytest.approx(0.2), 0.0]
  assert records[-1]['uplink_bits'] < records[-1]['uplink_bits_uncompressed']


def test_backdoor_reports_its_accuracy(tmp_path):
  result = _train('--malicious_fraction=0.2', '--data_attack=backdoor',
                  '--attack=model_replacement', cwd=tmp_path)
  assert result.returncode == 0, result.stderr
  assert 'test_backdoor_accuracy' in result.stdout


@pytest.mark.parametrize('args, message', [
    (['--dp=dp_fedavg'], '--dp=dp_fedavg needs exactly one of '
     '--dp_noise_multiplier and --target_epsilon.'),
    (['--dp=dp_fedavg', '--dp_noise_multiplier=1', '--robust_aggregator='
      'median'], 'cannot combine with --robust_aggregator=median'),
    (['--dp=dp_ftrl', '--dp_noise_multiplier=1', '--client_dropout=0.1'],
     'the privacy accounting assumes'),
    (['--attack=gaussian'], 'an attack needs malicious clients'),
    (['--malicious_fraction=0.1'], 'an attack needs malicious clients'),
    (['--robust_aggregator=trimmed_mean'], 'trim_fraction'),
    (['--dp_clip_norm=-1'], '--dp_clip_norm must be a finite number > 0'),
    (['--secure_aggregation=secagg', '--robust_aggregator=median'],
     'hides every single update, which --robust_aggregator=median'),
    (['--secure_aggregation=secagg', '--secagg_bits=4'],
     '--secagg_bits=4 cannot hold a sum of --clients_per_round=10'),
    (['--secure_aggregation=secagg', '--algorithm=afl'],
     '--algorithm=afl aggregates them its own way'),
    (['--secure_aggregation=secagg_plus', '--secagg_neighbors=3'],
     '--secagg_neighbors=3 must be even'),
    (['--secure_aggregation=secagg', '--diagnostics'],
     '--diagnostics reads every client\'s update'),
])
def test_bad_combinations_exit_2(tmp_path, args, message):
  result = _train(*args, cwd=tmp_path)
  assert result.returncode == 2, result.stderr
  assert message in result.stderr
  assert 'Traceback' not in result.stderr


def test_poisson_sampling_spends_less_epsilon(tmp_path):
  spent = {}
  for sampling in ('without_replacement', 'poisson'):
    out = tmp_path / sampling
    result = _train('--dp=dp_fedavg', '--dp_noise_multiplier=1.0',
                    f'--dp_sampling={sampling}', f'--output_dir={out}',
                    cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    spent[sampling] = _last_record(out)['epsilon']
  assert 0 < spent['poisson'] < spent['without_replacement']


def test_secure_aggregation_graphs_give_one_sum(tmp_path):
  # Masks cancel exactly, so masking with every participant or with a ring
  # of 2 ceil(log2 10) = 8 neighbours gives the same model, bit for bit.
  records = {}
  for mode in ('secagg', 'secagg_plus'):
    out = tmp_path / mode
    result = _train(f'--secure_aggregation={mode}', '--secagg_dropout=0.2',
                    f'--output_dir={out}', cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    records[mode] = _last_record(out)
  assert records['secagg']['secagg_neighbors'] == 9
  assert records['secagg_plus']['secagg_neighbors'] == 8
  for name in ('train_loss', 'test_loss', 'secagg_dropped'):
    assert records['secagg'][name] == records['secagg_plus'][name]
  assert records['secagg']['uplink_bits'] > 32 * 610


def test_secure_aggregation_under_central_dp(tmp_path):
  out = tmp_path / 'run'
  result = _train('--secure_aggregation=secagg', '--dp=dp_fedavg',
                  '--dp_noise_multiplier=1.0', '--secagg_bits=20',
                  f'--output_dir={out}', cwd=tmp_path)
  assert result.returncode == 0, result.stderr
  record = _last_record(out)
  assert record['epsilon'] > 0 and record['secagg_aborted'] == 0
