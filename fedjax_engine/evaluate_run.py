"""Evaluates the model a run saved: ``python -m fedjax_engine.evaluate_run
RUN_DIR [--flag=value ...]``.

The run's ``flags.txt`` rebuilds its model and dataset; flags after the
folder override them (``--data_dir``, or another ``--dataset`` of the same
input shape). The params are those of the run's latest checkpoint, the
final model once the run finished (:func:`fedjax_engine.checkpoint.
load_params`). It prints the test metrics as JSON; a folder that is not a
run, or holds no checkpoint, is one ``error:`` line and exit code 2.
"""

from fedjax_engine import train

if __name__ == '__main__':
  train.evaluate_saved_run()
