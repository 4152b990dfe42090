//! An offer from another peer, as the node receives it.

use std::fmt;

use actix::Addr;

use super::{AnswerOffer, Signaling};

/// An SDP offer from another peer, to be answered exactly once.
///
/// Dropping it unanswered answers the caller with
/// `io.babble.processing_offer`.
pub struct Offer {
    /// The offering peer's ID.
    pub from: String,
    /// The offer, as SDP JSON (`{"type":"offer","sdp":"..."}`).
    pub sdp: String,
    reply: Option<OfferReply>,
}

/// Where an answer goes: the session and request it answers.
struct OfferReply {
    actor: Addr<Signaling>,
    session: u64,
    request: u64,
}

impl Offer {
    pub(super) fn new(
        from: String,
        sdp: String,
        actor: Addr<Signaling>,
        session: u64,
        request: u64,
    ) -> Offer {
        Offer {
            from,
            sdp,
            reply: Some(OfferReply {
                actor,
                session,
                request,
            }),
        }
    }

    /// Answers with an SDP answer (`Ok`, as SDP JSON) or an error message.
    pub fn answer(mut self, result: Result<String, String>) {
        self.send(result);
    }

    fn send(&mut self, result: Result<String, String>) {
        if let Some(reply) = self.reply.take() {
            // The session may be gone; then the router tells the caller.
            reply.actor.do_send(AnswerOffer {
                session: reply.session,
                request: reply.request,
                result,
            });
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
