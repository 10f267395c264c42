#!/usr/bin/env python3
"""Lesson 5: produce task events with confluent-kafka-python the way
taskstream's relay does — idempotent, acks=all, keyed by task id — and print
each record's delivery report (partition and offset).

    KAFKA_BOOTSTRAP=$(taskstream endpoints kafka) python examples/python/produce.py lesson-events
"""

import argparse
import json
import os
import sys
import time
import uuid

from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

parser = argparse.ArgumentParser()
parser.add_argument("topic", nargs="?", default="lesson-events")
parser.add_argument("--count", type=int, help="lesson 19: send this many task.created events instead")
parser.add_argument("--rate", type=float, default=10.0, help="with --count: events per second")
args = parser.parse_args()
bootstrap = os.environ.get("KAFKA_BOOTSTRAP", "localhost:9092")
topic = args.topic

# ANCHOR: create_topic
admin = AdminClient({"bootstrap.servers": bootstrap})
if topic not in admin.list_topics(timeout=10).topics:
    # Three partitions, one replica: enough to see keys spread (production uses 3 replicas).
    futures = admin.create_topics([NewTopic(topic, num_partitions=3, replication_factor=1)])
    futures[topic].result(timeout=10)
    print(f"created topic {topic} with 3 partitions")
# ANCHOR_END: create_topic

# ANCHOR: producer
producer = Producer(
    {
        "bootstrap.servers": bootstrap,
        "enable.idempotence": True,  # retries never duplicate or reorder a record
        "acks": "all",  # acknowledged only once every in-sync replica has it
        "linger.ms": 5,  # wait up to 5 ms to send records together
    }
)


def delivered(err, msg):
    """Called once per record, from producer.poll() or flush()."""
    if err is not None:
        print(f"NOT delivered: {err}", file=sys.stderr)
    else:
        print(f"delivered {msg.key().decode()} to partition {msg.partition()} at offset {msg.offset()}")


if args.count is not None:
    # Lesson 19: a steady stream of `--count` events, `--rate` a second, to watch a slow
    # consumer fall behind it.
    for i in range(args.count):
        event = {"id": str(uuid.uuid4()), "type": "task.created", "subject": f"task-{i}"}
        producer.produce(topic, key=f"task-{i}", value=json.dumps(event))
        producer.poll(0)
        time.sleep(1 / args.rate)
    producer.flush(10)
    sys.exit(0)

events = [("task-1", "task.created"), ("task-2", "task.created"), ("task-1", "task.completed")]
for task_id, event_type in events:
    event = {"id": str(uuid.uuid4()), "type": event_type, "subject": task_id}
    # The key decides the partition: both events of task-1 land in the same one, in order.
    producer.produce(topic, key=task_id, value=json.dumps(event), callback=delivered)

# Wait for every delivery report; anything still queued after 10 s is a failure.
if producer.flush(10) > 0:
    sys.exit("some records were not delivered within 10 s")
# ANCHOR_END: producer
