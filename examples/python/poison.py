#!/usr/bin/env python3
"""Lesson 13: write a poison record to `task-events` — the Confluent wire
format's header (magic byte 0, schema id 1) followed by bytes that are not
Avro — as a buggy producer that bypasses the serializer would.

    KAFKA_BOOTSTRAP=$(taskstream endpoints kafka) python examples/python/poison.py
"""

import os
import sys

from confluent_kafka import Producer

# ANCHOR: poison
producer = Producer({"bootstrap.servers": os.environ.get("KAFKA_BOOTSTRAP", "localhost:9092")})
producer.produce(
    "task-events",
    key="task-poison",
    value=b"\x00\x00\x00\x00\x01" + b"this is not Avro",
)
if producer.flush(10) > 0:
    sys.exit("the poison record was not delivered within 10 s")
print("wrote a poison record to task-events")
# ANCHOR_END: poison
