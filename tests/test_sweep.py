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


def _make(model, name, client_lr, server_lr):
  server = optax.sgd(server_lr, momentum=0.9)
  return registry.ALGORITHMS[name](
      model, client_optimizer=optax.sgd(client_lr), server_optimizer=server)


# Rates traced from the server state train as the same rates as constants.
@pytest.mark.parametrize('name, chunk', [('fedavg', None), ('scaffold', 1)])
def test_each_grid_point_equals_its_run_alone(name, chunk, synthetic_train,
                                              logistic_model):
  points = [{'client_lr': 0.05, 'server_lr': 1.0},
            {'client_lr': 0.2, 'server_lr': 0.5}]
  seeds = [0, 2]
  histories = sweep.run_sweep(
      lambda **p: _make(logistic_model, name, **p), logistic_model,
      synthetic_train, synthetic_train, seeds=seeds, hyperparameters=points,
      client_chunk_size=chunk, **SETTING)
  assert len(histories) == 4
  runs = [(p, s) for p in points for s in seeds]
  for (point, seed), history in zip(runs, histories):
    solo = runner.run_experiment(
        _make(logistic_model, name, **point), logistic_model,
        synthetic_train, synthetic_train, seed=seed, client_chunk_size=chunk,
        **SETTING)
    _assert_same(history, solo, f'{name} {point} seed {seed}')
  assert histories[0][-1]['train_loss'] != histories[2][-1]['train_loss']


def test_a_traced_rate_scales_one_sgd_step(synthetic_train, logistic_model):
  """One local SGD step and a server step of 1: the round's update is
  -lr * (the cohort's weighted mean gradient), so it is linear in lr."""
  batching = fe.Batching(batch_size=4, local_steps=1)
  make = lambda client_lr: fe.algorithms.fedavg(
      logistic_model, client_optimizer=optax.sgd(client_lr))
  params = logistic_model.init(jax.random.key(0))
  rnd = fe.make_round(fe.hyperparameters.tunable(make, client_lr=0.1),
                      synthetic_train, clients_per_round=5, batching=batching)
  cohort = rnd.select(jnp.arange(5))
  updates = {}
  for lr in (0.1, 0.4):
    # The round donates the state's buffers: a copy keeps params alive.
    state = fe.hyperparameters.tunable(make, client_lr=lr).init(
        jax.tree.map(jnp.copy, params))
    state, _, _ = rnd(state, (), cohort, jax.random.key(1))
    updates[lr] = jax.tree.map(jnp.subtract, state.params, params)
  for a, b in zip(jax.tree.leaves(updates[0.1]), jax.tree.leaves(updates[0.4])):
    assert jnp.max(jnp.abs(a)) > 0
    assert jnp.allclose(4 * a, b, rtol=1e-5, atol=1e-7)
  assert rnd.num_compiled == 1


def test_a_grid_needs_a_function_and_same_names(synthetic_train,
                                                logistic_model):
  algorithm = fe.algorithms.fedavg(logistic_model,
                                   client_optimizer=optax.sgd(0.1))
  with pytest.raises(ValueError, match='needs a function'):
    sweep.run_sweep(algorithm, logistic_model, synthetic_train, None,
                    seeds=[0], hyperparameters=[{'client_lr': 0.1}],
                    **SETTING)
  make = lambda **p: _make(logistic_model, 'fedavg', **p)
  with pytest.raises(ValueError, match='must name'):
    sweep.run_sweep(make, logistic_model, synthetic_train, None, seeds=[0],
                    hyperparameters=[{'client_lr': 0.1, 'server_lr': 1.0},
                                     {'client_lr': 0.2}], **SETTING)
  with pytest.raises(ValueError, match="client_lr='fast' is not a number"):
    sweep.run_sweep(make, logistic_model, synthetic_train, None, seeds=[0],
                    hyperparameters=[{'client_lr': 'fast'}], **SETTING)


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


def test_cli_learning_rate_grid_folders_rerun_alone(tmp_path):
  out = tmp_path / 'grid'
  result = _train('--client_lrs=0.05,0.2', '--server_lrs=1,0.5', '--seed=4',
                  f'--output_dir={out}', cwd=tmp_path)
  assert result.returncode == 0, result.stderr
  assert sorted(os.listdir(out)) == [
      'client_lr_0.05_server_lr_0.5', 'client_lr_0.05_server_lr_1',
      'client_lr_0.2_server_lr_0.5', 'client_lr_0.2_server_lr_1']
  assert result.stdout.count('final:') == 4
  folder = out / 'client_lr_0.2_server_lr_0.5' / 'seed_4'
  flags = (folder / 'flags.txt').read_text().splitlines()
  assert '--client_lr=0.2' in flags and '--server_lr=0.5' in flags
  assert not [f for f in flags if f.startswith(('--client_lrs', '--seeds'))]
  solo = tmp_path / 'solo'
  result = _train(f'--flagfile={folder / "flags.txt"}',
                  f'--output_dir={solo}', cwd=tmp_path)
  assert result.returncode == 0, result.stderr
  _assert_same(_metrics(folder), _metrics(solo), 'client_lr 0.2 server 0.5')
  other = _metrics(out / 'client_lr_0.05_server_lr_0.5' / 'seed_4')
  assert other[-1]['train_loss'] != _metrics(folder)[-1]['train_loss']


@pytest.mark.parametrize('args, message', [
    (['--seeds=1,1'], '--seeds must be distinct'),
    (['--seeds=0,x'], '--seeds must be integers'),
    (['--seeds=0,1', '--dp=dp_fedavg', '--dp_noise_multiplier=1'],
     '--seeds=0,1 cannot combine with --dp=dp_fedavg'),
    (['--seeds=0,1', '--resume'], '--seeds=0,1 cannot combine with --resume'),
    (['--client_lrs=0.1,x'], '--client_lrs must be numbers, got 0.1,x'),
    (['--server_lrs=1,0'], '--server_lrs must be positive, got 1,0'),
    (['--client_lrs=0.1,0.1'], '--client_lrs must be distinct'),
    (['--client_lrs=0.1,0.2', '--checkpoint_every=2'],
     '--client_lrs=0.1,0.2 cannot combine with --checkpoint_every=2'),
])
def test_cli_refuses_what_a_sweep_cannot_do(tmp_path, args, message):
  result = _train(*args, cwd=tmp_path)
  assert result.returncode == 2
  assert message in result.stderr
  assert 'Traceback' not in result.stderr
