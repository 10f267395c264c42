#!/usr/bin/env python3
"""Lessons 6 and 7: consume a topic in a consumer group with
confluent-kafka-python, committing each record's offset only after it was
processed (at least once), and print what it processed.

    KAFKA_BOOTSTRAP=$(taskstream endpoints kafka) python examples/python/consume.py lesson-events my-group

It stops once it has owned partitions and seen no new record for --idle
seconds (so that it can run in a script); a real service would run until it is
told to stop.
"""

import argparse
import json
import os
import time

from confluent_kafka import Consumer, KafkaError, KafkaException

parser = argparse.ArgumentParser()
parser.add_argument("topic")
parser.add_argument("group")
parser.add_argument("--idle", type=float, default=5.0, help="stop after this many idle seconds")
parser.add_argument(
    "--max-wait", type=float, default=60.0, help="give up after this many seconds without partitions"
)
parser.add_argument(
    "--crash-before-commit",
    type=int,
    metavar="N",
    help="lesson 8: die (without committing) right after processing the N-th record",
)
parser.add_argument("--delay", type=float, default=0.0, help="lesson 19: seconds of work per record")
parser.add_argument(
    "--seen",
    metavar="FILE",
    help="lesson 8: remember processed event ids in FILE and skip repeats (an idempotent consumer)",
)
args = parser.parse_args()

# ANCHOR: idempotent
seen = set()
if args.seen and os.path.exists(args.seen):
    with open(args.seen) as f:
        seen = {line.strip() for line in f}


def process(event):
    """The business logic: here, just say what happened — once per event id with --seen."""
    if event["id"] in seen:
        print(f"skipped {event['type']} of {event['subject']} (already processed)", flush=True)
        return
    time.sleep(args.delay)
    print(f"processed {event['type']} of {event['subject']}", flush=True)
    if args.seen:
        # In a real service this write and the business effect share one database transaction.
        with open(args.seen, "a") as f:
            f.write(event["id"] + "\n")
        seen.add(event["id"])
# ANCHOR_END: idempotent


# ANCHOR: consumer
# ANCHOR: settings
consumer = Consumer(
    {
        "bootstrap.servers": os.environ.get("KAFKA_BOOTSTRAP", "localhost:9092"),
        "group.id": args.group,
        "auto.offset.reset": "earliest",  # a new group starts at the beginning
        "enable.auto.commit": False,  # we commit, after processing
        "partition.assignment.strategy": "cooperative-sticky",
        "session.timeout.ms": 6000,  # a member silent this long is dropped from the group
    }
)
# ANCHOR_END: settings
owned = set()


def assigned(consumer, partitions):
    # With cooperative-sticky, each call hands over only the *new* partitions.
    owned.update(p.partition for p in partitions)
    if partitions:
        print(f"assigned {sorted(p.partition for p in partitions)}, owns {sorted(owned)}", flush=True)


def revoked(consumer, partitions):
    owned.difference_update(p.partition for p in partitions)
    if partitions:
        print(f"revoked {sorted(p.partition for p in partitions)}, owns {sorted(owned)}", flush=True)


consumer.subscribe([args.topic], on_assign=assigned, on_revoke=revoked)
processed = 0
started = last = time.monotonic()
try:
    while True:
        msg = consumer.poll(0.5)
        now = time.monotonic()
        if not owned:
            last = now  # idle time counts only while we own partitions
            if now - started > args.max_wait:
                raise SystemExit(f"no partitions assigned within {args.max_wait} s")
        if msg is None:
            if now - last >= args.idle:
                break
            continue
        if msg.error() and msg.error().code() == KafkaError.UNKNOWN_TOPIC_OR_PART:
            continue  # subscribed before the producer created the topic: wait for it
        # ANCHOR: process_then_commit
        if msg.error():
            raise KafkaException(msg.error())
        process(json.loads(msg.value()))
        processed += 1
        if processed == args.crash_before_commit:
            print("crashing before the commit", flush=True)
            os._exit(1)  # no commit, no leave: as if the process were killed
        # Commit the offset of the *next* record to read, only now that this one is done:
        # a crash before this line means the record is processed again (at least once).
        consumer.commit(message=msg, asynchronous=False)
        print(f"  committed partition {msg.partition()} offset {msg.offset() + 1}", flush=True)
        # ANCHOR_END: process_then_commit
        last = time.monotonic()
finally:
    consumer.close()  # leaves the group at once, so its partitions move without waiting
# ANCHOR_END: consumer
