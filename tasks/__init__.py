"""Pipeline stages: plain functions holding the logic, each wrapped by a thin
Prefect task (retries, caching) defined at the bottom of its module."""
