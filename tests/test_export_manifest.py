"""``export-assets`` remembers the options that produced a directory."""

from __future__ import annotations

import json
from pathlib import Path

from support.ops import export_assets as _export

from bizmetrics import assets


def _snapshot(directory: Path) -> dict[str, str]:
    return {
        str(p.relative_to(directory)): p.read_text()
        for p in sorted(directory.rglob("*"))
        if p.is_file() and p.name != assets.MANIFEST
    }


TUNED = ("--namespace", "acme", "--api-objective", "0.99", "--for", "BizmetricsTargetDown=5m", "--min-events", "20")


def test_a_rerun_without_options_regenerates_the_same_files(tmp_path):
    first = _export(tmp_path, *TUNED)
    assert first.returncode == 0, first.stderr
    made = _snapshot(tmp_path)
    assert any("acme_connector_operations_total" in text for text in made.values())
    manifest = json.loads((tmp_path / assets.MANIFEST).read_text())
    assert manifest["options"] == {
        "--namespace": "acme",
        "--api-objective": ["0.99"],
        "--for": ["BizmetricsTargetDown=5m"],
        "--min-events": ["20"],
    }
    assert set(manifest["files"]) == set(made)
    # Every file it wrote is listed, the manifest last.
    listed = first.stdout.split()
    assert {str(Path(path).relative_to(tmp_path)) for path in listed} == {*made, assets.MANIFEST}
    assert listed[-1] == str(tmp_path / assets.MANIFEST)

    again = _export(tmp_path)
    assert again.returncode == 0, again.stderr
    assert again.stdout == ""  # nothing rewritten: every file already holds what the options make
    assert "the options of the last export: --api-objective 0.99" in again.stderr
    assert _snapshot(tmp_path) == made


def test_changed_options_are_reported_and_regenerate_files_but_not_hand_edits(tmp_path):
    assert _export(tmp_path, "--api-objective", "0.99").returncode == 0
    edited = tmp_path / "prometheus" / "alerting_rules.yml"
    edited.write_text(edited.read_text() + "# mine\n")
    slo = tmp_path / "prometheus" / "slo_rules.yml"
    before = slo.read_text()

    changed = _export(tmp_path, "--api-objective", "0.995")
    assert changed.returncode == 1  # the hand edit was left alone
    assert "options changed since the last export: --api-objective 0.99 -> --api-objective 0.995" in changed.stderr
    assert f"left alone (edited by hand, --force overwrites): {edited}" in changed.stderr
    assert str(slo) in changed.stdout.split()  # written by the last export: regenerated without --force
    assert slo.read_text() != before and "0.995" in slo.read_text()
    assert edited.read_text().endswith("# mine\n")

    # The edit stays protected on every later run, until --force.
    assert _export(tmp_path).returncode == 1
    forced = _export(tmp_path, "--force")
    assert forced.returncode == 0 and forced.stdout.split() == [str(edited), str(tmp_path / assets.MANIFEST)]
    assert "# mine" not in edited.read_text()
    assert "0.995" in slo.read_text()  # --force alone keeps the recorded options


def test_defaults_start_afresh_and_a_broken_manifest_is_reported(tmp_path):
    assert _export(tmp_path, "--namespace", "acme").returncode == 0
    fresh = _export(tmp_path, "--defaults")
    assert fresh.returncode == 0, fresh.stderr
    assert "options changed since the last export: --namespace acme -> (none" in fresh.stderr
    assert not any("acme_" in text for text in _snapshot(tmp_path).values())
    assert "options" in json.loads((tmp_path / assets.MANIFEST).read_text())
    assert json.loads((tmp_path / assets.MANIFEST).read_text())["options"] == {}

    (tmp_path / assets.MANIFEST).write_text("{not json")
    broken = _export(tmp_path)
    assert broken.returncode == 1
    assert "is not a bizmetrics export manifest" in broken.stderr

    (tmp_path / assets.MANIFEST).write_text(json.dumps({"options": {"--from-the-future": "x"}, "files": {}}))
    future = _export(tmp_path)
    assert future.returncode == 1 and "--from-the-future" in future.stderr


def test_the_python_api_writes_digests_and_regenerates_only_its_own_files(tmp_path):
    files = {"prometheus/a.yml": "a: 1\n", "grafana/b.json": "{}\n"}
    done = assets.export(tmp_path, files)
    assert sorted(p.name for p in done.written) == ["a.yml", "b.json"]
    manifest = assets.read_manifest(tmp_path)
    assert manifest is not None and "options" not in manifest
    assert set(manifest["files"]) == set(files)

    (tmp_path / "grafana" / "b.json").write_text('{"mine": 1}\n')
    done = assets.export(tmp_path, {"prometheus/a.yml": "a: 2\n", "grafana/b.json": "{ }\n"})
    assert [p.name for p in done.written] == ["a.yml"]
    assert [p.name for p in done.kept] == ["b.json"]
    assert (tmp_path / "grafana" / "b.json").read_text() == '{"mine": 1}\n'

    # A file that was there before any export (no digest) is not ours to replace either.
    other = tmp_path / "other"
    (other / "prometheus").mkdir(parents=True)
    (other / "prometheus" / "a.yml").write_text("theirs\n")
    assert [p.name for p in assets.export(other, {"prometheus/a.yml": "a: 1\n"}).kept] == ["a.yml"]
