//! Encoding and decoding one task event: JSON (the outbox's form) and Avro
//! (the wire's), without the registry round trip (ids are cached in use).

use apache_avro::{from_avro_datum, to_avro_datum};
use criterion::{black_box, criterion_group, criterion_main, Criterion};
use taskstream_avro::{frame, from_avro, to_avro, unframe, EventSchemas};
use taskstream_domain::{
    Assignee, Cause, EventCodec, JsonCodec, NewTask, Priority, Task, TaskTitle,
};

fn event() -> taskstream_domain::EventEnvelope {
    let now = taskstream_domain::now();
    let new = NewTask {
        title: TaskTitle::parse("Benchmark the codec").unwrap(),
        description: None,
        priority: Priority::High,
        due_at: Some(now),
        assignee: Some(Assignee::parse("ana").unwrap()),
    };
    Task::create(
        new,
        now,
        Cause {
            correlation_id: Some("01a21ab4-4c27-7733-8852-0b8f0348f4e5"),
            traceparent: Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
        },
    )
    .event
}

fn codecs(c: &mut Criterion) {
    let event = event();
    let schema = &EventSchemas::embedded().for_type(event.event_type).schema;
    let json = JsonCodec.encode(&event).unwrap();
    let avro = frame(
        7,
        &to_avro_datum(schema, to_avro(&event, schema).unwrap()).unwrap(),
    );
    println!(
        "event sizes: json {} bytes, avro {} bytes",
        json.len(),
        avro.len()
    );

    c.bench_function("json encode", |b| {
        b.iter(|| JsonCodec.encode(black_box(&event)).unwrap())
    });
    c.bench_function("json decode", |b| {
        b.iter(|| JsonCodec.decode(black_box(&json)).unwrap())
    });
    c.bench_function("avro encode (value + datum + frame)", |b| {
        b.iter(|| {
            let value = to_avro(black_box(&event), schema).unwrap();
            frame(7, &to_avro_datum(schema, value).unwrap())
        })
    });
    c.bench_function("avro decode (unframe + datum + envelope)", |b| {
        b.iter(|| {
            let (_, mut body) = unframe(black_box(&avro)).unwrap();
            from_avro(from_avro_datum(schema, &mut body, Some(schema)).unwrap()).unwrap()
        })
    });
}

criterion_group!(benches, codecs);
criterion_main!(benches);
