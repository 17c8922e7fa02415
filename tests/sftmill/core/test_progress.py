"""Progress as log lines: one when a stage starts, then at most one per
interval with done/total, the live status and an ETA, and one at the end."""

from sftmill.core.progress import LogReporter, clock, progress_line


class Lines(LogReporter):
    def __init__(self, every):
        super().__init__(every)
        self.lines = []

    def emit(self, handle, text):
        self.lines.append(text)


def test_a_line_per_interval_with_rate_and_eta():
    quiet, chatty = Lines(every=3600), Lines(every=0)
    for reporter in (quiet, chatty):
        reporter.started("answer")
        handle = reporter.start("answer", 4)
        reporter.status(handle, "3.0 req/s")
        for _ in range(4):
            reporter.advance(handle)
        reporter.finish(handle, "4 kept")
    assert quiet.lines[:2] == ["answer: started", "answer: 4 items"]
    assert len(quiet.lines) == 3 and quiet.lines[2].startswith("answer: 4/4 done in ")
    assert quiet.lines[2].endswith("(4 kept)")
    middle = chatty.lines[2:-1]  # after each of the first three items; the last is the end line
    assert [m.split(" · ")[0] for m in middle] == ["answer: 1/4 (25%)", "answer: 2/4 (50%)",
                                                   "answer: 3/4 (75%)"]
    assert all(" · 3.0 req/s · ETA " in m for m in middle)


def test_eta_from_the_rate_so_far():
    handle = {"stage": "s", "done": 10, "total": 40, "status": "", "started": 100.0}
    assert progress_line(handle, now=130.0) == "s: 10/40 (25%) · ETA 1 min 30 s"
    assert [clock(4), clock(200), clock(3900)] == ["4 s", "3 min 20 s", "1 h 05 min"]
