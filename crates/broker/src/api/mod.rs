//! One module per Kafka API this broker serves; [`dispatch`] decodes a
//! request, runs its handler and encodes the response in the version the
//! client asked for.

mod admin;
#[cfg(test)]
mod decode_tests;
mod fetch;
mod groups;
#[cfg(test)]
mod handler_tests;
mod list_offsets;
mod metadata;
mod produce;
mod producer_id;
mod transactions;
pub(crate) mod versions;

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::{ApiKey, RequestHeader, RequestKind, ResponseHeader};
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion, StrBytes};

pub(crate) use transactions::is_transactional_produce;

use crate::broker::Shared;

/// Why a request could not be answered; the connection is closed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RequestError {
    #[error("malformed request: {0}")]
    Malformed(String),
    #[error("unsupported API {key} version {version}")]
    Unsupported { key: i16, version: i16 },
}

fn malformed(e: impl std::fmt::Display) -> RequestError {
    RequestError::Malformed(e.to_string())
}

/// Encodes a response frame (without the size prefix).
fn encode<R: Encodable + HeaderVersion>(
    correlation_id: i32,
    version: i16,
    response: &R,
) -> Result<BytesMut, RequestError> {
    let mut buf = BytesMut::new();
    ResponseHeader::default()
        .with_correlation_id(correlation_id)
        .encode(&mut buf, R::header_version(version))
        .map_err(malformed)?;
    response.encode(&mut buf, version).map_err(malformed)?;
    Ok(buf)
}

/// Runs a handler that does blocking file work (writes, fsync) on
/// tokio's blocking pool.
async fn blocking<T: Send + 'static>(
    shared: &Arc<Shared>,
    handler: impl FnOnce(&Arc<Shared>) -> T + Send + 'static,
) -> Result<T, RequestError> {
    let shared = Arc::clone(shared);
    tokio::task::spawn_blocking(move || handler(&shared))
        .await
        .map_err(|e| RequestError::Malformed(format!("handler failed: {e}")))
}

pub(crate) fn str_bytes(s: &str) -> StrBytes {
    StrBytes::from_string(s.to_owned())
}

/// A request frame, decoded.
#[derive(Debug)]
pub(crate) enum Frame {
    /// A request of an API and version this broker serves.
    Request {
        version: i16,
        correlation_id: i32,
        header: RequestHeader,
        request: Box<RequestKind>,
    },
    /// An ApiVersions request newer than served, answered in v0 (KIP-511).
    TooNewApiVersions { correlation_id: i32 },
}

/// Decodes a request frame (the bytes after the size prefix): header, then
/// body, for the APIs and versions served only. Decoding allocates no more
/// than a small multiple of the frame's size, whatever lengths it declares
/// (kafka-protocol is patched for that: `vendor/kafka-protocol/PATCHED.md`).
pub(crate) fn parse(mut frame: Bytes) -> Result<Frame, RequestError> {
    if frame.len() < 8 {
        return Err(malformed("shorter than a request header"));
    }
    let key = i16::from_be_bytes([frame[0], frame[1]]);
    let version = i16::from_be_bytes([frame[2], frame[3]]);
    let correlation_id = i32::from_be_bytes([frame[4], frame[5], frame[6], frame[7]]);
    let api = ApiKey::try_from(key).map_err(|_| RequestError::Unsupported { key, version })?;
    if !versions::supports(api, version) {
        if api == ApiKey::ApiVersions {
            return Ok(Frame::TooNewApiVersions { correlation_id });
        }
        return Err(RequestError::Unsupported { key, version });
    }
    let header_version = api.request_header_version(version);
    let header = RequestHeader::decode(&mut frame, header_version).map_err(malformed)?;
    let request = Box::new(RequestKind::decode(api, &mut frame, version).map_err(malformed)?);
    Ok(Frame::Request {
        version,
        correlation_id,
        header,
        request,
    })
}

/// Handles one request frame (the bytes after the size prefix). `Ok(None)`
/// means no response is due (a produce with acks=0).
pub(crate) async fn dispatch(
    shared: &Arc<Shared>,
    peer: std::net::SocketAddr,
    frame: Bytes,
) -> Result<Option<BytesMut>, RequestError> {
    let (version, correlation_id, header, request) = match parse(frame)? {
        Frame::TooNewApiVersions { correlation_id } => {
            let response = versions::unsupported_version();
            return encode(correlation_id, 0, &response).map(Some);
        }
        Frame::Request {
            version,
            correlation_id,
            header,
            request,
        } => (version, correlation_id, header, request),
    };
    tracing::trace!(version, correlation_id, client = ?header.client_id, "request");
    let c = correlation_id;
    let v = version;
    let response = match *request {
        RequestKind::ApiVersions(_) => encode(c, v, &versions::handle())?,
        RequestKind::Metadata(request) => encode(c, v, &metadata::handle(shared, request, v))?,
        RequestKind::Produce(request) => {
            let acks = request.acks;
            // Appends (and fsyncs) block; keep them off the async workers.
            let response = blocking(shared, move |s| produce::handle(s, request, v)).await?;
            if acks == 0 {
                return Ok(None);
            }
            encode(c, v, &response)?
        }
        RequestKind::Fetch(request) => encode(c, v, &fetch::handle(shared, request).await)?,
        RequestKind::ListOffsets(request) => {
            encode(c, v, &list_offsets::handle(shared, request, v))?
        }
        RequestKind::CreateTopics(request) => {
            let response = blocking(shared, move |s| admin::create_topics(s, request)).await?;
            encode(c, v, &response)?
        }
        RequestKind::DeleteTopics(request) => {
            let response = blocking(shared, move |s| admin::delete_topics(s, request)).await?;
            encode(c, v, &response)?
        }
        RequestKind::DeleteRecords(request) => {
            let response = blocking(shared, move |s| admin::delete_records(s, request)).await?;
            encode(c, v, &response)?
        }
        RequestKind::DescribeConfigs(request) => {
            encode(c, v, &admin::describe_configs(shared, request))?
        }
        RequestKind::InitProducerId(request) => {
            let response = blocking(shared, move |s| producer_id::handle(s, request, v)).await?;
            encode(c, v, &response)?
        }
        RequestKind::AddPartitionsToTxn(request) => {
            let response =
                blocking(shared, move |s| transactions::add_partitions(s, request, v)).await?;
            encode(c, v, &response)?
        }
        RequestKind::AddOffsetsToTxn(request) => {
            let response =
                blocking(shared, move |s| transactions::add_offsets(s, request, v)).await?;
            encode(c, v, &response)?
        }
        RequestKind::TxnOffsetCommit(request) => {
            let response = blocking(shared, move |s| {
                transactions::txn_offset_commit(s, request, v)
            })
            .await?;
            encode(c, v, &response)?
        }
        RequestKind::EndTxn(request) => {
            let response = blocking(shared, move |s| transactions::end_txn(s, request, v)).await?;
            encode(c, v, &response)?
        }
        RequestKind::FindCoordinator(request) => {
            encode(c, v, &groups::find_coordinator(shared, request, v))?
        }
        RequestKind::JoinGroup(request) => {
            let client_id = header
                .client_id
                .as_ref()
                .map_or("", |c| c.as_str())
                .to_owned();
            let host = format!("/{}", peer.ip());
            let response = groups::join_group(shared, request, client_id, host).await;
            encode(c, v, &response)?
        }
        RequestKind::SyncGroup(request) => {
            encode(c, v, &groups::sync_group(shared, request).await)?
        }
        RequestKind::Heartbeat(request) => encode(c, v, &groups::heartbeat(shared, request))?,
        RequestKind::LeaveGroup(request) => encode(c, v, &groups::leave_group(shared, request, v))?,
        RequestKind::OffsetCommit(request) => {
            let response = blocking(shared, move |s| groups::offset_commit(s, request)).await?;
            encode(c, v, &response)?
        }
        RequestKind::OffsetFetch(request) => {
            // OffsetFetch reads the transaction state (for KIP-447), whose
            // lock is held across fsyncs: wait for it off the async workers.
            let response = blocking(shared, move |s| groups::offset_fetch(s, request)).await?;
            encode(c, v, &response)?
        }
        RequestKind::ListGroups(request) => encode(c, v, &groups::list_groups(shared, request))?,
        RequestKind::DescribeGroups(request) => {
            encode(c, v, &groups::describe_groups(shared, request))?
        }
        _ => {
            return Err(RequestError::Unsupported {
                key: header.request_api_key,
                version,
            })
        }
    };
    Ok(Some(response))
}
