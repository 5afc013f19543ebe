r"""Runs ``fedjax_engine.train`` as several processes on this machine.

  python -m fedjax_engine.launch --num_processes=2 -- \
      --dataset=synthetic --num_rounds=20 --output_dir=runs/two_proc

Everything after ``--`` goes to every process unchanged, plus
``--cpu_devices`` (this machine's cores divided among the processes) unless
it is given. The launcher picks a
free port on 127.0.0.1 for JAX's coordination service, adds
``--coordinator_address``, ``--num_processes`` and ``--process_id`` to each
process's flags, and prints each process's output with a ``[pN]`` prefix.
The processes join with ``jax.distributed.initialize`` and shard every
round's cohort over all their devices; process 0 writes ``--output_dir``.

It exits with 0 when every process does. When one fails, the others are
stopped (they would otherwise wait at the next all-reduce) and the launcher
exits with the failed process's code: 2 for a bad flag value, as ``train``.

On several machines, run ``python -m fedjax_engine.train`` once per machine
instead, with the same flags plus ``--coordinator_address=<host 0>:<port>``,
``--num_processes`` and that machine's ``--process_id``.
"""

import argparse
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time

# Set by the launcher for each process; not accepted after ``--``.
_OWN_FLAGS = ('--coordinator_address', '--num_processes', '--process_id')
# How long stopped processes get to exit on SIGTERM before SIGKILL.
_GRACE_SECONDS = 5.0


class _Parser(argparse.ArgumentParser):

  def error(self, message):
    print(f'error: {message}', file=sys.stderr)
    sys.exit(2)


def free_port() -> int:
  """A TCP port on 127.0.0.1 that nothing listens on right now.

  Example:

    >>> 0 < free_port() < 65536
    True
  """
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


# A line ends at a newline or a carriage return (a progress bar redrawing).
_LINE = re.compile(rb'[^\r\n]*[\r\n]')


def _relay(stream, prefix: bytes, lock: threading.Lock):
  """Copies a child's output to our stdout, ``prefix`` before every line.

  Only whole lines are written, each under the lock, so lines of different
  processes never interleave mid-line; a carriage return also ends a line,
  so a progress bar redrawing itself keeps its prefix.
  """
  pending = b''
  while chunk := os.read(stream.fileno(), 65536):
    pending += chunk
    lines = _LINE.findall(pending)
    pending = pending[sum(map(len, lines)):]
    if lines:
      with lock:
        sys.stdout.buffer.write(b''.join(
            line if line in (b'\n', b'\r') else prefix + line
            for line in lines))
        sys.stdout.buffer.flush()
  if pending:
    with lock:
      sys.stdout.buffer.write(prefix + pending + b'\n')
      sys.stdout.buffer.flush()
  stream.close()


def _stop(children):
  """SIGTERM to every running child, then SIGKILL to those still running."""
  for child in children:
    if child.poll() is None:
      child.terminate()
  deadline = time.monotonic() + _GRACE_SECONDS
  for child in children:
    try:
      child.wait(timeout=max(0.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
      child.kill()
      child.wait()


def launch(train_args, *, num_processes: int, port: int | None = None) -> int:
  """Runs ``num_processes`` trainers joined on 127.0.0.1; returns the exit code.

  Args:
    train_args: flags for ``python -m fedjax_engine.train``, the same for every
      process.
    num_processes: processes to start.
    port: the coordination service's port (default: a free one).

  Example:

    >>> launch(['--num_rounds=5'], num_processes=2)  # doctest: +SKIP
    0
  """
  if num_processes < 1:
    raise ValueError(f'--num_processes must be >= 1, got {num_processes}.')
  own = [a for a in train_args if a.split('=')[0] in _OWN_FLAGS]
  if own:
    raise ValueError(f'{own[0]} is set by the launcher; leave it out of the '
                     'flags after --.')
  address = f'127.0.0.1:{port or free_port()}'
  if not any(a.split('=')[0] == '--cpu_devices' for a in train_args):
    # The processes share this machine's cores: one CPU device per core in
    # all, rather than per core in each process.
    share = max(1, (os.cpu_count() or 1) // num_processes)
    train_args = [*train_args, f'--cpu_devices={share}']
  env = dict(os.environ, PYTHONUNBUFFERED='1')
  lock = threading.Lock()
  children, relays = [], []
  try:
    for i in range(num_processes):
      child = subprocess.Popen(
          [sys.executable, '-m', 'fedjax_engine.train', *train_args,
           f'--coordinator_address={address}',
           f'--num_processes={num_processes}', f'--process_id={i}'],
          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
      children.append(child)
      relay = threading.Thread(target=_relay,
                               args=(child.stdout, f'[p{i}] '.encode(), lock))
      relay.start()
      relays.append(relay)
    code = 0
    running = set(range(num_processes))
    while running and code == 0:
      time.sleep(0.1)
      for i in sorted(running):
        status = children[i].poll()
        if status is None:
          continue
        running.discard(i)
        if status != 0:
          print(f'[launch] process {i} exited with code {status}; stopping '
                'the others.', file=sys.stderr, flush=True)
          # A process killed by a signal has a negative status.
          code = status if status > 0 else 1
          break
    return code
  finally:
    # Stops the others after a failure or Ctrl-C; a no-op after success.
    _stop(children)
    for relay in relays:
      relay.join()


def main(argv=None) -> int:
  argv = sys.argv[1:] if argv is None else argv
  split = argv.index('--') if '--' in argv else len(argv)
  parser = _Parser(
      prog='python -m fedjax_engine.launch',
      description='Runs fedjax_engine.train as several local processes '
                  'joined by jax.distributed; flags after -- go to train.')
  parser.add_argument('--num_processes', type=int, default=2,
                      help='processes to start (default 2)')
  parser.add_argument('--port', type=int, default=None,
                      help='coordination port on 127.0.0.1 (default: free)')
  args = parser.parse_args(argv[:split])
  try:
    return launch(argv[split + 1:], num_processes=args.num_processes,
                  port=args.port)
  except ValueError as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  except KeyboardInterrupt:
    return 130


if __name__ == '__main__':
  # SIGTERM to the launcher stops the processes too (through the finally).
  signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
  sys.exit(main())
