"""Dynamic evaluation: each block scored at the weights before it, then learnt from."""

from flax.training import train_state
import jax
import numpy as np
import optax
import pytest

from rnn_jax import train
from rnn_jax.corpus import data
from rnn_jax.evaluation import dynamic
from rnn_jax.evaluation import evaluate as evaluation
from rnn_jax.training import metrics


def loaded(workdir):
  config, _, model, params = train.load(workdir)
  return model, params, data.prepare(config)


@pytest.fixture(scope='module')
def run(trained):
  """The LSTM run: what adapts is any model's params, through its own apply."""
  return loaded(trained[0])


def unlike_training(dataset, seed=0):
  """Held-out windows of a text that repeats one random passage: only adapting can learn it."""
  rng = np.random.default_rng(seed)
  pattern = rng.integers(1, dataset.tokenizer.vocab_size, dataset.valid.length + 7)
  return data.make_windows([np.tile(pattern, 12)], dataset.valid.length)


def test_with_no_step_it_is_static_evaluation(trained_cell):
  model, params, dataset = loaded(trained_cell[0])
  state = train_state.TrainState.create(apply_fn=model.apply, params=params, tx=optax.identity())
  static = metrics.evaluate(jax.jit(metrics.eval_step), state, dataset.valid, 64)
  scores = dynamic.score(model, params, dataset.valid, lr=0.0, decay=0.0)
  for name in ('loss', 'accuracy', 'top5_accuracy'):
    assert scores[name] == pytest.approx(static[name], rel=1e-5)


def test_each_block_is_scored_before_the_step_it_teaches(run):
  model, params, dataset = run
  windows, lr, decay = unlike_training(dataset), 0.3, 0.1
  loss_of = lambda p, f, l, w: float(np.sum(
      optax.softmax_cross_entropy_with_integer_labels(
          model.apply({'params': p}, f, deterministic=True), l) * w))
  adapted, total, count = params, 0.0, 0.0
  for features, labels, weights in data.batches(windows, dynamic.BLOCK):
    total += loss_of(adapted, features, labels, weights)  # scored first
    count += weights.sum()
    grads = jax.grad(lambda p: loss_of_jax(model, p, features, labels, weights))(adapted)
    adapted = jax.tree.map(lambda w, g, w0: w - lr * g + decay * (w0 - w), adapted, grads, params)
  scores = dynamic.score(model, params, windows, lr, decay)
  assert scores['loss'] == pytest.approx(total / count, rel=1e-4)


def loss_of_jax(model, params, features, labels, weights):
  losses = optax.softmax_cross_entropy_with_integer_labels(
      model.apply({'params': params}, features, deterministic=True), labels)
  return (losses * weights).sum() / np.maximum(weights.sum(), 1)


def test_adapting_to_a_text_unlike_the_training_texts_helps(run):
  model, params, dataset = run
  strange = unlike_training(dataset)
  static = dynamic.score(model, params, strange, 0.0, 0.0)['loss']
  adapted = dynamic.score(model, params, strange, 0.3, 0.0)['loss']
  assert adapted < static - 0.5


def test_settings_are_chosen_on_validation(run, monkeypatch):
  model, params, dataset = run
  monkeypatch.setattr(dynamic, 'LRS', (0.0, 0.1, 0.3))
  monkeypatch.setattr(dynamic, 'DECAYS', (0.0, 0.5))
  tuned = dynamic.tune_and_score(model, params, dataset)
  grid = [(lr, d) for lr in dynamic.LRS for d in (dynamic.DECAYS if lr else (0.0,))]
  losses = {setting: dynamic.score(model, params, dataset.valid, *setting)['loss']
            for setting in grid}
  assert (tuned['lr'], tuned['decay']) == min(losses, key=losses.get)
  assert tuned['valid']['loss'] == pytest.approx(min(losses.values()), rel=1e-6)
  assert tuned['test'] == dynamic.score(model, params, dataset.test, tuned['lr'], tuned['decay'])


def test_evaluate_reports_it_beside_the_static_figures(trained, monkeypatch):
  monkeypatch.setattr(dynamic, 'LRS', (0.0, 0.1))
  workdir, _ = trained
  results = evaluation.evaluate_run(workdir, 'test', dynamic=True)
  config, _, model, params = train.load(workdir)
  expected = dynamic.tune_and_score(model, params, data.prepare(config))
  assert (results['dynamic_lr'], results['dynamic_decay']) == (expected['lr'], expected['decay'])
  assert results['dynamic_loss'] == expected['test']['loss']
  assert results['dynamic_top5_accuracy'] == expected['test']['top5_accuracy']
  assert 'rnn-jax, dynamic' in evaluation.table(results).splitlines()[1]
