"""Where the repository's files are, for tests at any depth."""

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = REPO_ROOT / "jobs" / "examples"
