"""A metrics sink that writes TensorBoard event files, through tensorboardX.

:class:`TensorBoardSink` takes the records that :class:`run_dir.MetricsFile
<fedjax_engine.run_dir.MetricsFile>` takes, one dict per round: every number
in a record (NaN and infinities too; not bools, strings or lists) becomes a
scalar named by its key at step ``round``. Events reach the file within
:data:`FLUSH_SECONDS` of :meth:`~TensorBoardSink.write`, and all of them by
the time :meth:`~TensorBoardSink.close` returns. ``tensorboard --logdir=FOLDER``
shows them.

Example:

  >>> import os, tempfile
  >>> folder = tempfile.mkdtemp()
  >>> with TensorBoardSink(folder) as sink:
  ...   sink.write([{'round': 1, 'train_loss': 0.5, 'note': 'skipped'}])
  >>> [name.startswith('events.out.tfevents.') for name in os.listdir(folder)]
  [True]
"""

import logging

import tensorboardX

from fedjax_engine import run_reader

# TensorBoard reads its folders again every 5 s by default.
FLUSH_SECONDS = 5

# A NaN metric is written on purpose (the runner reports a diverging run
# itself); tensorboardX would log a warning for each one.
logging.getLogger('tensorboardX.x2num').addFilter(
    lambda record: 'NaN or Inf' not in record.getMessage())


class TensorBoardSink:
  """TensorBoard scalars in ``folder`` (created if missing), a new event file
  per sink; the interface of :class:`fedjax_engine.run_dir.MetricsFile`."""

  def __init__(self, folder: str):
    self._writer = tensorboardX.SummaryWriter(logdir=folder,
                                              flush_secs=FLUSH_SECONDS)

  def write(self, records) -> None:
    """Writes each record's numbers at its ``round``.

    Raises:
      ValueError: a record without an integer ``round``.
    """
    for record in records:
      step = record.get('round')
      if not isinstance(step, int) or isinstance(step, bool):
        raise ValueError(f'a metrics record needs an integer "round"; got '
                         f'{record!r}.')
      for name, value in record.items():
        if name != 'round' and run_reader.is_number(value):
          self._writer.add_scalar(name, float(value), global_step=step)

  def close(self) -> None:
    self._writer.close()

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()
