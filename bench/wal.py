"""SQLite's write-ahead log under a long reader: how large the log grows and what the next
erasure costs.

For 20 s, contact creations, GETs by id and list pages (16 connections each) run against
`crm serve` on the SQLite database that a benchmark run left in bench/results/work/. From the
third second, another connection (this script, Python's sqlite3) keeps a read transaction
open for `--reader` seconds, as a backup or a report would. The log's size is sampled every
50 ms; after the load one subject with 1,000 orders is erased and timed.

Run it after a run that seeded SQLite (`make bench`, or `python3 bench/run.py --db sqlite
--only erase`), with the release build of the tree to measure:

    python3 bench/wal.py [--reader 10] [--subject 6]

Each subject can be erased once: `--subject` takes 5 to 8 (the benchmark's run erases 2 to 4).
"""

import argparse
import os
import sqlite3
import threading
import time
import types

import run


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--reader", type=float, default=10.0, help="seconds the long read lasts")
    p.add_argument("--subject", type=int, default=6, help="the subject to erase (5-8)")
    p.add_argument("--duration", type=int, default=20)
    args = p.parse_args()
    path = os.path.join(run.WORK, "crm.db")
    if not os.path.exists(path):
        raise SystemExit(f"no {path}: run a benchmark on SQLite first")
    api = run.Api("sqlite", f"sqlite://{path}?mode=rwc", os.path.join(run.WORK, "keys-sqlite"))
    try:
        session = run.Session(api.demo_password(), "sqlite")
        sizes = []
        sampling = threading.Event()
        sampling.set()

        def sample():
            while sampling.is_set():
                try:
                    sizes.append(os.path.getsize(path + "-wal"))
                except OSError:
                    sizes.append(0)
                time.sleep(0.05)

        def long_read():
            time.sleep(3)
            db = sqlite3.connect(path, isolation_level=None)
            db.execute("BEGIN")
            db.execute("SELECT count(*) FROM contacts").fetchone()
            time.sleep(args.reader)
            db.execute("COMMIT")
            db.close()

        load = types.SimpleNamespace(connections=16, duration=args.duration)
        scripts = {
            "create": run.lua_script("create"),
            "GET": run.lua_script("get", DEMO_CONTACTS="1000"),
            "list": run.lua_script(
                "static", METHOD=run.lua_str("GET"),
                PATH=run.lua_str("/v1/contacts?limit=50&updated_since=2025-11-01T00:00:00Z"),
                HEADERS="{}", BODY="nil",
            ),
        }
        results = {}
        threads = [threading.Thread(target=sample)]
        threads += [
            threading.Thread(target=lambda k=k, s=s: results.__setitem__(k, run.wrk(run.API_PORT, s, session.access, load)))
            for k, s in scripts.items()
        ]
        if args.reader > 0:
            threads.append(threading.Thread(target=long_read))
        for t in threads:
            t.start()
        for t in threads[1:]:
            t.join()
        time.sleep(0.2)
        at_erasure = os.path.getsize(path + "-wal") if os.path.exists(path + "-wal") else 0
        session.refresh()
        session.stepped_up(path)
        target = run.uid("60000000", args.subject)
        t0 = time.perf_counter()
        status, _, data = run.request("POST", f"/v1/contacts/{target}/erase", {}, token=session.access)
        erase_ms = (time.perf_counter() - t0) * 1000
        sampling.clear()
        threads[0].join()
        if status != 200:
            raise SystemExit(f"erase failed: {status} {data[:200]}")
        for k, r in results.items():
            print(f"{k}: {r['rps']:.0f} req/s, p99 {r['p99_ms']} ms, errors {r['errors']}")
        per_2s = [round(max(sizes[i:i + 40]) / 1e6, 1) for i in range(0, len(sizes), 40)]
        print(f"write-ahead log, MB (largest in each 2 s): {per_2s}")
        print(f"largest {max(sizes) / 1e6:.1f} MB; {at_erasure / 1e6:.1f} MB before the erasure")
        print(f"erasure of a subject with 1,000 orders: {erase_ms:.1f} ms")
    finally:
        api.stop()


if __name__ == "__main__":
    main()
