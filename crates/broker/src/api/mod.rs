//! One module per Kafka API this broker serves; [`dispatch`] decodes a
//! request, runs its handler and encodes the response in the version the
//! client asked for.

mod admin;
mod fetch;
mod groups;
mod list_offsets;
mod metadata;
mod produce;
mod producer_id;
pub(crate) mod versions;

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::{ApiKey, RequestHeader, ResponseHeader};
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion, StrBytes};

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

fn decode<R: Decodable>(body: &mut Bytes, version: i16) -> Result<R, RequestError> {
    R::decode(body, version).map_err(malformed)
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

/// Handles one request frame (the bytes after the size prefix). `Ok(None)`
/// means no response is due (a produce with acks=0).
pub(crate) async fn dispatch(
    shared: &Arc<Shared>,
    peer: std::net::SocketAddr,
    mut frame: Bytes,
) -> Result<Option<BytesMut>, RequestError> {
    if frame.len() < 8 {
        return Err(malformed("shorter than a request header"));
    }
    let key = i16::from_be_bytes([frame[0], frame[1]]);
    let version = i16::from_be_bytes([frame[2], frame[3]]);
    let correlation_id = i32::from_be_bytes([frame[4], frame[5], frame[6], frame[7]]);
    let api = ApiKey::try_from(key).map_err(|_| RequestError::Unsupported { key, version })?;
    if !versions::supports(api, version) {
        if api == ApiKey::ApiVersions {
            // KIP-511: answer a too-new ApiVersions in v0 with the versions we do serve.
            let response = versions::unsupported_version();
            return encode(correlation_id, 0, &response).map(Some);
        }
        return Err(RequestError::Unsupported { key, version });
    }
    let header_version = api.request_header_version(version);
    let header = RequestHeader::decode(&mut frame, header_version).map_err(malformed)?;
    tracing::trace!(?api, version, correlation_id, client = ?header.client_id, "request");
    let body = &mut frame;
    let response = match api {
        ApiKey::ApiVersions => encode(correlation_id, version, &versions::handle())?,
        ApiKey::Metadata => {
            let request = decode(body, version)?;
            encode(
                correlation_id,
                version,
                &metadata::handle(shared, request, version),
            )?
        }
        ApiKey::Produce => {
            let request: kafka_protocol::messages::ProduceRequest = decode(body, version)?;
            let acks = request.acks;
            // Appends (and fsyncs) block; keep them off the async workers.
            let response = blocking(shared, move |s| produce::handle(s, request)).await?;
            if acks == 0 {
                return Ok(None);
            }
            encode(correlation_id, version, &response)?
        }
        ApiKey::Fetch => {
            let request = decode(body, version)?;
            encode(
                correlation_id,
                version,
                &fetch::handle(shared, request).await,
            )?
        }
        ApiKey::ListOffsets => {
            let request = decode(body, version)?;
            encode(
                correlation_id,
                version,
                &list_offsets::handle(shared, request),
            )?
        }
        ApiKey::CreateTopics => {
            let request = decode(body, version)?;
            let response = blocking(shared, move |s| admin::create_topics(s, request)).await?;
            encode(correlation_id, version, &response)?
        }
        ApiKey::DeleteTopics => {
            let request = decode(body, version)?;
            let response = blocking(shared, move |s| admin::delete_topics(s, request)).await?;
            encode(correlation_id, version, &response)?
        }
        ApiKey::DeleteRecords => {
            let request = decode(body, version)?;
            let response = blocking(shared, move |s| admin::delete_records(s, request)).await?;
            encode(correlation_id, version, &response)?
        }
        ApiKey::DescribeConfigs => {
            let request = decode(body, version)?;
            encode(
                correlation_id,
                version,
                &admin::describe_configs(shared, request),
            )?
        }
        ApiKey::InitProducerId => {
            let request = decode(body, version)?;
            encode(
                correlation_id,
                version,
                &producer_id::handle(shared, request),
            )?
        }
        ApiKey::FindCoordinator => {
            let request = decode(body, version)?;
            encode(
                correlation_id,
                version,
                &groups::find_coordinator(shared, request, version),
            )?
        }
        ApiKey::JoinGroup => {
            let request = decode(body, version)?;
            let client_id = header
                .client_id
                .as_ref()
                .map_or("", |c| c.as_str())
                .to_owned();
            let host = format!("/{}", peer.ip());
            let response = groups::join_group(shared, request, client_id, host).await;
            encode(correlation_id, version, &response)?
        }
        ApiKey::SyncGroup => {
            let request = decode(body, version)?;
            encode(
                correlation_id,
                version,
                &groups::sync_group(shared, request).await,
            )?
        }
        ApiKey::Heartbeat => {
            let request = decode(body, version)?;
            encode(correlation_id, version, &groups::heartbeat(shared, request))?
        }
        ApiKey::LeaveGroup => {
            let request = decode(body, version)?;
            encode(
                correlation_id,
                version,
                &groups::leave_group(shared, request, version),
            )?
        }
        ApiKey::OffsetCommit => {
            let request = decode(body, version)?;
            let response = blocking(shared, move |s| groups::offset_commit(s, request)).await?;
            encode(correlation_id, version, &response)?
        }
        ApiKey::OffsetFetch => {
            let request = decode(body, version)?;
            encode(
                correlation_id,
                version,
                &groups::offset_fetch(shared, request),
            )?
        }
        ApiKey::ListGroups => {
            let request = decode(body, version)?;
            encode(
                correlation_id,
                version,
                &groups::list_groups(shared, request),
            )?
        }
        ApiKey::DescribeGroups => {
            let request = decode(body, version)?;
            encode(
                correlation_id,
                version,
                &groups::describe_groups(shared, request),
            )?
        }
        _ => return Err(RequestError::Unsupported { key, version }),
    };
    Ok(Some(response))
}
