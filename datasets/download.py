"""One way to get a dataset file: a local path, the cache, or a checked download.

Every loader gets its files here: a single file from :func:`resolve`, the
files inside a published archive from :func:`archive_files`. A file is taken
from ``data_dir`` when one is given, else from the cache folder
(``$FEDJAX_ENGINE_DATA`` or ``~/.cache/fedjax_engine``), else downloaded from
its published URL into the cache by pooch (:func:`pooch.retrieve`): into a
temporary file first, with a progress bar, checked against a pinned sha256,
and renamed to its final name only when complete and correct. Without a
network the error names the URL and the path to put the file at.

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
That part is ours, not pooch's ``Untar``: on Python 3.11 ``Untar`` extracts
with no tarfile filter (``..``, absolute names and links are written as
they are), keeps the archive's folders, says nothing of a missing member and
writes each member straight to its final path.
"""

import os
import posixpath
import shutil
import tarfile
import tempfile
from typing import BinaryIO, Iterator, Sequence

import pooch

CACHE_ENV = 'FEDJAX_ENGINE_DATA'
CHUNK = 1 << 20


def cache_dir() -> str:
  """The download cache: ``$FEDJAX_ENGINE_DATA`` or ``~/.cache/fedjax_engine``."""
  return os.environ.get(CACHE_ENV) or os.path.join(
      os.path.expanduser('~'), '.cache', 'fedjax_engine')


def sha256_of(path: str) -> str:
  return pooch.file_hash(path, alg='sha256')


class DownloadError(RuntimeError):
  """A file could not be fetched, or was not what was expected."""


class _Progress:
  """The progress bar pooch's downloader drives, named after the file.

  pooch's HTTPDownloader sets ``total`` from Content-Length once a response
  arrived (0 without one), then calls ``update``, ``reset`` and ``close``;
  the bar opens then, so a failed connection shows none.
  """

  def __init__(self, desc: str):
    self._desc = desc
    self._bar = None

  def _open(self, total: int):
    from tqdm import auto as tqdm  # pylint: disable=g-import-not-at-top
    self._bar = tqdm.tqdm(total=total or None, unit='B', unit_scale=True,
                          desc=self._desc)

  total = property(fset=_open)

  def update(self, n: int):
    self._bar.update(n)

  def reset(self):
    self._bar.reset()

  def close(self):
    if self._bar is not None:
      self._bar.close()


def fetch(url: str, path: str, *, sha256: str | None,
          progress: bool = True, timeout: float = 60.0) -> str:
  """Downloads ``url`` to ``path`` atomically with pooch, checking ``sha256``.

  pooch streams the bytes to a temporary file beside ``path`` and renames it
  to ``path`` only after the whole body arrived (requests refuses a body
  shorter than its Content-Length) and its checksum matched; a failed,
  interrupted or corrupt download never leaves a file at ``path``, nor a
  temporary one. A file already at ``path`` is kept when it matches
  ``sha256`` (pooch's rule) and replaced the same way when it does not.
  """
  # requests comes with pooch; imported here because only a download needs
  # it and importing it costs about 0.1 s.
  import requests  # pylint: disable=g-import-not-at-top
  folder, name = os.path.split(os.path.abspath(path))
  bar = _Progress(name) if progress else False
  # The last response requests received (after redirects), kept to report
  # how much of its body came: the file undercounts, as the bytes of a chunk
  # cut short never reach it.
  responses = []
  http = pooch.HTTPDownloader(
      progressbar=bar, chunk_size=CHUNK, timeout=timeout,
      hooks={'response': lambda response, **_: responses.append(response)})

  def download(source: str, tmp: str, pup):
    try:
      http(source, tmp, pup)
    except requests.RequestException as e:
      raise _failure(url, path, responses[-1] if responses else None,
                     e) from e
    finally:
      if bar:
        bar.close()
    # pooch's temporary file is 0600 and is renamed as it is; a shared cache
    # should follow the umask, and setting it before the rename keeps the
    # file from ever being visible at ``path`` with other permissions.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)

  try:
    pooch.retrieve(url, fname=name, path=folder, downloader=download,
                   known_hash=None if sha256 is None else f'sha256:{sha256}')
  except ValueError as e:  # pooch's checksum check, naming both hashes
    raise DownloadError(f'checksum mismatch for {url}: {e} Nothing was saved '
                        f'at {path}.') from e
  return path


def _failure(url: str, path: str, response, error: Exception
             ) -> DownloadError:
  """The error for a download that failed before or while its body came."""
  if response is None or not response.ok:   # offline, refused, or HTTP error
    return DownloadError(
        f'cannot download {url} ({error}). Without network access, download '
        f'it elsewhere and put it at {path}, or pass data_dir= (--data_dir) '
        'naming the folder that holds it.')
  total = int(response.headers.get('Content-Length') or 0)
  received = response.raw.tell()           # bytes off the wire, as sent
  if received < total:
    return DownloadError(
        f'download of {url} stopped after {received} of {total} bytes '
        f'({error}); nothing was saved at {path}.')
  return DownloadError(f'download of {url} failed after {received} bytes '
                       f'({error}); nothing was saved at {path}.')


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
