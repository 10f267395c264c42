//! The registry's state in SQLite. Every operation is one transaction on a
//! single connection: registrations are rare and must see each other.

use std::path::Path;
use std::str::FromStr;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions};
use sqlx::Row;
use taskstream_avro::{check_compatibility, CompatibilityLevel, Schema};

use crate::RegistryApiError;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// The global level when none is configured (Confluent's default).
pub const DEFAULT_LEVEL: CompatibilityLevel = CompatibilityLevel::Backward;

/// One version of a subject.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubjectVersion {
    pub subject: String,
    pub version: i64,
    pub id: i64,
    pub schema: String,
}

/// The registry's persistent state.
#[derive(Debug, Clone)]
pub struct RegistryStore {
    pool: SqlitePool,
    /// Registrations and deletes run one at a time: each reads the
    /// subject's versions, checks, then writes, and must not interleave.
    changes: std::sync::Arc<tokio::sync::Mutex<()>>,
}

/// Parses a schema the registry is asked to store, and its identity.
fn parse(schema: &str) -> Result<(Schema, String), RegistryApiError> {
    let json: serde_json::Value =
        serde_json::from_str(schema).map_err(|e| RegistryApiError::InvalidSchema(e.to_string()))?;
    let parsed = crate::names::parse_schema(&json)?;
    // serde_json's maps are ordered by key, so this is layout-independent.
    Ok((parsed, json.to_string()))
}

fn parse_stored(schema: &str) -> Result<Schema, RegistryApiError> {
    Schema::parse_str(schema)
        .map_err(|e| RegistryApiError::InvalidSchema(format!("stored schema: {e}")))
}

impl RegistryStore {
    /// Opens (creating if needed) the registry database at `path`.
    pub async fn open(path: &Path) -> Result<Self, sqlx::Error> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(sqlx::Error::Io)?;
        }
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .busy_timeout(std::time::Duration::from_secs(5));
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options)
            .await?;
        MIGRATOR
            .run(&pool)
            .await
            .map_err(|e| sqlx::Error::Migrate(Box::new(e)))?;
        Ok(Self {
            pool,
            changes: Default::default(),
        })
    }

    /// The level for `subject`: its own, else the global one.
    pub async fn level(
        &self,
        subject: Option<&str>,
    ) -> Result<CompatibilityLevel, RegistryApiError> {
        if let Some(subject) = subject {
            if let Some(level) = self.subject_level(subject).await? {
                return Ok(level);
            }
        }
        Ok(self.subject_level("").await?.unwrap_or(DEFAULT_LEVEL))
    }

    /// The level configured for exactly `subject` ("" for global), if any.
    pub async fn subject_level(
        &self,
        subject: &str,
    ) -> Result<Option<CompatibilityLevel>, RegistryApiError> {
        let row = sqlx::query("SELECT compatibility FROM config WHERE subject = ?")
            .bind(subject)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.and_then(|r| CompatibilityLevel::from_str(r.get::<String, _>(0).as_str()).ok()))
    }

    /// Sets the level of `subject` ("" for global).
    pub async fn set_level(
        &self,
        subject: &str,
        level: CompatibilityLevel,
    ) -> Result<(), RegistryApiError> {
        sqlx::query("INSERT INTO config (subject, compatibility) VALUES (?, ?) ON CONFLICT (subject) DO UPDATE SET compatibility = excluded.compatibility")
            .bind(subject)
            .bind(level.as_str())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Removes a subject's own level; returns what it was.
    pub async fn delete_level(
        &self,
        subject: &str,
    ) -> Result<Option<CompatibilityLevel>, RegistryApiError> {
        let before = self.subject_level(subject).await?;
        sqlx::query("DELETE FROM config WHERE subject = ?")
            .bind(subject)
            .execute(&self.pool)
            .await?;
        Ok(before)
    }

    /// Live versions of `subject`, oldest first (soft-deleted ones too when asked).
    pub async fn versions(
        &self,
        subject: &str,
        include_deleted: bool,
    ) -> Result<Vec<SubjectVersion>, RegistryApiError> {
        let rows = sqlx::query(
            "SELECT v.version, v.schema_id, s.schema FROM versions v JOIN schemas s ON s.id = v.schema_id
             WHERE v.subject = ? AND (v.deleted = 0 OR ?) ORDER BY v.version",
        )
        .bind(subject)
        .bind(include_deleted)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .iter()
            .map(|r| SubjectVersion {
                subject: subject.to_owned(),
                version: r.get(0),
                id: r.get(1),
                schema: r.get(2),
            })
            .collect())
    }

    /// Subject names, sorted.
    pub async fn subjects(&self, include_deleted: bool) -> Result<Vec<String>, RegistryApiError> {
        let rows = sqlx::query(
            "SELECT DISTINCT subject FROM versions WHERE deleted = 0 OR ? ORDER BY subject",
        )
        .bind(include_deleted)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    /// The schema text with `id`.
    pub async fn schema(&self, id: i64) -> Result<Option<String>, RegistryApiError> {
        let row = sqlx::query("SELECT schema FROM schemas WHERE id = ?")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| r.get(0)))
    }

    /// Every (subject, version) using schema `id`.
    pub async fn usages(&self, id: i64) -> Result<Vec<(String, i64)>, RegistryApiError> {
        let rows = sqlx::query("SELECT subject, version FROM versions WHERE schema_id = ? AND deleted = 0 ORDER BY subject, version")
            .bind(id)
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    /// Finds `schema` among the live versions of `subject`.
    pub async fn lookup(
        &self,
        subject: &str,
        schema: &str,
    ) -> Result<SubjectVersion, RegistryApiError> {
        let (_, canonical) = parse(schema)?;
        let versions = self.versions(subject, false).await?;
        if versions.is_empty() {
            return Err(RegistryApiError::SubjectNotFound(subject.to_owned()));
        }
        for v in versions {
            if parse(&v.schema)
                .map(|(_, c)| c == canonical)
                .unwrap_or(false)
            {
                return Ok(v);
            }
        }
        Err(RegistryApiError::SchemaNotFound(String::new()))
    }

    /// Why `schema` may not follow the given earlier versions (oldest
    /// first) of `subject` under its level; empty when it may.
    pub async fn incompatibilities(
        &self,
        subject: &str,
        schema: &Schema,
        earlier: &[SubjectVersion],
        level: Option<CompatibilityLevel>,
    ) -> Result<Vec<String>, RegistryApiError> {
        let level = match level {
            Some(level) => level,
            None => self.level(Some(subject)).await?,
        };
        let parsed = earlier
            .iter()
            .map(|v| parse_stored(&v.schema))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(match check_compatibility(level, schema, &parsed) {
            Ok(()) => Vec::new(),
            Err(e) => vec![format!(
                "{} ({level}, against version {})",
                e.reason, earlier[e.against].version
            )],
        })
    }

    /// Registers `schema` under `subject`, or returns the id it already has there.
    pub async fn register(&self, subject: &str, schema: &str) -> Result<i64, RegistryApiError> {
        let (parsed, canonical) = parse(schema)?;
        let _one_at_a_time = self.changes.lock().await;
        let live = self.versions(subject, false).await?;
        for v in &live {
            if parse(&v.schema)
                .map(|(_, c)| c == canonical)
                .unwrap_or(false)
            {
                return Ok(v.id);
            }
        }
        let reasons = self
            .incompatibilities(subject, &parsed, &live, None)
            .await?;
        if !reasons.is_empty() {
            return Err(RegistryApiError::Incompatible(format!(
                "Schema being registered is incompatible with an earlier schema for subject \"{subject}\", details: [{}]",
                reasons.join("; ")
            )));
        }
        let mut tx = self.pool.begin().await?;
        let existing = sqlx::query("SELECT id FROM schemas WHERE canonical = ?")
            .bind(&canonical)
            .fetch_optional(&mut *tx)
            .await?;
        let id: i64 = match existing {
            Some(row) => row.get(0),
            None => {
                sqlx::query("INSERT INTO schemas (canonical, schema) VALUES (?, ?) RETURNING id")
                    .bind(&canonical)
                    .bind(schema)
                    .fetch_one(&mut *tx)
                    .await?
                    .get(0)
            }
        };
        let next: i64 =
            sqlx::query("SELECT COALESCE(MAX(version), 0) + 1 FROM versions WHERE subject = ?")
                .bind(subject)
                .fetch_one(&mut *tx)
                .await?
                .get(0);
        sqlx::query("INSERT INTO versions (subject, version, schema_id) VALUES (?, ?, ?)")
            .bind(subject)
            .bind(next)
            .bind(id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        tracing::info!(subject, version = next, id, "schema registered");
        Ok(id)
    }

    /// Deletes versions of `subject` (all, or one): soft by default;
    /// `permanent` removes versions that were soft-deleted before.
    pub async fn delete(
        &self,
        subject: &str,
        version: Option<i64>,
        permanent: bool,
    ) -> Result<Vec<i64>, RegistryApiError> {
        let _one_at_a_time = self.changes.lock().await;
        let all = self.versions(subject, true).await?;
        if all.is_empty() {
            return Err(RegistryApiError::SubjectNotFound(subject.to_owned()));
        }
        let live: Vec<i64> = self
            .versions(subject, false)
            .await?
            .iter()
            .map(|v| v.version)
            .collect();
        let targets: Vec<i64> = match version {
            Some(v) if all.iter().any(|x| x.version == v) => vec![v],
            Some(v) => return Err(RegistryApiError::VersionNotFound(v.to_string())),
            None if permanent => all.iter().map(|v| v.version).collect(),
            None => live.clone(),
        };
        if !permanent && targets.iter().all(|v| !live.contains(v)) {
            return Err(match version {
                Some(v) => RegistryApiError::VersionNotFound(v.to_string()),
                None => RegistryApiError::SubjectNotFound(subject.to_owned()),
            });
        }
        if permanent && targets.iter().any(|v| live.contains(v)) {
            return Err(match version {
                Some(v) => RegistryApiError::VersionNotSoftDeleted(v),
                None => RegistryApiError::NotSoftDeleted(subject.to_owned()),
            });
        }
        let mut tx = self.pool.begin().await?;
        for v in &targets {
            let sql = if permanent {
                "DELETE FROM versions WHERE subject = ? AND version = ?"
            } else {
                "UPDATE versions SET deleted = 1 WHERE subject = ? AND version = ?"
            };
            sqlx::query(sql)
                .bind(subject)
                .bind(v)
                .execute(&mut *tx)
                .await?;
        }
        if permanent && version.is_none() {
            sqlx::query("DELETE FROM config WHERE subject = ?")
                .bind(subject)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(targets)
    }

    /// Checks the database answers.
    pub async fn ping(&self) -> Result<(), RegistryApiError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }
}
