from sftmill.tasks.stages.rephrase import opening, top_opening


def test_opening_is_the_first_three_words_lowercased():
    assert opening("Could you please explain quarks?") == "could you please"
    assert opening("Why?") == "why"


def test_top_opening_share():
    texts = ["Could you please explain A", "Could you please explain B", "How do C work?",
             "could you please list D"]
    assert top_opening(texts) == ("could you please", 0.75)
    assert top_opening([]) == ("", 0.0)


def test_only_prompts_beyond_the_share_of_an_over_represented_opening_are_rephrased():
    from sftmill.tasks.stages.rephrase import over_represented, pick_variant, to_rephrase

    prompts = ([{"prompt_id": f"a{i}", "text": f"What are the quarks number {i}?"} for i in range(6)]
               + [{"prompt_id": f"b{i}", "text": f"Why do gluons {i} bind?"} for i in range(2)]
               + [{"prompt_id": f"c{i}", "text": f"Explain jets {i}."} for i in range(12)])
    assert over_represented([p["text"] for p in prompts], 0.25) == {"what are the"}
    chosen = [p["prompt_id"] for p in to_rephrase(prompts, 0.25)]
    assert chosen == ["a5"]  # 6 of 20 open "what are the"; 5 (= 25%) keep their wording
    avoid = {"what are the"}
    assert pick_variant(["What are the flavours?", "Name the quark flavours."], "x", avoid) == \
        "Name the quark flavours."
    assert pick_variant(["What are the flavours?"], "x", avoid) is None
    assert pick_variant(["Same text."], "same text.", set()) is None


def test_rephrase_replaces_monotone_prompts_and_lowers_the_top_opening(tmp_path, monkeypatch):
    """Scripted generator: the variant that follows the suggested opening replaces
    its original, which is recorded as `rephrased`; the top opening's share falls."""
    from examples import example_recipe
    from fakes import ScriptedLLM, route_llm, user_text

    from sftmill.core.recipe import load_recipe
    from sftmill.core.store import Store
    from sftmill.tasks.stages.rephrase import forward_texts, rephrase_prompts, top_opening

    def respond(request):
        starter = user_text(request).split('Begin the first one with "', 1)[1].split('"', 1)[0]
        return {"variants": [f"What are the odds {len(request.messages)}?",
                             f"{starter} the idea of {abs(hash(user_text(request))) % 997}."]}

    route_llm(monkeypatch, ScriptedLLM(respond))
    recipe = load_recipe(example_recipe(tmp_path, thresholds={"max_opening_share": 0.1}))
    store = Store.open(recipe.db_path)
    texts = [f"What are the quark flavours {i}?" for i in range(8)] + ["Why is QCD hard?",
                                                                      "Describe jets."]
    store.insert("candidate_prompts", [{"prompt_id": f"p{i}", "text": t, "origin": "generated",
                                        "parent_id": "x", "profile_id": "x", "task_type": "question"}
                                       for i, t in enumerate(texts)])
    asked, made = rephrase_prompts(store, recipe)
    assert asked == made == 7  # 8 share "what are the"; 1 (10% of 10) keeps its wording
    replaced = store.execute("SELECT count(*) FROM rejects WHERE stage = 'rephrase' AND reason = 'rephrased'")
    assert replaced == [(7,)]
    after = forward_texts(store)
    assert len(after) == 10 and top_opening(texts)[1] == 0.8 and top_opening(after)[1] < 0.2
