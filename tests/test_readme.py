"""The README is a front page: its set-up commands come first, it stays short, and its console examples are what the
tool prints (tools/readme_examples.py regenerates them)."""

import importlib.util
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("readme_examples", ROOT / "tools" / "readme_examples.py")
examples = importlib.util.module_from_spec(spec)
spec.loader.exec_module(examples)


def test_console_examples_are_what_the_tool_prints():
    r = subprocess.run([sys.executable, str(ROOT / "tools" / "readme_examples.py"), "--check"], capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stderr


def test_a_stale_example_is_rewritten():
    stale = "```console\n$ perfmodel estimate --model gpt2 --hardware h100 --gen 8\nTTFT 1 ms (typed by hand)\n```"
    new = examples.render(stale)
    assert new != stale and "GPT-2" in new and "typed by hand" not in new
    kept = "```console\n$ perfmodel estimate --model gpt2 --hardware h100\n  ...\n```"  # elided output stays
    assert examples.render(kept) == kept


def test_readme_opens_with_the_two_setup_commands_and_stays_short():
    text = (ROOT / "README.md").read_text()
    first = text.split("```bash\n", 1)[1].split("```", 1)[0].strip().splitlines()
    assert len(first) == 2
    assert first[0].startswith("python3 -m venv .venv") and "pip install ." in first[0] and "perfmodel estimate" in \
        first[0]
    assert "pip install -e '.[test]'" in first[1] and first[1].endswith("python -m pytest")
    assert len(text.splitlines()) <= 250
