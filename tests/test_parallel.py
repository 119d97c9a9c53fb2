"""Scale-out with JAX's own sharding: a run split over 4 devices, or over 2 processes joined by
jax.distributed, reaches the losses of the single-device run (the `trained` fixture) and
generates the same text.

The devices are forced CPU devices, so the other runs happen in child processes: this one has
already started JAX with a single device.
"""

import json
import os
from pathlib import Path
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from rnn_jax import train
from rnn_jax.errors import UserError
from rnn_jax.generation import sampling
from rnn_jax.training import checkpoints
from rnn_jax.training import parallel

from conftest import flags_of, read_metrics, tiny_config

REPO = Path(__file__).parents[1]
TOLERANCE = 1e-5  # float sums taken in another order on each shard

# Run in a child with 4 devices: the tiny run on the default mesh (every device on data), the
# same data with a vocabulary of 8 on 1 device and with it split over a (2, 2) mesh, then the
# generated tokens and the errors for a batch that does not divide.
FOUR_DEVICES = '''
import json, sys
import jax
import numpy as np
from rnn_jax import train
from rnn_jax.configs import Config
from rnn_jax.errors import UserError
from rnn_jax.generation import sampling
from rnn_jax.training.parallel import Parallel
config, out = Config.from_json(sys.argv[1]), sys.argv[2]
smaller = Config.from_flat(config.flat() | {'num_words': 8})
train.train_and_evaluate(config, out + '/data4')
train.train_and_evaluate(smaller, out + '/one', parallel=Parallel.create([1]))
train.train_and_evaluate(smaller, out + '/data2_model2', parallel=Parallel.create([2, 2], True))
_, _, model, params = train.load(out + '/data4')
prompts = np.arange(1, 31).reshape(10, 3) % 9
generated = sampling.generate(model, params, prompts, jax.random.key(1), 5, 0.7)
errors = []
for mesh_shape, batch_size in (([4], 66), ([8], 64)):
  try:
    train.train_and_evaluate(Config.from_flat(config.flat() | {'batch_size': batch_size}),
                             out + '/bad', parallel=Parallel.create(mesh_shape))
  except UserError as error:
    errors.append(str(error))
print(json.dumps({'tokens': np.asarray(generated.tokens).tolist(), 'errors': errors,
                  'rows': str(Parallel.create([4]).rows(64))}))
'''


def child_env(devices: int) -> dict[str, str]:
  return os.environ | {'JAX_NUM_CPU_DEVICES': str(devices), 'JAX_PLATFORMS': 'cpu'}


def assert_close_metrics(workdir: Path, reference: Path):
  for record, expected in zip(read_metrics(workdir), read_metrics(reference), strict=True):
    for name, value in expected.items():
      if name != 'seconds':
        assert record[name] == pytest.approx(value, rel=TOLERANCE), (record['epoch'], name)


@pytest.mark.heavy
def test_four_devices_train_and_generate_as_one(corpus, trained, tmp_path):
  reference, _ = trained
  child = subprocess.run(
      [sys.executable, '-c', FOUR_DEVICES, tiny_config(corpus).to_json(), str(tmp_path)],
      cwd=REPO, env=child_env(4), capture_output=True, text=True, timeout=300)
  assert child.returncode == 0, child.stderr[-3000:]
  report = json.loads(child.stdout.splitlines()[-1])
  assert_close_metrics(tmp_path / 'data4', reference)
  assert_close_metrics(tmp_path / 'data2_model2', tmp_path / 'one')
  _, _, model, params = train.load(tmp_path / 'data4')
  prompts = np.arange(1, 31).reshape(10, 3) % 9
  expected = sampling.generate(model, params, prompts, jax.random.key(1), 5, 0.7)
  assert report['tokens'] == np.asarray(expected.tokens).tolist()
  assert report['errors'] == [
      '--batch_size=66 does not divide over the 4 data shards of the mesh; use a multiple of 4',
      '--mesh_shape 8,1 needs 8 devices; there are 4']
  assert report['rows'] == 'slice(0, 64, None)'  # one process holds every row


def free_port() -> int:
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


def start_two_processes(corpus: Path, workdir: Path, *args: str) -> list[subprocess.Popen]:
  """The tiny run as two processes of one device each, on localhost."""
  address = f'localhost:{free_port()}'
  return [subprocess.Popen(
      [sys.executable, '-m', 'experiments.train', f'--workdir={workdir}',
       *flags_of(tiny_config(corpus)), *args, f'--coordinator_address={address}',
       '--num_processes=2', f'--process_id={index}'],
      cwd=REPO, env=child_env(1), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
      for index in range(2)]


def finish(processes: list[subprocess.Popen]) -> list[tuple[int, str]]:
  """(exit code, stderr) of each process."""
  errors = [process.communicate(timeout=300)[1] for process in processes]
  return [(process.returncode, error) for process, error in zip(processes, errors)]


@pytest.mark.heavy
@pytest.mark.multiprocess
def test_two_processes_stop_together_and_resume_as_one(corpus, trained, tmp_path):
  """A SIGTERM to process 1 alone stops both at the same step with a collective checkpoint;
  resumed, the run reaches the single-process run's losses with the same global batch."""
  reference, _ = trained
  workdir = tmp_path / 'run'
  processes = start_two_processes(corpus, workdir, '--log_every=1')
  deadline = time.monotonic() + 240
  while not (workdir / checkpoints.METRICS).exists() or not read_metrics(workdir):
    assert all(p.poll() is None for p in processes), finish(processes)
    assert time.monotonic() < deadline, 'no epoch finished'
    time.sleep(0.01)
  processes[1].send_signal(signal.SIGTERM)
  (primary_code, primary), (other_code, other) = finish(processes)
  assert (primary_code, other_code) == (128 + signal.SIGTERM,) * 2, (primary, other)
  assert 'stopped by a signal to another process of the run' in primary
  assert 'stopped by SIGTERM' in other
  assert read_metrics(workdir)[-1]['epoch'] < 3  # it stopped before the end

  (primary_code, primary), (other_code, other) = finish(
      start_two_processes(corpus, workdir, '--resume'))
  assert (primary_code, other_code) == (0, 0), (primary[-2000:], other[-2000:])
  assert 'Resuming' in primary and 'Epoch 3' in primary
  # Process 1 logs errors only (and jax.distributed's line before it knew its index).
  assert 'Epoch' not in other
  assert_close_metrics(workdir, reference)
  assert json.loads((workdir / 'results.json').read_text())['best_epoch'] == 3


@pytest.mark.parametrize('arguments, message', [
    (('', 2, None), '--num_processes and --process_id need --coordinator_address'),
    (('localhost:1', 2, 2), 'needs --num_processes >= 1 and 0 <= --process_id < --num_processes'),
    (('localhost:1', None, 0), 'needs --num_processes >= 1'),
])
def test_bad_process_flags_are_one_line_before_anything_starts(arguments, message):
  with pytest.raises(UserError, match=message):
    parallel.initialize(*arguments)


@pytest.mark.parametrize('mesh_shape, message', [
    ([0], 'data\\[,model\\] device counts'),
    ([1, 1, 1], 'data\\[,model\\] device counts'),
    ([2], 'needs 2 devices; there are 1'),
    ([1, 2], 'needs 2 devices'),
])
def test_meshes_this_machine_cannot_build_are_one_line(mesh_shape, message):
  with pytest.raises(UserError, match=message):
    parallel.Parallel.create(mesh_shape, shard_params=True)


def test_a_model_axis_needs_shard_params_and_one_device_holds_every_row():
  with pytest.raises(UserError, match='only serves --shard_params'):
    parallel.Parallel.create([1, 2])
  assert parallel.Parallel.create().rows(48) == slice(0, 48)
