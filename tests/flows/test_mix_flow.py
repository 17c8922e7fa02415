"""`sftmill mix`: a pipeline run, a Self-Instruct run and an
Evol-Instruct run mixed by weights — each source within one record of its
target — with cross-source near duplicates removed and every record keeping
its own lineage."""

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml
from prefect_homes import served_env

from sftmill.tasks.curation.mix import shares_of
from sftmill.tasks.report.export import to_record

TOPICS = ["quarks", "gluons", "hadrons", "mesons", "baryons", "pions", "kaons", "leptons",
          "neutrinos", "photons", "bosons", "fermions", "colour charge", "confinement",
          "asymptotic freedom", "lattice QCD", "jets", "the LHC", "deep inelastic scattering",
          "the proton spin", "the top quark", "the charm quark", "strangeness", "isospin"]


def export(folder: Path, fmt: str, rows: list[tuple[str, str, dict]]) -> Path:
    folder.mkdir(parents=True)
    lines = []
    for prompt, answer, meta in rows:
        record = to_record(fmt, prompt, answer, meta)
        if fmt == "alpaca":
            record["metadata"] = meta
        lines.append(json.dumps(record))
    (folder / "dataset.jsonl").write_text("\n".join(lines) + "\n")
    return folder


def test_mix_hits_the_weights_and_removes_cross_source_duplicates(tmp_path):
    pipeline = [(f"What role do {t} play in particle physics?",
                 f"In particle physics {t} matter because of how the strong force acts [{i}].",
                 {"subdomain": "Quarks and hadrons", "grounded": True}) for i, t in enumerate(TOPICS)]
    self_instruct = [(f"Write a quiz question about {t} for first-year students.",
                      f"Quiz: which statement about {t} is true? (a) … (b) … Answer: (a).",
                      {"generator": "self-instruct", "round": 1}) for t in TOPICS[:12]]
    evol = [(f"Explain {t} to a ten-year-old, using one everyday comparison.",
             f"Think of {t} like marbles held in a bag by elastic bands that pull harder.",
             {"generator": "evol-instruct", "round": 2, "operation": "concretize"})
            for t in TOPICS[:10]]
    # Planted: two Self-Instruct and one Evol record repeat pipeline prompts.
    self_instruct += [(pipeline[0][0], "Quarks are elementary particles bound by gluons.",
                       {"generator": "self-instruct", "round": 2}),
                      (pipeline[1][0].replace("What role", "Which role"),
                       "Gluons carry the strong force between quarks.",
                       {"generator": "self-instruct", "round": 2})]
    evol += [(pipeline[2][0], "Hadrons are bound states of quarks.",
              {"generator": "evol-instruct", "round": 1, "operation": "deepen"})]
    runs = {"pipeline": export(tmp_path / "pipeline", "openai", pipeline),
            "self-instruct": export(tmp_path / "si", "sharegpt", self_instruct),
            "evol": export(tmp_path / "evol", "alpaca", evol)}
    config = tmp_path / "curate.yaml"
    config.write_text(yaml.safe_dump({"near_duplicates": {"cosine": 0.97}}))
    out = tmp_path / "mixed"
    env = {**os.environ, **served_env(tmp_path / "home"), "PREFECT_LOGGING_LEVEL": "WARNING",
           "COLUMNS": "200"}
    proc = subprocess.run(
        [sys.executable, "-m", "sftmill.cli", "mix", *(f"{n}={p}" for n, p in runs.items()),
         "--weights", "pipeline=2,self-instruct=1,evol=1", "--config", str(config),
         "--out", str(out)], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]

    records = [json.loads(line) for line in (out / "dataset.jsonl").read_text().splitlines()]
    by_source = {}
    for r in records:
        by_source.setdefault(r["metadata"]["mix"]["source"], []).append(r)
    # After dedup ~24 / 12 / 10 records: the smallest source sets the total (~40, 20/10/10).
    total = len(records)
    targets = {"pipeline": total / 2, "self-instruct": total / 4, "evol": total / 4}
    assert total >= 36
    assert all(abs(len(by_source[n]) - t) <= 1 for n, t in targets.items())
    prompts = [r["messages"][0]["content"] for r in records]
    assert len(set(prompts)) == len(prompts)  # no prompt twice across sources
    evol_meta = by_source["evol"][0]["metadata"]
    assert evol_meta["generator"] == "evol-instruct" and "operation" in evol_meta  # own lineage
    card = (out / "card.md").read_text()
    assert "## Mix by source" in card and "| evol | 25.0% |" in card
    import duckdb

    con = duckdb.connect(str(out / "sftmill.duckdb"), read_only=True)
    dupes = con.execute("SELECT count(*) FROM rejects WHERE stage = 'curate' "
                        "AND reason = 'near_duplicate'").fetchone()[0]
    con.close()
    assert dupes == 3  # the planted ones


def test_shares_split_by_largest_remainder():
    counts = shares_of({"a": 0.5, "b": 0.25, "c": 0.25}, {"a": 100, "b": 7, "c": 50}, None)
    assert counts == {"a": 14, "b": 7, "c": 7}
    assert shares_of({"a": 1 / 3, "b": 1 / 3, "c": 1 / 3}, {"a": 5, "b": 5, "c": 5}, 10) == {
        "a": 4, "b": 3, "c": 3}
