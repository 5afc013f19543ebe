"""One way to get a dataset file: a local path, the cache, or a checked download.

Every loader gets its files here: a single file from :func:`resolve`, the
files inside a published archive from :func:`archive_files`. A file is taken
from ``data_dir`` when one is given, else from the cache folder
(``$FEDJAX_ENGINE_DATA`` or ``~/.cache/fedjax_engine``), else downloaded from
its published URL into the cache: into a temporary file first, with a
progress bar, checked against a pinned sha256, and renamed to its final name
only when complete and correct. Without a network the error names the URL and
the path to put the file at.

Example:

  >>> import os, tempfile
  >>> folder = tempfile.mkdtemp()
  >>> with open(os.path.join(folder, 'a.bin'), 'wb') as f:
  ...   _ = f.write(b'abc')
  >>> path = resolve('a.bin', url='https://example.invalid/a.bin',
  ...                sha256=None, data_dir=folder)
  >>> os.path.basename(path)
  'a.bin'

Archives (TFF's ``.tar.bz2`` files) go through :func:`archive_files` and
:func:`extract`; CIFAR's ``.tar.gz`` pickles are read in place with
:func:`iter_archive`, which both use. One layout: a dataset's files live in
one folder, ``data_dir`` when given, else
``<cache>/<dataset>/``; its archive is looked for (or downloaded) in that
same folder, and the files extracted from it land beside it. Reading an
archive refuses member names that are absolute or hold ``..``, extracts
only regular files of the wanted names (matched by base name) and never
lets a member's name choose a path; extraction writes into a temporary
folder and moves the files into place only once all of them are complete.
"""

import hashlib
import http.client
import os
import posixpath
import shutil
import tarfile
import tempfile
from typing import BinaryIO, Iterator, Sequence
import urllib.error
import urllib.request

CACHE_ENV = 'FEDJAX_ENGINE_DATA'
CHUNK = 1 << 20


def cache_dir() -> str:
  """The download cache: ``$FEDJAX_ENGINE_DATA`` or ``~/.cache/fedjax_engine``."""
  return os.environ.get(CACHE_ENV) or os.path.join(
      os.path.expanduser('~'), '.cache', 'fedjax_engine')


def sha256_of(path: str) -> str:
  digest = hashlib.sha256()
  with open(path, 'rb') as f:
    for block in iter(lambda: f.read(CHUNK), b''):
      digest.update(block)
  return digest.hexdigest()


class DownloadError(RuntimeError):
  """A file could not be fetched, or was not what was expected."""


def fetch(url: str, path: str, *, sha256: str | None,
          progress: bool = True, timeout: float = 60.0) -> str:
  """Downloads ``url`` to ``path`` atomically, checking ``sha256``.

  The bytes go to a temporary file beside ``path``, which is renamed to
  ``path`` only after the whole body arrived and its checksum matched; an
  interrupted or corrupt download never leaves a file at ``path``.
  """
  folder = os.path.dirname(os.path.abspath(path))
  os.makedirs(folder, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=folder, prefix='.partial-',
                             suffix='-' + os.path.basename(path))
  received, total = 0, None
  try:
    with os.fdopen(fd, 'wb') as out:
      try:
        response = urllib.request.urlopen(url, timeout=timeout)
      except (urllib.error.URLError, OSError) as e:
        raise DownloadError(
            f'cannot download {url} ({e}). Without network access, download '
            f'it elsewhere and put it at {path}, or pass data_dir= '
            '(--data_dir) naming the folder that holds it.') from e
      with response:
        total = int(response.headers.get('Content-Length') or 0) or None
        bar = None
        if progress:
          from tqdm import auto as tqdm  # pylint: disable=g-import-not-at-top
          bar = tqdm.tqdm(total=total, unit='B', unit_scale=True,
                          desc=os.path.basename(path))
        try:
          for block in iter(lambda: response.read(CHUNK), b''):
            out.write(block)
            received += len(block)
            if bar is not None:
              bar.update(len(block))
        except (OSError, http.client.HTTPException) as e:
          raise DownloadError(
              f'download of {url} failed after {received} bytes ({e}); '
              f'nothing was saved at {path}.') from e
        finally:
          if bar is not None:
            bar.close()
    if total is not None and received != total:
      raise DownloadError(f'download of {url} stopped after {received} of '
                          f'{total} bytes; nothing was saved at {path}.')
    if sha256 is not None:
      actual = sha256_of(tmp)
      if actual != sha256:
        raise DownloadError(
            f'checksum mismatch for {url}: sha256 {actual}, expected '
            f'{sha256}; nothing was saved at {path}.')
    # mkstemp creates 0600 files; a shared cache should follow the umask.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    os.replace(tmp, path)
    return path
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def resolve(filename: str, *, url: str | None, sha256: str | None,
            data_dir: str | None = None, download: bool = True,
            progress: bool = True) -> str:
  """The local path of ``filename``, downloading it into the cache if needed.

  Args:
    filename: the file's name (as published).
    url: where it is published (None: no download; it must be local).
    sha256: the pinned checksum of the published file, checked after a
      download (a file the user placed is trusted as is).
    data_dir: a folder holding the file; when given, only it is searched and
      nothing is downloaded.
    download: allow downloading into the cache.
    progress: show a progress bar while downloading.
  """
  if data_dir is not None:
    path = os.path.join(data_dir, filename)
    if not os.path.isfile(path):
      where = f' It is published at {url}.' if url else ''
      raise FileNotFoundError(f'{filename} is not in data_dir {data_dir} '
                              f'(looked for {path}).{where}')
    return path
  path = os.path.join(cache_dir(), filename)
  if os.path.isfile(path):
    return path
  if url is None or not download:
    raise FileNotFoundError(
        f'{filename} is not in the cache ({path}) and downloading is '
        f'{"not possible: no published URL" if url is None else "off"}; '
        'pass data_dir= (--data_dir) naming the folder that holds it.')
  return fetch(url, path, sha256=sha256, progress=progress)



# ---------------------------------------------------------------------------
# Archives.


def _member_name(member: tarfile.TarInfo, archive: str) -> str:
  """The member's normalized name; an unsafe one refuses the archive."""
  name = member.name
  while name.startswith('./'):
    name = name[2:]
  if name.startswith('/') or '..' in name.split('/'):
    raise ValueError(f'{archive}: unsafe member name {member.name!r} '
                     '(absolute or with ..); refusing the archive.')
  return posixpath.normpath(name) if name else name


def _unreadable(archive: str, error: Exception) -> ValueError:
  return ValueError(f'{archive}: cannot read the archive (truncated or '
                    f'corrupt? delete it to fetch it again): {error}')


def iter_archive(archive: str, names: Sequence[str], *,
                 by_basename: bool = False
                 ) -> Iterator[tuple[str, BinaryIO]]:
  """Yields ``(name, file)`` for the members ``names`` of a tar archive.

  The archive is read once, streaming, to its end (any compression tar
  reads). A member matches by its normalized name (leading ``./``
  dropped), or with ``by_basename`` by its last component, so a file is
  found whatever folder the archive puts it in. Each wanted member is
  yielded once, in archive order, as a file to read before the next
  iteration; nothing is written to disk.

  Raises:
    ValueError naming the archive: it cannot be read (truncated or
    corrupt), a member's name is absolute or holds ``..``, a wanted
    member is not a regular file or appears twice, or one is missing.
  """
  wanted = set(names)
  found, seen = set(), []
  try:
    with tarfile.open(archive, 'r|*') as tar:
      for member in tar:
        name = _member_name(member, archive)
        seen.append(name)
        if by_basename:
          name = posixpath.basename(name)
        if name not in wanted:
          continue
        if not member.isfile():
          raise ValueError(f'{archive}: member {member.name!r} is not a '
                           'regular file; refusing to extract it.')
        if name in found:
          raise ValueError(f'{archive}: member {name!r} appears twice.')
        found.add(name)
        yield name, tar.extractfile(member)
  except (tarfile.TarError, EOFError, OSError) as e:
    if isinstance(e, FileNotFoundError):
      raise
    raise _unreadable(archive, e) from e
  missing = [n for n in names if n not in found]
  if missing:
    raise ValueError(f'{archive}: missing member(s) {", ".join(missing)} '
                     f'(it holds {", ".join(seen[:10]) or "nothing"}).')


def extract(archive: str, names: Sequence[str], folder: str) -> list[str]:
  """Extracts the regular files ``names`` of ``archive`` into ``folder``.

  Members are matched by base name (see :func:`iter_archive`) and written
  as ``folder/<name>``: the path comes from ``names``, never from the
  archive. All of them are written into a temporary folder inside
  ``folder`` first and moved into place only when every one is complete,
  so a failure leaves none of them behind. Returns the paths, in the order
  of ``names``.
  """
  try:
    os.makedirs(folder, exist_ok=True)
    scratch = tempfile.mkdtemp(dir=folder, prefix='.partial-')
  except OSError as e:
    raise ValueError(f'cannot extract {", ".join(names)} from {archive} into '
                     f'{folder}: {e}') from e
  try:
    for name, source in iter_archive(archive, names, by_basename=True):
      try:
        with source, open(os.path.join(scratch, name), 'wb') as out:
          shutil.copyfileobj(source, out, CHUNK)
      except (tarfile.TarError, EOFError) as e:   # the member's data ends early
        raise _unreadable(archive, e) from e
      except OSError as e:       # a corrupt compressed stream, or a full disk
        raise ValueError(f'cannot extract {name} from {archive} into '
                         f'{folder}: {e}') from e
    paths = []
    for name in names:
      path = os.path.join(folder, name)
      os.replace(os.path.join(scratch, name), path)
      paths.append(path)
    return paths
  finally:
    shutil.rmtree(scratch, ignore_errors=True)


def check_sha256(path: str, sha256: str | None):
  """Raises a ValueError naming ``path`` when its sha256 is not ``sha256``."""
  if sha256 is None:
    return
  actual = sha256_of(path)
  if actual != sha256:
    raise ValueError(f'{path} has sha256 {actual}, but the published file '
                     f'has {sha256}; delete it to download it again.')


def archive_files(names: Sequence[str], *, archive: str, url: str | None,
                  sha256: str | None, cache_subdir: str,
                  data_dir: str | None = None, download: bool = True,
                  progress: bool = True) -> list[str]:
  """Paths of the files ``names`` published inside ``archive``.

  The folder is ``data_dir`` when given, else ``<cache>/<cache_subdir>``.
  When every file is there, they are used as they are. Otherwise the
  archive is taken from that folder (and checked against ``sha256``), or,
  without ``data_dir``, downloaded into it from ``url`` (checked while it
  is saved), and all of ``names`` are extracted beside it with
  :func:`extract`; later calls find them there.

  Raises:
    FileNotFoundError: neither the files nor the archive are there and
      nothing may be downloaded (the message names the folder, the files
      and the archive's path and URL).
    DownloadError: the download failed or its checksum did not match.
    ValueError: a local archive's checksum does not match, or the archive
      is unreadable or lacks a member (see :func:`iter_archive`).
  """
  folder = (data_dir if data_dir is not None
            else os.path.join(cache_dir(), cache_subdir))
  paths = [os.path.join(folder, name) for name in names]
  missing = [n for n, p in zip(names, paths) if not os.path.isfile(p)]
  if not missing:
    return paths
  archive_path = os.path.join(folder, archive)
  if os.path.isfile(archive_path):
    check_sha256(archive_path, sha256)
  elif data_dir is None and url is not None and download:
    fetch(url, archive_path, sha256=sha256, progress=progress)
  else:
    where = (f'data_dir {folder}' if data_dir is not None
             else f'the cache {folder}')
    held = 'it' if len(missing) == 1 else 'them'
    if data_dir is not None:
      published = f' (published at {url})' if url else ''
      advice = f'put the files or the archive{published} there.'
    elif url is None:
      advice = ('there is no published URL to download it from; pass '
                'data_dir= (--data_dir) naming a folder that holds them.')
    else:
      advice = ('downloading is off; allow it, or pass data_dir= '
                '(--data_dir) naming a folder that holds them.')
    others = ''.join(f', nor is {name}' for name in missing[1:])
    raise FileNotFoundError(
        f'{missing[0]} is not in {where}{others}, nor is the archive that '
        f'holds {held} ({archive_path}); {advice}')
  return extract(archive_path, names, folder)
