"""The API reference: docs/API.md is current and every public name has an
example that the doctests of test_packaging.py run."""

import doctest
import importlib.util
import pathlib
import re
import sys
import types

import fedjax_engine as fe

REPO = pathlib.Path(__file__).resolve().parents[1]


def _load_make_api():
  spec = importlib.util.spec_from_file_location(
      'make_api', REPO / 'docs' / 'make_api.py')
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


make_api = _load_make_api()


def test_api_reference_is_current(capsys):
  status = make_api.main(['--check'])
  assert status == 0, capsys.readouterr().err


def _examples(docstring):
  return doctest.DocTestParser().get_examples(docstring or '')


def has_example(name, value):
  """Whether the top-level name ``name`` (bound to ``value``) has an example.

  A module needs a ``>>>`` example in its own docstring. A function or class
  needs one in its own docstring, or in the docstring of the module that
  defines it, with ``name`` as a whole word in the example's source (the
  module ``simulate``'s example calls ``make_round``). Either way the
  example is a doctest of a module of the package, which
  test_packaging.test_docstring_examples runs.
  """
  if isinstance(value, types.ModuleType):
    return bool(_examples(value.__doc__))
  # __doc__ itself, not inspect.getdoc: that falls back to a base class's.
  if _examples(value.__doc__):
    return True
  module = sys.modules[value.__module__]
  word = re.compile(rf'\b{re.escape(name)}\b')
  return any(word.search(example.source)
             for example in _examples(module.__doc__))


def test_every_public_name_has_an_example():
  names = make_api.top_level_names()
  assert 'make_round' in names and 'algorithms' in names
  missing = [name for name in names
             if not has_example(name, getattr(fe, name))]
  assert not missing, (
      f'{len(missing)} public names of fedjax_engine have no >>> example in '
      f'their docstring (or, for a function or class, in an example of '
      f'their module docstring that uses them): {", ".join(missing)}')


def test_has_example_rule():
  # Its own docstring; its module's example naming it; neither.
  assert has_example('Cohort', type(
      'Cohort', (), {'__doc__': '>>> 1\n1\n', '__module__': 'fedjax_engine'}))
  assert has_example('make_round', fe.make_round)
  undocumented = types.FunctionType(
      (lambda: None).__code__, {}, 'make_round_of_sorts')
  undocumented.__module__ = 'fedjax_engine.simulate'
  assert not has_example('make_round_of_sorts', undocumented)
  assert not has_example('empty', types.ModuleType('empty', 'No example.'))
