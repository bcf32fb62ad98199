//! A TCP proxy a test puts in front of a worker's RPC port, to make it *silent* without killing
//! it: while blackholed, the proxy stops moving bytes either way and holds new connections open
//! without forwarding them, as a partition or a hung process would (no RST, no answer). The
//! worker's etcd lease stays alive, so only the data plane can tell.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// How often idle proxy threads look at the stop and blackhole flags.
const POLL: Duration = Duration::from_millis(20);

#[derive(Default)]
struct State {
    stop: AtomicBool,
    blackhole: AtomicBool,
    upstream: Mutex<Option<SocketAddr>>,
}

/// Stops every thread (and closes every connection) when dropped.
pub struct Proxy {
    pub addr: SocketAddr,
    state: Arc<State>,
    acceptor: Option<JoinHandle<()>>,
}

impl Proxy {
    /// Listens on an ephemeral localhost port; connections accepted before
    /// [`Proxy::set_upstream`] are closed at once.
    pub fn start() -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("proxy bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(State::default());
        let acceptor = {
            let state = Arc::clone(&state);
            std::thread::spawn(move || accept_loop(listener, &state))
        };
        Proxy {
            addr,
            state,
            acceptor: Some(acceptor),
        }
    }

    /// Where new connections go (a restarted worker listens somewhere new).
    pub fn set_upstream(&self, upstream: SocketAddr) {
        *self.state.upstream.lock().unwrap() = Some(upstream);
    }

    /// Stops (or resumes) forwarding on every connection, old and new.
    pub fn set_blackhole(&self, on: bool) {
        self.state.blackhole.store(on, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.state.stop.store(true, Ordering::SeqCst);
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
    }
}

fn accept_loop(listener: TcpListener, state: &Arc<State>) {
    let mut pipes = Vec::new();
    while !state.stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((client, _)) => {
                let upstream = *state.upstream.lock().unwrap();
                let Some(upstream) = upstream else { continue };
                let Ok(server) = TcpStream::connect_timeout(&upstream, Duration::from_secs(1))
                else {
                    continue;
                };
                for (from, to) in [
                    (client.try_clone().unwrap(), server.try_clone().unwrap()),
                    (server, client),
                ] {
                    let state = Arc::clone(state);
                    pipes.push(std::thread::spawn(move || pipe(from, to, &state)));
                }
                pipes.retain(|p: &JoinHandle<()>| !p.is_finished());
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => std::thread::sleep(POLL),
            Err(_) => std::thread::sleep(POLL),
        }
    }
    for pipe in pipes {
        let _ = pipe.join();
    }
}

/// Copies `from` to `to` until either side closes or the proxy stops; while blackholed it reads
/// nothing, so the sender's buffers fill as they would behind a dead link.
fn pipe(mut from: TcpStream, mut to: TcpStream, state: &State) {
    from.set_read_timeout(Some(POLL)).unwrap();
    let mut buf = vec![0u8; 64 * 1024];
    while !state.stop.load(Ordering::SeqCst) {
        if state.blackhole.load(Ordering::SeqCst) {
            std::thread::sleep(POLL);
            continue;
        }
        match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => break,
        }
    }
    let _ = to.shutdown(Shutdown::Both);
    let _ = from.shutdown(Shutdown::Both);
}
