#!/usr/bin/env python3
"""Lesson 17: follow one task's causation chain across two topics with
confluent-kafka-python: the Task API's `task.created` on `task-events` (Avro)
and the triage agent's `task.triage_suggested` on `task-suggestions` (JSON).

    python examples/python/trace_suggestion.py TASK_ID \
        --bootstrap $(taskstream endpoints kafka) --registry $(taskstream endpoints schema-registry)

It reads both topics from the beginning, outside any consumer group (it
commits nothing), and prints the chain: the request, the event it caused, and
the suggestion that event caused. It exits non-zero if the chain is broken.
"""

import argparse
import json
import sys
import time

from confluent_kafka import Consumer, KafkaException, TopicPartition
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer
from confluent_kafka.serialization import MessageField, SerializationContext

parser = argparse.ArgumentParser()
parser.add_argument("task_id")
parser.add_argument("--bootstrap", required=True)
parser.add_argument("--registry", required=True)
parser.add_argument("--idle", type=float, default=3.0, help="stop after this many idle seconds")
args = parser.parse_args()

deserialize = AvroDeserializer(SchemaRegistryClient({"url": args.registry}))


def read_all(topic, decode):
    """Every record of `topic` whose key is the task's id, decoded, in offset order per partition."""
    consumer = Consumer(
        {
            "bootstrap.servers": args.bootstrap,
            "group.id": "unused",  # assign() below: no group membership, no commits
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
        }
    )
    partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
    consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
    found, last = [], time.monotonic()
    try:
        while time.monotonic() - last < args.idle:
            msg = consumer.poll(0.5)
            if msg is None:
                continue
            if msg.error():
                raise KafkaException(msg.error())
            last = time.monotonic()
            # ANCHOR: same_key
            # Both topics are keyed by the task's id, so the task's events and
            # its suggestions sit in the same partition number of each topic.
            if msg.key() is not None and msg.key().decode() == args.task_id:
                found.append(decode(msg))
            # ANCHOR_END: same_key
    finally:
        consumer.close()
    return found


events = read_all(
    "task-events",
    lambda m: deserialize(m.value(), SerializationContext(m.topic(), MessageField.VALUE)),
)
suggestions = read_all("task-suggestions", lambda m: json.loads(m.value()))

# ANCHOR: chain
created = next((e for e in events if e["type"] == "task.created"), None)
if created is None:
    sys.exit(f"no task.created for {args.task_id} on task-events")
print(f"request      {created['correlation_id']}")
print(f"  caused     {created['type']} {created['id']}")
answers = [s for s in suggestions if s["causation_id"] == created["id"]]
if not answers:
    sys.exit(f"no suggestion on task-suggestions is caused by {created['id']}")
for s in answers:
    same_request = s["correlation_id"] == created["correlation_id"]
    print(f"    caused   {s['type']} {s['id']} (same correlation id: {same_request})")
    print(f"             priority={s['data']['priority']} due_at={s['data']['due_at']}"
          f" confidence={s['data']['confidence']}")
# ANCHOR_END: chain
