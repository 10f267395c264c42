#!/usr/bin/env python3
"""Lesson 9: produce Avro records with confluent-kafka-python's
AvroSerializer, which registers the schema in the registry (subject
`<topic>-value`) and writes the Confluent wire format: a zero byte, the
schema's 4-byte id, then the Avro body.

    python examples/python/produce_avro.py lesson-9 \
        --bootstrap $(taskstream endpoints kafka) --registry $(taskstream endpoints schema-registry)
"""

import argparse
import uuid

from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext

parser = argparse.ArgumentParser()
parser.add_argument("topic")
parser.add_argument("--bootstrap", required=True)
parser.add_argument("--registry", required=True)
args = parser.parse_args()

admin = AdminClient({"bootstrap.servers": args.bootstrap})
if args.topic not in admin.list_topics(timeout=10).topics:
    admin.create_topics([NewTopic(args.topic, num_partitions=1, replication_factor=1)])[args.topic].result(10)

# ANCHOR: avro_producer
SCHEMA = """
{
  "type": "record",
  "name": "ReminderSent",
  "namespace": "lesson.events",
  "fields": [
    {"name": "id", "type": "string"},
    {"name": "task_id", "type": "string"},
    {"name": "channel", "type": {"type": "enum", "name": "Channel", "symbols": ["EMAIL", "CHAT"]}}
  ]
}
"""
registry = SchemaRegistryClient({"url": args.registry})
serialize = AvroSerializer(registry, SCHEMA)  # registers the schema on first use
producer = Producer({"bootstrap.servers": args.bootstrap, "enable.idempotence": True, "acks": "all"})

event = {"id": str(uuid.uuid4()), "task_id": "task-1", "channel": "EMAIL"}
value = serialize(event, SerializationContext(args.topic, MessageField.VALUE))
print(f"magic byte {value[0]}, schema id {int.from_bytes(value[1:5], 'big')}, {len(value) - 5} bytes of Avro")
producer.produce(args.topic, key="task-1", value=value)
producer.flush(10)
# ANCHOR_END: avro_producer
