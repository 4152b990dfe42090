//! The raw QUIC limit: quinn alone, its driver on the calling thread (one
//! thread per side), a bidirectional stream per round trip carrying the
//! bytes a workload's request and reply put on the wire. No codec, no
//! actors, no node keys: what the QUIC transport costs beyond this is
//! ours; what this costs beyond the raw TCP echo is QUIC's (and quinn's).
//!
//! Each request starts with the length of the reply the client wants (8
//! bytes, big-endian); the server answers with that many bytes. The
//! socket buffers and the client's receive window are the transport's
//! (4 MiB, 16 MiB), so the two lose no packet the other would not.

use std::net::UdpSocket;
use std::path::Path;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use quinn::rustls::pki_types::{CertificateDer, PrivatePkcs8KeyDer};
use quinn::{Endpoint, EndpointConfig, TokioRuntime, TransportConfig, VarInt};

use super::report::Report;

/// The kernel buffer each way of the UDP socket, as the transport asks.
const SOCKET_BUFFER: usize = 4 * 1024 * 1024;
/// The client's window for replies, as the transport's `reply_window`.
const REPLY_WINDOW: u32 = 16 * 1024 * 1024;
/// The largest request the server reads and reply it makes: a
/// FastForward's is 1.4 MB.
const LARGEST: usize = 64 * 1024 * 1024;

fn socket(addr: &str) -> std::io::Result<UdpSocket> {
    let socket = UdpSocket::bind(addr)?;
    let buffers = socket2::SockRef::from(&socket);
    buffers.set_recv_buffer_size(SOCKET_BUFFER)?;
    buffers.set_send_buffer_size(SOCKET_BUFFER)?;
    Ok(socket)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

/// Answers every stream with the reply length its request asks for, and
/// writes the server's self-signed certificate (DER) to `cert_file` for
/// the client to trust.
pub fn serve(listen: &str, cert_file: &Path) -> std::io::Result<()> {
    let made = rcgen::generate_simple_self_signed(vec!["babble".to_owned()])
        .map_err(std::io::Error::other)?;
    std::fs::write(cert_file, made.cert.der())?;
    let key = PrivatePkcs8KeyDer::from(made.signing_key.serialize_der());
    let config = quinn::ServerConfig::with_single_cert(vec![made.cert.der().clone()], key.into())
        .map_err(std::io::Error::other)?;
    runtime().block_on(async {
        let endpoint = Endpoint::new(
            EndpointConfig::default(),
            Some(config),
            socket(listen)?,
            Arc::new(TokioRuntime),
        )?;
        println!("quic-echo-serve listening on {}", endpoint.local_addr()?);
        while let Some(incoming) = endpoint.accept().await {
            tokio::spawn(async move {
                let Ok(connection) = incoming.await else {
                    return;
                };
                while let Ok((mut send, mut recv)) = connection.accept_bi().await {
                    tokio::spawn(async move {
                        let Ok(request) = recv.read_to_end(LARGEST).await else {
                            return;
                        };
                        let Some(wanted) = request.get(..8) else {
                            return;
                        };
                        let wanted = u64::from_be_bytes(wanted.try_into().expect("8 bytes"));
                        let Some(wanted) = usize::try_from(wanted).ok().filter(|w| *w <= LARGEST)
                        else {
                            return;
                        };
                        let reply = vec![0x5a; wanted];
                        let _ = send.write_all(&reply).await;
                        let _ = send.finish();
                        let _ = send.stopped().await;
                    });
                }
            });
        }
        Ok(())
    })
}

/// Makes `calls` round trips, `concurrency` at a time, on one connection:
/// each writes `request` (after the reply length) and reads `reply_len`
/// bytes back.
pub fn call(
    target: &str,
    cert_file: &Path,
    calls: u64,
    concurrency: usize,
    request: Vec<u8>,
    reply_len: usize,
) -> std::io::Result<Report> {
    let mut roots = quinn::rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from(std::fs::read(cert_file)?))
        .map_err(std::io::Error::other)?;
    let mut config = quinn::ClientConfig::with_root_certificates(Arc::new(roots))
        .map_err(std::io::Error::other)?;
    let mut transport = TransportConfig::default();
    transport.stream_receive_window(VarInt::from_u32(REPLY_WINDOW));
    transport.receive_window(VarInt::from_u32(REPLY_WINDOW));
    config.transport_config(Arc::new(transport));
    let target = target
        .parse()
        .map_err(|_| std::io::Error::other(format!("{target} is not an IP address and port")))?;
    let mut framed = (reply_len as u64).to_be_bytes().to_vec();
    framed.extend_from_slice(&request);
    let framed = Rc::new(framed);
    let local = tokio::task::LocalSet::new();
    let rt = runtime();
    local.block_on(&rt, async move {
        let mut endpoint = Endpoint::new(
            EndpointConfig::default(),
            None,
            socket("127.0.0.1:0")?,
            Arc::new(TokioRuntime),
        )?;
        endpoint.set_default_client_config(config);
        let connection = endpoint
            .connect(target, "babble")
            .map_err(std::io::Error::other)?
            .await?;
        let next = Rc::new(std::cell::Cell::new(0u64));
        let started = Instant::now();
        let workers: Vec<_> = (0..concurrency.max(1))
            .map(|_| {
                let (connection, next, framed) = (connection.clone(), next.clone(), framed.clone());
                tokio::task::spawn_local(async move {
                    let (mut latencies, mut errors) = (Vec::new(), 0u64);
                    while next.replace(next.get() + 1) < calls {
                        let t0 = Instant::now();
                        let round_trip = async {
                            let (mut send, mut recv) = connection.open_bi().await.ok()?;
                            send.write_all(&framed).await.ok()?;
                            send.finish().ok()?;
                            recv.read_to_end(reply_len + 1).await.ok()
                        };
                        match round_trip.await {
                            Some(reply) if reply.len() == reply_len => {
                                latencies.push(t0.elapsed().as_micros() as u64)
                            }
                            _ => errors += 1,
                        }
                    }
                    (latencies, errors)
                })
            })
            .collect();
        let mut measured = Vec::new();
        for worker in workers {
            measured.push(worker.await.map_err(std::io::Error::other)?);
        }
        let report = Report::round_trips(
            "quic-echo",
            calls,
            measured,
            started.elapsed(),
            request.len(),
            reply_len,
        );
        connection.close(VarInt::from_u32(0), b"done");
        endpoint.wait_idle().await;
        Ok(report)
    })
}
