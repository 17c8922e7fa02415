import pytest

from sftmill.tasks.stages.chunk import chunk_text, estimate_tokens, split_blocks

DOC = """# Quarks

## Flavours

There are six flavours of quark. They come in three generations.

- up and down
- charm and strange
- top and bottom

## Colour

Quarks carry colour charge. Hadrons are colour-neutral.
"""


def test_offsets_point_back_into_the_document():
    for chunk in chunk_text(DOC, max_tokens=20):
        assert DOC[chunk.start:chunk.end] == chunk.text


def test_headings_start_chunks_and_are_remembered():
    chunks = chunk_text(DOC, max_tokens=200)
    assert [c.heading for c in chunks] == ["Flavours", "Colour"]
    assert chunks[0].text.startswith("There are six")
    assert "top and bottom" in chunks[0].text


def test_lists_are_one_block():
    kinds = [b.kind for b in split_blocks(DOC)]
    assert kinds == ["heading", "heading", "paragraph", "list", "heading", "paragraph"]


def test_no_chunk_exceeds_the_bound_even_for_one_huge_paragraph():
    text = " ".join(f"Sentence number {i} is here." for i in range(400))
    chunks = chunk_text(text, max_tokens=50)
    assert len(chunks) > 10
    assert all(estimate_tokens(c.text) <= 50 for c in chunks)
    assert all(c.text.rstrip().endswith(".") for c in chunks[:-1])  # cut at sentence ends


def test_words_without_spaces_are_cut_hard():
    chunks = chunk_text("x" * 1000, max_tokens=40)
    assert all(len(c.text) <= 160 for c in chunks)
    assert "".join(c.text for c in chunks) == "x" * 1000


@pytest.mark.parametrize("text", ["", "   ", "\n\n\t\n"])
def test_empty_and_whitespace_only_give_no_chunks(text):
    assert chunk_text(text, max_tokens=100) == []


def test_small_paragraphs_are_packed_together():
    text = "\n\n".join(f"Paragraph {i} talks about gluons." for i in range(6))
    chunks = chunk_text(text, max_tokens=30)
    assert 1 < len(chunks) < 6
