#!/usr/bin/env python3
"""Lesson 20: how far a consumer group has committed on a topic — the sum of
its committed offsets against the sum of the partitions' ends — read from the
broker, whatever the group's consumers print about themselves.

    KAFKA_BOOTSTRAP=$(taskstream endpoints kafka) python examples/python/group_progress.py lesson-20 draft-notifier

With --wait it first waits (at most --max-wait seconds) until the group has
committed everything on the topic, and fails if it never does.
"""

import argparse
import os
import sys
import time

from confluent_kafka import Consumer, TopicPartition

parser = argparse.ArgumentParser()
parser.add_argument("topic")
parser.add_argument("group")
parser.add_argument("--wait", action="store_true", help="wait until the group has committed the whole topic")
parser.add_argument("--max-wait", type=float, default=60.0)
args = parser.parse_args()

# ANCHOR: progress
# A consumer that never subscribes does not join the group: it only asks the
# group's coordinator for the committed offsets (OffsetFetch).
reader = Consumer(
    {
        "bootstrap.servers": os.environ.get("KAFKA_BOOTSTRAP", "localhost:9092"),
        "group.id": args.group,
        "enable.auto.commit": False,
    }
)


def progress():
    partitions = reader.list_topics(args.topic, timeout=10).topics[args.topic].partitions
    tps = [TopicPartition(args.topic, p) for p in sorted(partitions)]
    committed = sum(max(tp.offset, 0) for tp in reader.committed(tps, timeout=10))
    end = sum(reader.get_watermark_offsets(tp, timeout=10)[1] for tp in tps)
    return committed, end
# ANCHOR_END: progress


committed, end = progress()
deadline = time.monotonic() + args.max_wait
while args.wait and committed < end and time.monotonic() < deadline:
    time.sleep(0.2)
    committed, end = progress()
reader.close()
print(f"group {args.group} has committed {committed} of the {end} records on {args.topic}")
if args.wait and committed < end:
    sys.exit(f"the group did not commit the whole topic within {args.max_wait} s")
