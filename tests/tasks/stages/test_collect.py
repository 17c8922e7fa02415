import codecs
import json

import pyarrow as pa
import pyarrow.parquet as pq

from sftmill.core.recipe import parse_recipe
from sftmill.core.store import Store
from sftmill.tasks.stages.collect import collect_into

TEXT = "Quarks are bound by gluons into hadrons such as protons. " * 5


def make_recipe(tmp_path, inputs, **extra):
    data = {"name": "t", "output_dir": "out", "domain": {"name": "Physics"}, "inputs": inputs,
            "search": {"backend": "none"}, **extra}
    return parse_recipe(data, tmp_path)


def test_bad_files_are_skipped_with_reasons_and_good_ones_kept(tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "good.md").write_text("# Quarks\n\n" + TEXT)
    (docs / "copy.txt").write_text("# Quarks\n\n" + TEXT)  # identical text: stored once
    (docs / "empty.txt").write_text("")
    (docs / "blank.txt").write_text("  \n\t\n")
    (docs / "binary.txt").write_bytes(b"\x00\x01\x02abc")
    (docs / "big.txt").write_text("x" * 5000)
    (docs / "image.png").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00")
    (docs / "page.html").write_text(
        "<html><head><title>Gluons</title></head><body><article><p>"
        + TEXT + "</p></article></body></html>")
    recipe = make_recipe(tmp_path, [{"path": "docs"}], limits={"max_file_bytes": 4000})
    store = Store.open(tmp_path / "run.duckdb")
    seen, stored = collect_into(store, recipe)
    assert (seen, stored) == (8, 2)
    reasons = {r["detail"].split(":")[1].rsplit("/", 1)[-1]: r["reason"]
               for r in store.query_dicts("SELECT reason, detail FROM rejects")}
    assert reasons == {"empty.txt": "empty", "blank.txt": "empty", "binary.txt": "binary",
                       "big.txt": "too_large",
                       "image.png": "binary"}
    titles = sorted(r[0] for r in store.execute("SELECT title FROM documents"))
    assert titles[0] == "Gluons"


LATIN = ("Über die Quarks: Gell-Mann schlug 1964 vor, dass Hadronen aus drei Sorten "
         "bestehen. Die Farbladung der Gluonen erklärt, warum man freie Quarks nie sieht; "
         "à Genève, le CERN étudie la chromodynamique quantique. ") * 3


def test_latin1_cp1252_and_utf16_files_are_decoded_not_refused(tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "latin1.txt").write_bytes(LATIN.encode("latin-1"))
    (docs / "cp1252.txt").write_bytes(("“Quarks” – three of them – " + LATIN).encode("cp1252"))
    (docs / "utf16.txt").write_bytes(("Gluons: " + LATIN).encode("utf-16"))  # with BOM
    (docs / "utf16be.md").write_bytes(codecs.BOM_UTF16_BE + ("# QCD\n\n" + LATIN).encode("utf-16-be"))
    (docs / "binary.txt").write_bytes(bytes(range(256)) * 4)
    recipe = make_recipe(tmp_path, [{"path": "docs"}])
    store = Store.open(tmp_path / "run.duckdb")
    assert collect_into(store, recipe) == (5, 4)
    texts = {r[0].rsplit("/", 1)[-1]: r[1] for r in store.execute("SELECT uri, text FROM documents")}
    same = lambda a, b: a.split() == b.split()  # noqa: E731 (collect normalises spacing)
    assert same(texts["latin1.txt"], LATIN)
    assert texts["cp1252.txt"].startswith("“Quarks” – three")
    assert same(texts["utf16.txt"], "Gluons: " + LATIN)
    assert texts["utf16be.md"].startswith("# QCD")
    assert store.execute("SELECT reason FROM rejects") == [("binary",)]


def test_rerun_adds_no_duplicates(tmp_path):
    (tmp_path / "a.txt").write_text(TEXT)
    recipe = make_recipe(tmp_path, [{"path": "a.txt"}])
    store = Store.open(tmp_path / "run.duckdb")
    collect_into(store, recipe)
    collect_into(store, recipe)
    assert store.count("documents") == 1


def test_jsonl_and_parquet_rows_become_documents(tmp_path):
    rows = [{"body": TEXT, "id": "r1"}, {"body": "", "id": "r2"}, {"other": 1, "id": "r3"}]
    (tmp_path / "t.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\nnot json\n")
    pq.write_table(pa.table({"body": ["Gluons carry colour. " * 5], "id": ["p1"]}),
                   tmp_path / "t.parquet")
    recipe = make_recipe(tmp_path, [{"path": "t.jsonl", "text_column": "body", "id_column": "id"},
                                    {"path": "t.parquet", "text_column": "body"}])
    store = Store.open(tmp_path / "run.duckdb")
    collect_into(store, recipe)
    uris = sorted(r[0] for r in store.execute("SELECT uri FROM documents"))
    assert [u.rsplit("/", 1)[-1] for u in uris] == ["t.jsonl#r1", "t.parquet#1"]
    assert sorted(r[0] for r in store.execute("SELECT reason FROM rejects")) == [
        "bad_row", "empty", "missing_text_column"]


def test_url_inputs_are_fetched_with_their_skip_reasons(tmp_path):
    from webserver import TinyWeb

    web = TinyWeb()
    try:
        recipe = make_recipe(tmp_path, [{"url": web.url("/quark-colour")},
                                        {"url": web.url("/image.png")}],
                             search={"backend": "none", "allow_private_addresses": True})
        store = Store.open(tmp_path / "run.duckdb")
        assert collect_into(store, recipe) == (2, 1)
        assert store.scalar("SELECT source_kind FROM documents") == "url"
        assert store.execute("SELECT reason FROM rejects") == [("not_html",)]
    finally:
        web.close()
