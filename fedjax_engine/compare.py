r"""A table of runs: each evaluation metric's final and best value.

  python -m fedjax_engine.compare /tmp/p/seed0 /tmp/p/seed1 /tmp/p/seed2 \
      [--metrics=test_accuracy,test_loss]

One row per run, or per group of runs whose ``flags.txt`` differ only by
``--seed`` (:mod:`fedjax_engine.run_reader`), with the rounds run and the
total wall time. A group shows the mean over its runs and their standard
deviation, ``mean ± std`` (numpy's, dividing by the number of runs). The
final value is the last evaluation's, NaN included; the best is the largest
accuracy or the smallest loss or error, NaNs aside, and ``-`` for a metric
with no better direction (``epsilon``). By default the metrics are the
evaluation ones: ``test_*`` and ``eval_*``, and any other that only some
rounds have. A bad folder or metric stops the command with one line and exit
status 2.

Example:

  >>> import os, tempfile
  >>> from fedjax_engine import run_dir
  >>> folder = os.path.join(tempfile.mkdtemp(), 'fedavg')
  >>> run_dir.prepare(folder)
  >>> with run_dir.MetricsFile(folder) as sink:
  ...   sink.write([{'round': 1, 'seconds': 2.0, 'test_accuracy': 0.5},
  ...               {'round': 2, 'seconds': 1.0, 'test_accuracy': 0.4}])
  >>> rows = compare_runs([folder])
  >>> rows[0]['metrics']['test_accuracy']['final']
  0.4
  >>> print(format_table(rows))
  run     rounds  seconds  metric          final    best
  fedavg       2      3.0  test_accuracy  0.4000  0.5000
"""

import math

from absl import flags
import numpy as np

from fedjax_engine import run_reader

_COLUMNS = ('run', 'rounds', 'seconds', 'metric', 'final', 'best')
_LEFT = ('run', 'metric')
_GAP = '  '


def _final_and_best(run: run_reader.Run, metric: str):
  """The last value and the best one (None without a direction)."""
  _, values = run.column(metric)
  known = [v for v in values if not math.isnan(v)]
  way = run_reader.direction(metric)
  if way is None:
    best = None
  elif not known:
    best = math.nan
  else:
    best = max(known) if way == 'max' else min(known)
  return values[-1], best


def _mean_std(values) -> tuple[float, float]:
  values = np.asarray(values, float)
  return float(values.mean()), float(values.std())


def compare_runs(run_dirs, *, metrics=None) -> list[dict]:
  """One dict per group of runs (see the module docstring).

  Args:
    run_dirs: run folders (a sweep's output folder stands for its runs).
    metrics: metric names; None or empty: the evaluation metrics.

  Returns:
    Per group, in first-seen order: ``label``, ``run_dirs``, ``runs`` (how
    many), ``rounds`` and ``seconds`` with ``rounds_std`` and
    ``seconds_std``, and ``metrics``: ``{name: {'final', 'final_std',
    'best', 'best_std'}}`` (``best`` and ``best_std`` None for a metric with
    no direction). Means and standard deviations are over the group's runs;
    a metric that some of them lack is left out of the group's.

  Raises:
    fedjax_engine.run_reader.RunError: a folder cannot be read or a metric
      is in none of the runs.
  """
  runs = run_reader.read_runs(run_dirs)
  if metrics:
    metrics = run_reader.check_metrics(runs, metrics)
  else:
    metrics = run_reader.evaluation_metrics(runs)
  rows = []
  for group in run_reader.group_by_seed(runs):
    rounds, rounds_std = _mean_std([r.rounds for r in group.runs])
    seconds, seconds_std = _mean_std([r.seconds for r in group.runs])
    row = {'label': group.label, 'run_dirs': [r.path for r in group.runs],
           'runs': len(group.runs), 'rounds': rounds,
           'rounds_std': rounds_std, 'seconds': seconds,
           'seconds_std': seconds_std, 'metrics': {}}
    for metric in metrics:
      if not all(metric in r.metric_names() for r in group.runs):
        continue
      finals, bests = zip(*(_final_and_best(r, metric) for r in group.runs))
      final, final_std = _mean_std(finals)
      best = best_std = None
      if bests[0] is not None:
        best, best_std = _mean_std(bests)
      row['metrics'][metric] = {'final': final, 'final_std': final_std,
                                'best': best, 'best_std': best_std}
    rows.append(row)
  return rows


def _number(mean, std, runs: int, digits: int) -> str:
  if mean is None:
    return '-'
  text = f'{mean:.{digits}f}'
  return f'{text} ± {std:.{digits}f}' if runs > 1 else text


def _rounds(row) -> str:
  if row['rounds_std'] == 0:
    return str(round(row['rounds']))
  return _number(row['rounds'], row['rounds_std'], row['runs'], 1)


def format_table(rows: list[dict], *, digits: int = 4) -> str:
  """:func:`compare_runs`'s rows as plain text in aligned columns: a line
  per metric, the run's label, rounds and seconds on its first line.

  Args:
    rows: :func:`compare_runs`'s result.
    digits: decimals of the metrics' values.
  """
  names = list(dict.fromkeys(m for row in rows for m in row['metrics']))
  cells = []
  for row in rows:
    for k, metric in enumerate(names or ['-']):
      values = row['metrics'].get(metric, {})
      first = k == 0
      cells.append({
          'run': row['label'] if first else '',
          'rounds': _rounds(row) if first else '',
          'seconds': (_number(row['seconds'], row['seconds_std'],
                              row['runs'], 1) if first else ''),
          'metric': metric,
          'final': _number(values.get('final'), values.get('final_std'),
                           row['runs'], digits),
          'best': _number(values.get('best'), values.get('best_std'),
                          row['runs'], digits),
      })
  widths = {c: max([len(c)] + [len(line[c]) for line in cells])
            for c in _COLUMNS}

  def text(line):
    return _GAP.join(line[c].ljust(widths[c]) if c in _LEFT
                     else line[c].rjust(widths[c])
                     for c in _COLUMNS).rstrip()

  header = text({c: c for c in _COLUMNS})
  return '\n'.join([header] + [text(line) for line in cells])


def _define_flags():
  """The command's flags; defined only when it runs, so that importing this
  module beside :mod:`fedjax_engine.plot` defines no flag twice."""
  flags.DEFINE_list('metrics', None, 'Metrics to show (default: the '
                    'evaluation metrics, test_*, eval_* and those only some '
                    'rounds have).')


def _main(argv):
  print(format_table(compare_runs(argv[1:], metrics=flags.FLAGS.metrics)))


def run():
  _define_flags()
  run_reader.run_cli(_main)


if __name__ == '__main__':
  run()
