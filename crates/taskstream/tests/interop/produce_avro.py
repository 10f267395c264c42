#!/usr/bin/env python3
"""Produces one task.created event with confluent-kafka-python's own
AvroSerializer, which registers the schema it is given (TopicRecordNameStrategy)
in the schema registry at --registry. Prints the event id and the schema id.

Used by the interop test: a record taskstream did not write, with a schema
version taskstream did not register, must still be read by its consumers."""

import argparse
import json
import sys
import uuid
from datetime import datetime, timezone

from confluent_kafka import Producer
from confluent_kafka.schema_registry import SchemaRegistryClient, topic_record_subject_name_strategy
from confluent_kafka.schema_registry.avro import AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--registry", required=True)
    parser.add_argument("--schema", required=True, help="an .avsc file")
    parser.add_argument("--topic", default="task-events")
    args = parser.parse_args()

    with open(args.schema) as f:
        schema = f.read()
    serializer = AvroSerializer(
        SchemaRegistryClient({"url": args.registry}),
        schema,
        conf={"subject.name.strategy": topic_record_subject_name_strategy},
    )
    now = datetime.now(timezone.utc)
    task_id = str(uuid.uuid4())
    event_id = str(uuid.uuid4())
    event = {
        "id": event_id,
        "type": "task.created",
        "source": "python/confluent-kafka",
        "time": now,
        "subject": task_id,
        "correlation_id": "from-python",
        "causation_id": None,
        "schema_version": 1,
        "data": {
            "task": {
                "id": task_id,
                "title": "Made in Python",
                "description": None,
                "priority": "high",
                "status": "open",
                "due_at": None,
                "assignee": "py",
                "version": 1,
                "created_at": now,
                "updated_at": now,
                "completed_at": None,
            },
            "changed_fields": [],
        },
    }
    value = serializer(event, SerializationContext(args.topic, MessageField.VALUE))
    producer = Producer({"bootstrap.servers": args.bootstrap, "enable.idempotence": True})
    producer.produce(
        args.topic,
        key=task_id.encode(),
        value=value,
        headers=[("id", event_id.encode()), ("type", b"task.created")],
    )
    if producer.flush(30) != 0:
        print("the record was not delivered", file=sys.stderr)
        return 1
    print(json.dumps({"event_id": event_id, "task_id": task_id, "schema_id": int.from_bytes(value[1:5], "big")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
