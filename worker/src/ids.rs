//! Identifiers the gateway mints: UUIDv4 order and correlation ids, W3C trace and span ids.
//! Drawn from the kernel's random source (getrandom), never a time-seeded generator; each
//! thread takes it in blocks of 4 KiB, so minting costs no system call most of the time.

use std::cell::RefCell;

const BLOCK: usize = 4096;

struct Pool {
    bytes: [u8; BLOCK],
    used: usize,
}

thread_local! {
    static POOL: RefCell<Pool> = const { RefCell::new(Pool { bytes: [0; BLOCK], used: BLOCK }) };
}

fn fill_from_kernel(buf: &mut [u8]) {
    let mut filled = 0;
    while filled < buf.len() {
        // SAFETY: writes at most buf.len() - filled bytes into the buffer.
        let n =
            unsafe { libc::getrandom(buf[filled..].as_mut_ptr().cast(), buf.len() - filled, 0) };
        if n > 0 {
            filled += n as usize;
        }
    }
}

fn random<const N: usize>() -> [u8; N] {
    POOL.with_borrow_mut(|pool| {
        if pool.used + N > BLOCK {
            fill_from_kernel(&mut pool.bytes);
            pool.used = 0;
        }
        let mut out = [0u8; N];
        out.copy_from_slice(&pool.bytes[pool.used..pool.used + N]);
        // Bytes handed out are never handed out again.
        pool.bytes[pool.used..pool.used + N].fill(0);
        pool.used += N;
        out
    })
}

const HEX: &[u8; 16] = b"0123456789abcdef";

fn push_hex(out: &mut String, bytes: &[u8]) {
    for b in bytes {
        out.push(HEX[usize::from(b >> 4)] as char);
        out.push(HEX[usize::from(b & 0x0f)] as char);
    }
}

fn hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 2);
    push_hex(&mut out, bytes);
    out
}

/// A random (version 4) UUID, lowercase and hyphenated.
pub fn uuid_v4() -> String {
    let mut b: [u8; 16] = random();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let mut out = String::with_capacity(36);
    for (i, group) in [&b[0..4], &b[4..6], &b[6..8], &b[8..10], &b[10..16]]
        .into_iter()
        .enumerate()
    {
        if i > 0 {
            out.push('-');
        }
        push_hex(&mut out, group);
    }
    out
}

/// A W3C trace id: 32 hex characters, not all zero.
pub fn trace_id() -> String {
    loop {
        let b: [u8; 16] = random();
        if b.iter().any(|x| *x != 0) {
            return hex(&b);
        }
    }
}

/// A W3C span id: 16 hex characters, not all zero.
pub fn span_id() -> String {
    loop {
        let b: [u8; 8] = random();
        if b.iter().any(|x| *x != 0) {
            return hex(&b);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_have_their_formats() {
        let u = uuid_v4();
        assert_eq!(u.len(), 36);
        assert_eq!(&u[14..15], "4", "version 4");
        assert!(
            matches!(&u[19..20], "8" | "9" | "a" | "b"),
            "RFC 4122 variant"
        );
        assert_ne!(uuid_v4(), u);
        assert!(u.bytes().all(|c| c == b'-' || c.is_ascii_hexdigit()));
        assert_eq!(
            u.match_indices('-').map(|(i, _)| i).collect::<Vec<_>>(),
            [8, 13, 18, 23]
        );
        assert_eq!(hex(&[0x00, 0x0f, 0xa5, 0xff]), "000fa5ff");
        let many: std::collections::HashSet<String> = (0..10_000).map(|_| trace_id()).collect();
        assert_eq!(many.len(), 10_000, "no id repeats across pool refills");
        assert_eq!(trace_id().len(), 32);
        assert_eq!(span_id().len(), 16);
        assert!(
            crate::headers::parse_traceparent(&crate::headers::format_traceparent(
                &trace_id(),
                &span_id(),
                true
            ))
            .is_some()
        );
    }
}
