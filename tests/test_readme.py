"""The README's code runs as written.

Its Python blocks run in order in one namespace, as a reader pasting them
into a notebook would; its ``python -m fedjax_engine.*`` commands run as
typed (in a temporary folder), except those that need a second machine.
The ``pip install`` half of a command is skipped: the suite runs installed.
"""

import os
import pathlib
import re
import shlex
import subprocess
import sys

import pytest

README = pathlib.Path(__file__).parent.parent / 'README.md'
BLOCKS = re.findall(r'```(\w+)\n(.*?)```', README.read_text(), re.S)


def _blocks_of_commands():
  """The ``python -m fedjax_engine...`` commands of each bash block, with
  continuation lines joined and any environment assignments kept."""
  blocks = []
  for lang, body in BLOCKS:
    if lang != 'bash':
      continue
    commands = []
    for command in body.replace('\\\n', ' ').splitlines():
      command = command.split('&&')[-1].split('#')[0].strip()
      if 'python -m fedjax_engine' in command:
        commands.append(command)
    if commands:
      blocks.append(commands)
  return blocks


def _commands():
  return [c for block in _blocks_of_commands() for c in block]


def test_readme_has_python_blocks_and_commands():
  assert sum(lang == 'python' for lang, _ in BLOCKS) >= 3
  assert len(_commands()) >= 3


def test_python_blocks_run_in_order(capsys):
  namespace = {'__name__': '__main__'}
  for i, (lang, body) in enumerate(BLOCKS):
    if lang == 'python':
      exec(compile(body, f'README.md python block {i}', 'exec'), namespace)
  assert namespace['metrics']['train_loss'].shape == (50,)
  assert 0.1 < namespace['history'][-1]['test_accuracy'] < 1.0
  assert 'accuracy_per_client' in capsys.readouterr().out


def _runnable(command):
  # Several machines: needs another host at --coordinator_address.
  return '--coordinator_address' not in command


def _run(command, folder):
  command, _, piped = command.partition('|')
  words = shlex.split(command)
  env_words = [w for w in words[:words.index('python')] if '=' in w]
  env = dict(kv.split('=', 1) for kv in env_words)
  args = words[words.index('python') + 1:]
  full_env = dict(os.environ)
  full_env.pop('XLA_FLAGS', None)  # the CLI runs on the machine's devices
  full_env.update(env)
  result = subprocess.run([sys.executable, *args], capture_output=True,
                          text=True, cwd=folder, env=full_env, timeout=600)
  # absl ends --help* with exit code 1 after printing the flags.
  ok_codes = (0, 1) if '--help' in command else (0,)
  assert result.returncode in ok_codes, (command, result.stderr[-3000:])
  if piped:   # ... | grep PATTERN: the pattern is in the output
    assert shlex.split(piped)[-1] in result.stdout
  elif 'fedjax_engine.train' in command:
    assert 'final:' in result.stdout or '[p0]' in result.stdout, result.stdout


@pytest.mark.parametrize(
    'commands', [b for b in _blocks_of_commands() if all(map(_runnable, b))],
    ids=lambda b: b[0][:60])
def test_commands_run_as_typed(commands, tmp_path):
  # A block's commands run in order in one folder, as a reader typing
  # them would: a later one may read what an earlier one wrote.
  for command in commands:
    _run(command, tmp_path)
