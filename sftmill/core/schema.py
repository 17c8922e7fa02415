"""The run database's tables: one per stage, every row keeping the IDs of its parents (the
lineage from a final record back to its source document)."""

from __future__ import annotations

SCHEMA: dict[str, str] = {
    "meta": """
        key VARCHAR PRIMARY KEY,
        value VARCHAR
    """,
    # Every document that entered the run: local files, table rows, web pages.
    "documents": """
        doc_id VARCHAR PRIMARY KEY,
        uri VARCHAR,
        source_kind VARCHAR,          -- file | table | url | web
        title VARCHAR,
        text VARCHAR,
        n_chars INTEGER,
        query_id VARCHAR,             -- web documents: the search query that found them
        round INTEGER,
        created_at TIMESTAMP DEFAULT current_timestamp
    """,
    # Anything dropped by any stage, with a reason from a fixed vocabulary.
    "rejects": """
        stage VARCHAR,
        item_id VARCHAR,
        reason VARCHAR,
        detail VARCHAR,
        score DOUBLE,
        created_at TIMESTAMP DEFAULT current_timestamp,
        PRIMARY KEY (stage, item_id)
    """,
    "chunks": """
        chunk_id VARCHAR PRIMARY KEY,
        doc_id VARCHAR,
        idx INTEGER,
        char_start INTEGER,
        char_end INTEGER,
        heading VARCHAR,
        text VARCHAR,
        n_tokens INTEGER
    """,
    "relevance": """
        chunk_id VARCHAR PRIMARY KEY,
        score DOUBLE,
        reason VARCHAR,
        model VARCHAR,
        template_version VARCHAR,
        call_key VARCHAR
    """,
    "profiles": """
        profile_id VARCHAR PRIMARY KEY,
        chunk_id VARCHAR,
        domain VARCHAR,
        subdomain VARCHAR,
        topic VARCHAR,
        use_case VARCHAR,
        summary VARCHAR,
        model VARCHAR,
        template_version VARCHAR,
        call_key VARCHAR
    """,
    # Web search: queries written from profiles, the URLs they found.
    "queries": """
        query_id VARCHAR PRIMARY KEY,
        profile_id VARCHAR,
        query VARCHAR,
        round INTEGER,
        model VARCHAR,
        template_version VARCHAR,
        call_key VARCHAR
    """,
    "search_results": """
        query_id VARCHAR,
        url VARCHAR,
        rank INTEGER,
        title VARCHAR,
        snippet VARCHAR,
        backend VARCHAR,
        PRIMARY KEY (query_id, url)
    """,
    "fetches": """
        url VARCHAR PRIMARY KEY,
        ok BOOLEAN,
        reason VARCHAR,
        detail VARCHAR,
        final_url VARCHAR,
        doc_id VARCHAR,
        round INTEGER
    """,
    # Local search backend: a BM25 index over a folder of saved pages.
    "search_pages": """
        page_id VARCHAR PRIMARY KEY,
        uri VARCHAR,
        title VARCHAR,
        n_terms INTEGER
    """,
    "search_terms": """
        page_id VARCHAR,
        term VARCHAR,
        tf INTEGER,
        PRIMARY KEY (page_id, term)
    """,
    # Every prompt made by generate / broaden / rephrase, before filtering.
    "candidate_prompts": """
        prompt_id VARCHAR PRIMARY KEY,
        text VARCHAR,
        origin VARCHAR,               -- generated | broadened | rephrased | evolved
        parent_id VARCHAR,            -- profile (generated, broadened) or prompt (rephrased, evolved)
        profile_id VARCHAR,
        task_type VARCHAR,
        model VARCHAR,
        template_version VARCHAR,
        call_key VARCHAR,
        persona VARCHAR,              -- who it was written as (recipe `personas`)
        difficulty VARCHAR            -- the level it was asked for (recipe `difficulty`)
    """,
    # The personas of the run and their target shares (source: recipe | generated | use_case).
    "personas": """
        persona VARCHAR PRIMARY KEY,
        share DOUBLE,
        source VARCHAR
    """,
    # The judge's difficulty level of a prompt (recipe `difficulty.judge`).
    "prompt_difficulty": """
        prompt_id VARCHAR PRIMARY KEY,
        level VARCHAR,
        reason VARCHAR,
        model VARCHAR,
        template_version VARCHAR,
        call_key VARCHAR
    """,
    "prompt_scores": """
        prompt_id VARCHAR PRIMARY KEY,
        score DOUBLE,
        reason VARCHAR,
        model VARCHAR,
        template_version VARCHAR,
        call_key VARCHAR
    """,
    # The prompt flow's output: kept prompts after filter and dedup.
    "prompts": """
        prompt_id VARCHAR PRIMARY KEY,
        text VARCHAR,
        origin VARCHAR,
        parent_id VARCHAR,
        profile_id VARCHAR,
        chunk_id VARCHAR,
        doc_id VARCHAR,
        subdomain VARCHAR,
        task_type VARCHAR,
        quality DOUBLE,
        n_near_duplicates INTEGER,
        persona VARCHAR,
        difficulty VARCHAR            -- the level it was asked for
    """,
    # The answer half.
    "answer_queries": """
        query_id VARCHAR PRIMARY KEY,
        prompt_id VARCHAR,
        query VARCHAR,
        model VARCHAR,
        template_version VARCHAR,
        call_key VARCHAR
    """,
    "retrievals": """
        prompt_id VARCHAR,
        rank INTEGER,
        chunk_id VARCHAR,
        similarity DOUBLE,
        PRIMARY KEY (prompt_id, chunk_id)
    """,
    "answers": """
        answer_id VARCHAR PRIMARY KEY,
        prompt_id VARCHAR,
        text VARCHAR,
        grounded BOOLEAN,
        cited_chunk_ids VARCHAR[],
        cited_numbers INTEGER[],
        citations_inferred BOOLEAN,  -- no [n] marker: cited the passage it draws on most
        model VARCHAR,
        template_version VARCHAR,
        call_key VARCHAR,
        reasoning VARCHAR             -- the model's trace before the answer (a reasoning model)
    """,
    "answer_checks": """
        answer_id VARCHAR PRIMARY KEY,
        groundedness DOUBLE,
        judge_reason VARCHAR,
        lexical_support DOUBLE,
        n_chars INTEGER,
        refusal BOOLEAN,
        citations_valid BOOLEAN,
        truncated BOOLEAN,       -- cut off: the token budget ran out, or it ends mid-sentence
        echoes_prompt BOOLEAN,   -- says nothing the prompt did not already say
        prompt_similarity DOUBLE, -- embedding cosine between the answer and its prompt
        copied_share DOUBLE,     -- share of its words in 5-word runs copied from its cited passages
        self_reference VARCHAR,  -- words talking about "the sources" / "the passage" (null: none)
        degenerate VARCHAR,      -- the degenerate-text rule it fails (null: none)
        model VARCHAR,
        template_version VARCHAR,
        call_key VARCHAR,
        reasoning_chars INTEGER       -- length of its trace (0: none)
    """,
    # The final SFT records (one per kept answer).
    "dataset": """
        record_id VARCHAR PRIMARY KEY,
        prompt_id VARCHAR,
        answer_id VARCHAR,
        prompt VARCHAR,
        answer VARCHAR,
        grounded BOOLEAN,
        metadata VARCHAR,             -- JSON: lineage, models, template versions, scores
        reasoning VARCHAR,            -- the model's trace before the answer (null: none)
        turns VARCHAR                 -- JSON: a conversation's later turns (user, assistant, reasoning)
    """,
    # A conversation's follow-up turns (recipe `conversations`), kept or dropped.
    "turns": """
        record_id VARCHAR,
        turn INTEGER,                 -- the user's turn: 2, 3, … (1 is the record's prompt)
        kind VARCHAR,                 -- deeper | example | challenge | neighbour
        user_text VARCHAR,
        answer VARCHAR,               -- with its [n] markers
        reasoning VARCHAR,
        cited_chunk_ids VARCHAR[],
        groundedness DOUBLE,
        kept BOOLEAN,
        reason VARCHAR,               -- why it was dropped (null: kept)
        PRIMARY KEY (record_id, turn)
    """,
    "stage_stats": """
        run_id VARCHAR,
        stage VARCHAR,
        n_in INTEGER,
        n_out INTEGER,
        seconds DOUBLE,
        finished_at TIMESTAMP DEFAULT current_timestamp,
        PRIMARY KEY (run_id, stage)
    """,
    # Calls answered from the cache, counted (they add no llm_calls row).
    "llm_cache_hits": """
        stage VARCHAR,
        model VARCHAR,
        hits BIGINT,
        PRIMARY KEY (stage, model)
    """,
    # One row per LLM call sent (status ok | error); older runs also hold
    # a row per cache hit (status cache_hit).
    "llm_calls": """
        call_id VARCHAR PRIMARY KEY,
        key VARCHAR,
        model VARCHAR,
        backend VARCHAR,
        stage VARCHAR,
        status VARCHAR,
        request_json VARCHAR,
        response_text VARCHAR,
        error VARCHAR,
        attempts INTEGER,
        tokens_in INTEGER,
        tokens_out INTEGER,
        latency_s DOUBLE,
        created_at TIMESTAMP DEFAULT current_timestamp,
        reasoning VARCHAR             -- a reasoning model's trace before response_text
    """,
    # Batches submitted to a Batch API (llm/batch_api.py): written when the
    # input file is uploaded, before the batch is created, so that a killed
    # run resumes the same batch instead of paying for its requests again.
    "llm_batches": """
        input_file_id VARCHAR PRIMARY KEY,
        batch_id VARCHAR,             -- null until the server created it
        base_url VARCHAR,
        model VARCHAR,
        stage VARCHAR,
        keys VARCHAR[],               -- the cache keys of its requests (their custom_id)
        status VARCHAR,               -- the server's last word: validating … completed | expired | failed | cancelled
        n_completed INTEGER,
        n_failed INTEGER,
        created_at TIMESTAMP DEFAULT current_timestamp,
        updated_at TIMESTAMP
    """,
    # Reviewers' resolved decisions on prompts at the prompt gate (`tasks/review/annotations.py`).
    "prompt_reviews": """
        prompt_id VARCHAR PRIMARY KEY,
        decision VARCHAR,             -- accept | reject | edit
        edited_prompt VARCHAR,
        note VARCHAR,
        n_reviewers INTEGER,
        source VARCHAR
    """,
    "embeddings": """
        text_hash VARCHAR,
        model VARCHAR,
        vector FLOAT[],
        PRIMARY KEY (text_hash, model)
    """,
}

# The prompts the answer stages work on: `prompts` with the prompt gate's
# reviews applied (rejected ones left out, edited ones as edited) and
# without the near-duplicates of other shards of a sharded run
# (`tasks/shard.py`), a view.
ANSWERABLE_PROMPTS_VIEW = (
    "CREATE OR REPLACE VIEW answerable_prompts AS "
    "SELECT p.* REPLACE (coalesce(r.edited_prompt, p.text) AS text) "
    "FROM prompts p LEFT JOIN prompt_reviews r USING (prompt_id) "
    "WHERE r.decision IS DISTINCT FROM 'reject' "
    "AND p.prompt_id NOT IN (SELECT item_id FROM rejects WHERE stage = 'shard_merge')")
# The records that go out: `dataset` without those curation dropped
# (`tasks/curation/curate.py`) or a mix left over its weights (`tasks/curation/mix.py`), as a subquery.
KEPT_DATASET = ("(SELECT * FROM dataset WHERE record_id NOT IN "
                "(SELECT item_id FROM rejects WHERE stage IN ('curate', 'mix')))")
