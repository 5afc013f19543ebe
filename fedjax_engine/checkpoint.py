"""Checkpoints of a run, for exact resume, and the trained model kept.

A run's folder holds ``checkpoints/<rounds done>/``, written by
orbax-checkpoint: the server state (params, optimizer states, the state of
every transform: an adaptive clip norm, DP-FTRL's tree), the client-state
table (on the device or in host memory), the params alone (for
:func:`load_params`), and the run's identity (its flags). Nothing else is
needed to go on: cohorts, client keys, dropouts and noise are functions of
the seed and the round number, and the privacy spent is a function of the
rounds done, so a run resumed from round ``r`` computes exactly what the
run that never stopped computed after round ``r``.

orbax writes a checkpoint into a temporary folder and renames it when it is
whole, so a kill during a save leaves the previous checkpoints intact; the
last ``keep`` are kept. A checkpoint of another experiment (other flags)
or one that cannot be read is a :class:`CheckpointError`, never a fresh
start.

Example:

  >>> import tempfile, jax, optax, fedjax_engine as fe
  >>> model = fe.models.logistic_regression(num_features=60, num_classes=10)
  >>> algo = fe.algorithms.fedavg(model, client_optimizer=optax.sgd(0.1))
  >>> state = algo.init(model.init(jax.random.key(0)))
  >>> folder = tempfile.mkdtemp()
  >>> saved = Checkpoints(folder, identity='fedavg, seed 0')
  >>> saved.save(3, state, ())
  >>> rounds, restored, _ = saved.restore(state, ())
  >>> rounds, load_params(folder)['Dense_0']['kernel'].shape
  (3, (10, 60))
"""

import os

import jax
import numpy as np

from fedjax_engine.run_dir import CHECKPOINTS


def _orbax():
  # Imported on first use: orbax and tensorstore add about 25 MB to every
  # process that imports the engine, checkpointing or not.
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  return ocp


class CheckpointError(ValueError):
  """A checkpoint that cannot be used; the message is one line."""


def _abstract(tree):
  return jax.tree.map(_orbax().utils.to_shape_dtype_struct, tree)


def _has_leaves(tree) -> bool:
  return bool(jax.tree.leaves(tree))


def _manager(folder: str, keep: int, create: bool):
  ocp = _orbax()
  # Synchronous saves: a checkpoint is whole on disk before the run goes on,
  # so the metrics written after it never get ahead of what can be resumed.
  return ocp.CheckpointManager(
      folder, options=ocp.CheckpointManagerOptions(
          max_to_keep=keep, enable_async_checkpointing=False, create=create))


class Checkpoints:
  """The checkpoints of the run in ``output_dir``.

  Args:
    output_dir: the run's folder; checkpoints go to its ``checkpoints/``.
    keep: how many of the latest checkpoints to keep.
    identity: what makes two runs the same experiment (the CLI's flags);
      restoring a checkpoint saved under another identity is refused.
  """

  def __init__(self, output_dir: str, *, keep: int = 3, identity: str = ''):
    if not (isinstance(keep, int) and keep >= 1):
      raise ValueError(f'keep must be an int >= 1, got {keep!r}.')
    self.folder = os.path.join(os.path.abspath(output_dir), CHECKPOINTS)
    self.identity = identity
    self._keep = keep
    self._saver = None

  def latest(self) -> int | None:
    """Rounds done at the latest checkpoint, or None without one."""
    if not os.path.isdir(self.folder):
      return None
    return _manager(self.folder, self._keep, create=False).latest_step()

  def save(self, rounds_done: int, server_state, client_states) -> None:
    """Writes the state after ``rounds_done`` rounds."""
    if self._saver is None:
      self._saver = _manager(self.folder, self._keep, create=True)
    ocp = _orbax()
    items = dict(state=ocp.args.StandardSave(server_state),
                 params=ocp.args.StandardSave(server_state.params),
                 identity=ocp.args.JsonSave({'identity': self.identity}))
    if _has_leaves(client_states):
      items['clients'] = ocp.args.StandardSave(client_states)
    try:
      self._saver.save(rounds_done, args=ocp.args.Composite(**items),
                       force=True)
      self._saver.wait_until_finished()
    except (OSError, ValueError) as e:
      raise CheckpointError(f'cannot write a checkpoint in {self.folder}: '
                            f'{e}') from None

  def restore(self, server_state, client_states):
    """``(rounds_done, server_state, client_states)`` of the latest
    checkpoint; ``server_state`` and ``client_states`` are a fresh run's,
    whose structure, shapes and dtypes the checkpoint must have. A host
    table (numpy, maybe memory-mapped) is filled in place."""
    rounds = self.latest()
    if rounds is None:
      raise CheckpointError(f'no checkpoint in {self.folder}.')
    manager = _manager(self.folder, self._keep, create=False)
    ocp = _orbax()
    where = os.path.join(self.folder, str(rounds))
    try:
      saved = manager.restore(rounds, args=ocp.args.Composite(
          identity=ocp.args.JsonRestore()))['identity']['identity']
    except Exception as e:  # pylint: disable=broad-except
      raise CheckpointError(f'the checkpoint {where} cannot be read '
                            f'({type(e).__name__}); delete it to resume '
                            'from an earlier one.') from None
    if saved != self.identity:
      raise CheckpointError(
          f'the checkpoint {where} is of another experiment: '
          f'{_difference(saved, self.identity)}. Resume with the flags it '
          'was saved with, or start in another folder.')
    items = dict(state=ocp.args.StandardRestore(_abstract(server_state)))
    if _has_leaves(client_states):
      items['clients'] = ocp.args.StandardRestore(_abstract(client_states))
    try:
      restored = manager.restore(rounds, args=ocp.args.Composite(**items))
    except Exception as e:  # pylint: disable=broad-except
      raise CheckpointError(f'the checkpoint {where} does not fit this run '
                            f'or is damaged ({type(e).__name__}: '
                            f'{str(e).splitlines()[0][:200]}).') from None
    if not _has_leaves(client_states):
      return rounds, restored['state'], client_states
    table = restored['clients']
    if all(isinstance(x, np.ndarray) for x in jax.tree.leaves(
        client_states)):
      jax.tree.map(lambda old, new: np.copyto(old, np.asarray(new)),
                   client_states, table)
      table = client_states
    return rounds, restored['state'], table

  def close(self) -> None:
    if self._saver is not None:
      self._saver.close()
      self._saver = None


def _difference(saved: str, wanted: str) -> str:
  """The lines (flags) in which two identities differ, briefly."""
  old, new = set(saved.splitlines()), set(wanted.splitlines())
  gone, added = sorted(old - new), sorted(new - old)
  parts = []
  if gone:
    parts.append('saved with ' + ' '.join(gone[:5]))
  if added:
    parts.append('now ' + ' '.join(added[:5]))
  return '; '.join(parts) or 'identities differ'


def load_params(run_dir: str, *, like=None):
  """The params of the latest checkpoint of the run in ``run_dir`` (the
  final model once the run has finished).

  Args:
    run_dir: a run's folder.
    like: params of the model (e.g. ``model.init(key)``) whose structure
      and dtypes to restore into; None gives nested dicts of arrays.

  Raises:
    CheckpointError: the folder holds no checkpoint, or it cannot be read.
  """
  folder = os.path.join(os.path.abspath(run_dir), CHECKPOINTS)
  rounds = Checkpoints(run_dir).latest()
  if rounds is None:
    raise CheckpointError(f'{run_dir} holds no checkpoint ({folder} is '
                          'missing or empty).')
  ocp = _orbax()
  restore = (ocp.args.StandardRestore(_abstract(like)) if like is not None
             else ocp.args.StandardRestore())
  try:
    params = _manager(folder, 1, create=False).restore(
        rounds, args=ocp.args.Composite(params=restore))['params']
  except Exception as e:  # pylint: disable=broad-except
    raise CheckpointError(f'the checkpoint {os.path.join(folder, str(rounds))}'
                          f' cannot be read ({type(e).__name__}).') from None
  # In host memory: where they go next (devices, a mesh) is the caller's.
  return jax.device_get(params)
