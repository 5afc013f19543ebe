"""Personalized evaluation: each client's own model on its own test examples.

Hand-worked values use the 1-D linear model (``pred = w * x + b``, loss
``0.5 * (pred - y)^2``) and two clients:

  train A: x = [1, 2], y = [1, 3]      test A: x = [0, 1], y = [1, 1]
  train B: x = [0, 2], y = [0, 4]      test B: x = [3],    y = [5]

Ditto's personal models (the client-state table) are set to v_A = (w 0,
b 1) and v_B = (w 2, b 0), the global model to (1, 0):
  A with v_A predicts [1, 1]: loss 0.      Global: [0, 1], loss (1/2 + 0)/2 = 1/4
  B with v_B predicts [6]:    loss 1/2.    Global: [3],    loss 2
So the personal mean loss over clients is 1/4, the global one 9/8.

One fine-tuning step of SGD lr 1/4 on the whole training set (batch 2)
from the global (1, 0):
  A: residuals [0, -1]; gradients dw = (0 - 2)/2 = -1, db = -1/2;
     params (5/4, 1/8); test predictions [1/8, 11/8], residuals [-7/8, 3/8],
     loss (49/64 + 9/64)/4 = 29/128
  B: residuals [0, -2]; dw = (0 - 4)/2 = -2, db = -1;
     params (3/2, 1/4); test prediction 19/4, loss (1/4)^2 / 2 = 1/32
"""

import inspect
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import fedjax_engine as fe
from fedjax_engine import data as data_lib
from fedjax_engine import personal_evaluate
from fedjax_engine import registry


def _f32(v):
  return np.array(v, np.float32)


@pytest.fixture(scope='module')
def split():
  train = fe.FederatedData.from_clients({
      'A': {'x': _f32([1, 2]), 'y': _f32([1, 3])},
      'B': {'x': _f32([0, 2]), 'y': _f32([0, 4])}})
  test = fe.FederatedData.from_clients({
      'A': {'x': _f32([0, 1]), 'y': _f32([1, 1])},
      'B': {'x': _f32([3]), 'y': _f32([5])}})
  return train, test


def _ditto(model):
  return fe.algorithms.ditto(model, client_optimizer=optax.sgd(0.25))


def _personal_table():
  return {'w': jnp.array([0.0, 2.0]), 'b': jnp.array([1.0, 0.0])}


def _evaluator(model, algorithm, split, **kwargs):
  train, test = split
  return personal_evaluate.make_personal_evaluate(
      model, algorithm, train, test,
      batching=fe.Batching(batch_size=2, local_steps=1), **kwargs)


def test_personal_models_by_hand(linear_model, split):
  algorithm = _ditto(linear_model)
  state = algorithm.init(linear_model.init(jax.random.key(0)))
  evaluate = _evaluator(linear_model, algorithm, split)
  per_client = evaluate.per_client(state, _personal_table())
  np.testing.assert_allclose(per_client['loss'], [0.0, 0.5], atol=1e-7)
  assert evaluate(state, _personal_table()) == {'personal_loss': 0.25}


def test_global_model_when_the_algorithm_has_no_personalize(linear_model,
                                                            split):
  algorithm = fe.algorithms.fedavg(linear_model,
                                   client_optimizer=optax.sgd(0.25))
  state = algorithm.init(linear_model.init(jax.random.key(0)))
  per_client = _evaluator(linear_model, algorithm, split).per_client(state)
  np.testing.assert_allclose(per_client['loss'], [0.25, 2.0], rtol=1e-6)


def test_finetuning_by_hand(linear_model, split):
  algorithm = fe.algorithms.fedavg(linear_model,
                                   client_optimizer=optax.sgd(0.25))
  state = algorithm.init(linear_model.init(jax.random.key(0)))
  evaluate = _evaluator(linear_model, algorithm, split, finetune_steps=1,
                        finetune_optimizer=optax.sgd(0.25))
  per_client = evaluate.per_client(state)
  np.testing.assert_allclose(per_client['loss'], [29 / 128, 1 / 32],
                             rtol=1e-6)


def test_matches_the_global_evaluators_per_client_view(logistic_model):
  # Without personalization, each client's own view of the global model is
  # what the global evaluator averages per client: two separate code paths.
  train, test = fe.datasets.synthetic(num_clients=13, seed=1)
  algorithm = fe.algorithms.fedavg(logistic_model,
                                   client_optimizer=optax.sgd(0.1))
  state = algorithm.init(logistic_model.init(jax.random.key(3)))
  personal = personal_evaluate.make_personal_evaluate(
      logistic_model, algorithm, train, test,
      batching=fe.Batching(batch_size=4, local_steps=1), batch_size=3)(state)
  overall = fe.make_evaluate(logistic_model, test)(state.params)
  for name in ('accuracy_per_client', 'loss_per_client', 'accuracy_client_min',
               'accuracy_client_p10'):
    np.testing.assert_allclose(
        personal['personal_' + name.replace('_per_client', '')],
        float(overall[name]), rtol=1e-5)


def test_devices_blocks_and_host_table_change_nothing(logistic_model):
  train, test = fe.datasets.synthetic(num_clients=11, seed=2)
  algorithm = fe.algorithms.ditto(logistic_model,
                                  client_optimizer=optax.sgd(0.1))
  params = logistic_model.init(jax.random.key(0))
  state = algorithm.init(params)
  # Distinct personal models: the initial params moved by each client's id.
  table = jax.vmap(lambda k: jax.tree.map(lambda p: p + 0.1 * k, params))(
      jnp.arange(train.num_clients, dtype=jnp.float32))
  results = []
  for devices, per_call, host in ((4, 1024, False), (1, 1024, False),
                                  (4, 4, False), (2, 3, True)):
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:devices]), ('clients',))
    evaluate = personal_evaluate.make_personal_evaluate(
        logistic_model, algorithm, train, test,
        batching=fe.Batching(batch_size=4, local_steps=2), finetune_steps=2,
        finetune_optimizer=optax.sgd(0.1), clients_per_call=per_call,
        mesh=mesh)
    rows = jax.tree.map(np.asarray, table) if host else table
    results.append(evaluate.per_client(state, rows))
  for other in results[1:]:
    for name in results[0]:
      np.testing.assert_allclose(other[name], results[0][name], rtol=1e-5,
                                 atol=1e-6)
  # The personal models differ, so the clients' values do too.
  assert np.std(results[0]['loss']) > 1e-3


def test_bad_input_is_named(linear_model, split):
  train, test = split
  algorithm = _ditto(linear_model)
  state = algorithm.init(linear_model.init(jax.random.key(0)))
  with pytest.raises(ValueError, match='same clients'):
    personal_evaluate.make_personal_evaluate(
        linear_model, algorithm, train, fe.FederatedData.from_clients(
            {'A': test.client(0)}), batching=fe.Batching(2, local_steps=1))
  with pytest.raises(ValueError, match='finetune_steps=2 needs a '
                     'finetune_optimizer'):
    _evaluator(linear_model, algorithm, split, finetune_steps=2)
  with pytest.raises(ValueError, match='pass its table'):
    _evaluator(linear_model, algorithm, split).per_client(state)


def _train_cli(*args, cwd):
  env = dict(os.environ)
  env.pop('XLA_FLAGS', None)
  return subprocess.run(
      [sys.executable, '-m', 'fedjax_engine.train', '--num_clients=20',
       '--clients_per_round=5', '--local_steps=2', '--batch_size=8',
       '--noprogress', '--num_rounds=2', *args],
      capture_output=True, text=True, cwd=cwd, env=env, timeout=300)


def test_cli_personal_eval(tmp_path):
  out = tmp_path / 'run'
  result = _train_cli('--algorithm=ditto', '--personal_eval',
                      '--finetune_steps=2', f'--output_dir={out}',
                      cwd=tmp_path)
  assert result.returncode == 0, result.stderr
  assert 'test_personal_accuracy_client_p10' in result.stdout
  lines = (out / 'personal_per_client.csv').read_text().splitlines()
  assert lines[0] == 'client_id,accuracy,loss'
  assert len(lines) == 21
  result = _train_cli('--finetune_steps=2', cwd=tmp_path)
  assert result.returncode == 2
  assert ('--finetune_steps applies to personalized evaluation; add '
          '--personal_eval or leave it unset.') in result.stderr


PERSONALIZED = {
    'ditto': lambda model: fe.algorithms.ditto(
        model, client_optimizer=optax.sgd(0.1), ditto_lambda=0.5),
    'apfl': lambda model: fe.algorithms.apfl(
        model, client_optimizer=optax.sgd(0.1), alpha=0.5),
    'perfedavg': lambda model: fe.algorithms.perfedavg(
        model, client_optimizer=optax.sgd(0.1), inner_lr=0.1),
    'fedrep': lambda model: fe.algorithms.fedrep(
        model, client_optimizer=optax.sgd(0.1), head='Dense_0/bias',
        head_steps=3),
    'hypcluster': lambda model: fe.algorithms.hypcluster(
        model, client_optimizer=optax.sgd(0.1), num_clusters=3,
        init_noise=0.5),
}


def test_every_registered_personalize_is_covered():
  model = fe.models.logistic_regression(num_features=2, num_classes=2)
  optimizers = {'client_optimizer': optax.sgd(0.1),
                'server_optimizer': optax.sgd(1.0)}
  with_personalize = []
  for name, factory in registry.ALGORITHMS.items():
    accepted = inspect.signature(factory).parameters
    algorithm = factory(model, **{k: v for k, v in optimizers.items()
                                  if k in accepted})
    if algorithm.personalize is not None:
      with_personalize.append(name)
  assert sorted(with_personalize) == sorted(PERSONALIZED)


@pytest.mark.parametrize('name', sorted(PERSONALIZED))
def test_vmapped_equals_a_loop_over_clients(name, logistic_model):
  # Each client's personalize on its own state row and training batches,
  # then its test examples, one client at a time in Python.
  train, test = fe.datasets.synthetic(num_clients=9, seed=4)
  algorithm = PERSONALIZED[name](logistic_model)
  batching = fe.Batching(batch_size=4, local_steps=2)
  state = algorithm.init(logistic_model.init(jax.random.key(0)))
  table = (fe.testing.initial_table(algorithm, logistic_model, train)
           if algorithm.init_client_state else ())
  # Every client's row made its own (as training would).
  leaves, treedef = jax.tree.flatten(table)
  noise = [jax.random.normal(jax.random.key(i), x.shape, x.dtype)
           for i, x in enumerate(leaves)]
  table = jax.tree.unflatten(treedef, [
      x + (0.3 * n if jnp.issubdtype(x.dtype, jnp.floating) else 0)
      for x, n in zip(leaves, noise)])
  key = jax.random.key(7)
  got = personal_evaluate.make_personal_evaluate(
      logistic_model, algorithm, train, test, batching=batching,
      clients_per_call=4).per_client(state, table, key)
  personalize = jax.jit(algorithm.personalize)
  expected = []
  for k in range(train.num_clients):
    client_key = jax.random.fold_in(key, k)
    rows, mask = data_lib.plan_client(
        jax.random.fold_in(client_key, data_lib.DATA_STREAM),
        int(train.offsets[k]), int(train.sizes[k]), batching=batching,
        num_steps=2)
    row = jax.tree.map(lambda t, k=k: t[k], table)
    params = personalize(
        state, row, data_lib.gather(train.features, np.asarray(rows)), mask,
        jax.random.fold_in(client_key, data_lib.TRAIN_STREAM))
    examples = test.client(k)
    logits = logistic_model.apply(params, examples)
    expected.append(float(np.mean(np.argmax(logits, -1) == examples['y'])))
  np.testing.assert_allclose(got['accuracy'], expected, rtol=1e-6)
  assert np.std(expected) > 0   # the clients' models differ
