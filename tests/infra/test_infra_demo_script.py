"""infra/demo's own shell lines that run after training, checked without the stack.

The demo runs under `set -euo pipefail`: a pipeline whose reader stops early (`head`) fails the
whole script with SIGPIPE (exit 141) once its writer has more to say than the pipe holds. That
happened at the very end of a real demo on the full RAVDESS copy (1,200 paths), after the champion
was promoted, so the "next steps" were never printed and the command reported failure.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "infra" / "demo"


def sample_line() -> str:
    """The line of infra/demo that picks the sample file shown in the next steps."""
    lines = [line for line in DEMO.read_text().splitlines() if re.match(r"\s*sample=", line)]
    assert len(lines) == 1, f"expected one sample= line in {DEMO}, found {lines}"
    return lines[0]


def run_under_pipefail(line: str, root: Path) -> subprocess.CompletedProcess:
    script = f'set -euo pipefail\nroot="{root}"\n{line}\nprintf "%s\\n" "$sample"\n'
    return subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=60)


def make_corpus(root: Path, n_actors: int = 24, per_actor: int = 150) -> list[Path]:
    """An official-layout tree whose sorted listing is far larger than a pipe's 64 KiB buffer."""
    files = []
    for a in range(1, n_actors + 1):
        actor = root / f"Actor_{a:02d}_with_a_long_folder_name_to_make_the_listing_large"
        actor.mkdir(parents=True)
        for i in range(per_actor):
            path = actor / f"03-01-{i % 8 + 1:02d}-01-{i // 8 % 2 + 1:02d}-{i // 16 + 1:02d}-{a:02d}.flac"
            path.touch()
            files.append(path)
    (root / "README.txt").touch()
    return files


def test_the_sample_line_prints_the_first_audio_file_of_a_large_corpus_and_exits_0(tmp_path):
    files = make_corpus(tmp_path / "ravdess")
    listing = sum(len(str(f)) + 1 for f in files)
    assert listing > 4 * 65536, "the tree must outgrow the pipe buffer for this test to mean anything"
    done = run_under_pipefail(sample_line(), tmp_path / "ravdess")
    assert done.returncode == 0, f"exit {done.returncode}: {done.stderr}"
    expected = sorted(str(f) for f in files)[0]  # reference: byte order, as LC_ALL=C sorts
    assert done.stdout.strip() == expected


def test_the_check_catches_a_head_that_closes_the_pipe_early(tmp_path):
    """The same harness fails the line the demo used to have, so the test above can fail."""
    make_corpus(tmp_path / "ravdess")
    old = """sample="$(find "$root" -name '*.wav' -o -name '*.flac' | sort | head -1)\""""
    done = run_under_pipefail(old, tmp_path / "ravdess")
    assert done.returncode == 141


def test_the_sample_line_is_empty_but_succeeds_without_audio(tmp_path):
    (tmp_path / "empty").mkdir()
    done = run_under_pipefail(sample_line(), tmp_path / "empty")
    assert done.returncode == 0 and done.stdout.strip() == ""
