#!/usr/bin/env python3
"""Reads task events with confluent-kafka-python and prints one JSON object
per record: key, headers, partition, offset and the decoded JSON value.

Used by the interop test to check what taskstream publishes with a client
that taskstream did not write."""

import argparse
import json
import sys
import time
import uuid

from confluent_kafka import Consumer, KafkaException


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--topic", default="task-events")
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--timeout", type=float, default=30.0)
    args = parser.parse_args()

    consumer = Consumer(
        {
            "bootstrap.servers": args.bootstrap,
            "group.id": f"interop-{uuid.uuid4()}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe([args.topic])
    seen = 0
    deadline = time.monotonic() + args.timeout
    try:
        while seen < args.count and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None:
                continue
            if msg.error():
                raise KafkaException(msg.error())
            headers = {k: v.decode() for k, v in (msg.headers() or [])}
            print(
                json.dumps(
                    {
                        "key": msg.key().decode(),
                        "headers": headers,
                        "partition": msg.partition(),
                        "offset": msg.offset(),
                        "value": json.loads(msg.value()),
                    }
                ),
                flush=True,
            )
            seen += 1
    finally:
        consumer.close()
    if seen < args.count:
        print(f"read {seen} of {args.count} records before the timeout", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
