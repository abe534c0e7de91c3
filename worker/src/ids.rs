//! Identifiers the gateway mints: UUIDv4 order and correlation ids, W3C trace and span ids.
//! Drawn from the kernel's random source (getrandom), never a time-seeded generator.

fn random<const N: usize>() -> [u8; N] {
    let mut buf = [0u8; N];
    let mut filled = 0;
    while filled < N {
        // SAFETY: writes at most N - filled bytes into our buffer.
        let n = unsafe { libc::getrandom(buf[filled..].as_mut_ptr().cast(), N - filled, 0) };
        if n > 0 {
            filled += n as usize;
        }
    }
    buf
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A random (version 4) UUID, lowercase and hyphenated.
pub fn uuid_v4() -> String {
    let mut b: [u8; 16] = random();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex(&b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
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
