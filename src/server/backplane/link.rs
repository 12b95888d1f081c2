//! The link: the one task that talks to the backplane. It connects (a command connection for
//! `PUBLISH` and the fleet count, and a pub/sub connection subscribed to [`CHANNEL`]), then runs
//! three loops at once until one of them finds the backplane gone:
//!
//! * publish: takes what sessions offered from the bounded queue, a batch at a time, and
//!   publishes it in one pipeline;
//! * relay: hands every message of another task that this task's rules let in ([`Inbound`]) to
//!   the hub (its own it skips: its clients had them from the local room);
//! * count: every `refresh`, writes this task's connection count with an expiry stamp to one
//!   field of the [`FLEET_KEY`] hash and reads every task's back ([`fleet`]). One key, not a
//!   key per task: nothing to `SCAN`, and no multi-key command that a sharded cache (ElastiCache
//!   Serverless) would refuse across slots.
//!
//! Only a fault of the connection itself (no answer in time, a closed or broken connection, an
//! answer that cannot be parsed) ends a connected spell. A command the backplane answers with an
//! error (`WRONGTYPE` when the count's key is not a hash, `OOM`, `READONLY` on a replica, …) is
//! logged once when that trouble starts and once when it ends, and the spell goes on: chat does
//! not depend on the count, and a publish refused is dropped and counted like any other.
//!
//! Then it waits (0.5 s doubling to 30 s, jittered; starting over only after a spell that
//! lasted, see [`backoff`](super::backoff)), dropping and counting what sessions offer
//! meanwhile, and connects again: a restarted backplane gets the subscription back by itself.
//! The outage is logged once when it starts and once when it ends.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::ws::Utf8Bytes;
use futures_util::StreamExt;
use redis::aio::{MultiplexedConnection, PubSubStream};
use redis::{AsyncConnectionConfig, ErrorKind, RedisError, Value};
use tokio::sync::mpsc;
use tokio::time::{timeout, Instant, MissedTickBehavior};

use super::backoff::Backoff;
use super::fleet::{self, Reading};
use super::frame::ChatFrame;
use super::inbound::{Inbound, Verdict};
use super::{BackplaneSettings, Shared, CHANNEL, FLEET_KEY};
use crate::server::throttle::Throttle;
use crate::server::{Hub, CHAT_PREFIX};

/// The longest a connection (TCP, TLS, `AUTH`) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest a command may wait for its answer before the connection counts as lost.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(3);
/// The most messages published in one pipeline.
const BATCH: usize = 64;
/// The most stale fields of the count's hash removed in one refresh.
const MAX_REMOVED: usize = 1000;

/// Why the link lost (or could not reach) the backplane.
#[derive(Debug, thiserror::Error)]
pub(super) enum LinkError {
    /// The client's error: refused, reset, authentication, TLS, a command's error.
    #[error("{0}")]
    Redis(#[from] redis::RedisError),
    /// No answer in time.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// The pub/sub connection closed.
    #[error("the subscription ended (connection closed)")]
    SubscriptionEnded,
}

/// How a connected spell ended.
enum Ended {
    /// The backplane went away: reconnect.
    Lost(LinkError),
    /// The hub is gone: stop.
    Stopped,
}

/// The two connections of a connected spell.
struct Connected {
    commands: MultiplexedConnection,
    messages: PubSubStream,
}

/// Runs the link until the hub is gone.
pub(super) async fn run(
    hub: Weak<Hub>,
    settings: BackplaneSettings,
    shared: Arc<Shared>,
    mut queue: mpsc::Receiver<Utf8Bytes>,
) {
    let client = match redis::Client::open(settings.url.secret()) {
        Ok(client) => client,
        Err(e) => {
            // The URL was checked at start-up; be safe anyway.
            tracing::warn!(
                "Chat backplane {} cannot be used: {e}; chat stays on this task",
                settings.url
            );
            return;
        }
    };
    let mut backoff = Backoff::new();
    let mut outage: Option<Instant> = None;
    let mut ever = false;
    loop {
        match connect(&client).await {
            Ok(connected) => {
                let connected_at = Instant::now();
                shared.connected.store(true, Ordering::Release);
                match outage.take() {
                    Some(since) => tracing::info!(
                        "Chat backplane reconnected after {:.1} s; cross-task chat resumes",
                        since.elapsed().as_secs_f64()
                    ),
                    None if !ever => {
                        tracing::info!("Chat backplane connected: {}", settings.url)
                    }
                    None => {}
                }
                ever = true;
                let ended = serve(&hub, &settings, &shared, &mut queue, connected).await;
                shared.connected.store(false, Ordering::Release);
                shared.forget_counts();
                backoff.after_spell(connected_at.elapsed());
                match ended {
                    Ended::Stopped => return,
                    Ended::Lost(e) => {
                        tracing::warn!(
                            "Chat backplane unreachable: {}: {e}; local chat goes on",
                            settings.url
                        );
                        outage = Some(Instant::now());
                    }
                }
            }
            Err(e) if outage.is_none() => {
                tracing::warn!(
                    "Chat backplane unreachable: {}: {e}; local chat goes on (retrying in the background)",
                    settings.url
                );
                outage = Some(Instant::now());
            }
            Err(e) => tracing::debug!("Chat backplane still unreachable: {e}"),
        }
        // Wait before the next try; what sessions offer meanwhile cannot be delivered.
        let pause = tokio::time::sleep(backoff.next_wait());
        tokio::pin!(pause);
        loop {
            tokio::select! {
                _ = &mut pause => break,
                offered = queue.recv() => match offered {
                    Some(_) => { shared.dropped.fetch_add(1, Ordering::Relaxed); }
                    None => return,
                },
            }
        }
        if hub.strong_count() == 0 {
            return;
        }
    }
}

/// Opens both connections and subscribes.
async fn connect(client: &redis::Client) -> Result<Connected, LinkError> {
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(CONNECT_TIMEOUT))
        .set_response_timeout(Some(RESPONSE_TIMEOUT));
    let commands = client
        .get_multiplexed_async_connection_with_config(&config)
        .await?;
    let mut pubsub = timeout(CONNECT_TIMEOUT, client.get_async_pubsub())
        .await
        .map_err(|_| LinkError::Timeout(CONNECT_TIMEOUT))??;
    timeout(RESPONSE_TIMEOUT, pubsub.subscribe(CHANNEL))
        .await
        .map_err(|_| LinkError::Timeout(RESPONSE_TIMEOUT))??;
    Ok(Connected {
        commands,
        messages: pubsub.into_on_message(),
    })
}

/// Publishes, relays and counts until the backplane is lost or the hub is gone.
async fn serve(
    hub: &Weak<Hub>,
    settings: &BackplaneSettings,
    shared: &Shared,
    queue: &mut mpsc::Receiver<Utf8Bytes>,
    connected: Connected,
) -> Ended {
    let Connected {
        commands,
        mut messages,
    } = connected;
    let origin = settings.origin.as_str();

    let publish = {
        let mut commands = commands.clone();
        async move {
            let mut batch = Vec::with_capacity(BATCH);
            let mut refused = Streak::default();
            loop {
                if queue.recv_many(&mut batch, BATCH).await == 0 {
                    return Ended::Stopped;
                }
                let mut pipe = redis::pipe();
                pipe.ignore_errors();
                for line in batch.iter() {
                    let text = line.as_str();
                    let text = text.strip_prefix(CHAT_PREFIX).unwrap_or(text);
                    pipe.cmd("PUBLISH")
                        .arg(CHANNEL)
                        .arg(ChatFrame::encode(origin, text));
                }
                let n = batch.len();
                batch.clear();
                let failed = match pipe.query_async::<Vec<Value>>(&mut commands).await {
                    Ok(replies) => answers_refused(&replies),
                    Err(e) if is_link_fault(&e) => {
                        shared.dropped.fetch_add(n as u64, Ordering::Relaxed);
                        return Ended::Lost(e.into());
                    }
                    Err(e) => Some((n, e)),
                };
                match failed {
                    Some((count, e)) => {
                        shared.dropped.fetch_add(count as u64, Ordering::Relaxed);
                        if refused.fails(e.code().unwrap_or("?")) {
                            tracing::warn!(
                                "Chat backplane refused to publish: {e}; those messages reach this task's clients only (logged once while it lasts)"
                            );
                        }
                    }
                    None if refused.works() => {
                        tracing::info!("Chat backplane publishes again");
                    }
                    None => {}
                }
            }
        }
    };

    let relay = async {
        let foreign = Throttle::new(Duration::from_secs(60));
        let too_long = Throttle::new(Duration::from_secs(60));
        let over_budget = Throttle::new(Duration::from_secs(60));
        let Some(mut inbound) = hub.upgrade().map(|h| Inbound::new(h.limits())) else {
            return Ended::Stopped;
        };
        while let Some(message) = messages.next().await {
            let frame = match ChatFrame::decode(message.get_payload_bytes()) {
                Ok(frame) if frame.origin == origin => continue,
                Ok(frame) => frame,
                Err(e) => {
                    if let Some(suppressed) = foreign.allow() {
                        tracing::warn!(
                            "Chat backplane: ignored a message on {CHANNEL}: {e}{}",
                            Throttle::suppressed_note(suppressed)
                        );
                    }
                    continue;
                }
            };
            let verdict = inbound.judge(&frame.text);
            if verdict == Verdict::Deliver {
                let Some(hub) = hub.upgrade() else {
                    return Ended::Stopped;
                };
                hub.deliver_remote(&frame.text);
                continue;
            }
            let refused = shared.refused.fetch_add(1, Ordering::Relaxed) + 1;
            if verdict == Verdict::TooLong {
                if let Some(suppressed) = too_long.allow() {
                    tracing::warn!(
                        "Chat backplane: refused a message of {} bytes from task {}: over MAX_MESSAGE_BYTES here ({}), so it reaches none of this task's clients (a task with a larger MAX_MESSAGE_BYTES sent it; {refused} refused since start-up){}",
                        frame.text.len(),
                        fleet::shown(frame.origin.as_bytes()),
                        inbound.max_bytes(),
                        Throttle::suppressed_note(suppressed)
                    );
                }
            } else if let Some(suppressed) = over_budget.allow() {
                tracing::warn!(
                    "Chat backplane: dropped chat from other tasks beyond this task's budget for it ({} messages a second, half of CLIENT_QUEUE_MESSAGES; {refused} refused since start-up){}",
                    inbound.rate(),
                    Throttle::suppressed_note(suppressed)
                );
            }
        }
        Ended::Lost(LinkError::SubscriptionEnded)
    };

    let count = {
        let mut commands = commands.clone();
        async move {
            let mut every = tokio::time::interval(settings.refresh);
            every.set_missed_tick_behavior(MissedTickBehavior::Delay);
            let mut trouble = Streak::default();
            let mut strangers = Streak::default();
            loop {
                every.tick().await;
                let Some(here) = hub.upgrade().map(|h| h.connections()) else {
                    return Ended::Stopped;
                };
                let Refresh { wrote, read } =
                    match refresh_fleet(&mut commands, origin, here, settings.refresh).await {
                        Ok(refresh) => refresh,
                        Err(e) => return Ended::Lost(e),
                    };
                let mut reading = match read {
                    Ok(reading) => reading,
                    Err(e) => {
                        shared.forget_counts();
                        if trouble.fails(&format!("read {}", e.code().unwrap_or("?"))) {
                            tracing::warn!(
                                "Chat backplane: the fleet count failed: {e}; fleet_connections is unknown until it works again (chat is not affected; logged once while it lasts)"
                            );
                        }
                        continue;
                    }
                };
                match wrote {
                    Err(e) => {
                        if trouble.fails(&format!("write {}", e.code().unwrap_or("?"))) {
                            tracing::warn!(
                                "Chat backplane: could not write this task's count for the fleet count: {e}; the other tasks do not count its clients until it works again (chat is not affected; logged once while it lasts)"
                            );
                        }
                    }
                    Ok(()) if trouble.works() => {
                        tracing::info!("Chat backplane: the fleet count works again");
                    }
                    Ok(()) => {}
                }
                if reading.bad.is_empty() {
                    strangers.works();
                } else if strangers.fails("bad fields") {
                    tracing::warn!(
                        "Chat backplane: skipped {} field(s) of the fleet count ({FLEET_KEY}) that no task of this program wrote, and removed them: {}",
                        reading.bad.len(),
                        describe_bad(&reading)
                    );
                }
                if let Err(e) = remove_stale(&mut commands, &reading).await {
                    if is_link_fault(&e) {
                        return Ended::Lost(e.into());
                    }
                    tracing::debug!("Chat backplane: could not remove stale counts: {e}");
                }
                reading.live.insert(origin.to_string(), here as u64);
                shared.set_counts(origin, reading.live);
            }
        }
    };

    tokio::select! {
        ended = publish => ended,
        ended = relay => ended,
        ended = count => ended,
    }
}

/// Whether `e` means the connection can no longer be used (no answer in time, a closed or broken
/// connection, an answer that cannot be parsed), as opposed to an error *answer*: the backplane
/// answered the command, with an error (`WRONGTYPE`, `OOM`, `READONLY`, …).
fn is_link_fault(e: &RedisError) -> bool {
    !matches!(e.kind(), ErrorKind::Server(_) | ErrorKind::Extension)
}

/// How many of a pipeline's answers are errors, with the first, if any is.
fn answers_refused(replies: &[Value]) -> Option<(usize, RedisError)> {
    let mut errors = replies.iter().filter_map(|r| match r {
        Value::ServerError(e) => Some(e),
        _ => None,
    });
    let first = RedisError::from(errors.next()?.clone());
    Some((1 + errors.count(), first))
}

/// A kind of trouble that is logged once when it starts and once when it ends, not at every try.
#[derive(Debug, Default)]
struct Streak {
    current: Option<String>,
}

impl Streak {
    /// Trouble of this `kind` now: `true` if it starts now (none before, or another kind), when
    /// it is to be logged.
    fn fails(&mut self, kind: &str) -> bool {
        if self.current.as_deref() == Some(kind) {
            return false;
        }
        self.current = Some(kind.to_string());
        true
    }

    /// No trouble now: `true` if some has just ended, when that is to be logged.
    fn works(&mut self) -> bool {
        self.current.take().is_some()
    }
}

/// What one refresh of the count got: whether this task's count was written, and every task's
/// as read back.
struct Refresh {
    wrote: Result<(), RedisError>,
    read: Result<Reading, RedisError>,
}

/// Writes `here` for `origin` into the fleet hash, valid for three `refresh` intervals, and reads
/// every task's count back. An error answer to either is in the [`Refresh`]; only a fault of the
/// link is an error.
async fn refresh_fleet(
    commands: &mut MultiplexedConnection,
    origin: &str,
    here: usize,
    refresh: Duration,
) -> Result<Refresh, LinkError> {
    let ttl = refresh * 3;
    let now = unix_millis();
    let expires = now + ttl.as_millis() as u64;
    let mut pipe = redis::pipe();
    pipe.ignore_errors()
        .cmd("HSET")
        .arg(FLEET_KEY)
        .arg(origin)
        .arg(fleet::value(here, expires))
        // The whole hash goes when no task has written to it for a while.
        .cmd("PEXPIRE")
        .arg(FLEET_KEY)
        .arg((ttl * 2).as_millis() as u64)
        .cmd("HGETALL")
        .arg(FLEET_KEY);
    match pipe.query_async::<Vec<Value>>(commands).await {
        Ok(replies) => Ok(interpret(replies, now)),
        Err(e) if is_link_fault(&e) => Err(e.into()),
        Err(e) => Ok(Refresh {
            wrote: Err(e.clone()),
            read: Err(e),
        }),
    }
}

/// The answers to `HSET`, `PEXPIRE` and `HGETALL`, read at `now` (Unix ms).
fn interpret(replies: Vec<Value>, now: u64) -> Refresh {
    let mut replies = replies.into_iter().map(|reply| match reply {
        Value::ServerError(e) => Err(RedisError::from(e)),
        value => Ok(value),
    });
    let mut next = || {
        replies.next().unwrap_or_else(|| {
            Err(RedisError::from((
                ErrorKind::Client,
                "the backplane gave fewer answers than commands",
            )))
        })
    };
    let hset = next();
    let pexpire = next();
    let hgetall = next();
    Refresh {
        wrote: hset.and(pexpire).map(|_| ()),
        read: hgetall.and_then(|value| {
            let fields: HashMap<Vec<u8>, Vec<u8>> =
                redis::from_redis_value(value).map_err(RedisError::from)?;
            Ok(fleet::read(fields, now))
        }),
    }
}

/// Removes the expired and bad fields of a reading (at most [`MAX_REMOVED`] a refresh).
async fn remove_stale(
    commands: &mut MultiplexedConnection,
    reading: &Reading,
) -> Result<(), RedisError> {
    let stale: Vec<&[u8]> = reading.stale_fields().take(MAX_REMOVED).collect();
    if stale.is_empty() {
        return Ok(());
    }
    redis::cmd("HDEL")
        .arg(FLEET_KEY)
        .arg(stale)
        .query_async::<()>(commands)
        .await
}

/// The first few bad fields of a reading and why, for the log.
fn describe_bad(reading: &Reading) -> String {
    let mut shown: Vec<String> = reading
        .bad
        .iter()
        .take(3)
        .map(|(field, why)| format!("\"{}\": {why}", fleet::shown(field)))
        .collect();
    if reading.bad.len() > 3 {
        shown.push(format!("and {} more", reading.bad.len() - 3));
    }
    shown.join("; ")
}

/// Milliseconds since the Unix epoch (the tasks' clocks are synchronised by ECS's hosts; a few
/// seconds of skew shortens or lengthens a count's 30 s validity by as much).
fn unix_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_streak_of_trouble_is_logged_when_it_starts_and_when_it_ends() {
        let mut streak = Streak::default();
        assert!(!streak.works());
        assert!(streak.fails("read WRONGTYPE"));
        assert!(!streak.fails("read WRONGTYPE"));
        // Another kind of trouble is news.
        assert!(streak.fails("write OOM"));
        assert!(streak.works());
        assert!(!streak.works());
        assert!(streak.fails("write OOM"));
    }

    #[test]
    fn only_a_fault_of_the_connection_ends_a_spell() {
        let io = RedisError::from(std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            "reset",
        ));
        assert!(is_link_fault(&io));
        let timed_out = RedisError::from(std::io::Error::new(std::io::ErrorKind::TimedOut, "t"));
        assert!(is_link_fault(&timed_out));
        for reply in [
            "-WRONGTYPE Operation against a key holding the wrong kind of value",
            "-OOM command not allowed when used memory > 'maxmemory'.",
            "-READONLY You can't write against a read only replica.",
            "-SOMETHINGNEW we have never seen",
        ] {
            let e = parse_error_reply(reply);
            assert!(!is_link_fault(&e), "{reply}: {:?}", e.kind());
        }
    }

    /// The answer a server's `-CODE detail` line is, as the client parses it.
    fn error_answer(line: &str) -> Value {
        let bytes = format!("{line}\r\n");
        match redis::parse_redis_value(bytes.as_bytes()) {
            Ok(answer @ Value::ServerError(_)) => answer,
            other => panic!("{line}: {other:?}"),
        }
    }

    /// The error a server's `-CODE detail` line makes.
    fn parse_error_reply(line: &str) -> RedisError {
        match error_answer(line) {
            Value::ServerError(e) => e.into(),
            _ => unreachable!(),
        }
    }

    #[test]
    fn a_refused_write_does_not_spoil_the_read_and_a_refused_read_is_an_error() {
        let now = 1_000_000_000;
        let fields = Value::Array(vec![
            Value::BulkString(b"b".to_vec()),
            Value::BulkString(b"7 1000005000".to_vec()),
            Value::BulkString(b"\xff".to_vec()),
            Value::BulkString(b"1 1000005000".to_vec()),
        ]);
        let oom = || error_answer("-OOM no memory");
        let r = interpret(vec![oom(), Value::Int(1), fields.clone()], now);
        assert_eq!(r.wrote.unwrap_err().code(), Some("OOM"));
        let reading = r.read.unwrap();
        assert_eq!(reading.live.get("b"), Some(&7));
        assert_eq!(reading.bad.len(), 1);

        let wrongtype = || error_answer("-WRONGTYPE no");
        let r = interpret(vec![wrongtype(), Value::Int(1), wrongtype()], now);
        assert!(r.wrote.is_err());
        assert_eq!(r.read.unwrap_err().code(), Some("WRONGTYPE"));

        let r = interpret(vec![Value::Int(1), Value::Int(1), fields], now);
        assert!(r.wrote.is_ok());
        assert_eq!(r.read.unwrap().live.len(), 1);
        // Fewer answers than commands: an error, not a panic.
        assert!(interpret(vec![Value::Int(1)], now).read.is_err());
        assert_eq!(
            answers_refused(&[Value::Int(1), wrongtype(), oom()])
                .map(|(n, e)| (n, e.code().map(str::to_string))),
            Some((2, Some("WRONGTYPE".to_string())))
        );
        assert!(answers_refused(&[Value::Int(1)]).is_none());
    }
}
