//! The request decoder against random and mutated requests of every API
//! and version served: it never panics, and never holds more memory than
//! a small multiple of the frame, whatever lengths the frame declares.

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::{ApiKey, RequestHeader, RequestKind};
use kafka_protocol::protocol::{Encodable, StrBytes};
use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};

use super::versions::SUPPORTED;
use super::{parse, Frame};
use crate::alloc_meter::peak_allocation;

/// The bytes a decode may hold per byte of frame: the largest decoded
/// element type is a few hundred bytes, and each array reserves at most one
/// element per byte left.
const BYTES_PER_FRAME_BYTE: usize = 1024;
const SLACK: usize = 64 * 1024;

fn default_request(api: ApiKey) -> RequestKind {
    match api {
        ApiKey::Produce => RequestKind::Produce(Default::default()),
        ApiKey::Fetch => RequestKind::Fetch(Default::default()),
        ApiKey::ListOffsets => RequestKind::ListOffsets(Default::default()),
        ApiKey::Metadata => RequestKind::Metadata(Default::default()),
        ApiKey::ApiVersions => RequestKind::ApiVersions(Default::default()),
        ApiKey::CreateTopics => RequestKind::CreateTopics(Default::default()),
        ApiKey::DeleteTopics => RequestKind::DeleteTopics(Default::default()),
        ApiKey::DescribeConfigs => RequestKind::DescribeConfigs(Default::default()),
        ApiKey::DeleteRecords => RequestKind::DeleteRecords(Default::default()),
        ApiKey::InitProducerId => RequestKind::InitProducerId(Default::default()),
        ApiKey::AddPartitionsToTxn => RequestKind::AddPartitionsToTxn(Default::default()),
        ApiKey::AddOffsetsToTxn => RequestKind::AddOffsetsToTxn(Default::default()),
        ApiKey::EndTxn => RequestKind::EndTxn(Default::default()),
        ApiKey::TxnOffsetCommit => RequestKind::TxnOffsetCommit(Default::default()),
        ApiKey::FindCoordinator => RequestKind::FindCoordinator(Default::default()),
        ApiKey::JoinGroup => RequestKind::JoinGroup(Default::default()),
        ApiKey::SyncGroup => RequestKind::SyncGroup(Default::default()),
        ApiKey::Heartbeat => RequestKind::Heartbeat(Default::default()),
        ApiKey::LeaveGroup => RequestKind::LeaveGroup(Default::default()),
        ApiKey::OffsetCommit => RequestKind::OffsetCommit(Default::default()),
        ApiKey::OffsetFetch => RequestKind::OffsetFetch(Default::default()),
        ApiKey::ListGroups => RequestKind::ListGroups(Default::default()),
        ApiKey::DescribeGroups => RequestKind::DescribeGroups(Default::default()),
        other => panic!("no request built for {other:?}; add it here"),
    }
}

/// A well-formed frame (without its size prefix) for every API and version served.
fn valid_frames() -> Vec<Vec<u8>> {
    let mut frames = Vec::new();
    for (api, min, max) in SUPPORTED {
        for version in *min..=*max {
            let mut buf = BytesMut::new();
            RequestHeader::default()
                .with_request_api_key(*api as i16)
                .with_request_api_version(version)
                .with_correlation_id(7)
                .with_client_id(Some(StrBytes::from_static_str("fuzz")))
                .encode(&mut buf, api.request_header_version(version))
                .unwrap();
            default_request(*api)
                .encode(&mut buf, version)
                .unwrap_or_else(|e| panic!("{api:?} v{version}: {e}"));
            frames.push(buf.to_vec());
        }
    }
    frames
}

/// Decodes `frame`, checking the memory it takes.
fn decode_within_bound(frame: &[u8]) -> bool {
    let bytes = Bytes::copy_from_slice(frame);
    let (outcome, peak) = peak_allocation(|| parse(bytes).is_ok());
    let bound = BYTES_PER_FRAME_BYTE * frame.len() + SLACK;
    assert!(
        peak <= bound,
        "decoding a {}-byte frame held {peak} bytes (bound {bound}): {frame:?}",
        frame.len()
    );
    outcome
}

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

/// What a mutation writes at a position: a random byte, or a length
/// declaring far more than the frame holds (i32 and unsigned varint).
fn edit() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        any::<u8>().prop_map(|b| vec![b]),
        Just(i32::MAX.to_be_bytes().to_vec()),
        Just(0x4000_0000i32.to_be_bytes().to_vec()),
        Just(vec![0xff, 0xff, 0xff, 0xff, 0x0f]),
        Just(vec![0xff, 0xff, 0xff, 0x7f]),
        Just(i16::MAX.to_be_bytes().to_vec()),
    ]
}

#[test]
fn every_served_api_and_version_decodes_its_own_well_formed_request() {
    let frames = valid_frames();
    assert!(frames.len() > 100, "{} frames", frames.len());
    for frame in &frames {
        assert!(decode_within_bound(frame), "{frame:?} does not decode");
    }
}

#[test]
fn a_request_declaring_two_billion_elements_is_refused_without_allocating_them() {
    // Metadata v1: the header, then a topics array claiming 2^31-1 entries.
    let mut frame = vec![0, 3, 0, 1, 0, 0, 0, 7, 0, 0];
    frame.extend_from_slice(&i32::MAX.to_be_bytes());
    assert!(!decode_within_bound(&frame));
    // CreateTopics v7 (flexible): a compact topics array of 2^32-2 entries.
    let mut frame = vec![0, 19, 0, 7, 0, 0, 0, 7, 0, 0, 0];
    frame.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0x0f]);
    assert!(!decode_within_bound(&frame));
}

#[test]
fn mutated_requests_of_every_api_never_panic_or_allocate_beyond_the_bound() {
    let frames = valid_frames();
    let strategy = (
        0..frames.len(),
        proptest::collection::vec((any::<prop::sample::Index>(), edit()), 1..4),
        any::<prop::sample::Index>(),
        any::<bool>(),
    );
    deterministic(20_000)
        .run(&strategy, |(which, edits, cut, truncate)| {
            let mut frame = frames[which].clone();
            for (at, bytes) in edits {
                // Keep the API key and version, so that the body reaches its decoder.
                let start = 4 + at.index(frame.len().saturating_sub(4).max(1));
                for (i, b) in bytes.into_iter().enumerate() {
                    match frame.get_mut(start + i) {
                        Some(slot) => *slot = b,
                        None => frame.push(b),
                    }
                }
            }
            if truncate {
                frame.truncate(cut.index(frame.len() + 1));
            }
            decode_within_bound(&frame);
            Ok(())
        })
        .unwrap();
}

#[test]
fn random_bodies_after_a_valid_header_never_panic_or_allocate_beyond_the_bound() {
    let headers: Vec<Vec<u8>> = SUPPORTED
        .iter()
        .flat_map(|(api, min, max)| {
            (*min..=*max).map(move |version| {
                let mut header = (*api as i16).to_be_bytes().to_vec();
                header.extend_from_slice(&version.to_be_bytes());
                header.extend_from_slice(&[0, 0, 0, 7, 0xff, 0xff]);
                if api.request_header_version(version) >= 2 {
                    header.push(0);
                }
                header
            })
        })
        .collect();
    let strategy = (
        0..headers.len(),
        proptest::collection::vec(any::<u8>(), 0..200),
    );
    deterministic(20_000)
        .run(&strategy, |(which, body)| {
            let mut frame = headers[which].clone();
            frame.extend_from_slice(&body);
            decode_within_bound(&frame);
            Ok(())
        })
        .unwrap();
}

#[test]
fn an_api_versions_request_newer_than_served_is_answered_not_refused() {
    let frame = Bytes::from_static(&[0, 18, 0, 99, 0, 0, 0, 9, 0, 0]);
    assert!(matches!(
        parse(frame),
        Ok(Frame::TooNewApiVersions { correlation_id: 9 })
    ));
}
