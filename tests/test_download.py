"""Tests for fedjax_engine.datasets.download against a local HTTP server.

The server runs on 127.0.0.1 on an ephemeral port in a background thread and
serves routes that behave well or badly (wrong bytes, a body shorter than its
Content-Length, 404, a stalled body). Every request the client makes is
bounded: by the server closing the connection, or by ``fetch``'s timeout.
"""

import gzip
import hashlib
import http.server
import os
import socket
import threading

import pytest

from fedjax_engine.datasets import download
from test_cifar import write_tar

BODY = b'fedjax-engine test payload\n' * 100        # 2,700 bytes
BODY_SHA256 = hashlib.sha256(BODY).hexdigest()


class _Handler(http.server.BaseHTTPRequestHandler):
  protocol_version = 'HTTP/1.0'  # one request per connection, then close

  def log_message(self, *args):  # keep pytest output clean
    del args

  def do_GET(self):  # pylint: disable=invalid-name
    server = self.server
    server.hits.append(self.path)
    route = server.routes.get(self.path)
    if route is None:
      self.send_error(404)
      return
    mode, body = route
    self.send_response(200)
    if mode == 'ok':
      self.send_header('Content-Length', str(len(body)))
      self.end_headers()
      self.wfile.write(body)
    elif mode == 'short':       # promises more bytes than it sends, closes
      self.send_header('Content-Length', str(len(body) * 10))
      self.end_headers()
      self.wfile.write(body)
    elif mode == 'gzip':        # compresses on the wire when allowed to
      if 'gzip' in self.headers.get('Accept-Encoding', ''):
        body = gzip.compress(body)
        self.send_header('Content-Encoding', 'gzip')
      self.send_header('Content-Length', str(len(body)))
      self.end_headers()
      self.wfile.write(body)
    elif mode == 'stall':       # sends part of the body, then goes silent
      self.send_header('Content-Length', str(len(body) * 10))
      self.end_headers()
      self.wfile.write(body)
      self.wfile.flush()
      server.release.wait(timeout=5.0)
    self.close_connection = True


class _Server:
  """A ThreadingHTTPServer on 127.0.0.1:<ephemeral> with settable routes."""

  def __init__(self):
    self.httpd = http.server.ThreadingHTTPServer(('127.0.0.1', 0), _Handler)
    self.httpd.daemon_threads = True
    self.httpd.routes = {}
    self.httpd.hits = []
    self.httpd.release = threading.Event()
    self.port = self.httpd.server_address[1]
    self.thread = threading.Thread(target=self.httpd.serve_forever,
                                   kwargs={'poll_interval': 0.05}, daemon=True)
    self.thread.start()
    self.running = True

  def url(self, path):
    return f'http://127.0.0.1:{self.port}{path}'

  def route(self, path, body=BODY, mode='ok'):
    self.httpd.routes[path] = (mode, body)
    return self.url(path)

  @property
  def hits(self):
    return list(self.httpd.hits)

  def stop(self):
    if self.running:
      self.httpd.release.set()
      self.httpd.shutdown()
      self.httpd.server_close()
      self.thread.join(timeout=5.0)
      self.running = False


@pytest.fixture
def server():
  s = _Server()
  try:
    yield s
  finally:
    s.stop()


@pytest.fixture
def cache(tmp_path, monkeypatch):
  folder = tmp_path / 'cache'
  monkeypatch.setenv(download.CACHE_ENV, str(folder))
  return folder


def _refused_url():
  """A URL on a local port where nothing listens."""
  s = socket.socket()
  s.bind(('127.0.0.1', 0))
  port = s.getsockname()[1]
  s.close()
  return f'http://127.0.0.1:{port}/gone.bin'


def _files(folder):
  """Every file under ``folder`` (hidden partial files included)."""
  if not os.path.isdir(folder):
    return []
  return sorted(os.path.relpath(os.path.join(d, f), folder)
                for d, _, names in os.walk(folder) for f in names)


def _open_fds():
  return len(os.listdir('/proc/self/fd'))


def test_cache_dir_default_and_env(monkeypatch, tmp_path):
  monkeypatch.delenv(download.CACHE_ENV, raising=False)
  monkeypatch.setenv('HOME', str(tmp_path))
  assert download.cache_dir() == os.path.join(
      str(tmp_path), '.cache', 'fedjax_engine')
  monkeypatch.setenv(download.CACHE_ENV, '/some/where')
  assert download.cache_dir() == '/some/where'


def test_download_into_cache_with_checksum(server, cache):
  url = server.route('/a.bin')
  path = download.resolve('a.bin', url=url, sha256=BODY_SHA256,
                          progress=False)
  assert path == os.path.join(str(cache), 'a.bin')
  with open(path, 'rb') as f:
    assert f.read() == BODY
  assert _files(cache) == ['a.bin']           # no partial file left behind
  assert server.hits == ['/a.bin']


def test_download_into_cache_subfolder(server, cache):
  # Loaders name cached files '<dataset>/<file>' (MNIST and Fashion-MNIST
  # share file names); the subfolder is created on demand.
  url = server.route('/train-images-idx3-ubyte.gz')
  path = download.resolve('fashion_mnist/train-images-idx3-ubyte.gz', url=url,
                          sha256=BODY_SHA256, progress=False)
  assert path == os.path.join(str(cache), 'fashion_mnist',
                              'train-images-idx3-ubyte.gz')
  assert _files(cache) == [os.path.join('fashion_mnist',
                                        'train-images-idx3-ubyte.gz')]


def test_download_with_progress_bar(server, cache, capsys):
  url = server.route('/a.bin')
  path = download.resolve('a.bin', url=url, sha256=BODY_SHA256)
  with open(path, 'rb') as f:
    assert f.read() == BODY
  err = capsys.readouterr().err               # tqdm writes to stderr
  assert 'a.bin: 100%' in err and '2.70k/2.70k' in err   # named, complete


def test_download_saves_the_published_bytes(server, cache):
  # A server compressing on the wire (requests asks for gzip): the file saved
  # is the published one, whose checksum is the pinned one.
  url = server.route('/a.bin', mode='gzip')
  path = download.resolve('a.bin', url=url, sha256=BODY_SHA256,
                          progress=False)
  with open(path, 'rb') as f:
    assert f.read() == BODY


def test_cached_file_reused_without_network(server, cache):
  url = server.route('/a.bin')
  first = download.resolve('a.bin', url=url, sha256=BODY_SHA256,
                           progress=False)
  server.stop()
  for kwargs in ({}, {'download': False}):
    second = download.resolve('a.bin', url=url, sha256=BODY_SHA256,
                              progress=False, **kwargs)
    assert second == first
  with open(first, 'rb') as f:
    assert f.read() == BODY
  assert server.hits == ['/a.bin']            # exactly one request in all


def test_checksum_mismatch_saves_nothing(server, cache):
  bad = BODY[:-1] + b'?'
  url = server.route('/a.bin', body=bad)
  with pytest.raises(download.DownloadError) as e:
    download.resolve('a.bin', url=url, sha256=BODY_SHA256, progress=False)
  message = str(e.value)
  assert 'checksum mismatch' in message and url in message
  assert BODY_SHA256 in message
  assert hashlib.sha256(bad).hexdigest() in message
  assert os.path.join(str(cache), 'a.bin') in message
  assert not os.path.exists(os.path.join(str(cache), 'a.bin'))
  assert _files(cache) == []                  # no partial files either


def test_body_shorter_than_content_length_saves_nothing(server, cache):
  url = server.route('/a.bin', body=b'0123456789', mode='short')
  with pytest.raises(download.DownloadError) as e:
    download.resolve('a.bin', url=url, sha256=None, progress=False)
  message = str(e.value)
  assert 'stopped after 10 of 100 bytes' in message and url in message
  assert os.path.join(str(cache), 'a.bin') in message
  assert _files(cache) == []
  assert server.hits == ['/a.bin']            # one clear failure, no retry


def test_interrupted_download_saves_nothing(server, cache, monkeypatch):
  # Ctrl-C after the body was written to the temporary file, before the
  # rename: neither the file nor the temporary one stays.
  from tqdm import auto as tqdm  # pylint: disable=g-import-not-at-top

  def interrupt(*args):
    del args
    raise KeyboardInterrupt

  monkeypatch.setattr(tqdm.tqdm, 'update', interrupt)
  url = server.route('/a.bin')
  with pytest.raises(KeyboardInterrupt):
    download.resolve('a.bin', url=url, sha256=BODY_SHA256)
  assert _files(cache) == []


def test_wrong_file_at_the_path_is_replaced_whole(server, tmp_path):
  # fetch over a stale or corrupt file: the checked download replaces it.
  path = tmp_path / 'out' / 'a.bin'
  path.parent.mkdir()
  path.write_bytes(b'stale')
  url = server.route('/a.bin')
  download.fetch(url, str(path), sha256=BODY_SHA256, progress=False)
  assert path.read_bytes() == BODY
  assert _files(tmp_path / 'out') == ['a.bin']


def test_http_error_names_the_url(server, cache):
  url = server.url('/missing.bin')
  with pytest.raises(download.DownloadError) as e:
    download.resolve('missing.bin', url=url, sha256=None, progress=False)
  assert url in str(e.value) and '404' in str(e.value)
  assert _files(cache) == []


def test_connection_refused_names_url_and_path(cache):
  url = _refused_url()
  with pytest.raises(download.DownloadError) as e:
    download.resolve('gone.bin', url=url, sha256=None, progress=False)
  message = str(e.value)
  assert url in message
  assert os.path.join(str(cache), 'gone.bin') in message
  assert 'data_dir' in message
  assert _files(cache) == []


def test_connection_refused_leaks_no_file_descriptor(cache):
  # A leak costs one descriptor per call; other threads of the test process
  # may open or close a few meanwhile, so compare against the call count.
  url = _refused_url()
  calls = 10
  before = _open_fds()
  for _ in range(calls):
    with pytest.raises(download.DownloadError):
      download.resolve('gone.bin', url=url, sha256=None, progress=False)
  assert _open_fds() - before < calls


def test_stalled_download_saves_nothing(server, tmp_path):
  url = server.route('/slow.bin', body=b'x' * 10, mode='stall')
  path = str(tmp_path / 'out' / 'slow.bin')
  with pytest.raises(Exception):  # pylint: disable=broad-except
    download.fetch(url, path, sha256=None, progress=False, timeout=0.5)
  assert _files(tmp_path / 'out') == []


def test_stalled_download_error_names_url(server, tmp_path):
  url = server.route('/slow.bin', body=b'x' * 10, mode='stall')
  path = str(tmp_path / 'out' / 'slow.bin')
  with pytest.raises(download.DownloadError) as e:
    download.fetch(url, path, sha256=None, progress=False, timeout=0.5)
  assert url in str(e.value) and path in str(e.value)


def test_data_dir_missing_file_names_the_path(tmp_path, server):
  url = server.route('/a.bin')
  with pytest.raises(FileNotFoundError) as e:
    download.resolve('a.bin', url=url, sha256=BODY_SHA256,
                     data_dir=str(tmp_path))
  assert os.path.join(str(tmp_path), 'a.bin') in str(e.value)
  assert url in str(e.value)
  assert server.hits == []                    # data_dir never downloads


def test_data_dir_file_is_used_as_is(tmp_path):
  (tmp_path / 'a.bin').write_bytes(b'local')
  # A placed file is trusted: no checksum check, no network.
  path = download.resolve('a.bin', url=_refused_url(), sha256=BODY_SHA256,
                          data_dir=str(tmp_path))
  assert path == str(tmp_path / 'a.bin')


def test_download_off_and_cache_miss(server, cache):
  url = server.route('/a.bin')
  with pytest.raises(FileNotFoundError) as e:
    download.resolve('a.bin', url=url, sha256=BODY_SHA256, download=False)
  assert os.path.join(str(cache), 'a.bin') in str(e.value)
  assert 'off' in str(e.value)
  with pytest.raises(FileNotFoundError) as e:
    download.resolve('a.bin', url=None, sha256=None)
  assert 'no published URL' in str(e.value)
  assert server.hits == []


def test_downloaded_file_follows_the_umask(server, tmp_path):
  # pooch's temporary file is 0600; a cache shared between users must be
  # readable.
  url = server.route('/f.bin')
  umask = os.umask(0o022)
  try:
    path = download.fetch(url, str(tmp_path / 'cache' / 'f.bin'),
                          sha256=BODY_SHA256, progress=False)
  finally:
    os.umask(umask)
  assert os.stat(path).st_mode & 0o777 == 0o644


# ---------------------------------------------------------------------------
# Archives: one extractor for every loader.

def test_extract_matches_base_names_and_writes_only_them(tmp_path):
  archive = write_tar(str(tmp_path / 'a.tar.bz2'), {
      './x.h5': b'X', 'nested/y.h5': b'Y', 'README': b'unwanted'}, 'w:bz2')
  out = tmp_path / 'out'
  paths = download.extract(archive, ['y.h5', 'x.h5'], str(out))
  assert paths == [str(out / 'y.h5'), str(out / 'x.h5')]
  assert (out / 'x.h5').read_bytes() == b'X'
  assert _files(out) == ['x.h5', 'y.h5']     # no README, no scratch


def test_extract_is_all_or_nothing(tmp_path):
  archive = write_tar(str(tmp_path / 'a.tar.bz2'), {'x.h5': b'X'}, 'w:bz2')
  with pytest.raises(ValueError, match=r'a\.tar\.bz2: missing member\(s\) '
                     r'y\.h5 \(it holds x\.h5\)'):
    download.extract(archive, ['x.h5', 'y.h5'], str(tmp_path / 'out'))
  assert _files(tmp_path / 'out') == []      # x.h5 was not kept
  # Cut inside the second member's data: the first is not kept either.
  blob = bytes(range(256)) * 200
  archive = write_tar(str(tmp_path / 'b.tar'), {'x.h5': blob, 'y.h5': blob},
                      'w')
  with open(archive, 'r+b') as f:
    f.truncate(len(blob) + 2048)
  with pytest.raises(ValueError, match=r'b\.tar: cannot read the archive'):
    download.extract(archive, ['x.h5', 'y.h5'], str(tmp_path / 'out'))
  assert _files(tmp_path / 'out') == []


@pytest.mark.parametrize('bad_name', ['../x.h5', '/abs/x.h5',
                                      'data/../../x.h5'])
def test_unsafe_member_names_refuse_the_archive(tmp_path, bad_name):
  (tmp_path / 'deep').mkdir()
  archive = write_tar(str(tmp_path / 'deep' / 'a.tar'),
                      {'y.h5': b'Y', bad_name: b'evil'}, 'w')
  with pytest.raises(ValueError, match='unsafe member name') as e:
    download.extract(archive, ['x.h5', 'y.h5'], str(tmp_path / 'deep' / 'out'))
  assert archive in str(e.value)
  assert _files(tmp_path) == [os.path.join('deep', 'a.tar')]


def test_links_and_duplicates_are_refused(tmp_path):
  archive = write_tar(str(tmp_path / 'a.tar'),
                      {'x.h5': ('symlink', '/etc/passwd')}, 'w')
  with pytest.raises(ValueError, match="member 'x.h5' is not a regular file"):
    download.extract(archive, ['x.h5'], str(tmp_path / 'out'))
  archive = write_tar(str(tmp_path / 'b.tar'),
                      {'x.h5': b'1', 'copy/x.h5': b'2'}, 'w')
  with pytest.raises(ValueError, match="member 'x.h5' appears twice"):
    download.extract(archive, ['x.h5'], str(tmp_path / 'out'))
  assert not (tmp_path / 'out' / 'x.h5').exists()


def test_archive_files_download_extract_then_offline(file_server, cache):
  root, url = file_server
  archive = write_tar(str(root / 'pub.tar.bz2'), {'x.h5': b'X', 'y.h5': b'Y'},
                      'w:bz2')
  kwargs = dict(archive='pub.tar.bz2', url=url + 'pub.tar.bz2',
                sha256=download.sha256_of(archive), cache_subdir='pub',
                progress=False)
  paths = download.archive_files(['x.h5', 'y.h5'], **kwargs)
  assert paths == [str(cache / 'pub' / 'x.h5'), str(cache / 'pub' / 'y.h5')]
  assert _files(cache) == [os.path.join('pub', n)
                           for n in ('pub.tar.bz2', 'x.h5', 'y.h5')]
  os.remove(archive)                   # served no more: the cache answers
  assert download.archive_files(['x.h5', 'y.h5'], download=False,
                                **kwargs) == paths


def test_archive_files_checks_an_archive_in_data_dir(tmp_path):
  archive = write_tar(str(tmp_path / 'pub.tar.bz2'), {'x.h5': b'X'}, 'w:bz2')
  kwargs = dict(archive='pub.tar.bz2', url=None, cache_subdir='pub',
                data_dir=str(tmp_path))
  with pytest.raises(ValueError, match=r'pub\.tar\.bz2 has sha256'):
    download.archive_files(['x.h5'], sha256='0' * 64, **kwargs)
  assert not (tmp_path / 'x.h5').exists()
  assert download.archive_files(['x.h5'], sha256=download.sha256_of(archive),
                                **kwargs) == [str(tmp_path / 'x.h5')]


def test_archive_files_missing_names_files_archive_and_url(tmp_path, cache):
  kwargs = dict(archive='pub.tar.bz2', sha256=None, cache_subdir='pub',
                url='https://example.invalid/pub.tar.bz2')
  with pytest.raises(FileNotFoundError) as e:
    download.archive_files(['x.h5', 'y.h5'], data_dir=str(tmp_path), **kwargs)
  message = str(e.value)
  assert message.startswith(f'x.h5 is not in data_dir {tmp_path}, nor is '
                            'y.h5, nor is the archive that holds them')
  assert str(tmp_path / 'pub.tar.bz2') in message
  assert kwargs['url'] in message
  with pytest.raises(FileNotFoundError, match=r'x\.h5 is not in the cache .*'
                     r'downloading is off'):
    download.archive_files(['x.h5'], download=False, **kwargs)
