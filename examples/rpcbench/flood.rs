//! `flood`: the hostile load of the fairness runs (BENCH.md). Connections
//! from given loopback source addresses, each sending valid Sync requests
//! one after another (a source that breaks no rule but wants the whole
//! node), or, with `--never-read`, one Sync each whose reply it never
//! reads.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// What to flood with.
pub struct Plan {
    pub target: String,
    /// Source addresses (127.0.0.x; Linux routes all of 127/8 to `lo`).
    pub sources: Vec<String>,
    /// Connections from each source.
    pub connections: usize,
    /// Events each Sync asks for.
    pub sync_limit: usize,
    /// Send one request per connection and never read the reply.
    pub never_read: bool,
    /// How long to flood.
    pub secs: f64,
}

fn sync_frame(id: usize, sync_limit: usize) -> Vec<u8> {
    format!("\x01{{\"FromID\":{id},\"Known\":null,\"SyncLimit\":{sync_limit}}}\n").into_bytes()
}

async fn connect(from: &str, target: &str, small_buffer: bool) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    if small_buffer {
        socket.set_recv_buffer_size(4096)?;
    }
    socket.bind(format!("{from}:0").parse().map_err(std::io::Error::other)?)?;
    socket
        .connect(target.parse().map_err(std::io::Error::other)?)
        .await
}

/// Reads one Go reply (an error line and a response line).
async fn read_reply(stream: &mut TcpStream, buf: &mut [u8]) -> std::io::Result<()> {
    let mut newlines = 0;
    while newlines < 2 {
        let n = stream.read(buf).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        newlines += buf[..n].iter().filter(|&&b| b == b'\n').count();
    }
    Ok(())
}

/// Floods until `secs` have passed; prints a line once every connection
/// is open, and a JSON line at the end.
pub async fn run(plan: Plan) {
    let answered = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs_f64(plan.secs);
    let mut streams = Vec::new();
    for (s, source) in plan.sources.iter().enumerate() {
        for c in 0..plan.connections {
            match connect(source, &plan.target, plan.never_read).await {
                Ok(stream) => streams.push((s * plan.connections + c, stream)),
                Err(_) => {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }
    println!(
        "rpcbench flood: {} connections open from {} sources",
        streams.len(),
        plan.sources.len()
    );
    let mut tasks = Vec::new();
    for (id, stream) in streams {
        let (answered, failed) = (answered.clone(), failed.clone());
        let frame = sync_frame(1000 + id, plan.sync_limit);
        let (never_read, target) = (plan.never_read, plan.target.clone());
        let source = plan.sources[id / plan.connections.max(1)].clone();
        tasks.push(actix_rt::spawn(async move {
            let mut buf = vec![0u8; 64 * 1024];
            let mut stream = Some(stream);
            while Instant::now() < deadline {
                // A connection the node closed (evicted, say) is opened
                // again: the flood keeps its pressure.
                let mut open = match stream.take() {
                    Some(open) => open,
                    None => match connect(&source, &target, never_read).await {
                        Ok(open) => open,
                        Err(_) => {
                            failed.fetch_add(1, Ordering::Relaxed);
                            tokio::time::sleep(Duration::from_millis(10)).await;
                            continue;
                        }
                    },
                };
                if open.write_all(&frame).await.is_err() {
                    failed.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                if never_read {
                    // Holds the connection, unread, to the end.
                    tokio::time::sleep_until(deadline.into()).await;
                    return;
                }
                let read =
                    tokio::time::timeout_at(deadline.into(), read_reply(&mut open, &mut buf));
                match read.await {
                    Ok(Ok(())) => {
                        answered.fetch_add(1, Ordering::Relaxed);
                        stream = Some(open);
                    }
                    Ok(Err(_)) => {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(_) => return,
                }
            }
        }));
    }
    for task in tasks {
        let _ = task.await;
    }
    println!(
        r#"{{"role":"flood","answered":{},"failed":{}}}"#,
        answered.load(Ordering::Relaxed),
        failed.load(Ordering::Relaxed)
    );
}
