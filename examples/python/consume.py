#!/usr/bin/env python3
"""Lessons 6 and 7: consume a topic in a consumer group with
confluent-kafka-python, committing each record's offset only after it was
processed (at least once), and print what it processed.

    KAFKA_BOOTSTRAP=$(taskstream endpoints kafka) python examples/python/consume.py lesson-events my-group

It stops after --idle seconds without a new record (so that it can run in a
script); a real service would run until it is told to stop.
"""

import argparse
import json
import os
import time

from confluent_kafka import Consumer, KafkaException

parser = argparse.ArgumentParser()
parser.add_argument("topic")
parser.add_argument("group")
parser.add_argument("--idle", type=float, default=5.0, help="stop after this many idle seconds")
args = parser.parse_args()


def process(event):
    """The business logic: here, just say what happened."""
    print(f"processed {event['type']} of {event['subject']}", flush=True)


# ANCHOR: consumer
consumer = Consumer(
    {
        "bootstrap.servers": os.environ.get("KAFKA_BOOTSTRAP", "localhost:9092"),
        "group.id": args.group,
        "auto.offset.reset": "earliest",  # a new group starts at the beginning
        "enable.auto.commit": False,  # we commit, after processing
        "partition.assignment.strategy": "cooperative-sticky",
    }
)


def assigned(consumer, partitions):
    print("assigned:", sorted(p.partition for p in partitions), flush=True)


consumer.subscribe([args.topic], on_assign=assigned)
last = time.monotonic()
try:
    while time.monotonic() - last < args.idle:
        msg = consumer.poll(0.5)
        if msg is None:
            continue
        if msg.error():
            raise KafkaException(msg.error())
        process(json.loads(msg.value()))
        # Commit the offset of the *next* record to read, only now that this one is done:
        # a crash before this line means the record is processed again (at least once).
        consumer.commit(message=msg, asynchronous=False)
        print(f"  committed partition {msg.partition()} offset {msg.offset() + 1}", flush=True)
        last = time.monotonic()
finally:
    consumer.close()  # leaves the group at once, so its partitions move without waiting
# ANCHOR_END: consumer
