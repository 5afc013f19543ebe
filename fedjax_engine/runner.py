"""The experiment loop: rounds, evaluation cadence, metric files, progress.

Every round appends one JSON object to ``<output_dir>/metrics.jsonl`` and
flushes it, so an interrupted run keeps every finished round; a folder that
already holds a run is refused (:mod:`fedjax_engine.run_dir`). Keys:
``round`` (rounds completed), ``seconds`` (the round's wall time; the first
round's includes compilation), ``train_loss`` and the algorithm's other client
metrics, and on evaluation rounds ``test_loss``, ``test_accuracy`` (over all
test examples) and ``test_loss_per_client``, ``test_accuracy_per_client``
(the mean over clients). Counts (``round``, ``clients``) are integers.
With personalized evaluation, evaluation rounds also carry
``test_personal_<metric>`` (each client's own model on its own test
examples, the mean over clients) with ``_client_min`` and ``_client_p10``,
and ``<output_dir>/personal_per_client.csv`` holds the last evaluation's
value of every client.

A non-finite training or test loss, or non-finite parameters, stop the run
with :class:`Diverged` naming the round (or, with ``on_nonfinite='warn'``,
log a warning and go on); the metrics up to that round are written first.
Ctrl-C or SIGTERM ends the run with :class:`Interrupted`, which says how
many rounds were done; their metrics are already written, and with an
``output_dir`` a checkpoint is saved, from which ``resume=True`` goes on
exactly (:mod:`fedjax_engine.checkpoint`). It takes effect when the
compiled call in progress returns, so JAX is never interrupted in the middle
of a dispatch; a second Ctrl-C interrupts at once.

Example:

  >>> import optax, fedjax_engine as fe
  >>> train, test = fe.datasets.synthetic(num_clients=20, seed=0)
  >>> model = fe.models.logistic_regression(num_features=60, num_classes=10)
  >>> history = run_experiment(
  ...     fe.algorithms.fedavg(model, client_optimizer=optax.sgd(0.1)), model,
  ...     train, test, batching=fe.Batching(batch_size=10, local_steps=2),
  ...     clients_per_round=5, num_rounds=3, eval_every=3, progress=False)
  >>> [sorted(h) for h in history][-1][:3]
  ['clients', 'round', 'seconds']
"""

import csv
import io
import math
import os
import signal
import threading
import time
from typing import Any, Callable, Mapping

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np
import optax

from fedjax_engine import checkpoint as checkpoint_lib
from fedjax_engine import data as data_lib
from fedjax_engine import evaluate as evaluate_lib
from fedjax_engine import heterogeneity
from fedjax_engine import personal_evaluate
from fedjax_engine import run_dir
from fedjax_engine import run_reader
from fedjax_engine import sampling
from fedjax_engine import simulate
from fedjax_engine.algorithm import Algorithm
from fedjax_engine.model import Model


PER_CLIENT_FILE = 'personal_per_client.csv'
TENSORBOARD = 'tensorboard'   # the event files' folder in a run's folder


def _write_per_client(output_dir, client_ids, per_client):
  """``personal_per_client.csv``: one row per client, replaced whole."""
  names = sorted(per_client)
  text = io.StringIO()
  writer = csv.writer(text)
  writer.writerow(['client_id'] + names)
  for k, cid in enumerate(client_ids):
    writer.writerow([cid] + [repr(float(per_client[n][k])) for n in names])
  run_dir.write_text(output_dir, PER_CLIENT_FILE, text.getvalue())


class Diverged(RuntimeError):
  """Training produced a non-finite loss or parameters at round ``round``;
  metrics were written up to round ``written``."""

  def __init__(self, round_num: int, what: str, written: int):
    super().__init__(f'training diverged at round {round_num}: {what}.')
    self.round = round_num
    self.what = what
    self.written = written


class Interrupted(KeyboardInterrupt):
  """Ctrl-C or SIGTERM during a run; ``rounds`` rounds were done and
  written, and with ``checkpointed`` saved in a checkpoint to resume from."""

  def __init__(self, rounds: int, history: list, checkpointed: bool = False):
    super().__init__(f'interrupted after {rounds} rounds')
    self.rounds = rounds
    self.history = history
    self.checkpointed = checkpointed


class DeferredInterrupt:
  """Holds Ctrl-C (SIGINT) and SIGTERM back until the loop checks
  ``requested``.

  A KeyboardInterrupt raised at an arbitrary point of JAX's dispatch can
  leave a computation in flight or internal state half-updated as the
  process exits; between calls nothing is in flight. A second Ctrl-C
  raises at once. Only the main thread can own signal handlers; elsewhere
  this does nothing.
  """

  def __init__(self):
    self.requested = False
    self._previous = None

  def _handle(self, signum, frame):
    del signum, frame
    if self.requested:
      raise KeyboardInterrupt
    self.requested = True

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      self._previous = {sig: signal.signal(sig, self._handle)
                        for sig in (signal.SIGINT, signal.SIGTERM)}
    return self

  def __exit__(self, *exc):
    if self._previous is not None:
      for sig, handler in self._previous.items():
        signal.signal(sig, handler)


def agreed_seconds(seconds_per_round: float) -> float:
  """The last call's seconds per round as process 0 measured them.

  Every process of a multi-process run must fuse the same rounds into its
  next call (:func:`fedjax_engine.simulate.rounds_for_call`), or one would
  wait at an all-reduce that the others never reach.
  """
  if jax.process_count() == 1:
    return seconds_per_round
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  return float(multihost_utils.broadcast_one_to_all(
      np.float32(seconds_per_round)))


def to_python(metrics: dict) -> dict:
  """Host numbers: integers stay integers, non-finite floats stay floats,
  and an array of ids (``robust_discarded_ids``) becomes a list without its
  empty (-1) slots."""
  out = {}
  for k, v in metrics.items():
    v = np.asarray(v)
    if v.ndim:
      out[k] = [int(x) for x in v if x >= 0]
    else:
      out[k] = int(v) if np.issubdtype(v.dtype, np.integer) else float(v)
  return out


@jax.jit
def _all_finite(tree) -> jax.Array:
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x))
                            for x in jax.tree.leaves(tree)]))


_WATCHED = ('train_loss', 'test_loss')


def nonfinite(records, params) -> Diverged | None:
  """The first round of ``records`` with a non-finite loss, or non-finite
  params after the last one."""
  last = records[-1]['round']
  for record in records:
    for key in _WATCHED:
      value = record.get(key)
      if isinstance(value, float) and not math.isfinite(value):
        return Diverged(record['round'], f'{key} is {value}', last)
  if not bool(simulate.settled(_all_finite(params))):
    return Diverged(last, 'the parameters are not finite', last)
  return None


def run_experiment(algorithm: Algorithm, model: Model,
                   train: data_lib.FederatedData,
                   test: data_lib.FederatedData | None, *,
                   batching: data_lib.Batching, clients_per_round: int,
                   num_rounds: int, eval_every: int = 10, seed: int = 0,
                   client_chunk_size: int | None = None,
                   weighting: str = 'examples', gather: str = 'device',
                   eval_batch_size: int = 1024, output_dir: str | None = None,
                   rounds_per_call: int = 10,
                   call_seconds: float = simulate.CALL_SECONDS,
                   compile_for: str = 'speed',
                   profile_dir: str | None = None,
                   progress: bool = True,
                   on_nonfinite: str = 'stop',
                   system: heterogeneity.SystemHeterogeneity | None = None,
                   state_table: str = 'device',
                   state_table_dir: str | None = None,
                   availability_period: int = 0,
                   available_fraction: float = 1.0,
                   poisson_rate: float | None = None,
                   personal_eval: bool = False,
                   finetune_steps: int = 0,
                   finetune_optimizer: optax.GradientTransformation | None = None,
                   more_tests: Mapping[str, data_lib.FederatedData] | None = None,
                   at_evaluation: Callable[[int], dict] | None = None,
                   checkpoint_every: int = 0, keep_checkpoints: int = 3,
                   resume: bool = False, identity: str = '',
                   tensorboard: bool = False
                   ) -> list[dict[str, Any]]:
  """Runs ``num_rounds`` rounds and returns one metrics dict per round.

  Args:
    algorithm, model: what to train.
    train, test: the clients' train and test splits (``test`` may be None).
    batching: local batch size and steps or epochs.
    clients_per_round: clients sampled uniformly each round.
    num_rounds: rounds to run (0 only evaluates the initial model).
    eval_every: evaluate on ``test`` every this many rounds and after the last
      (0 evaluates only after the last).
    seed: seeds the initial params, the client sampling and every client's
      randomness.
    client_chunk_size, weighting, gather, system: see
      :func:`fedjax_engine.make_round`.
    eval_batch_size: examples per forward pass in evaluation.
    output_dir: where ``metrics.jsonl`` goes (None: nowhere); created if
      missing. A folder that already holds a run's metrics is refused: see
      :func:`fedjax_engine.run_dir.prepare` to overwrite or move it first.
    rounds_per_call: with ``gather='device'``, the most rounds fused into
      one compiled call (:meth:`Round.run_rounds`); a call also ends at
      every evaluation. Metrics are written after each call, and each of
      its rounds is given the call's wall time divided by its rounds. 1
      drives every round from Python.
    call_seconds: a fused call runs the rounds that fit in about this many
      seconds, timed from the previous call (the first runs one round), so
      long rounds run one per call: on CPU a call's memory grows while it
      runs, and metrics and progress come per call
      (:func:`fedjax_engine.simulate.rounds_for_call`). The same compiled
      program serves every length, and results do not depend on it.
    compile_for: ``'speed'`` or ``'memory'``: see
      :func:`fedjax_engine.make_round`.
    profile_dir: if set, a JAX profiler trace of the second call (the
      first one compiles) is written there; see the README's "Profiling".
    progress: show a progress bar on stderr.
    on_nonfinite: ``'stop'`` raises :class:`Diverged` at the first
      non-finite loss or parameter; ``'warn'`` logs it once and goes on.
    state_table: where a stateful algorithm's client-state table lives:
      ``'device'``, or ``'host'`` (numpy; only the cohort's rows move each
      round, and rounds are driven from Python), for tables larger than
      device memory.
    state_table_dir: with ``state_table='host'``, keep the table in
      memory-mapped files in this folder (for tables larger than memory).
    availability_period, available_fraction: with a period > 0, clients are
      online ``available_fraction`` of every ``availability_period`` rounds,
      each at its own phase, and only online clients are sampled
      (:func:`fedjax_engine.sampling.available`); 0 samples from all.
    poisson_rate: each client takes part in a round with this probability,
      independently (:func:`fedjax_engine.sampling.poisson`, the sampling
      DP accounting usually assumes); ``clients_per_round`` is then unused
      and the round holds the sampler's capacity.
    personal_eval: at every evaluation, also evaluate each client's own
      model (the algorithm's ``personalize``, else the global model) on its
      own test examples, after ``finetune_steps`` local steps of
      ``finetune_optimizer`` (:mod:`fedjax_engine.personal_evaluate`);
      needs ``test`` with the same clients as ``train``.
    more_tests: more test sets, evaluated with ``test``: ``name -> data``
      gives ``test_<name>_<metric>`` (e.g. a backdoor test set, whose
      accuracy is the attack's success rate).
    at_evaluation: ``at_evaluation(rounds_done) -> {name: value}``, added
      to every evaluation's record (the privacy spent, ``epsilon``).
    checkpoint_every: with ``output_dir``, save a checkpoint every this
      many rounds (:mod:`fedjax_engine.checkpoint`); one is always saved
      after the last round (the trained model) and on Ctrl-C or SIGTERM.
      0: only those.
    keep_checkpoints: the latest checkpoints kept.
    resume: continue the run in ``output_dir`` from its latest checkpoint
      (metrics after it are dropped and computed again, identically); a
      folder without a run starts one.
    identity: what makes two runs the same experiment (the CLI passes its
      flags); a checkpoint saved under another identity is refused.
    tensorboard: with ``output_dir``, also write the metrics as
      TensorBoard scalars to ``<output_dir>/tensorboard``.

  Raises:
    Diverged: see ``on_nonfinite``.
    Interrupted: on Ctrl-C, after the finished rounds' metrics are written.
    fedjax_engine.run_dir.OutputError: the metrics cannot be written.
  """
  if num_rounds < 0:
    raise ValueError(f'num_rounds must be >= 0, got {num_rounds}.')
  if eval_every < 0:
    raise ValueError(f'eval_every must be >= 0, got {eval_every}.')
  if rounds_per_call < 1:
    raise ValueError(f'rounds_per_call must be >= 1, got {rounds_per_call}.')
  if not call_seconds > 0:
    raise ValueError(f'call_seconds must be > 0, got {call_seconds}.')
  if on_nonfinite not in ('stop', 'warn'):
    raise ValueError(f"on_nonfinite must be 'stop' or 'warn', got "
                     f'{on_nonfinite!r}.')
  if state_table not in ('device', 'host'):
    raise ValueError(f"state_table must be 'device' or 'host', got "
                     f'{state_table!r}.')
  on_host = state_table == 'host' and algorithm.init_client_state is not None
  fused = gather == 'device' and rounds_per_call > 1 and not on_host
  init_key, rounds_key, sample_key = jax.random.split(jax.random.key(seed), 3)
  if availability_period and poisson_rate:
    raise ValueError('choose availability_period or poisson_rate, not both.')
  if availability_period:
    sampler = sampling.available(
        num_clients=train.num_clients, clients_per_round=clients_per_round,
        key=sample_key, period=availability_period,
        available_fraction=available_fraction)
  elif poisson_rate:
    sampler = sampling.poisson(num_clients=train.num_clients,
                               rate=poisson_rate, key=sample_key)
  else:
    sampler = sampling.uniform(num_clients=train.num_clients,
                               clients_per_round=clients_per_round,
                               key=sample_key)
  rnd = simulate.make_round(
      algorithm, train, batching=batching,
      clients_per_round=sampler.clients_per_round,
      client_chunk_size=client_chunk_size, weighting=weighting, gather=gather,
      system=system, compile_for=compile_for)
  evaluate = (evaluate_lib.make_evaluate(model, test,
                                         batch_size=eval_batch_size)
              if test is not None else None)
  more_evaluates = {
      name: evaluate_lib.make_evaluate(model, data, batch_size=eval_batch_size)
      for name, data in (more_tests or {}).items()}
  if (personal_eval or finetune_steps) and test is None:
    raise ValueError('personalized evaluation needs test data.')
  personal = (personal_evaluate.make_personal_evaluate(
      model, algorithm, train, test, batching=batching,
      finetune_steps=finetune_steps, finetune_optimizer=finetune_optimizer,
      batch_size=min(eval_batch_size, 256),
      client_chunk_size=client_chunk_size) if personal_eval else None)
  server_state = algorithm.init(model.init(init_key))
  if on_host:
    client_states = simulate.host_table(algorithm, server_state.params,
                                        train.num_clients,
                                        folder=state_table_dir)
  elif algorithm.init_client_state is not None:
    client_states = jax.vmap(algorithm.init_client_state,
                             axis_size=train.num_clients,
                             in_axes=None)(server_state.params)
  else:
    client_states = ()

  sink, checkpoints, history, r = None, None, [], 0
  if output_dir:
    # orbax saves through every process together; a multi-process run
    # writes its metrics from one process and keeps no checkpoints yet.
    if jax.process_count() == 1:
      checkpoints = checkpoint_lib.Checkpoints(
          output_dir, keep=keep_checkpoints, identity=identity)
    if resume and checkpoints and checkpoints.latest() is not None:
      r, server_state, client_states = checkpoints.restore(server_state,
                                                           client_states)
      history = [record for record in run_reader.read_metrics(output_dir)
                 if record['round'] <= r]
      sink = run_dir.MetricsFile(output_dir, keep=history)
    else:
      if resume and os.path.exists(os.path.join(output_dir, run_dir.METRICS)):
        raise run_dir.OutputError(
            f'{output_dir} holds a run but no checkpoint to resume it from.')
      run_dir.prepare(output_dir)
      sink = run_dir.MetricsFile(output_dir)
  board = None
  if output_dir and tensorboard:
    from fedjax_engine import tensorboard as tensorboard_lib  # pylint: disable=g-import-not-at-top
    board = tensorboard_lib.TensorBoardSink(
        os.path.join(output_dir, TENSORBOARD))
  bar = None
  if progress:
    from tqdm import auto as tqdm  # pylint: disable=g-import-not-at-top
    bar = tqdm.tqdm(total=num_rounds, initial=r, unit='round',
                    dynamic_ncols=True)

  def scores(server_state, client_states, rounds_done):
    out = to_python(evaluate(server_state.params))
    if personal is not None:
      per_client = personal.per_client(server_state, client_states)
      out.update(personal_evaluate.summarize(per_client))
      if output_dir:
        _write_per_client(output_dir, train.client_ids, per_client)
    for name, more in more_evaluates.items():
      out.update({f'{name}_{k}': v for k, v in to_python(
          more(server_state.params)).items()})
    out = {f'test_{k}': v for k, v in out.items()}
    if at_evaluation is not None:
      out.update(at_evaluation(rounds_done))
    return out

  warned = False
  with DeferredInterrupt() as interrupt:
    try:
      if num_rounds == 0 and evaluate is not None:
        record = {'round': 0, **scores(server_state, client_states, 0)}
        history.append(record)
        if sink:
          sink.write([record])
      calls = 0
      per_round = None   # seconds, from the last call
      while r < num_rounds:
        n = 1
        if fused:
          to_eval = eval_every - r % eval_every if eval_every else num_rounds
          to_save = (checkpoint_every - r % checkpoint_every
                     if checkpoints and checkpoint_every else num_rounds)
          n = min(simulate.rounds_for_call(
              per_round, rounds_per_call=rounds_per_call,
              call_seconds=call_seconds), num_rounds - r, to_eval, to_save)
        # The second call, or the first when it is the only one.
        profiling = profile_dir and (calls == 1 or n == num_rounds)
        if profiling:
          jax.profiler.start_trace(profile_dir)
        start = time.perf_counter()
        if fused:
          server_state, client_states, metrics = rnd.run_rounds(
              server_state, client_states, sampler, rounds_key, first_round=r,
              num_rounds=n, block=rounds_per_call)
          metrics = jax.device_get(metrics)
          rounds = [{k: v[i] for k, v in metrics.items()} for i in range(n)]
        else:
          server_state, client_states, metrics = rnd(
              server_state, client_states, rnd.select(sampler(r)),
              jax.random.fold_in(rounds_key, r))
          rounds = [metrics]
        records = [{'round': r + i + 1, **to_python(m)}
                   for i, m in enumerate(rounds)]
        if profiling:
          jax.block_until_ready((server_state, client_states))
          jax.profiler.stop_trace()
        calls += 1
        seconds = (time.perf_counter() - start) / n
        per_round = agreed_seconds(seconds) if fused else None
        for record in records:
          record['seconds'] = seconds
        end = r + n
        if evaluate is not None and (end == num_rounds or (
            eval_every and end % eval_every == 0)):
          records[-1].update(scores(server_state, client_states, end))
        if sink:
          sink.write(records)
        if board:
          board.write(records)
        history.extend(records)
        r = end  # rounds done and written
        if checkpoints and (interrupt.requested or r == num_rounds or (
            checkpoint_every and r % checkpoint_every == 0)):
          checkpoints.save(r, server_state, client_states)
        if interrupt.requested:
          raise Interrupted(r, history, checkpointed=checkpoints is not None)
        diverged = nonfinite(records, server_state.params)
        if diverged and on_nonfinite == 'stop':
          raise diverged
        if diverged and not warned:
          logging.warning('%s Going on (on_nonfinite=warn).', diverged)
          warned = True
        if bar is not None:
          shown = {k: records[-1][k] for k in ('train_loss', 'test_accuracy')
                   if isinstance(records[-1].get(k), float)}
          bar.set_postfix({k: f'{v:.4f}' for k, v in shown.items()},
                          refresh=False)
          bar.update(n)
    except Interrupted:
      raise
    except KeyboardInterrupt:   # a second Ctrl-C, in the middle of a call
      raise Interrupted(r, history) from None
    finally:
      if bar is not None:
        bar.close()
      if sink:
        sink.close()
      if board:
        board.close()
      if checkpoints:
        checkpoints.close()
  return history
