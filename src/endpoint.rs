//! What every transport shares: the inbox its RPCs arrive in, its
//! shutdown signal, its settings, and the way a call is run.

use std::future::Future;
use std::time::Instant;

use actix::Recipient;
use babble_net_actors::call_metrics::{CallMetrics, Direction};
use slog::{debug, Logger};
use tokio_util::sync::CancellationToken;

use crate::consumer::{Consumer, Inbox};
use crate::{Config, Response, Rpc, RpcType, TransportError};

/// See the [module docs](self).
pub(crate) struct Endpoint {
    pub(crate) inbox: Inbox,
    pub(crate) shutdown: CancellationToken,
    pub(crate) config: Config,
    /// The `transport` label of the metrics.
    pub(crate) transport: &'static str,
    /// The series recorded for every call.
    pub(crate) metrics: CallMetrics,
    pub(crate) log: Logger,
}

impl Endpoint {
    /// An endpoint with `config`; its Dispatcher starts on the current
    /// arbiter.
    pub(crate) fn new(config: &Config, transport: &'static str, log: Logger) -> Endpoint {
        babble_net_actors::metrics::transport_started(transport);
        Endpoint {
            inbox: Inbox::start(config.consumer_buffer, transport, log.clone()),
            shutdown: CancellationToken::new(),
            config: config.clone(),
            metrics: CallMetrics::new(transport),
            transport,
            log,
        }
    }

    /// Runs `exchange`, the call of `rpc_type` to `target`: refused once
    /// the transport is closed, failed with `Shutdown` if it closes
    /// meanwhile, logged when done.
    pub(crate) async fn call<F>(
        &self,
        target: &str,
        rpc_type: RpcType,
        exchange: F,
    ) -> Result<Response, TransportError>
    where
        F: Future<Output = Result<Response, TransportError>>,
    {
        if self.is_shutdown() {
            return Err(TransportError::Shutdown);
        }
        let started = Instant::now();
        let result = tokio::select! {
            biased;
            result = exchange => result,
            _ = self.shutdown.cancelled() => Err(TransportError::Shutdown),
        };
        let ok = result.is_ok();
        self.metrics
            .rpc_done(Direction::Out, rpc_type, ok, started.elapsed());
        if let Err(error) = &result {
            babble_net_actors::metrics::call_failed(self.transport, error);
        }
        debug!(self.log, "call";
            "peer" => target, "rpc" => %rpc_type, "duration" => ?started.elapsed(), "ok" => result.is_ok());
        result
    }

    pub(crate) fn consumer(&self) -> Consumer {
        self.inbox.consumer()
    }

    pub(crate) fn consume_with(&self, recipient: Recipient<Rpc>) {
        self.inbox.consume_with(recipient)
    }

    pub(crate) fn is_shutdown(&self) -> bool {
        self.shutdown.is_cancelled()
    }

    /// Stops the endpoint: calls in flight and later fail with `Shutdown`,
    /// RPCs still arriving are refused.
    pub(crate) fn close(&self) {
        self.shutdown.cancel();
        self.inbox.close();
    }
}
