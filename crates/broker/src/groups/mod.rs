//! The group coordinator for the classic consumer-group protocol: members
//! join, the leader's assignment is relayed to everyone through SyncGroup,
//! heartbeats keep sessions alive, and committed offsets are persisted
//! ([`offsets`]). The broker never assigns partitions itself; it only
//! relays what the leader chose (range, cooperative-sticky, ...).
//!
//! Static membership (KIP-345): a member joining with a
//! `group.instance.id` keeps its place in the group while its session
//! lasts, even without heartbeats. When its process restarts and joins
//! again with the same instance id (and no member id), it takes over the
//! old member id's place: in a Stable group whose protocol would not
//! change, it is answered at once with the current generation and gets its
//! previous assignment from SyncGroup, without a rebalance of the others.
//! A request naming the instance id with an older member id is answered
//! FENCED_INSTANCE_ID (JoinGroup, SyncGroup, Heartbeat, OffsetCommit,
//! LeaveGroup), so of two live processes sharing an instance id the older
//! one is fenced. A static member that did not rejoin a rebalance stays in
//! the group until its session times out; LeaveGroup v3+ may name it by
//! instance id alone.
//!
//! A member's instance id is the one it joined with: rejoining by its
//! member id without the instance id (JoinGroup before v5) keeps it
//! static. A process that joins without an instance id and without a
//! member id is a new, dynamic member; the static member it may have been
//! keeps its place (and what the leader assigns it) until its session
//! times out or it leaves, as in Kafka. A new process with the instance
//! id takes over a member's place only while that member is in the group;
//! otherwise it joins as a new member, with a rebalance.
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
    /// The `group.instance.id` of a static member (KIP-345).
    pub group_instance_id: Option<String>,
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
    /// Static members: `group.instance.id` to its current member id.
    static_members: HashMap<String, String>,
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
            static_members: HashMap::new(),
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
        // Static members that did not rejoin keep their place until their
        // session times out (KIP-345); dynamic ones are dropped.
        let dropped: Vec<String> = self
            .members
            .iter()
            .filter(|(_, m)| !m.joined && m.group_instance_id.is_none())
            .map(|(id, _)| id.clone())
            .collect();
        for id in dropped {
            self.members.remove(&id);
        }
        if !self.members.is_empty() && !self.members.values().any(|m| m.joined) {
            // Only static members that did not rejoin: wait for one to
            // rejoin, or for their sessions to time out (as Kafka does).
            return false;
        }
        self.generation += 1;
        if self.members.is_empty() {
            self.state = GroupState::Empty;
            self.protocol = None;
            self.leader = None;
            return true;
        }
        // A leader that did not rejoin (a static member kept in the group)
        // cannot assign: a member that did takes over.
        if !self
            .leader
            .as_ref()
            .and_then(|l| self.members.get(l))
            .is_some_and(|m| m.joined)
        {
            self.leader = self
                .members
                .iter()
                .find(|(_, m)| m.joined)
                .map(|(id, _)| id.clone());
        }
        self.protocol = self.select_protocol();
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

    /// The protocol the next generation would use: the leader's most
    /// preferred one that every member supports.
    fn select_protocol(&self) -> Option<String> {
        let leader = self.members.get(self.leader.as_ref()?)?;
        leader
            .protocols
            .iter()
            .map(|(name, _)| name)
            .find(|name| {
                self.members
                    .values()
                    .all(|m| m.protocols.iter().any(|(n, _)| n == *name))
            })
            .cloned()
    }

    /// Whether a request naming `group_instance_id` and `member_id` comes
    /// from a static member replaced since by a newer one (KIP-345).
    fn fenced(&self, group_instance_id: Option<&str>, member_id: &str) -> bool {
        group_instance_id
            .and_then(|instance| self.static_members.get(instance))
            .is_some_and(|current| current != member_id)
    }

    /// Whether `member_id` is a member, and, when a request names an
    /// instance id, that instance's member.
    fn has_member(&self, group_instance_id: Option<&str>, member_id: &str) -> bool {
        self.members.contains_key(member_id)
            && group_instance_id.is_none_or(|i| self.static_members.contains_key(i))
    }

    fn remove_member(&mut self, member_id: &str, now: Instant) {
        if let Some(instance) = self
            .members
            .remove(member_id)
            .and_then(|m| m.group_instance_id)
        {
            if self.static_members.get(&instance).map(String::as_str) == Some(member_id) {
                self.static_members.remove(&instance);
            }
        }
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
    /// `group.instance.id`, for a static member.
    pub group_instance_id: Option<String>,
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
    /// Filled for the leader only: every member, its instance id and metadata.
    pub members: Vec<(String, Option<String>, Bytes)>,
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
        let instance = request.group_instance_id.clone();
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
            let rebalance_timeout_ms = if request.rebalance_timeout_ms < 0 {
                request.session_timeout_ms
            } else {
                request.rebalance_timeout_ms
            };
            let replaced = match (&instance, request.member_id.is_empty()) {
                (Some(instance), true) => group
                    .static_members
                    .get(instance)
                    .filter(|old| group.members.contains_key(*old))
                    .cloned(),
                _ => None,
            };
            member_id = if request.member_id.is_empty() {
                let prefix = instance.as_deref().unwrap_or(&request.client_id);
                format!("{prefix}-{}", uuid::Uuid::new_v4())
            } else if group.fenced(instance.as_deref(), &request.member_id) {
                return fail(ResponseError::FencedInstanceId, &request.member_id);
            } else if group.has_member(instance.as_deref(), &request.member_id) {
                request.member_id.clone()
            } else {
                return fail(ResponseError::UnknownMemberId, &request.member_id);
            };
            let previous = match &replaced {
                // A static member's new process takes over its place.
                Some(old_id) => group.members.remove(old_id),
                None => group.members.get(&member_id).cloned(),
            };
            let member = Member {
                // A member's instance id is the one it was made with: a
                // static member rejoining by member id without its
                // instance id (JoinGroup before v5) stays static, as in
                // Kafka, so that the instance id is freed when it goes.
                group_instance_id: match &previous {
                    Some(previous) => previous.group_instance_id.clone(),
                    None => instance.clone(),
                },
                client_id: request.client_id,
                client_host: request.client_host,
                session_timeout: Duration::from_millis(request.session_timeout_ms as u64),
                rebalance_timeout: Duration::from_millis(rebalance_timeout_ms as u64),
                protocols: request.protocols,
                last_heartbeat: now,
                joined: true,
                generation: previous.as_ref().map_or(-1, |m| m.generation),
                assignment: previous.map(|m| m.assignment).unwrap_or_default(),
            };
            group.protocol_type = request.protocol_type;
            if let Some(instance) = &instance {
                group
                    .static_members
                    .insert(instance.clone(), member_id.clone());
            }
            if let Some(old_id) = &replaced {
                let current_leader = group.leader.clone().unwrap_or_default();
                if group.leader.as_deref() == Some(old_id) {
                    group.leader = Some(member_id.clone());
                }
                tracing::info!(
                    group = request.group,
                    instance = instance.as_deref().unwrap_or_default(),
                    old_member = old_id,
                    member = member_id,
                    "a static member rejoined and replaced its old member id"
                );
                group.members.insert(member_id.clone(), member);
                if group.state == GroupState::Stable && group.select_protocol() == group.protocol {
                    // KIP-345: no rebalance. The member keeps its
                    // generation and assignment (SyncGroup returns it).
                    // The answer names the leader as it was, so that a
                    // rejoining leader does not compute an assignment a
                    // Stable group would not hand out.
                    group
                        .members
                        .get_mut(&member_id)
                        .expect("just added")
                        .joined = false;
                    let joined = Joined {
                        error: 0,
                        generation: group.generation,
                        protocol_type: group.protocol_type.clone(),
                        protocol: group.protocol.clone().unwrap_or_default(),
                        leader: current_leader,
                        member_id: member_id.clone(),
                        members: Vec::new(),
                    };
                    drop(groups);
                    // Wakes the old process's pending join or sync, fenced.
                    self.changed.notify_waiters();
                    return joined;
                }
            } else {
                group.members.insert(member_id.clone(), member);
            }
            if group.state != GroupState::PreparingRebalance {
                group.start_rebalance(now);
                group
                    .members
                    .get_mut(&member_id)
                    .expect("just added")
                    .joined = true;
            } else {
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
                if group.fenced(instance.as_deref(), &me) {
                    return Some(fail(ResponseError::FencedInstanceId, &me));
                }
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
                        .map(|(id, m)| {
                            (
                                id.clone(),
                                m.group_instance_id.clone(),
                                m.metadata(&protocol),
                            )
                        })
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
        group_instance_id: Option<&str>,
        generation: i32,
        assignments: Vec<(String, Bytes)>,
    ) -> (i16, Bytes, String, String) {
        let now = Instant::now();
        let session_timeout;
        let fenced = || {
            (
                error(ResponseError::FencedInstanceId),
                Bytes::new(),
                String::new(),
                String::new(),
            )
        };
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
            if group.fenced(group_instance_id, member_id) {
                return fenced();
            }
            let known = group.has_member(group_instance_id, member_id);
            let Some(member) = group.members.get_mut(member_id).filter(|_| known) else {
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
        let instance = group_instance_id.map(str::to_owned);
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
                if group.fenced(instance.as_deref(), &member_id) {
                    return Some(fenced());
                }
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

    pub fn heartbeat(
        &self,
        group_id: &str,
        member_id: &str,
        group_instance_id: Option<&str>,
        generation: i32,
    ) -> i16 {
        let mut groups = self.lock();
        let Some(group) = groups.get_mut(group_id) else {
            return error(ResponseError::UnknownMemberId);
        };
        if group.fenced(group_instance_id, member_id) {
            return error(ResponseError::FencedInstanceId);
        }
        let state = group.state;
        let current = group.generation;
        let known = group.has_member(group_instance_id, member_id);
        let Some(member) = group.members.get_mut(member_id).filter(|_| known) else {
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

    /// LeaveGroup for each `(member id, group instance id)`; an error code
    /// per member. A static member may be named by its instance id alone
    /// (an empty member id); naming it with an older member id is fenced.
    pub fn leave(&self, group_id: &str, members: &[(String, Option<String>)]) -> Vec<i16> {
        let now = Instant::now();
        let mut groups = self.lock();
        let codes = members
            .iter()
            .map(|(id, instance)| {
                let Some(group) = groups.get_mut(group_id) else {
                    return error(ResponseError::UnknownMemberId);
                };
                let id = match instance {
                    None => id.clone(),
                    Some(instance) => match group.static_members.get(instance) {
                        None => return error(ResponseError::UnknownMemberId),
                        Some(current) if !id.is_empty() && current != id => {
                            return error(ResponseError::FencedInstanceId)
                        }
                        Some(current) => current.clone(),
                    },
                };
                if !group.members.contains_key(&id) {
                    return error(ResponseError::UnknownMemberId);
                }
                group.remove_member(&id, now);
                0
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
        group_instance_id: Option<&str>,
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
        if group.is_some_and(|g| g.fenced(group_instance_id, member_id)) {
            return Err(error(ResponseError::FencedInstanceId));
        }
        let Some(group) = group.filter(|g| g.has_member(group_instance_id, member_id)) else {
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
            group_instance_id: None,
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
                None,
                1,
                vec![(joined.member_id.clone(), assignment.clone())],
            )
            .await;
        assert_eq!((code, got, protocol.as_str()), (0, assignment, "range"));
        assert_eq!(coordinator.heartbeat("g", &joined.member_id, None, 1), 0);

        // A heartbeat just inside the session keeps the member...
        coordinator.backdate_heartbeat("g", &joined.member_id, MIN_SESSION_TIMEOUT_MS as u64 - 500);
        coordinator.expire();
        assert_eq!(coordinator.heartbeat("g", &joined.member_id, None, 1), 0);
        // ...one just past it drops the member.
        coordinator.backdate_heartbeat("g", &joined.member_id, MIN_SESSION_TIMEOUT_MS as u64 + 1);
        coordinator.expire();
        assert_eq!(
            coordinator.heartbeat("g", &joined.member_id, None, 1),
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

    fn static_join(group: &str, member_id: &str, instance: &str) -> JoinRequest {
        JoinRequest {
            group_instance_id: Some(instance.to_owned()),
            ..join_request(group, member_id)
        }
    }

    /// A static member `instance` alone in group `g`, synced with `assignment`.
    async fn stable_static_member(
        coordinator: &Coordinator,
        instance: &str,
        assignment: &Bytes,
    ) -> String {
        let joined = coordinator.join(static_join("g", "", instance)).await;
        assert_eq!((joined.error, joined.generation), (0, 1));
        assert!(
            joined.member_id.starts_with(instance),
            "{}",
            joined.member_id
        );
        let member = joined.member_id;
        let (code, got, _, _) = coordinator
            .sync(
                "g",
                &member,
                Some(instance),
                1,
                vec![(member.clone(), assignment.clone())],
            )
            .await;
        assert_eq!((code, &got), (0, assignment));
        member
    }

    #[tokio::test]
    async fn a_static_member_that_rejoins_gets_its_assignment_back_and_its_old_member_id_is_fenced()
    {
        let coordinator = Coordinator::default();
        let assignment = Bytes::from_static(b"p0 and p1");
        let old = stable_static_member(&coordinator, "i", &assignment).await;

        // The restarted process joins with the instance id and no member id.
        let rejoined = coordinator.join(static_join("g", "", "i")).await;
        assert_eq!(rejoined.error, 0);
        assert_eq!(rejoined.generation, 1, "no rebalance: the same generation");
        assert_ne!(rejoined.member_id, old, "a new member id");
        assert_eq!(
            rejoined.leader, old,
            "the leader as it was, so it does not assign"
        );
        assert!(rejoined.members.is_empty());
        let new = rejoined.member_id;
        let (code, got, _, protocol) = coordinator.sync("g", &new, Some("i"), 1, Vec::new()).await;
        assert_eq!((code, got, protocol.as_str()), (0, assignment, "range"));
        assert_eq!(coordinator.heartbeat("g", &new, Some("i"), 1), 0);
        let snapshot = coordinator.describe_all();
        assert_eq!(snapshot[0].state, GroupState::Stable);
        assert_eq!(snapshot[0].members.len(), 1);
        assert_eq!(
            snapshot[0].members[0].1.group_instance_id.as_deref(),
            Some("i")
        );

        // The old process is fenced wherever it names the instance id.
        let fenced = ResponseError::FencedInstanceId.code();
        assert_eq!(coordinator.heartbeat("g", &old, Some("i"), 1), fenced);
        assert_eq!(
            coordinator
                .sync("g", &old, Some("i"), 1, Vec::new())
                .await
                .0,
            fenced
        );
        assert_eq!(
            coordinator.check_commit("g", &old, Some("i"), 1),
            Err(fenced)
        );
        assert_eq!(
            coordinator.join(static_join("g", &old, "i")).await.error,
            fenced
        );
        assert_eq!(
            coordinator.leave("g", &[(old.clone(), Some("i".into()))]),
            [fenced]
        );
        // Without the instance id, the old member id is simply unknown.
        assert_eq!(
            coordinator.heartbeat("g", &old, None, 1),
            ResponseError::UnknownMemberId.code()
        );
        assert_eq!(coordinator.describe_all()[0].state, GroupState::Stable);
    }

    #[tokio::test]
    async fn a_static_member_leaves_by_instance_id_alone() {
        let coordinator = Coordinator::default();
        stable_static_member(&coordinator, "i", &Bytes::from_static(b"a")).await;
        assert_eq!(
            coordinator.leave("g", &[(String::new(), Some("other".into()))]),
            [ResponseError::UnknownMemberId.code()]
        );
        assert_eq!(
            coordinator.leave("g", &[(String::new(), Some("i".into()))]),
            [0]
        );
        let snapshot = coordinator.describe_all();
        assert_eq!(snapshot[0].state, GroupState::Empty);
        // The instance id is free again: a join makes a new member and generation.
        let joined = coordinator.join(static_join("g", "", "i")).await;
        assert_eq!((joined.error, joined.generation), (0, 3));
        assert_eq!(joined.leader, joined.member_id);
    }

    #[tokio::test]
    async fn a_static_member_that_misses_a_rebalance_keeps_its_place_until_its_session_times_out() {
        let coordinator = Coordinator::default();
        let mut first = static_join("g", "", "i");
        first.rebalance_timeout_ms = 100;
        let joined = coordinator.join(first).await;
        let absent = joined.member_id;
        coordinator
            .sync(
                "g",
                &absent,
                Some("i"),
                1,
                vec![(absent.clone(), Bytes::from_static(b"a"))],
            )
            .await;

        // A dynamic member joins; the static one never rejoins the
        // rebalance, which completes at its timeout with both members.
        let mut second = join_request("g", "");
        second.rebalance_timeout_ms = 100;
        let joined = coordinator.join(second).await;
        assert_eq!((joined.error, joined.generation), (0, 2));
        assert_eq!(
            joined.leader, joined.member_id,
            "a member that rejoined leads"
        );
        let ids: Vec<&str> = joined
            .members
            .iter()
            .map(|(id, _, _)| id.as_str())
            .collect();
        assert!(
            ids.contains(&absent.as_str()),
            "the static member kept its place: {ids:?}"
        );
        let instances: Vec<Option<&str>> = joined
            .members
            .iter()
            .map(|(_, i, _)| i.as_deref())
            .collect();
        assert!(instances.contains(&Some("i")), "{instances:?}");

        // Its session runs out: it is dropped, and the group rebalances.
        coordinator.backdate_heartbeat("g", &absent, MIN_SESSION_TIMEOUT_MS as u64 + 1);
        coordinator.expire();
        let snapshot = coordinator.describe_all();
        assert_eq!(snapshot[0].members.len(), 1);
        assert_eq!(snapshot[0].state, GroupState::PreparingRebalance);
        assert_eq!(
            coordinator.heartbeat("g", &absent, Some("i"), 2),
            ResponseError::UnknownMemberId.code()
        );
        // The live member rejoins: the leader now assigns to it alone.
        let live = joined.member_id;
        assert_eq!(
            coordinator.heartbeat("g", &live, None, 2),
            ResponseError::RebalanceInProgress.code()
        );
        let rejoined = coordinator.join(join_request("g", &live)).await;
        assert_eq!((rejoined.error, rejoined.generation), (0, 3));
        assert_eq!(rejoined.leader, live);
        let ids: Vec<&str> = rejoined
            .members
            .iter()
            .map(|(id, _, _)| id.as_str())
            .collect();
        assert_eq!(ids, [live.as_str()]);
    }

    #[tokio::test]
    async fn a_static_member_that_rejoined_without_its_instance_id_and_left_frees_the_instance_id()
    {
        let coordinator = Coordinator::default();
        let s = stable_static_member(&coordinator, "i", &Bytes::from_static(b"p0 p1")).await;

        // A dynamic member joins; the static one rejoins the rebalance by
        // its member id, without its instance id (JoinGroup before v5).
        let (d, s_again) = tokio::join!(
            coordinator.join(join_request("g", "")),
            coordinator.join(join_request("g", &s))
        );
        assert_eq!((d.error, d.generation), (0, 2));
        assert_eq!((s_again.error, s_again.generation), (0, 2));
        assert_eq!(s_again.leader, s);
        let d = d.member_id;
        let assign = vec![
            (s.clone(), Bytes::from_static(b"p0")),
            (d.clone(), Bytes::from_static(b"p1")),
        ];
        let (s_synced, d_synced) = tokio::join!(
            coordinator.sync("g", &s, None, 2, assign),
            coordinator.sync("g", &d, None, 2, Vec::new())
        );
        assert_eq!((s_synced.0, s_synced.1), (0, Bytes::from_static(b"p0")));
        assert_eq!((d_synced.0, d_synced.1), (0, Bytes::from_static(b"p1")));

        // It leaves by member id alone (LeaveGroup before v3); the other
        // member takes every partition.
        assert_eq!(coordinator.leave("g", &[(s.clone(), None)]), [0]);
        let d_alone = coordinator.join(join_request("g", &d)).await;
        assert_eq!((d_alone.error, d_alone.generation), (0, 3));
        let (code, _, _, _) = coordinator
            .sync(
                "g",
                &d,
                None,
                3,
                vec![(d.clone(), Bytes::from_static(b"p0 p1"))],
            )
            .await;
        assert_eq!(code, 0);

        // A new process with the instance id joins: a new member, so the
        // group rebalances; the other member learns it from its heartbeat,
        // as a client does, and rejoins.
        let (joined, d_rejoined) =
            tokio::join!(coordinator.join(static_join("g", "", "i")), async {
                let code = coordinator.heartbeat("g", &d, None, 3);
                if code == ResponseError::RebalanceInProgress.code() {
                    Some(coordinator.join(join_request("g", &d)).await)
                } else {
                    None
                }
            });
        assert_eq!(joined.error, 0);
        let new = joined.member_id;
        let (new_synced, d_synced) = match d_rejoined {
            Some(d_rejoined) => {
                assert_eq!((d_rejoined.error, d_rejoined.generation), (0, 4));
                assert_eq!(d_rejoined.leader, d);
                let mut members: Vec<(&str, Option<&str>)> = d_rejoined
                    .members
                    .iter()
                    .map(|(id, i, _)| (id.as_str(), i.as_deref()))
                    .collect();
                members.sort();
                let mut expected = vec![(d.as_str(), None), (new.as_str(), Some("i"))];
                expected.sort();
                assert_eq!(members, expected, "the live members only");
                let assign = vec![
                    (new.clone(), Bytes::from_static(b"p0")),
                    (d.clone(), Bytes::from_static(b"p1")),
                ];
                let (new_synced, d_synced) = tokio::join!(
                    coordinator.sync("g", &new, Some("i"), joined.generation, Vec::new()),
                    coordinator.sync("g", &d, None, 4, assign)
                );
                (new_synced, Some(d_synced))
            }
            None => (
                coordinator
                    .sync("g", &new, Some("i"), joined.generation, Vec::new())
                    .await,
                None,
            ),
        };
        assert_eq!(
            (new_synced.0, new_synced.1),
            (0, Bytes::from_static(b"p0")),
            "the new member's assignment"
        );
        let d_synced = d_synced.expect("the group rebalanced");
        assert_eq!((d_synced.0, d_synced.1), (0, Bytes::from_static(b"p1")));
    }

    #[tokio::test]
    async fn a_static_member_that_rejoins_without_its_instance_id_stays_static() {
        let coordinator = Coordinator::default();
        let s = stable_static_member(&coordinator, "i", &Bytes::from_static(b"a")).await;
        let again = coordinator.join(join_request("g", &s)).await;
        assert_eq!((again.error, again.generation), (0, 2));
        assert_eq!(
            again.members,
            [(s.clone(), Some("i".to_owned()), Bytes::from_static(b"meta"))]
        );
        let snapshot = coordinator.describe_all();
        assert_eq!(
            snapshot[0].members[0].1.group_instance_id.as_deref(),
            Some("i")
        );
        // Still named by its instance id: LeaveGroup v3+ finds it.
        assert_eq!(
            coordinator.leave("g", &[(String::new(), Some("i".into()))]),
            [0]
        );
        assert_eq!(coordinator.describe_all()[0].state, GroupState::Empty);
    }
}
