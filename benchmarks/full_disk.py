"""A run whose folder's disk fills up, then the same command again once
there is room: what the console shows, and how many calls the server
answered twice.

    python benchmarks/full_disk.py [--size-mb 12] [--target 1500] [--concurrency 16]

Needs root (it mounts a tmpfs of `--size-mb` for the run folder, then grows
it with `mount -o remount`).  Against `mock_openai.py` (0.2 s a request, its
own process; embeddings from it too, so that the run is quick), on a
generated corpus: 1. an uninterrupted run on the ordinary disk (the calls a
run needs, its records); 2. the same recipe with its run folder on the small
tmpfs: exit code, console lines, tracebacks on the console, the last line
(a disk too small for a first chunk of calls stops at the preflight; a
larger one at the chunk that cannot fit, or at the first failed write);
3. the tmpfs grown to 1 GB and the same command again.  Calls paid twice =
chat requests of 2. and 3. minus those of 1.; the records of 3. are compared
with those of 1.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import tempfile
from pathlib import Path

import yaml
from http_clients import start_server
from mock_run import mock_recipe, records, run_cli, server_stats, write_corpus


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mb", type=int, default=12)
    parser.add_argument("--target", type=int, default=1500)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--port", type=int, default=8013)
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("full_disk.py mounts a tmpfs: run it as root")
    server = start_server(args.port, 0.2, args.concurrency)
    url = f"http://127.0.0.1:{args.port}/v1"
    try:
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            base = mock_recipe(url, write_corpus(tmp / "corpus", args.target), args.target,
                               args.concurrency, name="full-disk")
            env = {**os.environ, "PREFECT_HOME": str(tmp / "prefect"),
                   "PREFECT_LOGGING_LEVEL": "WARNING"}
            whole = tmp / "whole.yaml"
            whole.write_text(yaml.safe_dump({**base, "output_dir": str(tmp / "whole")}))
            before = server_stats(url)["chat"]
            uninterrupted = run_cli(whole, env)
            needed = server_stats(url)["chat"] - before
            whole_mb = sum(f.stat().st_size for f in (tmp / "whole").rglob("*") if f.is_file()) / 2**20

            disk = tmp / "disk"
            disk.mkdir()
            subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={args.size_mb}m", "tmpfs", str(disk)],
                           check=True)
            try:
                small = tmp / "small.yaml"
                small.write_text(yaml.safe_dump({**base, "output_dir": str(disk / "run")}))
                before = server_stats(url)["chat"]
                full = run_cli(small, env)
                first = server_stats(url)["chat"] - before
                subprocess.run(["mount", "-o", "remount,size=1g", str(disk)], check=True)
                before = server_stats(url)["chat"]
                rerun = run_cli(small, env)
                second = server_stats(url)["chat"] - before
                same = records(disk / "run") == records(tmp / "whole")
                n_records = len(records(disk / "run"))
            finally:
                subprocess.run(["umount", str(disk)], check=False)
    finally:
        server.terminate()
        server.wait()
    print(json.dumps({"size_mb": args.size_mb, "target": args.target,
                      "concurrency": args.concurrency, "uninterrupted": uninterrupted,
                      "uninterrupted_folder_mb": round(whole_mb, 1),
                      "calls_needed": needed, "full_disk_run": full, "calls_first": first,
                      "rerun": rerun, "calls_rerun": second,
                      "calls_paid_twice": first + second - needed,
                      "records": n_records, "records_same_as_uninterrupted": same}, indent=1))


if __name__ == "__main__":
    main()
