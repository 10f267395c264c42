#!/usr/bin/env python3
"""Lesson 12: read the workload processor's output — each assignee's open and
overdue counts on the compacted topic `assignee-workload`, written exactly
once through Kafka transactions — as a `read_committed` consumer, and print
the latest record for one assignee.

    KAFKA_BOOTSTRAP=$(taskstream endpoints kafka) python examples/python/read_workload.py gus
"""

import json
import os
import sys
import time
import uuid

from confluent_kafka import Consumer, KafkaException

assignee = sys.argv[1]
# ANCHOR: read_committed
consumer = Consumer(
    {
        "bootstrap.servers": os.environ.get("KAFKA_BOOTSTRAP", "localhost:9092"),
        "group.id": f"lesson-12-{uuid.uuid4()}",
        "auto.offset.reset": "earliest",
        "enable.auto.commit": False,
        # Only records of committed transactions; records of aborted ones are skipped.
        "isolation.level": "read_committed",
    }
)
# ANCHOR_END: read_committed
consumer.subscribe(["assignee-workload"])
latest = None
idle_since = time.monotonic()
try:
    while time.monotonic() - idle_since < 3:
        msg = consumer.poll(0.5)
        if msg is None:
            continue
        if msg.error():
            raise KafkaException(msg.error())
        idle_since = time.monotonic()
        if msg.key() and msg.key().decode() == assignee and msg.value() is not None:
            latest = json.loads(msg.value())
finally:
    consumer.close()
if latest is None:
    sys.exit(f"no workload record for {assignee}")
print(f"{assignee}: {json.dumps(latest, sort_keys=True)}")
