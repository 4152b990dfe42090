//! Helpers for tests over real sockets.

use std::time::{Duration, Instant};

use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;

/// A TCP server that accepts connections and reads whatever comes, but
/// never answers. Returns its address; it runs until the test ends.
pub async fn silent_server() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    actix_rt::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            actix_rt::spawn(async move {
                let mut buf = vec![0u8; 4096];
                while let Ok(n) = socket.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                }
            });
        }
    });
    addr
}

/// Waits until `condition` holds, checking every few milliseconds; panics
/// after `limit` (for counters updated by another task after an event the
/// test has already awaited).
pub async fn eventually(limit: Duration, what: &str, mut condition: impl FnMut() -> bool) {
    let started = Instant::now();
    while !condition() {
        assert!(
            started.elapsed() < limit,
            "still not true after {limit:?}: {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Open file descriptors of this process.
pub fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .map(|d| d.count())
        .expect("/proc/self/fd is readable")
}

/// Sockets this process holds whose local port is `port` (a node's
/// inbound connections, and its listening socket), found by asking each
/// descriptor for its address: a socket the kernel has already closed but
/// the process still holds counts too. Unlike [`open_fds`], other tests of
/// the binary running at the same time do not move it: it counts what one
/// transport owns.
pub fn sockets_on_port(port: u16) -> usize {
    use std::os::fd::BorrowedFd;
    std::fs::read_dir("/proc/self/fd")
        .expect("/proc/self/fd is readable")
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let target = std::fs::read_link(entry.path()).ok()?;
            if !target.to_string_lossy().starts_with("socket:") {
                return None;
            }
            entry.file_name().to_str()?.parse::<i32>().ok()
        })
        .filter(|&fd| {
            // SAFETY: the descriptor is only borrowed for one getsockname
            // call; if another thread closed (or reused) it meanwhile, the
            // call fails or names another socket, which a test tolerates
            // as well as the race it stands for.
            let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
            socket2::SockRef::from(&borrowed)
                .local_addr()
                .ok()
                .and_then(|addr| addr.as_socket())
                .is_some_and(|addr| addr.port() == port)
        })
        .count()
}

/// A free TCP address on 127.0.0.1 (`127.0.0.1:PORT`), for a child process
/// to listen on.
pub fn free_addr() -> String {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .to_string()
}

/// Child processes killed (and reaped) when this is dropped, so a failing
/// test leaves none behind.
#[derive(Default)]
pub struct KillOnDrop(pub Vec<std::process::Child>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
