//! Handlers driven directly on a broker's state: the transactional checks of
//! Produce, OffsetFetch waiting for locks off the async workers, and the
//! group APIs, Fetch and ListOffsets answering while an fsync runs.

use std::collections::BTreeMap;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::join_group_request::JoinGroupRequestProtocol;
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::offset_fetch_request::OffsetFetchRequestTopic;
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{
    ApiKey, DescribeGroupsRequest, DescribeGroupsResponse, FetchRequest, FetchResponse, GroupId,
    JoinGroupRequest, JoinGroupResponse, ListGroupsRequest, ListGroupsResponse, ListOffsetsRequest,
    ListOffsetsResponse, OffsetFetchRequest, ProduceRequest, ProduceResponse, RequestHeader,
    TopicName, TransactionalId,
};
use kafka_protocol::protocol::{Decodable, Encodable};

use super::transactions::stores;
use super::{dispatch, produce, str_bytes};
use crate::broker::Shared;
use crate::groups::offsets::Committed;
use crate::transactions::tests::transactional_batch;

fn broker_with_topic(dir: &tempfile::TempDir) -> Arc<Shared> {
    let shared = Shared::open_for_tests(dir.path());
    shared.topics.create("t", 1, 1, BTreeMap::new()).unwrap();
    shared
}

/// A transaction of `id` holding partition t-0: its producer id and epoch.
fn open_transaction(shared: &Arc<Shared>, id: &str) -> (i64, i16) {
    let (pid, epoch) = shared
        .transactions
        .init_producer_id(&stores(shared), &shared.producer_ids, id, 60_000, None)
        .unwrap();
    shared
        .transactions
        .add_partitions(&shared.topics, id, pid, epoch, &[("t".into(), 0)])
        .unwrap();
    (pid, epoch)
}

fn produce_request(transactional_id: &str, records: Vec<u8>) -> ProduceRequest {
    ProduceRequest::default()
        .with_acks(-1)
        .with_timeout_ms(1_000)
        .with_transactional_id(Some(TransactionalId(str_bytes(transactional_id))))
        .with_topic_data(vec![TopicProduceData::default()
            .with_name(TopicName(str_bytes("t")))
            .with_partition_data(vec![PartitionProduceData::default()
                .with_index(0)
                .with_records(Some(Bytes::from(records)))])])
}

/// The error code, message and base offset of the only partition answered.
fn outcome(response: &ProduceResponse) -> (i16, Option<String>, i64) {
    let p = &response.responses[0].partition_responses[0];
    (
        p.error_code,
        p.error_message.as_ref().map(|m| m.to_string()),
        p.base_offset,
    )
}

fn next_offset(shared: &Shared) -> i64 {
    shared.topics.get("t").unwrap().partitions[0]
        .log()
        .next_offset()
}

#[test]
fn every_transactional_batch_of_a_partition_is_checked_against_the_transaction() {
    let dir = tempfile::tempdir().unwrap();
    let shared = broker_with_topic(&dir);
    let (pid, epoch) = open_transaction(&shared, "tx");
    // Another transactional producer, whose transaction holds nothing.
    let (stranger, _) = shared
        .transactions
        .init_producer_id(
            &stores(&shared),
            &shared.producer_ids,
            "other",
            60_000,
            None,
        )
        .unwrap();
    let mut records = transactional_batch(pid, epoch);
    records.extend(transactional_batch(stranger, 0));

    let response = produce::handle(&shared, produce_request("tx", records), 9);

    assert_eq!(
        outcome(&response).0,
        ResponseError::InvalidProducerIdMapping.code(),
        "a second batch of another producer is refused"
    );
    assert_eq!(
        next_offset(&shared),
        0,
        "no batch of the request was written"
    );
}

#[test]
fn a_batch_retried_after_its_transaction_ended_is_refused_as_kafka_refuses_it() {
    let dir = tempfile::tempdir().unwrap();
    let shared = broker_with_topic(&dir);
    let (pid, epoch) = open_transaction(&shared, "tx");
    let batch = transactional_batch(pid, epoch);
    let first = produce::handle(&shared, produce_request("tx", batch.clone()), 9);
    assert_eq!(outcome(&first), (0, None, 0));
    shared
        .transactions
        .end(&stores(&shared), "tx", pid, epoch, true)
        .unwrap();
    let end = next_offset(&shared);

    // Kafka verifies a transactional batch with the coordinator before its
    // log looks for duplicates; the partition is no longer in a
    // transaction, so the retry is refused, not answered as a duplicate.
    let retried = produce::handle(&shared, produce_request("tx", batch.clone()), 10);
    assert_eq!(
        outcome(&retried),
        (
            ResponseError::InvalidTxnState.code(),
            Some("Partition was not added to the transaction".to_owned()),
            -1
        )
    );
    let retried = produce::handle(&shared, produce_request("tx", batch), 11);
    assert_eq!(
        outcome(&retried).0,
        ResponseError::TransactionAbortable.code(),
        "KIP-890: Produce v11 and later answer TRANSACTION_ABORTABLE"
    );
    assert_eq!(next_offset(&shared), end, "nothing was appended");
}

fn offset_fetch_frame() -> Bytes {
    let version = 7;
    let mut buf = BytesMut::new();
    RequestHeader::default()
        .with_request_api_key(ApiKey::OffsetFetch as i16)
        .with_request_api_version(version)
        .with_correlation_id(1)
        .encode(
            &mut buf,
            ApiKey::OffsetFetch.request_header_version(version),
        )
        .unwrap();
    OffsetFetchRequest::default()
        .with_group_id(GroupId(str_bytes("g")))
        .with_require_stable(true)
        .with_topics(Some(vec![OffsetFetchRequestTopic::default()
            .with_name(TopicName(str_bytes("t")))
            .with_partition_indexes(vec![0])]))
        .encode(&mut buf, version)
        .unwrap();
    buf.freeze()
}

#[test]
fn offset_fetch_waits_for_the_transaction_lock_without_blocking_the_async_worker() {
    let dir = tempfile::tempdir().unwrap();
    let shared = broker_with_topic(&dir);
    let (release, released) = mpsc::channel::<()>();
    let (held, holding) = mpsc::channel::<()>();
    let holder = {
        let shared = Arc::clone(&shared);
        std::thread::spawn(move || {
            let _guard = shared.transactions.guard();
            held.send(()).unwrap();
            // Released when the runtime asks; a stuck runtime never asks.
            released.recv_timeout(Duration::from_secs(10)).is_ok()
        })
    };
    holding.recv().unwrap();
    // One async worker: if OffsetFetch blocked it on the lock, nothing
    // else on the runtime could run until the lock was released.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let fetch = {
            let shared = Arc::clone(&shared);
            tokio::spawn(async move {
                dispatch(
                    &shared,
                    "127.0.0.1:1".parse().unwrap(),
                    offset_fetch_frame(),
                )
                .await
            })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        release.send(()).unwrap();
        let answered = fetch.await.unwrap().unwrap();
        assert!(answered.is_some(), "OffsetFetch is answered");
    });
    assert!(
        holder.join().unwrap(),
        "the async worker was free while OffsetFetch waited for the lock"
    );
}

/// A request frame: header, then body.
fn frame(key: ApiKey, version: i16, body: &impl Encodable) -> Bytes {
    let mut buf = BytesMut::new();
    RequestHeader::default()
        .with_request_api_key(key as i16)
        .with_request_api_version(version)
        .with_correlation_id(1)
        .with_client_id(Some(str_bytes("test")))
        .encode(&mut buf, key.request_header_version(version))
        .unwrap();
    body.encode(&mut buf, version).unwrap();
    buf.freeze()
}

/// Dispatches a frame; the response body, decoded (after a v0 response
/// header: the versions used here are not flexible).
async fn answer<R: Decodable>(shared: &Arc<Shared>, frame: Bytes, version: i16) -> R {
    let mut response = dispatch(shared, "127.0.0.1:1".parse().unwrap(), frame)
        .await
        .unwrap()
        .expect("a response")
        .freeze();
    let _correlation_id = bytes::Buf::get_i32(&mut response);
    R::decode(&mut response, version).unwrap()
}

#[test]
fn join_list_and_describe_groups_answer_while_an_offset_commit_waits_for_its_fsync() {
    let dir = tempfile::tempdir().unwrap();
    let shared = broker_with_topic(&dir);
    let committed = |offset| {
        vec![(
            "t".to_owned(),
            0,
            Committed {
                offset,
                leader_epoch: -1,
                metadata: None,
            },
        )]
    };
    shared.offsets.commit("stored", &committed(1)).unwrap();
    let (reached, commit_reached) = mpsc::channel();
    let (release, released) = mpsc::channel();
    *shared.offsets.hold_sync.lock().unwrap() = Some((reached, released));
    let committer = {
        let shared = Arc::clone(&shared);
        std::thread::spawn(move || shared.offsets.commit("stored", &committed(2)))
    };
    commit_reached.recv().unwrap();

    // One async worker, as in the OffsetFetch test above: a handler that
    // waited for the commit's fsync there would hold up the whole runtime.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let listed: ListGroupsResponse = answer(
            &shared,
            frame(ApiKey::ListGroups, 2, &ListGroupsRequest::default()),
            2,
        )
        .await;
        assert_eq!(listed.error_code, 0);
        assert_eq!(listed.groups.len(), 1);
        assert_eq!(listed.groups[0].group_id.0.as_str(), "stored");

        let request =
            DescribeGroupsRequest::default().with_groups(vec![GroupId(str_bytes("stored"))]);
        let described: DescribeGroupsResponse =
            answer(&shared, frame(ApiKey::DescribeGroups, 4, &request), 4).await;
        assert_eq!(described.groups[0].group_state.as_str(), "Empty");

        let request = JoinGroupRequest::default()
            .with_group_id(GroupId(str_bytes("joining")))
            .with_session_timeout_ms(10_000)
            .with_rebalance_timeout_ms(10_000)
            .with_protocol_type(str_bytes("consumer"))
            .with_protocols(vec![JoinGroupRequestProtocol::default()
                .with_name(str_bytes("range"))
                .with_metadata(Bytes::from_static(b"m"))]);
        let joined: JoinGroupResponse =
            answer(&shared, frame(ApiKey::JoinGroup, 5, &request), 5).await;
        assert_eq!(joined.error_code, 0);
    });
    assert!(
        release.send(()).is_ok(),
        "the commit was still waiting for its fsync when the group APIs answered"
    );
    committer.join().unwrap().unwrap();
    assert_eq!(
        shared.offsets.fetch("stored")[&("t".to_owned(), 0)].offset,
        2
    );
}

#[test]
fn fetch_and_list_offsets_read_a_partition_while_its_log_is_fsynced() {
    let dir = tempfile::tempdir().unwrap();
    let shared = broker_with_topic(&dir);
    let topic = shared.topics.get("t").unwrap();
    let partition = || &topic.partitions[0];
    let mut batch = crate::storage::batch::tests::encode_batch(&["v"], 1_000);
    partition().log().append(&mut batch).unwrap();
    let (reached, sync_reached) = mpsc::channel();
    let (release, released) = mpsc::channel();
    *partition().hold_sync.lock().unwrap() = Some((reached, released));
    let flusher = {
        let shared = Arc::clone(&shared);
        std::thread::spawn(move || shared.topics.get("t").unwrap().partitions[0].sync())
    };
    sync_reached.recv().unwrap();

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let request = FetchRequest::default()
            .with_max_wait_ms(0)
            .with_max_bytes(1 << 20)
            .with_topics(vec![FetchTopic::default()
                .with_topic(TopicName(str_bytes("t")))
                .with_partitions(vec![FetchPartition::default()
                    .with_partition(0)
                    .with_fetch_offset(0)
                    .with_partition_max_bytes(1 << 20)])]);
        let fetched: FetchResponse = answer(&shared, frame(ApiKey::Fetch, 11, &request), 11).await;
        let p = &fetched.responses[0].partitions[0];
        assert_eq!((p.error_code, p.high_watermark), (0, 1));
        assert!(!p.records.as_ref().unwrap().is_empty(), "the batch is read");

        let request = ListOffsetsRequest::default()
            .with_replica_id(kafka_protocol::messages::BrokerId(-1))
            .with_topics(vec![ListOffsetsTopic::default()
                .with_name(TopicName(str_bytes("t")))
                .with_partitions(vec![ListOffsetsPartition::default()
                    .with_partition_index(0)
                    .with_timestamp(-1)])]);
        let listed: ListOffsetsResponse =
            answer(&shared, frame(ApiKey::ListOffsets, 5, &request), 5).await;
        assert_eq!(listed.topics[0].partitions[0].offset, 1);
    });
    assert!(
        release.send(()).is_ok(),
        "the fsync was still running when Fetch and ListOffsets answered"
    );
    flusher.join().unwrap().unwrap();
    assert!(!partition().log().has_unsynced());
}

fn fetch_request(max_wait_ms: i32, isolation_level: i8) -> FetchRequest {
    FetchRequest::default()
        .with_max_wait_ms(max_wait_ms)
        .with_min_bytes(1)
        .with_max_bytes(1 << 20)
        .with_isolation_level(isolation_level)
        .with_topics(vec![FetchTopic::default()
            .with_topic(TopicName(str_bytes("t")))
            .with_partitions(vec![FetchPartition::default()
                .with_partition(0)
                .with_fetch_offset(0)
                .with_partition_max_bytes(1 << 20)])])
}

/// The high watermark, last stable offset and record bytes of t-0.
fn fetched(response: &FetchResponse) -> (i64, i64, usize) {
    let p = &response.responses[0].partitions[0];
    assert_eq!(p.error_code, 0);
    (
        p.high_watermark,
        p.last_stable_offset,
        p.records.as_ref().map_or(0, |r| r.len()),
    )
}

fn latest_offset(shared: &Arc<Shared>) -> impl std::future::Future<Output = i64> + '_ {
    let request = ListOffsetsRequest::default()
        .with_replica_id(kafka_protocol::messages::BrokerId(-1))
        .with_topics(vec![ListOffsetsTopic::default()
            .with_name(TopicName(str_bytes("t")))
            .with_partitions(vec![ListOffsetsPartition::default()
                .with_partition_index(0)
                .with_timestamp(-1)])]);
    async move {
        let listed: ListOffsetsResponse =
            answer(shared, frame(ApiKey::ListOffsets, 5, &request), 5).await;
        listed.topics[0].partitions[0].offset
    }
}

#[test]
fn under_flush_before_acknowledge_a_record_is_fetched_only_once_its_fsync_is_done() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = crate::BrokerConfig::new(dir.path());
    config.flush = crate::FlushPolicy::BeforeAcknowledge;
    let shared = Shared::open_for_tests_with(config);
    shared.topics.create("t", 1, 1, BTreeMap::new()).unwrap();
    let topic = shared.topics.get("t").unwrap();
    let (reached, sync_reached) = mpsc::channel();
    let (release, released) = mpsc::channel();
    *topic.partitions[0].hold_sync.lock().unwrap() = Some((reached, released));
    let producer = {
        let shared = Arc::clone(&shared);
        std::thread::spawn(move || {
            let batch = crate::storage::batch::tests::encode_batch(&["v"], 1_000);
            let request = ProduceRequest::default()
                .with_acks(-1)
                .with_timeout_ms(1_000)
                .with_topic_data(vec![TopicProduceData::default()
                    .with_name(TopicName(str_bytes("t")))
                    .with_partition_data(vec![PartitionProduceData::default()
                        .with_index(0)
                        .with_records(Some(Bytes::from(batch)))])]);
            produce::handle(&shared, request, 9)
        })
    };
    sync_reached.recv().unwrap();
    assert_eq!(
        next_offset(&shared),
        1,
        "the record is written, its fsync held"
    );

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        for isolation in [0, 1] {
            let response: FetchResponse = answer(
                &shared,
                frame(ApiKey::Fetch, 11, &fetch_request(0, isolation)),
                11,
            )
            .await;
            assert_eq!(
                fetched(&response),
                (0, 0, 0),
                "isolation level {isolation}: nothing shown before the fsync"
            );
        }
        assert_eq!(latest_offset(&shared).await, 0);

        // A fetch waiting for data is woken by the fsync, not the append.
        let waiting = {
            let shared = Arc::clone(&shared);
            tokio::spawn(async move {
                let response: FetchResponse = answer(
                    &shared,
                    frame(ApiKey::Fetch, 11, &fetch_request(20_000, 0)),
                    11,
                )
                .await;
                response
            })
        };
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!waiting.is_finished(), "the waiting fetch saw nothing yet");
        release.send(()).unwrap();
        let woken = tokio::time::timeout(Duration::from_secs(10), waiting)
            .await
            .expect("the fsync wakes the waiting fetch")
            .unwrap();
        let (high_watermark, last_stable_offset, bytes) = fetched(&woken);
        assert_eq!((high_watermark, last_stable_offset), (1, 1));
        assert!(bytes > 0, "the record is fetched once fsynced");
        assert_eq!(latest_offset(&shared).await, 1);
    });
    let acknowledged = producer.join().unwrap();
    assert_eq!(outcome(&acknowledged), (0, None, 0));
}

#[test]
fn describe_groups_shows_a_static_members_instance_id_and_leave_group_takes_it_out_by_that_id() {
    use kafka_protocol::messages::leave_group_request::MemberIdentity;
    use kafka_protocol::messages::{LeaveGroupRequest, LeaveGroupResponse};
    let dir = tempfile::tempdir().unwrap();
    let shared = broker_with_topic(&dir);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let request = JoinGroupRequest::default()
            .with_group_id(GroupId(str_bytes("static")))
            .with_group_instance_id(Some(str_bytes("host-1")))
            .with_session_timeout_ms(10_000)
            .with_rebalance_timeout_ms(10_000)
            .with_protocol_type(str_bytes("consumer"))
            .with_protocols(vec![JoinGroupRequestProtocol::default()
                .with_name(str_bytes("range"))
                .with_metadata(Bytes::from_static(b"m"))]);
        let joined: JoinGroupResponse =
            answer(&shared, frame(ApiKey::JoinGroup, 5, &request), 5).await;
        assert_eq!(joined.error_code, 0);
        assert_eq!(
            joined.members[0]
                .group_instance_id
                .as_ref()
                .map(|i| i.as_str()),
            Some("host-1"),
            "the leader learns each member's instance id"
        );

        let describe =
            DescribeGroupsRequest::default().with_groups(vec![GroupId(str_bytes("static"))]);
        let described: DescribeGroupsResponse =
            answer(&shared, frame(ApiKey::DescribeGroups, 4, &describe), 4).await;
        let member = &described.groups[0].members[0];
        assert_eq!(member.member_id, joined.member_id);
        assert_eq!(
            member.group_instance_id.as_ref().map(|i| i.as_str()),
            Some("host-1")
        );

        let leave = LeaveGroupRequest::default()
            .with_group_id(GroupId(str_bytes("static")))
            .with_members(vec![MemberIdentity::default()
                .with_member_id(str_bytes(""))
                .with_group_instance_id(Some(str_bytes("host-1")))]);
        let left: LeaveGroupResponse =
            answer(&shared, frame(ApiKey::LeaveGroup, 3, &leave), 3).await;
        assert_eq!((left.error_code, left.members[0].error_code), (0, 0));
        let described: DescribeGroupsResponse =
            answer(&shared, frame(ApiKey::DescribeGroups, 4, &describe), 4).await;
        assert_eq!(described.groups[0].group_state.as_str(), "Empty");
        assert!(described.groups[0].members.is_empty());
    });
}

#[test]
fn under_flush_before_acknowledge_an_acks_0_produce_is_fsynced_and_so_fetched() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = crate::BrokerConfig::new(dir.path());
    config.flush = crate::FlushPolicy::BeforeAcknowledge;
    let shared = Shared::open_for_tests_with(config);
    shared.topics.create("t", 1, 1, BTreeMap::new()).unwrap();
    let batch = crate::storage::batch::tests::encode_batch(&["v"], 1_000);
    let request = ProduceRequest::default()
        .with_acks(0)
        .with_timeout_ms(1_000)
        .with_topic_data(vec![TopicProduceData::default()
            .with_name(TopicName(str_bytes("t")))
            .with_partition_data(vec![PartitionProduceData::default()
                .with_index(0)
                .with_records(Some(Bytes::from(batch)))])]);
    produce::handle(&shared, request, 9);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let response: FetchResponse =
            answer(&shared, frame(ApiKey::Fetch, 11, &fetch_request(0, 0)), 11).await;
        let (high_watermark, _, bytes) = fetched(&response);
        assert_eq!(
            high_watermark, 1,
            "no acknowledgement, but the fsync still ran"
        );
        assert!(bytes > 0);
    });
}

/// An idempotent producer's InitProducerId while no producer id can be
/// recorded is answered with a retriable error, and succeeds once it can.
#[test]
fn init_producer_id_answers_a_retriable_error_while_ids_cannot_be_recorded() {
    use kafka_protocol::messages::InitProducerIdRequest;
    let dir = tempfile::tempdir().unwrap();
    let shared = broker_with_topic(&dir);
    let blocker = dir.path().join("producer-ids.tmp");
    std::fs::create_dir(&blocker).unwrap();
    let request = InitProducerIdRequest::default()
        .with_transaction_timeout_ms(60_000)
        .with_producer_id(kafka_protocol::messages::ProducerId(-1))
        .with_producer_epoch(-1);
    let answer = super::producer_id::handle(&shared, request.clone(), 4);
    assert_eq!(
        answer.error_code,
        ResponseError::CoordinatorLoadInProgress.code()
    );
    assert!(ResponseError::CoordinatorLoadInProgress.is_retriable());
    std::fs::remove_dir(&blocker).unwrap();
    let answer = super::producer_id::handle(&shared, request, 4);
    assert_eq!(answer.error_code, 0);
    assert!(answer.producer_id.0 >= 0);
}
