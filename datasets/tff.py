"""TensorFlow Federated's published files: find or extract, open, read.

TFF publishes its federated datasets as ``.tar.bz2`` archives of h5 files laid
out as ``examples/<client_id>/<feature>``. These helpers fetch an archive
through :mod:`fedjax_engine.datasets.download`, extract only the expected
members, and read h5 groups with errors that name the file.
"""

import contextlib
import os
import tarfile
import tempfile
from typing import Iterable, Sequence

import h5py

from fedjax_engine.datasets import download


def extract_members(archive: str, names: Sequence[str], folder: str, *,
                    sha256: str | None) -> list[str]:
  """Extracts the regular files ``names`` (top level) of a tar archive.

  The archive is first checked against ``sha256`` (when given); only the
  listed members are read, each streamed to a temporary file in ``folder``
  and renamed to ``folder/<name>`` once complete. Links, folders, other
  members and path tricks are never written. Returns the extracted paths.
  """
  if sha256 is not None:
    actual = download.sha256_of(archive)
    if actual != sha256:
      raise ValueError(
          f'{archive} has sha256 {actual}, but the published archive has '
          f'{sha256}; delete it to download it again, or put the files '
          f'{", ".join(names)} themselves in {folder}.')
  wanted = set(names)
  done = {}
  seen = []
  try:
    with tarfile.open(archive, 'r|*') as tar:
      for member in tar:
        name = member.name[2:] if member.name.startswith('./') else member.name
        seen.append(member.name)
        if name not in wanted or name in done:
          continue
        if not member.isreg():
          raise ValueError(f'{archive}: member {member.name!r} is not a '
                           'regular file; refusing to extract it.')
        source = tar.extractfile(member)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix='.partial-',
                                   suffix='-' + name)
        try:
          written = 0
          with os.fdopen(fd, 'wb') as out:
            for block in iter(lambda: source.read(download.CHUNK), b''):
              out.write(block)
              written += len(block)
          if written != member.size:
            raise ValueError(f'{archive}: member {member.name!r} ended after '
                             f'{written} of {member.size} bytes.')
          path = os.path.join(folder, name)
          os.replace(tmp, path)
          done[name] = path
        finally:
          if os.path.exists(tmp):
            os.remove(tmp)
        if len(done) == len(wanted):
          break
  except (tarfile.TarError, EOFError, OSError) as e:
    raise ValueError(f'cannot extract {", ".join(sorted(wanted - set(done)))}'
                     f' from {archive} into {folder}: {e}') from e
  missing = [n for n in names if n not in done]
  if missing:
    raise ValueError(f'{archive} has no member {", ".join(missing)} (it holds '
                     f'{", ".join(seen[:10]) or "nothing"}).')
  return [done[n] for n in names]


def tff_files(names: Sequence[str], *, archive: str, url: str | None,
              sha256: str | None, data_dir: str | None,
              download_ok: bool) -> list[str]:
  """Paths of the files ``names`` of one published TFF archive.

  Each file is taken from ``data_dir`` (or the cache) when all of them are
  there; otherwise ``archive`` is found there (or downloaded into the cache
  through :func:`download.resolve`, checked against ``sha256``) and the files
  are extracted beside it with :func:`extract_members`.
  """
  paths, missing = [], []
  for name in names:
    try:
      paths.append(download.resolve(name, url=None, sha256=None,
                                    data_dir=data_dir, download=False))
    except FileNotFoundError:
      missing.append(name)
  if not missing:
    return paths
  try:
    archive_path = download.resolve(archive, url=url, sha256=sha256,
                                    data_dir=data_dir, download=download_ok)
  except FileNotFoundError as e:
    where = data_dir if data_dir is not None else download.cache_dir()
    raise FileNotFoundError(
        f'{", ".join(missing)} not found in {where}, nor the archive '
        f'{archive} that holds {"it" if len(missing) == 1 else "them"}: '
        f'{e}') from None
  return extract_members(archive_path, names, os.path.dirname(archive_path),
                         sha256=sha256)


@contextlib.contextmanager
def open_tff_h5(path: str):
  """Opens a TFF h5 file; yields its ``examples`` group.

  A truncated or corrupt file, a missing ``examples`` group, or a read that
  fails inside the ``with`` block raises one ValueError naming ``path``.
  """
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


def string_dataset(examples: h5py.Group, client_id: str, feature: str,
                   path: str) -> h5py.Dataset:
  """``examples/<client_id>/<feature>``, checked to be 1-D strings."""
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
