//! The link: the one task that talks to the backplane. It connects (a command connection for
//! `PUBLISH` and the fleet count, and a pub/sub connection subscribed to [`CHANNEL`]), then runs
//! three loops at once until one of them finds the backplane gone:
//!
//! * publish: takes what sessions offered from the bounded queue, a batch at a time, and
//!   publishes it in one pipeline;
//! * relay: hands every message of another task to the hub (its own it skips: its clients had
//!   them from the local room);
//! * count: every `refresh`, writes this task's connection count with an expiry stamp to one
//!   field of the [`FLEET_KEY`] hash and sums the other tasks' unexpired fields. One key, not a
//!   key per task: nothing to `SCAN`, and no multi-key command that a sharded cache (ElastiCache
//!   Serverless) would refuse across slots.
//!
//! Then it waits (0.5 s doubling to 30 s, jittered), dropping and counting what sessions offer
//! meanwhile, and connects again: a restarted backplane gets the subscription back by itself.
//! The outage is logged once when it starts and once when it ends.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::ws::Utf8Bytes;
use futures_util::StreamExt;
use redis::aio::{MultiplexedConnection, PubSubStream};
use redis::AsyncConnectionConfig;
use tokio::sync::mpsc;
use tokio::time::{timeout, Instant, MissedTickBehavior};

use super::backoff::Backoff;
use super::frame::ChatFrame;
use super::{BackplaneSettings, Shared, CHANNEL, FLEET_KEY, UNKNOWN};
use crate::server::throttle::Throttle;
use crate::server::{Hub, CHAT_PREFIX};

/// The longest a connection (TCP, TLS, `AUTH`) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest a command may wait for its answer before the connection counts as lost.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(3);
/// The most messages published in one pipeline.
const BATCH: usize = 64;

/// Why the link lost (or could not reach) the backplane.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
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
                backoff.reset();
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
                shared.others.store(UNKNOWN, Ordering::Release);
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
            loop {
                if queue.recv_many(&mut batch, BATCH).await == 0 {
                    return Ended::Stopped;
                }
                let mut pipe = redis::pipe();
                for line in batch.iter() {
                    let text = line.as_str();
                    let text = text.strip_prefix(CHAT_PREFIX).unwrap_or(text);
                    pipe.cmd("PUBLISH")
                        .arg(CHANNEL)
                        .arg(ChatFrame::encode(origin, text))
                        .ignore();
                }
                let n = batch.len() as u64;
                batch.clear();
                if let Err(e) = pipe.query_async::<()>(&mut commands).await {
                    shared.dropped.fetch_add(n, Ordering::Relaxed);
                    return Ended::Lost(e.into());
                }
            }
        }
    };

    let relay = async {
        let foreign = Throttle::new(Duration::from_secs(60));
        while let Some(message) = messages.next().await {
            match ChatFrame::decode(message.get_payload_bytes()) {
                Ok(frame) if frame.origin == origin => {}
                Ok(frame) => {
                    let Some(hub) = hub.upgrade() else {
                        return Ended::Stopped;
                    };
                    hub.deliver_remote(&frame.text);
                }
                Err(e) => {
                    if let Some(suppressed) = foreign.allow() {
                        tracing::warn!(
                            "Chat backplane: ignored a message on {CHANNEL}: {e}{}",
                            Throttle::suppressed_note(suppressed)
                        );
                    }
                }
            }
        }
        Ended::Lost(LinkError::SubscriptionEnded)
    };

    let count = {
        let mut commands = commands.clone();
        async move {
            let mut every = tokio::time::interval(settings.refresh);
            every.set_missed_tick_behavior(MissedTickBehavior::Delay);
            loop {
                every.tick().await;
                let Some(here) = hub.upgrade().map(|h| h.connections()) else {
                    return Ended::Stopped;
                };
                match refresh_fleet(&mut commands, origin, here, settings.refresh).await {
                    Ok(others) => shared.others.store(others, Ordering::Release),
                    Err(e) => return Ended::Lost(e),
                }
            }
        }
    };

    tokio::select! {
        ended = publish => ended,
        ended = relay => ended,
        ended = count => ended,
    }
}

/// Writes `here` for `origin` into the fleet hash, valid for three `refresh` intervals, and
/// returns the sum of the other tasks' counts that are still valid; removes the expired ones.
async fn refresh_fleet(
    commands: &mut MultiplexedConnection,
    origin: &str,
    here: usize,
    refresh: Duration,
) -> Result<i64, LinkError> {
    let ttl = refresh * 3;
    let now = unix_millis();
    let expires = now + ttl.as_millis() as u64;
    let (fields,): (HashMap<String, String>,) = redis::pipe()
        .cmd("HSET")
        .arg(FLEET_KEY)
        .arg(origin)
        .arg(format!("{here} {expires}"))
        .ignore()
        // The whole hash goes when no task has written to it for a while.
        .cmd("PEXPIRE")
        .arg(FLEET_KEY)
        .arg((ttl * 2).as_millis() as u64)
        .ignore()
        .cmd("HGETALL")
        .arg(FLEET_KEY)
        .query_async(commands)
        .await?;
    let (others, expired) = sum_others(&fields, origin, now);
    if !expired.is_empty() {
        redis::cmd("HDEL")
            .arg(FLEET_KEY)
            .arg(&expired)
            .query_async::<()>(commands)
            .await?;
    }
    Ok(others)
}

/// The sum of the other tasks' unexpired counts (`"<count> <expires unix ms>"`), and the fields
/// that have expired (or cannot be read).
fn sum_others<'a>(
    fields: &'a HashMap<String, String>,
    origin: &str,
    now: u64,
) -> (i64, Vec<&'a str>) {
    let mut sum = 0i64;
    let mut expired = Vec::new();
    for (task, value) in fields {
        if task == origin {
            continue;
        }
        let parsed = value
            .split_once(' ')
            .and_then(|(n, e)| Some((n.parse::<u32>().ok()?, e.parse::<u64>().ok()?)));
        match parsed {
            Some((n, expires)) if expires > now => sum += i64::from(n),
            _ => expired.push(task.as_str()),
        }
    }
    (sum, expired)
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
    fn the_others_unexpired_counts_are_summed_and_the_expired_listed() {
        let fields: HashMap<String, String> = [
            ("me", "5 2000"),
            ("b", "7 2000"),
            ("c", "3 1500"),
            ("old", "9 900"),
            ("junk", "x"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let (sum, mut expired) = sum_others(&fields, "me", 1000);
        expired.sort();
        assert_eq!(sum, 10);
        assert_eq!(expired, vec!["junk", "old"]);
    }
}
