"""What the bundled example yields on the embedded model: records, subdomain
coverage, the commonest opening before and after rephrasing, and the run's
wall-clock time — the figures a new user sees on a first run.

    python benchmarks/example_yield.py [RECIPE]      # default: data/example/recipe.yaml

Runs `sftmill run` on a copy of the recipe whose output goes to a fresh
temporary folder (nothing cached), then reads the run database.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def main(recipe_path: Path) -> None:
    import duckdb

    data = yaml.safe_load(recipe_path.read_text())
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
        con.close()
    print(json.dumps({"exit_code": proc.returncode, "seconds": round(seconds), "records": records,
                      "records_by_subdomain": subs, "llm_calls": calls,
                      "opening_share": json.loads(openings[0]) if openings else None,
                      "drops": [f"{s}/{r} {n}" for s, r, n in drops]}, indent=1))


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "data" / "example" / "recipe.yaml")
