import subprocess
import sys

from sftmill.cli import pipeline_schedule
from sftmill.config import parse_recipe


def recipe(tmp_path, schedule):
    (tmp_path / "a.txt").write_text("x")
    return parse_recipe({"name": "t", "output_dir": "o", "inputs": [{"path": "a.txt"}],
                         "search": {"backend": "none"}, "domain": {"name": "P"},
                         "schedule": schedule}, tmp_path)


def test_schedule_from_recipe_or_command_line(tmp_path):
    daily = recipe(tmp_path, {"cron": "0 3 * * *"})
    assert pipeline_schedule(daily, None, None) == {"cron": "0 3 * * *"}
    assert pipeline_schedule(daily, None, 30) == {"interval": 1800}
    assert pipeline_schedule(recipe(tmp_path, {"interval_minutes": 5}), None, None) == {"interval": 300}
    assert pipeline_schedule(None, "*/5 * * * *", None) == {"cron": "*/5 * * * *"}
    assert pipeline_schedule(None, None, None) == {}


def test_help_documents_every_command():
    out = subprocess.run([sys.executable, "-m", "sftmill.cli", "--help"], capture_output=True,
                         text=True, timeout=60).stdout
    for command in ("run", "validate", "serve", "export", "stats"):
        assert command in out


def test_serve_needs_a_server(monkeypatch):
    env = {k: v for k, v in __import__("os").environ.items() if k != "PREFECT_API_URL"}
    proc = subprocess.run([sys.executable, "-m", "sftmill.cli", "serve"], capture_output=True,
                          text=True, timeout=60, env=env)
    assert proc.returncode == 2 and "PREFECT_API_URL is not set" in proc.stderr
