import pytest

from sftmill.config import parse_recipe
from sftmill.tasks.generate import allocate, select_profiles, target_shares


def recipe(tmp_path, subdomains, target=60, per_profile=3, rephrase=1):
    (tmp_path / "a.txt").write_text("x")
    return parse_recipe({"name": "t", "output_dir": "o", "inputs": [{"path": "a.txt"}],
                         "search": {"backend": "none"},
                         "domain": {"name": "Physics", "subdomains": subdomains},
                         "sizes": {"target_prompts": target, "prompts_per_profile": per_profile,
                                   "rephrasings_per_prompt": rephrase}}, tmp_path)


def test_shares_without_a_value_split_the_rest(tmp_path):
    r = recipe(tmp_path, [{"name": "A", "share": 0.5}, {"name": "B"}, {"name": "C"}])
    assert target_shares(r) == pytest.approx({"A": 0.5, "B": 0.25, "C": 0.25})


def test_allocate_follows_shares_when_profiles_suffice():
    assert allocate(10, {"A": 0.5, "B": 0.3, "C": 0.2}, {"A": 9, "B": 9, "C": 9}) == {"A": 5, "B": 3, "C": 2}


def test_allocate_moves_the_shortfall_to_subdomains_with_spare_profiles():
    assert allocate(10, {"A": 0.5, "B": 0.5}, {"A": 2, "B": 20}) == {"A": 2, "B": 8}


def test_allocate_never_exceeds_what_exists():
    assert allocate(100, {"A": 0.5, "B": 0.5}, {"A": 3, "B": 4}) == {"A": 3, "B": 4}


def test_select_profiles_is_deterministic_and_meets_shares(tmp_path):
    r = recipe(tmp_path, [{"name": "A", "share": 0.8}, {"name": "B", "share": 0.2}], target=60)
    profiles = [{"profile_id": f"p{i:02d}", "subdomain": "A" if i % 2 else "B"} for i in range(40)]
    chosen = select_profiles(profiles, r)
    assert len(chosen) == 15  # 60 prompts / (3 generated + 1 broadened per profile)
    assert sum(p["subdomain"] == "A" for p in chosen) == 12
    assert chosen == select_profiles(list(reversed(profiles)), r)
