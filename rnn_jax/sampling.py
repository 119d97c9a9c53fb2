"""Text generation: the walkthrough's sliding window with temperature ("diversity") sampling."""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from rnn_jax import data
from rnn_jax import text


@functools.partial(jax.jit, static_argnames=('model', 'num_words'))
def generate(model, params, prompt: jax.Array, key: jax.Array, num_words: int,
             temperature: float | jax.Array = 1.0) -> jax.Array:
  """Samples num_words tokens after each prompt; prompt: int32[batch, time] -> int32[batch, num_words].

  Each step reads the last `time` tokens and draws from softmax(logits / temperature), the
  walkthrough's exp(log(p) / diversity) renormalised.
  """
  def step(window, step_key):
    logits = model.apply({'params': params}, window, deterministic=True)
    token = jax.random.categorical(step_key, logits / temperature).astype(window.dtype)
    return jnp.concatenate([window[:, 1:], token[:, None]], axis=1), token

  _, tokens = jax.lax.scan(step, prompt, jax.random.split(key, num_words))
  return tokens.T


def random_passages(windows: data.Windows, tokenizer: text.Tokenizer, model,
                    params, count: int, num_words: int, temperature: float,
                    seed: int) -> list[tuple[str, str]]:
  """(seed text, generated text) for `count` random windows, shown as the walkthrough did."""
  rng = np.random.default_rng(seed)
  prompts, _ = windows.take(rng.choice(len(windows), size=min(count, len(windows)),
                                       replace=False))
  tokens = generate(model, params, jnp.asarray(prompts), jax.random.key(seed), num_words,
                    temperature)
  show = lambda seqs: [text.remove_spaces(t) for t in tokenizer.sequences_to_texts(seqs)]
  return list(zip(show(prompts.tolist()), show(np.asarray(tokens).tolist())))
