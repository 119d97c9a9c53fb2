"""Damaged run files, found and reported in one line: array data that no longer matches its
checksums, checkpoints orbax cannot read, garbled config and tokenizer files, a metrics line
lost beside its checkpoint.

Most tests damage a copy of the `trained` fixture (checkpoints at steps 26 and 39, the best).
"""

import dataclasses
import logging
import os
from pathlib import Path
import re
import shutil

import pytest
import tensorstore as ts

from rnn_jax import train
from rnn_jax.errors import UserError
from rnn_jax.training import checkpoints

from conftest import read_metrics, tiny_config
from test_fault_tolerance import assert_same_run


@pytest.fixture
def copy(trained, tmp_path) -> Path:
  reference, _ = trained
  return Path(shutil.copytree(reference, tmp_path / 'run'))


def index_file(workdir: Path, step: int) -> Path:
  """The file of orbax's index nodes, which hold the arrays of 1 KiB or less."""
  return next((workdir / checkpoints.CHECKPOINTS / str(step) / 'state' / 'd').iterdir())


def flip_a_parameter_bit(workdir: Path, step: int) -> tuple[Path, bytes]:
  """Flips the lowest bit in the middle of the largest parameter's stored bytes; returns the
  file and what it held.

  Only orbax's index nodes carry checksums (tensorstore's OCDBT ones). An array of more than
  1 KiB, zstd-compressed, lies outside them, in a per-process data file; a bit flipped there
  was restored without a word at each of 40 places tried across such an array.
  """
  state = workdir / checkpoints.CHECKPOINTS / str(step) / 'state'
  base = ts.KvStore.open(f'file://{state}/').result()
  root = ts.ocdbt.dump(base).result()['versions'][0]['root']['location']
  entries = ts.ocdbt.dump(base, root).result()['entries']
  # Each one is 'value:DIRECTORY:FILE:OFFSET:LENGTH'.
  _, directory, name, offset, length = max(
      (entry['indirect_value'].split(':') for entry in entries
       if 'indirect_value' in entry and entry['key'].startswith(b'params.')),
      key=lambda location: int(location[-1]))
  path = state / directory / name
  intact = path.read_bytes()
  content = bytearray(intact)
  content[int(offset) + int(length) // 2] ^= 1
  path.write_bytes(bytes(content))
  return path, intact


def test_readers_refuse_a_checkpoint_orbax_cannot_read_in_one_line(copy):
  for damage in (lambda path: path.write_bytes(path.read_bytes()[:path.stat().st_size // 2]),
                 lambda path: path.write_bytes(bytes(path.stat().st_size))):
    intact = index_file(copy, 39).read_bytes()
    damage(index_file(copy, 39))
    with pytest.raises(UserError) as refused:
      train.load(copy)  # the best checkpoint, as sample, evaluate and serve read it
    assert re.fullmatch(f'the checkpoint {re.escape(str(copy))}/checkpoints/39 does not read '
                        r'back \(ValueError: [^\n]+\): it is damaged', str(refused.value))
    index_file(copy, 39).write_bytes(intact)


def test_a_flipped_bit_is_caught_by_its_checksum_and_the_run_resumes_bit_for_bit(
    corpus, tmp_path, caplog):
  config = tiny_config(corpus, max_epochs=1, checkpoint_every_steps=6)
  # 16 units: the LSTM's kernels are the smallest arrays here that orbax stores unchecked.
  config = dataclasses.replace(config, model=dataclasses.replace(config.model, rnn_units=16))
  workdir, uninterrupted = tmp_path / 'run', tmp_path / 'uninterrupted'
  train.train_and_evaluate(config, workdir)  # checkpoints at steps 12 and 13
  shutil.copytree(workdir, uninterrupted)
  flip_a_parameter_bit(workdir, 13)
  refused = r'ChecksumError: params/lstm_0/\w+ differs from the checksum saved with it'
  with pytest.raises(UserError, match=f'^the checkpoint {re.escape(str(workdir))}/checkpoints/13 '
                                      f'does not read back \\({refused}\\): it is damaged$'):
    train.load(workdir)

  path, intact = flip_a_parameter_bit(workdir, 12)
  with pytest.raises(UserError, match=f'^no checkpoint in {re.escape(str(workdir))} reads back '
                                      f'\\(step 13: {refused}\\)'):
    train.train_and_evaluate(config, workdir, resume=True)
  assert not (workdir / checkpoints.UNREADABLE).exists()  # nothing is moved then

  path.write_bytes(intact)
  with caplog.at_level(logging.WARNING):
    train.train_and_evaluate(config, workdir, resume=True)
  assert re.search(f'The checkpoint at step 13 does not read back \\({refused}\\)', caplog.text)
  assert (workdir / checkpoints.UNREADABLE / '13').is_dir()
  assert_same_run(workdir, uninterrupted)  # step 13 taken again from step 12


def test_damaged_run_files_are_one_line_naming_the_file(copy):
  damages = {'cut short': lambda path: path.write_text(path.read_text()[:40]),
             'a list': lambda path: path.write_text('[1, 2]'),
             'binary': lambda path: path.write_bytes(bytes(range(256))),
             'deleted': Path.unlink}
  for name in (checkpoints.CONFIG, checkpoints.TOKENIZER):
    path = copy / name
    intact = path.read_bytes()
    for damage, do in damages.items():
      if (name, damage) == (checkpoints.CONFIG, 'deleted'):
        continue  # then the work dir holds no run, as test_train.py checks
      do(path)
      with pytest.raises(UserError, match=f'^cannot read {re.escape(str(path))} \\(.+\\): the '
                                          'work dir is damaged$'):
        checkpoints.read_run(copy)  # as train --resume, sample, evaluate and serve read it
      path.write_bytes(intact)


def test_a_metrics_line_cut_beside_its_checkpoint_is_written_again(corpus, trained, copy,
                                                                   monkeypatch):
  reference, _ = trained
  metrics = copy / checkpoints.METRICS
  metrics.write_text(metrics.read_text()[:-40])  # epoch 3's line, and its checkpoint is whole
  train.train_and_evaluate(tiny_config(corpus), copy, resume=True)
  assert read_metrics(copy) == read_metrics(reference)  # its own seconds too, from the record

  synced = []
  monkeypatch.setattr(os, 'fsync', lambda fd: synced.append(os.readlink(f'/proc/self/fd/{fd}')))
  checkpoints.append_metrics(copy, read_metrics(reference)[0])
  assert synced == [str(metrics)]
