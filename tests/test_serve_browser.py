"""experiments.serve as a user runs it: over HTTP, under the load tool, and in headless Chromium.

The browser test (the `browser` fixture, conftest.py) needs Debian's `chromium` and
`chromium-driver` (`.ci/run` installs them where it can) and selenium (the test extra); without
them it is skipped with the reason.
"""

import contextlib
import json
from pathlib import Path
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from experiments import load_test

REPO = Path(__file__).parents[1]
START_S = 180  # jax's import, loading the run and compiling its programs, on a loaded machine


def free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def health(url: str) -> dict | None:
  with contextlib.suppress(OSError):
    with urllib.request.urlopen(url + '/api/health', timeout=5) as answer:
      return json.load(answer)
  return None


@pytest.fixture(scope='module')
def server(trained, tmp_path_factory):
  workdir, _ = trained
  url = f'http://127.0.0.1:{free_port()}'
  log = tmp_path_factory.mktemp('serve') / 'serve.log'
  with log.open('w') as output:
    process = subprocess.Popen(
        [sys.executable, '-m', 'experiments.serve', f'--workdir={workdir}',
         f'--port={url.rsplit(":", 1)[1]}', '--batch_sizes=1,4', '--max_words=16',
         '--max_samples=4'], cwd=REPO, stdout=output, stderr=subprocess.STDOUT)
    try:
      deadline = time.monotonic() + START_S
      while health(url) is None:
        assert process.poll() is None, f'the server exited:\n{log.read_text()}'
        assert time.monotonic() < deadline, f'no answer in {START_S} s:\n{log.read_text()}'
        time.sleep(0.2)
      yield url
    finally:
      process.terminate()
      process.wait(timeout=30)


def test_the_server_answers_over_http_on_loopback(server):
  answer = health(server)
  assert answer['status'] == 'ok' and answer['limits']['batch_sizes'] == [1, 4]


def test_the_load_tool_gets_every_request_answered(server):
  report = load_test.run_load(server, {'seed_text': 'alpha beta', 'num_words': 8}, requests=24,
                              concurrency=6, timeout_s=60)
  assert (report['answered'], report['refused'], report['lost']) == (24, 0, 0)
  assert 1 <= report['generator_calls'] <= 24


def test_the_load_tool_reads_streams_and_times_their_first_words(server):
  report = load_test.run_load(server, {'seed_text': 'alpha beta', 'num_words': 16}, requests=12,
                              concurrency=4, timeout_s=60, stream=True)
  assert (report['answered'], report['refused'], report['lost']) == (12, 0, 0)
  assert 0 < report['first_words_p50_ms'] <= report['p50_ms']


def follow(browser, element, timeout_s: float = 60) -> None:
  """Clicks a link or a submit button and waits for the next page, which a click does not."""
  # pylint: disable=import-outside-toplevel
  from selenium.webdriver.common.by import By
  from selenium.webdriver.support import expected_conditions
  from selenium.webdriver.support.ui import WebDriverWait
  page = browser.find_element(By.TAG_NAME, 'html')
  element.click()
  wait = WebDriverWait(browser, timeout_s)
  wait.until(expected_conditions.staleness_of(page))
  wait.until(lambda b: b.execute_script('return document.readyState') == 'complete')


def test_the_page_generates_and_plays_a_game_round_in_chromium(server, browser):
  from selenium.webdriver.common.by import By  # pylint: disable=import-outside-toplevel
  from selenium.webdriver.support.ui import Select  # pylint: disable=import-outside-toplevel
  browser.get(server + '/')
  seed = browser.find_element(By.ID, 'seed_text')
  seed.send_keys('alpha beta gamma delta <b>bold</b>')
  for name, value in [('num_words', '6'), ('temperature', '0'), ('num_samples', '2')]:
    field = browser.find_element(By.ID, name)
    field.clear()
    field.send_keys(value)
  Select(browser.find_element(By.ID, 'top_k')).select_by_visible_text('all words')
  follow(browser, browser.find_element(By.ID, 'submit'))
  generated = [e.text for e in browser.find_elements(By.CLASS_NAME, 'generated')]
  assert generated == ['epsilon zeta eta theta alpha beta'] * 2
  assert 'left out: <b>bold</b>' in browser.find_element(By.CLASS_NAME, 'unknown').text

  follow(browser, browser.find_element(By.LINK_TEXT, 'Human or machine?'))
  assert browser.find_element(By.ID, 'score').text == 'Score: 0 of 0'
  assert len(browser.find_elements(By.CSS_SELECTOR, '.continuation')) == 3
  follow(browser, browser.find_element(By.ID, 'choice-2'))
  verdict = browser.find_element(By.CLASS_NAME, 'verdict').text
  assert browser.find_element(By.ID, 'score').text == (
      'Score: 1 of 1' if verdict.startswith('Correct!') else 'Score: 0 of 1')
  assert len(browser.find_elements(By.CSS_SELECTOR, '.human')) == 1
  follow(browser, browser.find_element(By.ID, 'next'))
  assert browser.find_element(By.ID, 'score').text.endswith('of 1')
