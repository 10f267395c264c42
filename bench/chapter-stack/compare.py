"""taskstream next to the chapter's own stack, on one broker, with one load
generator (BENCHMARKS.md, "Next to the chapter's own stack").

It starts a standalone `taskstream dev-broker`, `taskstream up` against it,
and the chapter's FastAPI app (app.py) with its audit consumer (audit.py)
against the same broker. Then:

  load   alternating runs of `taskstream bench --url ... --watch-group ...`
         against each, creates only, from the same process and settings;
         prints the medians as a Markdown table, and every run as JSON.
  kill   for each stack: creates from 16 client threads, SIGKILL of the
         service mid-load (with --pause-broker: during a broker outage that
         began a second into the load), a restart on the same data, then counts the
         acknowledged creates whose event never reached the topic, those
         never audited (waiting up to --settle seconds for them), and the
         audit rows written more than once.

Usage:
  python compare.py --taskstream target/release/taskstream load --rounds 3
  python compare.py --taskstream target/release/taskstream kill
"""

import argparse
import http.client
import json
import os
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

from confluent_kafka import Consumer, TopicPartition

HERE = os.path.dirname(os.path.abspath(__file__))
CHAPTER_TOPIC = "chapter-task-events"


def first_line(process: subprocess.Popen) -> str:
    line = process.stdout.readline().decode().strip()
    if not line:
        raise SystemExit(f"{process.args[0]} exited before printing its address")
    threading.Thread(target=process.stdout.read, daemon=True).start()
    return line


def wait_http(base: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{base}/healthz", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"{base} did not answer within {timeout} s")


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Stacks:
    """The broker, `up`, and the chapter stack, each in its own processes."""

    def __init__(self, taskstream: str, workdir: str, synchronous: str, workers: int):
        self.taskstream = taskstream
        self.workdir = workdir
        self.synchronous = synchronous
        self.workers = workers
        self.processes = {}
        broker = subprocess.Popen(
            [taskstream, "dev-broker", "--data-dir", os.path.join(workdir, "broker")],
            stdout=subprocess.PIPE,
            env={**os.environ, "RUST_LOG": "warn"},
        )
        self.processes["broker"] = broker
        self.bootstrap = first_line(broker).removeprefix("kafka: ")

    def start_up(self) -> str:
        up = subprocess.Popen(
            [
                self.taskstream, "up", "--http", "127.0.0.1:0",
                "--kafka-bootstrap", self.bootstrap,
                "--data-dir", os.path.join(self.workdir, "up"),
                "--sqlite-synchronous", self.synchronous,
            ],
            stdout=subprocess.PIPE,
            env={**os.environ, "RUST_LOG": "warn"},
        )
        self.processes["up"] = up
        self.up = first_line(up).removeprefix("http: ")
        wait_http(self.up)
        return self.up

    def start_chapter(self) -> str:
        env = {
            **os.environ,
            "KAFKA_BOOTSTRAP": self.bootstrap,
            "CHAPTER_DB": os.path.join(self.workdir, "chapter-tasks.db"),
            "CHAPTER_AUDIT_DB": os.path.join(self.workdir, "chapter-audit.db"),
            "SQLITE_SYNCHRONOUS": self.synchronous,
        }
        port = getattr(self, "chapter_port", None) or free_port()
        self.chapter_port = port
        self.processes["chapter-api"] = subprocess.Popen(
            [
                sys.executable, "-m", "uvicorn", "app:app", "--host", "127.0.0.1",
                "--port", str(port), "--workers", str(self.workers),
                "--no-access-log", "--log-level", "warning",
            ],
            cwd=HERE,
            env=env,
        )
        self.processes["chapter-audit"] = subprocess.Popen(
            [sys.executable, "audit.py"], cwd=HERE, env=env
        )
        self.chapter = f"http://127.0.0.1:{port}"
        wait_http(self.chapter)
        return self.chapter

    def kill(self, *names: str) -> None:
        for name in names:
            process = self.processes.pop(name)
            # uvicorn with --workers forks: kill the whole process group.
            process.send_signal(signal.SIGKILL)
            process.wait()
        if "chapter-api" in names:
            subprocess.run(["pkill", "-KILL", "-f", f"uvicorn app:app .*port {self.chapter_port}"], check=False)

    def stop(self) -> None:
        """Stops the services first and the broker last, each cleanly."""
        for process in reversed(list(self.processes.values())):
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self.processes.clear()


def bench(taskstream: str, base: str, bootstrap: str, topic: str, groups, args) -> dict:
    command = [
        taskstream, "bench", "--url", base, "--json",
        "--requests", str(args.requests), "--concurrency", str(args.concurrency),
        "--updates", "0", "--completions", "0",
        "--kafka-bootstrap", bootstrap, "--watch-topic", topic,
    ]
    for group in groups:
        command += ["--watch-group", group]
    out = subprocess.run(command, check=True, capture_output=True, env={**os.environ, "RUST_LOG": "warn"})
    return json.loads(out.stdout)


def load(args) -> None:
    with tempfile.TemporaryDirectory() as workdir:
        stacks = Stacks(args.taskstream, workdir, args.synchronous, args.workers)
        try:
            up = stacks.start_up()
            chapter = stacks.start_chapter()
            runs = {"taskstream": [], "chapter": []}
            for round in range(args.rounds):
                for name in ("taskstream", "chapter"):
                    if name == "taskstream":
                        report = bench(args.taskstream, up, stacks.bootstrap, "task-events", ["auditor", "notifier"], args)
                    else:
                        report = bench(args.taskstream, chapter, stacks.bootstrap, CHAPTER_TOPIC, ["chapter-audit"], args)
                    runs[name].append(report)
                    print(f"round {round + 1} {name}: {report['api_per_s']:.0f} req/s", file=sys.stderr)
            print(json.dumps(runs, indent=2))
            print(table(runs, args), file=sys.stderr)
        finally:
            stacks.stop()


def table(runs, args) -> str:
    lines = [
        f"{args.requests} creates per run, {args.concurrency} clients, sqlite synchronous={args.synchronous}, "
        f"median of {args.rounds} alternating runs",
        "",
        "| stack | req/s | p50 ms | p99 ms | behind at the end | caught up after |",
        "|---|---:|---:|---:|---|---|",
    ]
    for name, reports in runs.items():
        median = lambda f: statistics.median(f(r) for r in reports)
        groups = sorted(reports[0]["catch_up"]["groups"])
        behind = ", ".join(
            f"{g} {median(lambda r: r['catch_up']['groups'][g]['lag_at_end']):.0f}" for g in groups
        )

        def caught(g):
            values = [r["catch_up"]["groups"][g]["caught_up_after_ms"] for r in reports]
            if any(v is None for v in values):
                return f"{g} not in every run"
            return f"{g} {statistics.median(values):.0f} ms"

        lines.append(
            f"| {name} | {median(lambda r: r['api_per_s']):.0f} | {median(lambda r: r['api_latency']['p50_ms']):.1f} "
            f"| {median(lambda r: r['api_latency']['p99_ms']):.1f} | {behind} | {', '.join(caught(g) for g in groups)} |"
        )
    return "\n".join(lines)


def drive_until_killed(base: str, seconds: float, kill) -> list:
    """Creates from 16 threads; `kill()` runs after `seconds`. Returns the
    ids of the creates the service acknowledged (201)."""
    acknowledged, lock, stop = [], threading.Lock(), threading.Event()

    def client(n: int) -> None:
        i = 0
        while not stop.is_set():
            i += 1
            body = json.dumps({"title": f"kill test {n}-{i}", "assignee": "ada"}).encode()
            request = urllib.request.Request(
                f"{base}/tasks", data=body, headers={"content-type": "application/json"}
            )
            try:
                with urllib.request.urlopen(request, timeout=5) as response:
                    if response.status == 201:
                        task = json.loads(response.read())
                        with lock:
                            acknowledged.append(task["id"])
            except (OSError, http.client.HTTPException, ValueError):
                # Refused, reset or cut short by the kill: not acknowledged.
                time.sleep(0.05)

    threads = [threading.Thread(target=client, args=(n,)) for n in range(16)]
    for t in threads:
        t.start()
    time.sleep(seconds)
    kill()
    stop.set()
    for t in threads:
        t.join()
    return acknowledged


def keys_on_topic(bootstrap: str, topic: str) -> set:
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": "compare-reader",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            "isolation.level": "read_committed",
        }
    )
    metadata = consumer.list_topics(topic, timeout=10)
    partitions = list(metadata.topics[topic].partitions)
    consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
    keys, done, deadline = set(), set(), time.monotonic() + 120
    while len(done) < len(partitions) and time.monotonic() < deadline:
        message = consumer.poll(1.0)
        if message is None:
            continue
        if message.error():
            if message.error().code() == -191:  # _PARTITION_EOF
                done.add(message.partition())
            continue
        keys.add(message.key().decode())
    consumer.close()
    return keys


def audited(db_path: str) -> tuple:
    """The audit log's row count and the task ids in it."""
    db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    try:
        ids = [row[0] for row in db.execute("SELECT task_id FROM audit_log")]
        return len(ids), set(ids)
    finally:
        db.close()


def kill(args) -> None:
    results = {}
    with tempfile.TemporaryDirectory() as workdir:
        stacks = Stacks(args.taskstream, workdir, args.synchronous, args.workers)
        try:
            for name in ("taskstream", "chapter"):
                if name == "taskstream":
                    base, topic, names = stacks.start_up(), "task-events", ("up",)
                    audit_db = os.path.join(workdir, "up", "audit.db")
                    restart = stacks.start_up
                else:
                    base, topic, names = stacks.start_chapter(), CHAPTER_TOPIC, ("chapter-api", "chapter-audit")
                    audit_db = os.path.join(workdir, "chapter-audit.db")
                    restart = stacks.start_chapter
                broker = stacks.processes["broker"]

                def outage_then_kill():
                    stacks.kill(*names)
                    if args.pause_broker:
                        broker.send_signal(signal.SIGCONT)

                if args.pause_broker:
                    # The broker stops answering a second into the load.
                    threading.Timer(1.0, broker.send_signal, args=(signal.SIGSTOP,)).start()
                acknowledged = drive_until_killed(base, args.seconds, outage_then_kill)
                restart()
                acked, restarted = set(acknowledged), time.monotonic()
                while True:
                    on_topic = keys_on_topic(stacks.bootstrap, topic)
                    rows, in_audit = audited(audit_db)
                    missing = len(acked - on_topic) + len(acked - in_audit)
                    if missing == 0 or time.monotonic() - restarted > args.settle:
                        break
                    time.sleep(1)
                results[name] = {
                    "acknowledged": len(acked),
                    "not_on_topic": len(acked - on_topic),
                    "not_audited": len(acked - in_audit),
                    "audited_more_than_once": rows - len(in_audit),
                    "counted_after_s": round(time.monotonic() - restarted, 1),
                }
                print(f"{name}: {results[name]}", file=sys.stderr)
                stacks.kill(*names)
        finally:
            stacks.stop()
    print(json.dumps(results, indent=2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--taskstream", required=True, help="the taskstream binary (a release build)")
    parser.add_argument("--synchronous", choices=["full", "normal"], default="full")
    parser.add_argument("--workers", type=int, default=1, help="uvicorn worker processes for the chapter's API")
    sub = parser.add_subparsers(dest="mode", required=True)
    p = sub.add_parser("load")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--requests", type=int, default=20000)
    p.add_argument("--concurrency", type=int, default=64)
    k = sub.add_parser("kill")
    k.add_argument("--seconds", type=float, default=5, help="load before the SIGKILL")
    k.add_argument("--settle", type=float, default=60, help="longest wait after the restart for every change to arrive")
    k.add_argument(
        "--pause-broker",
        action="store_true",
        help="SIGSTOP the broker a second into the load and SIGCONT it after the kill: the service is killed during a broker outage",
    )
    args = parser.parse_args()
    {"load": load, "kill": kill}[args.mode](args)


if __name__ == "__main__":
    main()
