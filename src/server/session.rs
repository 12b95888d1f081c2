//! One WebSocket client, from welcome to close.
//!
//! Each session is a single task that waits on four things at once: the client's next frame, the
//! room (chat), its ping timer, and the server's state (shutdown, drain, rejection notices: each
//! change acted on once per session, however often it is looked at). The room is a bounded
//! broadcast ring shared by all sessions, so a message costs one allocation however many clients
//! there are, and a client that falls more than the ring's length behind is closed (1008) instead
//! of making memory grow or slowing the others.

use std::future::Future;
use std::task::Poll;
use std::time::Duration;

use axum::extract::ws::{close_code, CloseFrame, Message, Utf8Bytes, WebSocket};
use tokio::sync::broadcast::error::RecvError;
use tokio::time::{Instant, MissedTickBehavior};

use super::hub::{Joined, Outgoing, ServerState, Slot};
use super::throttle::TokenBucket;
use super::{DRAINING_NOTICE, REJECTED_NOTICE, ROOM_BUSY_NOTICE, SHUTTING_DOWN};

/// Why a session ended, for the close frame and the log.
#[derive(Debug, Clone, PartialEq, Eq)]
enum End {
    /// The client closed, or the connection dropped.
    ClientGone,
    /// Send this close frame, then end.
    Close(u16, &'static str),
    /// The connection is unusable (write timed out, peer silent): drop it without a close frame.
    Drop(&'static str),
}

/// Runs one session until the client leaves, misbehaves, or the server shuts down.
///
/// A plain function returning an `async move` block rather than an `async fn`: an `async fn`
/// keeps its arguments (the 368-byte socket among them) twice in its state machine, and this
/// future lives as long as the connection (see BENCHMARKS.md).
#[allow(clippy::manual_async_fn)]
pub(super) fn run(mut socket: WebSocket, slot: Slot) -> impl Future<Output = ()> + Send {
    async move {
        let Joined {
            protection: _protection,
            mut room,
            mut state,
        } = slot.join();
        let limits = slot.limits();
        let n = slot.connections();
        tracing::info!("New client connection opened. There are {n} connections");

        let welcome = format!("Welcome! There are {n} connections");
        let mut end = send(
            &mut socket,
            Message::Text(welcome.into()),
            limits.write_timeout,
        )
        .await;

        let mut ping =
            tokio::time::interval_at(Instant::now() + limits.ping_interval, limits.ping_interval);
        ping.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut last_heard = Instant::now();
        let mut chat_budget = TokenBucket::new(f64::from(limits.chat_per_sec), 2.0);
        let mut told = Told::default();
        if end.is_none() {
            // A client arriving mid-streak or mid-drain is told too.
            let now = state.borrow_and_update().clone();
            end = told.act_on(&now, &mut socket, limits.write_timeout).await;
        }

        while end.is_none() {
            // Biased: pending output goes out before more input is read, so a session's own chat
            // never pushes it behind in the room's queue, and a busy client feels back-pressure.
            // The server state is looked at only when it changes, not once per message.
            end = tokio::select! {
                biased;
                changed = state.changed() => match changed {
                    Ok(()) => {
                        let now = state.borrow_and_update().clone();
                        told.act_on(&now, &mut socket, limits.write_timeout).await
                    }
                    // The hub (which owns the sender) outlives every session; be safe anyway.
                    Err(_) => Some(End::Close(close_code::AWAY, SHUTTING_DOWN)),
                },
                out = room.recv() => match out {
                    Ok(message) if !slot.is_own(&message) => {
                        let Outgoing { text, .. } = message;
                        send(&mut socket, Message::Text(text), limits.write_timeout).await
                    }
                    Ok(_) => None,
                    Err(RecvError::Lagged(_)) => Some(End::Close(close_code::POLICY, "too slow: message queue full")),
                    Err(RecvError::Closed) => Some(End::Close(close_code::AWAY, SHUTTING_DOWN)),
                },
                _ = ping.tick() => {
                    if last_heard.elapsed() > limits.ping_interval * 2 {
                        Some(End::Drop("peer stopped answering pings"))
                    } else {
                        send(&mut socket, Message::Ping(Default::default()), limits.write_timeout).await
                    }
                }
                frame = socket.recv() => {
                    last_heard = Instant::now();
                    match frame {
                        None => Some(End::ClientGone),
                        Some(Err(e)) => Some(classify(e)),
                        Some(Ok(Message::Text(text))) => {
                            if text.as_str() == "ping" {
                                tracing::debug!("received: ping");
                                send(&mut socket, Message::Text(Utf8Bytes::from_static("pong")), limits.write_timeout).await
                            } else if !chat_budget.take(1.0) {
                                Some(End::Close(close_code::POLICY, "too many messages"))
                            } else if slot.publish(&text) {
                                None
                            } else {
                                send(&mut socket, Message::Text(Utf8Bytes::from_static(ROOM_BUSY_NOTICE)), limits.write_timeout).await
                            }
                        }
                        Some(Ok(Message::Binary(_))) => Some(End::Close(close_code::UNSUPPORTED, "binary messages are not supported")),
                        Some(Ok(Message::Close(_))) => Some(End::ClientGone),
                        // The pong is queued by the WebSocket layer; push it out now, so that a
                        // client that sends pings but never reads fills its socket, not our
                        // memory, and is dropped after the write timeout.
                        Some(Ok(Message::Ping(_))) => flush(&mut socket, limits.write_timeout).await,
                        Some(Ok(Message::Pong(_))) => None,
                    }
                }
            };
        }

        match end {
            Some(End::Close(code, reason)) => {
                if code != close_code::AWAY {
                    tracing::info!("Closing a client ({code}): {reason}");
                }
                let frame = CloseFrame {
                    code,
                    reason: Utf8Bytes::from_static(reason),
                };
                // Best effort, briefly: a client that cannot take a close frame is dropped anyway.
                let _ = send(
                    &mut socket,
                    Message::Close(Some(frame)),
                    Duration::from_secs(1),
                )
                .await;
            }
            Some(End::Drop(why)) => tracing::info!("Dropping a client: {why}"),
            Some(End::ClientGone) | None => {}
        }
        drop(socket);
        let left = slot.leave();
        tracing::info!("Client connection closed. There are {left} connections");
    }
}

/// Sends one message within `timeout`; `Some(end)` if the session must end.
async fn send(socket: &mut WebSocket, message: Message, timeout: Duration) -> Option<End> {
    let mut sending = std::pin::pin!(socket.send(message));
    // Nearly every send completes at once (the socket has room): only arm a timer when it does
    // not, instead of creating and dropping one per message.
    let first = std::future::poll_fn(|cx| Poll::Ready(sending.as_mut().poll(cx))).await;
    let result = match first {
        Poll::Ready(result) => Ok(result),
        Poll::Pending => tokio::time::timeout(timeout, sending).await,
    };
    written(result)
}

/// Pushes out what is queued for the client (pongs) within `timeout`.
async fn flush(socket: &mut WebSocket, timeout: Duration) -> Option<End> {
    use futures_util::SinkExt;
    written(tokio::time::timeout(timeout, socket.flush()).await)
}

/// What a write's outcome means for the session.
fn written(result: Result<Result<(), axum::Error>, tokio::time::error::Elapsed>) -> Option<End> {
    match result {
        Ok(Ok(())) => None,
        Ok(Err(e)) => match e.into_inner().downcast_ref::<tungstenite::Error>() {
            Some(tungstenite::Error::WriteBufferFull(_)) => {
                Some(End::Drop("client stopped reading (write buffer full)"))
            }
            _ => Some(End::ClientGone),
        },
        Err(_) => Some(End::Drop("client stopped reading (write timed out)")),
    }
}

/// Maps a read error to the close code RFC 6455 prescribes.
fn classify(error: axum::Error) -> End {
    let inner = error.into_inner();
    match inner.downcast_ref::<tungstenite::Error>() {
        Some(tungstenite::Error::Capacity(_)) => End::Close(close_code::SIZE, "message too big"),
        Some(tungstenite::Error::Utf8(_)) => {
            End::Close(close_code::INVALID, "invalid UTF-8 in a text message")
        }
        // The peer closed the TCP connection without a close frame: it went away (a closed tab,
        // a lost network), which is not a protocol error worth a line of its own.
        Some(tungstenite::Error::Protocol(
            tungstenite::error::ProtocolError::ResetWithoutClosingHandshake,
        )) => End::ClientGone,
        Some(tungstenite::Error::Protocol(_)) => {
            End::Close(close_code::PROTOCOL, "WebSocket protocol error")
        }
        _ => End::ClientGone,
    }
}

/// What one session has told its client of the server's state so far.
#[derive(Debug, Default)]
struct Told {
    rejection_streak: u64,
    drained: bool,
}

impl Told {
    /// Closes the client if the server is going away, and tells it once of each new rejection
    /// streak and of a drain.
    async fn act_on(
        &mut self,
        state: &ServerState,
        socket: &mut WebSocket,
        timeout: Duration,
    ) -> Option<End> {
        if state.shutting_down {
            return Some(End::Close(close_code::AWAY, SHUTTING_DOWN));
        }
        if state.evicting {
            return Some(End::Close(close_code::AWAY, DRAINING_NOTICE));
        }
        if state.rejection_streak != 0 && state.rejection_streak != self.rejection_streak {
            self.rejection_streak = state.rejection_streak;
            let notice = Message::Text(Utf8Bytes::from_static(REJECTED_NOTICE));
            if let Some(end) = send(socket, notice, timeout).await {
                return Some(end);
            }
        }
        match &state.draining {
            Some(drain) if !self.drained => {
                self.drained = true;
                let notice = format!(
                    "{DRAINING_NOTICE}: {}. Reconnect to join another server.",
                    drain.public_reason()
                );
                send(socket, Message::Text(notice.into()), timeout).await
            }
            Some(_) => None,
            None => {
                self.drained = false;
                None
            }
        }
    }
}
