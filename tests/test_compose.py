"""docker-compose.yml cannot be started here (no Docker engine): check its
structure, and that it defines every service and setting the code reads."""

import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]


ONE_SHOT = {"minio-setup", "pool-setup"}


def test_services_and_profiles():
    assert set(SERVICES) == {"postgres", "prefect-server", "sftmill", "searxng", "llm-cpu", "vllm",
                             "minio", "minio-setup", "pool-setup", "worker"}
    assert SERVICES["llm-cpu"]["profiles"] == ["cpu"]
    assert SERVICES["vllm"]["profiles"] == ["gpu"]
    assert all(SERVICES[name]["profiles"] == ["pool"] for name in ("minio", "minio-setup", "pool-setup", "worker"))


def test_every_service_has_a_healthcheck_and_dependencies_exist():
    for name, service in SERVICES.items():
        assert ("healthcheck" in service) != (name in ONE_SHOT), name
        for dependency, how in service.get("depends_on", {}).items():
            assert dependency in SERVICES
            assert how["condition"] == ("service_completed_successfully" if dependency in ONE_SHOT
                                        else "service_healthy"), (name, dependency)


def test_the_pool_profile_has_two_workers_on_the_pool_prefect_yaml_deploys_to_with_minio_keys():
    spec = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    pools = {d["work_pool"]["name"] for d in spec["deployments"]}
    worker = SERVICES["worker"]
    assert worker["deploy"]["replicas"] >= 2
    assert pools == {worker["command"].split("--pool ")[1].split()[0]}
    assert f"work-pool create {pools.pop()} --type process" in SERVICES["pool-setup"]["command"]
    assert "deploy --all" in SERVICES["pool-setup"]["command"]
    env, minio = worker["environment"], SERVICES["minio"]["environment"]
    assert env["AWS_ENDPOINT_URL"] == "http://minio:9000" and "9000:9000" in SERVICES["minio"]["ports"]
    assert (env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"]) == (
        minio["MINIO_ROOT_USER"].split(":")[0] + "}", minio["MINIO_ROOT_PASSWORD"].split(":")[0] + "}")
    assert env["PREFECT_LOCAL_STORAGE_PATH"] == SERVICES["sftmill"]["environment"]["PREFECT_LOCAL_STORAGE_PATH"]
    assert "local/sftmill" in SERVICES["minio-setup"]["entrypoint"]  # the bucket the README names
    assert "COPY prefect.yaml" in (ROOT / "Dockerfile").read_text()
    assert '.[s3]' in (ROOT / "Dockerfile").read_text()


def test_prefect_server_matches_the_pinned_client_and_has_analytics_off():
    pinned = next(d for d in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
                  if d.startswith("prefect=="))
    server = SERVICES["prefect-server"]
    assert server["image"].startswith(f"prefecthq/prefect:{pinned.split('==')[1]}-")
    assert server["environment"]["PREFECT_SERVER_ANALYTICS_ENABLED"] == "false"
    assert "postgres" in server["environment"]["PREFECT_API_DATABASE_CONNECTION_URL"]


def test_sftmill_service_gets_what_serve_and_retries_need():
    service = SERVICES["sftmill"]
    env = service["environment"]
    assert env["PREFECT_API_URL"] == "http://prefect-server:4200/api"
    assert env["PREFECT_RESULTS_PERSIST_BY_DEFAULT"] == "true"
    storage = env["PREFECT_LOCAL_STORAGE_PATH"]
    assert any(v.split(":")[1] == storage.rsplit("/", 1)[0] for v in service["volumes"])
    recipe = service["command"].split()[-1].replace("/app/", "")
    assert service["command"].startswith("sftmill serve") and (ROOT / recipe).is_file()


def test_every_variable_compose_needs_is_in_env_example():
    text = (ROOT / "docker-compose.yml").read_text()
    used = set(re.findall(r"\$\{([A-Z_]+)", text))
    documented = {line.split("=")[0] for line in (ROOT / ".env.example").read_text().splitlines()
                  if line and not line.startswith("#")}
    assert used <= documented, used - documented


def test_searxng_answers_json_and_image_files_exist():
    settings = yaml.safe_load((ROOT / "docker" / "searxng" / "settings.yml").read_text())
    assert "json" in settings["search"]["formats"]
    dockerfile = (ROOT / "Dockerfile").read_text()
    for folder in ("sftmill", "flows", "tasks", "prompts", "data"):
        assert f"COPY {folder} ./{folder}" in dockerfile
    assert "torch==2.13.0" in dockerfile


def test_prefect_yaml_entrypoints_exist():
    import importlib

    spec = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    for deployment in spec["deployments"]:
        path, name = deployment["entrypoint"].split(":")
        module = importlib.import_module(path.removesuffix(".py").replace("/", "."))
        flow = getattr(module, name)
        assert flow.name.startswith("sftmill-")
        assert (ROOT / deployment["parameters"]["params"]["recipe_path"]).is_file()
