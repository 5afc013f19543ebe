"""Writes docs/API.md, the API reference, from the package's docstrings.

The public API is what ``fedjax_engine/__init__.py`` re-exports: the names
it imports as themselves (``from m import x as x``). The reference has one
section per module: the module's docstring, then the signature and
docstring of each public name it defines. A re-exported module (``tree``,
``transforms``, the ``algorithms`` package, ...) is documented whole: every
public function and class it defines (a package: every name in its
``__all__``, a submodule there getting a section of its own); for any other
module, only the names re-exported at the top level.

Usage:
  python docs/make_api.py           # rewrites docs/API.md
  python docs/make_api.py --check   # exits 1 when docs/API.md is stale
"""

import ast
import inspect
import pathlib
import re
import sys
import types

import fedjax_engine

OUTPUT = pathlib.Path(__file__).resolve().parent / 'API.md'
PACKAGE = fedjax_engine.__name__


def top_level_names():
  """The names ``fedjax_engine/__init__.py`` re-exports, in its order.

  Read from the source rather than the package's namespace: importing a
  submodule also binds it there (``fedjax_engine.simulate``), which does
  not make it public.
  """
  source = pathlib.Path(inspect.getfile(fedjax_engine)).read_text()
  names = []
  for node in ast.parse(source).body:
    if isinstance(node, ast.ImportFrom):
      names += [a.name for a in node.names
                if a.asname == a.name and not a.name.startswith('_')]
  return names


def module_members(module):
  """A re-exported module's public names: its ``__all__``, or else the
  functions and classes defined in it whose names do not start with ``_``."""
  if hasattr(module, '__all__'):
    return list(module.__all__)
  return [name for name, value in vars(module).items()
          if not name.startswith('_')
          and (inspect.isfunction(value) or inspect.isclass(value))
          and value.__module__ == module.__name__]


def sections():
  """``[(module, [(qualified name, object), ...])]`` in first-mention order.

  A name reachable at the top level is listed under that name.
  """
  top = {name: getattr(fedjax_engine, name) for name in top_level_names()}
  short = {id(value): f'{PACKAGE}.{name}' for name, value in top.items()}
  entries = {}   # module name -> (module, {qualified name: object})

  def add_module(module):
    if module.__name__ in entries:
      return
    members = {}
    entries[module.__name__] = (module, members)
    for name in module_members(module):
      value = getattr(module, name)
      if isinstance(value, types.ModuleType):
        add_module(value)
      else:
        members[short.get(id(value), f'{module.__name__}.{name}')] = value

  for name, value in top.items():
    if isinstance(value, types.ModuleType):
      add_module(value)
    else:
      module = sys.modules[value.__module__]
      entries.setdefault(module.__name__, (module, {}))
      entries[module.__name__][1][f'{PACKAGE}.{name}'] = value
  return [(module, list(members.items()))
          for module, members in entries.values()]


def _default(value):
  """A default value as source-like text. A repr holding a memory address
  is cut to the type's name, so the output is the same from run to run."""
  if inspect.isfunction(value) or inspect.isclass(value):
    return value.__qualname__
  text = repr(value)
  if re.search(r' at 0x[0-9a-fA-F]+', text):
    return f'{type(value).__name__}(...)'
  return text


class _Literal:
  """Shows a default value's prepared text as it is."""

  def __init__(self, text):
    self.text = text

  def __repr__(self):
    return self.text


def signature(name, obj, *, method=False):
  """``name(params)`` with readable annotations and stable defaults; a
  method's ``self`` (or ``cls``) left out."""
  try:
    sig = inspect.signature(obj)
  except (TypeError, ValueError):
    return name
  params = [p.replace(default=_Literal(_default(p.default)))
            if p.default is not p.empty else p
            for p in sig.parameters.values()][1 if method else 0:]
  text = str(sig.replace(parameters=params))
  return name + re.sub(r'\btyping\.', '', text)


def _methods(cls):
  """``(name, function or property, whether it takes self or cls)`` for the
  public methods and properties a class defines itself."""
  for name, value in vars(cls).items():
    if name.startswith('_') and name != '__call__':
      continue
    if isinstance(value, staticmethod):
      yield name, value.__func__, False
    elif isinstance(value, classmethod):
      yield name, value.__func__, True
    elif inspect.isfunction(value) or isinstance(value, property):
      yield name, value, True


class _Anchors:
  """The anchors GitHub gives headings, in document order: the lowercased
  text without punctuation, ``-N`` appended to the N-th repeat (the module
  ``fedjax_engine.model`` and the class ``fedjax_engine.Model`` share one)."""

  def __init__(self, *earlier_headings):
    self._seen = {}
    for heading in earlier_headings:
      self(heading)

  def __call__(self, heading):
    slug = re.sub(r'[^\w\- ]', '', heading.lower()).replace(' ', '-')
    count = self._seen.get(slug, 0)
    self._seen[slug] = count + 1
    return f'{slug}-{count}' if count else slug


def _docstring(obj):
  """An object's own docstring as a block; ``inspect.getdoc`` is not used
  because it gives a class without one its base class's."""
  if not obj.__doc__:
    return []
  return ['```text', inspect.cleandoc(obj.__doc__), '```', '']


def render():
  """The text of docs/API.md."""
  anchors = _Anchors('API reference', 'Contents')
  contents, body = [], []

  def heading(level, title, listed=True):
    anchor = anchors(title)
    if listed:
      indent = '  ' * (level - 2)
      contents.append(f'{indent}- [{title}](#{anchor})')
    body.extend(['#' * level + ' ' + title, ''])

  for module, members in sections():
    heading(2, f'`{module.__name__}`')
    body.extend(_docstring(module))
    for name, obj in members:
      heading(3, f'`{name}`')
      body.extend(['```python', signature(name, obj), '```', ''])
      body.extend(_docstring(obj))
      if inspect.isclass(obj):
        for method, fn, bound in _methods(obj):
          title = f'{name}.{method}'
          if isinstance(fn, property):
            heading(4, f'`{title}` (property)', listed=False)
          else:
            heading(4, f'`{title}`', listed=False)
            body.extend(['```python', signature(title, fn, method=bound),
                         '```', ''])
          body.extend(_docstring(fn))
  lines = ['# API reference', '',
           '<!-- Generated from the docstrings by docs/make_api.py; do not '
           'edit. -->', '',
           'The public API of `fedjax_engine`, grouped by the module that '
           'defines each name; a name is reached as its heading spells it. '
           'The `>>>` examples run as doctests in the test suite.', '',
           '## Contents', ''] + contents + [''] + body
  return '\n'.join(lines).rstrip('\n') + '\n'


def main(args):
  """Writes docs/API.md, or with ``['--check']`` returns 1 if it is stale."""
  text = render()
  if args == ['--check']:
    if not OUTPUT.exists() or OUTPUT.read_text() != text:
      print(f'{OUTPUT} is stale: run python docs/make_api.py',
            file=sys.stderr)
      return 1
    return 0
  if args:
    print(__doc__, file=sys.stderr)
    return 2
  OUTPUT.write_text(text)
  return 0


if __name__ == '__main__':
  sys.exit(main(sys.argv[1:]))
