"""Mixing by a metadata field: the groups are found where sftmill's exports keep them."""

import json

import pytest

from sftmill.core.errors import RecipeError
from sftmill.tasks.curation.mix import Source, check_groups, group_of

PIPELINE_META = {"record": {"task_type": "question"}, "profile": {"subdomain": "Gluons and QCD"},
                 "mix": {"source": "pipeline"}}


def test_a_pipeline_record_is_grouped_by_its_profile_subdomain_and_task_type():
    assert group_of(PIPELINE_META, "subdomain") == "Gluons and QCD"
    assert group_of(PIPELINE_META, "task_type") == "question"
    assert group_of(PIPELINE_META, "profile.subdomain") == "Gluons and QCD"  # any dotted path
    assert group_of({"subdomain": "Quarks", **PIPELINE_META}, "subdomain") == "Quarks"  # top level first
    assert group_of({"generator": "evol-instruct"}, "generator") == "evol-instruct"
    assert group_of({"record": {}}, "subdomain") == "(none)"
    assert group_of(PIPELINE_META, "source") == "pipeline"


def export(path, subdomains):
    path.write_text("".join(json.dumps({
        "messages": [{"role": "user", "content": f"What is {s} number {i}?"},
                     {"role": "assistant", "content": f"It is a part of physics, number {i}."}],
        "metadata": {"profile": {"subdomain": s}}}) + "\n" for i, s in enumerate(subdomains)))
    return path


def test_a_weight_for_a_group_no_record_is_in_stops_before_mixing(tmp_path):
    sources = [Source("a", export(tmp_path / "a.jsonl", ["Quarks", "Gluons"])),
               Source("b", export(tmp_path / "b.jsonl", ["Gluons"]))]
    check_groups(sources, {"Quarks": 0.5, "Gluons": 0.5}, "subdomain")
    with pytest.raises(RecipeError, match=r"--weights: no record with subdomain 'Leptons' "
                                          r"\(found: Gluons, Quarks\)"):
        check_groups(sources, {"Quarks": 0.5, "Leptons": 0.5}, "subdomain")
    with pytest.raises(RecipeError, match=r"--weights: no source named 'c' \(found: a, b\)"):
        check_groups(sources, {"a": 0.5, "c": 0.5}, "source")
