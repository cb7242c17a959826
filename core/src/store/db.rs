//! The metadata database: SQLite in WAL mode, schema migrations by `user_version` (STORE-7).

use std::path::Path;
use std::time::Duration;

use rusqlite::types::{FromSql, FromSqlError, FromSqlResult, ToSql, ToSqlOutput, ValueRef};
use rusqlite::{Connection, Row, TransactionBehavior};

use super::{BlobRecord, ImageRecord};
use crate::{Digest, Error, Result};

/// How long a statement waits for another connection's write lock before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(60);

/// Schema migrations; `MIGRATIONS[n]` takes the database from version `n` to `n + 1`.
const MIGRATIONS: &[&str] = &[
    // Version 1.
    "CREATE TABLE blobs (
        digest     TEXT PRIMARY KEY NOT NULL,
        size       INTEGER NOT NULL,
        media_type TEXT NOT NULL,
        source     TEXT,
        created    INTEGER NOT NULL,
        last_used  INTEGER NOT NULL
    );
    CREATE TABLE images (
        name       TEXT NOT NULL,
        tag        TEXT,
        digest     TEXT NOT NULL,
        media_type TEXT NOT NULL,
        size       INTEGER NOT NULL,
        created    TEXT,
        platform   TEXT,
        updated    INTEGER NOT NULL
    );
    CREATE UNIQUE INDEX images_by_tag ON images (name, tag) WHERE tag IS NOT NULL;
    CREATE UNIQUE INDEX images_by_digest ON images (name, digest) WHERE tag IS NULL;
    CREATE TABLE roots (
        kind   TEXT NOT NULL,
        key    TEXT NOT NULL,
        digest TEXT NOT NULL,
        PRIMARY KEY (kind, key, digest)
    );",
];

/// The schema version this build writes.
pub(super) const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// Columns of `images`, in the order [`image_row`] reads them.
pub(super) const IMAGE_COLUMNS: &str =
    "name, tag, digest, media_type, size, created, platform, updated";
/// Columns of `blobs`, in the order [`blob_row`] reads them.
pub(super) const BLOB_COLUMNS: &str = "digest, size, media_type, source, created, last_used";

/// Opens the database at `path`, creating it and migrating its schema as needed.
pub(super) fn open(path: &Path) -> Result<Connection> {
    let err = |source| Error::Database {
        path: path.to_path_buf(),
        source,
    };
    let mut conn = Connection::open(path).map_err(err)?;
    conn.busy_timeout(BUSY_TIMEOUT).map_err(err)?;
    conn.pragma_update(None, "journal_mode", "WAL")
        .map_err(err)?;
    // FULL: a committed name or root survives power loss, so GC never sees it vanish.
    conn.pragma_update(None, "synchronous", "FULL")
        .map_err(err)?;
    migrate(&mut conn, path)?;
    Ok(conn)
}

fn user_version(conn: &Connection) -> rusqlite::Result<i64> {
    conn.query_row("PRAGMA user_version", [], |r| r.get(0))
}

fn migrate(conn: &mut Connection, path: &Path) -> Result<()> {
    let err = |source| Error::Database {
        path: path.to_path_buf(),
        source,
    };
    let too_new = |found| Error::StoreVersion {
        path: path.to_path_buf(),
        found,
        supported: SCHEMA_VERSION,
    };
    let version = user_version(conn).map_err(err)?;
    if version == SCHEMA_VERSION {
        return Ok(());
    }
    if version > SCHEMA_VERSION {
        return Err(too_new(version));
    }
    // IMMEDIATE takes the write lock first, so two processes opening a new store migrate once.
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(err)?;
    let version = user_version(&tx).map_err(err)?;
    if version > SCHEMA_VERSION {
        return Err(too_new(version));
    }
    for sql in &MIGRATIONS[version as usize..] {
        tx.execute_batch(sql).map_err(err)?;
    }
    tx.pragma_update(None, "user_version", SCHEMA_VERSION)
        .map_err(err)?;
    tx.commit().map_err(err)
}

impl ToSql for Digest {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::from(self.to_string()))
    }
}

impl FromSql for Digest {
    fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
        Digest::parse(value.as_str()?).map_err(|e| FromSqlError::Other(Box::new(e)))
    }
}

/// Reads an [`ImageRecord`] from a row selected with [`IMAGE_COLUMNS`].
pub(super) fn image_row(r: &Row<'_>) -> rusqlite::Result<ImageRecord> {
    Ok(ImageRecord {
        name: r.get(0)?,
        tag: r.get(1)?,
        digest: r.get(2)?,
        media_type: r.get(3)?,
        size: r.get(4)?,
        created: r.get(5)?,
        platform: r.get(6)?,
        updated: r.get(7)?,
    })
}

/// Reads a [`BlobRecord`] from a row selected with [`BLOB_COLUMNS`].
pub(super) fn blob_row(r: &Row<'_>) -> rusqlite::Result<BlobRecord> {
    Ok(BlobRecord {
        digest: r.get(0)?,
        size: r.get(1)?,
        media_type: r.get(2)?,
        source: r.get(3)?,
        created: r.get(4)?,
        last_used: r.get(5)?,
    })
}
