//! A TCP proxy that cuts connections: in front of a server (a registry),
//! it forwards both ways and, the first `cuts` times a connection has
//! carried `after` bytes from the client, shuts that connection down in
//! both directions mid-stream, as a dropping link does. Later connections
//! pass untouched. It listens on 127.0.0.1 and stops on drop.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// A running proxy.
pub struct CuttingProxy {
    port: u16,
    cut: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

impl CuttingProxy {
    /// A proxy to `target` (`host:port`) cutting `cuts` connections, each
    /// after `after` bytes from the client.
    pub fn start(target: &str, after: u64, cuts: usize) -> CuttingProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("a free port");
        let port = listener.local_addr().expect("the proxy's address").port();
        let (cut, stop) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicBool::new(false)));
        let (target, counted, stopping) = (target.to_owned(), cut.clone(), stop.clone());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                if stopping.load(Ordering::Relaxed) {
                    return;
                }
                let Ok(client) = client else { continue };
                let Ok(server) = TcpStream::connect(&target) else { continue };
                let counted = counted.clone();
                std::thread::spawn(move || relay(client, server, after, cuts, &counted));
            }
        });
        CuttingProxy { port, cut, stop }
    }

    /// `127.0.0.1:PORT`.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Connections cut so far.
    pub fn cut(&self) -> usize {
        self.cut.load(Ordering::Relaxed)
    }
}

impl Drop for CuttingProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

/// Forwards `client` ↔ `server`; cuts both once the client has sent
/// `after` bytes, if fewer than `cuts` connections were cut.
fn relay(mut client: TcpStream, mut server: TcpStream, after: u64, cuts: usize, cut: &AtomicUsize) {
    let (mut from_server, mut to_client) = match (server.try_clone(), client.try_clone()) {
        (Ok(s), Ok(c)) => (s, c),
        _ => return,
    };
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut from_server, &mut to_client);
        let _ = to_client.shutdown(Shutdown::Write);
    });
    let mut sent = 0u64;
    let mut buffer = vec![0u8; 64 << 10];
    loop {
        let n = match client.read(&mut buffer) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let room = after.saturating_sub(sent);
        let cutting =
            || cut.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |c| (c < cuts).then_some(c + 1)).is_ok();
        if (n as u64) >= room && cutting() {
            let _ = server.write_all(&buffer[..room as usize]);
            let _ = server.shutdown(Shutdown::Both);
            let _ = client.shutdown(Shutdown::Both);
            return;
        }
        if server.write_all(&buffer[..n]).is_err() {
            break;
        }
        sent += n as u64;
    }
    let _ = server.shutdown(Shutdown::Write);
}
