"""Every notebook in colab/ runs top to bottom in its small setting.

Code cells are executed in one namespace, as a kernel would; shell and magic
lines (``!pip ...``, ``%pip ...``) are skipped since the package is installed.
"""

import json
import pathlib

import pytest

NOTEBOOKS = sorted((pathlib.Path(__file__).parent.parent / 'colab').glob(
    '*.ipynb'))


def test_there_are_notebooks():
  assert NOTEBOOKS, 'colab/ has no notebooks'


@pytest.mark.parametrize('path', NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs(path, monkeypatch, capsys):
  monkeypatch.setenv('FEDJAX_ENGINE_NOTEBOOK_SMALL', '1')
  cells = json.loads(path.read_text())['cells']
  namespace = {'__name__': '__main__'}
  for i, cell in enumerate(cells):
    if cell['cell_type'] != 'code':
      continue
    lines = [l for l in ''.join(cell['source']).splitlines()
             if not l.lstrip().startswith(('!', '%'))]
    exec(compile('\n'.join(lines), f'{path.name}[cell {i}]', 'exec'),
         namespace)
  assert 'test accuracy' in capsys.readouterr().out
