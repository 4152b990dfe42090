//! The physical limit: a plain blocking TCP round trip of the bytes a
//! `ping` puts on the wire, with no codec and no actors.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use super::report::Report;

/// Answers every `request_len` bytes read with `reply`, a thread per
/// connection.
pub fn serve(listen: &str, request_len: usize, reply: Vec<u8>) -> std::io::Result<()> {
    let listener = TcpListener::bind(listen)?;
    println!("echo-serve listening on {}", listener.local_addr()?);
    let reply = Arc::new(reply);
    for socket in listener.incoming() {
        let mut socket = socket?;
        socket.set_nodelay(true)?;
        let reply = reply.clone();
        std::thread::spawn(move || {
            let mut request = vec![0u8; request_len];
            while socket.read_exact(&mut request).is_ok() {
                if socket.write_all(&reply).is_err() {
                    break;
                }
            }
        });
    }
    Ok(())
}

/// Makes `calls` round trips from `concurrency` threads, each with its own
/// connection.
pub fn call(
    target: &str,
    calls: u64,
    concurrency: usize,
    request: Vec<u8>,
    reply_len: usize,
) -> Report {
    let next = Arc::new(AtomicU64::new(0));
    let request = Arc::new(request);
    let started = Instant::now();
    let threads: Vec<_> = (0..concurrency)
        .map(|_| {
            let (next, request, target) = (next.clone(), request.clone(), target.to_owned());
            std::thread::spawn(move || {
                let mut latencies = Vec::new();
                let mut errors = 0u64;
                let mut socket = TcpStream::connect(&target).expect("echo-serve reachable");
                socket.set_nodelay(true).unwrap();
                let mut reply = vec![0u8; reply_len];
                while next.fetch_add(1, Ordering::Relaxed) < calls {
                    let t0 = Instant::now();
                    let ok =
                        socket.write_all(&request).is_ok() && socket.read_exact(&mut reply).is_ok();
                    if ok {
                        latencies.push(t0.elapsed().as_micros() as u64);
                    } else {
                        errors += 1;
                    }
                }
                (latencies, errors)
            })
        })
        .collect();
    let measured: Vec<_> = threads
        .into_iter()
        .map(|thread| thread.join().unwrap())
        .collect();
    Report::round_trips(
        "echo",
        calls,
        measured,
        started.elapsed(),
        request.len(),
        reply_len,
    )
}
