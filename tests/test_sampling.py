import jax
import jax.numpy as jnp
import numpy as np

from rnn_jax import sampling
from rnn_jax import train

from conftest import CYCLE


def test_generate_slides_the_window_as_a_step_by_step_loop(trained):
  workdir, _ = trained
  _, _, model, params = train.load(workdir)
  prompt = jnp.array([[1, 2, 3, 4], [5, 6, 7, 8]], jnp.int32)
  key = jax.random.key(7)
  tokens = sampling.generate(model, params, prompt, key, 5, 1.5)
  window, expected = prompt, []
  for step_key in jax.random.split(key, 5):
    logits = model.apply({'params': params}, window, deterministic=True)
    token = jax.random.categorical(step_key, logits / 1.5).astype(jnp.int32)
    expected.append(token)
    window = jnp.concatenate([window[:, 1:], token[:, None]], axis=1)
  np.testing.assert_array_equal(tokens, jnp.stack(expected, axis=1))


def test_a_trained_model_continues_the_cycle_at_low_temperature(trained):
  workdir, _ = trained
  _, tokenizer, model, params = train.load(workdir)
  prompt = tokenizer.texts_to_sequences([' '.join(CYCLE[2:6])])
  tokens = sampling.generate(model, params, jnp.asarray(prompt), jax.random.key(0), 6, 0.05)
  words = tokenizer.sequences_to_texts(np.asarray(tokens).tolist())[0].split()
  assert words == (CYCLE * 2)[6:12]
