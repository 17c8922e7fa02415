import json

import pyarrow as pa
import pyarrow.parquet as pq

from sftmill.config import parse_recipe
from sftmill.store import Store
from tasks.collect import collect_into

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
    (docs / "latin1.txt").write_bytes("caf\xe9 gluon".encode("latin-1"))
    (docs / "big.txt").write_text("x" * 5000)
    (docs / "image.png").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00")
    (docs / "page.html").write_text(
        "<html><head><title>Gluons</title></head><body><article><p>"
        + TEXT + "</p></article></body></html>")
    recipe = make_recipe(tmp_path, [{"path": "docs"}], limits={"max_file_bytes": 4000})
    store = Store.open(tmp_path / "run.duckdb")
    seen, stored = collect_into(store, recipe)
    assert (seen, stored) == (9, 2)
    reasons = {r["detail"].split(":")[1].rsplit("/", 1)[-1]: r["reason"]
               for r in store.query_dicts("SELECT reason, detail FROM rejects")}
    assert reasons == {"empty.txt": "empty", "blank.txt": "empty", "binary.txt": "binary",
                       "latin1.txt": "undecodable", "big.txt": "too_large",
                       "image.png": "binary"}
    titles = sorted(r[0] for r in store.execute("SELECT title FROM documents"))
    assert titles[0] == "Gluons"


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
