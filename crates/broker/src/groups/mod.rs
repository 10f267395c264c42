//! The group coordinator for the classic consumer-group protocol: members
//! join, the leader's assignment is relayed to everyone through SyncGroup,
//! heartbeats keep sessions alive, and committed offsets are persisted
//! ([`offsets`]). The broker never assigns partitions itself; it only
//! relays what the leader chose (range, cooperative-sticky, ...).
//!
//! Group membership lives in memory only: after a restart members rejoin
//! (their heartbeats get UNKNOWN_MEMBER_ID) while committed offsets and the
//! group's protocol type remain ([`offsets`]), so the group is still listed
//! and described, as Empty.

pub(crate) mod offsets;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use kafka_protocol::error::ResponseError;
use tokio::sync::Notify;

/// Kafka's `group.min.session.timeout.ms` and `group.max.session.timeout.ms`.
const MIN_SESSION_TIMEOUT_MS: i32 = 6_000;
const MAX_SESSION_TIMEOUT_MS: i32 = 1_800_000;
/// How often waiting joins and syncs re-check deadlines.
const RECHECK: Duration = Duration::from_millis(200);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum GroupState {
    Empty,
    PreparingRebalance,
    CompletingRebalance,
    Stable,
}

impl GroupState {
    pub fn name(self) -> &'static str {
        match self {
            Self::Empty => "Empty",
            Self::PreparingRebalance => "PreparingRebalance",
            Self::CompletingRebalance => "CompletingRebalance",
            Self::Stable => "Stable",
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct Member {
    pub client_id: String,
    pub client_host: String,
    pub session_timeout: Duration,
    rebalance_timeout: Duration,
    pub protocols: Vec<(String, Bytes)>,
    last_heartbeat: Instant,
    /// Has (re)joined during the current rebalance.
    joined: bool,
    /// The generation this member last completed a join for.
    generation: i32,
    pub assignment: Bytes,
}

impl Member {
    pub fn metadata(&self, protocol: &str) -> Bytes {
        self.protocols
            .iter()
            .find(|(name, _)| name == protocol)
            .map(|(_, m)| m.clone())
            .unwrap_or_default()
    }
}

#[derive(Debug)]
pub(crate) struct Group {
    pub state: GroupState,
    pub generation: i32,
    pub protocol_type: String,
    pub protocol: Option<String>,
    pub leader: Option<String>,
    pub members: BTreeMap<String, Member>,
    rebalance_deadline: Instant,
}

impl Group {
    fn new() -> Self {
        Self {
            state: GroupState::Empty,
            generation: 0,
            protocol_type: String::new(),
            protocol: None,
            leader: None,
            members: BTreeMap::new(),
            rebalance_deadline: Instant::now(),
        }
    }

    fn start_rebalance(&mut self, now: Instant) {
        let timeout = self
            .members
            .values()
            .map(|m| m.rebalance_timeout)
            .max()
            .unwrap_or_default();
        self.state = GroupState::PreparingRebalance;
        self.rebalance_deadline = now + timeout;
        for member in self.members.values_mut() {
            member.joined = false;
        }
    }

    /// Ends the join phase once every member rejoined or the rebalance
    /// timeout passed (dropping those that did not). Returns whether it did.
    fn maybe_complete_join(&mut self, now: Instant) -> bool {
        if self.state != GroupState::PreparingRebalance {
            return false;
        }
        let all_joined = self.members.values().all(|m| m.joined);
        if !all_joined && now < self.rebalance_deadline {
            return false;
        }
        self.members.retain(|_, m| m.joined);
        self.generation += 1;
        if self.members.is_empty() {
            self.state = GroupState::Empty;
            self.protocol = None;
            self.leader = None;
            return true;
        }
        if !self
            .leader
            .as_ref()
            .is_some_and(|l| self.members.contains_key(l))
        {
            self.leader = self.members.keys().next().cloned();
        }
        let leader = &self.members[self.leader.as_ref().expect("a leader")];
        self.protocol = leader
            .protocols
            .iter()
            .map(|(name, _)| name)
            .find(|name| {
                self.members
                    .values()
                    .all(|m| m.protocols.iter().any(|(n, _)| n == *name))
            })
            .cloned();
        self.state = GroupState::CompletingRebalance;
        let generation = self.generation;
        for member in self.members.values_mut() {
            member.joined = false;
            member.generation = generation;
            member.assignment = Bytes::new();
            member.last_heartbeat = now;
        }
        true
    }

    fn remove_member(&mut self, member_id: &str, now: Instant) {
        self.members.remove(member_id);
        if self.members.is_empty() {
            self.state = GroupState::Empty;
            self.protocol = None;
            self.leader = None;
            self.generation += 1;
        } else if self.state != GroupState::PreparingRebalance {
            self.start_rebalance(now);
        }
    }
}

/// A group as ListGroups and DescribeGroups show it.
#[derive(Debug)]
pub(crate) struct GroupSnapshot {
    pub id: String,
    pub state: GroupState,
    pub protocol_type: String,
    pub protocol: String,
    pub members: Vec<(String, Member)>,
}

/// What a JoinGroup asks.
#[derive(Debug)]
pub(crate) struct JoinRequest {
    pub group: String,
    pub member_id: String,
    pub client_id: String,
    pub client_host: String,
    pub session_timeout_ms: i32,
    pub rebalance_timeout_ms: i32,
    pub protocol_type: String,
    pub protocols: Vec<(String, Bytes)>,
}

/// What a JoinGroup answers.
#[derive(Debug, Default)]
pub(crate) struct Joined {
    pub error: i16,
    pub generation: i32,
    pub protocol_type: String,
    pub protocol: String,
    pub leader: String,
    pub member_id: String,
    /// Filled for the leader only: every member and its metadata.
    pub members: Vec<(String, Bytes)>,
}

/// Every group, in memory.
#[derive(Debug, Default)]
pub(crate) struct Coordinator {
    groups: Mutex<HashMap<String, Group>>,
    changed: Notify,
}

fn error(e: ResponseError) -> i16 {
    e.code()
}

impl Coordinator {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, Group>> {
        self.groups.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `check` under the lock until it returns `Some`, waking whenever
    /// any group changes and at least every [`RECHECK`], until `deadline`;
    /// then returns `on_timeout`.
    async fn wait_for<T>(
        &self,
        deadline: Instant,
        mut check: impl FnMut(&mut HashMap<String, Group>, Instant) -> Option<T>,
        on_timeout: impl FnOnce() -> T,
    ) -> T {
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let now = Instant::now();
            if let Some(done) = check(&mut self.lock(), now) {
                self.changed.notify_waiters();
                return done;
            }
            if now >= deadline {
                return on_timeout();
            }
            let wake = deadline.min(now + RECHECK);
            let _ = tokio::time::timeout_at(wake.into(), notified).await;
        }
    }

    pub async fn join(&self, request: JoinRequest) -> Joined {
        let now = Instant::now();
        let fail = |e: ResponseError, member_id: &str| Joined {
            error: error(e),
            generation: -1,
            member_id: member_id.to_owned(),
            ..Joined::default()
        };
        if !(MIN_SESSION_TIMEOUT_MS..=MAX_SESSION_TIMEOUT_MS).contains(&request.session_timeout_ms)
        {
            return fail(ResponseError::InvalidSessionTimeout, &request.member_id);
        }
        if request.protocol_type.is_empty() || request.protocols.is_empty() {
            return fail(ResponseError::InconsistentGroupProtocol, &request.member_id);
        }
        let member_id;
        {
            let mut groups = self.lock();
            let group = groups
                .entry(request.group.clone())
                .or_insert_with(Group::new);
            if !group.members.is_empty() {
                let shares_protocol = request.protocols.iter().any(|(name, _)| {
                    group
                        .members
                        .values()
                        .all(|m| m.protocols.iter().any(|(n, _)| n == name))
                });
                if group.protocol_type != request.protocol_type || !shares_protocol {
                    return fail(ResponseError::InconsistentGroupProtocol, &request.member_id);
                }
            }
            member_id = if request.member_id.is_empty() {
                format!("{}-{}", request.client_id, uuid::Uuid::new_v4())
            } else if group.members.contains_key(&request.member_id) {
                request.member_id.clone()
            } else {
                return fail(ResponseError::UnknownMemberId, &request.member_id);
            };
            let rebalance_timeout_ms = if request.rebalance_timeout_ms < 0 {
                request.session_timeout_ms
            } else {
                request.rebalance_timeout_ms
            };
            let previous = group.members.get(&member_id);
            let member = Member {
                client_id: request.client_id,
                client_host: request.client_host,
                session_timeout: Duration::from_millis(request.session_timeout_ms as u64),
                rebalance_timeout: Duration::from_millis(rebalance_timeout_ms as u64),
                protocols: request.protocols,
                last_heartbeat: now,
                joined: true,
                generation: previous.map_or(-1, |m| m.generation),
                assignment: previous.map(|m| m.assignment.clone()).unwrap_or_default(),
            };
            group.protocol_type = request.protocol_type;
            if group.state != GroupState::PreparingRebalance {
                group.members.insert(member_id.clone(), member);
                group.start_rebalance(now);
                group
                    .members
                    .get_mut(&member_id)
                    .expect("just added")
                    .joined = true;
            } else {
                group.members.insert(member_id.clone(), member);
                // A member joining late may extend the wait to its own timeout.
                let deadline = now + Duration::from_millis(rebalance_timeout_ms as u64);
                group.rebalance_deadline = group.rebalance_deadline.max(deadline);
            }
        }
        self.changed.notify_waiters();
        let deadline = {
            let groups = self.lock();
            groups[&request.group].rebalance_deadline + RECHECK
        };
        let group_id = request.group.clone();
        let me = member_id.clone();
        self.wait_for(
            deadline,
            |groups, now| {
                let group = groups.get_mut(&group_id)?;
                group.maybe_complete_join(now);
                let Some(member) = group.members.get(&me) else {
                    return Some(fail(ResponseError::UnknownMemberId, &me));
                };
                if group.state == GroupState::PreparingRebalance
                    || member.generation != group.generation
                {
                    return None;
                }
                let leader = group.leader.clone().unwrap_or_default();
                let protocol = group.protocol.clone().unwrap_or_default();
                let members = if leader == me {
                    group
                        .members
                        .iter()
                        .map(|(id, m)| (id.clone(), m.metadata(&protocol)))
                        .collect()
                } else {
                    Vec::new()
                };
                Some(Joined {
                    error: 0,
                    generation: group.generation,
                    protocol_type: group.protocol_type.clone(),
                    protocol,
                    leader,
                    member_id: me.clone(),
                    members,
                })
            },
            || fail(ResponseError::RebalanceInProgress, &member_id),
        )
        .await
    }

    /// SyncGroup: the leader hands in assignments; everyone gets their own.
    pub async fn sync(
        &self,
        group_id: &str,
        member_id: &str,
        generation: i32,
        assignments: Vec<(String, Bytes)>,
    ) -> (i16, Bytes, String, String) {
        let now = Instant::now();
        let session_timeout;
        {
            let mut groups = self.lock();
            let Some(group) = groups.get_mut(group_id) else {
                return (
                    error(ResponseError::UnknownMemberId),
                    Bytes::new(),
                    String::new(),
                    String::new(),
                );
            };
            let Some(member) = group.members.get_mut(member_id) else {
                return (
                    error(ResponseError::UnknownMemberId),
                    Bytes::new(),
                    String::new(),
                    String::new(),
                );
            };
            member.last_heartbeat = now;
            session_timeout = member.session_timeout;
            if generation != group.generation {
                return (
                    error(ResponseError::IllegalGeneration),
                    Bytes::new(),
                    String::new(),
                    String::new(),
                );
            }
            if group.state == GroupState::PreparingRebalance {
                return (
                    error(ResponseError::RebalanceInProgress),
                    Bytes::new(),
                    String::new(),
                    String::new(),
                );
            }
            if group.state == GroupState::CompletingRebalance
                && group.leader.as_deref() == Some(member_id)
            {
                for (id, assignment) in assignments {
                    if let Some(m) = group.members.get_mut(&id) {
                        m.assignment = assignment;
                    }
                }
                group.state = GroupState::Stable;
            }
        }
        self.changed.notify_waiters();
        let group_id = group_id.to_owned();
        let member_id = member_id.to_owned();
        self.wait_for(
            now + session_timeout,
            |groups, _| {
                let rebalancing = (
                    error(ResponseError::RebalanceInProgress),
                    Bytes::new(),
                    String::new(),
                    String::new(),
                );
                let Some(group) = groups.get(&group_id) else {
                    return Some(rebalancing);
                };
                if group.generation != generation || group.state == GroupState::PreparingRebalance {
                    return Some(rebalancing);
                }
                if group.state != GroupState::Stable {
                    return None;
                }
                let member = group.members.get(&member_id)?;
                Some((
                    0,
                    member.assignment.clone(),
                    group.protocol_type.clone(),
                    group.protocol.clone().unwrap_or_default(),
                ))
            },
            || {
                (
                    error(ResponseError::RebalanceInProgress),
                    Bytes::new(),
                    String::new(),
                    String::new(),
                )
            },
        )
        .await
    }

    pub fn heartbeat(&self, group_id: &str, member_id: &str, generation: i32) -> i16 {
        let mut groups = self.lock();
        let Some(group) = groups.get_mut(group_id) else {
            return error(ResponseError::UnknownMemberId);
        };
        let state = group.state;
        let current = group.generation;
        let Some(member) = group.members.get_mut(member_id) else {
            return error(ResponseError::UnknownMemberId);
        };
        member.last_heartbeat = Instant::now();
        if generation != current {
            return error(ResponseError::IllegalGeneration);
        }
        if state == GroupState::PreparingRebalance {
            return error(ResponseError::RebalanceInProgress);
        }
        0
    }

    /// LeaveGroup for each member id; an error code per member.
    pub fn leave(&self, group_id: &str, member_ids: &[String]) -> Vec<i16> {
        let now = Instant::now();
        let mut groups = self.lock();
        let codes = member_ids
            .iter()
            .map(|id| match groups.get_mut(group_id) {
                Some(group) if group.members.contains_key(id) => {
                    group.remove_member(id, now);
                    0
                }
                _ => error(ResponseError::UnknownMemberId),
            })
            .collect();
        drop(groups);
        self.changed.notify_waiters();
        codes
    }

    /// Whether a member may commit for `generation`: `Ok` or an error code.
    pub fn check_commit(
        &self,
        group_id: &str,
        member_id: &str,
        generation: i32,
    ) -> Result<(), i16> {
        let groups = self.lock();
        let group = groups.get(group_id);
        let has_members = group.is_some_and(|g| !g.members.is_empty());
        if generation < 0 && member_id.is_empty() {
            return if has_members {
                Err(error(ResponseError::IllegalGeneration))
            } else {
                Ok(())
            };
        }
        let Some(group) = group.filter(|g| g.members.contains_key(member_id)) else {
            return Err(error(ResponseError::UnknownMemberId));
        };
        if generation != group.generation {
            return Err(error(ResponseError::IllegalGeneration));
        }
        if group.state == GroupState::PreparingRebalance {
            return Err(error(ResponseError::RebalanceInProgress));
        }
        Ok(())
    }

    /// Drops members whose session expired and completes joins whose
    /// rebalance timeout passed. Called periodically.
    pub fn expire(&self) {
        let now = Instant::now();
        let mut changed = false;
        let mut groups = self.lock();
        for group in groups.values_mut() {
            let waiting_in_join = group.state == GroupState::PreparingRebalance;
            let expired: Vec<String> = group
                .members
                .iter()
                .filter(|(_, m)| !(waiting_in_join && m.joined))
                .filter(|(_, m)| now.duration_since(m.last_heartbeat) > m.session_timeout)
                .map(|(id, _)| id.clone())
                .collect();
            for id in expired {
                tracing::info!(member = id, "group member session expired");
                group.remove_member(&id, now);
                changed = true;
            }
            changed |= group.maybe_complete_join(now);
        }
        drop(groups);
        if changed {
            self.changed.notify_waiters();
        }
    }

    /// A snapshot of every group.
    pub fn describe_all(&self) -> Vec<GroupSnapshot> {
        self.lock()
            .iter()
            .map(|(id, g)| GroupSnapshot {
                id: id.clone(),
                state: g.state,
                protocol_type: g.protocol_type.clone(),
                protocol: g.protocol.clone().unwrap_or_default(),
                members: g
                    .members
                    .iter()
                    .map(|(i, m)| (i.clone(), m.clone()))
                    .collect(),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn join_request(group: &str, member_id: &str) -> JoinRequest {
        JoinRequest {
            group: group.to_owned(),
            member_id: member_id.to_owned(),
            client_id: "test".to_owned(),
            client_host: "/127.0.0.1".to_owned(),
            session_timeout_ms: MIN_SESSION_TIMEOUT_MS,
            rebalance_timeout_ms: 10_000,
            protocol_type: "consumer".to_owned(),
            protocols: vec![("range".to_owned(), Bytes::from_static(b"meta"))],
        }
    }

    impl Coordinator {
        /// Pretends the member's last heartbeat was `ms` ago.
        fn backdate_heartbeat(&self, group: &str, member: &str, ms: u64) {
            let mut groups = self.lock();
            let member = groups
                .get_mut(group)
                .unwrap()
                .members
                .get_mut(member)
                .unwrap();
            member.last_heartbeat = Instant::now() - Duration::from_millis(ms);
        }
    }

    #[tokio::test]
    async fn a_member_that_stops_heartbeating_is_dropped_after_its_session_timeout() {
        let coordinator = Coordinator::default();
        let joined = coordinator.join(join_request("g", "")).await;
        assert_eq!((joined.error, joined.generation), (0, 1));
        assert_eq!(joined.leader, joined.member_id);
        assert_eq!(joined.members.len(), 1, "the leader sees every member");
        let assignment = Bytes::from_static(b"all of it");
        let (code, got, _, protocol) = coordinator
            .sync(
                "g",
                &joined.member_id,
                1,
                vec![(joined.member_id.clone(), assignment.clone())],
            )
            .await;
        assert_eq!((code, got, protocol.as_str()), (0, assignment, "range"));
        assert_eq!(coordinator.heartbeat("g", &joined.member_id, 1), 0);

        // A heartbeat just inside the session keeps the member...
        coordinator.backdate_heartbeat("g", &joined.member_id, MIN_SESSION_TIMEOUT_MS as u64 - 500);
        coordinator.expire();
        assert_eq!(coordinator.heartbeat("g", &joined.member_id, 1), 0);
        // ...one just past it drops the member.
        coordinator.backdate_heartbeat("g", &joined.member_id, MIN_SESSION_TIMEOUT_MS as u64 + 1);
        coordinator.expire();
        assert_eq!(
            coordinator.heartbeat("g", &joined.member_id, 1),
            ResponseError::UnknownMemberId.code()
        );
        let snapshot = coordinator.describe_all();
        assert_eq!(snapshot[0].state, GroupState::Empty);
    }

    #[tokio::test]
    async fn a_join_with_a_too_short_session_timeout_or_an_unknown_member_id_is_refused() {
        let coordinator = Coordinator::default();
        let mut short = join_request("g", "");
        short.session_timeout_ms = 1_000;
        assert_eq!(
            coordinator.join(short).await.error,
            ResponseError::InvalidSessionTimeout.code()
        );
        let stranger = coordinator.join(join_request("g", "nobody")).await;
        assert_eq!(stranger.error, ResponseError::UnknownMemberId.code());
    }
}
