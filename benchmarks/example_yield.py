"""What the bundled example yields on the embedded model: records, subdomain
coverage, the commonest opening before and after rephrasing, and the run's
wall-clock time — the figures a new user sees on a first run.

    python benchmarks/example_yield.py [RECIPE]      # default: data/example/recipe.yaml
    python benchmarks/example_yield.py --set 'conversations={share: 0.3, turns: [2, 3]}'
    python benchmarks/example_yield.py --set 'personas={generate: 3}' \
        --set 'difficulty={levels: {recall: 0.4, explain: 0.4, multi_step: 0.2}}'
    python benchmarks/example_yield.py --set 'difficulty={evolve_share: 0.3}'

Runs `sftmill run` on a copy of the recipe (with `--set SECTION=YAML`
sections replaced) whose output goes to a fresh temporary folder (nothing
cached), then reads the run database: with conversations also the user turns
they reached and their drops, with personas and difficulty their spread.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def main(recipe_path: Path, sections: dict) -> None:
    import duckdb

    data = {**yaml.safe_load(recipe_path.read_text()), **sections}
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp) / "run"
        data["output_dir"] = str(run_dir)
        data["inputs"] = [{**i, "path": str((recipe_path.parent / i["path"]).resolve())}
                          if "path" in i else i for i in data["inputs"]]
        if data.get("search", {}).get("local_dir"):
            data["search"]["local_dir"] = str((recipe_path.parent / data["search"]["local_dir"]).resolve())
        recipe = Path(tmp) / "recipe.yaml"
        recipe.write_text(yaml.safe_dump(data))
        started = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "sftmill.cli", "run", str(recipe)],
                              capture_output=True, text=True, env={"PREFECT_HOME": str(Path(tmp) / "ph"),
                                                                   **__import__("os").environ})
        seconds = time.perf_counter() - started
        con = duckdb.connect(str(run_dir / "sftmill.duckdb"), read_only=True)
        records = con.execute("SELECT count(*) FROM dataset").fetchone()[0]
        subs = dict(con.execute(
            "SELECT coalesce(p.subdomain, '(none)'), count(*) FROM dataset d JOIN prompts p "
            "USING (prompt_id) GROUP BY ALL").fetchall())
        openings = con.execute("SELECT value FROM meta WHERE key = 'opening_share'").fetchone()
        drops = con.execute("SELECT stage, reason, count(*) FROM rejects GROUP BY ALL "
                            "ORDER BY 3 DESC").fetchall()
        calls = con.execute("SELECT count(*) FROM llm_calls WHERE status = 'ok'").fetchone()[0]
        extra = extras(con, sections)
        con.close()
    print(json.dumps({"exit_code": proc.returncode, "seconds": round(seconds), "records": records,
                      "records_by_subdomain": subs, "llm_calls": calls,
                      "opening_share": json.loads(openings[0]) if openings else None,
                      "drops": [f"{s}/{r} {n}" for s, r, n in drops], **extra}, indent=1))


def extras(con, sections: dict) -> dict:
    """With conversations: the user turns they reached and the turns' drops;
    with personas and difficulty: records per persona, level asked → judged, and
    records whose prompt was rewritten harder."""
    extra = {}
    if "conversations" in sections:
        extra["turns_reached"] = dict(con.execute(
            "SELECT n, count(*) FROM (SELECT 1 + count(*) FILTER (WHERE kept) AS n FROM turns "
            "GROUP BY record_id) GROUP BY n ORDER BY n").fetchall())
        extra["turn_drops"] = [f"turn {t} {r} {n}" for t, r, n in con.execute(
            "SELECT turn, reason, count(*) FROM turns WHERE NOT kept GROUP BY ALL ORDER BY 1, 3 DESC"
        ).fetchall()]
    if "personas" in sections:
        extra["personas"] = dict(con.execute(
            "SELECT p.persona, count(*) FROM dataset d JOIN prompts p USING (prompt_id) GROUP BY ALL"
        ).fetchall())
    if "difficulty" in sections:
        extra["difficulty_asked_judged"] = [f"{a} -> {j}: {n}" for a, j, n in con.execute(
            "SELECT p.difficulty, coalesce(l.level, '-'), count(*) FROM dataset d JOIN prompts p "
            "USING (prompt_id) LEFT JOIN prompt_difficulty l USING (prompt_id) GROUP BY ALL "
            "ORDER BY 1, 2").fetchall()]
        extra["evolved_records"] = con.execute(
            "SELECT count(*) FROM dataset d JOIN prompts p USING (prompt_id) "
            "WHERE p.origin = 'evolved'").fetchone()[0]
    return extra


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("recipe", nargs="?", type=Path, default=ROOT / "data" / "example" / "recipe.yaml")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION=YAML",
                        help="replace a section of the recipe, e.g. 'personas={generate: 3}'")
    args = parser.parse_args()
    main(args.recipe, {k: yaml.safe_load(v) for k, v in (item.split("=", 1) for item in args.set)})
