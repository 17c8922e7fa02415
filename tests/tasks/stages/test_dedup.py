import numpy as np
import pytest

import sftmill.tasks.stages.dedup as dedup
from sftmill.core.endpoints import Embedding
from sftmill.embed.embedder import Embedder

PAIRS = [
    ("What role do quarks and gluons play in particle physics?",
     "What is the role of quarks and gluons in particle physics?"),
    ("How many types of quarks are there, and what are their names?",
     "How many kinds of quarks exist and what are they called?"),
    ("Why can a single quark never be observed on its own?",
     "Why is it impossible to observe a single isolated quark?"),
]
DIFFERENT = [
    "Explain how lattice QCD computes the proton mass.",
    "Describe the experiment that first showed evidence for gluons.",
    "Compare mesons and baryons in terms of their quark content.",
    "What is the quark-gluon plasma and where was it created?",
]



def static_dedup_run(tmp_path, thresholds: dict, extra: tuple[str, ...] = (), candidates: bool = True):
    """The example recipe with the static dedup model and `thresholds`, its
    store, and the texts (PAIRS' originals, their rewordings, DIFFERENT,
    `extra`) — as `candidate_prompts` p0, p1, … unless `candidates` is False."""
    from examples import example_recipe

    from sftmill.core.recipe import load_recipe
    from sftmill.core.store import Store

    recipe = load_recipe(example_recipe(tmp_path, dedup_embedding={"model": "static:all-MiniLM-L6-v2"},
                                        thresholds=thresholds))
    store = Store.open(recipe.db_path)
    texts = [a for a, _ in PAIRS] + [b for _, b in PAIRS] + DIFFERENT + list(extra)
    if candidates:
        store.insert("candidate_prompts", [{"prompt_id": f"p{i}", "text": t, "origin": "generated",
                                            "parent_id": "x", "profile_id": "x", "task_type": "question"}
                                           for i, t in enumerate(texts)])
    return recipe, store, texts

@pytest.mark.real_model
def test_paraphrase_pairs_collapse_and_different_prompts_stay():
    texts = [a for a, _ in PAIRS] + [b for _, b in PAIRS] + DIFFERENT
    vectors = Embedder(Embedding()).embed(texts)
    removed = dedup.near_duplicates(vectors, threshold=0.85)
    assert set(removed) == {3, 4, 5}  # each paraphrase gives way to its earlier original
    assert {removed[3 + i][0] for i in range(3)} == {0, 1, 2}
    assert all(removed[3 + i][0] == i for i in range(3))


def test_representative_is_the_first_in_priority_order_and_chains_do_not_cascade():
    # a≈b (0.95), b≈c (0.95), a·c = 0.81 below threshold 0.9: c must stay.
    a = np.array([1.0, 0.0])
    b = np.array([np.cos(0.3176), np.sin(0.3176)])
    c = np.array([np.cos(0.6352), np.sin(0.6352)])
    removed = dedup.near_duplicates(np.stack([a, b, c]).astype(np.float32), 0.9)
    assert set(removed) == {1}
    assert removed[1][0] == 0


def clustered(n_topics=60, per_topic=50, dim=96, seed=0):
    """Topic-clustered unit vectors (cosine ~0.5 within a topic) with a tenth
    of them copied at cosine 0.95–0.99: the shape of real prompt embeddings."""
    rng = np.random.default_rng(seed)
    unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)  # noqa: E731
    centres = unit(rng.normal(size=(n_topics, dim)))
    base = unit(centres.repeat(per_topic, 0) + unit(rng.normal(size=(n_topics * per_topic, dim))))
    src = base[rng.choice(len(base), len(base) // 10, replace=False)]
    cos = rng.uniform(0.95, 0.99, len(src))[:, None]
    noise = rng.normal(size=src.shape)
    noise = unit(noise - (noise * src).sum(1, keepdims=True) * src)
    vectors = np.vstack([base, cos * src + np.sqrt(1 - cos ** 2) * noise])
    return vectors[rng.permutation(len(vectors))].astype(np.float32)


def test_cells_find_what_exact_search_finds_with_exact_cosines(monkeypatch):
    vectors = clustered()
    exact = dedup.similar_pairs(vectors, 0.92)
    exact_removed = dedup.near_duplicates(vectors, 0.92)
    monkeypatch.setattr(dedup, "EXACT_MAX", 10)  # the path of a million prompts:
    monkeypatch.setattr(dedup, "CELL_SIZE", 50)  # PCA 96 → 64, 66 cells, 8 probed
    cells = dedup.similar_pairs(vectors, 0.92)
    exact_pairs = set(zip(exact[0].tolist(), exact[1].tolist()))
    cell_pairs = set(zip(cells[0].tolist(), cells[1].tolist()))
    assert len(exact_pairs) >= 600  # 300 planted pairs, both ways
    assert cell_pairs <= exact_pairs  # nothing below the threshold …
    assert len(cell_pairs) >= 0.95 * len(exact_pairs)  # … and few missed
    assert np.allclose(cells[2], (vectors[cells[0]] * vectors[cells[1]]).sum(1), atol=1e-5)
    assert list(cells[0]) == sorted(cells[0])
    removed = dedup.near_duplicates(vectors, 0.92)
    assert len(set(removed) ^ set(exact_removed)) <= 0.05 * len(exact_removed)


def test_cells_compare_new_rows_with_all_rows(monkeypatch):
    vectors = clustered(seed=1)
    first = 2000
    exact = dedup.similar_pairs(vectors, 0.92, first=first)
    monkeypatch.setattr(dedup, "EXACT_MAX", 10)
    monkeypatch.setattr(dedup, "CELL_SIZE", 50)
    cells = dedup.similar_pairs(vectors, 0.92, first=first)
    assert cells[0].min() >= first and len(cells[0]) >= 0.95 * len(exact[0])
    assert set(zip(cells[0].tolist(), cells[1].tolist())) <= set(zip(exact[0].tolist(), exact[1].tolist()))
    assert (cells[1] < first).any() and (cells[1] >= first).any()  # old rows and other new rows


def test_no_prompts():
    assert dedup.near_duplicates(np.zeros((0, 8), dtype=np.float32), 0.9) == {}


def test_new_near_duplicates_against_old_rows_earlier_new_rows_and_groups():
    from sftmill.tasks.stages.dedup import new_near_duplicates

    def unit(*xs):
        v = np.array(xs, dtype=np.float32)
        return v / np.linalg.norm(v, axis=1, keepdims=True)

    old = unit([1, 0, 0], [0, 1, 0])
    new = unit([1, 0.01, 0],    # repeats old 0
               [0, 0, 1],       # new
               [0, 0.01, 1],    # repeats new 1
               [0.01, 1, 0])    # repeats old 1, but same group: kept
    removed = new_near_duplicates(old, new, 0.95, old_groups=["a", "b"],
                                  new_groups=["x", "y", "z", "b"])
    assert {k: v[:2] for k, v in removed.items()} == {0: ("old", 0), 2: ("new", 1)}
    assert new_near_duplicates(old[:0], new, 0.95) == {2: ("new", 1, pytest.approx(0.99995, abs=1e-3))}


@pytest.mark.real_model
def test_dedup_stage_embeds_with_dedup_embedding(tmp_path):
    recipe, store, texts = static_dedup_run(tmp_path, {"dedup_cosine": 0.93})
    store.insert("prompt_scores", [{"prompt_id": f"p{i}", "score": 5.0 - i / 100}
                                   for i in range(len(texts))])
    n_in, n_out = dedup.dedup_prompts(store, recipe)
    assert store.execute("SELECT DISTINCT model FROM embeddings") == [("static:all-MiniLM-L6-v2",)]
    assert n_in == 10 and n_out == 8  # two of the three rewordings reach 0.93 with static vectors
    removed = {r[0] for r in store.execute("SELECT item_id FROM rejects WHERE stage = 'dedup'")}
    assert removed == {"p3", "p4"}


@pytest.mark.real_model
@pytest.mark.parametrize("served", [True, False])
def test_prompt_filter_embeds_for_dedup_beside_a_served_judge(tmp_path, monkeypatch, served):
    from fakes import ScriptedLLM, route_llm, schema_answers

    from sftmill.tasks.stages.prompt_filter import score_prompts

    judge = route_llm(monkeypatch, ScriptedLLM(schema_answers))
    judge.max_concurrency = 4 if served else 1  # 1: as the in-process model, which takes the CPU
    recipe, store, _texts = static_dedup_run(tmp_path, {"prompt_quality": 0.5},
                                             extra=("What is this?",))  # vague
    assert score_prompts(store, recipe) == 10
    ahead = store.count("embeddings")
    assert ahead == (10 if served else 0)  # the vague prompt is dropped before the judge
    assert (store.path in dedup._AHEAD) == served  # their pairs too, searched beside the calls
    dedup.dedup_prompts(store, recipe)
    assert store.path not in dedup._AHEAD  # the stage took them
    kept = store.scalar("SELECT count(*) FROM prompt_scores WHERE score >= ?",
                        [recipe.thresholds.prompt_quality])
    assert store.count("embeddings") == (10 if served else kept)  # dedup embedded nothing new


@pytest.mark.real_model
def test_pairs_found_ahead_are_the_pairs_the_stage_would_find_among_its_rows(tmp_path):
    recipe, store, texts = static_dedup_run(tmp_path, {"dedup_cosine": 0.8}, candidates=False)
    ids = [f"p{i}" for i in range(len(texts))]
    # The stage's rows: a subset (p0 and p6 dropped by the judge) in its own order.
    rows = [{"prompt_id": ids[k], "text": texts[k]} for k in (5, 3, 9, 1, 4, 8, 2, 7)]
    vectors = dedup.dedup_embedder(store, recipe).embed([r["text"] for r in rows])
    alone = dedup.similar_pairs(vectors, 0.8)
    assert len(alone[0]) >= 4  # the test means something: pairs among the rows, and pairs with p0 gone

    dedup.search_ahead(store, recipe, ids, texts)
    ahead = dedup.pairs_found_ahead(store, recipe, rows)
    assert [a.tolist() for a in ahead[:2]] == [a.tolist() for a in alone[:2]]
    assert ahead[2] == pytest.approx(alone[2], abs=1e-5)
    assert dedup.near_duplicates(None, 0.8, ahead) == dedup.near_duplicates(vectors, 0.8)
    assert dedup.pairs_found_ahead(store, recipe, rows) is None  # taken by the stage that used it

    # Not used when a row's text, the threshold or a row itself is not what was searched.
    for changed_rows, changed_recipe in (
            ([{**rows[0], "text": "Something else entirely?"}, *rows[1:]], recipe),
            (rows, recipe.model_copy(update={"thresholds": recipe.thresholds.model_copy(
                update={"dedup_cosine": 0.9})})),
            ([*rows, {"prompt_id": "p99", "text": "A prompt the search never saw?"}], recipe)):
        dedup.search_ahead(store, recipe, ids, texts)
        assert dedup.pairs_found_ahead(store, changed_recipe, changed_rows) is None
