import json

import pytest

from sftmill.core.files import write_atomic
from sftmill.tasks.report.export import to_record


@pytest.mark.parametrize("fmt, keys", [("openai", {"messages", "metadata"}),
                                       ("sharegpt", {"conversations", "metadata"}),
                                       ("alpaca", {"instruction", "input", "output", "metadata"})])
def test_formats(fmt, keys):
    record = to_record(fmt, "Why are quarks confined?", "Because the field energy grows.", {"a": 1})
    assert set(record) == keys


def test_unknown_format():
    with pytest.raises(ValueError, match="unknown format"):
        to_record("csv", "p", "a", {})


def test_atomic_write_leaves_old_file_when_interrupted(tmp_path):
    target = tmp_path / "dataset.jsonl"
    write_atomic(target, [b'{"old": true}\n'])

    def lines():
        yield b'{"new": 1}\n'
        raise KeyboardInterrupt  # the process dies halfway through

    with pytest.raises(KeyboardInterrupt):
        write_atomic(target, lines())
    assert json.loads(target.read_text()) == {"old": True}
    assert list(tmp_path.iterdir()) == [target]  # no partial file left behind
