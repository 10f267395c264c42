#!/usr/bin/env python3
"""Lesson 20: a first draft of a task-event notifier, as an assistant writes
it from a one-line request ("a Python consumer for our task events that sends
a notification for each"). It runs, and it is wrong in the ways event-driven
code is usually wrong; each `FLAW n` comment marks one thing a review must
find. Do not copy it: examples/python/consume.py is the corrected reference.

    KAFKA_BOOTSTRAP=$(taskstream endpoints kafka) python examples/python/ai_draft_consumer.py lesson-20 draft-notifier

Like the assistant's draft, it runs until it is killed; lesson 20 kills it
mid-stream and shows, with the group's committed offsets, what it lost.
"""

import argparse
import json
import os
import time
from concurrent.futures import ThreadPoolExecutor

from confluent_kafka import Consumer

parser = argparse.ArgumentParser()
parser.add_argument("topic", nargs="?", default="task-events")
parser.add_argument("group", nargs="?", default="notifier")
args = parser.parse_args()

# ANCHOR: draft
consumer = Consumer(
    {
        "bootstrap.servers": os.environ.get("KAFKA_BOOTSTRAP", "localhost:9092"),
        "group.id": args.group,
        "auto.offset.reset": "earliest",
        # FLAW 1: offsets are committed on a timer for every record poll/consume
        # returned, processed or not. A crash loses what was handed out but not done.
        "enable.auto.commit": True,
        "auto.commit.interval.ms": 1000,
        # FLAW 5: "for lower latency". taskstream's relay writes task-events in
        # transactions; this reader also sees records of aborted ones.
        "isolation.level": "read_uncommitted",
    }
)
consumer.subscribe([args.topic])
pool = ThreadPoolExecutor(max_workers=4)  # "for throughput"


def send_notification(event):
    # Stands in for the e-mail or webhook call: about a second each.
    time.sleep(1.0)
    # FLAW 2: nothing remembers which event ids were notified, and nothing
    # travels with the call that would let the receiver drop a repeat: every
    # redelivery is a second e-mail.
    print(f"notified {event['type']} of {event['subject']}", flush=True)


def handle(event):
    try:
        send_notification(event)
    except Exception as e:
        # FLAW 6: a failed notification (webhook down) is printed and forgotten;
        # the offset is committed anyway, so the event is never retried.
        print(f"error: {e}")


while True:
    # FLAW 7: the loop waits for the whole batch before it polls again. A batch
    # whose calls hang or retry for longer than max.poll.interval.ms (5 minutes)
    # gets the member thrown out of the group, and its partitions reassigned
    # while it is still working on them.
    messages = consumer.consume(num_messages=100, timeout=1.0)
    events = []
    for msg in messages:
        if msg.error():
            print(msg.error())  # FLAW 6 again: an error is printed, and skipped
            continue
        try:
            events.append(json.loads(msg.value()))
        except ValueError:
            # FLAW 4: a poison record is dropped without a trace: no
            # dead-letter topic, no headers saying where it came from or why.
            continue
    # FLAW 3: four workers take the batch in any order, so two events of one
    # task (created, then completed) can be notified the wrong way round: the
    # per-task order that keying by task id bought on the topic is lost here.
    list(pool.map(handle, events))
# ANCHOR_END: draft
