//! [`crate::InboxStore`], [`crate::AuditStore`] and
//! [`crate::NotificationStore`], written once for both backends.
//!
//! Their transactions are the same on SQLite and PostgreSQL: each consumer's
//! effect (the audit entry, the notifications sent) is written together
//! with the "processed" mark of the group it runs in, and an insert does
//! nothing on a repeated event id. Only the binding
//! of ids and times differs, so the implementations are generated for each
//! backend by [`consumer_stores!`], which calls the backend module's `id`
//! and `at` (how that backend binds a UUID and a time).

/// Implements `InboxStore`, `AuditStore` and `NotificationStore` for `$store` (a store
/// over database `$db`), writing through the pool in field `$writer` and
/// reading through the one in `$reader`.
macro_rules! consumer_stores {
    ($store:ty, $db:ty, writer = $writer:ident, reader = $reader:ident) => {
        /// Marks `event_id` processed by `group`; `false` if it already was.
        async fn mark_processed(
            conn: &mut <$db as sqlx::Database>::Connection,
            group: &str,
            event_id: uuid::Uuid,
        ) -> Result<bool, $crate::StoreError> {
            let marked = sqlx::query($crate::sql::MARK_PROCESSED)
                .bind(group)
                .bind(id(event_id))
                .bind(at(&taskstream_domain::now()))
                .execute(conn)
                .await?;
            Ok(marked.rows_affected() == 1)
        }

        /// Appends one audit entry, unless the event is already recorded,
        /// and marks it processed by `group`; whether the entry is new.
        async fn append_entry(
            conn: &mut <$db as sqlx::Database>::Connection,
            group: &str,
            e: &$crate::AuditEntry,
        ) -> Result<bool, $crate::StoreError> {
            mark_processed(&mut *conn, group, e.event_id).await?;
            let done = sqlx::query($crate::sql::INSERT_AUDIT_ENTRY)
                .bind(id(e.event_id))
                .bind(&e.event_type)
                .bind(&e.task_id)
                .bind(e.task_version)
                .bind(at(&e.event_time))
                .bind(&e.correlation_id)
                .bind(&e.topic)
                .bind(e.partition)
                .bind(e.offset)
                .bind(at(&e.recorded_at))
                .bind(&e.envelope)
                .execute(conn)
                .await?;
            Ok(done.rows_affected() == 1)
        }

        /// Marks `event_id` processed by `consumer` and stores its
        /// notifications; `false` (writing nothing) if it was processed already.
        async fn record_event(
            conn: &mut <$db as sqlx::Database>::Connection,
            consumer: &str,
            event_id: uuid::Uuid,
            sent: &[$crate::NotificationRecord],
        ) -> Result<bool, $crate::StoreError> {
            if !mark_processed(&mut *conn, consumer, event_id).await? {
                return Ok(false);
            }
            for n in sent {
                sqlx::query($crate::sql::INSERT_NOTIFICATION)
                    .bind(id(n.id))
                    .bind(id(n.event_id))
                    .bind(&n.event_type)
                    .bind(&n.task_id)
                    .bind(&n.kind)
                    .bind(&n.recipient)
                    .bind(&n.message)
                    .bind(&n.channel)
                    .bind(at(&n.sent_at))
                    .execute(&mut *conn)
                    .await?;
            }
            Ok(true)
        }

        #[async_trait::async_trait]
        impl $crate::InboxStore for $store {
            async fn is_processed(
                &self,
                group: &str,
                event_id: uuid::Uuid,
            ) -> Result<bool, $crate::StoreError> {
                // Possibly a read connection: a commit racing this check is
                // caught by the primary key when the event is recorded.
                let row = sqlx::query($crate::sql::IS_PROCESSED)
                    .bind(group)
                    .bind(id(event_id))
                    .fetch_optional(&self.$reader)
                    .await?;
                Ok(row.is_some())
            }

            async fn processed_among(
                &self,
                group: &str,
                event_ids: &[uuid::Uuid],
            ) -> Result<std::collections::HashSet<uuid::Uuid>, $crate::StoreError> {
                let mut processed = std::collections::HashSet::new();
                // Well within both databases' limits on bound parameters.
                for chunk in event_ids.chunks(1000) {
                    let mut sql = sqlx::QueryBuilder::<$db>::new(
                        "SELECT event_id, processed_at FROM processed_events WHERE consumer = ",
                    );
                    sql.push_bind(group).push(" AND event_id IN (");
                    let mut ids = sql.separated(", ");
                    for event_id in chunk {
                        ids.push_bind(id(*event_id));
                    }
                    sql.push(")");
                    let rows = sql.build().fetch_all(&self.$reader).await?;
                    for row in &rows {
                        processed.insert($crate::rows::processed_time(row)?.0);
                    }
                }
                Ok(processed)
            }
        }

        #[async_trait::async_trait]
        impl $crate::AuditStore for $store {
            async fn append(
                &self,
                group: &str,
                e: &$crate::AuditEntry,
            ) -> Result<bool, $crate::StoreError> {
                let mut tx = self.$writer.begin().await?;
                let fresh = append_entry(&mut tx, group, e).await?;
                tx.commit().await?;
                Ok(fresh)
            }

            async fn append_batch(
                &self,
                group: &str,
                entries: &[$crate::AuditEntry],
            ) -> Result<Vec<bool>, $crate::StoreError> {
                let mut tx = self.$writer.begin().await?;
                let mut fresh = Vec::with_capacity(entries.len());
                for e in entries {
                    fresh.push(append_entry(&mut tx, group, e).await?);
                }
                tx.commit().await?;
                Ok(fresh)
            }

            async fn audit_entries(
                &self,
                task_id: Option<&str>,
                limit: u32,
            ) -> Result<Vec<$crate::AuditEntry>, $crate::StoreError> {
                let mut sql = sqlx::QueryBuilder::<$db>::new("SELECT * FROM audit_log");
                if let Some(task_id) = task_id {
                    sql.push(" WHERE task_id = ").push_bind(task_id);
                }
                sql.push(" ORDER BY seq LIMIT ").push_bind(i64::from(limit));
                let rows = sql.build().fetch_all(&self.$reader).await?;
                rows.iter().map($crate::rows::audit_entry).collect()
            }
        }

        #[async_trait::async_trait]
        impl $crate::NotificationStore for $store {
            async fn record_notifications(
                &self,
                consumer: &str,
                event_id: uuid::Uuid,
                sent: &[$crate::NotificationRecord],
            ) -> Result<bool, $crate::StoreError> {
                let mut tx = self.$writer.begin().await?;
                let fresh = record_event(&mut tx, consumer, event_id, sent).await?;
                tx.commit().await?;
                Ok(fresh)
            }

            async fn record_notifications_batch(
                &self,
                consumer: &str,
                events: &[(uuid::Uuid, Vec<$crate::NotificationRecord>)],
            ) -> Result<Vec<bool>, $crate::StoreError> {
                let mut tx = self.$writer.begin().await?;
                let mut fresh = Vec::with_capacity(events.len());
                for (event_id, sent) in events {
                    fresh.push(record_event(&mut tx, consumer, *event_id, sent).await?);
                }
                tx.commit().await?;
                Ok(fresh)
            }

            async fn notifications(
                &self,
                task_id: Option<&str>,
                limit: u32,
            ) -> Result<Vec<$crate::NotificationRecord>, $crate::StoreError> {
                let mut sql = sqlx::QueryBuilder::<$db>::new("SELECT * FROM notifications");
                if let Some(task_id) = task_id {
                    sql.push(" WHERE task_id = ").push_bind(task_id);
                }
                sql.push(" ORDER BY seq LIMIT ").push_bind(i64::from(limit));
                let rows = sql.build().fetch_all(&self.$reader).await?;
                rows.iter().map($crate::rows::notification).collect()
            }
        }
    };
}

pub(crate) use consumer_stores;
