from tasks.rephrase import opening, top_opening


def test_opening_is_the_first_three_words_lowercased():
    assert opening("Could you please explain quarks?") == "could you please"
    assert opening("Why?") == "why"


def test_top_opening_share():
    texts = ["Could you please explain A", "Could you please explain B", "How do C work?",
             "could you please list D"]
    assert top_opening(texts) == ("could you please", 0.75)
    assert top_opening([]) == ("", 0.0)
