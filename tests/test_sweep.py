"""Sweeps: seeds trained together equal the same seeds trained alone."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import optax
import pytest

import fedjax_engine as fe
from fedjax_engine import registry
from fedjax_engine import runner
from fedjax_engine import sampling
from fedjax_engine import sweep

SEEDS = [0, 5, 2]
SETTING = dict(batching=fe.Batching(batch_size=4, local_steps=3),
               clients_per_round=5, num_rounds=6, eval_every=4,
               rounds_per_call=3, progress=False)


def _assert_same(history, solo, what):
  assert len(history) == len(solo), what
  for got, want in zip(history, solo):
    assert got.keys() == want.keys(), what
    for key in got:
      if key != 'seconds':
        assert got[key] == pytest.approx(want[key], rel=1e-5, abs=1e-6), (
            f'{what}: round {got["round"]} {key}')


# Chunks of one client: the runs go one after another in the program
# (lax.map) instead of vmapped.
@pytest.mark.parametrize('name, chunk', [('fedavg', None), ('scaffold', None),
                                         ('scaffold', 1)])
def test_each_seed_equals_its_run_alone(name, chunk, synthetic_train,
                                        logistic_model):
  algorithm = registry.ALGORITHMS[name](
      logistic_model, client_optimizer=optax.sgd(0.1))
  histories = sweep.run_sweep(algorithm, logistic_model, synthetic_train,
                              synthetic_train, seeds=SEEDS,
                              client_chunk_size=chunk, **SETTING)
  for seed, history in zip(SEEDS, histories):
    solo = runner.run_experiment(algorithm, logistic_model, synthetic_train,
                                 synthetic_train, seed=seed,
                                 client_chunk_size=chunk, **SETTING)
    _assert_same(history, solo, f'{name} seed {seed}')
  # The seeds differ from each other.
  assert histories[0][-1]['train_loss'] != histories[1][-1]['train_loss']


def test_one_program_for_every_call(synthetic_train, logistic_model):
  algorithm = fe.algorithms.fedavg(logistic_model,
                                   client_optimizer=optax.sgd(0.1))
  rnd = fe.make_round(algorithm, synthetic_train, clients_per_round=5,
                      batching=fe.Batching(batch_size=4, local_steps=2))
  keys = [jax.random.split(jax.random.key(s), 3) for s in SEEDS]
  states = jax.tree.map(lambda *x: jnp.stack(x), *[
      algorithm.init(logistic_model.init(k[0])) for k in keys])
  sampler = sampling.uniform(num_clients=synthetic_train.num_clients,
                             clients_per_round=5, key=keys[0][2])
  args = (jnp.stack([k[1] for k in keys]), jnp.stack([k[2] for k in keys]))
  states, _, metrics = rnd.run_sweep(states, (), sampler, *args,
                                     first_round=0, num_rounds=4, block=4)
  assert metrics['train_loss'].shape == (3, 4)
  programs = rnd.num_compiled
  for first, n in [(4, 4), (8, 2)]:
    states, _, metrics = rnd.run_sweep(states, (), sampler, *args,
                                       first_round=first, num_rounds=n,
                                       block=4)
    assert metrics['train_loss'].shape == (3, n)
  assert rnd.num_compiled == programs


def test_a_sweep_needs_distinct_seeds(synthetic_train, logistic_model):
  algorithm = fe.algorithms.fedavg(logistic_model,
                                   client_optimizer=optax.sgd(0.1))
  with pytest.raises(ValueError, match='seeds must be distinct'):
    sweep.run_sweep(algorithm, logistic_model, synthetic_train, None,
                    seeds=[1, 1], **SETTING)


def _train(*args, cwd):
  env = dict(os.environ)
  env.pop('XLA_FLAGS', None)
  return subprocess.run(
      [sys.executable, '-m', 'fedjax_engine.train', '--num_clients=20',
       '--clients_per_round=5', '--local_steps=2', '--batch_size=8',
       '--noprogress', '--num_rounds=6', '--eval_every=3', *args],
      capture_output=True, text=True, env=env, timeout=300, cwd=cwd)


def _metrics(folder):
  with open(os.path.join(folder, 'metrics.jsonl')) as f:
    return [json.loads(line) for line in f]


def test_cli_sweep_folders_rerun_alone_to_the_same_curves(tmp_path):
  out = tmp_path / 'sweep'
  result = _train('--seeds=3,1', '--algorithm=fedprox', '--mu=0.1',
                  f'--output_dir={out}', cwd=tmp_path)
  assert result.returncode == 0, result.stderr
  assert sorted(os.listdir(out)) == ['seed_1', 'seed_3']
  for seed in (1, 3):
    folder = out / f'seed_{seed}'
    flags = (folder / 'flags.txt').read_text().splitlines()
    assert f'--seed={seed}' in flags and '--data_seed=3' in flags
    solo = tmp_path / f'solo_{seed}'
    result = _train(f'--flagfile={folder / "flags.txt"}',
                    f'--output_dir={solo}', cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    _assert_same(_metrics(folder), _metrics(solo), f'seed {seed}')
    assert fe.checkpoint.load_params(str(folder))


@pytest.mark.parametrize('args, message', [
    (['--seeds=1,1'], '--seeds must be distinct'),
    (['--seeds=0,x'], '--seeds must be integers'),
    (['--seeds=0,1', '--dp=dp_fedavg', '--dp_noise_multiplier=1'],
     '--seeds cannot combine with --dp=dp_fedavg'),
    (['--seeds=0,1', '--resume'], '--seeds cannot combine with --resume'),
])
def test_cli_refuses_what_a_sweep_cannot_do(tmp_path, args, message):
  result = _train(*args, cwd=tmp_path)
  assert result.returncode == 2
  assert message in result.stderr
  assert 'Traceback' not in result.stderr
