//! A short busy-poll of a thread's I/O driver before it parks, when I/O is
//! expected within microseconds.
//!
//! A parked thread takes tens of microseconds to wake on a small virtual
//! machine, more than a whole loopback round trip of a small RPC. So a
//! thread that has just written a request (and waits for its reply), or a
//! reply (and may get the next request), keeps polling its runtime's I/O
//! driver for [`SPIN_WINDOW`] instead of parking at once: one helper task
//! per thread yields in a loop, and every yield makes the runtime poll the
//! driver without blocking before it runs the woken tasks. Other tasks of
//! the thread run as usual in between (the helper only runs when nothing
//! else is ready), and after the window the thread parks as before: an
//! idle node does not spin at all, a busy one spins at most
//! `SPIN_WINDOW` after each exchange.

use std::cell::{Cell, RefCell};
use std::future::poll_fn;
use std::rc::{Rc, Weak};
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

/// How long a thread keeps polling for expected I/O before it parks.
pub const SPIN_WINDOW: Duration = Duration::from_micros(50);

/// The spinning state of one thread.
#[derive(Default)]
struct Spinner {
    /// Spin until then.
    until: Cell<Option<Instant>>,
    /// The helper task, while it waits for a window to open.
    parked: RefCell<Option<Waker>>,
}

thread_local! {
    /// This thread's spinner, owned by its helper task (gone with the
    /// task when its arbiter stops, so a later one starts its own).
    static SPINNER: RefCell<Weak<Spinner>> = const { RefCell::new(Weak::new()) };
}

/// Tells this thread that I/O is expected within microseconds: it polls its
/// I/O driver for [`SPIN_WINDOW`] from now before it may park. Does
/// nothing outside an actix arbiter.
pub fn expect_io() {
    let until = Instant::now() + SPIN_WINDOW;
    let started = SPINNER.with(|spinner| {
        let Some(spinner) = spinner.borrow().upgrade() else {
            return false;
        };
        spinner.until.set(Some(until));
        if let Some(waker) = spinner.parked.borrow_mut().take() {
            waker.wake();
        }
        true
    });
    if started {
        return;
    }
    if actix_rt::Arbiter::try_current().is_none() {
        return;
    }
    let spinner = Rc::new(Spinner::default());
    spinner.until.set(Some(until));
    SPINNER.with(|slot| *slot.borrow_mut() = Rc::downgrade(&spinner));
    actix_rt::spawn(spin(spinner));
}

/// The helper task: yields while a window is open, waits for the next one
/// otherwise.
async fn spin(spinner: Rc<Spinner>) {
    loop {
        poll_fn(|cx| match spinner.until.get() {
            Some(until) if Instant::now() < until => Poll::Ready(()),
            _ => {
                spinner.until.set(None);
                *spinner.parked.borrow_mut() = Some(cx.waker().clone());
                Poll::Pending
            }
        })
        .await;
        // Each yield lets the runtime poll its I/O driver without
        // blocking, then run whatever that woke.
        while spinner
            .until
            .get()
            .is_some_and(|until| Instant::now() < until)
        {
            tokio::task::yield_now().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[actix_rt::test]
    async fn a_window_closes_by_itself() {
        expect_io();
        let spinner = SPINNER
            .with(|slot| slot.borrow().upgrade())
            .expect("started");
        assert!(spinner.until.get().is_some());
        // Once the window has passed, the helper parks and clears it.
        tokio::time::sleep(SPIN_WINDOW * 4).await;
        tokio::task::yield_now().await;
        assert!(spinner.until.get().is_none());
        assert!(spinner.parked.borrow().is_some());
        // A new window wakes it again.
        expect_io();
        assert!(spinner.parked.borrow().is_none());
    }
}
