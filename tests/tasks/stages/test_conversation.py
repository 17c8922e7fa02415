"""The plain parts of conversations: who is chosen, how a follow-up is read
from a reply, what counts as a repeat, and the rows a turn leaves."""

import numpy as np

from sftmill.core.recipe import parse_recipe
from sftmill.tasks.stages.conversation import Conversations, chosen, follow_up_question, repeats


def recipe(tmp_path, **conversations):
    (tmp_path / "a.txt").write_text("x")
    return parse_recipe({"name": "t", "output_dir": "o", "inputs": [{"path": "a.txt"}],
                         "search": {"backend": "none"}, "domain": {"name": "Physics"},
                         "conversations": conversations}, tmp_path)


def test_the_share_is_drawn_by_record_and_seed_with_lengths_in_range(tmp_path):
    r = recipe(tmp_path, share=0.3, turns=[2, 4])
    ids = [f"r{i}" for i in range(2000)]
    picked = chosen(ids, r)
    assert 0.27 < len(picked) / len(ids) < 0.33
    assert set(picked.values()) == {2, 3, 4}
    assert chosen(list(reversed(ids)), r) == picked  # by ID, not by position
    assert chosen(ids[:100], r) == {k: v for k, v in picked.items() if k in ids[:100]}


def test_a_follow_up_is_read_from_the_line_that_holds_a_question():
    assert follow_up_question("The next question:\nUser: Why do gluons carry colour?", "Why") == (
        "Why do gluons carry colour?")
    assert follow_up_question("One question: Is it really true that quarks are confined? Yes.",
                              "Is it really true that") == "Is it really true that quarks are confined?"
    assert follow_up_question("How do mesons decay? They decay weakly.", "Why") == "How do mesons decay?"
    assert follow_up_question("The expert was correct.", "Why") is None
    assert follow_up_question("What a complex topic!", "Why") is None


def test_a_repeat_is_the_nearest_earlier_turn_at_or_above_the_limit():
    a, b = np.array([1.0, 0.0]), np.array([0.6, 0.8])
    assert repeats(a, [b, a], 0.85) == 1.0
    assert repeats(a, [b], 0.85) is None
    assert repeats(a, [], 0.85) is None


def test_every_turn_row_has_every_column_whatever_came_first():
    work = Conversations.__new__(Conversations)  # the bookkeeping alone
    work.rows, work.drops = [], []
    conv = {"record_id": "r1", "open": True}
    work.drop(conv, 2, "deeper", "llm_invalid_output", "no question in the reply")
    work.add({"record_id": "r2"}, 2, "example", None, user_text="Why?", answer="Because [1].",
             cited_chunk_ids=["c1"], groundedness=1.0)
    assert [set(r) for r in work.rows] == [set(work.rows[1])] * 2
    assert work.rows[1]["kept"] and not work.rows[0]["kept"] and not conv["open"]
    assert work.drops == [("r1#2", "llm_invalid_output", "no question in the reply", None)]
