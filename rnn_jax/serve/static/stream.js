// The streaming page: the continuation arrives word by word from /api/stream (server-sent
// events, read with fetch so that a refusal's message can be shown), each word shaded by its
// probability under the model; hovering a word, or clicking it, shows the likeliest words there.
// Every text goes into the page as text (textContent), never as markup.
'use strict';

const form = document.getElementById('stream-form');
const seed = document.getElementById('seed');
const output = document.getElementById('stream');
const box = document.getElementById('alternatives');
const error = document.getElementById('stream-error');
let running = null;  // the AbortController of the stream in progress

const percent = (p) => `${(100 * p).toFixed(1)} %`;
const listed = (word) => word.alternatives.map((a) => `${a.word} ${percent(a.probability)}`);

function showAlternatives(word) {
  const title = document.createElement('p');
  title.textContent = `"${word.word}": ${percent(word.probability)}. The likeliest words there:`;
  const list = document.createElement('ol');
  for (const text of listed(word)) {
    const item = document.createElement('li');
    item.className = 'alternative';
    item.textContent = text;
    list.append(item);
  }
  box.replaceChildren(title, list);
}

function addWord(sample, word) {
  const lead = word.text.match(/^\s*/)[0];
  const span = document.createElement('span');
  span.className = 'word';
  span.textContent = word.text.slice(lead.length);
  span.dataset.probability = word.probability;
  span.style.backgroundColor = `rgba(30, 110, 220, ${(0.05 + 0.55 * word.probability).toFixed(3)})`;
  span.title = listed(word).join('\n');
  span.tabIndex = 0;
  span.addEventListener('click', () => showAlternatives(word));
  span.addEventListener('focus', () => showAlternatives(word));
  sample.append(lead, span);
}

function handle(name, data, samples) {
  if (name === 'start') {
    seed.textContent = data.seed + (data.unknown_words.length
      ? ` (not in the vocabulary, left out: ${data.unknown_words.join(', ')})` : '');
  } else if (name === 'words') {
    data.samples.forEach((words, i) => {
      if (!samples[i]) {
        samples[i] = document.createElement('li');
        samples[i].className = 'sample';
        output.append(samples[i]);
      }
      for (const word of words) addWord(samples[i], word);
    });
  } else if (name === 'end') {
    output.dataset.state = 'done';
  }
}

async function stream(query) {
  running?.abort();  // the server stops generating for a stream nobody reads
  running = new AbortController();
  output.replaceChildren();
  box.replaceChildren();
  seed.textContent = error.textContent = '';
  output.dataset.state = 'streaming';
  try {
    const response = await fetch(`/api/stream?${query}`, {signal: running.signal});
    if (!response.ok) {
      error.textContent = (await response.json()).error;
      output.dataset.state = 'refused';
      return;
    }
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    const samples = [];
    let buffered = '';
    for (;;) {
      const {value, done} = await reader.read();
      if (done) break;
      buffered += value;
      const events = buffered.split('\n\n');
      buffered = events.pop();  // an event not yet whole
      for (const event of events) {
        const fields = Object.fromEntries(event.split('\n').map((line) => {
          const colon = line.indexOf(': ');
          return [line.slice(0, colon), line.slice(colon + 2)];
        }));
        handle(fields.event, JSON.parse(fields.data), samples);
      }
    }
  } catch (failure) {
    if (failure.name !== 'AbortError') {
      error.textContent = `The stream broke off: ${failure.message}`;
      output.dataset.state = 'broken';
    }
  }
}

form.addEventListener('submit', (event) => {
  event.preventDefault();
  stream(new URLSearchParams(new FormData(form)).toString());
});
