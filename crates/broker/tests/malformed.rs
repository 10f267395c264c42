//! Garbage on the wire closes only its own connection: the broker keeps
//! serving everyone else and never panics or aborts.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use bytes::{BufMut, BytesMut};
use kafka_protocol::messages::create_topics_request::CreatableTopic;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{
    ApiKey, ApiVersionsRequest, ApiVersionsResponse, CreateTopicsRequest, FetchRequest,
    ListOffsetsRequest, MetadataRequest, ProduceRequest, RequestHeader, RequestKind,
    ResponseHeader, TopicName,
};
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion, StrBytes};
use kafka_protocol::records::{
    Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};
use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};

fn frame<R: Encodable + HeaderVersion>(key: ApiKey, version: i16, request: &R) -> Vec<u8> {
    let mut body = BytesMut::new();
    RequestHeader::default()
        .with_request_api_key(key as i16)
        .with_request_api_version(version)
        .with_correlation_id(7)
        .with_client_id(Some(StrBytes::from_static_str("malformed-test")))
        .encode(&mut body, R::header_version(version))
        .unwrap();
    request.encode(&mut body, version).unwrap();
    let mut framed = Vec::with_capacity(body.len() + 4);
    framed.put_i32(body.len() as i32);
    framed.extend_from_slice(&body);
    framed
}

/// A request of the given kind with every field at its default.
fn default_frame(key: ApiKey, version: i16, request: RequestKind) -> Vec<u8> {
    let mut body = BytesMut::new();
    RequestHeader::default()
        .with_request_api_key(key as i16)
        .with_request_api_version(version)
        .with_correlation_id(7)
        .with_client_id(Some(StrBytes::from_static_str("malformed-test")))
        .encode(&mut body, key.request_header_version(version))
        .unwrap();
    request.encode(&mut body, version).unwrap();
    let mut framed = Vec::with_capacity(body.len() + 4);
    framed.put_i32(body.len() as i32);
    framed.extend_from_slice(&body);
    framed
}

fn topic(name: &'static str) -> TopicName {
    TopicName(StrBytes::from_static_str(name))
}

/// Well-formed requests of every API served: the data path as a client
/// would send it, the rest with default fields.
fn valid_requests() -> Vec<Vec<u8>> {
    let record = Record {
        transactional: false,
        control: false,
        delete_horizon: false,
        partition_leader_epoch: -1,
        producer_id: -1,
        producer_epoch: -1,
        timestamp_type: TimestampType::Creation,
        offset: 0,
        sequence: 0,
        timestamp: 1_000,
        key: None,
        value: Some(bytes::Bytes::from_static(b"value")),
        headers: Default::default(),
    };
    let mut batch = BytesMut::new();
    RecordBatchEncoder::encode(
        &mut batch,
        [&record],
        &RecordEncodeOptions {
            version: 2,
            compression: Compression::None,
        },
    )
    .unwrap();
    vec![
        frame(ApiKey::ApiVersions, 3, &ApiVersionsRequest::default()),
        frame(
            ApiKey::Metadata,
            12,
            &MetadataRequest::default()
                .with_topics(Some(vec![
                    MetadataRequestTopic::default().with_name(Some(topic("fuzz")))
                ]))
                .with_allow_auto_topic_creation(true),
        ),
        frame(
            ApiKey::Produce,
            9,
            &ProduceRequest::default()
                .with_acks(-1)
                .with_timeout_ms(1000)
                .with_topic_data(vec![TopicProduceData::default()
                    .with_name(topic("fuzz"))
                    .with_partition_data(vec![PartitionProduceData::default()
                        .with_index(0)
                        .with_records(Some(batch.freeze()))])]),
        ),
        frame(
            ApiKey::Fetch,
            12,
            &FetchRequest::default()
                .with_max_wait_ms(10)
                .with_max_bytes(1 << 20)
                .with_session_epoch(-1)
                .with_topics(vec![FetchTopic::default()
                    .with_topic(topic("fuzz"))
                    .with_partitions(vec![
                        FetchPartition::default().with_partition_max_bytes(1 << 20)
                    ])]),
        ),
        frame(
            ApiKey::ListOffsets,
            6,
            &ListOffsetsRequest::default().with_topics(vec![ListOffsetsTopic::default()
                .with_name(topic("fuzz"))
                .with_partitions(vec![ListOffsetsPartition::default().with_timestamp(-2)])]),
        ),
        frame(
            ApiKey::CreateTopics,
            7,
            &CreateTopicsRequest::default().with_topics(vec![CreatableTopic::default()
                .with_name(topic("fuzz-created"))
                .with_num_partitions(1)
                .with_replication_factor(1)]),
        ),
        default_frame(
            ApiKey::DeleteTopics,
            5,
            RequestKind::DeleteTopics(Default::default()),
        ),
        default_frame(
            ApiKey::DeleteRecords,
            2,
            RequestKind::DeleteRecords(Default::default()),
        ),
        default_frame(
            ApiKey::DescribeConfigs,
            4,
            RequestKind::DescribeConfigs(Default::default()),
        ),
        default_frame(
            ApiKey::InitProducerId,
            4,
            RequestKind::InitProducerId(Default::default()),
        ),
        default_frame(
            ApiKey::AddPartitionsToTxn,
            3,
            RequestKind::AddPartitionsToTxn(Default::default()),
        ),
        default_frame(
            ApiKey::AddOffsetsToTxn,
            3,
            RequestKind::AddOffsetsToTxn(Default::default()),
        ),
        default_frame(ApiKey::EndTxn, 3, RequestKind::EndTxn(Default::default())),
        default_frame(
            ApiKey::TxnOffsetCommit,
            3,
            RequestKind::TxnOffsetCommit(Default::default()),
        ),
        default_frame(
            ApiKey::FindCoordinator,
            4,
            RequestKind::FindCoordinator(Default::default()),
        ),
        default_frame(
            ApiKey::JoinGroup,
            5,
            RequestKind::JoinGroup(Default::default()),
        ),
        default_frame(
            ApiKey::SyncGroup,
            4,
            RequestKind::SyncGroup(Default::default()),
        ),
        default_frame(
            ApiKey::Heartbeat,
            4,
            RequestKind::Heartbeat(Default::default()),
        ),
        default_frame(
            ApiKey::LeaveGroup,
            4,
            RequestKind::LeaveGroup(Default::default()),
        ),
        default_frame(
            ApiKey::OffsetCommit,
            8,
            RequestKind::OffsetCommit(Default::default()),
        ),
        default_frame(
            ApiKey::OffsetFetch,
            7,
            RequestKind::OffsetFetch(Default::default()),
        ),
        default_frame(
            ApiKey::ListGroups,
            4,
            RequestKind::ListGroups(Default::default()),
        ),
        default_frame(
            ApiKey::DescribeGroups,
            5,
            RequestKind::DescribeGroups(Default::default()),
        ),
    ]
}

/// Sends bytes on a fresh connection and reads whatever comes back until the
/// broker answers, closes, or goes quiet.
fn send(addr: SocketAddr, bytes: &[u8]) {
    let mut stream = TcpStream::connect(addr).expect("the broker accepts connections");
    stream
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    if stream.write_all(bytes).is_err() {
        return;
    }
    let mut sink = [0u8; 4096];
    let _ = stream.read(&mut sink);
}

/// The broker still answers a well-formed ApiVersions request.
fn assert_serving(addr: SocketAddr) {
    let mut stream = TcpStream::connect(addr).expect("the broker accepts connections");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    assert_answers(&mut stream);
}

/// `stream` gets an answer to a well-formed ApiVersions request.
fn assert_answers(stream: &mut TcpStream) {
    stream
        .write_all(&frame(
            ApiKey::ApiVersions,
            3,
            &ApiVersionsRequest::default(),
        ))
        .unwrap();
    let mut size = [0u8; 4];
    stream.read_exact(&mut size).expect("a response");
    let mut body = vec![0u8; i32::from_be_bytes(size) as usize];
    stream.read_exact(&mut body).unwrap();
    let mut body = bytes::Bytes::from(body);
    let header = ResponseHeader::decode(&mut body, 0).unwrap();
    assert_eq!(header.correlation_id, 7);
    let response = ApiVersionsResponse::decode(&mut body, 3).unwrap();
    assert_eq!(response.error_code, 0);
    assert!(response
        .api_keys
        .iter()
        .any(|k| k.api_key == ApiKey::Produce as i16));
}

/// A runner with a fixed seed, so that every run tries the same inputs.
fn deterministic(cases: u32) -> TestRunner {
    TestRunner::new_with_rng(
        Config {
            cases,
            failure_persistence: None,
            ..Config::default()
        },
        TestRng::deterministic_rng(RngAlgorithm::ChaCha),
    )
}

#[test]
fn random_bytes_and_mutated_requests_of_every_api_close_only_their_own_connection() {
    let dir = tempfile::tempdir().unwrap();
    let broker = support::start(dir.path());
    let addr = broker.addr();
    // A client minding its own business throughout.
    let mut bystander = TcpStream::connect(addr).unwrap();
    bystander
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    assert_answers(&mut bystander);
    for request in valid_requests() {
        send(addr, &request);
    }
    assert_serving(addr);

    let mut runner = deterministic(300);
    runner
        .run(&proptest::collection::vec(any::<u8>(), 0..256), |garbage| {
            send(addr, &garbage);
            let mut framed = (garbage.len() as i32).to_be_bytes().to_vec();
            framed.extend_from_slice(&garbage);
            send(addr, &framed);
            Ok(())
        })
        .unwrap();
    assert_serving(addr);

    let requests = valid_requests();
    // A random byte, or a length declaring far more than the frame holds.
    let edit = prop_oneof![
        any::<u8>().prop_map(|b| vec![b]),
        Just(i32::MAX.to_be_bytes().to_vec()),
        Just(vec![0xff, 0xff, 0xff, 0xff, 0x0f]),
    ];
    let mutation = (
        0..requests.len(),
        proptest::collection::vec((any::<prop::sample::Index>(), edit), 1..4),
    );
    let mut runner = deterministic(1000);
    runner
        .run(&mutation, |(which, edits)| {
            let mut request = requests[which].clone();
            for (at, bytes) in edits {
                // Keep the size prefix and the API key intact so the
                // mutation reaches the body's decoder.
                let start = 6 + at.index(request.len() - 6);
                for (i, b) in bytes.into_iter().enumerate() {
                    if let Some(slot) = request.get_mut(start + i) {
                        *slot = b;
                    }
                }
            }
            send(addr, &request);
            Ok(())
        })
        .unwrap();
    assert_serving(addr);
    assert_answers(&mut bystander);
}

#[test]
fn a_size_prefix_beyond_the_limit_or_below_a_header_closes_the_connection() {
    let dir = tempfile::tempdir().unwrap();
    let broker = support::start(dir.path());
    for size in [i32::MAX, -1, 0, 3] {
        let mut stream = TcpStream::connect(broker.addr()).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        stream.write_all(&size.to_be_bytes()).unwrap();
        let mut buf = [0u8; 1];
        assert_eq!(
            stream.read(&mut buf).unwrap_or(0),
            0,
            "size {size} closes the connection"
        );
    }
    assert_serving(broker.addr());
}

/// `kafka-protocol` 0.18 sized a decoded array by its declared length
/// before reading it, so this request made the process abort on a failed
/// allocation; the patched copy (`vendor/kafka-protocol`) bounds it by the
/// bytes left.
#[test]
fn a_request_declaring_a_huge_array_closes_only_its_connection() {
    let dir = tempfile::tempdir().unwrap();
    let broker = support::start(dir.path());
    // Metadata v1: header, then a topics array claiming 2^31-1 entries.
    let mut body = BytesMut::new();
    RequestHeader::default()
        .with_request_api_key(ApiKey::Metadata as i16)
        .with_request_api_version(1)
        .with_correlation_id(7)
        .encode(&mut body, 1)
        .unwrap();
    body.put_i32(i32::MAX);
    let mut framed = (body.len() as i32).to_be_bytes().to_vec();
    framed.extend_from_slice(&body);
    let mut stream = TcpStream::connect(broker.addr()).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream.write_all(&framed).unwrap();
    let mut buf = [0u8; 1];
    assert_eq!(
        stream.read(&mut buf).unwrap_or(0),
        0,
        "the connection is closed without an answer"
    );
    assert_serving(broker.addr());
}

/// Every ListOffsets version the broker advertises (1 to 6) is answered,
/// with the offsets of an existing topic: older clients (Debian's kcat
/// sends v2) must not lose their connection to a response field their
/// version lacks.
#[test]
fn every_advertised_list_offsets_version_is_answered() {
    use kafka_protocol::messages::ListOffsetsResponse;
    let dir = tempfile::tempdir().unwrap();
    let broker = support::start(dir.path());
    // A Metadata request that may auto-create creates the topic.
    send(
        broker.addr(),
        &frame(
            ApiKey::Metadata,
            4,
            &MetadataRequest::default()
                .with_topics(Some(vec![
                    MetadataRequestTopic::default().with_name(Some(topic("versions")))
                ]))
                .with_allow_auto_topic_creation(true),
        ),
    );
    for version in 1..=6 {
        for timestamp in [-2, -1] {
            let mut stream = TcpStream::connect(broker.addr()).unwrap();
            stream
                .set_read_timeout(Some(Duration::from_secs(10)))
                .unwrap();
            let request = ListOffsetsRequest::default()
                .with_replica_id(kafka_protocol::messages::BrokerId(-1))
                .with_topics(vec![ListOffsetsTopic::default()
                    .with_name(topic("versions"))
                    .with_partitions(vec![
                        ListOffsetsPartition::default().with_timestamp(timestamp)
                    ])]);
            stream
                .write_all(&frame(ApiKey::ListOffsets, version, &request))
                .unwrap();
            let mut size = [0u8; 4];
            stream
                .read_exact(&mut size)
                .unwrap_or_else(|e| panic!("ListOffsets v{version} unanswered: {e}"));
            let mut body = vec![0u8; i32::from_be_bytes(size) as usize];
            stream.read_exact(&mut body).unwrap();
            let mut body = bytes::Bytes::from(body);
            let header = ResponseHeader::decode(
                &mut body,
                ApiKey::ListOffsets.response_header_version(version),
            )
            .unwrap();
            assert_eq!(header.correlation_id, 7);
            let response = ListOffsetsResponse::decode(&mut body, version).unwrap();
            let partition = &response.topics[0].partitions[0];
            assert_eq!(partition.error_code, 0, "v{version}");
            assert_eq!(partition.offset, 0, "v{version} {timestamp}");
        }
    }
}
