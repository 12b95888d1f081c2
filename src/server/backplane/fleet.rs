//! The fleet's connection counts: every task writes `"<count> <expires>"` (clients, and the Unix
//! time in milliseconds after which the count is stale) to its own field of the
//! [`FLEET_KEY`](super::FLEET_KEY) hash, named by its task id, and reads every field back.
//!
//! Anyone who can write to the backplane can write to that hash, so a field is believed only if
//! it could have come from a task of this program: a count no larger than `MAX_CONNECTIONS` can
//! be ([`MAX_TASK_CONNECTIONS`]), and an expiry no further ahead than the longest refresh
//! interval allows ([`MAX_VALIDITY`]). Every other field is *bad*: skipped, and removed from the
//! hash with the expired ones, so that it is seen (and logged) once.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use super::BackplaneSettings;

/// The largest count a task can write: the largest `MAX_CONNECTIONS`.
pub const MAX_TASK_CONNECTIONS: u64 = 1_000_000;

/// The furthest ahead a task stamps its count's expiry (three of the longest refresh interval),
/// plus a minute for clocks that disagree.
pub const MAX_VALIDITY: Duration =
    Duration::from_secs(3 * BackplaneSettings::MAX_REFRESH.as_secs() + 60);

/// Why a field of the hash is not believed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Bad {
    /// The field's name is not UTF-8 (task ids are).
    Name,
    /// The value is not `"<count> <expires>"`.
    Unreadable,
    /// A count no task can have.
    TooMany(u64),
    /// An expiry further ahead than any task writes.
    TooFar(Duration),
}

impl fmt::Display for Bad {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Bad::Name => f.write_str("its name is not UTF-8"),
            Bad::Unreadable => f.write_str("its value is not \"<count> <expires unix ms>\""),
            Bad::TooMany(n) => write!(
                f,
                "a count of {n}, more than a task can have ({MAX_TASK_CONNECTIONS})"
            ),
            Bad::TooFar(ahead) => write!(
                f,
                "it expires in {} s, further ahead than a task writes ({} s)",
                ahead.as_secs(),
                MAX_VALIDITY.as_secs()
            ),
        }
    }
}

/// One reading of the hash.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Reading {
    /// The believed, unexpired counts, by task id.
    pub(super) live: BTreeMap<String, u64>,
    /// Fields whose count has expired (their task stopped refreshing them): to remove.
    pub(super) expired: Vec<Vec<u8>>,
    /// Fields not believed, and why: to remove, and to log.
    pub(super) bad: Vec<(Vec<u8>, Bad)>,
}

impl Reading {
    /// The fields to remove from the hash: the expired and the bad ones.
    pub(super) fn stale_fields(&self) -> impl Iterator<Item = &[u8]> {
        self.expired
            .iter()
            .map(Vec::as_slice)
            .chain(self.bad.iter().map(|(f, _)| f.as_slice()))
    }
}

/// The value a task writes: `count` clients until `expires` (Unix ms).
pub(super) fn value(count: usize, expires: u64) -> String {
    format!("{count} {expires}")
}

/// Reads the hash's fields at `now` (Unix ms).
pub(super) fn read(fields: impl IntoIterator<Item = (Vec<u8>, Vec<u8>)>, now: u64) -> Reading {
    let mut reading = Reading::default();
    for (field, value) in fields {
        let task = match String::from_utf8(field) {
            Ok(task) => task,
            Err(e) => {
                reading.bad.push((e.into_bytes(), Bad::Name));
                continue;
            }
        };
        match judge(&value, now) {
            Ok(Some(count)) => {
                reading.live.insert(task, count);
            }
            Ok(None) => reading.expired.push(task.into_bytes()),
            Err(bad) => reading.bad.push((task.into_bytes(), bad)),
        }
    }
    reading
}

/// One field's value at `now`: its count while valid, `None` once expired, or why it is bad.
fn judge(value: &[u8], now: u64) -> Result<Option<u64>, Bad> {
    let (count, expires) = std::str::from_utf8(value)
        .ok()
        .and_then(|v| v.split_once(' '))
        .and_then(|(n, e)| Some((n.parse::<u64>().ok()?, e.parse::<u64>().ok()?)))
        .ok_or(Bad::Unreadable)?;
    if count > MAX_TASK_CONNECTIONS {
        return Err(Bad::TooMany(count));
    }
    let ahead = Duration::from_millis(expires.saturating_sub(now));
    if ahead > MAX_VALIDITY {
        return Err(Bad::TooFar(ahead));
    }
    Ok((expires > now).then_some(count))
}

/// A field's name for the log: at most 64 characters, escaped (it may be anything).
pub(super) fn shown(field: &[u8]) -> String {
    let name = String::from_utf8_lossy(field);
    let mut shown: String = name
        .chars()
        .take(64)
        .collect::<String>()
        .escape_debug()
        .collect();
    if name.chars().count() > 64 {
        shown.push('…');
    }
    shown
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(pairs: &[(&[u8], &[u8])]) -> Vec<(Vec<u8>, Vec<u8>)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_vec(), v.to_vec()))
            .collect()
    }

    const NOW: u64 = 1_000_000_000;

    #[test]
    fn unexpired_counts_are_believed_by_task_id() {
        let r = read(
            fields(&[(b"me", b"5 1000030000"), (b"b", b"7 1000000001")]),
            NOW,
        );
        assert_eq!(
            r.live,
            BTreeMap::from([("b".to_string(), 7), ("me".to_string(), 5)])
        );
        assert!(r.expired.is_empty() && r.bad.is_empty());
        assert_eq!(value(5, 1_000_030_000), "5 1000030000");
    }

    #[test]
    fn expired_counts_are_listed_for_removal() {
        let r = read(
            fields(&[(b"old", b"9 999999999"), (b"now", b"9 1000000000")]),
            NOW,
        );
        assert!(r.live.is_empty());
        assert_eq!(r.expired, vec![b"old".to_vec(), b"now".to_vec()]);
        assert_eq!(r.stale_fields().count(), 2);
    }

    #[test]
    fn fields_that_are_not_this_programs_are_bad_not_errors() {
        let r = read(
            fields(&[
                (b"\xff\xfe", b"1 1000000001"),
                (b"bytes", b"\xff\xfe 1"),
                (b"words", b"x"),
                (b"negative", b"-1 1000000001"),
                (b"one-part", b"5"),
            ]),
            NOW,
        );
        assert!(r.live.is_empty());
        let why: Vec<_> = r.bad.iter().map(|(_, b)| b.clone()).collect();
        assert_eq!(
            why,
            [
                Bad::Name,
                Bad::Unreadable,
                Bad::Unreadable,
                Bad::Unreadable,
                Bad::Unreadable
            ]
        );
        assert_eq!(r.stale_fields().count(), 5);
        assert_eq!(shown(b"\xff\xfe"), "\u{fffd}\u{fffd}");
        assert_eq!(shown("a\"b\n".as_bytes()), "a\\\"b\\n");
        assert_eq!(shown(&[b'x'; 100]).chars().count(), 65);
    }

    #[test]
    fn a_count_no_task_can_have_is_not_believed() {
        let r = read(
            fields(&[
                (b"max", b"1000000 1000000001"),
                (b"more", b"1000001 1000000001"),
                (b"u32", b"4294967295 1000000001"),
            ]),
            NOW,
        );
        assert_eq!(r.live, BTreeMap::from([("max".to_string(), 1_000_000)]));
        assert_eq!(r.bad[0].1, Bad::TooMany(1_000_001));
        assert_eq!(r.bad[1].1, Bad::TooMany(4_294_967_295));
    }

    #[test]
    fn an_expiry_further_ahead_than_any_task_writes_is_not_believed() {
        let limit = MAX_VALIDITY.as_millis() as u64;
        let at = |ms: u64| (NOW + ms).to_string();
        let r = read(
            vec![
                (b"edge".to_vec(), format!("3 {}", at(limit)).into_bytes()),
                (
                    b"beyond".to_vec(),
                    format!("3 {}", at(limit + 1)).into_bytes(),
                ),
                (b"years".to_vec(), format!("3 {}", u64::MAX).into_bytes()),
            ],
            NOW,
        );
        assert_eq!(r.live, BTreeMap::from([("edge".to_string(), 3)]));
        assert!(matches!(r.bad[0].1, Bad::TooFar(_)));
        assert!(matches!(r.bad[1].1, Bad::TooFar(_)));
        assert!(r.bad[1].1.to_string().contains("further ahead"));
        // Every task's own stamp is within it, at the longest refresh interval.
        assert!(BackplaneSettings::MAX_REFRESH * 3 < MAX_VALIDITY);
    }
}
