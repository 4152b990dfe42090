//! An offer from another peer, as the node receives it.

use std::fmt;

use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

/// An SDP offer from another peer, to be answered exactly once.
///
/// Dropping it unanswered answers the caller with
/// `io.babble.processing_offer`.
pub struct Offer {
    /// The offering peer's ID.
    pub from: String,
    /// What the offer counts under while it is answered: the caller's
    /// network address as the signaling router gave it, else `from`.
    pub source: String,
    /// The offer, as SDP JSON (`{"type":"offer","sdp":"..."}`).
    pub sdp: String,
    /// Whether `from`'s key was checked to have signed this offer
    /// (signaling with a key takes signed offers only); otherwise `from`
    /// is only what the sender claims.
    pub signed: bool,
    withdrawn: CancellationToken,
    reply: Option<oneshot::Sender<Result<String, String>>>,
}

impl Offer {
    /// An offer from `from`, counted under `from`, never withdrawn; its
    /// answer goes to the returned receiver (an error if the offer is
    /// dropped unanswered).
    pub fn new(
        from: String,
        sdp: String,
        signed: bool,
    ) -> (Offer, oneshot::Receiver<Result<String, String>>) {
        let source = from.clone();
        Offer::placed(from, source, sdp, signed, CancellationToken::new())
    }

    /// An offer from `from` counted under `source`, withdrawn when
    /// `withdrawn` is cancelled; see [`Offer::new`].
    pub fn placed(
        from: String,
        source: String,
        sdp: String,
        signed: bool,
        withdrawn: CancellationToken,
    ) -> (Offer, oneshot::Receiver<Result<String, String>>) {
        let (reply, answer) = oneshot::channel();
        let offer = Offer {
            from,
            source,
            sdp,
            signed,
            withdrawn,
            reply: Some(reply),
        };
        (offer, answer)
    }

    /// Resolves once the offer is withdrawn: its place went to a newcomer
    /// from an address with fewer offers being answered, or the signaling
    /// session ended. Its answer would then go nowhere.
    pub async fn withdrawn(&self) {
        self.withdrawn.cancelled().await
    }

    /// Answers with an SDP answer (`Ok`, as SDP JSON) or an error message.
    pub fn answer(mut self, result: Result<String, String>) {
        self.send(result);
    }

    fn send(&mut self, result: Result<String, String>) {
        if let Some(reply) = self.reply.take() {
            // The session may be gone; then the router tells the caller.
            let _ = reply.send(result);
        }
    }
}

impl Drop for Offer {
    fn drop(&mut self) {
        self.send(Err("the offer was dropped".into()));
    }
}

impl fmt::Debug for Offer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Offer")
            .field("from", &self.from)
            .finish_non_exhaustive()
    }
}
