"""Reading files into documents."""

from sftmill.tasks.sources.documents import read_file


def test_a_file_named_by_a_relative_path_reads_with_its_absolute_uri(tmp_path, monkeypatch):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "quarks.md").write_text("# Quarks\n\nQuarks carry colour charge.\n")
    monkeypatch.chdir(tmp_path)
    from pathlib import Path

    doc = read_file(Path("notes/quarks.md"), 1_000_000)
    assert doc.uri == (tmp_path / "notes" / "quarks.md").as_uri()
    assert doc.text.startswith("# Quarks") and doc.title == "quarks"
