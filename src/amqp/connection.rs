//! One client connection: a single task that owns the socket, the read buffer, the outbox
//! and (after the handshake) the session with all channels.
//!
//! The task reads and writes the socket without splitting it: every wake-up parses all
//! complete frames in the read buffer, takes queue events while the outbox is below its
//! high watermark, and then writes what was produced in one vectored write. Reading goes on
//! while writing waits, so a client that is busy writing never deadlocks against us.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

use atomic_waker::AtomicWaker;
use std::time::Duration;

use bytes::BytesMut;
use ferrymq_broker::auth::User;
use ferrymq_broker::client::{ClientEvent, ClientHandle};
use ferrymq_wire as frame;
use ferrymq_wire::{
    ConnectionBlocked, ConnectionClose, ConnectionCloseOk, ConnectionOpenOk, ConnectionUnblocked,
    ConnectionUpdateSecretOk, Frame, Method, ShortStr,
};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tokio::time::{sleep_until, Instant, Sleep};

use super::error::{code, AmqpError, AmqpResult, CloseReason};
use super::handshake;
use super::outbox::Outbox;
use super::session::{Now, Session};
use super::Server;

/// Queue events are not taken while this much output waits for the socket; queues then
/// hold further deliveries (see the client window in `ferrymq_broker::client`).
const OUTBOX_HIGH_WATERMARK_BYTES: usize = 1024 * 1024;
/// The socket is not read while this much output waits: a client that sends requests but
/// never reads the replies cannot make us buffer replies without bound.
const OUTBOX_READ_PAUSE_BYTES: usize = 8 * 1024 * 1024;
const _: () = assert!(OUTBOX_READ_PAUSE_BYTES > OUTBOX_HIGH_WATERMARK_BYTES);
/// Read buffer growth step; also the most read per syscall when the buffer is empty.
const READ_CHUNK_BYTES: usize = 64 * 1024;
/// First reads of a connection: most connections are quiet, 110 KiB each adds up (S8).
const READ_CHUNK_SMALL_BYTES: usize = 4 * 1024;
/// The longest pause one read's publishes can earn under publisher pacing (the rest of the
/// debt is forgiven): pacing slows a publisher down, it never stops one for long.
const PACE_PAUSE_MAX: Duration = Duration::from_millis(100);
/// Queue events handled per wake-up before the outbox gets written.
const EVENTS_PER_WAKEUP_MAX: usize = 1024;
/// The AMQP 0-9 header ("AMQP" class 1, instance 1, version 0-9); RabbitMQ serves
/// 0-9 clients as 0-9-1 (rabbit_reader:version_negotiation), and so do we.
const PROTOCOL_HEADER_0_9: [u8; 8] = *b"AMQP\x01\x01\x00\x09";
/// How long closing may take: writing what is still queued (ending in connection.close
/// or close-ok) and, after our close, waiting for close-ok. A peer that stops reading
/// would otherwise hold the task and its socket forever.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(3);

/// Why the connection loop ended.
enum End {
    /// The peer went away or the socket failed.
    Gone,
    /// We are closing with this reason (sent connection.close).
    Close(CloseReason),
    /// The client sent connection.close; we answered close-ok.
    ClientClosed,
}

pub struct Connection {
    stream: TcpStream,
    peer: SocketAddr,
    server: Arc<Server>,
    read_buf: BytesMut,
    outbox: Outbox,
    frame_max_bytes: u32,
    shutdown: watch::Receiver<bool>,
    /// Blocked by a resource alarm after publishing: the socket is not read until the
    /// alarm clears (RabbitMQ's connection.blocked flow control).
    blocked: bool,
}

impl Connection {
    pub fn new(
        stream: TcpStream,
        peer: SocketAddr,
        server: Arc<Server>,
        shutdown: watch::Receiver<bool>,
    ) -> Self {
        let frame_max_bytes = server.config.frame_max_bytes;
        Connection {
            stream,
            peer,
            server,
            // Grown on the first read; an idle connection keeps what it needed so far.
            read_buf: BytesMut::new(),
            outbox: Outbox::new(frame_max_bytes),
            frame_max_bytes,
            shutdown,
            blocked: false,
        }
    }

    pub async fn run(mut self) {
        let _ = self.stream.set_nodelay(true);
        let timeout = Duration::from_millis(self.server.config.handshake_timeout_ms);
        let outcome = {
            // A client still in the handshake must not hold up shutdown until its
            // handshake timeout: it has nothing to lose yet, so it is just dropped.
            let mut shutdown = self.shutdown.clone();
            tokio::select! {
                outcome = tokio::time::timeout(timeout, self.handshake()) => Some(outcome),
                _ = shutdown.changed() => None,
            }
        };
        let Some(outcome) = outcome else {
            tracing::debug!(peer = %self.peer, "shutdown during the handshake");
            return;
        };
        let session = match outcome {
            Ok(Ok(Some(session))) => session,
            Ok(Ok(None)) => return,
            Ok(Err(AmqpError::Connection(reason) | AmqpError::Channel(reason))) => {
                tracing::info!(peer = %self.peer, code = reason.code, text = %reason.text, "handshake refused");
                self.close_with(reason, None).await;
                return;
            }
            Err(_) => {
                tracing::info!(peer = %self.peer, "handshake timed out");
                return;
            }
        };
        self.serve(session).await;
    }

    /// Reads until a whole frame is buffered. `Ok(None)` means the peer closed the socket.
    async fn read_frame(&mut self) -> AmqpResult<Option<Frame>> {
        loop {
            if let Some(frame) = frame::decode_frame(&mut self.read_buf, self.frame_max_bytes)? {
                return Ok(Some(frame));
            }
            // Handshake frames are small: a full chunk here would stay with every connection.
            self.read_buf.reserve(READ_CHUNK_SMALL_BYTES);
            match self.stream.read_buf(&mut self.read_buf).await {
                Ok(0) | Err(_) => return Ok(None),
                Ok(_) => {}
            }
        }
    }

    async fn flush(&mut self) -> std::io::Result<()> {
        while !self.outbox.is_empty() {
            self.stream.writable().await?;
            self.outbox.write_to(&self.stream)?;
        }
        Ok(())
    }

    /// The protocol header, start, tune and open; returns the session, or `None` when the
    /// client went away or was turned away.
    async fn handshake(&mut self) -> AmqpResult<Option<Session>> {
        let mut header = [0u8; 8];
        if self.stream.read_exact(&mut header).await.is_err() {
            return Ok(None);
        }
        if header != frame::PROTOCOL_HEADER && header != PROTOCOL_HEADER_0_9 {
            // The spec's answer to an unsupported protocol: our header, then close.
            self.outbox.raw(&frame::PROTOCOL_HEADER);
            let _ = self.flush().await;
            return Ok(None);
        }
        self.outbox
            .method(0, &Method::ConnectionStart(handshake::connection_start()));
        let _ = self.flush().await;
        let Some(start_ok) = self.expect_method().await? else {
            return Ok(None);
        };
        let Method::ConnectionStartOk(start_ok) = start_ok else {
            return Err(unexpected(&start_ok));
        };
        let (capabilities, auth_failure_close) =
            handshake::client_capabilities(&start_ok.client_properties);
        let Some(user) = self.login(&start_ok, auth_failure_close)? else {
            return Ok(None);
        };
        let offered = handshake::connection_tune(&self.server.config);
        self.outbox
            .method(0, &Method::ConnectionTune(offered.clone()));
        let _ = self.flush().await;
        let Some(tune_ok) = self.expect_method().await? else {
            return Ok(None);
        };
        let Method::ConnectionTuneOk(tune_ok) = tune_ok else {
            return Err(unexpected(&tune_ok));
        };
        let tuned = handshake::negotiate(&offered, &tune_ok)?;
        self.frame_max_bytes = tuned.frame_max_bytes;
        self.outbox.set_frame_max(tuned.frame_max_bytes);
        let Some(open) = self.expect_method().await? else {
            return Ok(None);
        };
        let Method::ConnectionOpen(open) = open else {
            return Err(unexpected(&open));
        };
        let open_ids = (
            ferrymq_wire::ConnectionOpen::CLASS_ID,
            ferrymq_wire::ConnectionOpen::METHOD_ID,
        );
        let vhost = self
            .server
            .broker
            .open_vhost(&user, &open.virtual_host)
            .map_err(|e| AmqpError::from_broker(e, open_ids))?;
        self.outbox
            .method(0, &Method::ConnectionOpenOk(ConnectionOpenOk::default()));
        let window = self.server.config.client_window_bytes as usize;
        let (client, events) = ClientHandle::new(self.server.broker.new_client_id(), window);
        tracing::debug!(peer = %self.peer, user = %user.name, vhost = %vhost.name(), "connection open");
        let outbox = std::mem::replace(&mut self.outbox, Outbox::new(tuned.frame_max_bytes));
        Ok(Some(Session {
            server: Arc::clone(&self.server),
            vhost,
            user,
            client,
            events,
            outbox,
            channels: Default::default(),
            channel_max: tuned.channel_max,
            frame_max_bytes: tuned.frame_max_bytes,
            capabilities,
            exclusive_queues: Vec::new(),
            channel_epochs: 0,
            published: false,
            pace_debt_ns: 0,
            timed_out: Vec::new(),
            publishes: Default::default(),
            settles: Default::default(),
            route_buf: Vec::new(),
            unfinished: None,
            heartbeat_s: tuned.heartbeat_s,
        }))
    }

    /// Checks start-ok's credentials. `Ok(None)`: refused, and the client (without
    /// authentication_failure_close) only sees the socket close.
    fn login(
        &self,
        start_ok: &ferrymq_wire::ConnectionStartOk,
        auth_failure_close: bool,
    ) -> AmqpResult<Option<User>> {
        let mechanism = start_ok.mechanism.as_str();
        let user = handshake::credentials(mechanism, &start_ok.response)
            .ok_or_else(|| ferrymq_broker::auth::login_refused(mechanism))
            .and_then(|c| {
                self.server
                    .broker
                    .authenticate(&c.username, &c.password, self.peer.ip(), mechanism)
            });
        let error = match user {
            Ok(user) => return Ok(Some(user)),
            Err(error) => error,
        };
        tracing::info!(peer = %self.peer, text = %error.text, "login refused");
        if !auth_failure_close {
            return Ok(None);
        }
        // The client learns only that the login failed, never why (unknown user, wrong
        // password, loopback-only user): rabbit_reader:auth_fail's SafeMsg.
        let refused = ferrymq_broker::auth::login_refused(mechanism);
        let ids = (
            ferrymq_wire::ConnectionStartOk::CLASS_ID,
            ferrymq_wire::ConnectionStartOk::METHOD_ID,
        );
        Err(AmqpError::connection(refused.code, refused.text, ids))
    }

    /// The next method on channel 0, skipping heartbeats.
    async fn expect_method(&mut self) -> AmqpResult<Option<Method>> {
        loop {
            match self.read_frame().await? {
                None => return Ok(None),
                Some(Frame::Heartbeat { .. }) => continue,
                Some(Frame::Method { channel: 0, method }) => return Ok(Some(method)),
                Some(_) => {
                    return Err(AmqpError::connection(
                        code::COMMAND_INVALID,
                        "expected a connection method on channel 0",
                        (0, 0),
                    ))
                }
            }
        }
    }

    async fn serve(mut self, mut session: Session) {
        let end = self.serve_loop(&mut session).await;
        session.close_all().await;
        self.outbox = std::mem::replace(&mut session.outbox, Outbox::new(self.frame_max_bytes));
        match end {
            End::Gone => {}
            End::ClientClosed => {
                let _ = tokio::time::timeout(CLOSE_TIMEOUT, self.flush()).await;
            }
            End::Close(reason) => self.close_with(reason, Some(&mut session)).await,
        }
    }

    async fn serve_loop(&mut self, session: &mut Session) -> End {
        let heartbeat =
            (session.heartbeat_s > 0).then(|| Duration::from_secs(u64::from(session.heartbeat_s)));
        let mut last_read = Instant::now();
        let mut last_write = Instant::now();
        let mut read_paused = false;
        // Publisher pacing: the socket is not read before this (queue events still flow).
        let mut paced_until: Option<Instant> = None;
        let far_future = Instant::now() + Duration::from_secs(86_400 * 365);
        let alarms = self.server.alarms.clone();
        let mut waits = Waits::new(&self.server.alarms, &self.shutdown, far_future);
        // Clients pipeline: frames may already wait behind connection.open.
        if let Err(end) = self.process_buffered(session).await {
            return end;
        }
        loop {
            if !session.outbox.is_empty() {
                let before = session.outbox.queued_bytes();
                if session.outbox.write_to(&self.stream).is_err() {
                    return End::Gone;
                }
                if session.outbox.queued_bytes() != before {
                    last_write = Instant::now();
                    if read_paused {
                        // While we do not read, a peer that takes our bytes is alive.
                        last_read = last_write;
                    }
                }
            }
            if self.blocked && !alarms.borrow().any() {
                self.unblock(session);
                // What the client sent meanwhile waits in the read buffer.
                if let Err(end) = self.process_buffered(session).await {
                    return end;
                }
                continue;
            }
            // Heartbeats: send one when we have been quiet for half the interval, and drop
            // a peer silent for two intervals (as RabbitMQ does). A blocked connection is
            // not read, so it cannot be judged silent.
            let (send_at, dead_at) = match heartbeat {
                Some(interval) if self.blocked => (last_write + interval / 2, far_future),
                Some(interval) => (last_write + interval / 2, last_read + interval * 2),
                None => (far_future, far_future),
            };
            waits.wake_by(send_at.min(dead_at).min(paced_until.unwrap_or(far_future)));
            let want_write = !session.outbox.is_empty();
            let take_events = session.outbox.queued_bytes() < OUTBOX_HIGH_WATERMARK_BYTES;
            read_paused = session.outbox.queued_bytes() >= OUTBOX_READ_PAUSE_BYTES
                || self.blocked
                || paced_until.is_some();
            let woke = std::future::poll_fn(|cx| {
                waits.poll(
                    cx,
                    &self.stream,
                    &mut session.events,
                    Wanted {
                        read: !read_paused,
                        write: want_write,
                        events: take_events,
                    },
                )
            })
            .await;
            if woke.shutdown {
                return End::Close(CloseReason {
                    code: code::CONNECTION_FORCED,
                    text: "broker forced connection closure with reason 'shutdown'".into(),
                    class_id: 0,
                    method_id: 0,
                });
            }
            if woke.socket_failed {
                return End::Gone;
            }
            if woke.timer {
                let now = Instant::now();
                if paced_until.is_some_and(|at| at <= now) {
                    paced_until = None;
                }
                if now >= dead_at {
                    tracing::info!(peer = %self.peer, "missed heartbeats from client, closing");
                    return End::Gone;
                }
                if now >= send_at {
                    session.outbox.heartbeat();
                    last_write = now;
                }
            }
            if woke.readable {
                match self.read_available(session).await {
                    Ok(true) => last_read = Instant::now(),
                    Ok(false) => {}
                    Err(end) => return end,
                }
                let debt = std::mem::take(&mut session.pace_debt_ns);
                if debt > 0 {
                    let pause = Duration::from_nanos(debt).min(PACE_PAUSE_MAX);
                    paced_until = Some(Instant::now() + pause);
                }
            }
            if let Some(event) = woke.event {
                let Some(event) = event else { return End::Gone };
                session.handle_event(event);
                for _ in 1..EVENTS_PER_WAKEUP_MAX {
                    // Stop at the watermark: a burst of large deliveries must not
                    // overshoot it by a whole batch.
                    if session.outbox.queued_bytes() >= OUTBOX_HIGH_WATERMARK_BYTES {
                        break;
                    }
                    let Ok(event) = session.events.try_recv() else {
                        break;
                    };
                    session.handle_event(event);
                }
                session.flush_confirms();
                session.close_timed_out_channels().await;
            }
        }
    }

    /// Reads what the socket has and handles every complete frame. Returns whether
    /// anything was read.
    async fn read_available(&mut self, session: &mut Session) -> Result<bool, End> {
        // Small reads for quiet connections, full chunks once a read fills what it had.
        let want = if self.read_buf.capacity() >= READ_CHUNK_BYTES {
            READ_CHUNK_BYTES
        } else {
            READ_CHUNK_SMALL_BYTES
        };
        self.read_buf.reserve(want);
        match self.read_draining() {
            Ok(0) => return Err(End::Gone),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(false),
            Err(_) => return Err(End::Gone),
        }
        self.process_buffered(session).await?;
        Ok(true)
    }

    /// Reads into the read buffer what the socket has, up to its spare capacity.
    ///
    /// A read that does not fill the buffer empties the socket. tokio keeps a socket marked
    /// readable until a read fails with WouldBlock, so the next loop would read again at
    /// once: one more system call for nothing, or, under load, for the one frame that came
    /// meanwhile (a consumer acking each message sends one ack at a time). So a short read
    /// also clears the mark, and the next read waits for the reactor's next epoll, which
    /// reports every socket at once while frames gather. No wake-up is lost: the mark that
    /// `try_io` clears is the one it saw before the read; a newer one (data that arrived
    /// after the read) stays.
    fn read_draining(&mut self) -> std::io::Result<usize> {
        let room = self.read_buf.capacity() - self.read_buf.len();
        let mut outcome = Err(std::io::ErrorKind::WouldBlock.into());
        let _ = self.stream.try_io(tokio::io::Interest::READABLE, || {
            outcome = self.stream.try_read_buf(&mut self.read_buf);
            match outcome {
                Ok(read) if read > 0 && read < room => Err(std::io::ErrorKind::WouldBlock.into()),
                _ => Ok(()),
            }
        });
        outcome
    }

    /// Handles every complete frame in the read buffer.
    async fn process_buffered(&mut self, session: &mut Session) -> Result<(), End> {
        while !self.blocked {
            let frame = match frame::decode_frame(&mut self.read_buf, self.frame_max_bytes) {
                Ok(Some(frame)) => frame,
                Ok(None) => break,
                Err(e) => return Err(End::Close(close_reason(e.into()))),
            };
            // Channel 0 and heartbeats never take the fast path: it wants a channel.
            let outcome = match session.handle_frame_now(frame) {
                Ok(Now::Done) => {
                    if session.unfinished.is_some() {
                        session.finish_publish().await;
                    }
                    Ok(None)
                }
                Ok(Now::CloseChannel(id, reason)) => {
                    session.close_channel_with(id, reason).await;
                    Ok(None)
                }
                Ok(Now::Later(frame)) => self.handle_frame(session, frame).await,
                Err(e) => Err(e),
            };
            match outcome {
                Ok(None) => {}
                Ok(Some(end)) => return Err(end),
                Err(e) => return Err(End::Close(close_reason(e))),
            }
            if std::mem::take(&mut session.published) {
                self.block_if_alarmed(session);
                // A publish that never waited spent none of the task's scheduling budget:
                // spend it here, or a publisher with a full read buffer would starve the
                // queue and consumer tasks sharing its worker thread.
                tokio::task::consume_budget().await;
            }
        }
        session.flush_pending().await;
        session.flush_confirms();
        session.close_timed_out_channels().await;
        Ok(())
    }

    /// A publish arrived: under a resource alarm the connection stops being read.
    fn block_if_alarmed(&mut self, session: &mut Session) {
        let alarms = *self.server.alarms.borrow();
        if !alarms.any() || self.blocked {
            return;
        }
        self.blocked = true;
        tracing::info!(peer = %self.peer, reason = alarms.reason(), "blocking a publishing connection");
        if session.capabilities.connection_blocked {
            let blocked = ConnectionBlocked {
                reason: ShortStr::from(alarms.reason()),
            };
            session
                .outbox
                .method(0, &Method::ConnectionBlocked(blocked));
        }
    }

    fn unblock(&mut self, session: &mut Session) {
        self.blocked = false;
        tracing::info!(peer = %self.peer, "unblocking a connection");
        if session.capabilities.connection_blocked {
            session
                .outbox
                .method(0, &Method::ConnectionUnblocked(ConnectionUnblocked));
        }
    }

    async fn handle_frame(
        &mut self,
        session: &mut Session,
        frame: Frame,
    ) -> AmqpResult<Option<End>> {
        match frame {
            Frame::Heartbeat { .. } => Ok(None),
            Frame::Method { channel: 0, method } => match method {
                Method::ConnectionClose(_) => {
                    session
                        .outbox
                        .method(0, &Method::ConnectionCloseOk(ConnectionCloseOk));
                    Ok(Some(End::ClientClosed))
                }
                Method::ConnectionUpdateSecret(_) => {
                    session.outbox.method(
                        0,
                        &Method::ConnectionUpdateSecretOk(ConnectionUpdateSecretOk),
                    );
                    Ok(None)
                }
                // rabbit_reader:handle_method0's catch-all: 504 naming the method.
                other => Err(AmqpError::connection(
                    code::CHANNEL_ERROR,
                    format!(
                        "unexpected method {} in connection state running",
                        other.name()
                    ),
                    (other.class_id(), other.method_id()),
                )),
            },
            Frame::Header { channel: 0, .. } | Frame::Body { channel: 0, .. } => Err(
                AmqpError::connection(code::UNEXPECTED_FRAME, "content frame on channel 0", (0, 0)),
            ),
            other => session.handle_frame(other).await.map(|()| None),
        }
    }

    /// Sends connection.close, waits (briefly) for close-ok, and drops the socket.
    async fn close_with(&mut self, reason: CloseReason, session: Option<&mut Session>) {
        let _ = session;
        let close = ConnectionClose {
            reply_code: reason.code,
            reply_text: reason.reply_text().into(),
            class_id: reason.class_id,
            method_id: reason.method_id,
        };
        self.outbox.method(0, &Method::ConnectionClose(close));
        let deadline = Instant::now() + CLOSE_TIMEOUT;
        if !matches!(
            tokio::time::timeout_at(deadline, self.flush()).await,
            Ok(Ok(()))
        ) {
            return;
        }
        // Until close-ok everything else is dropped unprocessed (rabbit_reader: "closing").
        while let Ok(Ok(Some(frame))) = tokio::time::timeout_at(deadline, self.read_frame()).await {
            match frame {
                Frame::Method {
                    channel: 0,
                    method: Method::ConnectionCloseOk(_),
                } => break,
                Frame::Method {
                    channel: 0,
                    method: Method::ConnectionClose(_),
                } => {
                    // Both sides closed at once: each answers the other's close.
                    self.outbox
                        .method(0, &Method::ConnectionCloseOk(ConnectionCloseOk));
                    let _ = tokio::time::timeout_at(deadline, self.flush()).await;
                    break;
                }
                _ => {}
            }
        }
    }
}

/// Which of the connection's own sources the loop waits on this turn.
struct Wanted {
    read: bool,
    write: bool,
    events: bool,
}

/// What one turn of the connection loop woke up for: every source that was ready, so that
/// reading and queue events are both served in a turn and neither can starve the other.
#[derive(Default)]
struct Woke {
    readable: bool,
    socket_failed: bool,
    /// `Some(None)`: the event mailbox is closed.
    event: Option<Option<ClientEvent>>,
    timer: bool,
    shutdown: bool,
}

/// A watch receiver's `changed()` kept across turns of the loop: its registration with the
/// watch (a lock on a list every connection shares) is made once per change, not per turn.
type Changed<T> = Pin<Box<dyn Future<Output = (bool, watch::Receiver<T>)> + Send>>;

fn changed<T: Send + Sync + 'static>(mut rx: watch::Receiver<T>) -> Changed<T> {
    Box::pin(async move {
        let live = rx.changed().await.is_ok();
        (live, rx)
    })
}

/// Wakes the connection task and notes that it did, so that the future it was handed to is
/// polled again only then. A pending watch `changed()` takes its watch's lock on every poll,
/// and every connection waits on the same two watches.
struct FlagWaker {
    fired: AtomicBool,
    task: AtomicWaker,
}

impl Wake for FlagWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.fired.store(true, Ordering::Release);
        self.task.wake();
    }
}

/// A future polled only after its [`FlagWaker`] fired (and once at first).
struct Flagged<F> {
    future: F,
    flag: Arc<FlagWaker>,
    waker: Waker,
}

impl<F: Future + Unpin> Flagged<F> {
    fn new(future: F) -> Self {
        let flag = Arc::new(FlagWaker {
            fired: AtomicBool::new(true),
            task: AtomicWaker::new(),
        });
        let waker = Waker::from(Arc::clone(&flag));
        Flagged {
            future,
            flag,
            waker,
        }
    }

    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<F::Output> {
        self.flag.task.register(cx.waker());
        if !self.flag.fired.swap(false, Ordering::AcqRel) {
            return Poll::Pending;
        }
        Pin::new(&mut self.future).poll(&mut Context::from_waker(&self.waker))
    }
}

/// The waits of the connection loop that outlive one turn. The loop turns once per wake-up,
/// and a fresh `sleep` or `changed()` per turn costs a lock to register and another to drop.
/// So the one timer (heartbeats and pacing) moves only when it must fire sooner; when it
/// fires early, the loop finds nothing due and sets it again.
struct Waits {
    shutdown: Flagged<Changed<bool>>,
    /// `None` once the alarm monitor is gone.
    alarms: Option<Flagged<Changed<crate::alarm::Alarms>>>,
    timer: Pin<Box<Sleep>>,
    timer_at: Instant,
    far_future: Instant,
}

impl Waits {
    fn new(
        alarms: &watch::Receiver<crate::alarm::Alarms>,
        shutdown: &watch::Receiver<bool>,
        far_future: Instant,
    ) -> Self {
        Waits {
            shutdown: Flagged::new(changed(shutdown.clone())),
            alarms: Some(Flagged::new(changed(alarms.clone()))),
            timer: Box::pin(sleep_until(far_future)),
            timer_at: far_future,
            far_future,
        }
    }

    /// Makes the timer fire no later than `at`.
    fn wake_by(&mut self, at: Instant) {
        if at < self.timer_at {
            self.timer.as_mut().reset(at);
            self.timer_at = at;
        }
    }

    fn poll(
        &mut self,
        cx: &mut Context<'_>,
        stream: &TcpStream,
        events: &mut mpsc::UnboundedReceiver<ClientEvent>,
        wanted: Wanted,
    ) -> Poll<Woke> {
        let mut woke = Woke::default();
        let mut ready = false;
        if self.shutdown.poll(cx).is_ready() {
            woke.shutdown = true;
            return Poll::Ready(woke);
        }
        if let Some(alarms) = self.alarms.as_mut() {
            if let Poll::Ready((live, rx)) = alarms.poll(cx) {
                // A change only matters to the next turn, which reads the current alarms.
                self.alarms = live.then(|| Flagged::new(changed(rx)));
                ready = true;
            }
        }
        if self.timer.as_mut().poll(cx).is_ready() {
            self.timer.as_mut().reset(self.far_future);
            self.timer_at = self.far_future;
            woke.timer = true;
            ready = true;
        }
        if wanted.read {
            match stream.poll_read_ready(cx) {
                Poll::Ready(Ok(())) => woke.readable = true,
                Poll::Ready(Err(_)) => woke.socket_failed = true,
                Poll::Pending => {}
            }
        }
        if wanted.write {
            match stream.poll_write_ready(cx) {
                // The loop writes at the top of every turn.
                Poll::Ready(Ok(())) => ready = true,
                Poll::Ready(Err(_)) => woke.socket_failed = true,
                Poll::Pending => {}
            }
        }
        if wanted.events {
            if let Poll::Ready(event) = events.poll_recv(cx) {
                woke.event = Some(event);
            }
        }
        if ready || woke.readable || woke.socket_failed || woke.event.is_some() {
            Poll::Ready(woke)
        } else {
            Poll::Pending
        }
    }
}

fn close_reason(error: AmqpError) -> CloseReason {
    match error {
        AmqpError::Connection(reason) | AmqpError::Channel(reason) => reason,
    }
}

fn unexpected(method: &Method) -> AmqpError {
    AmqpError::connection(
        code::COMMAND_INVALID,
        format!("unexpected method {} during the handshake", method.name()),
        (method.class_id(), method.method_id()),
    )
}
