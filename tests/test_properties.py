"""Properties of the tokenizer and the windowing over random texts (hypothesis)."""

import tempfile
from pathlib import Path

from hypothesis import event, given, settings, strategies as st
import numpy as np

from rnn_jax.configs import Config, DataConfig
from rnn_jax.corpus import data
from rnn_jax.corpus import text
from rnn_jax.errors import UserError

FAST = settings(max_examples=60, deadline=None)
# Words over a few letters, so that texts repeat words; punctuation and case to be filtered.
words = st.text(alphabet='abcAB.,!é', min_size=1, max_size=4)
sentences = st.lists(words, max_size=12).map(' '.join)
texts = st.lists(sentences, min_size=1, max_size=8)
sequences = st.lists(st.lists(st.integers(1, 30), max_size=25), max_size=6)


@FAST
@given(texts, st.booleans(), st.sampled_from(['', '.,!']))
def test_tokenizer_round_trips_and_survives_json(texts, lower, filters):
  tokenizer = text.Tokenizer(lower=lower, filters=filters)
  tokenizer.fit_on_texts(texts)
  ids = tokenizer.texts_to_sequences(texts)
  assert tokenizer.sequences_to_texts(ids) == [' '.join(tokenizer.tokenize(t)) for t in texts]
  assert all(0 < i < tokenizer.vocab_size for sequence in ids for i in sequence)
  assert text.Tokenizer.from_json(tokenizer.to_json()).texts_to_sequences(texts) == ids


@FAST
@given(sequences, st.integers(1, 6))
def test_windows_are_every_slice_of_each_text_with_the_word_after(sequences, length):
  windows = data.make_windows(sequences, length)
  expected = [(s[i:i + length], s[i + length]) for s in sequences
              for i in range(len(s) - length)]
  assert len(windows) == sum(max(len(s) - length, 0) for s in sequences) == len(expected)
  features, labels = windows.take(np.arange(len(windows)))
  assert [(list(f), int(l)) for f, l in zip(features, labels)] == expected


@FAST
@given(sequences, st.integers(1, 6))
def test_chunks_label_each_word_after_the_first_once(sequences, length):
  chunks = data.make_chunks(sequences, length)
  assert len(chunks) == sum(-(-(len(s) - 1) // length) for s in sequences if len(s) > 1)
  features, labels = chunks.take(np.arange(len(chunks)))
  assert sorted(labels[labels != 0].tolist()) == sorted(w for s in sequences for w in s[1:])
  assert np.array_equal(features[:, 1:], labels[:, :-1])  # each label is the next input


@FAST
@given(sequences, st.integers(1, 4), st.integers(1, 7), st.integers(0, 5))
def test_batches_cover_every_window_once_and_resume_where_they_stopped(sequences, length,
                                                                       batch_size, start):
  windows = data.make_windows(sequences, length)
  batches = list(data.batches(windows, batch_size, seed=3, epoch=2))
  kept = [row for features, _, weights in batches for row, w in zip(features.tolist(), weights)
          if w]
  every = windows.take(np.arange(len(windows)))[0].tolist()
  assert sorted(kept) == sorted(every)  # windows with a label, once each (labels are never 0)
  resumed = list(data.batches(windows, batch_size, seed=3, epoch=2, start=start))
  assert len(resumed) == max(len(batches) - start, 0)
  for (a, b, c), (x, y, z) in zip(resumed, batches[start:]):
    assert np.array_equal(a, x) and np.array_equal(b, y) and np.array_equal(c, z)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.one_of(sentences, st.text(max_size=40)), min_size=1, max_size=12),
       st.integers(1, 4))
def test_prepare_windows_texts_by_the_formula_or_says_why_not(documents, length):
  with tempfile.TemporaryDirectory() as directory:
    path = Path(directory) / 'texts.txt'
    path.write_text('\n'.join(documents), encoding='utf-8')
    config = Config(data=DataConfig(data=str(path), training_length=length, min_extra_words=0,
                                    train_fraction=0.5, valid_fraction=0.5))
    try:
      dataset = data.prepare(config)
    except UserError:  # too few words or texts, or a NUL byte: refused with a message
      event('refused')
      return
  lines = [line.strip() for line in '\n'.join(documents).splitlines() if line.strip()]
  sequences = dataset.tokenizer.texts_to_sequences(map(text.format_patent, lines))
  kept = [len(s) for s in sequences if len(s) > length]
  assert dataset.num_kept_texts == len(kept)
  num_windows = len(dataset.train) + len(dataset.valid) + len(dataset.test)
  # Held-out sets hold each text once: copies of a text only count in training.
  if not dataset.duplicate_texts:
    assert num_windows == sum(n - length for n in kept)
