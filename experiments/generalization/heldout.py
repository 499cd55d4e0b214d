"""Build the held-out texts of experiments/generalization: four kinds of text that are not
Python reference documentation (the training corpus), each the first 32 KiB of a file that
`make setup` installs or the repository ships, so every machine builds the same bytes.

    legal.txt      LICENSE/AGPL-3.0.txt (a licence)
    changelog.md   Lightning's pytorch/CHANGELOG.md (Markdown release notes, issue numbers)
    code.py        CPython's argparse.py (source code)
    manual.txt     IDLE's user manual, idlelib/help.html with its tags stripped (prose)

    python experiments/generalization/heldout.py OUT_DIR
"""

import argparse
import html.parser
import idlelib
import sys
from pathlib import Path

import lightning

SIZE = 32 * 1024


class _Text(html.parser.HTMLParser):
    """The text of an HTML page, outside <script> and <style>."""

    def __init__(self) -> None:
        super().__init__()
        self.parts: list[str] = []
        self.skip = 0

    def handle_starttag(self, tag, attrs):
        self.skip += tag in ("script", "style")

    def handle_endtag(self, tag):
        self.skip -= tag in ("script", "style")

    def handle_data(self, data):
        if not self.skip:
            self.parts.append(data)


def manual() -> bytes:
    parser = _Text()
    parser.feed((Path(idlelib.__file__).parent / "help.html").read_text(encoding="utf-8"))
    lines = [line.strip() for line in "".join(parser.parts).splitlines()]
    return "\n".join(line for line in lines if line).encode("utf-8")


def sources() -> dict[str, bytes]:
    repo = Path(__file__).resolve().parents[2]
    return {
        "legal.txt": (repo / "LICENSE" / "AGPL-3.0.txt").read_bytes(),
        "changelog.md": (Path(lightning.__file__).parent / "pytorch" / "CHANGELOG.md").read_bytes(),
        "code.py": Path(argparse.__file__).read_bytes(),
        "manual.txt": manual(),
    }


def main() -> None:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "experiments/generalization/out/heldout")
    out.mkdir(parents=True, exist_ok=True)
    for name, data in sources().items():
        (out / name).write_bytes(data[:SIZE])
        print(f"{out / name}: {min(len(data), SIZE)} bytes")


if __name__ == "__main__":
    main()
