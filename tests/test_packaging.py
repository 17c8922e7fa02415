"""sftmill installs under its own name: flows/, tasks/ and prompts/ of the
repository land in the wheel as sftmill.flows, sftmill.tasks and
sftmill.prompts (templates included), never as top-level packages."""

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_wheel_holds_only_the_sftmill_namespace(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps",
                    "--no-build-isolation", "--quiet", "-w", str(tmp_path)],
                   check=True, timeout=300, capture_output=True)
    wheel, = tmp_path.glob("sftmill-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/", 1)[0] for n in names}
    assert top == {"sftmill", next(t for t in top if t.endswith(".dist-info"))}
    for module in ("sftmill/flows/pipeline.py", "sftmill/tasks/stages/collect.py",
                   "sftmill/prompts/__init__.py", "sftmill/prompts/answer.jinja2",
                   "sftmill/prompts/generate.schema.json", "sftmill/llm/base.py"):
        assert module in names
    # Every module of the tree is in the wheel (a package missing from pyproject's list would not be).
    folders = {"sftmill": "sftmill", "flows": "sftmill/flows", "tasks": "sftmill/tasks",
               "prompts": "sftmill/prompts"}
    for folder, installed in folders.items():
        for source in (ROOT / folder).rglob("*.py"):
            assert f"{installed}/{source.relative_to(ROOT / folder).as_posix()}" in names, source
    templates = {p.name for p in (ROOT / "prompts").glob("*.jinja2")}
    assert templates <= {Path(n).name for n in names if n.startswith("sftmill/prompts/")}


def test_installed_modules_resolve_under_sftmill():
    import sftmill.flows.pipeline
    import sftmill.prompts
    import sftmill.tasks.stages.collect

    assert sftmill.prompts.load_template("generate").schema
    assert sftmill.flows.pipeline.pipeline.name == "sftmill-pipeline"
    assert sftmill.tasks.stages.collect.STAGE == "collect"
