#!/usr/bin/env python3
"""Transactions on a broker through confluent-kafka-python: commits and an
abort from one transactional producer, then a consume-transform-produce
copy whose input offsets are sent to its transactions. Prints, as JSON,
what read_committed and read_uncommitted consumers see, what was copied and
the copier group's committed offset."""

import argparse
import json
import sys
import time

from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition

PATIENCE_S = 30


def transactional(bootstrap: str, transactional_id: str) -> Producer:
    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "transactional.id": transactional_id,
            "transaction.timeout.ms": 60000,
            "linger.ms": 5,
        }
    )
    producer.init_transactions(PATIENCE_S)
    return producer


def in_transaction(producer: Producer, topic: str, values, commit: bool) -> None:
    producer.begin_transaction()
    for value in values:
        producer.produce(topic, key=b"k", value=value.encode())
    producer.flush(PATIENCE_S)
    if commit:
        producer.commit_transaction(PATIENCE_S)
    else:
        producer.abort_transaction(PATIENCE_S)


def read(bootstrap: str, topic: str, isolation: str, count: int):
    """The values of partition 0 from its start, until `count` arrived or
    the log end was reached with nothing more to come."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"readers-{isolation}",
            "enable.auto.commit": False,
            "isolation.level": isolation,
            "enable.partition.eof": True,
        }
    )
    consumer.assign([TopicPartition(topic, 0, 0)])
    values = []
    deadline = time.monotonic() + PATIENCE_S
    try:
        while len(values) < count and time.monotonic() < deadline:
            message = consumer.poll(0.2)
            if message is None:
                continue
            if message.error():
                if message.error().code() == -191:  # _PARTITION_EOF
                    if len(values) >= count:
                        break
                    continue
                raise KafkaException(message.error())
            values.append(message.value().decode())
    finally:
        consumer.close()
    return values


def copy(bootstrap: str, source: str, target: str, group: str, count: int):
    """Copies `count` committed records of `source` to `target`, each
    batch in a transaction that also commits the group's input offsets."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": group,
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
            "auto.offset.reset": "earliest",
        }
    )
    producer = transactional(bootstrap, f"{group}-copier")
    consumer.subscribe([source])
    copied = 0
    deadline = time.monotonic() + PATIENCE_S
    try:
        while copied < count and time.monotonic() < deadline:
            messages = consumer.consume(num_messages=4, timeout=0.5)
            messages = [m for m in messages if not m.error()]
            if not messages:
                continue
            producer.begin_transaction()
            for m in messages:
                producer.produce(target, key=m.key(), value=m.value())
            producer.send_offsets_to_transaction(
                consumer.position(consumer.assignment()),
                consumer.consumer_group_metadata(),
                PATIENCE_S,
            )
            producer.commit_transaction(PATIENCE_S)
            copied += len(messages)
    finally:
        consumer.close()
    return copied


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--copy-topic", required=True)
    args = parser.parse_args()

    producer = transactional(args.bootstrap, "python-writer")
    in_transaction(producer, args.topic, [f"committed-{i}" for i in range(1, 6)], True)
    in_transaction(producer, args.topic, [f"aborted-{i}" for i in range(1, 6)], False)
    in_transaction(producer, args.topic, [f"committed-{i}" for i in range(6, 11)], True)

    group = "python-copiers"
    copied = copy(args.bootstrap, args.topic, args.copy_topic, group, 10)
    offsets_reader = Consumer({"bootstrap.servers": args.bootstrap, "group.id": group})
    committed = offsets_reader.committed([TopicPartition(args.topic, 0)], timeout=PATIENCE_S)
    offsets_reader.close()

    json.dump(
        {
            "read_committed": read(args.bootstrap, args.topic, "read_committed", 10),
            # 15 records and 3 control records (markers): offsets 0..17.
            "read_uncommitted": read(args.bootstrap, args.topic, "read_uncommitted", 15),
            "copied": copied,
            "copy": read(args.bootstrap, args.copy_topic, "read_committed", 10),
            "copier_committed_offset": committed[0].offset,
        },
        sys.stdout,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
