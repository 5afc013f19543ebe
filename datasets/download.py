"""One way to get a dataset file: a local path, the cache, or a checked download.

Every loader asks :func:`resolve` for its files. A file is taken from
``data_dir`` when one is given, else from the cache folder
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
"""

import hashlib
import http.client
import os
import tempfile
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

