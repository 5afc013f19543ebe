"""A run's output folder: one run per folder, and metrics that survive.

A folder holds one run: ``metrics.jsonl`` (one JSON object per round) and,
from the command line, ``flags.txt``. A folder that already holds a run's
metrics is refused unless the caller asks to overwrite that run or to move
it aside, so two runs never mix in one file. Every problem with the folder
or with writing to it (a path that is a file, lies under a file, cannot be
created or written, a full disk) is an :class:`OutputError` with a one-line
message.

Example:

  >>> import tempfile, os
  >>> folder = os.path.join(tempfile.mkdtemp(), 'run')
  >>> prepare(folder)                      # a new folder: created
  >>> with MetricsFile(folder) as sink:
  ...   sink.write([{'round': 1, 'train_loss': float('nan')}])
  >>> open(os.path.join(folder, METRICS)).read()
  '{"round": 1, "train_loss": NaN}\\n'
  >>> prepare(folder)
  Traceback (most recent call last):
  ...
  fedjax_engine.run_dir.OutputError: ... already holds a run ...
"""

import json
import os
import shutil

METRICS = 'metrics.jsonl'
FLAGS = 'flags.txt'
CHECKPOINTS = 'checkpoints'   # fedjax_engine.checkpoint's folder
# What to do with a folder that already holds a run's metrics.
IF_EXISTS = ('refuse', 'overwrite', 'move_aside')


class OutputError(ValueError):
  """The output folder cannot be used or written; the message is one line."""


def _reason(error: OSError) -> str:
  return error.strerror or str(error)


def prepare(path: str, *, if_exists: str = 'refuse') -> str | None:
  """Makes ``path`` ready for a new run.

  Args:
    path: the output folder; created with its parents when missing.
    if_exists: for a folder holding another run's ``metrics.jsonl``:
      ``'refuse'`` raises, ``'overwrite'`` deletes that run's files
      (``metrics.jsonl``, ``flags.txt``, ``checkpoints/``; nothing else), ``'move_aside'``
      renames the folder to ``<path>.1`` (or the first free ``.N``).

  Returns:
    Where the old run was moved, or None.

  Raises:
    OutputError: the folder cannot be used, or holds a run and
      ``if_exists='refuse'``.
  """
  if if_exists not in IF_EXISTS:
    raise ValueError(f'if_exists must be one of {IF_EXISTS}, got '
                     f'{if_exists!r}.')
  if os.path.exists(path) and not os.path.isdir(path):
    raise OutputError(f'output folder {path} is a file, not a folder.')
  moved = None
  if os.path.exists(os.path.join(path, METRICS)):
    if if_exists == 'refuse':
      raise OutputError(
          f'output folder {path} already holds a run ({METRICS}); resume it '
          '(--resume), choose another folder, or overwrite that run or move '
          'it aside (--output_exists=overwrite|move_aside).')
    try:
      if if_exists == 'overwrite':
        for name in (METRICS, FLAGS):
          if os.path.exists(os.path.join(path, name)):
            os.remove(os.path.join(path, name))
        shutil.rmtree(os.path.join(path, CHECKPOINTS), ignore_errors=True)
      else:
        k = 1
        while os.path.exists(f'{path}.{k}'):
          k += 1
        moved = f'{path}.{k}'
        os.rename(path, moved)
    except OSError as e:
      raise OutputError(f'cannot {if_exists.replace("_", " ")} the run in '
                        f'{path}: {_reason(e)}.') from None
  try:
    os.makedirs(path, exist_ok=True)
  except OSError as e:
    raise OutputError(f'cannot create output folder {path}: '
                      f'{_reason(e)}.') from None
  return moved


def write_text(path: str, name: str, text: str) -> None:
  """Writes ``text`` to the file ``name`` in folder ``path``, whole: a
  reader, or a run stopped part way, sees the old file or the new one."""
  target = os.path.join(path, name)
  partial = target + '.partial'
  try:
    with open(partial, 'w') as f:
      f.write(text)
    os.replace(partial, target)
  except OSError as e:
    raise OutputError(f'cannot write {os.path.join(path, name)}: '
                      f'{_reason(e)}.') from None


class MetricsFile:
  """``metrics.jsonl`` of a new run: whole lines appended at each call.

  The file is created exclusively, so a second run can never append to a
  first one. A write that fails part way (a full disk) is cut back to the
  last whole line, so the file always parses. Writes are unbuffered: each
  call's lines are in the file when :meth:`write` returns. Non-finite
  numbers are written as JSON's extensions ``NaN``, ``Infinity`` and
  ``-Infinity``, which Python's ``json`` and pandas read back as floats.
  """

  def __init__(self, path: str, *, keep: list | None = None):
    """Creates ``metrics.jsonl`` in folder ``path``; or, resuming a run,
    replaces it whole with the records ``keep`` and appends after them."""
    self.path = os.path.join(path, METRICS)
    try:
      if keep is None:
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL,
                           0o644)
      else:
        write_text(path, METRICS, ''.join(json.dumps(r) + '\n'
                                          for r in keep))
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)
    except FileExistsError:
      raise OutputError(f'{self.path} exists: the folder already holds a '
                        'run (see run_dir.prepare).') from None
    except OSError as e:
      raise OutputError(f'cannot write {self.path}: {_reason(e)}.') from None
    self._size = os.lseek(self._fd, 0, os.SEEK_END)

  def write(self, records) -> None:
    data = memoryview(''.join(json.dumps(r) + '\n'
                              for r in records).encode())
    try:
      while data:
        data = data[os.write(self._fd, data):]
    except OSError as e:
      os.ftruncate(self._fd, self._size)
      os.lseek(self._fd, self._size, os.SEEK_SET)
      raise OutputError(f'cannot write {self.path}: {_reason(e)}.') from None
    self._size = os.lseek(self._fd, 0, os.SEEK_CUR)

  def close(self) -> None:
    os.close(self._fd)

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()
