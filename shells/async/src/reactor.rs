//! The session thread's own reactor: one `polling::Poller` (epoll / kqueue / IOCP) that the
//! thread waits on itself, so no other thread stands between a socket and the session (see
//! the crate docs for why not async-io's).
//!
//! * [`Reactor::block_on_until`] runs a future on this thread: poll it, then wait on the
//!   poller until a socket is ready, a waker fires (from any thread: [`Poller::notify`]),
//!   the earliest [`Sleep`] is due, or the caller's deadline comes, and poll again.
//! * [`Tcp`] is a non-blocking `TcpStream` registered with the poller, with
//!   `AsyncRead` / `AsyncWrite`. A read or write that would block stores its task's waker
//!   and arms the socket's interest in that direction: oneshot, re-armed only while a task
//!   waits, so a socket nobody waits to write to never reports writability.
//! * [`Sleep`] is a timer on the same wait (the connect attempt's deadline).

use std::collections::BTreeMap;
use std::future::Future;
use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Instant;

use futures_lite::io::{AsyncRead, AsyncWrite};
use polling::{Event, Events, Poller};

/// The poller, the registered sockets and the pending timers of one thread's loop.
#[derive(Debug)]
pub struct Reactor {
    poller: Poller,
    /// The registered sockets by poller key, to dispatch readiness to their wakers.
    sources: Mutex<BTreeMap<usize, Arc<Source>>>,
    /// Pending [`Sleep`]s by (due instant, id).
    timers: Mutex<BTreeMap<(Instant, usize), Waker>>,
    /// Source keys and timer ids.
    next_id: AtomicUsize,
    /// [`RUNNING`], [`WAITING`] or [`WOKEN`]: lets a waker skip the poller's notification
    /// while the thread is not waiting (it polls again before it waits anyway).
    state: AtomicU8,
}

/// How many times in a row [`Reactor::block_on_until`] polls a future that woke itself
/// again at once, without looking at the poller. A task waking another on this thread (a
/// reader task handing a frame to the session task) needs no wait, and a wait costs five
/// system calls (the poller's timer and notifier included); the bound keeps a future that
/// keeps waking itself from starving the sockets.
pub const POLLS_WITHOUT_WAIT: u32 = 16;

/// The thread is polling the future (a waker only marks it [`WOKEN`]).
const RUNNING: u8 = 0;
/// The thread is in (or about to enter) the poller's wait: a waker must notify the poller.
const WAITING: u8 = 1;
/// A waker fired since the thread last polled the future: it does not wait.
const WOKEN: u8 = 2;

/// Locks `m`, whatever a panicking holder left (every critical section here leaves the
/// data consistent).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Reactor {
    /// A reactor with a fresh poller.
    pub fn new() -> io::Result<Arc<Reactor>> {
        Ok(Arc::new(Reactor {
            poller: Poller::new()?,
            sources: Mutex::new(BTreeMap::new()),
            timers: Mutex::new(BTreeMap::new()),
            next_id: AtomicUsize::new(0),
            state: AtomicU8::new(RUNNING),
        }))
    }

    /// Runs `future` on this thread to its end (see [`Reactor::block_on_until`]), with no
    /// deadline of the caller's.
    pub fn block_on<T>(self: &Arc<Self>, future: impl Future<Output = T>) -> T {
        self.block_on_until(|| None, future)
    }

    /// Runs `future` on this thread: polls it, then waits on the poller until a socket it
    /// waits on is ready, a waker fires, a [`Sleep`] is due or the instant `deadline`
    /// returns (asked before each wait; `None`: no deadline) comes, and polls it again. The
    /// deadline wakes the thread through the poller's own timeout, and nothing but its
    /// future notices it: the future checks the clock when polled.
    pub fn block_on_until<T>(
        self: &Arc<Self>,
        deadline: impl Fn() -> Option<Instant>,
        future: impl Future<Output = T>,
    ) -> T {
        let waker = Waker::from(Arc::new(Notify(Arc::clone(self))));
        let cx = &mut Context::from_waker(&waker);
        let mut future = pin!(future);
        let mut events = Events::new();
        let mut skipped = 0;
        loop {
            if let Poll::Ready(out) = future.as_mut().poll(cx) {
                return out;
            }
            let woken = self
                .state
                .compare_exchange(RUNNING, WAITING, Ordering::SeqCst, Ordering::SeqCst)
                .is_err();
            events.clear();
            let waited = if woken && skipped < POLLS_WITHOUT_WAIT {
                // Woken meanwhile: poll again at once.
                skipped += 1;
                Ok(0)
            } else {
                skipped = 0;
                // Woken meanwhile, and polled again often enough: only collect what is
                // ready already.
                let until = if woken {
                    Some(Instant::now())
                } else {
                    earliest(deadline(), self.next_timer())
                };
                match until {
                    Some(at) => self.poller.wait_deadline(&mut events, at),
                    None => self.poller.wait(&mut events, None),
                }
            };
            // Before the dispatch: what it wakes on this thread needs no notification.
            self.state.store(RUNNING, Ordering::SeqCst);
            // A failed wait (it retries interruptions itself) has nothing to dispatch; the
            // future is polled again, and its deadline still holds.
            if waited.is_ok() {
                self.dispatch(&events);
            }
            self.fire_timers(Instant::now());
        }
    }

    /// Wakes the tasks waiting on the sockets that became ready, and re-arms what they
    /// still wait for in the other direction.
    fn dispatch(&self, events: &Events) {
        for event in events.iter() {
            let Some(source) = lock(&self.sources).get(&event.key).cloned() else {
                continue;
            };
            let mut waiters = lock(&source.waiters);
            // Oneshot: the event disarmed the socket.
            waiters.armed = (false, false);
            let mut ready = Vec::new();
            if event.readable {
                ready.append(&mut waiters.readers);
            }
            if event.writable {
                ready.append(&mut waiters.writers);
            }
            let _ = source.arm(&self.poller, &mut waiters);
            drop(waiters);
            ready.into_iter().for_each(Waker::wake);
        }
    }

    /// The earliest pending timer.
    fn next_timer(&self) -> Option<Instant> {
        lock(&self.timers).keys().next().map(|(at, _)| *at)
    }

    /// Wakes the timers due at `now`.
    fn fire_timers(&self, now: Instant) {
        let due = {
            let mut timers = lock(&self.timers);
            let later = timers.split_off(&(now, usize::MAX));
            std::mem::replace(&mut *timers, later)
        };
        due.into_values().for_each(Waker::wake);
    }

    fn next_id(&self) -> usize {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }
}

/// The earlier of two optional instants (`None`: never).
fn earliest(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// The waker of [`Reactor::block_on_until`]'s future: marks the thread woken, and notifies
/// the poller only when the thread waits in it.
struct Notify(Arc<Reactor>);

impl Wake for Notify {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        if self.0.state.swap(WOKEN, Ordering::SeqCst) == WAITING {
            // It fails only when the poller itself is broken; then the wait fails too.
            let _ = self.0.poller.notify();
        }
    }
}

/// A registered socket: its stream and the tasks waiting for it to become readable or
/// writable.
#[derive(Debug)]
struct Source {
    key: usize,
    stream: TcpStream,
    waiters: Mutex<Waiters>,
}

#[derive(Debug, Default)]
struct Waiters {
    readers: Vec<Waker>,
    writers: Vec<Waker>,
    /// The interest armed in the poller (read, write); an event disarms both.
    armed: (bool, bool),
}

impl Source {
    /// Arms the poller for the directions some task waits on, unless it is armed so
    /// already.
    fn arm(&self, poller: &Poller, waiters: &mut Waiters) -> io::Result<()> {
        let want = (!waiters.readers.is_empty(), !waiters.writers.is_empty());
        if want == waiters.armed || want == (false, false) {
            return Ok(());
        }
        poller.modify(&self.stream, Event::new(self.key, want.0, want.1))?;
        waiters.armed = want;
        Ok(())
    }
}

/// Which way a task waits.
#[derive(Clone, Copy)]
enum Direction {
    Read,
    Write,
}

/// A non-blocking TCP socket registered with a [`Reactor`]. Dropping it deregisters and
/// closes it.
#[derive(Debug)]
pub struct Tcp {
    reactor: Arc<Reactor>,
    source: Arc<Source>,
}

impl Tcp {
    /// Makes `stream` non-blocking and registers it (with no interest yet).
    pub fn new(reactor: &Arc<Reactor>, stream: TcpStream) -> io::Result<Tcp> {
        stream.set_nonblocking(true)?;
        let key = reactor.next_id();
        // SAFETY: the source is deleted from the poller (`Drop`) before its stream closes:
        // the stream lives in the `Source`, which `Drop` deletes first.
        unsafe { reactor.poller.add(&stream, Event::none(key))? };
        let source = Arc::new(Source {
            key,
            stream,
            waiters: Mutex::new(Waiters::default()),
        });
        lock(&reactor.sources).insert(key, Arc::clone(&source));
        Ok(Tcp {
            reactor: Arc::clone(reactor),
            source,
        })
    }

    /// The socket.
    pub fn get_ref(&self) -> &TcpStream {
        &self.source.stream
    }

    /// Runs `op` on the socket; if it would block, registers the task to wake when the
    /// socket is ready in `dir` and returns `Pending`.
    fn poll_io<T>(
        &self,
        cx: &mut Context<'_>,
        dir: Direction,
        mut op: impl FnMut(&TcpStream) -> io::Result<T>,
    ) -> Poll<io::Result<T>> {
        loop {
            match op(&self.source.stream) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                done => return Poll::Ready(done),
            }
            let mut waiters = lock(&self.source.waiters);
            let list = match dir {
                Direction::Read => &mut waiters.readers,
                Direction::Write => &mut waiters.writers,
            };
            if !list.iter().any(|w| w.will_wake(cx.waker())) {
                list.push(cx.waker().clone());
            }
            // Level-triggered: readiness that came after `op` reports at once.
            if let Err(e) = self.source.arm(&self.reactor.poller, &mut waiters) {
                return Poll::Ready(Err(e));
            }
            return Poll::Pending;
        }
    }
}

impl Drop for Tcp {
    fn drop(&mut self) {
        lock(&self.reactor.sources).remove(&self.source.key);
        let _ = self.reactor.poller.delete(&self.source.stream);
    }
}

impl AsyncRead for Tcp {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_io(cx, Direction::Read, |mut s| s.read(buf))
    }
}

impl AsyncWrite for Tcp {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_io(cx, Direction::Write, |mut s| s.write(buf))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(self.source.stream.shutdown(Shutdown::Write))
    }
}

/// A timer of a [`Reactor`]: ready once its instant has passed.
#[derive(Debug)]
pub struct Sleep {
    reactor: Arc<Reactor>,
    at: Instant,
    /// Its key in the reactor's timers while it waits there.
    id: Option<usize>,
}

impl Reactor {
    /// A timer ready at `at`.
    pub fn sleep_until(self: &Arc<Self>, at: Instant) -> Sleep {
        Sleep {
            reactor: Arc::clone(self),
            at,
            id: None,
        }
    }
}

impl Future for Sleep {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = &mut *self;
        let mut timers = lock(&this.reactor.timers);
        if Instant::now() >= this.at {
            if let Some(id) = this.id.take() {
                timers.remove(&(this.at, id));
            }
            return Poll::Ready(());
        }
        let id = *this.id.get_or_insert_with(|| this.reactor.next_id());
        timers.insert((this.at, id), cx.waker().clone());
        Poll::Pending
    }
}

impl Drop for Sleep {
    fn drop(&mut self) {
        if let Some(id) = self.id {
            lock(&self.reactor.timers).remove(&(self.at, id));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::pin::pin;
    use std::thread;
    use std::time::{Duration, Instant};

    use futures_lite::{future, AsyncReadExt, AsyncWriteExt};

    use super::{Reactor, Tcp};

    /// A registered client socket and the std server side of the same connection.
    fn pair(reactor: &std::sync::Arc<Reactor>) -> (Tcp, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        (Tcp::new(reactor, client).unwrap(), server)
    }

    #[test]
    fn a_read_that_would_block_finishes_once_the_bytes_come() {
        let reactor = Reactor::new().unwrap();
        let (mut tcp, mut server) = pair(&reactor);
        let mut buf = [0u8; 4];
        reactor.block_on(async {
            let mut read = pin!(tcp.read_exact(&mut buf));
            assert!(
                future::poll_once(&mut read).await.is_none(),
                "nothing sent yet"
            );
            server.write_all(b"ping").unwrap();
            read.await.unwrap();
        });
        assert_eq!(&buf, b"ping");
    }

    #[test]
    fn a_write_that_would_block_finishes_once_the_peer_reads() {
        let reactor = Reactor::new().unwrap();
        let (mut tcp, mut server) = pair(&reactor);
        // Far more than the socket buffers hold: the write blocks until the reader drains.
        let data = vec![7u8; 16 << 20];
        let reader = thread::spawn(move || {
            let mut got = Vec::new();
            server.read_to_end(&mut got).unwrap();
            got.len()
        });
        reactor.block_on(async {
            tcp.write_all(&data).await.unwrap();
            tcp.close().await.unwrap();
        });
        assert_eq!(reader.join().unwrap(), data.len());
    }

    #[test]
    fn a_read_and_a_write_of_two_tasks_wait_on_one_socket() {
        let reactor = Reactor::new().unwrap();
        let (tcp, mut server) = pair(&reactor);
        let data = vec![1u8; 8 << 20];
        let echo = thread::spawn(move || {
            // Reads everything, then answers one byte.
            let mut got = vec![0u8; 8 << 20];
            server.read_exact(&mut got).unwrap();
            server.write_all(b"!").unwrap();
        });
        // Both halves of one socket, as the split WebSocket's reader and writer tasks.
        let (mut rd, mut wr) = futures_lite::io::split(tcp);
        let (read, ()) = reactor.block_on(future::zip(
            async {
                let mut b = [0u8; 1];
                rd.read_exact(&mut b).await.unwrap();
                b[0]
            },
            async { wr.write_all(&data).await.unwrap() },
        ));
        assert_eq!(read, b'!');
        echo.join().unwrap();
    }

    #[test]
    fn a_future_that_keeps_waking_itself_does_not_starve_the_sockets() {
        let reactor = Reactor::new().unwrap();
        let (mut tcp, mut server) = pair(&reactor);
        let ex = async_executor::LocalExecutor::new();
        let done = std::rc::Rc::new(std::cell::Cell::new(false));
        let read_done = std::rc::Rc::clone(&done);
        let reader = ex.spawn(async move {
            let mut b = [0u8; 1];
            tcp.read_exact(&mut b).await.unwrap();
            read_done.set(true);
        });
        let spin = async {
            // The reader waits on the socket first; then the byte comes.
            future::yield_now().await;
            server.write_all(b"x").unwrap();
            while !done.get() {
                future::yield_now().await;
            }
        };
        reactor.block_on(ex.run(spin));
        reactor.block_on(reader);
    }

    #[test]
    fn a_sleep_ends_at_its_instant_and_a_dropped_one_leaves_no_timer() {
        let reactor = Reactor::new().unwrap();
        let at = Instant::now() + Duration::from_millis(20);
        let never = reactor.sleep_until(Instant::now() + Duration::from_secs(3600));
        reactor.block_on(future::or(reactor.sleep_until(at), never));
        assert!(Instant::now() >= at);
        assert_eq!(reactor.next_timer(), None);
    }

    #[test]
    fn a_waker_from_another_thread_ends_the_wait() {
        let reactor = Reactor::new().unwrap();
        let (tx, rx) = async_channel::bounded(1);
        let sender = thread::spawn(move || {
            thread::sleep(Duration::from_millis(20));
            tx.send_blocking(42).unwrap();
        });
        assert_eq!(reactor.block_on(rx.recv()), Ok(42));
        sender.join().unwrap();
    }

    #[test]
    fn the_callers_deadline_ends_the_wait_with_nothing_ready() {
        let reactor = Reactor::new().unwrap();
        let at = Instant::now() + Duration::from_millis(20);
        let passed = future::poll_fn(|_| {
            if Instant::now() >= at {
                std::task::Poll::Ready(())
            } else {
                std::task::Poll::Pending
            }
        });
        reactor.block_on_until(|| Some(at), passed);
        assert!(Instant::now() >= at);
    }
}
