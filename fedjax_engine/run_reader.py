"""Reading run folders back: metrics, flags, and groups of seeds.

A run folder (:mod:`fedjax_engine.run_dir`) holds ``metrics.jsonl``, one
JSON object per round, and, from the command line, ``flags.txt``. A run
killed while writing may leave a cut-off last line: it is skipped with a
warning. Any other problem (no folder, no metrics, a broken line before the
last, no rounds at all) is a :class:`RunError` with a one-line message.

Runs whose flags differ only by ``--seed`` (``--output_dir`` is never in
``flags.txt``) form a :class:`Group`; each group is labeled by the flags that
differ between groups, or by its folder's name when none do.
:mod:`fedjax_engine.plot` and :mod:`fedjax_engine.compare` are built on this.

Example:

  >>> import os, tempfile
  >>> from fedjax_engine import run_dir
  >>> root = tempfile.mkdtemp()
  >>> for lr, seed in [(0.1, 0), (0.1, 1), (0.2, 0)]:
  ...   folder = os.path.join(root, f'lr{lr}_seed{seed}')
  ...   run_dir.prepare(folder)
  ...   run_dir.write_text(folder, run_dir.FLAGS,
  ...                      f'--client_lr={lr}\\n--seed={seed}\\n--download\\n')
  ...   with run_dir.MetricsFile(folder) as sink:
  ...     sink.write([{'round': 1, 'train_loss': 1.0 + seed}])
  >>> groups = group_by_seed(read_runs(
  ...     sorted(os.path.join(root, name) for name in os.listdir(root))))
  >>> for group in groups:
  ...   print(group.label, [run.name for run in group.runs])
  client_lr=0.1 (2 seeds) ['lr0.1_seed0', 'lr0.1_seed1']
  client_lr=0.2 ['lr0.2_seed0']
  >>> groups[0].runs[1].column('train_loss')
  ([1], [2.0])
"""

import dataclasses
import json
import numbers
import os
import sys
from typing import Callable

from absl import app
from absl import flags
from absl import logging

from fedjax_engine import run_dir

# Keys of every round that count or time the round rather than measure it.
BOOKKEEPING = ('round', 'seconds', 'clients')
SEED_FLAG = 'seed'
EXIT_USAGE = 2


class RunError(ValueError):
  """A run folder or an option that cannot be used; the message is one line.
  """


def is_number(value) -> bool:
  """A metric value: an int or float (NaN and infinities too), not a bool."""
  return isinstance(value, numbers.Real) and not isinstance(value, bool)


def read_metrics(folder: str) -> list[dict]:
  """The records of ``folder/metrics.jsonl``, one dict per round.

  A last line without its newline that does not parse is what a run killed
  mid-write leaves behind; it is skipped with a warning.

  Raises:
    RunError: no such folder, no ``metrics.jsonl``, a line before the last
      that is not a JSON object with an integer ``round``, or no rounds.
  """
  path = os.path.join(folder, run_dir.METRICS)
  if not os.path.isdir(folder):
    raise RunError(f'{folder}: no such folder; expected a run folder holding '
                   f'{run_dir.METRICS}.')
  try:
    with open(path, 'rb') as f:
      data = f.read()
  except FileNotFoundError:
    raise RunError(f'{folder} holds no {run_dir.METRICS}; expected a run '
                   'folder (the --output_dir of fedjax_engine.train).'
                   ) from None
  except OSError as e:
    raise RunError(f'cannot read {path}: {e.strerror or e}.') from None
  lines = data.split(b'\n')
  # A file ending in a newline splits into a last, empty piece; any other
  # last piece was cut off, unless it happens to parse.
  partial = lines.pop()
  records = []
  for number, line in enumerate(lines, start=1):
    if line.strip():
      records.append(_record(line, path, number))
  if partial.strip():
    try:
      records.append(_record(partial, path, len(lines) + 1))
    except RunError:
      logging.warning('%s: skipped its cut-off last line %d (the run stopped '
                      'while writing it).', path, len(lines) + 1)
  if not records:
    raise RunError(f'{path} holds no rounds; expected one JSON object per '
                   'round.')
  return records


def _record(line: bytes, path: str, number: int) -> dict:
  try:
    record = json.loads(line)
  except ValueError as e:
    raise RunError(f'{path} line {number} is not JSON ({e}); expected one '
                   'JSON object per round.') from None
  if not isinstance(record, dict) or not isinstance(record.get('round'), int):
    raise RunError(f'{path} line {number} is not a JSON object with an '
                   'integer "round".')
  return record


def read_flags(folder: str) -> dict[str, str | None] | None:
  """``folder/flags.txt`` as ``{name: value}``, or None without the file.

  A boolean flag is kept as written, with the value None: ``--download``
  gives ``{'download': None}``, ``--nodownload`` gives
  ``{'nodownload': None}``.
  """
  path = os.path.join(folder, run_dir.FLAGS)
  try:
    with open(path) as f:
      text = f.read()
  except FileNotFoundError:
    return None
  except (OSError, UnicodeDecodeError) as e:
    raise RunError(f'cannot read {path}: {e}.') from None
  parsed = {}
  for line in text.splitlines():
    line = line.strip()
    # absl's flag files also hold blank lines and comments.
    if line.startswith('-'):
      name, equals, value = line.lstrip('-').partition('=')
      parsed[name] = value if equals else None
  return parsed


def flag_text(name: str, value: str | None) -> str:
  return name if value is None else f'{name}={value}'


@dataclasses.dataclass(frozen=True)
class Run:
  """One run folder: its records, in file order, and its flags (or None)."""
  path: str
  records: list[dict]
  flags: dict[str, str | None] | None

  @property
  def name(self) -> str:
    return os.path.basename(os.path.normpath(self.path))

  @property
  def rounds(self) -> int:
    """Rounds completed: the last record's ``round``."""
    return self.records[-1]['round']

  @property
  def seconds(self) -> float:
    """Total wall time, the sum of the rounds' ``seconds``."""
    return float(sum(r.get('seconds', 0.0) for r in self.records))

  def metric_names(self) -> set[str]:
    """Every key with a number in some record, ``round`` aside."""
    return {k for r in self.records for k, v in r.items()
            if k != 'round' and is_number(v)}

  def column(self, metric: str) -> tuple[list[int], list[float]]:
    """The rounds that have ``metric`` and its values there."""
    pairs = [(r['round'], float(r[metric])) for r in self.records
             if is_number(r.get(metric))]
    return [p[0] for p in pairs], [p[1] for p in pairs]

  def elapsed(self) -> dict[int, float]:
    """Each round's cumulative wall time: the sum of ``seconds`` up to it.

    Raises:
      RunError: no record has ``seconds``.
    """
    if not any(is_number(r.get('seconds')) for r in self.records):
      raise RunError(f'{self.path}: no round records "seconds", the wall '
                     'time; plot against rounds instead.')
    total = 0.0
    out = {}
    for record in self.records:
      seconds = record.get('seconds')
      # The record of an evaluation before training has no seconds.
      total += float(seconds) if is_number(seconds) else 0.0
      out[record['round']] = total
    return out


def read_run(folder: str) -> Run:
  return Run(path=folder, records=read_metrics(folder),
             flags=read_flags(folder))


def sweep_runs(folder: str) -> list[str]:
  """The run folders under a sweep's output folder (``seed_<s>/``, or
  ``<point>/seed_<s>/`` for a learning-rate grid), sorted; ``[folder]``
  itself when it holds metrics or no run lies below it."""
  if os.path.exists(os.path.join(folder, run_dir.METRICS)):
    return [folder]
  found = sorted(root for root, _, files in os.walk(folder)
                 if run_dir.METRICS in files)
  return found or [folder]


def read_runs(folders) -> list[Run]:
  """:func:`read_run` of each folder; at least one is needed. A sweep's
  output folder stands for its runs (:func:`sweep_runs`)."""
  folders = list(folders)
  if not folders:
    raise RunError('no run folders given; expected one or more folders '
                   f'holding {run_dir.METRICS}.')
  return [read_run(run) for f in folders for run in sweep_runs(f)]


@dataclasses.dataclass(frozen=True)
class Group:
  """Runs that differ only by their seed (or a run on its own)."""
  label: str
  runs: list[Run]


def _setting(run: Run):
  """What must match for runs to share a group: the flags but the seed."""
  if run.flags is None:
    return None
  return frozenset((k, v) for k, v in run.flags.items() if k != SEED_FLAG)


def group_by_seed(runs: list[Run]) -> list[Group]:
  """Groups the runs whose flags differ only by the seed, in first-seen order.

  A run without ``flags.txt`` is a group of its own, labeled by its folder's
  name. The others are labeled by the flags that differ between groups,
  followed by ``(N seeds)`` for a group of several runs (``(N runs)`` when
  seeds repeat).
  """
  settings = {}
  for run in runs:
    key = _setting(run)
    settings.setdefault(id(run) if key is None else key, []).append(run)
  members = list(settings.values())
  flagged = [m[0].flags for m in members if m[0].flags is not None]
  names = {n for f in flagged for n in f} - {SEED_FLAG}
  differ = sorted(n for n in names
                  if len({(n in f, f.get(n)) for f in flagged}) > 1)
  groups = []
  for group in members:
    first = group[0]
    label = ''
    if first.flags is not None:
      label = ' '.join(flag_text(n, first.flags[n]) for n in differ
                       if n in first.flags)
    if not label:
      label = first.name if len(group) == 1 else _common_name(group)
    if len(group) > 1:
      seeds = [(r.flags or {}).get(SEED_FLAG) for r in group]
      kind = 'seeds' if len(set(seeds)) == len(seeds) else 'runs'
      label = f'{label} ({len(group)} {kind})'
    groups.append(Group(label=label, runs=group))
  return groups


def _common_name(runs: list[Run]) -> str:
  """The folder names' common start, less a trailing seed number: run_s0,
  run_s1 give 'run_s'; the first name when nothing is shared."""
  prefix = os.path.commonprefix([r.name for r in runs]).rstrip('0123456789')
  return prefix.rstrip('_-. ') or runs[0].name


def direction(metric: str) -> str | None:
  """``'max'`` for accuracies, ``'min'`` for losses and errors, None when a
  metric's best value is not obvious (``epsilon``, counts)."""
  if 'accuracy' in metric:
    return 'max'
  if 'loss' in metric or 'error' in metric:
    return 'min'
  return None


def evaluation_metrics(runs: list[Run]) -> list[str]:
  """The metrics measured at evaluations: ``test_*`` and ``eval_*`` keys, and
  any other key that only some rounds have (``epsilon``)."""
  names = set()
  for run in runs:
    for name in run.metric_names() - set(BOOKKEEPING):
      if (name.startswith(('test_', 'eval_')) or
          not all(name in r for r in run.records)):
        names.add(name)
  return sorted(names)


def check_metrics(runs: list[Run], metrics) -> list[str]:
  """``metrics`` as a list, each one in at least one run.

  Raises:
    RunError: a metric that no run has, naming the ones they have.
  """
  metrics = list(metrics)
  present = set().union(*(r.metric_names() for r in runs))
  for metric in metrics:
    if metric not in present:
      raise RunError(f'metric {metric!r} is in none of the runs; they have: '
                     f'{", ".join(sorted(present))}.')
  return metrics


def run_cli(main: Callable[[list[str]], None]) -> None:
  """``app.run(main)``, where a bad flag or a :class:`RunError` prints one
  line, ``error: ...``, and exits with status 2; warnings go to stderr."""

  def parse(argv):
    try:
      return flags.FLAGS(argv)
    except flags.Error as e:
      print(f'error: {e}', file=sys.stderr)
      sys.exit(EXIT_USAGE)

  def main_exiting_on_error(argv):
    try:
      main(argv)
    except RunError as e:
      print(f'error: {e}', file=sys.stderr)
      sys.exit(EXIT_USAGE)

  # A skipped cut-off line is a warning the user should see, and nothing
  # less than a warning.
  flags.FLAGS.set_default('logtostderr', True)
  flags.FLAGS.set_default('verbosity', logging.WARNING)
  app.run(main_exiting_on_error, flags_parser=parse)
