r"""Accuracy on LEAF Synthetic(1, 1): FedAvg against the centralized ceiling.

Synthetic(alpha, beta) gives every client its own random linear labelling
(Li et al., FedProx, MLSys 2020), so one global linear model cannot fit all
1000 clients. This measures the ceiling (multinomial logistic regression
trained on the pooled training examples with full-batch Adam until converged)
and FedAvg through the CLI's defaults, on the same data and test split.

  python benchmarks/synthetic_accuracy.py
"""

import json
import os
import time

import jax
import jax.numpy as jnp
import optax

import fedjax_engine as fe
from fedjax_engine.runner import run_experiment


def centralized_ceiling(train, test, model, steps=3000):
  x, y = jnp.asarray(train.features['x']), jnp.asarray(train.features['y'])
  optimizer = optax.adam(0.01)

  @jax.jit
  def step(params, opt_state):
    loss, grads = jax.value_and_grad(
        lambda p: jnp.mean(model.loss(model.apply(p, {'x': x}), {'y': y})))(
            params)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  params = model.init(jax.random.key(0))
  opt_state = optimizer.init(params)
  for _ in range(steps):
    params, opt_state, loss = step(params, opt_state)
  scores = fe.make_evaluate(model, test)(params)
  return float(loss), {k: float(v) for k, v in scores.items()}


def main():
  train, test = fe.datasets.synthetic(alpha=1.0, beta=1.0, num_clients=1000,
                                      seed=0)
  model = fe.models.logistic_regression(num_features=60, num_classes=10)
  train_loss, ceiling = centralized_ceiling(train, test, model)
  print(f'centralized: train loss {train_loss:.3f}, test accuracy '
        f"{ceiling['accuracy']:.4f} (per client "
        f"{ceiling['accuracy_per_client']:.4f})", flush=True)
  results = dict(centralized=dict(train_loss=train_loss, **ceiling), fedavg=[])
  for clients_per_round in (10, 50):
    algorithm = fe.algorithms.fedavg(model, client_optimizer=optax.sgd(0.05))
    start = time.perf_counter()
    history = run_experiment(
        algorithm, model, train, test,
        batching=fe.Batching(batch_size=20, local_steps=10),
        clients_per_round=clients_per_round, num_rounds=500, eval_every=100,
        progress=False)
    seconds = time.perf_counter() - start
    curve = [(h['round'], h['test_accuracy']) for h in history
             if 'test_accuracy' in h]
    print(f'FedAvg {clients_per_round} clients/round: accuracy by round '
          f'{curve}, {seconds:.1f} s in all', flush=True)
    results['fedavg'].append(dict(clients_per_round=clients_per_round,
                                  seconds=seconds, curve=curve))
  out = os.path.join(os.path.dirname(__file__), 'results',
                     'synthetic_accuracy.json')
  os.makedirs(os.path.dirname(out), exist_ok=True)
  with open(out, 'w') as f:
    json.dump(results, f, indent=1)
  print(f'wrote {out}')


if __name__ == '__main__':
  main()
