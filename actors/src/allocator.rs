//! Giving freed memory back to the system when a budget refuses a reply,
//! or a peer's connection state of megabytes is freed.
//!
//! The budgets bound what a node *holds* for its peers, but its resident
//! memory is what the allocator keeps. A large reply is mostly many small
//! allocations (events, their signatures and transactions); once freed,
//! glibc keeps their pages for reuse and returns only the free end of a
//! heap. A flood of large replies nobody reads keeps the outbound budget
//! full of frames while the replies that were encoded, or refused, leave
//! their pages behind: tens of MiB above the budget (a release `rpcbench
//! serve` under 100 connections asking 14 MB replies: 256 MiB budget,
//! 276-296 MiB of growth).
//!
//! So when the outbound budget has no room for a reply of [`LARGE_REPLY`]
//! bytes or more and the reply is dropped, the Listener asks the
//! allocator to give back the free pages of its heaps at once
//! ([`give_back_freed_memory`]): the same flood then grows the process by
//! 210-230 MiB. Not after every reply: pages given back are faulted in
//! again by the next reply, which costs (trimming after every large reply,
//! even with the budget half full, slowed 16 concurrent 14 MB Syncs by a
//! quarter), and a node whose budget has room has no memory to spare for.
//!
//! The WebRTC layer gives memory back too, once per closed peer connection
//! (never per call): a peer connection's SCTP and DTLS state is megabytes,
//! and peers that open connections and never finish them, torn down at the
//! cap, would otherwise leave theirs with the allocator.

/// The size from which a refused reply's memory is given back.
pub const LARGE_REPLY: usize = 1 << 20;

/// Asks the allocator to return the free pages of its heaps to the
/// system (glibc's `malloc_trim`; nothing elsewhere). It walks every
/// arena, so it is for after freeing megabytes, not kilobytes.
pub fn give_back_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free memory of the allocator's own
    // heaps; it never touches memory in use.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(all(test, target_os = "linux", target_env = "gnu"))]
mod tests {
    use super::*;

    const MIB: usize = 1 << 20;

    /// The process's resident size, from the kernel.
    fn resident_bytes() -> usize {
        let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
        let kib: usize = (status.lines())
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
            .expect("VmRSS in /proc/self/status");
        kib * 1024
    }

    #[test]
    fn a_freed_reply_between_live_allocations_leaves_the_process() {
        // A reply the way a node builds one: 64 MiB in 1 KiB pieces, and
        // every 64 KiB a small allocation that outlives the reply (so no
        // free end of a heap forms for the allocator to return by itself).
        let mut kept = Vec::new();
        let mut reply = Vec::new();
        for i in 0..64 * 1024 {
            reply.push(vec![i as u8; 1024]);
            if i % 64 == 63 {
                kept.push(vec![i as u8; 48]);
            }
        }
        drop(reply);
        let freed = resident_bytes();
        give_back_freed_memory();
        let given_back = freed.saturating_sub(resident_bytes());
        assert!(
            given_back >= 32 * MIB,
            "{} MiB of a 64 MiB freed reply given back",
            given_back / MIB
        );
        assert_eq!(kept.len(), 1024);
    }
}
