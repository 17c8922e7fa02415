"""The bundled example recipe, copied into a test's folder with overrides."""

import shutil
from pathlib import Path

import yaml

EXAMPLE = Path(__file__).resolve().parents[1] / "data" / "example"


def example_recipe(tmp_path: Path, **overrides) -> Path:
    shutil.copytree(EXAMPLE / "corpus", tmp_path / "corpus")
    shutil.copytree(EXAMPLE / "web", tmp_path / "web")
    data = yaml.safe_load((EXAMPLE / "recipe.yaml").read_text())
    data["output_dir"] = "run"
    for key, value in overrides.items():
        data[key] = {**data.get(key, {}), **value} if isinstance(value, dict) else value
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def params(recipe: Path, **overrides):
    """Flow parameters for a recipe file."""
    from sftmill.flows.params import RunParams

    return RunParams(recipe_path=str(recipe), **overrides)
