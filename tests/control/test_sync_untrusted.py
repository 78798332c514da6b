"""`orch sync` over storage someone else wrote: bad entries are skipped and reported, the rest indexed."""

from __future__ import annotations

from pathlib import Path

from orchestrator.control import cli
from orchestrator.control.sync import sync_index
from tests.control.test_sync import make_job, manager  # noqa: F401 - manager is a fixture

BOMB = "a: &a [x, x]\nb: [*a, *a]\n"


def test_bad_keys_and_fields_are_skipped_and_the_rest_indexed(manager, capsys):  # noqa: F811
    storage: Path = manager.home / "storage"
    make_job(storage, "good-1", result={"status": "SUCCEEDED"}, steps=2)
    make_job(storage, "odd-reason-1", result={"status": "FAILED", "reason": {"nested": [1, 2]},
                                               "finished_at": {"not": "a time"}})
    bomb = make_job(storage, "bomb-1", result={"status": "SUCCEEDED"})
    (bomb / "spec.yaml").write_text(BOMB)
    (storage / "jobs" / "back\\slash").mkdir()
    (storage / "jobs" / "back\\slash" / "spec.yaml").write_text("name: x\n")
    result = sync_index(manager, [storage.as_uri()])
    added = {rec.id: rec for rec in result.added}
    assert set(added) == {"good-1", "odd-reason-1"}
    assert "nested" in added["odd-reason-1"].message
    assert "bomb-1" in result.skipped and "alias" in result.skipped["bomb-1"]
    assert any("slash" in key for key in result.skipped)
    assert cli.main(["list"]) == 0


def test_a_dot_dot_job_key_does_not_stop_sync(manager, monkeypatch):  # noqa: F811
    """S3 keys may hold `..`, so a listing can name jobs/../spec.yaml (a local directory cannot)."""
    from orchestrator.control import sync as sync_module

    storage: Path = manager.home / "storage"
    make_job(storage, "good-1", result={"status": "SUCCEEDED"})
    real = sync_module.job_prefixes
    monkeypatch.setattr(sync_module, "job_prefixes",
                        lambda objects: {"..": next(iter(real(objects).values())), **real(objects)})
    result = sync_index(manager, [storage.as_uri()])
    assert [rec.id for rec in result.added] == ["good-1"]
    assert ".." in result.skipped


def test_escape_sequences_and_markup_from_storage_reach_the_terminal_escaped(manager, capsys):  # noqa: F811
    storage: Path = manager.home / "storage"
    root = make_job(storage, "shown-1", result={"status": "FAILED", "reason": "\x1b]0;owned\x07\x1b[2J[red]boom[/]"})
    (root / "metrics.jsonl").write_text('{"step": "[blink]7\\u001b[5m", "loss": 1.0}\n')
    sync_index(manager, [storage.as_uri()])
    capsys.readouterr()
    assert cli.main(["status", "shown-1"]) == 0
    assert cli.main(["list"]) == 0
    shown = capsys.readouterr().out
    assert "\x1b" not in shown and "\x07" not in shown
    assert "[red]boom[/]" in shown and "[blink]7" in shown
