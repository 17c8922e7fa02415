import pytest

from sftmill.core.ids import content_id
from sftmill.core.store import Store


def test_content_id_is_stable_and_order_sensitive():
    assert content_id("a", 1) == content_id("a", 1)
    assert content_id("a", 1) != content_id(1, "a")
    assert len(content_id("x")) == 16


def test_reinserting_rows_adds_no_duplicates(tmp_path):
    store = Store.open(tmp_path / "run.duckdb")
    row = {"chunk_id": "c1", "doc_id": "d1", "idx": 0, "char_start": 0, "char_end": 4,
           "heading": "", "text": "text", "n_tokens": 1}
    store.insert("chunks", [row])
    store.insert("chunks", [row, {**row, "chunk_id": "c2"}])
    assert store.count("chunks") == 2


def test_ref_fingerprint_follows_ids(tmp_path):
    store = Store.open(tmp_path / "run.duckdb")
    empty = store.ref("documents", "doc_id")
    store.insert("documents", [{"doc_id": "d1", "text": "x"}])
    one = store.ref("documents", "doc_id")
    assert (empty.rows, one.rows) == (0, 1)
    assert empty.fingerprint != one.fingerprint
    assert store.ref("documents", "doc_id") == one


def test_store_id_survives_reopen_and_changes_with_a_new_file(tmp_path):
    first = Store.open(tmp_path / "a.duckdb").store_id()
    Store.close_all()
    again = Store.open(tmp_path / "a.duckdb").store_id()
    other = Store.open(tmp_path / "b.duckdb").store_id()
    assert first == again != other


def test_reject_keeps_reason_and_counts(tmp_path):
    store = Store.open(tmp_path / "run.duckdb")
    store.reject("collect", "i1", "empty", "file:///x")
    store.reject("collect", "i2", "binary")
    store.reject("collect", "i3", "empty")
    assert store.reject_counts("collect") == [("collect", "empty", 2), ("collect", "binary", 1)]


def test_drops_are_written_together_when_the_block_ends(tmp_path):
    store = Store.open(tmp_path / "db.duckdb")
    with store.drops("evol_r1") as drops:
        drops.add("a", "empty_evolution")
        drops.add("b", "near_duplicate", "cosine 0.97", 0.97)
        assert store.reject_counts("evol_r1") == []  # nothing written yet
    assert sorted(store.reject_counts("evol_r1")) == [("evol_r1", "empty_evolution", 1),
                                                      ("evol_r1", "near_duplicate", 1)]
    assert store.execute("SELECT detail, score FROM rejects WHERE item_id = 'b'") == [("cosine 0.97", 0.97)]


def test_replace_rows_swaps_the_table_or_leaves_it_as_it_was(tmp_path):
    import pytest

    store = Store.open(tmp_path / "db.duckdb")
    store.insert("meta", [{"key": "a", "value": "1"}, {"key": "b", "value": "2"}])
    assert store.replace_rows("meta", [{"key": "c", "value": "3"}]) == 1
    assert store.execute("SELECT key FROM meta") == [("c",)]
    with pytest.raises(Exception):
        store.replace_rows("meta", [{"key": "d", "no_such_column": "x"}])
    assert store.execute("SELECT key FROM meta") == [("c",)]  # rolled back, not emptied


def test_a_commit_that_fails_raises_its_own_error_not_the_rollbacks(tmp_path):
    """A full disk fails the COMMIT, which rolls the transaction back itself:
    the error seen is the disk's, not "cannot rollback - no transaction"."""
    import duckdb

    store = Store.open(tmp_path / "run.duckdb")
    real = store._con

    class FullDisk:
        def execute(self, sql, *args):
            if sql == "COMMIT":
                real.execute("ROLLBACK")
                raise duckdb.IOException("could not write: No space left on device")
            return real.execute(sql, *args)

        def __getattr__(self, name):
            return getattr(real, name)

    store._con = FullDisk()
    try:
        with pytest.raises(duckdb.IOException, match="No space left on device"):
            store.replace_rows("rejects", [{"stage": "s", "item_id": "a", "reason": "r",
                                            "detail": "", "score": None}])
    finally:
        store._con = real
    assert store.count("rejects") == 0
