"""End-to-end tests of ``python -m fedjax_engine.train``, run as a user would."""

import json
import os
import subprocess
import sys

import pytest

SMALL = ['--num_clients=30', '--clients_per_round=5', '--local_steps=2',
         '--batch_size=8', '--noprogress']


def _train(*args, cwd):
  env = dict(os.environ)
  env.pop('XLA_FLAGS', None)  # the CLI runs on the machine's real devices
  return subprocess.run([sys.executable, '-m', 'fedjax_engine.train', *args],
                        capture_output=True, text=True, cwd=cwd, env=env,
                        timeout=300)


def _without(args, overrides):
  """SMALL minus the flags that ``overrides`` sets or contradicts."""
  names = {o.split('=')[0] for o in overrides}
  if '--local_epochs' in names:
    names.add('--local_steps')
  return [a for a in args if a.split('=')[0] not in names]


def _read_jsonl(path):
  with open(path) as f:
    return [json.loads(line) for line in f]


def test_cli_writes_metrics_and_flags_and_reruns_identically(tmp_path):
  out = tmp_path / 'run'
  result = _train(*SMALL, '--num_rounds=4', '--eval_every=2',
                  f'--output_dir={out}', cwd=tmp_path)
  assert result.returncode == 0, result.stderr
  records = _read_jsonl(out / 'metrics.jsonl')
  assert [r['round'] for r in records] == [1, 2, 3, 4]
  for r in records:
    assert r['seconds'] > 0
    assert r['clients'] == 5
    assert r['train_loss'] > 0
  evaluated = [r['round'] for r in records if 'test_accuracy' in r]
  assert evaluated == [2, 4]
  for key in ('test_loss', 'test_accuracy', 'test_loss_per_client',
              'test_accuracy_per_client'):
    assert key in records[-1]
  assert 0.0 <= records[-1]['test_accuracy'] <= 1.0
  assert 'final:' in result.stdout

  flags_text = (out / 'flags.txt').read_text()
  assert '--num_rounds=4' in flags_text
  assert '--clients_per_round=5' in flags_text

  # Rerunning from the saved flags reproduces every metric but wall time.
  again = tmp_path / 'again'
  result = _train(f'--flagfile={out / "flags.txt"}', f'--output_dir={again}',
                  cwd=tmp_path)
  assert result.returncode == 0, result.stderr
  strip = lambda rs: [{k: v for k, v in r.items() if k != 'seconds'}
                      for r in rs]
  assert strip(_read_jsonl(again / 'metrics.jsonl')) == strip(records)


def test_cli_fedadam_and_fedsgd_and_epochs_run(tmp_path):
  for args in (['--server_optimizer=adam', '--server_lr=0.01'],
               ['--algorithm=fedsgd', '--server_lr=0.5'],
               ['--local_epochs=1'],
               ['--model=mlp', '--client_chunk_size=2'],
               ['--cpu_devices=2'], ['--rounds_per_call=1'],
               ['--gather=host'],
               ['--compile_for=memory', '--call_seconds=0.5']):
    result = _train(*_without(SMALL, args), '--num_rounds=2', *args,
                    cwd=tmp_path)
    assert result.returncode == 0, (args, result.stderr)
    assert 'final:' in result.stdout


def test_cli_compilation_cache_is_filled_then_used(tmp_path):
  # The second run compiles nothing: JAX finds every program in the folder
  # (its compile log says which were cache hits), and trains identically.
  cache = tmp_path / 'xla'
  runs = []
  for name in ('first', 'second'):
    result = _train(*SMALL, '--num_rounds=3', '--eval_every=3',
                    f'--compilation_cache={cache}',
                    f'--output_dir={tmp_path / name}', cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    runs.append(_read_jsonl(tmp_path / name / 'metrics.jsonl'))
    if name == 'first':
      entries = sorted(os.listdir(cache))
      assert any(e.startswith('jit__rounds') for e in entries), entries
  assert sorted(os.listdir(cache)) == entries   # nothing new to store
  strip = lambda rs: [{k: v for k, v in r.items() if k != 'seconds'}
                      for r in rs]
  assert strip(runs[1]) == strip(runs[0])
  result = _train(*SMALL, '--num_rounds=1', '--compilation_cache=',
                  cwd=tmp_path)
  assert result.returncode == 0, result.stderr


@pytest.mark.parametrize('args, message', [
    (['--algorithm=fedfoo'], "unknown algorithm 'fedfoo'"),
    (['--num_rounds=-1'], 'flag --num_rounds=-1: --num_rounds must be >= 0'),
    (['--batch_size=0'], 'flag --batch_size=0: --batch_size must be >= 1'),
    (['--client_lr=inf'], '--client_lr must be a finite number > 0'),
    (['--server_momentum=-3'], '--server_momentum must be in [0, 1)'),
    (['--clients_per_round=31'], '--clients_per_round=31 exceeds the 30'),
    (['--model=resnet9000'], "unknown model 'resnet9000'"),
    (['--local_steps=2', '--local_epochs=1'], 'only one of --local_steps'),
    (['--client_lr=abc'], '--client_lr=abc'),
    (['--server_optimizer=rmsprop'], '--server_optimizer=rmsprop'),
    (['--model=char_lstm'],
     '--model=char_lstm does not take the examples of --dataset=synthetic'),
    (['--rounds_per_call=0'], '--rounds_per_call must be >= 1'),
    (['--call_seconds=0'], '--call_seconds must be a finite number > 0'),
    (['--compile_for=size'], '--compile_for'),
    (['--cpu_devices=-1'], '--cpu_devices must be >= 0'),
    (['--compilation_cache=/dev/null/cache'],
     "--compilation_cache='/dev/null/cache' is not a folder that can be "
     'created'),
    (['--algorithm=no_such_module:build'],
     "cannot import algorithm plug-in module 'no_such_module'"),
])
def test_cli_bad_flags_exit_2_with_one_message(tmp_path, args, message):
  result = _train(*_without(SMALL, args), '--num_rounds=1', *args,
                  cwd=tmp_path)
  assert result.returncode == 2, result.stderr
  assert message in result.stderr
  assert 'Traceback' not in result.stderr


def test_cli_hyperparameters_by_flag(tmp_path):
  out = tmp_path / 'run'
  result = _train(*SMALL, '--num_rounds=1', '--algorithm=fedprox',
                  '--mu=0.5', f'--output_dir={out}', cwd=tmp_path)
  assert result.returncode == 0, result.stderr
  assert '--mu=0.5' in (out / 'flags.txt').read_text()
  # fedadam is fedavg with adam, at the server lr its name sets.
  out = tmp_path / 'adam'
  result = _train(*SMALL, '--num_rounds=1', '--algorithm=fedadam',
                  f'--output_dir={out}', cwd=tmp_path)
  assert result.returncode == 0, result.stderr
  flags_text = (out / 'flags.txt').read_text()
  assert '--server_optimizer=adam' in flags_text
  assert '--server_lr=0.01' in flags_text
  helped = _train('--algorithm=fedprox', '--helpfull', cwd=tmp_path).stdout
  assert '--mu: --algorithm=fedprox: the proximal coefficient' in helped


@pytest.mark.parametrize('args, message', [
    (['--mu=0.5'], '--mu is not a hyperparameter of --algorithm=fedavg '
     '(it takes none); --mu is one of fedprox.'),
    (['--algorithm=fedprox', '--mu=-1'],
     '--algorithm=fedprox: mu must be a finite number >= 0, got -1.0.'),
    (['--algorithm=fedadam', '--server_optimizer=sgd'],
     '--algorithm=fedadam is fedavg with --server_optimizer=adam, not sgd'),
])
def test_cli_bad_hyperparameters_exit_2(tmp_path, args, message):
  result = _train(*SMALL, '--num_rounds=1', *args, cwd=tmp_path)
  assert result.returncode == 2, result.stderr
  assert message in result.stderr
  assert 'Traceback' not in result.stderr


def test_cli_plugin_hyperparameters_are_flags(tmp_path):
  (tmp_path / 'my_lab_prox.py').write_text(
      'from fedjax_engine import algorithms\n'
      'def build(model, *, client_optimizer, server_optimizer, '
      'strength: float = 1, rounds_seen: int = 0):\n'
      '  """A plug-in.\n\n  Args:\n    model: the model.\n'
      '    strength: how hard to pull.\n    rounds_seen: unused.\n  """\n'
      '  assert isinstance(strength, float) and strength == 0.25\n'
      '  return algorithms.fedprox(model, client_optimizer=client_optimizer,\n'
      '                            server_optimizer=server_optimizer,\n'
      '                            mu=strength)\n')
  out = tmp_path / 'run'
  result = _train(*SMALL, '--num_rounds=1', '--algorithm=my_lab_prox:build',
                  '--strength=0.25', f'--output_dir={out}', cwd=tmp_path)
  assert result.returncode == 0, result.stderr
  assert '--strength=0.25' in (out / 'flags.txt').read_text()
  helped = _train('--algorithm=my_lab_prox:build', '--helpfull',
                  cwd=tmp_path).stdout
  assert 'how hard to pull' in helped


def test_cli_plugin_algorithm_by_module_path(tmp_path):
  (tmp_path / 'my_lab_method.py').write_text(
      'import optax\n'
      'from fedjax_engine import algorithms\n'
      'def build(model, *, client_optimizer, server_optimizer):\n'
      '  del client_optimizer\n'
      '  return algorithms.fedavg(model, client_optimizer=optax.sgd(0.01),\n'
      '                           server_optimizer=server_optimizer)\n')
  result = _train(*SMALL, '--num_rounds=1', '--algorithm=my_lab_method:build',
                  cwd=tmp_path)
  assert result.returncode == 0, result.stderr


SHARED_DATA = os.path.join(os.path.dirname(__file__), '..', '..', 'shared',
                           'data')


def _shared(*parts):
  path = os.path.join(SHARED_DATA, *parts)
  if not os.path.exists(path):
    pytest.skip(f'real data not found at {path} (../shared/data)')
  return path


def test_cli_mnist_split_by_dirichlet(tmp_path):
  folder = _shared('mnist')
  result = _train('--dataset=mnist', f'--data_dir={folder}', '--model=mlp',
                  '--num_clients=50', '--clients_per_round=5',
                  '--partition=dirichlet', '--dirichlet_alpha=0.3',
                  '--num_rounds=2', '--local_steps=2', '--noprogress',
                  cwd=tmp_path)
  assert result.returncode == 0, result.stderr
  assert 'test_accuracy' in result.stdout


def test_cli_femnist_subset_by_name(tmp_path):
  folder = _shared('femnist')
  result = _train('--dataset=emnist', f'--data_dir={folder}', '--model=mlp',
                  '--clients_per_round=5', '--num_rounds=2', '--local_steps=2',
                  '--noprogress', cwd=tmp_path)
  assert result.returncode == 0, result.stderr
  assert 'test_accuracy' in result.stdout


def test_cli_missing_data_names_the_path(tmp_path):
  result = _train('--dataset=emnist', f'--data_dir={tmp_path / "nowhere"}',
                  '--num_rounds=1', '--noprogress', cwd=tmp_path)
  assert result.returncode == 2
  assert 'fed_emnist_train.h5 is not in data_dir' in result.stderr
  assert 'Traceback' not in result.stderr


@pytest.mark.parametrize('dataset, folder, model', [
    ('emnist', 'femnist', 'emnist_cnn'),
    ('shakespeare', 'shakespeare', 'char_lstm'),
])
def test_cli_zoo_model_on_real_data(tmp_path, dataset, folder, model):
  folder = _shared(folder)
  out = tmp_path / 'run'
  result = _train(f'--dataset={dataset}', f'--data_dir={folder}',
                  f'--model={model}', '--clients_per_round=3',
                  '--num_rounds=1', '--local_steps=1', '--batch_size=4',
                  '--noprogress', f'--output_dir={out}', cwd=tmp_path)
  assert result.returncode == 0, result.stderr
  record = _read_jsonl(out / 'metrics.jsonl')[-1]
  assert 0.0 <= record['test_accuracy'] <= 1.0


def test_cli_profile_dir_gets_a_trace(tmp_path):
  result = _train(*SMALL, '--num_rounds=2', '--rounds_per_call=1',
                  f'--profile_dir={tmp_path / "trace"}', cwd=tmp_path)
  assert result.returncode == 0, result.stderr
  assert list((tmp_path / 'trace').rglob('*.xplane.pb'))
