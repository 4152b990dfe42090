//! The socket side of the signaling client: TCP, TLS, the WebSocket
//! upgrade with the WAMP subprotocol, and the task that writes frames.

use std::fmt;
use std::time::Duration;

use futures::stream::SplitSink;
use futures::SinkExt;
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::WebSocketStream;

use super::{SignalError, SignalSettings, TlsFailure};
use crate::stream::BoxConnection;

/// A WebSocket to the router.
pub(super) type WsStream = WebSocketStream<BoxConnection>;

/// Connects to the router and upgrades to WebSocket, within the connect
/// timeout. The WAMP handshake is the client state machine's.
pub(super) async fn open(settings: &SignalSettings) -> Result<WsStream, SignalError> {
    tokio::time::timeout(settings.connect_timeout, upgrade(settings))
        .await
        .map_err(|_| {
            SignalError::Connect(format!(
                "no WebSocket within {:?}",
                settings.connect_timeout
            ))
        })?
}

/// A TCP connection to the router at `host`, from `bind` when given (to
/// the first of the host's addresses of the same family).
async fn connect_tcp(
    host: &str,
    port: u16,
    bind: Option<std::net::IpAddr>,
) -> std::io::Result<TcpStream> {
    let Some(bind) = bind else {
        return TcpStream::connect((host, port)).await;
    };
    let router = tokio::net::lookup_host((host, port))
        .await?
        .find(|addr| addr.is_ipv4() == bind.is_ipv4())
        .ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::AddrNotAvailable,
                format!("{host} has no address of the family of the bind address {bind}"),
            )
        })?;
    let socket = match bind {
        std::net::IpAddr::V4(_) => TcpSocket::new_v4()?,
        std::net::IpAddr::V6(_) => TcpSocket::new_v6()?,
    };
    socket.bind((bind, 0).into()).map_err(|e| {
        std::io::Error::new(e.kind(), format!("binding {bind} to reach the router: {e}"))
    })?;
    socket.connect(router).await
}

async fn upgrade(settings: &SignalSettings) -> Result<WsStream, SignalError> {
    let connect_error = |e: &dyn fmt::Display| SignalError::Connect(e.to_string());
    let url = settings.url();
    let mut request = url
        .as_str()
        .into_client_request()
        .map_err(|e| connect_error(&e))?;
    request.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        super::wamp::SUBPROTOCOL
            .parse()
            .expect("a valid header value"),
    );
    let host = request
        .uri()
        .host()
        .unwrap_or_default()
        .trim_matches(['[', ']'])
        .to_owned();
    let port = request
        .uri()
        .port_u16()
        .unwrap_or(if url.starts_with("wss") { 443 } else { 80 });
    let tcp = connect_tcp(&host, port, settings.bind_ip)
        .await
        .map_err(|e| connect_error(&e))?;
    tcp.set_nodelay(true).map_err(|e| connect_error(&e))?;
    let stream: BoxConnection = if url.starts_with("wss://") {
        let tls = settings
            .tls
            .clone()
            .ok_or_else(|| SignalError::Connect("wss:// needs TLS settings".into()))?;
        let name =
            rustls::pki_types::ServerName::try_from(host.clone()).map_err(|e| connect_error(&e))?;
        let tls_stream = tokio_rustls::TlsConnector::from(tls)
            .connect(name, tcp)
            .await
            .map_err(|e| SignalError::Tls {
                host: host.clone(),
                failure: TlsFailure::of(&e),
                detail: e.to_string(),
            })?;
        Box::new(tls_stream)
    } else {
        Box::new(tcp)
    };
    let config = WebSocketConfig::default()
        .max_message_size(Some(settings.max_message_size))
        .max_frame_size(Some(settings.max_message_size));
    let (ws, _) = tokio_tungstenite::client_async_with_config(request, stream, Some(config))
        .await
        .map_err(|e| connect_error(&e))?;
    Ok(ws)
}

/// Writes `frames` to the router until the queue closes (then closes the
/// WebSocket) or a write fails or takes longer than `timeout`: then
/// `failed` is told why.
pub(super) async fn write_frames(
    mut sink: SplitSink<WsStream, WsMessage>,
    mut frames: mpsc::Receiver<WsMessage>,
    timeout: Duration,
    failed: impl FnOnce(String),
) {
    while let Some(frame) = frames.recv().await {
        match tokio::time::timeout(timeout, sink.send(frame)).await {
            Ok(Ok(())) => {}
            Ok(Err(err)) => return failed(format!("write failed: {err}")),
            Err(_) => return failed(format!("a write took longer than {timeout:?}")),
        }
    }
    let _ = tokio::time::timeout(timeout, sink.close()).await;
}
