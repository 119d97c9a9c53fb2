"""Every hyperparameter of a run, in frozen dataclasses (one flag per field)."""

import dataclasses
import json
from pathlib import Path
from typing import Any

from rnn_jax.errors import UserError
from rnn_jax.model import cells

WALKTHROUGH_FILTERS = '!"%;[\\]^_`{|}~\t\n'  # case-kept, trainable-embedding runs
GLOVE_FILTERS = '!"#$%&()*+/:<=>@[\\]^_`{|}~\t\n'  # lower-case, pre-trained runs
SPLITS = ('abstracts', 'windows')
LEVELS = ('word', 'char')
TXT_MODES = ('lines', 'stream')
OBJECTIVES = ('last', 'every')
COMPUTE_DTYPES = ('float32', 'bfloat16')
MAX_EPOCH_SAMPLES = 100  # samples shown in the log, not a corpus: experiments.sample writes those
# Hyperparameters renamed since a work dir's config.json was written: old name -> new name.
RENAMED = {'lstm_layers': 'rnn_layers', 'lstm_units': 'rnn_units'}
# What a saved config.json means by a field it lacks: the behaviour before the field existed.
BEFORE_FIELD = {'min_count': 0, 'near_copy_share': 0.0}
# How long to train, how often to report or checkpoint and what samples to show may change when a
# run resumes; everything else is the run's own.
RESUMABLE = ('max_epochs', 'patience', 'min_delta', 'log_every', 'checkpoint_every_steps',
             'samples_per_epoch')


def _require(condition: bool, message: str):
  if not condition:
    raise UserError(message)


@dataclasses.dataclass(frozen=True)
class DataConfig:
  """Which texts, how they become tokens, and how they are split.

  The vocabulary comes from the training texts under split 'abstracts' and from every text under
  'windows' (whose split comes after tokenizing): words seen there at least `min_count` times get
  an id each, every other word the unknown-word id 1. With min_count 0 every word of every text,
  test included, gets its own id: the walkthrough's vocabulary, and what runs saved before
  min_count existed used.
  """
  data: str = ''  # .csv, .txt or .jsonl file; '' = the walkthrough's patent abstracts (downloaded)
  text_column: str = 'patent_abstract'  # CSV column or JSON key that holds the text
  txt_mode: str = 'lines'  # .txt: 'lines' (a text per line) or 'stream' (one text, cut in 3 parts)
  level: str = 'word'  # 'word' or 'char': tokens are words, or characters (Keras char_level)
  filters: str = WALKTHROUGH_FILTERS  # characters the tokenizer turns into spaces (word level)
  lower: bool = False  # lower-case the text before tokenizing
  num_words: int = 0  # keep the num_words - 1 most frequent tokens (Keras semantics); 0 keeps all
  min_count: int = 2  # rarer training words share one unknown-word id; 0: every text's words
  training_length: int = 50  # tokens (words or characters) per window; the next one is the label
  min_extra_words: int = 20  # keep texts longer than training_length + min_extra_words tokens
  split: str = 'abstracts'  # 'abstracts': no text in two sets; 'windows': the walkthrough's (leaks)
  train_fraction: float = 0.8  # share of texts (or windows) used for training
  valid_fraction: float = 0.1  # share for validation; the test set gets the rest
  near_copy_share: float = 0.05 # texts sharing this share of their windows stay in one set

  def __post_init__(self):
    _require(self.num_words >= 0, f'num_words must be >= 0, got {self.num_words}')
    _require(self.min_count >= 0, f'min_count must be >= 0, got {self.min_count}')
    _require(0 <= self.near_copy_share <= 1,
             f'near_copy_share must be in [0, 1], got {self.near_copy_share}')
    _require(self.training_length >= 1,
             f'training_length must be >= 1, got {self.training_length}')
    _require(self.min_extra_words >= 0,
             f'min_extra_words must be >= 0, got {self.min_extra_words}')
    _require(self.split in SPLITS, f'split must be one of {SPLITS}, got {self.split!r}')
    _require(self.level in LEVELS, f'level must be one of {LEVELS}, got {self.level!r}')
    _require(self.txt_mode in TXT_MODES,
             f'txt_mode must be one of {TXT_MODES}, got {self.txt_mode!r}')
    _require(self.txt_mode == 'lines' or Path(self.data).suffix == '.txt',
             f"txt_mode 'stream' reads a .txt file as one text: --data must name one, got "
             f'{self.data or "the patent abstracts (.csv)"!r}')
    # Keras' char_level tokenizer reads every character and applies no filters.
    _require(self.level == 'word' or self.filters == WALKTHROUGH_FILTERS,
             "filters apply at level 'word' only: at level 'char' every character is a token")
    _require(0 < self.train_fraction < 1,
             f'train_fraction must be in (0, 1), got {self.train_fraction}')
    _require(0 < self.valid_fraction <= 1 - self.train_fraction + 1e-9,
             f'valid_fraction must be in (0, 1 - train_fraction], got {self.valid_fraction}')


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  embedding_dim: int = 100  # width of the word vectors
  trainable_embeddings: bool = True  # False freezes the embedding matrix (pre-trained vectors)
  pretrained_embeddings: str = ''  # GloVe or word2vec text file that initialises the embeddings
  mask_zero: bool = False  # token 0 is padding: the recurrent state carries over it unchanged
  cell: str = 'lstm'  # the recurrent cell: a name in rnn_jax.model.cells.CELLS ('lstm', 'gru')
  rnn_layers: int = 1  # stacked recurrent layers
  rnn_units: int = 64  # hidden units per recurrent layer and direction
  bidirectional: bool = False  # run the last recurrent layer both ways and concatenate
  dropout: float = 0.1  # recurrent layers' input dropout, one mask per sequence (Keras)
  recurrent_dropout: float = 0.1  # recurrent hidden-state dropout, one mask per sequence (Keras)
  weight_drop: float = 0.0  # DropConnect on the recurrent weights, one mask per batch (AWD-LSTM)
  dense_units: int = 128  # width of the relu layer after the recurrent layers
  dense_dropout: float = 0.5  # dropout after the relu layer
  embedding_dropout: float = 0.0  # drop whole words: rows of the input embedding, per step
  compute_dtype: str = 'float32'  # 'bfloat16': big matmuls take bfloat16 inputs, sums stay float32
  tie_embeddings: bool = False  # the output layer reuses the embedding matrix (dense = embedding)

  def __post_init__(self):
    _require(self.cell in cells.CELLS,
             f'cell must be one of {tuple(cells.CELLS)}, got {self.cell!r}')
    for name in ('embedding_dim', 'rnn_layers', 'rnn_units', 'dense_units'):
      _require(getattr(self, name) >= 1, f'{name} must be >= 1, got {getattr(self, name)}')
    for name in ('dropout', 'recurrent_dropout', 'weight_drop', 'dense_dropout',
                 'embedding_dropout'):
      _require(0 <= getattr(self, name) < 1,
               f'{name} must be in [0, 1), got {getattr(self, name)}')
    _require(self.compute_dtype in COMPUTE_DTYPES,
             f'compute_dtype must be one of {COMPUTE_DTYPES}, got {self.compute_dtype!r}')
    _require(not self.tie_embeddings or self.dense_units == self.embedding_dim,
             f'tie_embeddings needs dense_units == embedding_dim, got {self.dense_units} and '
             f'{self.embedding_dim}')


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  init_from: str = ''  # fine-tune: start from this run's model (WORKDIR, or WORKDIR/checkpoints/N)
  learning_rate: float = 1e-3  # Adam step size
  clip_norm: float = 0.0  # clip gradients to this global norm; 0 turns clipping off
  weight_decay: float = 0.0  # AdamW's decoupled weight decay; 0 is the walkthrough's plain Adam
  lr_plateau_factor: float = 1.0  # after an epoch with no val_loss improvement, scale the rate so
  average_decay: float = 0.0  # score and keep a moving average of the weights (decay per step)
  activation_reg: float = 0.0  # AR: adds this times the last recurrent layer's mean squared h
  temporal_activation_reg: float = 0.0  # TAR: adds this times the mean squared change of h a step
  batch_size: int = 2048  # windows (or, for objective 'every', text pieces) per training step
  eval_batch_size: int = 2048  # windows per evaluation step
  objective: str = 'last'  # 'last': the word after each window; 'every': the next word everywhere
  max_epochs: int = 150  # stop after this many epochs at the latest
  patience: int = 5  # epochs without a val_loss improvement before stopping early
  min_delta: float = 0.0  # smallest val_loss decrease that counts as an improvement
  log_every: int = 20  # steps between progress updates (each one reads metrics to the host)
  samples_per_epoch: int = 0  # validation passages continued after each epoch (log, TensorBoard)
  checkpoint_every_steps: int = 0  # also checkpoint every this many steps; 0: at epoch ends only
  skip_nonfinite: bool = False  # skip (and count) batches whose loss or gradient is NaN or inf

  def __post_init__(self):
    _require(self.learning_rate > 0, f'learning_rate must be > 0, got {self.learning_rate}')
    _require(self.clip_norm >= 0, f'clip_norm must be >= 0, got {self.clip_norm}')
    _require(self.weight_decay >= 0, f'weight_decay must be >= 0, got {self.weight_decay}')
    _require(0 < self.lr_plateau_factor <= 1,
             f'lr_plateau_factor must be in (0, 1], got {self.lr_plateau_factor}')
    _require(0 <= self.average_decay < 1,
             f'average_decay must be in [0, 1), got {self.average_decay}')
    for name in ('activation_reg', 'temporal_activation_reg'):
      _require(getattr(self, name) >= 0, f'{name} must be >= 0, got {getattr(self, name)}')
    _require(self.objective in OBJECTIVES,
             f'objective must be one of {OBJECTIVES}, got {self.objective!r}')
    for name in ('batch_size', 'eval_batch_size', 'max_epochs', 'log_every'):
      _require(getattr(self, name) >= 1, f'{name} must be >= 1, got {getattr(self, name)}')
    _require(self.patience >= 0, f'patience must be >= 0, got {self.patience}')
    _require(self.min_delta >= 0, f'min_delta must be >= 0, got {self.min_delta}')
    _require(self.checkpoint_every_steps >= 0,
             f'checkpoint_every_steps must be >= 0, got {self.checkpoint_every_steps}')
    _require(0 <= self.samples_per_epoch <= MAX_EPOCH_SAMPLES,
             f'samples_per_epoch must be from 0 to {MAX_EPOCH_SAMPLES}, '
             f'got {self.samples_per_epoch}')


@dataclasses.dataclass(frozen=True)
class Config:
  seed: int = 0  # seeds the split, the batch order, the initialisation and dropout
  data: DataConfig = DataConfig()
  model: ModelConfig = ModelConfig()
  train: TrainConfig = TrainConfig()

  def __post_init__(self):
    if self.train.objective == 'every':
      _require(self.data.split == 'abstracts',
               "objective 'every' trains on whole texts: it needs split 'abstracts'")
      _require(not self.model.bidirectional,
               "objective 'every' predicts each next word from the words before it: a "
               'bidirectional model would read the answer')

  def flat(self) -> dict[str, Any]:
    """Every hyperparameter by its name (names are unique across sections; flags use them)."""
    values = {}
    for field in dataclasses.fields(self):
      value = getattr(self, field.name)
      values.update(dataclasses.asdict(value) if dataclasses.is_dataclass(value)
                    else {field.name: value})
    return values

  @classmethod
  def from_flat(cls, values: dict[str, Any]) -> 'Config':
    """The inverse of flat(); names it does not know are an error, renamed ones are read."""
    values = {RENAMED.get(name, name): value for name, value in values.items()}
    sections = {}
    for field in dataclasses.fields(cls):
      if dataclasses.is_dataclass(field.type):
        names = [f.name for f in dataclasses.fields(field.type)]
        sections[field.name] = field.type(**{n: values.pop(n) for n in names if n in values})
      elif field.name in values:
        sections[field.name] = values.pop(field.name)
    if values:
      raise UserError(f'unknown hyperparameters: {sorted(values)}')
    return cls(**sections)

  def to_json(self) -> str:
    return json.dumps(self.flat(), indent=2)

  @classmethod
  def from_json(cls, text: str) -> 'Config':
    """A saved config; fields it lacks mean what they did before they existed."""
    return cls.from_flat(BEFORE_FIELD | json.loads(text))
