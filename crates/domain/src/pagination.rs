//! Cursor pagination. The cursor is the id of the previous page's last row. Lists are in id
//! order (ids are UUIDv7, so the order is creation order and stable: rows inserted while a
//! client pages appear after the cursor, never skipped or repeated), except the audit trail,
//! which is in chain order and goes on after the cursor's entry (`audit::list`).

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use uuid::Uuid;

use crate::error::InvalidValue;

pub const DEFAULT_LIMIT: u64 = 50;
pub const MAX_LIMIT: u64 = 200;

/// A validated page request.
#[derive(Clone, Copy, Debug)]
pub struct PageRequest {
    pub limit: u64,
    /// The last id of the previous page: the page starts after that row.
    pub after: Option<Uuid>,
}

impl PageRequest {
    pub fn first(limit: u64) -> Self {
        PageRequest { limit, after: None }
    }

    pub fn parse_limit(raw: Option<i64>) -> Result<u64, InvalidValue> {
        match raw {
            None => Ok(DEFAULT_LIMIT),
            Some(n) if (1..=MAX_LIMIT as i64).contains(&n) => Ok(n as u64),
            Some(_) => Err(InvalidValue::new(
                "out_of_range",
                format!("must be between 1 and {MAX_LIMIT}"),
            )),
        }
    }

    pub fn parse_cursor(raw: Option<&str>) -> Result<Option<Uuid>, InvalidValue> {
        let Some(raw) = raw else { return Ok(None) };
        URL_SAFE_NO_PAD
            .decode(raw)
            .ok()
            .and_then(|bytes| Uuid::from_slice(&bytes).ok())
            .map(Some)
            .ok_or_else(|| InvalidValue::new("invalid_cursor", "is not a cursor this API returned"))
    }
}

pub fn encode_cursor(id: Uuid) -> String {
    URL_SAFE_NO_PAD.encode(id.as_bytes())
}

#[derive(Clone, Debug)]
pub struct Page<T> {
    pub data: Vec<T>,
    pub next_cursor: Option<String>,
}

impl<T> Page<T> {
    /// Builds a page from up to `limit + 1` rows fetched in the list's order.
    pub fn from_rows(mut rows: Vec<T>, limit: u64, id_of: impl Fn(&T) -> Uuid) -> Self {
        let more = rows.len() as u64 > limit;
        rows.truncate(limit as usize);
        let next_cursor = if more {
            rows.last().map(|r| encode_cursor(id_of(r)))
        } else {
            None
        };
        Page {
            data: rows,
            next_cursor,
        }
    }

    pub fn map<U>(self, f: impl FnMut(T) -> U) -> Page<U> {
        Page {
            data: self.data.into_iter().map(f).collect(),
            next_cursor: self.next_cursor,
        }
    }
}
