#!/usr/bin/env python3
"""`make bench`: the API measured side by side with its limits.

For each database (PostgreSQL, then SQLite) this starts the release `crm serve` on a fresh
database, seeds a data set (full scale on PostgreSQL: 100 tenants, 1,000,000 contacts, 200,000
companies, 1,000,000 orders with 2 lines each; a tenth of it on SQLite), and drives every
workload with wrk on 127.0.0.1 for several rounds. In the same run it measures the floors:
pgbench running the same SQL the GET-by-id endpoint runs (PostgreSQL), and a minimal actix-web +
sqlx server (bench/baseline) doing the same authenticated lookup with the same JWT verification.
Results go to bench/results/<time>.json and .md, and a table is printed.

Only the Python standard library; wrk and pgbench come from Debian (the Makefile installs
wrk when it is missing).
"""

import argparse
import base64
import csv
import glob
import http.client
import json
import os
import re
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import threading
import time
import uuid
from datetime import datetime, timezone

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "bench", "results")
WORK = os.path.join(RESULTS, "work")
API_PORT = 18181
BASE_PORT = 18182
# The PostgreSQL server measured: the run's own (BenchPostgres), unless --pg-url names one.
PG_ADMIN = None
PG_PORT = 55432
PG_DB = "crm_bench"
ISSUER = f"http://127.0.0.1:{API_PORT}"
SUBJECTS = 8  # contacts with 1,000 orders each (export and erase)


def log(msg):
    print(f"==> {msg}", flush=True)


def run(cmd, **kw):
    return subprocess.run(cmd, check=True, **kw)


def pg_settings():
    """The settings of the run's PostgreSQL: what a production server on this machine would
    have, from PGTune's rules for a web application (a quarter of the memory for shared
    buffers, three quarters as the cache the planner counts on, SSD costs, WAL sized so a
    checkpoint is not forced every few seconds of writes). Durability is untouched: fsync,
    full-page writes and synchronous commit keep their defaults. Debian's stock settings
    (128 MB of shared buffers) are for a server that shares a small machine: against a data
    set of several GB they measure the buffer cache's misses, not the API."""
    with open("/proc/meminfo") as f:
        mem_mb = int(re.search(r"MemTotal:\s+(\d+) kB", f.read()).group(1)) // 1024
    return {
        "shared_buffers": f"{mem_mb // 4}MB",
        "effective_cache_size": f"{mem_mb * 3 // 4}MB",
        "maintenance_work_mem": f"{min(mem_mb // 16, 2048)}MB",
        "work_mem": "16MB",
        "wal_buffers": "16MB",
        "min_wal_size": "1GB",
        "max_wal_size": "4GB",
        "checkpoint_completion_target": "0.9",
        "random_page_cost": "1.1",
        "effective_io_concurrency": "200",
        "huge_pages": "try",
    }


class BenchPostgres:
    """The run's own PostgreSQL cluster (bench/results/work/pgdata, made once with initdb),
    on 127.0.0.1:PG_PORT with pg_settings(): the machine's server and its settings are left
    alone. As root, the cluster belongs to the postgres user (initdb refuses root)."""

    def __init__(self):
        # Debian's newest server, else one on the PATH.
        initdb = max(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]),
                     default=shutil.which("initdb"))
        if initdb is None:
            raise SystemExit("initdb is missing: install PostgreSQL's server package, or pass --pg-url")
        self.bindir = os.path.dirname(initdb)
        self.settings = pg_settings()
        self.data = os.path.join(WORK, "pgdata")
        self.as_user = []
        if os.geteuid() == 0:
            self.as_user = ["runuser", "-u", "postgres", "--"]
        if not os.path.exists(os.path.join(self.data, "PG_VERSION")):
            shutil.rmtree(self.data, ignore_errors=True)
            os.makedirs(self.data, mode=0o700)
            if self.as_user:
                shutil.chown(self.data, "postgres", "postgres")
            log(f"a PostgreSQL cluster for the benchmark in {self.data}")
            run(self.as_user + [initdb, "-D", self.data, "-U", "postgres",
                                "--auth=trust", "-E", "UTF8", "--locale=C.UTF-8"], stdout=subprocess.DEVNULL)
        # A server left running by an interrupted run is stopped first: it is started anew
        # with the settings below.
        if self.pg_ctl(["status"], check=False).returncode == 0:
            self.stop()
        options = f"-p {PG_PORT} -k {self.data} -c listen_addresses=127.0.0.1 " + " ".join(
            f"-c {k}={v}" for k, v in self.settings.items()
        )
        log(f"PostgreSQL for the benchmark on 127.0.0.1:{PG_PORT}: {options}")
        self.pg_ctl(["-o", options, "-l", os.path.join(self.data, "server.log"), "-w", "start"])

    def pg_ctl(self, args, check=True):
        return subprocess.run(self.as_user + [os.path.join(self.bindir, "pg_ctl"), "-D", self.data] + args,
                              check=check, stdout=subprocess.DEVNULL, stderr=None if check else subprocess.DEVNULL)

    def stop(self):
        self.pg_ctl(["-m", "fast", "-w", "stop"])


def pg_url(db):
    # Every server measured, and pgbench, reach PostgreSQL on this host without TLS: on one
    # host it protects nothing, and it cost PostgreSQL about a fifth of its CPU on the list
    # page's statements (README, Benchmark).
    return PG_ADMIN.rsplit("/", 1)[0].split("?", 1)[0] + "/" + db + "?sslmode=disable"


def psql(sql, db=PG_DB, capture=False):
    out = subprocess.run(
        ["psql", pg_url(db), "-v", "ON_ERROR_STOP=1", "-qtAc", sql],
        check=True,
        capture_output=True,
        text=True,
    )
    return out.stdout.strip() if capture else None


def uid(prefix, n):
    return f"{prefix}-0000-7000-8000-{n:012x}"


# ---------------------------------------------------------------------------------------------
# HTTP helpers


def request(method, path, body=None, token=None, headers=None, port=API_PORT):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    h = {"content-type": "application/json"}
    if token:
        h["authorization"] = f"Bearer {token}"
    h.update(headers or {})
    if body is not None and not isinstance(body, bytes):
        body = json.dumps(body)
    conn.request(method, path, body=body, headers=h)
    resp = conn.getresponse()
    data = resp.read()
    conn.close()
    return resp.status, dict(resp.getheaders()), data


def wait_health(port, proc):
    for _ in range(600):
        if proc.poll() is not None:
            raise SystemExit(f"the server on port {port} exited with {proc.returncode}")
        try:
            status, _, _ = request("GET", "/health", port=port)
            if status == 200:
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise SystemExit(f"the server on port {port} did not start")


class RssSampler:
    """Peak resident memory of a process, sampled every 50 ms while active."""

    def __init__(self, pid):
        self.pid = pid
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _read(self):
        try:
            with open(f"/proc/{self.pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        return int(line.split()[1]) * 1024
        except OSError:
            return 0
        return 0

    def _loop(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self._read())
            time.sleep(0.05)

    def __enter__(self):
        self.peak = self._read()
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


# ---------------------------------------------------------------------------------------------
# Servers


def api_env(db_url, key_dir):
    return {
        "PATH": os.environ["PATH"],
        "CRM_DATABASE_URL": db_url,
        "CRM_LISTEN_ADDR": f"127.0.0.1:{API_PORT}",
        "CRM_PUBLIC_URL": ISSUER,
        "CRM_KEY_DIR": key_dir,
        "CRM_WORKERS": "2",
        "CRM_RATE_LIMIT_PER_MINUTE": "0",
        "CRM_AUTH_RATE_LIMIT_PER_MINUTE": "0",
        "CRM_RETENTION_INTERVAL_SECS": "0",
        "CRM_LOG": "warn",
    }


def seal_seeded(db_url, key_dir):
    """The seed writes contacts in the clear, as an older version would have; `crm migrate`
    seals them (each gets its data key), as an upgrade does."""
    subprocess.run(
        [os.path.join(ROOT, "target", "release", "crm"), "migrate"],
        env=api_env(db_url, key_dir),
        check=True,
        stdout=subprocess.DEVNULL,
    )


class Api:
    def __init__(self, backend, db_url, key_dir):
        self.backend = backend
        env = api_env(db_url, key_dir)
        self.out_path = os.path.join(WORK, f"api-{backend}.log")
        self.out = open(self.out_path, "a")
        self.proc = subprocess.Popen(
            [os.path.join(ROOT, "target", "release", "crm"), "serve"],
            env=env,
            stdout=self.out,
            stderr=subprocess.STDOUT,
        )
        wait_health(API_PORT, self.proc)

    def demo_password(self):
        text = open(self.out_path).read()
        m = re.search(r"Demo tenant admin.*?password:\s+(\S+)", text, re.S)
        if not m:
            raise SystemExit(f"no demo password in {self.out_path}")
        return m.group(1)

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.out.close()


BASELINE = "minimal actix-web + sqlx server: "
# The writes of a bulk call straight to PostgreSQL (psql): a bulk workload's floor.
BULK_FLOOR = "floor: psql, the call's writes: "
# The same server with one pool shared by its workers (PostgreSQL): what the API's pool per
# worker changes.
SHARED = "minimal server, one pool shared by its workers: "


class Baseline:
    def __init__(self, db_url, jwk_x, key_dir, shared_pool=False, port=BASE_PORT):
        self.port = port
        env = {
            "PATH": os.environ["PATH"],
            "BASELINE_KEY_DIR": key_dir,
            "BASELINE_DATABASE_URL": db_url,
            "BASELINE_LISTEN": f"127.0.0.1:{port}",
            "BASELINE_SHARED_POOL": "1" if shared_pool else "0",
            "BASELINE_JWK_X": jwk_x,
            "BASELINE_ISSUER": ISSUER,
            "BASELINE_AUDIENCE": "crm-api",
            "BASELINE_WORKERS": "2",
        }
        self.proc = subprocess.Popen(
            [os.path.join(ROOT, "target", "release", "crm-bench-baseline")],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for _ in range(300):
            try:
                status, _, _ = request("GET", "/v1/contacts/x", port=port)
                if status in (401, 404):
                    return
            except OSError:
                pass
            time.sleep(0.1)
        raise SystemExit("the baseline server did not start")

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=30)


# ---------------------------------------------------------------------------------------------
# Seeding


def tenant_expr(n_expr, demo):
    """SQL for the tenant of item n: tenant 0 is the demo tenant, 1..99 the bench tenants."""
    return (
        f"CASE WHEN ({n_expr} - 1) % 100 = 0 THEN '{demo}'::uuid "
        f"ELSE ('10000000-0000-7000-8000-' || lpad(to_hex(({n_expr} - 1) % 100), 12, '0'))::uuid END"
    )


def seed_postgres(scale, demo):
    c, co, o = scale["contacts"], scale["companies"], scale["orders"]
    t = "now() - interval '30 days'"
    statements = [
        "INSERT INTO tenants (id, slug, name, kind, active, created_at, updated_at, version, mfa_required) "
        "SELECT ('10000000-0000-7000-8000-' || lpad(to_hex(t), 12, '0'))::uuid, 'bench-' || t, 'Bench ' || t, "
        f"'customer', true, {t}, {t}, 1, false FROM generate_series(1, 99) t",
        "INSERT INTO companies (id, tenant_id, name, domain, created_at, updated_at, version) "
        f"SELECT ('20000000-0000-7000-8000-' || lpad(to_hex(g), 12, '0'))::uuid, {tenant_expr('g', demo)}, "
        f"'Company ' || g, 'c' || g || '.example', {t}, {t}, 1 FROM generate_series(1, {co}) g",
        "INSERT INTO contacts (id, tenant_id, company_id, first_name, last_name, email, phone, job_title, "
        "created_at, updated_at, version, legal_hold) "
        f"SELECT ('30000000-0000-7000-8000-' || lpad(to_hex(g), 12, '0'))::uuid, {tenant_expr('g', demo)}, "
        f"('20000000-0000-7000-8000-' || lpad(to_hex(((g - 1) % {co}) + 1), 12, '0'))::uuid, "
        "'First' || g, 'Last' || g, 'c' || g || '@bench.example', '+4420' || lpad(g::text, 8, '0'), 'Buyer', "
        f"{t} + (g || ' seconds')::interval, {t} + (g || ' seconds')::interval, 1, false "
        f"FROM generate_series(1, {c}) g",
        "INSERT INTO orders (id, tenant_id, contact_id, company_id, status, currency, total_minor, placed_at, "
        "created_at, updated_at, version) "
        f"SELECT ('40000000-0000-7000-8000-' || lpad(to_hex(g), 12, '0'))::uuid, {tenant_expr('g', demo)}, "
        f"('30000000-0000-7000-8000-' || lpad(to_hex(((g - 1) % {c}) + 1), 12, '0'))::uuid, NULL, "
        f"'placed', 'EUR', 3700, {t}, {t}, {t}, 1 FROM generate_series(1, {o}) g",
        "INSERT INTO order_lines (id, tenant_id, order_id, position, sku, description, quantity, "
        "unit_price_minor, line_total_minor) "
        f"SELECT ('50000000-0000-7000-8000-' || lpad(to_hex(g * 2 + j), 12, '0'))::uuid, {tenant_expr('g', demo)}, "
        "('40000000-0000-7000-8000-' || lpad(to_hex(g), 12, '0'))::uuid, j, 'SKU-' || j, 'Item ' || j, 1, "
        f"CASE WHEN j = 0 THEN 1200 ELSE 2500 END, CASE WHEN j = 0 THEN 1200 ELSE 2500 END "
        f"FROM generate_series(1, {o}) g, generate_series(0, 1) j",
        # Subjects with 1,000 orders each, in the demo tenant.
        "INSERT INTO contacts (id, tenant_id, first_name, last_name, email, created_at, updated_at, version, legal_hold) "
        f"SELECT ('60000000-0000-7000-8000-' || lpad(to_hex(s), 12, '0'))::uuid, '{demo}'::uuid, 'Subject', 'S' || s, "
        f"'subject' || s || '@bench.example', {t}, {t}, 1, false FROM generate_series(1, {SUBJECTS}) s",
        "INSERT INTO orders (id, tenant_id, contact_id, status, currency, total_minor, placed_at, created_at, updated_at, version) "
        f"SELECT ('70000000-0000-7000-8000-' || lpad(to_hex(s * 10000 + k), 12, '0'))::uuid, '{demo}'::uuid, "
        f"('60000000-0000-7000-8000-' || lpad(to_hex(s), 12, '0'))::uuid, 'placed', 'EUR', 1200, {t}, {t}, {t}, 1 "
        f"FROM generate_series(1, {SUBJECTS}) s, generate_series(1, 1000) k",
        "INSERT INTO order_lines (id, tenant_id, order_id, position, description, quantity, unit_price_minor, line_total_minor) "
        f"SELECT ('80000000-0000-7000-8000-' || lpad(to_hex(s * 10000 + k), 12, '0'))::uuid, '{demo}'::uuid, "
        "('70000000-0000-7000-8000-' || lpad(to_hex(s * 10000 + k), 12, '0'))::uuid, 0, 'Chart', 1, 1200, 1200 "
        f"FROM generate_series(1, {SUBJECTS}) s, generate_series(1, 1000) k",
        "VACUUM ANALYZE",
    ]
    for s in statements:
        psql(s)


def seed_sqlite(path, scale, demo):
    db = sqlite3.connect(path)
    t = "2026-11-01T00:00:00+00:00"
    demo_b = uuid.UUID(demo).bytes

    def tenant(n):
        k = (n - 1) % 100
        return demo_b if k == 0 else uuid.UUID(uid("10000000", k)).bytes

    def b(prefix, n):
        return uuid.UUID(uid(prefix, n)).bytes

    c, co, o = scale["contacts"], scale["companies"], scale["orders"]
    db.executemany(
        "INSERT INTO tenants (id, slug, name, kind, active, created_at, updated_at, version, mfa_required) "
        "VALUES (?, ?, ?, 'customer', 1, ?, ?, 1, 0)",
        ((b("10000000", k), f"bench-{k}", f"Bench {k}", t, t) for k in range(1, 100)),
    )
    db.executemany(
        "INSERT INTO companies (id, tenant_id, name, domain, created_at, updated_at, version) VALUES (?, ?, ?, ?, ?, ?, 1)",
        ((b("20000000", g), tenant(g), f"Company {g}", f"c{g}.example", t, t) for g in range(1, co + 1)),
    )
    db.executemany(
        "INSERT INTO contacts (id, tenant_id, company_id, first_name, last_name, email, phone, job_title, created_at, "
        "updated_at, version, legal_hold) VALUES (?, ?, ?, ?, ?, ?, ?, 'Buyer', ?, ?, 1, 0)",
        (
            (
                b("30000000", g), tenant(g), b("20000000", ((g - 1) % co) + 1), f"First{g}", f"Last{g}",
                f"c{g}@bench.example", f"+4420{g:08d}", ts(g), ts(g),
            )
            for g in range(1, c + 1)
        ),
    )
    db.executemany(
        "INSERT INTO orders (id, tenant_id, contact_id, status, currency, total_minor, placed_at, created_at, "
        "updated_at, version) VALUES (?, ?, ?, 'placed', 'EUR', 3700, ?, ?, ?, 1)",
        ((b("40000000", g), tenant(g), b("30000000", ((g - 1) % c) + 1), t, t, t) for g in range(1, o + 1)),
    )
    db.executemany(
        "INSERT INTO order_lines (id, tenant_id, order_id, position, sku, description, quantity, unit_price_minor, "
        "line_total_minor) VALUES (?, ?, ?, ?, ?, ?, 1, ?, ?)",
        (
            (b("50000000", g * 2 + j), tenant(g), b("40000000", g), j, f"SKU-{j}", f"Item {j}",
             1200 if j == 0 else 2500, 1200 if j == 0 else 2500)
            for g in range(1, o + 1) for j in (0, 1)
        ),
    )
    db.executemany(
        "INSERT INTO contacts (id, tenant_id, first_name, last_name, email, created_at, updated_at, version, legal_hold) "
        "VALUES (?, ?, 'Subject', ?, ?, ?, ?, 1, 0)",
        ((b("60000000", s), demo_b, f"S{s}", f"subject{s}@bench.example", t, t) for s in range(1, SUBJECTS + 1)),
    )
    db.executemany(
        "INSERT INTO orders (id, tenant_id, contact_id, status, currency, total_minor, placed_at, created_at, "
        "updated_at, version) VALUES (?, ?, ?, 'placed', 'EUR', 1200, ?, ?, ?, 1)",
        (
            (b("70000000", s * 10000 + k), demo_b, b("60000000", s), t, t, t)
            for s in range(1, SUBJECTS + 1) for k in range(1, 1001)
        ),
    )
    db.executemany(
        "INSERT INTO order_lines (id, tenant_id, order_id, position, description, quantity, unit_price_minor, "
        "line_total_minor) VALUES (?, ?, ?, 0, 'Chart', 1, 1200, 1200)",
        (
            (b("80000000", s * 10000 + k), demo_b, b("70000000", s * 10000 + k))
            for s in range(1, SUBJECTS + 1) for k in range(1, 1001)
        ),
    )
    db.commit()
    db.execute("ANALYZE")
    db.commit()
    db.close()


def ts(g):
    return datetime.fromtimestamp(1761955200 + g, tz=timezone.utc).isoformat()


# ---------------------------------------------------------------------------------------------
# Load


LUA = {
    "get": """
math.randomseed(os.time() + (tonumber(tostring({}):sub(8)) or 0))
request = function()
  local n = 1 + 100 * math.random(0, DEMO_CONTACTS - 1)
  return wrk.format("GET", string.format("/v1/contacts/30000000-0000-7000-8000-%012x", n))
end
""",
    "create": """
local thread_id = 0
local counter = 0
setup = function(thread) thread_id = thread_id + 1; thread:set("tid", thread_id) end
init = function() counter = 0; prefix = tostring(os.time()) .. "-" .. tostring(tid or 0) .. "-" .. tostring(math.random(1, 1e9)) end
request = function()
  counter = counter + 1
  local body = string.format('{"first_name":"Load","last_name":"Test","email":"new-%s-%d@load.example","job_title":"Buyer"}', prefix, counter)
  return wrk.format("POST", "/v1/contacts", with({["content-type"] = "application/json"}), body)
end
""",
    "patch": """
local thread_id = 0
setup = function(thread) thread_id = thread_id + 1; thread:set("tid", thread_id) end
init = function() counter = 0; ver = {}; pending = {} end
request = function()
  -- Each thread patches its own share of the tenant's contacts in turn, skipping a contact
  -- whose previous patch is still unanswered, and sends the version the last answer gave
  -- (every contact starts the round at version 1). Counting versions in the script instead
  -- sent a stale version whenever one request was slower than a pass over the share.
  -- A contact whose answer never named it (an error) stays pending: after a whole pass over
  -- the share the next one is sent anyway, so the script cannot spin.
  local n
  local tries = 0
  repeat
    local k = counter * THREADS + (tid - 1)
    counter = counter + 1
    tries = tries + 1
    n = 1 + 100 * (k % DEMO_CONTACTS)
  until not pending[n] or tries >= DEMO_CONTACTS / THREADS
  pending[n] = true
  return wrk.format("PATCH", string.format("/v1/contacts/30000000-0000-7000-8000-%012x", n),
    with({["content-type"] = "application/merge-patch+json", ["if-match"] = '"' .. (ver[n] or 1) .. '"'}),
    '{"job_title":"Owner"}')
end
response = function(status, headers, body)
  -- A refused patch names no contact: that contact stays skipped for the round.
  local hex = body:match('"id":"30000000%-0000%-7000%-8000%-(%x+)"')
  local v = body:match('"version":(%d+)')
  if hex and v then
    local n = tonumber(hex, 16)
    ver[n] = tonumber(v)
    pending[n] = nil
  end
end
""",
    "static": """
request = function()
  return wrk.format(METHOD, PATH, with(HEADERS), BODY)
end
""",
}


# wrk.format replaces the -H headers when given its own: merge them.
LUA_PRELUDE = """
local function with(h)
  local t = {}
  for k, v in pairs(wrk.headers) do t[k] = v end
  for k, v in pairs(h or {}) do t[k] = v end
  return t
end
"""


def lua_script(name, **subs):
    text = LUA_PRELUDE + LUA[name]
    for k, v in subs.items():
        text = text.replace(k, v)
    path = os.path.join(WORK, f"{name}-{abs(hash(text))}.lua")
    with open(path, "w") as f:
        f.write(text)
    return path


def lua_str(s):
    return json.dumps(s)


def wrk(port, script, token, args):
    cmd = [
        "wrk", "-t", "2", "-c", str(args.connections), "-d", f"{args.duration}s", "--latency",
        "-s", script, "-H", f"Authorization: Bearer {token}", f"http://127.0.0.1:{port}",
    ]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    pct = {}
    for p, val, unit in re.findall(r"^\s+(50|99)%\s+([\d.]+)(us|ms|s)\s*$", out, re.M):
        pct[p] = float(val) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    total = re.search(r"(\d+) requests in", out)
    return {
        "rps": rps,
        "p50_ms": pct.get("50"),
        "p99_ms": pct.get("99"),
        "errors": int(non2xx.group(1)) if non2xx else 0,
        "requests": int(total.group(1)) if total else 0,
    }


def summarise(rounds):
    rps = [r["rps"] for r in rounds]
    return {
        "rps": statistics.median(rps),
        "rps_min": min(rps),
        "rps_max": max(rps),
        "p50_ms": statistics.median([r["p50_ms"] for r in rounds if r.get("p50_ms") is not None] or [0]),
        "p99_ms": (
            statistics.median([r["p99_ms"] for r in rounds if r.get("p99_ms") is not None])
            if any(r.get("p99_ms") is not None for r in rounds)
            else None
        ),
        "errors": sum(r.get("errors", 0) for r in rounds),
        "rounds": rounds,
    }


def timed(fn, n):
    """Runs fn n times sequentially; latency percentiles and rate."""
    lat = []
    start = time.perf_counter()
    for i in range(n):
        t0 = time.perf_counter()
        fn(i)
        lat.append((time.perf_counter() - t0) * 1000)
    elapsed = time.perf_counter() - start
    lat.sort()
    return {
        "rps": n / elapsed,
        "p50_ms": lat[len(lat) // 2],
        "p99_ms": lat[min(len(lat) - 1, int(len(lat) * 0.99))],
        "errors": 0,
    }


class Session:
    def __init__(self, password, backend):
        self.password = password
        self.backend = backend
        self.refresh()

    def refresh(self):
        status, _, data = request(
            "POST", "/v1/auth/login", {"tenant": "demo", "email": "admin@demo.example", "password": self.password}
        )
        if status != 200:
            raise SystemExit(f"login failed: {status} {data[:200]}")
        body = json.loads(data)
        self.access = body["access_token"]
        self.refresh_token = body["refresh_token"]
        claims = json.loads(b64url(self.access.split(".")[1]))
        self.sid = claims["sid"]
        self.sub = claims["sub"]

    def stepped_up(self, db_url):
        """Erasure needs a recent WebAuthn step-up; the benchmark marks its own session as
        stepped up in the database instead of running a browser ceremony."""
        if self.backend == "postgres":
            psql(f"UPDATE sessions SET webauthn_at = now() WHERE id = '{self.sid}'")
        else:
            db = sqlite3.connect(db_url)
            db.execute(
                "UPDATE sessions SET webauthn_at = ? WHERE id = ?",
                (datetime.now(timezone.utc).isoformat(), uuid.UUID(self.sid).bytes),
            )
            db.commit()
            db.close()


def b64url(s):
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


def pgbench(sql, demo_contacts, args, name="get"):
    script = os.path.join(WORK, f"pgbench-{name}.sql")
    with open(script, "w") as f:
        f.write(f"\\set k random(0, {demo_contacts - 1})\n\\set n 1 + 100 * :k\n" + sql)
    out = subprocess.run(
        ["pgbench", "-n", "-M", "prepared", "-c", str(args.connections), "-j", "2", "-T", str(args.duration),
         "-f", script, pg_url(PG_DB)],
        check=True, capture_output=True, text=True,
    ).stdout
    tps = float(re.search(r"tps = ([\d.]+)", out).group(1))
    lat = float(re.search(r"latency average = ([\d.]+) ms", out).group(1))
    return {"rps": tps, "p50_ms": lat, "p99_ms": None, "errors": 0}


# A list page's two statements (the session check, then the page of 50 with its filter, one
# more row to know whether a next page exists), as the API runs them.
PGBENCH_LIST_SQL = """{session};
SELECT id, tenant_id, company_id, first_name, last_name, email, phone, job_title, created_at, updated_at, version, legal_hold, redacted_at, data_key, email_index FROM contacts WHERE tenant_id = '{tenant}' AND updated_at >= '2025-11-01T00:00:00Z' ORDER BY id ASC LIMIT 51;
"""
LIST_FLOOR = "floor: pgbench, the list page's SQL"


# The writes of one bulk call of 1,000 new contacts, straight to PostgreSQL through psql: the
# statements the endpoint runs, in its order and shape (session check; the contacts its items
# name, locked; the suppressed among their addresses; the contacts; the tenant's chain lock and
# ends; the audit entries and events; commit), each write one statement of 1,000 rows. The rows are made before
# the clock starts, as the bodies of the HTTP calls are, and wait in an unlogged table (read by
# index, a call's 1,000 rows at a time) instead of arriving as bound arrays. Their values have
# the sizes of the API's (sealed fields, data key, blind index, chain hashes, sealed event
# payload), and their ids are time-ordered (UUIDv7). What is left out: the API's own work (JSON,
# sealing, checks) and the travel of the values.
BULK_STAGE = "bench_bulk_floor"
BULK_FLOOR_CALL = """BEGIN;
{session};
SELECT id, tenant_id, company_id, first_name, last_name, email, phone, job_title, created_at, updated_at, version, legal_hold, redacted_at, data_key, email_index FROM contacts WHERE tenant_id = '{tenant}' AND email_index = ANY(ARRAY(SELECT idx FROM {stage} WHERE call = {call})) FOR UPDATE;
SELECT email_hmac FROM suppressions WHERE tenant_id = '{tenant}' AND email_hmac = ANY(ARRAY(SELECT idx FROM {stage} WHERE call = {call}));
INSERT INTO contacts (id, tenant_id, company_id, first_name, last_name, email, phone, job_title, created_at, updated_at, version, legal_hold, redacted_at, data_key, email_index) SELECT id, '{tenant}', NULL, first, last, email, NULL, NULL, now(), now(), 1, false, NULL, key, idx FROM {stage} WHERE call = {call} ORDER BY n;
SELECT pg_advisory_xact_lock({lock});
SELECT seq AS audit_end, hash FROM audit_events WHERE tenant_id = '{tenant}' ORDER BY seq DESC LIMIT 1 \\gset
INSERT INTO audit_events (id, tenant_id, seq, occurred_at, actor_id, actor_kind, action, object_type, object_id, request_id, details, prev_hash, hash) SELECT audit_id, '{tenant}', :audit_end + n, now(), '{user}', 'user', 'contact.created', 'contact', id, 'bench-floor', NULL, prev, hash FROM {stage} WHERE call = {call} ORDER BY n;
SELECT seq AS event_end FROM events WHERE tenant_id = '{tenant}' ORDER BY seq DESC LIMIT 1 \\gset
SELECT id, tenant_id, url, event_types, description, secret_enc, active, created_at, updated_at FROM webhook_endpoints WHERE tenant_id = '{tenant}' AND active = true;
INSERT INTO events (id, tenant_id, seq, event_type, object_type, object_id, subject_contact_id, payload, created_at) SELECT event_id, '{tenant}', :event_end + n, 'contact.created', 'contact', id, id, payload, now() FROM {stage} WHERE call = {call} ORDER BY n;
COMMIT;
"""


def bulk_floor_stage(calls):
    """The rows of `calls` bulk calls, in BULK_STAGE (made anew: ids from this millisecond)."""
    ms = int(time.time() * 1000)

    def new_id(call, n):
        return str(uuid.UUID(f"{ms:012x}7{call:03x}{n:04x}{os.urandom(6).hex()}"))

    def sealed(size):
        return base64.b64encode(os.urandom(size)).decode().rstrip("=")

    path = os.path.join(WORK, "bulk-floor.csv")
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        for call in range(calls):
            for n in range(1, 1001):
                w.writerow([
                    call, n, new_id(call, n), new_id(call, n), new_id(call, n),
                    sealed(40), sealed(40), sealed(60), "\\x" + os.urandom(62).hex(), os.urandom(32).hex(),
                    os.urandom(32).hex(), os.urandom(32).hex(), '"s1:' + sealed(308) + '"',
                ])
    psql(f"DROP TABLE IF EXISTS {BULK_STAGE}; CREATE UNLOGGED TABLE {BULK_STAGE} (call int, n int, id uuid, "
         "audit_id uuid, event_id uuid, first text, last text, email text, key bytea, idx text, prev text, "
         "hash text, payload text)")
    run(["psql", pg_url(PG_DB), "-qc", f"\\copy {BULK_STAGE} FROM '{path}' WITH (FORMAT csv)"])
    psql(f"CREATE INDEX ON {BULK_STAGE} (call, n); ANALYZE {BULK_STAGE}")


def bulk_floor(tenant, session_sql, user_id, in_flight):
    """Contacts per second of ten calls' writes (BULK_FLOOR_CALL) through `in_flight` psql
    sessions, one call after another in each, as the HTTP workload sends its calls. Timed by
    the database's clock from the first call's start to the last one's end (psql's start-up
    and connection are not counted, as the HTTP client's connection is not)."""
    bulk_floor_stage(10)
    lock = int.from_bytes(uuid.UUID(tenant).bytes[8:16], "big", signed=True)
    clock = "SELECT extract(epoch FROM clock_timestamp());\n"
    scripts = []
    for k in range(in_flight):
        path = os.path.join(WORK, f"bulk-floor-{k}.sql")
        with open(path, "w") as f:
            f.write("\\set ON_ERROR_STOP on\n" + clock + "\\o /dev/null\n")
            for call in range(k, 10, in_flight):
                f.write(BULK_FLOOR_CALL.format(
                    session=session_sql, tenant=tenant, user=user_id, lock=lock, stage=BULK_STAGE, call=call,
                ))
            f.write("\\o\n" + clock)
        scripts.append(path)
    procs = [
        subprocess.Popen(["psql", pg_url(PG_DB), "-qtA", "-f", path], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
        for path in scripts
    ]
    spans = []
    for p in procs:
        out, err = p.communicate()
        if p.returncode != 0:
            raise SystemExit(f"bulk floor failed: {err[:300]}")
        start, end = (float(t) for t in out.split())
        spans.append((start, end))
    psql(f"DROP TABLE {BULK_STAGE}")
    elapsed = max(e for _, e in spans) - min(s for s, _ in spans)
    return {"rps": 10 * 1000 / elapsed, "p50_ms": elapsed * 1000 / (10 // in_flight), "p99_ms": None, "errors": 0}


SESSION_CHECK_SQL = "SELECT sessions.user_id, sessions.auth_time, sessions.amr, sessions.expires_at, sessions.webauthn_at, users.role, tenants.kind, tenants.mfa_required FROM sessions INNER JOIN users ON users.tenant_id = sessions.tenant_id AND users.id = sessions.user_id INNER JOIN tenants ON tenants.id = sessions.tenant_id WHERE sessions.tenant_id = '{tenant}' AND sessions.id = '{sid}' AND sessions.revoked_at IS NULL AND sessions.expires_at > now() AND users.active = true AND tenants.active = true"
PGBENCH_SQL = SESSION_CHECK_SQL + """;
SELECT id, tenant_id, company_id, first_name, last_name, email, phone, job_title, created_at, updated_at, version, legal_hold, redacted_at, data_key, email_index FROM contacts WHERE tenant_id = '{tenant}' AND id = ('30000000-0000-7000-8000-' || lpad(to_hex(:n::bigint), 12, '0'))::uuid LIMIT 1;
"""


# ---------------------------------------------------------------------------------------------


def bench_backend(backend, args):
    scale = {
        "contacts": 1_000_000, "companies": 200_000, "orders": 1_000_000,
    } if backend == "postgres" and args.scale == "full" else {
        "contacts": 100_000, "companies": 20_000, "orders": 100_000,
    }
    demo_contacts = scale["contacts"] // 100
    key_dir = os.path.join(WORK, f"keys-{backend}")
    shutil.rmtree(key_dir, ignore_errors=True)
    if backend == "postgres":
        psql(f"DROP DATABASE IF EXISTS {PG_DB}", db="postgres")
        psql(f"CREATE DATABASE {PG_DB}", db="postgres")
        db_url = pg_url(PG_DB)
        sqlite_path = None
    else:
        sqlite_path = os.path.join(WORK, "crm.db")
        for suffix in ("", "-wal", "-shm"):
            if os.path.exists(sqlite_path + suffix):
                os.remove(sqlite_path + suffix)
        db_url = f"sqlite://{sqlite_path}?mode=rwc"

    log(f"{backend}: first start (migrations, demo tenant)")
    stale_log = os.path.join(WORK, f"api-{backend}.log")
    if os.path.exists(stale_log):
        os.remove(stale_log)
    api = Api(backend, db_url, key_dir)
    password = api.demo_password()
    api.stop()
    if backend == "postgres":
        demo = psql("SELECT id FROM tenants WHERE slug = 'demo'", capture=True)
    else:
        db = sqlite3.connect(sqlite_path)
        demo = str(uuid.UUID(bytes=db.execute("SELECT id FROM tenants WHERE slug = 'demo'").fetchone()[0]))
        db.close()
    log(f"{backend}: seeding {scale} (+{SUBJECTS} subjects with 1,000 orders)")
    t0 = time.time()
    if backend == "postgres":
        seed_postgres(scale, demo)
    else:
        seed_sqlite(sqlite_path, scale, demo)
    log(f"{backend}: seeded in {time.time() - t0:.0f} s")
    t0 = time.time()
    seal_seeded(db_url, key_dir)
    if backend == "postgres":
        psql("VACUUM ANALYZE")
    else:
        db = sqlite3.connect(sqlite_path)
        db.execute("VACUUM")
        db.execute("ANALYZE")
        db.close()
    log(f"{backend}: sealed the seeded contacts in {time.time() - t0:.0f} s")
    # Seeding and sealing leave PostgreSQL a gigabyte of dirty pages: written out now, not by
    # a checkpoint that would run through the first workloads measured. (The run's own server
    # is stopped before SQLite's turn, which writes them all; a server given with --pg-url
    # stays up, and what the PostgreSQL phase left is written out before SQLite is measured.)
    if backend == "postgres" or args.pg_url:
        psql("CHECKPOINT", db="postgres")

    api = Api(backend, db_url, key_dir)
    results = {}
    try:
        session = Session(password, backend)
        status, _, data = request("GET", "/.well-known/jwks.json")
        jwk_x = json.loads(data)["keys"][-1]["x"]

        def reset_versions():
            sql = "UPDATE contacts SET version = 1 WHERE tenant_id = {}"
            if backend == "postgres":
                psql(sql.format(f"'{demo}'"))
            else:
                db = sqlite3.connect(sqlite_path)
                db.execute(sql.format("?"), (uuid.UUID(demo).bytes,))
                db.commit()
                db.close()

        def load(name, port, script, before_round=None):
            if not want(name):
                return
            rounds = []
            with RssSampler(api.proc.pid) as rss:
                for _ in range(args.rounds):
                    if before_round:
                        before_round()
                    session.refresh()
                    rounds.append(wrk(port, script, session.access, args))
            out = summarise(rounds)
            out["peak_rss_mb"] = rss.peak / 1e6 if port == API_PORT else None
            results[name] = out
            log(f"{backend}: {name}: {out['rps']:.0f} req/s, p99 {out['p99_ms'] or 0:.1f} ms, errors {out['errors']}")

        def want(name):
            return not args.only or any(o.lower() in name.lower() for o in args.only)

        def side_by_side(name, script, shared=None):
            """Rounds alternate between the API and the minimal server (and the shared-pool
            one, when given), so all see the same machine: the ratio holds when the machine
            is noisy. Each server first gets a warm-up round that is not counted, and the
            order alternates (API first in even pairs, last in odd ones), so neither side
            always runs right after start-up or right after the other's load."""
            if not want(name):
                return
            servers = [(API_PORT, []), (BASE_PORT, [])]
            if shared:
                servers.append((shared.port, []))
            warm_up = argparse.Namespace(**{**vars(args), "duration": max(1, args.duration // 2)})
            for port, _ in servers:
                session.refresh()
                wrk(port, script, session.access, warm_up)
            with RssSampler(api.proc.pid) as rss, RssSampler(base.proc.pid) as base_rss, \
                    RssSampler(shared.proc.pid if shared else base.proc.pid) as shared_rss:
                for pair in range(args.pair_rounds):
                    for port, rounds in servers if pair % 2 == 0 else servers[::-1]:
                        session.refresh()
                        rounds.append(wrk(port, script, session.access, args))
            mine, theirs = servers[0][1], servers[1][1]
            shared_rounds = servers[2][1] if shared else []
            series = [(name, mine, rss.peak), (BASELINE + name, theirs, base_rss.peak)]
            if shared:
                series.append((SHARED + name, shared_rounds, shared_rss.peak))
            for key, rounds, peak in series:
                out = summarise(rounds)
                out["peak_rss_mb"] = peak / 1e6
                results[key] = out
                log(f"{backend}: {key}: {out['rps']:.0f} req/s, p99 {out['p99_ms'] or 0:.1f} ms, errors {out['errors']}")

        base = Baseline(db_url, jwk_x, key_dir)
        shared = Baseline(db_url, jwk_x, key_dir, shared_pool=True, port=BASE_PORT + 1) if backend == "postgres" else None
        try:
            get = lua_script("get", DEMO_CONTACTS=str(demo_contacts))
            side_by_side("GET contact by id", get, shared)
            listing = lua_script(
                "static", METHOD=lua_str("GET"), PATH=lua_str("/v1/contacts?limit=50&updated_since=2025-11-01T00:00:00Z"),
                HEADERS="{}", BODY="nil",
            )
            side_by_side("list 50 with a filter", listing)
            if backend == "postgres" and want("list 50 with a filter"):
                session.refresh()
                sql = PGBENCH_LIST_SQL.format(session=SESSION_CHECK_SQL.format(tenant=demo, sid=session.sid), tenant=demo)
                results[LIST_FLOOR] = summarise([pgbench(sql, demo_contacts, args, "list") for _ in range(args.rounds)])
                log(f"{backend}: {LIST_FLOOR}: {results[LIST_FLOOR]['rps']:.0f}")
            side_by_side("create contact", lua_script("create"))
        finally:
            base.stop()
            if shared:
                shared.stop()
        load("PATCH with If-Match", API_PORT, lua_script("patch", DEMO_CONTACTS=str(demo_contacts), THREADS="2"),
             before_round=reset_versions)
        feed = lua_script("static", METHOD=lua_str("GET"), PATH=lua_str("/v1/changes?since=0&limit=100"),
                          HEADERS="{}", BODY="nil")
        load("change feed, 100 events", API_PORT, feed)
        login = lua_script(
            "static", METHOD=lua_str("POST"), PATH=lua_str("/v1/auth/login"),
            HEADERS='{["content-type"] = "application/json"}',
            BODY=lua_str(json.dumps({"tenant": "demo", "email": "admin@demo.example", "password": password})),
        )
        load("login (password)", API_PORT, login)

        # Refresh tokens are single use: a sequential chain.
        def refresh_once(_):
            status, _, data = request("POST", "/v1/auth/refresh", {"refresh_token": session.refresh_token})
            if status != 200:
                raise SystemExit(f"refresh failed: {status}")
            session.refresh_token = json.loads(data)["refresh_token"]

        if want("refresh (sequential)"):
            session.refresh()
            results["refresh (sequential)"] = summarise([timed(refresh_once, 300) for _ in range(args.rounds)])

        # Export of a subject with 1,000 orders, sequential.
        session.refresh()
        subject = uid("60000000", 1)

        def export_once(_):
            status, _, _ = request("GET", f"/v1/contacts/{subject}/export", token=session.access)
            if status != 200:
                raise SystemExit(f"export failed: {status}")

        if want("export, 1,000 orders (sequential)"):
            results["export, 1,000 orders (sequential)"] = summarise(
                [timed(export_once, 30) for _ in range(args.rounds)]
            )

        # The audit trail of that subject (each export above added an entry), a page of 50 out
        # of a log that the workloads before have grown to hundreds of thousands of entries.
        trail = lua_script("static", METHOD=lua_str("GET"),
                           PATH=lua_str(f"/v1/audit-events?object_id={subject}&limit=50"),
                           HEADERS="{}", BODY="nil")
        load("audit trail of one contact, 50 entries", API_PORT, trail)

        # Erasure of such a subject: one per round.
        erase_rounds = []
        for r in range(min(args.rounds, SUBJECTS - 1) if want("erase, 1,000 orders") else 0):
            session.refresh()
            session.stepped_up(sqlite_path or db_url)
            target = uid("60000000", 2 + r)

            def erase_once(_):
                status, _, data = request("POST", f"/v1/contacts/{target}/erase", {}, token=session.access)
                if status != 200:
                    raise SystemExit(f"erase failed: {status} {data[:200]}")

            erase_rounds.append(timed(erase_once, 1))
        if erase_rounds:
            results["erase, 1,000 orders"] = summarise(erase_rounds)

        # Bulk upsert of 10,000 contacts: ten calls of 1,000, one after another and with two
        # calls in flight (a client with one connection per core).
        for in_flight in (1, 2):
            name = "bulk upsert 10,000 (contacts/s)" if in_flight == 1 else "bulk upsert 10,000, 2 calls in flight (contacts/s)"
            if not want(name):
                continue
            bulk_rounds = []
            floor_rounds = []
            for r in range(args.rounds):
                session.refresh()
                tag = f"{int(time.time())}-{in_flight}-{r}"
                # The bodies are built before the clock starts: the server is measured, not Python.
                bodies = [
                    json.dumps({"items": [
                        {"first_name": "Bulk", "last_name": str(i), "email": f"bulk-{tag}-{call}-{i}@bulk.example"}
                        for i in range(1000)
                    ]}).encode()
                    for call in range(10)
                ]
                failures = []
                latencies = []

                def send(share):
                    for body in share:
                        t = time.perf_counter()
                        status, _, data = request("POST", "/v1/contacts/batch", body, token=session.access)
                        latencies.append((time.perf_counter() - t) * 1000)
                        if status != 200:
                            failures.append(f"{status} {data[:200]}")

                threads = [threading.Thread(target=send, args=(bodies[k::in_flight],)) for k in range(in_flight)]
                t0 = time.perf_counter()
                for t in threads:
                    t.start()
                for t in threads:
                    t.join()
                elapsed = time.perf_counter() - t0
                if failures:
                    raise SystemExit(f"bulk failed: {failures[0]}")
                latencies.sort()
                bulk_rounds.append({"rps": 10000 / elapsed, "p50_ms": latencies[len(latencies) // 2],
                                    "p99_ms": latencies[-1], "errors": 0})
                # The same writes straight to PostgreSQL, as many calls in flight: this call's
                # floor, a round of it after each round of the API.
                if backend == "postgres":
                    session_sql = SESSION_CHECK_SQL.format(tenant=demo, sid=session.sid)
                    floor_rounds.append(bulk_floor(demo, session_sql, session.sub, in_flight))
            for key, rounds in ((name, bulk_rounds), (BULK_FLOOR + name, floor_rounds)):
                if rounds:
                    out = summarise(rounds)
                    out["unit"] = "contacts/s; latency per call of 1,000"
                    results[key] = out
                    log(f"{backend}: {key}: {out['rps']:.0f}")

        # The physical floor: the same SQL straight to the database.
        if backend == "postgres" and want("floor: pgbench, the endpoint's SQL"):
            session.refresh()
            sql = PGBENCH_SQL.format(tenant=demo, sid=session.sid)
            results["floor: pgbench, the endpoint's SQL"] = summarise(
                [pgbench(sql, demo_contacts, args) for _ in range(args.rounds)]
            )
    finally:
        api.stop()
    return {"scale": scale, "results": results}


def table(report):
    lines = []
    for backend, data in report["backends"].items():
        res = data["results"]
        floor = res.get("floor: pgbench, the endpoint's SQL", {}).get("rps")
        lines.append(f"\n{backend} ({data['scale']['contacts']:,} contacts, {data['scale']['orders']:,} orders)\n")
        lines.append("| workload | req/s (median, min–max) | p50 ms | p99 ms | peak RSS MB | × minimal server (rounds) | × floor |")
        lines.append("|---|---|---|---|---|---|---|")
        for name, r in res.items():
            base = res.get(BASELINE + name)
            ratio_b = ""
            if base:
                # The ratio of the medians, and the spread of the ratios of rounds run one
                # after the other.
                pairs = [m["rps"] / b["rps"] for m, b in zip(r["rounds"], base["rounds"])]
                ratio_b = f"{r['rps'] / base['rps']:.2f} ({min(pairs):.2f}–{max(pairs):.2f})"
            # pgbench runs the SQL of GET by id and of the list page (a ratio for each), psql
            # each bulk call's writes in rounds alternating with the API's (a ratio and its
            # rounds' range).
            bulk = res.get(BULK_FLOOR + name)
            if bulk:
                pairs = [m["rps"] / b["rps"] for m, b in zip(r["rounds"], bulk["rounds"])]
                ratio_f = f"{r['rps'] / bulk['rps']:.2f} ({min(pairs):.2f}–{max(pairs):.2f})"
            elif name == "list 50 with a filter" and LIST_FLOOR in res:
                ratio_f = f"{r['rps'] / res[LIST_FLOOR]['rps']:.2f}"
            else:
                ratio_f = f"{r['rps'] / floor:.2f}" if floor and name.startswith("GET") else ""
            rss = f"{r['peak_rss_mb']:.0f}" if r.get("peak_rss_mb") else ""
            p99 = f"{r['p99_ms']:.1f}" if r.get("p99_ms") is not None else ""
            errors = f" ({r['errors']} errors)" if r.get("errors") else ""
            lines.append(
                f"| {name} | {r['rps']:.0f} ({r['rps_min']:.0f}–{r['rps_max']:.0f}){errors} | {r['p50_ms']:.1f} | {p99} | {rss} | {ratio_b} | {ratio_f} |"
            )
        for name, r in res.items():
            if name.startswith(SHARED) and name[len(SHARED):] in res:
                mine = res[name[len(SHARED):]]["rps"]
                lines.append(
                    f"\n{name[len(SHARED):]}: the API is {mine / r['rps']:.2f}× a minimal server whose workers "
                    "share one pool (the minimal server above has a pool per worker, as the API)."
                )
    return "\n".join(lines)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--db", choices=["postgres", "sqlite", "both"], default="both")
    p.add_argument("--scale", choices=["full", "small"], default="full")
    p.add_argument("--duration", type=int, default=10)
    p.add_argument("--rounds", type=int, default=3)
    # Side by side, one round's ratio varies by several per cent on a 2-core machine (the
    # scheduler, PostgreSQL's background work): more rounds for the ratios.
    p.add_argument("--pair-rounds", type=int, default=5)
    p.add_argument("--connections", type=int, default=32)
    # For work on one hot path: only the workloads whose names contain one of these (case
    # ignored), e.g. --only list --only "GET contact". The data set is seeded in full either way.
    p.add_argument("--only", action="append", default=[], metavar="TEXT")
    # An existing server instead of the run's own (its settings are then the measurement's).
    p.add_argument("--pg-url", metavar="URL", help="e.g. postgres://postgres@127.0.0.1:5432/postgres")
    args = p.parse_args()
    os.makedirs(WORK, exist_ok=True)
    for tool in ("wrk", "pgbench", "psql"):
        if not shutil.which(tool):
            raise SystemExit(f"{tool} is missing (make bench installs wrk; pgbench and psql come with PostgreSQL)")
    cpu = open("/proc/cpuinfo").read()
    model = re.search(r"model name\s*:\s*(.+)", cpu)
    report = {
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {
            "cpu": model.group(1) if model else "unknown",
            "cores": os.cpu_count(),
            "load_generator": "wrk -t2 -c%d, %d s × %d rounds (%d alternating with the minimal server, order swapped each pair, after a warm-up round each), same machine"
            % (args.connections, args.duration, args.rounds, args.pair_rounds),
        },
        "backends": {},
    }
    global PG_ADMIN
    backends = ["postgres", "sqlite"] if args.db == "both" else [args.db]
    server = None
    if args.pg_url:
        PG_ADMIN = args.pg_url
    if "postgres" in backends:
        if args.pg_url:
            report["machine"]["postgres"] = f"the server at {args.pg_url}, as configured"
        else:
            server = BenchPostgres()
            PG_ADMIN = f"postgres://postgres@127.0.0.1:{PG_PORT}/postgres"
            version = psql("SHOW server_version", db="postgres", capture=True).split()[0]
            report["machine"]["postgres"] = f"PostgreSQL {version}, the run's own, " + ", ".join(
                f"{k} {v}" for k, v in server.settings.items()
            )
    try:
        for backend in backends:
            report["backends"][backend] = bench_backend(backend, args)
            # Stopped before SQLite's turn: its checkpoints would write while SQLite is measured.
            if backend == "postgres" and server:
                server.stop()
                server = None
    finally:
        if server:
            server.stop()
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    # Only a complete run (every workload, both databases, full scale) is a result to keep; a
    # partial one goes to the ignored work folder and leaves latest.md alone.
    complete = not args.only and args.scale == "full" and args.db == "both" and not args.pg_url
    folder = RESULTS if complete else WORK
    with open(os.path.join(folder, f"{stamp}.json"), "w") as f:
        json.dump(report, f, indent=1)
    text = (
        f"# Benchmark {report['started']}\n\nMachine: {report['machine']['cpu']}, {report['machine']['cores']} cores; "
        f"load: {report['machine']['load_generator']}.\n"
        + (f"\nDatabase: {report['machine']['postgres']}.\n" if "postgres" in report["machine"] else "")
        + table(report) + "\n"
    )
    with open(os.path.join(folder, f"{stamp}.md"), "w") as f:
        f.write(text)
    if complete:
        with open(os.path.join(RESULTS, "latest.md"), "w") as f:
            f.write(text)
    else:
        log(f"a partial run: written to {os.path.relpath(folder, ROOT)}/{stamp}.md, latest.md left alone")
    print(text)


if __name__ == "__main__":
    main()
