#!/usr/bin/env python3
"""Prints, as JSON, a consumer group's committed offset and the log-end
offset (high watermark) of every partition of a topic, read with
confluent-kafka-python: an independent check of `taskstream lag`."""

import argparse
import json
import sys

from confluent_kafka import Consumer, TopicPartition


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--group", required=True)
    parser.add_argument("--topic", default="task-events")
    args = parser.parse_args()

    consumer = Consumer(
        {"bootstrap.servers": args.bootstrap, "group.id": args.group, "enable.auto.commit": False}
    )
    try:
        metadata = consumer.list_topics(args.topic, timeout=10)
        partitions = sorted(metadata.topics[args.topic].partitions)
        committed = consumer.committed([TopicPartition(args.topic, p) for p in partitions], timeout=10)
        result = []
        for tp in committed:
            _low, high = consumer.get_watermark_offsets(TopicPartition(args.topic, tp.partition), timeout=10)
            result.append(
                {
                    "partition": tp.partition,
                    "committed": tp.offset if tp.offset >= 0 else None,
                    "log_end": high,
                }
            )
    finally:
        consumer.close()
    json.dump(result, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
