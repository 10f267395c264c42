//! [`crate::SuggestionStore`], written once for both backends, like
//! [`crate::consumer_stores`]: the backend module supplies `id` and `at`
//! (how it binds a UUID and a time), `enqueue` (how it inserts an outbox
//! row inside a transaction) and `mark_processed` (from `consumer_stores!`).

/// Implements `SuggestionStore` for `$store` (a store over database `$db`),
/// writing through the pool in field `$writer` and reading through `$reader`.
macro_rules! suggestion_store {
    ($store:ty, $db:ty, writer = $writer:ident, reader = $reader:ident) => {
        /// Marks suggestion `suggestion` resolved as `status` if it is
        /// pending; [`$crate::StoreError::SuggestionNotPending`] otherwise.
        async fn resolve(
            conn: &mut <$db as sqlx::Database>::Connection,
            suggestion: uuid::Uuid,
            status: $crate::SuggestionStatus,
            when: &chrono::DateTime<chrono::Utc>,
        ) -> Result<(), $crate::StoreError> {
            let done = sqlx::query(
                "UPDATE suggestions SET status = $1, resolved_at = $2 WHERE id = $3 AND status = 'pending'",
            )
            .bind(status.as_str())
            .bind(at(when))
            .bind(id(suggestion))
            .execute(conn)
            .await?;
            if done.rows_affected() == 1 {
                Ok(())
            } else {
                Err($crate::StoreError::SuggestionNotPending {
                    id: suggestion.to_string(),
                })
            }
        }

        #[async_trait::async_trait]
        impl $crate::SuggestionStore for $store {
            async fn record_suggestion(
                &self,
                group: &str,
                s: &$crate::SuggestionRecord,
                event: &$crate::OutboxMessage,
            ) -> Result<bool, $crate::StoreError> {
                let mut tx = self.$writer.begin().await?;
                if !mark_processed(&mut tx, group, s.event_id).await? {
                    return Ok(false);
                }
                let inserted = sqlx::query(
                    "INSERT INTO suggestions (id, event_id, task_id, task_version, priority, assignee, due_at,
                        confidence, model, rationale, status, created_at, resolved_at)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)
                     ON CONFLICT DO NOTHING",
                )
                .bind(id(s.id))
                .bind(id(s.event_id))
                .bind(&s.task_id)
                .bind(s.task_version)
                .bind(&s.priority)
                .bind(&s.assignee)
                .bind(s.due_at.as_ref().map(at))
                .bind(i64::from(s.confidence))
                .bind(&s.model)
                .bind(&s.rationale)
                .bind(s.status.as_str())
                .bind(at(&s.created_at))
                .bind(s.resolved_at.as_ref().map(at))
                .execute(&mut *tx)
                .await?;
                if inserted.rows_affected() == 1 {
                    enqueue(&mut tx, event).await?;
                }
                tx.commit().await?;
                Ok(inserted.rows_affected() == 1)
            }

            async fn suggestion(
                &self,
                suggestion: uuid::Uuid,
            ) -> Result<Option<$crate::SuggestionRecord>, $crate::StoreError> {
                let row = sqlx::query("SELECT * FROM suggestions WHERE id = $1")
                    .bind(id(suggestion))
                    .fetch_optional(&self.$reader)
                    .await?;
                row.as_ref().map($crate::rows::suggestion).transpose()
            }

            async fn suggestions(
                &self,
                task_id: &str,
            ) -> Result<Vec<$crate::SuggestionRecord>, $crate::StoreError> {
                let rows = sqlx::query(
                    "SELECT * FROM suggestions WHERE task_id = $1 ORDER BY created_at, id",
                )
                .bind(task_id)
                .fetch_all(&self.$reader)
                .await?;
                rows.iter().map($crate::rows::suggestion).collect()
            }

            async fn accept_suggestion(
                &self,
                suggestion: uuid::Uuid,
                change: Option<(&taskstream_domain::Task, i64, &$crate::OutboxMessage)>,
                when: chrono::DateTime<chrono::Utc>,
            ) -> Result<(), $crate::StoreError> {
                let mut tx = self.$writer.begin().await?;
                resolve(&mut tx, suggestion, $crate::SuggestionStatus::Accepted, &when).await?;
                if let Some((task, expected_version, event)) = change {
                    let updated = sqlx::query($crate::sql::UPDATE_TASK)
                        .bind(task.title.as_str())
                        .bind(task.description.as_ref().map(|d| d.as_str()))
                        .bind(task.priority.as_str())
                        .bind(task.status.as_str())
                        .bind(task.due_at.as_ref().map(at))
                        .bind(task.assignee.as_ref().map(|a| a.as_str()))
                        .bind(task.version)
                        .bind(at(&task.updated_at))
                        .bind(task.completed_at.as_ref().map(at))
                        .bind(id(task.id.as_uuid()))
                        .bind(expected_version)
                        .execute(&mut *tx)
                        .await?;
                    if updated.rows_affected() != 1 {
                        return Err($crate::StoreError::VersionConflict {
                            task_id: task.id.to_string(),
                            expected: expected_version,
                        });
                    }
                    enqueue(&mut tx, event).await?;
                }
                tx.commit().await?;
                Ok(())
            }

            async fn reject_suggestion(
                &self,
                suggestion: uuid::Uuid,
                when: chrono::DateTime<chrono::Utc>,
            ) -> Result<(), $crate::StoreError> {
                let mut tx = self.$writer.begin().await?;
                resolve(&mut tx, suggestion, $crate::SuggestionStatus::Rejected, &when).await?;
                tx.commit().await?;
                Ok(())
            }
        }
    };
}

pub(crate) use suggestion_store;
