"""TensorFlow Federated's published h5 files: open and read them.

TFF publishes its federated datasets as ``.tar.bz2`` archives of h5 files laid
out as ``examples/<client_id>/<feature>``; the archives are fetched and
extracted by :func:`fedjax_engine.datasets.download.archive_files`. These
helpers read the h5 groups with errors that name the file.
"""

import contextlib
from typing import Iterable



@contextlib.contextmanager
def open_tff_h5(path: str):
  """Opens a TFF h5 file; yields its ``examples`` group.

  A truncated or corrupt file, a missing ``examples`` group, or a read that
  fails inside the ``with`` block raises one ValueError naming ``path``.
  """
  # h5py is imported where it is used: it adds 11 MB to every process that
  # imports the engine.
  import h5py  # pylint: disable=g-import-not-at-top
  try:
    f = h5py.File(path, 'r')
  except FileNotFoundError:
    raise
  except OSError as e:
    raise ValueError(f'{path} is not a readable HDF5 file (truncated or '
                     f'corrupt?): {e}') from e
  with f:
    examples = f.get('examples')
    if not isinstance(examples, h5py.Group):
      raise ValueError(f'{path} has no "examples" group; a TensorFlow '
                       'Federated h5 file holds '
                       'examples/<client_id>/<feature>.')
    try:
      yield examples
    except (OSError, RuntimeError, KeyError) as e:   # h5py on a bad file
      raise ValueError(f'cannot read {path} (truncated or corrupt?): '
                       f'{e}') from e


def client_ids_of(path: str) -> list[str]:
  """The client ids of a TFF h5 file, sorted (TFF's order)."""
  with open_tff_h5(path) as examples:
    return sorted(examples.keys())


def union_client_ids(paths: Iterable[str]) -> list[str]:
  """The sorted union of the client ids of several TFF h5 files."""
  ids = set()
  for path in paths:
    ids.update(client_ids_of(path))
  return sorted(ids)


def string_dataset(examples: 'h5py.Group', client_id: str, feature: str,
                   path: str) -> 'h5py.Dataset':
  """``examples/<client_id>/<feature>``, checked to be 1-D strings."""
  import h5py  # pylint: disable=g-import-not-at-top
  group = examples[client_id]
  if not isinstance(group, h5py.Group) or feature not in group:
    raise ValueError(f'{path}: client {client_id!r} has no {feature!r} '
                     f'dataset (examples/{client_id}/{feature}).')
  ds = group[feature]
  if (not isinstance(ds, h5py.Dataset) or ds.ndim != 1 or
      (ds.dtype.kind != 'S' and h5py.check_string_dtype(ds.dtype) is None)):
    raise ValueError(f'{path}: examples/{client_id}/{feature} must be a 1-D '
                     f'array of strings, got {getattr(ds, "dtype", ds)} '
                     f'{getattr(ds, "shape", "")}.')
  return ds


# ---------------------------------------------------------------------------
# The loader.
