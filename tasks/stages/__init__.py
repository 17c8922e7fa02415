"""The recipe's stages, one module per step, in recipe order:

collect, chunk, relevance (with sizing), profile, web (queries, search and fetch), generate (and
broaden), rephrase, evolve, prompt_filter, dedup, rag (answer_search, retrieve), answer (and answer_checks).
Each module holds plain functions and, at its bottom, the thin Prefect task that runs them."""
