r"""Pictures of runs' metrics, per round or per second of wall time.

  python -m fedjax_engine.plot /tmp/p/seed0 /tmp/p/seed1 /tmp/p/seed2 \
      --out=plot.png [--x=round|seconds] [--metrics=test_accuracy,train_loss]
  python -m fedjax_engine.plot runs/sweep --out=plot.png   # a sweep's runs

Each metric gets a panel. Runs whose ``flags.txt`` differ only by ``--seed``
are one line, their mean, with the range from their minimum to their maximum
shaded; other runs are a line each. Lines are labeled by the flags that differ
between them, or by their folder's name (:mod:`fedjax_engine.run_reader`).
A group's line covers the rounds that all of its runs have. With
``--x=seconds`` a point sits at the cumulative wall time of its round (the
mean over a group's runs); the first round's time includes compiling. By
default the panels are the metrics whose names end in ``accuracy`` or
``loss``. A bad folder or metric stops the command with one line and exit
status 2.

Example:

  >>> import os, tempfile
  >>> from fedjax_engine import run_dir
  >>> folder = tempfile.mkdtemp()
  >>> with run_dir.MetricsFile(folder) as sink:
  ...   sink.write([{'round': 1, 'seconds': 0.5, 'train_loss': 0.9},
  ...               {'round': 2, 'seconds': 0.25, 'train_loss': 0.7,
  ...                'test_accuracy': 0.6}])
  >>> path = plot_runs([folder], out=os.path.join(folder, 'plot.png'))
  >>> os.path.getsize(path) > 0
  True
  >>> [(s.x.tolist(), s.y.tolist())
  ...  for s in series([folder], x='seconds')['train_loss']]
  [([0.5, 0.75], [0.9, 0.7])]
"""

import dataclasses
import math
import os

from absl import flags
from matplotlib import figure
from matplotlib.backends import backend_agg
import numpy as np

from fedjax_engine import run_reader

X_AXES = ('round', 'seconds')
_X_LABELS = {'round': 'round',
             'seconds': 'seconds (cumulative wall time)'}
_MAX_COLUMNS = 3
_PANEL_WIDTH, _PANEL_HEIGHT, _DPI = 5.5, 4.0, 100
# Longer lines show their points' markers as a smear.
_MARKED_POINTS = 50


@dataclasses.dataclass(frozen=True)
class Series:
  """A line of one panel: a run's values, or the mean over a group's runs.

  Attributes:
    label: the legend's text.
    x: rounds, or cumulative seconds.
    y: the values (the mean over the runs).
    low, high: the least and greatest value over the runs at each point
      (``y`` itself for a single run).
    runs: how many runs the line stands for.
  """
  label: str
  x: np.ndarray
  y: np.ndarray
  low: np.ndarray
  high: np.ndarray
  runs: int


def default_metrics(runs: list[run_reader.Run]) -> list[str]:
  """The metrics whose names end in ``accuracy`` or ``loss``, accuracies
  first."""
  names = set().union(*(r.metric_names() for r in runs))
  chosen = [n for n in names if n.endswith(('accuracy', 'loss'))]
  return sorted(chosen, key=lambda n: (not n.endswith('accuracy'), n))


def series(run_dirs, *, x: str = 'round',
           metrics=None) -> dict[str, list[Series]]:
  """What :func:`plot_runs` draws: ``{metric: [line, ...]}``, in order.

  Args:
    run_dirs: run folders (a sweep's output folder stands for its runs).
    x: ``'round'`` or ``'seconds'`` (cumulative wall time).
    metrics: metric names; None or empty: :func:`default_metrics`.

  Raises:
    fedjax_engine.run_reader.RunError: a folder cannot be read, a metric is
      in none of the runs, or ``x`` is neither option.
  """
  if x not in X_AXES:
    raise run_reader.RunError(f'x must be one of {", ".join(X_AXES)}; got '
                              f'{x!r}.')
  runs = run_reader.read_runs(run_dirs)
  if metrics:
    metrics = run_reader.check_metrics(runs, metrics)
  else:
    metrics = default_metrics(runs)
    if not metrics:
      names = sorted(set().union(*(r.metric_names() for r in runs)))
      raise run_reader.RunError(
          'the runs have no metric named *accuracy or *loss; choose metrics '
          f'among: {", ".join(names)}.')
  groups = run_reader.group_by_seed(runs)
  drawn = {}
  for metric in metrics:
    lines = (_line(group, metric, x) for group in groups)
    drawn[metric] = [line for line in lines if line is not None]
  return drawn


def _line(group: run_reader.Group, metric: str, x: str) -> Series | None:
  """The group's mean over the rounds where all its runs have ``metric``."""
  columns = [dict(zip(*run.column(metric))) for run in group.runs]
  rounds = sorted(set.intersection(*(set(c) for c in columns)))
  if not rounds:
    return None
  values = np.array([[c[r] for r in rounds] for c in columns])
  if x == 'round':
    xs = np.array(rounds)
  else:
    elapsed = [run.elapsed() for run in group.runs]
    xs = np.mean([[e[r] for r in rounds] for e in elapsed], axis=0)
  return Series(label=group.label, x=xs, y=values.mean(axis=0),
                low=values.min(axis=0), high=values.max(axis=0),
                runs=len(group.runs))


def plot_runs(run_dirs, *, out: str, x: str = 'round', metrics=None) -> str:
  """Draws the runs' metrics into the picture ``out`` and returns its path.

  Args:
    run_dirs: run folders (a sweep's output folder stands for its runs).
    out: the picture's path; its extension picks the format (``.png``).
    x: ``'round'`` or ``'seconds'`` (cumulative wall time).
    metrics: metric names, a panel each; None or empty:
      :func:`default_metrics`.

  Raises:
    fedjax_engine.run_reader.RunError: see :func:`series`; or ``out``
      cannot be written.
  """
  drawn = series(run_dirs, x=x, metrics=metrics)
  columns = min(len(drawn), _MAX_COLUMNS)
  rows = math.ceil(len(drawn) / columns)
  # A figure of its own, not pyplot's: no global backend is chosen or changed.
  fig = figure.Figure(figsize=(_PANEL_WIDTH * columns, _PANEL_HEIGHT * rows),
                      dpi=_DPI, layout='constrained')
  backend_agg.FigureCanvasAgg(fig)
  axes = fig.subplots(rows, columns, squeeze=False).ravel()
  # A run keeps its colour in every panel, even where others have no line.
  labels = list(dict.fromkeys(s.label for lines in drawn.values()
                              for s in lines))
  colors = {label: f'C{k % 10}' for k, label in enumerate(labels)}
  for ax, (metric, lines) in zip(axes, drawn.items()):
    for s in lines:
      ax.plot(s.x, s.y, label=s.label, color=colors[s.label],
              marker='.' if len(s.x) <= _MARKED_POINTS else None)
      if s.runs > 1:
        ax.fill_between(s.x, s.low, s.high, color=colors[s.label],
                        alpha=0.2, linewidth=0)
    ax.set_title(metric)
    ax.set_xlabel(_X_LABELS[x])
    ax.grid(alpha=0.3)
  for ax in axes[len(drawn):]:
    ax.set_visible(False)
  legend_at = next((ax for ax, lines in zip(axes, drawn.values()) if lines),
                   None)
  if legend_at is not None:
    legend_at.legend(fontsize='small')
  if any(s.runs > 1 for lines in drawn.values() for s in lines):
    fig.suptitle('lines: mean over seeds; shaded: their minimum to maximum',
                 fontsize='small')
  try:
    fig.savefig(out)
  except (OSError, ValueError) as e:
    raise run_reader.RunError(f'cannot write {out}: {e}') from None
  return os.fspath(out)


def _define_flags():
  """The command's flags; defined only when it runs, so that importing this
  module beside :mod:`fedjax_engine.compare` defines no flag twice."""
  flags.DEFINE_string('out', None, 'Where the picture goes (.png).')
  flags.DEFINE_enum('x', 'round', X_AXES, 'The horizontal axis: rounds, or '
                    'cumulative seconds of wall time.')
  flags.DEFINE_list('metrics', None, 'Metrics to draw, a panel each '
                    '(default: those named *accuracy or *loss).')
  flags.mark_flag_as_required('out')


def _main(argv):
  path = plot_runs(argv[1:], out=flags.FLAGS.out, x=flags.FLAGS.x,
                   metrics=flags.FLAGS.metrics)
  print(f'wrote {path}')


def run():
  _define_flags()
  run_reader.run_cli(_main)


if __name__ == '__main__':
  run()
