//! The group APIs: FindCoordinator, JoinGroup, SyncGroup, Heartbeat,
//! LeaveGroup, OffsetCommit, OffsetFetch, ListGroups and DescribeGroups,
//! served by [`crate::groups`].

use std::collections::BTreeSet;
use std::sync::Arc;

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::describe_groups_response::{DescribedGroup, DescribedGroupMember};
use kafka_protocol::messages::find_coordinator_response::Coordinator;
use kafka_protocol::messages::join_group_response::JoinGroupResponseMember;
use kafka_protocol::messages::leave_group_response::MemberResponse;
use kafka_protocol::messages::list_groups_response::ListedGroup;
use kafka_protocol::messages::offset_commit_response::{
    OffsetCommitResponsePartition, OffsetCommitResponseTopic,
};
use kafka_protocol::messages::offset_fetch_response::{
    OffsetFetchResponsePartition, OffsetFetchResponseTopic,
};
use kafka_protocol::messages::*;

use super::str_bytes;
use crate::broker::Shared;
use crate::groups::offsets::Committed;
use crate::groups::{GroupState, JoinRequest};

const GROUP_KEY: i8 = 0;
const TRANSACTION_KEY: i8 = 1;

pub(crate) fn find_coordinator(
    shared: &Arc<Shared>,
    request: FindCoordinatorRequest,
    version: i16,
) -> FindCoordinatorResponse {
    let node = BrokerId(shared.config.node_id);
    let host = str_bytes(&shared.advertised_host);
    let port = shared.advertised_port;
    // This node coordinates both groups and transactions.
    let code = if request.key_type == GROUP_KEY || request.key_type == TRANSACTION_KEY {
        0
    } else {
        ResponseError::InvalidRequest.code()
    };
    if version >= 4 {
        let coordinators = request
            .coordinator_keys
            .into_iter()
            .map(|key| {
                Coordinator::default()
                    .with_key(key)
                    .with_node_id(if code == 0 { node } else { BrokerId(-1) })
                    .with_host(if code == 0 {
                        host.clone()
                    } else {
                        Default::default()
                    })
                    .with_port(if code == 0 { port } else { -1 })
                    .with_error_code(code)
            })
            .collect();
        return FindCoordinatorResponse::default().with_coordinators(coordinators);
    }
    if code != 0 {
        return FindCoordinatorResponse::default()
            .with_error_code(code)
            .with_node_id(BrokerId(-1))
            .with_port(-1);
    }
    FindCoordinatorResponse::default()
        .with_node_id(node)
        .with_host(host)
        .with_port(port)
}

pub(crate) async fn join_group(
    shared: &Arc<Shared>,
    request: JoinGroupRequest,
    client_id: String,
    client_host: String,
) -> JoinGroupResponse {
    let group = request.group_id.0.as_str().to_owned();
    let joined = shared
        .coordinator
        .join(JoinRequest {
            group: group.clone(),
            member_id: request.member_id.as_str().to_owned(),
            group_instance_id: request
                .group_instance_id
                .as_ref()
                .map(|i| i.as_str().to_owned()),
            client_id,
            client_host,
            session_timeout_ms: request.session_timeout_ms,
            rebalance_timeout_ms: request.rebalance_timeout_ms,
            protocol_type: request.protocol_type.as_str().to_owned(),
            protocols: request
                .protocols
                .into_iter()
                .map(|p| (p.name.as_str().to_owned(), p.metadata))
                .collect(),
        })
        .await;
    if joined.error == 0
        && shared.offsets.protocol_type(&group).as_deref() != Some(&joined.protocol_type)
    {
        // Kept so that a restarted broker still lists and describes the
        // group; written once per group, off the async workers.
        let protocol_type = joined.protocol_type.clone();
        let stored = super::blocking(shared, move |s| {
            s.offsets.remember_protocol_type(&group, &protocol_type)
        })
        .await;
        match stored {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "storing a group's protocol type failed"),
            Err(e) => tracing::error!(error = %e, "storing a group's protocol type failed"),
        }
    }
    JoinGroupResponse::default()
        .with_error_code(joined.error)
        .with_generation_id(joined.generation)
        .with_protocol_type(Some(str_bytes(&joined.protocol_type)))
        .with_protocol_name(Some(str_bytes(&joined.protocol)))
        .with_leader(str_bytes(&joined.leader))
        .with_member_id(str_bytes(&joined.member_id))
        .with_members(
            joined
                .members
                .into_iter()
                .map(|(id, instance, metadata)| {
                    JoinGroupResponseMember::default()
                        .with_member_id(str_bytes(&id))
                        .with_group_instance_id(instance.as_deref().map(str_bytes))
                        .with_metadata(metadata)
                })
                .collect(),
        )
}

pub(crate) async fn sync_group(
    shared: &Arc<Shared>,
    request: SyncGroupRequest,
) -> SyncGroupResponse {
    let (code, assignment, protocol_type, protocol) = shared
        .coordinator
        .sync(
            request.group_id.0.as_str(),
            request.member_id.as_str(),
            request.group_instance_id.as_ref().map(|i| i.as_str()),
            request.generation_id,
            request
                .assignments
                .into_iter()
                .map(|a| (a.member_id.as_str().to_owned(), a.assignment))
                .collect(),
        )
        .await;
    SyncGroupResponse::default()
        .with_error_code(code)
        .with_assignment(assignment)
        .with_protocol_type(Some(str_bytes(&protocol_type)))
        .with_protocol_name(Some(str_bytes(&protocol)))
}

pub(crate) fn heartbeat(shared: &Arc<Shared>, request: HeartbeatRequest) -> HeartbeatResponse {
    HeartbeatResponse::default().with_error_code(shared.coordinator.heartbeat(
        request.group_id.0.as_str(),
        request.member_id.as_str(),
        request.group_instance_id.as_ref().map(|i| i.as_str()),
        request.generation_id,
    ))
}

pub(crate) fn leave_group(
    shared: &Arc<Shared>,
    request: LeaveGroupRequest,
    version: i16,
) -> LeaveGroupResponse {
    let group = request.group_id.0.as_str();
    if version < 3 {
        let codes = shared
            .coordinator
            .leave(group, &[(request.member_id.as_str().to_owned(), None)]);
        return LeaveGroupResponse::default().with_error_code(codes[0]);
    }
    let ids: Vec<(String, Option<String>)> = request
        .members
        .iter()
        .map(|m| {
            (
                m.member_id.as_str().to_owned(),
                m.group_instance_id.as_ref().map(|i| i.as_str().to_owned()),
            )
        })
        .collect();
    let codes = shared.coordinator.leave(group, &ids);
    LeaveGroupResponse::default().with_members(
        request
            .members
            .into_iter()
            .zip(codes)
            .map(|(m, code)| {
                MemberResponse::default()
                    .with_member_id(m.member_id)
                    .with_group_instance_id(m.group_instance_id)
                    .with_error_code(code)
            })
            .collect(),
    )
}

pub(crate) fn offset_commit(
    shared: &Arc<Shared>,
    request: OffsetCommitRequest,
) -> OffsetCommitResponse {
    let group = request.group_id.0.as_str();
    let allowed = shared.coordinator.check_commit(
        group,
        request.member_id.as_str(),
        request.group_instance_id.as_ref().map(|i| i.as_str()),
        request.generation_id_or_member_epoch,
    );
    let mut commits = Vec::new();
    let mut topics: Vec<OffsetCommitResponseTopic> = request
        .topics
        .iter()
        .map(|t| {
            let topic = shared.topics.get(t.name.0.as_str());
            let partitions = t
                .partitions
                .iter()
                .map(|p| {
                    let exists = topic
                        .as_ref()
                        .is_some_and(|topic| topic.partition(p.partition_index).is_some());
                    let code = match allowed {
                        Err(code) => code,
                        Ok(()) if !exists => ResponseError::UnknownTopicOrPartition.code(),
                        Ok(()) => {
                            commits.push((
                                t.name.0.as_str().to_owned(),
                                p.partition_index,
                                Committed {
                                    offset: p.committed_offset,
                                    leader_epoch: p.committed_leader_epoch,
                                    metadata: p
                                        .committed_metadata
                                        .as_ref()
                                        .map(|m| m.as_str().to_owned()),
                                },
                            ));
                            0
                        }
                    };
                    OffsetCommitResponsePartition::default()
                        .with_partition_index(p.partition_index)
                        .with_error_code(code)
                })
                .collect();
            OffsetCommitResponseTopic::default()
                .with_name(t.name.clone())
                .with_partitions(partitions)
        })
        .collect();
    if !commits.is_empty() {
        if let Err(e) = shared.offsets.commit(group, &commits) {
            tracing::error!(group, error = %e, "storing committed offsets failed");
            let failed = ResponseError::KafkaStorageError.code();
            for topic in &mut topics {
                for p in &mut topic.partitions {
                    if p.error_code == 0 {
                        p.error_code = failed;
                    }
                }
            }
        }
    }
    OffsetCommitResponse::default().with_topics(topics)
}

pub(crate) fn offset_fetch(
    shared: &Arc<Shared>,
    request: OffsetFetchRequest,
) -> OffsetFetchResponse {
    let group = request.group_id.0.as_str().to_owned();
    let committed = shared.offsets.fetch(&group);
    let require_stable = request.require_stable;
    let wanted: Vec<(TopicName, Vec<i32>)> = match request.topics {
        Some(topics) => topics
            .into_iter()
            .map(|t| (t.name, t.partition_indexes))
            .collect(),
        None => {
            let names: BTreeSet<&String> = committed.keys().map(|(t, _)| t).collect();
            names
                .into_iter()
                .map(|name| {
                    let partitions = committed
                        .keys()
                        .filter(|(t, _)| t == name)
                        .map(|(_, p)| *p)
                        .collect();
                    (TopicName(str_bytes(name)), partitions)
                })
                .collect()
        }
    };
    let topics = wanted
        .into_iter()
        .map(|(name, partitions)| {
            let partitions = partitions
                .into_iter()
                .map(|p| {
                    let response = OffsetFetchResponsePartition::default().with_partition_index(p);
                    // KIP-447: a consumer asking for stable offsets waits
                    // (retries) while a transaction may still commit one.
                    if require_stable
                        && shared
                            .transactions
                            .has_pending_offset(&group, name.0.as_str(), p)
                    {
                        return response
                            .with_committed_offset(-1)
                            .with_committed_leader_epoch(-1)
                            .with_error_code(ResponseError::UnstableOffsetCommit.code());
                    }
                    match committed.get(&(name.0.as_str().to_owned(), p)) {
                        Some(c) => response
                            .with_committed_offset(c.offset)
                            .with_committed_leader_epoch(c.leader_epoch)
                            .with_metadata(Some(str_bytes(c.metadata.as_deref().unwrap_or("")))),
                        None => response
                            .with_committed_offset(-1)
                            .with_committed_leader_epoch(-1)
                            .with_metadata(Some(str_bytes(""))),
                    }
                })
                .collect();
            OffsetFetchResponseTopic::default()
                .with_name(name)
                .with_partitions(partitions)
        })
        .collect();
    OffsetFetchResponse::default().with_topics(topics)
}

pub(crate) fn list_groups(shared: &Arc<Shared>, request: ListGroupsRequest) -> ListGroupsResponse {
    let mut groups: Vec<(String, String, String)> = shared
        .coordinator
        .describe_all()
        .into_iter()
        .map(|g| (g.id, g.protocol_type, g.state.name().to_owned()))
        .collect();
    // Groups without members since the last restart (or ever): known by
    // their committed offsets and stored protocol type, listed as Empty.
    for (id, protocol_type) in shared.offsets.groups() {
        if !groups.iter().any(|(g, _, _)| *g == id) {
            groups.push((id, protocol_type, GroupState::Empty.name().to_owned()));
        }
    }
    let states: Vec<&str> = request.states_filter.iter().map(|s| s.as_str()).collect();
    ListGroupsResponse::default().with_groups(
        groups
            .into_iter()
            .filter(|(_, _, state)| {
                states.is_empty() || states.iter().any(|s| s.eq_ignore_ascii_case(state))
            })
            .map(|(id, protocol_type, state)| {
                ListedGroup::default()
                    .with_group_id(GroupId(str_bytes(&id)))
                    .with_protocol_type(str_bytes(&protocol_type))
                    .with_group_state(str_bytes(&state))
                    .with_group_type(str_bytes("classic"))
            })
            .collect(),
    )
}

pub(crate) fn describe_groups(
    shared: &Arc<Shared>,
    request: DescribeGroupsRequest,
) -> DescribeGroupsResponse {
    let all = shared.coordinator.describe_all();
    let stored = shared.offsets.groups();
    DescribeGroupsResponse::default().with_groups(
        request
            .groups
            .into_iter()
            .map(|id| {
                let described = DescribedGroup::default().with_group_id(id.clone());
                match all.iter().find(|g| g.id == id.0.as_str()) {
                    None => match stored.iter().find(|(g, _)| g == id.0.as_str()) {
                        Some((_, protocol_type)) => described
                            .with_group_state(str_bytes(GroupState::Empty.name()))
                            .with_protocol_type(str_bytes(protocol_type)),
                        None => described.with_group_state(str_bytes("Dead")),
                    },
                    Some(g) => described
                        .with_group_state(str_bytes(g.state.name()))
                        .with_protocol_type(str_bytes(&g.protocol_type))
                        .with_protocol_data(str_bytes(&g.protocol))
                        .with_members(
                            g.members
                                .iter()
                                .map(|(member_id, m)| {
                                    DescribedGroupMember::default()
                                        .with_member_id(str_bytes(member_id))
                                        .with_group_instance_id(
                                            m.group_instance_id.as_deref().map(str_bytes),
                                        )
                                        .with_client_id(str_bytes(&m.client_id))
                                        .with_client_host(str_bytes(&m.client_host))
                                        .with_member_metadata(m.metadata(&g.protocol))
                                        .with_member_assignment(m.assignment.clone())
                                })
                                .collect(),
                        ),
                }
            })
            .collect(),
    )
}
