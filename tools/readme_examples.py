"""The console examples of the README and docs/ are generated, not typed: every ```console block holding one
`$ perfmodel ...` command and no elided output ("...") is rerun and its output written back.

    python tools/readme_examples.py           # rewrite the blocks
    python tools/readme_examples.py --check   # exit 1 if a block differs from what the command prints (tests run it)
"""

from __future__ import annotations

import contextlib
import io
import re
import shlex
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from perfmodel._io import atomic_write_text  # noqa: E402
from perfmodel.cli import main as cli  # noqa: E402

FILES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"```console\n(\$ perfmodel [^\n]*)\n(.*?)```", re.S)


def run(command: str) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        cli(shlex.split(command)[2:])  # "$ perfmodel estimate ..." -> ["estimate", ...]
    return out.getvalue()


def render(text: str) -> str:
    def one(m: re.Match) -> str:
        cmd, body = m.group(1), m.group(2)
        if "\n$ " in "\n" + body or "\n  ..." in "\n" + body or " -o " in cmd:
            return m.group(0)  # several commands, elided output, or a file written: left as typed
        return f"```console\n{cmd}\n{run(cmd)}```"

    return BLOCK.sub(one, text)


def main() -> int:
    stale = []
    for path in FILES:
        text = path.read_text()
        new = render(text)
        if new != text:
            stale.append(path.relative_to(ROOT))
            if "--check" not in sys.argv:
                atomic_write_text(path, new)
    if "--check" in sys.argv and stale:
        print(f"console examples out of date in {', '.join(map(str, stale))}: run python tools/readme_examples.py",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
