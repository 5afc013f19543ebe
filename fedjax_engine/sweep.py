"""Several seeds (and learning rates) of one experiment, trained together
in one program.

:func:`run_sweep` runs the experiment of
:func:`fedjax_engine.runner.run_experiment` for every seed of ``seeds`` at
once, and with ``hyperparameters`` for every point of a grid of them too
(learning rates: their values live in the server state,
:func:`fedjax_engine.hyperparameters.tunable`): the runs' server states and client-state tables are stacked, and the
fused rounds (:meth:`fedjax_engine.simulate.Round.run_sweep`) are vmapped
over the runs inside one compiled program, so the seeds share one compile,
one dispatch per call and every batched matrix product. Each run keeps its
own initial params, cohorts, client keys and metrics (seed ``s`` derives
them from ``jax.random.key(s)`` exactly as a run alone does) and writes
its own folder, ``<output_dir>/seed_<s>/`` (``<output_dir>/<point>/seed_<s>/``
in a grid, :func:`run_folder`), with its final model saved for
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

A learning-rate grid: ``algorithm`` is then a function of the grid's names.

  >>> make = lambda client_lr: fe.algorithms.fedavg(
  ...     model, client_optimizer=optax.sgd(client_lr))
  >>> runs = run_sweep(
  ...     make, model, train, test, seeds=[0, 1],
  ...     hyperparameters=[{'client_lr': 0.1}, {'client_lr': 0.3}],
  ...     batching=fe.Batching(batch_size=10, local_steps=2),
  ...     clients_per_round=5, num_rounds=4, eval_every=2, progress=False)
  >>> len(runs)   # (0.1, seed 0), (0.1, seed 1), (0.3, seed 0), (0.3, seed 1)
  4
"""

import os
import time
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp

from fedjax_engine import checkpoint as checkpoint_lib
from fedjax_engine import data as data_lib
from fedjax_engine import evaluate as evaluate_lib
from fedjax_engine import heterogeneity
from fedjax_engine import hyperparameters as hyperparameters_lib
from fedjax_engine import run_dir
from fedjax_engine import runner
from fedjax_engine import sampling
from fedjax_engine import simulate
from fedjax_engine.algorithm import Algorithm
from fedjax_engine.model import Model


def seed_folder(output_dir: str, seed: int) -> str:
  """Where the run of ``seed`` writes its metrics and model."""
  return os.path.join(output_dir, f'seed_{seed}')


def point_name(values: Mapping[str, float]) -> str:
  """A grid point as a folder name: ``client_lr_0.1_server_lr_1``."""
  return '_'.join(f'{k}_{v:g}' for k, v in values.items())


def run_folder(output_dir: str, seed: int,
               values: Mapping[str, float] | None = None) -> str:
  """Where the run of ``seed`` (at grid point ``values``) writes."""
  if not values:
    return seed_folder(output_dir, seed)
  return seed_folder(os.path.join(output_dir, point_name(values)), seed)


def _stack(trees):
  return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def _run(tree, i):
  return jax.tree.map(lambda x: x[i], tree)


def run_sweep(algorithm: Algorithm | Callable[..., Algorithm], model: Model,
              train: data_lib.FederatedData,
              test: data_lib.FederatedData | None, *, seeds: Sequence[int],
              hyperparameters: Sequence[Mapping[str, float]] | None = None,
              batching: data_lib.Batching, clients_per_round: int,
              num_rounds: int, eval_every: int = 10,
              client_chunk_size: int | None = None,
              weighting: str = 'examples', eval_batch_size: int = 1024,
              output_dir: str | None = None, rounds_per_call: int = 10,
              call_seconds: float = simulate.CALL_SECONDS,
              compile_for: str = 'speed', progress: bool = True,
              system: heterogeneity.SystemHeterogeneity | None = None,
              at_evaluation=None) -> list[list[dict[str, Any]]]:
  """Runs the experiment for every seed of ``seeds``, together.

  Args:
    algorithm: the algorithm; with ``hyperparameters``, a function
      ``algorithm(**point) -> Algorithm`` (see
      :func:`fedjax_engine.hyperparameters.tunable` for what it may vary).
    seeds: distinct seeds, one run each (per grid point).
    hyperparameters: grid points, each a mapping of the same names to
      numbers, e.g. ``[{'client_lr': 0.1}, {'client_lr': 0.3}]``; every
      point runs with every seed, in the order ``for point: for seed``.
    output_dir: each run writes ``seed_<s>/metrics.jsonl`` (and its final
      model) under it (``<point>/seed_<s>/`` in a grid, :func:`run_folder`);
      None writes nothing.
    at_evaluation: ``at_evaluation(rounds_done) -> {name: value}`` added to
      every evaluation's record of every run.
    Others: as :func:`fedjax_engine.runner.run_experiment`. Every record's
      ``seconds`` is the wall time of a round of the whole sweep.

  Returns:
    One history per run: per seed, in the order of ``seeds`` (per grid
    point, then seed, with ``hyperparameters``).

  Raises:
    ValueError: for repeated or no seeds, a bad grid, or a bad setting.
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
  if not call_seconds > 0:
    raise ValueError(f'call_seconds must be > 0, got {call_seconds}.')
  points, algorithms = _grid(algorithm, hyperparameters)
  runs = [(point, s) for point in points for s in seeds]
  labels = [f'seed {s}' + (f' at {point_name(point)}' if point else '')
            for point, s in runs]
  keys = [jax.random.split(jax.random.key(s), 3) for _, s in runs]
  algorithm = algorithms[0]
  sampler = sampling.uniform(num_clients=train.num_clients,
                             clients_per_round=clients_per_round,
                             key=keys[0][2])
  rnd = simulate.make_round(algorithm, train, batching=batching,
                            clients_per_round=clients_per_round,
                            client_chunk_size=client_chunk_size,
                            weighting=weighting, system=system,
                            compile_for=compile_for)
  evaluate = (evaluate_lib.make_evaluate(model, test,
                                         batch_size=eval_batch_size)
              if test is not None else None)
  states = [algorithms[points.index(point)].init(model.init(k[0]))
            for (point, _), k in zip(runs, keys)]
  tables = [jax.vmap(algorithm.init_client_state, axis_size=train.num_clients,
                     in_axes=None)(s.params)
            if algorithm.init_client_state is not None else ()
            for s in states]
  server_states, client_states = _stack(states), _stack(tables)
  rounds_keys = jnp.stack([k[1] for k in keys])
  sample_keys = jnp.stack([k[2] for k in keys])

  folders = [run_folder(output_dir, s, point) for point, s in runs
             ] if output_dir else []
  for folder in folders:
    run_dir.prepare(folder)
  sinks = [run_dir.MetricsFile(folder) for folder in folders]
  bar = None
  if progress:
    from tqdm import auto as tqdm  # pylint: disable=g-import-not-at-top
    bar = tqdm.tqdm(total=num_rounds, unit='round', dynamic_ncols=True,
                    desc=f'{len(runs)} runs')
  histories = [[] for _ in runs]
  r, per_round = 0, None
  with runner.DeferredInterrupt() as interrupt:
    try:
      while r < num_rounds:
        to_eval = eval_every - r % eval_every if eval_every else num_rounds
        n = min(simulate.rounds_for_call(
            per_round, rounds_per_call=rounds_per_call,
            call_seconds=call_seconds), num_rounds - r, to_eval)
        start = time.perf_counter()
        server_states, client_states, metrics = rnd.run_sweep(
            server_states, client_states, sampler, rounds_keys, sample_keys,
            first_round=r, num_rounds=n, block=rounds_per_call)
        metrics = jax.device_get(metrics)
        seconds = (time.perf_counter() - start) / n
        per_round = runner.agreed_seconds(seconds)
        end = r + n
        evaluating = evaluate is not None and (end == num_rounds or (
            eval_every and end % eval_every == 0))
        for i, label in enumerate(labels):
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
                                  f'{diverged.what} ({label})', end)
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
  for i, folder in enumerate(folders):
    saved = checkpoint_lib.Checkpoints(folder)
    saved.save(num_rounds, _run(server_states, i), _run(client_states, i))
    saved.close()
  return histories


def _grid(algorithm, hyperparameters):
  """The grid's points (``[{}]`` without one) and an algorithm per point,
  all with the same functions."""
  if hyperparameters is None:
    if not isinstance(algorithm, Algorithm):
      raise ValueError('run_sweep needs an Algorithm, or a function of the '
                       'hyperparameters with hyperparameters=[...].')
    return [{}], [algorithm]
  if isinstance(algorithm, Algorithm) or not callable(algorithm):
    raise ValueError('with hyperparameters, run_sweep needs a function '
                     'algorithm(**point) -> Algorithm, got '
                     f'{type(algorithm).__name__}.')
  points = [hyperparameters_lib.check_values(p) for p in hyperparameters]
  if not points:
    raise ValueError('hyperparameters must hold at least one point.')
  names = list(points[0])
  for p in points:
    if list(p) != names:
      raise ValueError(f'every grid point must name {names} in that order, '
                       f'got {list(p)}.')
  if len({tuple(p.values()) for p in points}) != len(points):
    raise ValueError(f'grid points repeat: {points}.')
  return points, [hyperparameters_lib.tunable(algorithm, **p) for p in points]
