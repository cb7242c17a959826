//! A TCP forwarder on 127.0.0.1 that counts and can throttle the bytes a real server sends.
//!
//! It changes nothing in the bytes: tests use it to slow a real registry down (to kill a
//! pull mid-blob) and to measure a server's egress.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

/// A running forwarder; stops accepting on drop.
pub struct Proxy {
    port: u16,
    served: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl Proxy {
    /// Forwards `127.0.0.1:<new port>` to `upstream` (`host:port`), sending at most
    /// `bytes_per_sec` downstream per connection (`None`: unthrottled).
    pub fn start(upstream: &str, bytes_per_sec: Option<u64>) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind proxy");
        let port = listener.local_addr().expect("addr").port();
        let served = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let upstream = upstream.to_string();
        let (served2, stop2) = (served.clone(), stop.clone());
        thread::spawn(move || {
            for client in listener.incoming() {
                if stop2.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(client) = client else { continue };
                let Ok(server) = TcpStream::connect(&upstream) else {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                };
                let (c2, s2) = (
                    client.try_clone().expect("clone"),
                    server.try_clone().expect("clone"),
                );
                thread::spawn(move || pump(c2, s2, None, None));
                let served = served2.clone();
                thread::spawn(move || pump(server, client, bytes_per_sec, Some(served)));
            }
        });
        Proxy { port, served, stop }
    }

    /// `127.0.0.1:PORT` of the forwarder.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Bytes the upstream has sent to clients so far (headers included).
    pub fn served_bytes(&self) -> u64 {
        self.served.load(Ordering::SeqCst)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

fn pump(
    mut from: TcpStream,
    mut to: TcpStream,
    rate: Option<u64>,
    counter: Option<Arc<AtomicU64>>,
) {
    let chunk = rate.map_or(64 * 1024, |r| (r / 20).clamp(512, 64 * 1024) as usize);
    let mut buf = vec![0u8; chunk];
    let start = Instant::now();
    let mut sent: u64 = 0;
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
        sent += n as u64;
        if let Some(c) = &counter {
            c.fetch_add(n as u64, Ordering::SeqCst);
        }
        if let Some(rate) = rate {
            let due = Duration::from_secs_f64(sent as f64 / rate as f64);
            if let Some(wait) = due.checked_sub(start.elapsed()) {
                thread::sleep(wait);
            }
        }
    }
    let _ = to.shutdown(Shutdown::Write);
    let _ = from.shutdown(Shutdown::Read);
}
