//! Connections: one acceptor thread, and a pool of threads that each serve one
//! connection at a time, reading its requests, having each answered and writing the
//! answers, for as long as the client keeps the connection open.
//!
//! A connection is handed to an idle thread of its own, directly: the acceptor takes
//! the thread off the idle list and sends it the connection, so a connection is never
//! queued behind connections that stay open, however many clients keep connections in
//! their pools and however fast they connect. When no thread is idle, the acceptor
//! starts one for the connection. Spare threads are kept started ahead, so that a new
//! connection is not counted late for waiting on a new thread to be first scheduled:
//! the simulator counts a call when its request has been read, and clients tuned to
//! the published limits leave only a few milliseconds of margin.
//!
//! Every open connection is registered, so that a reset drops exactly the connection of
//! its request and [`Server::stop`] can shut down the keep-alive ones and wait for every
//! thread.

use super::http::{self, ReadError, Request};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::io::{self, BufReader};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError, Sender};
use std::thread::JoinHandle;
use std::time::Duration;

/// Idle threads kept ready for new connections.
const SPARES: usize = 8;

/// How long a thread beyond the spares stays idle before it ends.
const IDLE_LIFETIME: Duration = Duration::from_secs(10);

/// What to do with a request that was read.
pub(crate) enum Action {
    /// Answer it; the connection stays open if the client keeps it alive.
    Respond {
        status: u16,
        headers: Vec<(&'static str, String)>,
        body: Vec<u8>,
    },
    /// Close the connection without answering.
    Reset,
}

/// Decides the answer to one request; called from the connection's thread.
pub(crate) type Handler = dyn Fn(&Request) -> Action + Send + Sync;

/// A listening server. Stops on [`Server::stop`] or when dropped.
pub(crate) struct Server {
    addr: SocketAddr,
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
}

struct Shared {
    stopping: AtomicBool,
    handler: Box<Handler>,
    max_body: u64,
    pool: Mutex<Pool>,
    /// The open connections by id, with a handle on each socket to shut it down.
    open: Mutex<HashMap<u64, TcpStream>>,
}

#[derive(Default)]
struct Pool {
    /// Threads waiting for a connection, each with the sender it receives it on.
    idle: Vec<(u64, Sender<Connection>)>,
    /// Threads started as spares that have not yet joined `idle`.
    starting: usize,
    threads: Vec<JoinHandle<()>>,
    next_thread: u64,
    next_connection: u64,
}

struct Connection {
    id: u64,
    stream: TcpStream,
}

impl Server {
    /// Serves `listener` until stopped.
    pub(crate) fn start(
        listener: TcpListener,
        max_body: u64,
        handler: Box<Handler>,
    ) -> io::Result<Server> {
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            stopping: AtomicBool::new(false),
            handler,
            max_body,
            pool: Mutex::new(Pool::default()),
            open: Mutex::new(HashMap::new()),
        });
        add_spares(&shared, &mut shared.pool.lock());
        let acceptor = {
            let shared = Arc::clone(&shared);
            std::thread::Builder::new()
                .name("quotagate-sim-accept".to_owned())
                .spawn(move || accept_loop(&listener, &shared))
        };
        let mut server = Server {
            addr,
            shared,
            acceptor: None,
        };
        match acceptor {
            Ok(acceptor) => server.acceptor = Some(acceptor),
            Err(e) => {
                server.end_threads();
                return Err(e);
            }
        }
        Ok(server)
    }

    /// Closes the port, shuts down every open connection (a request being answered is
    /// cut off) and waits for every thread of the server.
    pub(crate) fn stop(&mut self) {
        let Some(acceptor) = self.acceptor.take() else {
            return;
        };
        self.shared.stopping.store(true, Ordering::SeqCst);
        // Wakes the acceptor if it waits in accept(); it sees `stopping` and ends, which
        // drops the listener. If the connection fails, the acceptor is not waiting.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        let _ = acceptor.join();
        self.end_threads();
    }

    /// Ends the connection threads; `stopping` is set and nothing accepts any more.
    fn end_threads(&mut self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        let threads = {
            let mut pool = self.shared.pool.lock();
            // Dropping the senders ends the idle threads; busy ones see `stopping`
            // before they would wait again.
            pool.idle.clear();
            std::mem::take(&mut pool.threads)
        };
        for (_, stream) in self.shared.open.lock().drain() {
            let _ = stream.shutdown(Shutdown::Both);
        }
        for thread in threads {
            let _ = thread.join();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

fn accept_loop(listener: &TcpListener, shared: &Arc<Shared>) {
    loop {
        let accepted = listener.accept();
        if shared.stopping.load(Ordering::SeqCst) {
            return;
        }
        match accepted {
            Ok((stream, _)) => dispatch(stream, shared),
            // Out of descriptors or an aborted handshake: try again shortly.
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
}

/// Registers the connection and hands it to an idle thread, or to a new one; then tops
/// up the spares. A connection that no thread can take is closed, not left unserved.
fn dispatch(stream: TcpStream, shared: &Arc<Shared>) {
    let Ok(handle) = stream.try_clone() else {
        return;
    };
    let mut pool = shared.pool.lock();
    let id = pool.next_connection;
    pool.next_connection += 1;
    shared.open.lock().insert(id, handle);
    let mut connection = Connection { id, stream };
    loop {
        match pool.idle.pop() {
            Some((_, thread)) => match thread.send(connection) {
                Ok(()) => break,
                // That thread has ended: try the next one.
                Err(mpsc::SendError(c)) => connection = c,
            },
            None => {
                if !start_thread(shared, &mut pool, Some(connection)) {
                    shared.open.lock().remove(&id);
                }
                break;
            }
        }
    }
    add_spares(shared, &mut pool);
}

fn add_spares(shared: &Arc<Shared>, pool: &mut Pool) {
    while pool.idle.len() + pool.starting < SPARES {
        if !start_thread(shared, pool, None) {
            return;
        }
        pool.starting += 1;
    }
}

/// Starts a connection thread, serving `first` if given. False if it could not start.
fn start_thread(shared: &Arc<Shared>, pool: &mut Pool, first: Option<Connection>) -> bool {
    pool.threads.retain(|t| !t.is_finished());
    let number = pool.next_thread;
    pool.next_thread += 1;
    let shared = Arc::clone(shared);
    let spawned = std::thread::Builder::new()
        .name(format!("quotagate-sim-{number}"))
        .spawn(move || connection_thread(&shared, number, first));
    match spawned {
        Ok(thread) => {
            pool.threads.push(thread);
            true
        }
        Err(_) => false,
    }
}

/// Serves connections one after the other: `first`, then those it is handed while idle.
fn connection_thread(shared: &Shared, number: u64, first: Option<Connection>) {
    let mut starting = first.is_none();
    let mut next = first;
    loop {
        if let Some(connection) = next.take() {
            serve_connection(&connection.stream, shared);
            shared.open.lock().remove(&connection.id);
        }
        let (sender, receiver) = mpsc::channel();
        {
            let mut pool = shared.pool.lock();
            if std::mem::take(&mut starting) {
                pool.starting -= 1;
            }
            if shared.stopping.load(Ordering::SeqCst) {
                return;
            }
            pool.idle.push((number, sender));
        }
        next = wait(shared, number, &receiver);
        if next.is_none() {
            return;
        }
    }
}

/// Waits on the idle list for a connection. `None` when the server stops, or when the
/// thread has been idle for [`IDLE_LIFETIME`] while more than [`SPARES`] threads are.
fn wait(shared: &Shared, number: u64, receiver: &mpsc::Receiver<Connection>) -> Option<Connection> {
    loop {
        match receiver.recv_timeout(IDLE_LIFETIME) {
            Ok(connection) => return Some(connection),
            Err(RecvTimeoutError::Disconnected) => return None,
            Err(RecvTimeoutError::Timeout) => {
                let mut pool = shared.pool.lock();
                match pool.idle.iter().position(|(n, _)| *n == number) {
                    // Taken off the list meanwhile: its connection was sent under the lock
                    // (or the server stops, and nothing was).
                    None => return receiver.try_recv().ok(),
                    Some(i) if pool.idle.len() > SPARES => {
                        pool.idle.swap_remove(i);
                        return None;
                    }
                    Some(_) => {}
                }
            }
        }
    }
}

/// Serves the requests of one connection, in order, until the client closes it, asks to
/// close it, a reset drops it or the server stops.
fn serve_connection(stream: &TcpStream, shared: &Shared) {
    let _ = stream.set_nodelay(true);
    let Ok(read_half) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(read_half);
    let mut writer = stream;
    while !shared.stopping.load(Ordering::SeqCst) {
        let request = match http::read_request(&mut reader, &mut writer, shared.max_body) {
            Ok(Some(request)) => request,
            Ok(None) | Err(ReadError::Io) => break,
            Err(ReadError::Malformed { status, reason }) => {
                let body = format!("{status} {reason}\n").into_bytes();
                let headers = [("Content-Type", "text/plain; charset=utf-8".to_owned())];
                let _ = http::write_response(&mut writer, status, &headers, &body, false, true);
                break;
            }
        };
        match (shared.handler)(&request) {
            Action::Reset => {
                // Nothing is written: the client reads the end of the stream at once.
                let _ = stream.shutdown(Shutdown::Both);
                break;
            }
            Action::Respond {
                status,
                headers,
                body,
            } => {
                let close = !request.keep_alive || shared.stopping.load(Ordering::SeqCst);
                let head_only = request.method.eq_ignore_ascii_case("HEAD");
                let written =
                    http::write_response(&mut writer, status, &headers, &body, head_only, close);
                if written.is_err() || close {
                    let _ = stream.shutdown(Shutdown::Both);
                    break;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, Read, Write};

    fn echo_server() -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        Server::start(
            listener,
            1 << 20,
            Box::new(|rq: &Request| {
                if rq.target == "/reset" {
                    return Action::Reset;
                }
                Action::Respond {
                    status: 200,
                    headers: vec![("X-Target", rq.target.clone())],
                    body: rq.body.clone(),
                }
            }),
        )
        .unwrap()
    }

    fn read_answer(reader: &mut impl BufRead) -> Option<(String, Vec<u8>)> {
        let mut head = String::new();
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).ok()? == 0 {
                return None;
            }
            if line == "\r\n" {
                break;
            }
            head.push_str(&line);
        }
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("Content-Length: "))?
            .trim()
            .parse()
            .ok()?;
        let mut body = vec![0; length];
        reader.read_exact(&mut body).ok()?;
        Some((head, body))
    }

    #[test]
    fn pipelined_requests_on_one_connection_are_answered_in_order() {
        let server = echo_server();
        let mut stream = TcpStream::connect(server.addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        stream
            .write_all(b"POST /a HTTP/1.1\r\nContent-Length: 2\r\n\r\nhiGET /b HTTP/1.1\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut reader = BufReader::new(stream);
        let (head, body) = read_answer(&mut reader).unwrap();
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n") && head.contains("X-Target: /a"));
        assert_eq!(body, b"hi");
        let (head, _) = read_answer(&mut reader).unwrap();
        assert!(head.contains("X-Target: /b") && head.contains("Connection: close"));
        assert!(
            read_answer(&mut reader).is_none(),
            "closed after the last answer"
        );
    }

    #[test]
    fn a_reset_drops_only_its_own_connection() {
        let server = echo_server();
        let connect = || {
            let s = TcpStream::connect(server.addr).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            BufReader::new(s)
        };
        let (mut kept, mut dropped) = (connect(), connect());
        dropped
            .get_mut()
            .write_all(b"GET /reset HTTP/1.1\r\n\r\n")
            .unwrap();
        assert!(read_answer(&mut dropped).is_none());
        kept.get_mut()
            .write_all(b"GET /still HTTP/1.1\r\n\r\n")
            .unwrap();
        assert!(
            read_answer(&mut kept)
                .unwrap()
                .0
                .contains("X-Target: /still")
        );
    }

    #[test]
    fn garbage_gets_a_400_and_the_connection_closes() {
        let server = echo_server();
        let mut stream = TcpStream::connect(server.addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        stream.write_all(b"\0\0\0 nonsense\r\n\r\n").unwrap();
        let mut reader = BufReader::new(stream);
        assert!(
            read_answer(&mut reader)
                .unwrap()
                .0
                .starts_with("HTTP/1.1 400 ")
        );
        assert!(read_answer(&mut reader).is_none());
    }

    /// Connections opened in a burst, all kept open: each one's first request is
    /// answered at once, whatever the others do.
    #[test]
    fn a_burst_of_connections_kept_open_is_served() {
        let mut server = echo_server();
        let mut streams: Vec<_> = (0..64)
            .map(|_| TcpStream::connect(server.addr).unwrap())
            .collect();
        for (i, s) in streams.iter_mut().enumerate() {
            s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            write!(s, "GET /{i} HTTP/1.1\r\n\r\n").unwrap();
        }
        for (i, s) in streams.iter().enumerate() {
            let answer = read_answer(&mut BufReader::new(s));
            let head = answer
                .unwrap_or_else(|| panic!("connection {i} got no answer"))
                .0;
            assert!(head.contains(&format!("X-Target: /{i}\r\n")));
        }
        // Stop shuts the open connections down and ends every thread.
        server.stop();
        assert!(server.shared.open.lock().is_empty());
        assert!(server.shared.pool.lock().threads.is_empty());
        let mut rest = Vec::new();
        assert_eq!((&streams[0]).read_to_end(&mut rest).unwrap_or(0), 0);
    }
}
