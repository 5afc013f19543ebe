"""Several seeds of one experiment, trained together in one program.

:func:`run_sweep` runs the experiment of
:func:`fedjax_engine.runner.run_experiment` for every seed of ``seeds`` at
once: the runs' server states and client-state tables are stacked, and the
fused rounds (:meth:`fedjax_engine.simulate.Round.run_sweep`) are vmapped
over the runs inside one compiled program, so the seeds share one compile,
one dispatch per call and every batched matrix product. Each run keeps its
own initial params, cohorts, client keys and metrics (seed ``s`` derives
them from ``jax.random.key(s)`` exactly as a run alone does) and writes
its own folder, ``<output_dir>/seed_<s>/``, with its final model saved for
:func:`fedjax_engine.checkpoint.load_params`. Its metrics equal that run's
alone to float rounding.

What a sweep shares is everything but the seed: the data (generate or
split it with one seed), the algorithm and its transforms. It samples
clients uniformly, keeps the examples and client-state tables on the
device, and takes no checkpoints along the way.

Example:

  >>> import optax, fedjax_engine as fe
  >>> train, test = fe.datasets.synthetic(num_clients=20, seed=0)
  >>> model = fe.models.logistic_regression(num_features=60, num_classes=10)
  >>> runs = run_sweep(
  ...     fe.algorithms.fedavg(model, client_optimizer=optax.sgd(0.1)), model,
  ...     train, test, seeds=[0, 1, 2],
  ...     batching=fe.Batching(batch_size=10, local_steps=2),
  ...     clients_per_round=5, num_rounds=4, eval_every=2, progress=False)
  >>> len(runs), [len(history) for history in runs]
  (3, [4, 4, 4])
"""

import os
import time
from typing import Any, Sequence

import jax
import jax.numpy as jnp

from fedjax_engine import checkpoint as checkpoint_lib
from fedjax_engine import data as data_lib
from fedjax_engine import evaluate as evaluate_lib
from fedjax_engine import heterogeneity
from fedjax_engine import run_dir
from fedjax_engine import runner
from fedjax_engine import sampling
from fedjax_engine import simulate
from fedjax_engine.algorithm import Algorithm
from fedjax_engine.model import Model


def seed_folder(output_dir: str, seed: int) -> str:
  """Where the run of ``seed`` writes its metrics and model."""
  return os.path.join(output_dir, f'seed_{seed}')


def _stack(trees):
  return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def _run(tree, i):
  return jax.tree.map(lambda x: x[i], tree)


def run_sweep(algorithm: Algorithm, model: Model,
              train: data_lib.FederatedData,
              test: data_lib.FederatedData | None, *, seeds: Sequence[int],
              batching: data_lib.Batching, clients_per_round: int,
              num_rounds: int, eval_every: int = 10,
              client_chunk_size: int | None = None,
              weighting: str = 'examples', eval_batch_size: int = 1024,
              output_dir: str | None = None, rounds_per_call: int = 10,
              progress: bool = True,
              system: heterogeneity.SystemHeterogeneity | None = None,
              at_evaluation=None) -> list[list[dict[str, Any]]]:
  """Runs the experiment for every seed of ``seeds``, together.

  Args:
    seeds: distinct seeds, one run each.
    output_dir: each run writes ``seed_<s>/metrics.jsonl`` (and its final
      model) under it; None writes nothing.
    at_evaluation: ``at_evaluation(rounds_done) -> {name: value}`` added to
      every evaluation's record of every run.
    Others: as :func:`fedjax_engine.runner.run_experiment`. Every record's
      ``seconds`` is the wall time of a round of the whole sweep.

  Returns:
    One history per seed, in the order of ``seeds``.

  Raises:
    ValueError: for repeated or no seeds, or a bad setting.
    fedjax_engine.runner.Diverged: a run's loss or params became
      non-finite (the message names its seed).
    fedjax_engine.runner.Interrupted: Ctrl-C or SIGTERM; the rounds done
      are written.
  """
  seeds = [int(s) for s in seeds]
  if not seeds or len(set(seeds)) != len(seeds):
    raise ValueError(f'seeds must be distinct and at least one, got {seeds}.')
  if num_rounds < 1 or eval_every < 0 or rounds_per_call < 1:
    raise ValueError(
        f'num_rounds must be >= 1, eval_every >= 0 and rounds_per_call >= '
        f'1, got {num_rounds}, {eval_every} and {rounds_per_call}.')
  keys = [jax.random.split(jax.random.key(s), 3) for s in seeds]
  sampler = sampling.uniform(num_clients=train.num_clients,
                             clients_per_round=clients_per_round,
                             key=keys[0][2])
  rnd = simulate.make_round(algorithm, train, batching=batching,
                            clients_per_round=clients_per_round,
                            client_chunk_size=client_chunk_size,
                            weighting=weighting, system=system)
  evaluate = (evaluate_lib.make_evaluate(model, test,
                                         batch_size=eval_batch_size)
              if test is not None else None)
  states = [algorithm.init(model.init(k[0])) for k in keys]
  tables = [jax.vmap(algorithm.init_client_state, axis_size=train.num_clients,
                     in_axes=None)(s.params)
            if algorithm.init_client_state is not None else ()
            for s in states]
  server_states, client_states = _stack(states), _stack(tables)
  rounds_keys = jnp.stack([k[1] for k in keys])
  sample_keys = jnp.stack([k[2] for k in keys])

  sinks = []
  if output_dir:
    for s in seeds:
      run_dir.prepare(seed_folder(output_dir, s))
    sinks = [run_dir.MetricsFile(seed_folder(output_dir, s)) for s in seeds]
  bar = None
  if progress:
    from tqdm import auto as tqdm  # pylint: disable=g-import-not-at-top
    bar = tqdm.tqdm(total=num_rounds, unit='round', dynamic_ncols=True,
                    desc=f'{len(seeds)} seeds')
  histories = [[] for _ in seeds]
  r = 0
  with runner.DeferredInterrupt() as interrupt:
    try:
      while r < num_rounds:
        to_eval = eval_every - r % eval_every if eval_every else num_rounds
        n = min(rounds_per_call, num_rounds - r, to_eval)
        start = time.perf_counter()
        server_states, client_states, metrics = rnd.run_sweep(
            server_states, client_states, sampler, rounds_keys, sample_keys,
            first_round=r, num_rounds=n, block=rounds_per_call)
        metrics = jax.device_get(metrics)
        seconds = (time.perf_counter() - start) / n
        end = r + n
        evaluating = evaluate is not None and (end == num_rounds or (
            eval_every and end % eval_every == 0))
        for i, seed in enumerate(seeds):
          records = [{'round': r + j + 1,
                      **runner.to_python({k: v[i, j] for k, v in
                                           metrics.items()}),
                      'seconds': seconds} for j in range(n)]
          params = _run(server_states.params, i)
          if evaluating:
            records[-1].update({f'test_{k}': v for k, v in runner.to_python(
                evaluate(params)).items()})
            if at_evaluation is not None:
              records[-1].update(at_evaluation(end))
          if sinks:
            sinks[i].write(records)
          histories[i].extend(records)
          diverged = runner.nonfinite(records, params)
          if diverged:
            raise runner.Diverged(diverged.round,
                                  f'{diverged.what} (seed {seed})', end)
        r = end
        if interrupt.requested:
          raise runner.Interrupted(r, histories)
        if bar is not None:
          bar.update(n)
    except runner.Interrupted:
      raise
    except KeyboardInterrupt:
      raise runner.Interrupted(r, histories) from None
    finally:
      if bar is not None:
        bar.close()
      for sink in sinks:
        sink.close()
  if output_dir:
    for i, s in enumerate(seeds):
      saved = checkpoint_lib.Checkpoints(seed_folder(output_dir, s))
      saved.save(num_rounds, _run(server_states, i), _run(client_states, i))
      saved.close()
  return histories
