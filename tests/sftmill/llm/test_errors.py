"""Run stops (the budget, the disk's free space): their sentence is taken
out of a failed run's message, and Prefect's records of them are not logged."""

import logging

from sftmill.llm.budget import BudgetExceeded
from sftmill.llm.errors import DiskSpaceShort, LLMUnavailableError, run_stop_sentence, without_run_stops


def test_a_run_stops_sentence_is_found_in_the_failed_runs_message():
    disk = "disk space: /runs/x has 3.0 MB free; the next 500 answer calls could need 9.1 MB. Finished"
    assert run_stop_sentence(f"Flow run encountered an exception: DiskSpaceShort: {disk}.") == disk + "."
    budget = "budget reached: stopped before 10 more answer calls (spent 0.9 of budget.max_cost 1)"
    assert run_stop_sentence(f"Task run failed: BudgetExceeded: {budget}") == budget + "."
    assert run_stop_sentence("Flow run encountered an exception: LLMUnavailableError: gone") is None
    assert run_stop_sentence(None) is None


def test_prefect_records_of_a_run_stop_are_filtered_out_and_others_kept():
    def record(exc: Exception | None, msg: str) -> logging.LogRecord:
        return logging.LogRecord("prefect.task_runs", logging.ERROR, __file__, 1, msg, None,
                                 (type(exc), exc, None) if exc else None)

    assert not without_run_stops(record(DiskSpaceShort("disk space: …"), "Task run failed"))
    assert not without_run_stops(record(BudgetExceeded("budget reached: …"), "Task run failed"))
    assert not without_run_stops(record(None, "Finished in state Failed('DiskSpaceShort: disk space')"))
    assert without_run_stops(record(LLMUnavailableError("gone"), "Task run failed"))
