"""A tiny learnable corpus and one short training run, shared by the tests."""

import contextlib
import json
import logging
import os
from pathlib import Path
import shutil
import socket
import tempfile
import threading
import time

import jax
import numpy as np
import pytest

from rnn_jax import train
from rnn_jax.configs import Config, DataConfig, ModelConfig, TrainConfig
from rnn_jax.model import cells
from rnn_jax.training import checkpoints

CYCLE = 'alpha beta gamma delta epsilon zeta eta theta'.split()


def pytest_configure(config):
  """One persistent compilation cache for the session, its xdist workers and every process its
  tests start, and XLA's CPU backend at its lowest optimization level.

  Most tests, and the command-line runs they start, compile the same tiny programs again, and
  compiling is most of their time. The cache must be set before the first compilation, which jax
  takes as its cue to decide whether to use one. LLVM's optimizations cost more to compile than
  they save on the tests' tiny programs (tests/test_models.py and test_objective.py: 94 s -> 64
  s); results compare within one level, and the references are NumPy's or tolerances.
  """
  if 'PYTEST_XDIST_WORKER' in os.environ:  # a worker inherits the controller's settings
    cache = os.environ['JAX_COMPILATION_CACHE_DIR']
  else:
    os.environ['XLA_FLAGS'] = ' '.join(
        [os.environ.get('XLA_FLAGS', ''), '--xla_backend_optimization_level=0']).strip()
    cache = tempfile.mkdtemp(prefix='rnn-jax-tests-compilation-cache-')
    config.add_cleanup(lambda: shutil.rmtree(cache, ignore_errors=True))
    os.environ['JAX_COMPILATION_CACHE_DIR'] = cache  # inherited by workers and subprocesses
  os.environ['JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS'] = '0'
  jax.config.update('jax_compilation_cache_dir', cache)
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 0)


def pytest_xdist_auto_num_workers(config) -> int:
  """`-n auto`: a worker a core, at most 4. Each worker trains its own session fixtures and holds
  its own JAX, so more would mostly repeat work and memory."""
  return max(1, min(len(os.sched_getaffinity(0)), 4))


def pytest_collection_modifyitems(items):
  """The heavy tests first (a stable sort): the other workers then steal the light ones, and no
  worker is left alone with a long test at the end."""
  items.sort(key=lambda item: item.get_closest_marker('heavy') is None)


@pytest.fixture(scope='session')
def corpus(tmp_path_factory) -> Path:
  """Documents that walk a cycle of words from random starts: the next word is learnable."""
  rng = np.random.default_rng(0)
  lines = [' '.join(CYCLE[(start + i) % len(CYCLE)] for i in range(30))
           for start in rng.integers(0, len(CYCLE), size=40)]
  path = tmp_path_factory.mktemp('corpus') / 'cycle.txt'
  path.write_text('\n'.join(lines))
  return path


def tiny_config(corpus: Path, cell: str = 'lstm', **train_fields) -> Config:
  return Config(
      # Texts along one cycle of words share windows: as near-copies they would all be one group.
      data=DataConfig(data=str(corpus), training_length=4, min_extra_words=0,
                      near_copy_share=0.0),
      model=ModelConfig(embedding_dim=8, cell=cell, rnn_units=8, dense_units=16,
                        dense_dropout=0.1),
      train=TrainConfig(**dict(batch_size=64, max_epochs=3, learning_rate=0.03) | train_fields))


def flags_of(config: Config) -> list[str]:
  """The command-line flags that give `config` (those that differ from the defaults)."""
  defaults = Config().flat()
  return [f'--{name}={value}' for name, value in config.flat().items()
          if value != defaults[name]]


def reference_credit(scores, labels, k: int) -> np.ndarray:
  """The top-k credit rule row by row in NumPy: clip((k - above) / tied, 0, 1), with `above` the
  scores greater than the label's and `tied` those equal to it; 0 for a row holding a NaN."""
  scores = np.asarray(scores, np.float64)
  label_scores = np.take_along_axis(scores, np.asarray(labels)[..., None], axis=-1)
  above = np.sum(scores > label_scores, axis=-1)
  tied = np.sum(scores == label_scores, axis=-1)
  with np.errstate(divide='ignore', invalid='ignore'):
    credit = np.clip((k - above) / tied, 0, 1)
  return np.where(np.isnan(scores).any(axis=-1), 0.0, credit)


def read_config(workdir: Path) -> dict:
  return json.loads((workdir / checkpoints.CONFIG).read_text())


def read_metrics(workdir: Path) -> list[dict]:
  return [json.loads(line) for line in (workdir / checkpoints.METRICS).read_text().splitlines()]


@pytest.fixture(scope='session')
def trained(corpus, tmp_path_factory) -> tuple[Path, dict]:
  workdir = tmp_path_factory.mktemp('run')
  return workdir, train.train_and_evaluate(tiny_config(corpus), workdir)


@pytest.fixture(scope='session', params=sorted(cells.CELLS))
def trained_cell(request, trained, corpus, tmp_path_factory) -> tuple[Path, dict]:
  """`trained` for every registered cell, for the tests of what a cell changes in a trained
  model (generation, dynamic evaluation, resume). What only drives the model (the commands, the
  server, the cache) runs once, on `trained`: the cell tests hold every cell to its reference."""
  if request.param == tiny_config(corpus).model.cell:
    return trained
  workdir = tmp_path_factory.mktemp(f'run_{request.param}')
  return workdir, train.train_and_evaluate(tiny_config(corpus, request.param), workdir)


class Errors(logging.Handler):
  """The records at ERROR and above that uvicorn logs."""

  def __init__(self):
    super().__init__(logging.ERROR)
    self.records = []

  def emit(self, record):
    self.records.append(record)


@contextlib.contextmanager
def running_server(app, timeout_s: float):
  """(address, the errors uvicorn logged): `app` under uvicorn on a free port, in a thread,
  configured as experiments.serve configures it."""
  # pylint: disable=import-outside-toplevel  # the serve extra: only the server tests need it
  import uvicorn
  from rnn_jax.serve import server
  listening = socket.socket()
  listening.bind(('127.0.0.1', 0))
  address = listening.getsockname()
  running = uvicorn.Server(server.config(app, *address, timeout_s=timeout_s, max_connections=64))
  errors = Errors()
  logging.getLogger('uvicorn.error').addHandler(errors)
  thread = threading.Thread(target=running.run, kwargs={'sockets': [listening]})
  thread.start()
  try:
    deadline = time.monotonic() + 60
    while not running.started:
      assert thread.is_alive() and time.monotonic() < deadline, 'the server did not start'
      time.sleep(0.02)
    yield address, errors.records
  finally:
    running.should_exit = True
    thread.join(timeout=30)
    logging.getLogger('uvicorn.error').removeHandler(errors)
    listening.close()


@pytest.fixture(scope='module')
def browser():
  """Debian's headless Chromium through selenium; skipped, with the reason, without them."""
  webdriver = pytest.importorskip('selenium.webdriver', reason='selenium is not installed')
  binary, driver = shutil.which('chromium'), shutil.which('chromedriver')
  if not binary or not driver:
    pytest.skip("no headless browser here: install Debian's chromium and chromium-driver")
  options = webdriver.ChromeOptions()
  options.binary_location = binary
  for argument in ('--headless=new', '--no-sandbox', '--disable-dev-shm-usage',
                   '--window-size=1000,1000'):
    options.add_argument(argument)
  chrome = webdriver.Chrome(options, webdriver.ChromeService(executable_path=driver))
  chrome.set_page_load_timeout(60)
  yield chrome
  chrome.quit()
