//! Randomness from the OS CSPRNG (`getrandom`), the only random source of the worker.
//!
//! The core draws nothing itself: it asks for a registration secret with
//! `Command::MintSecret` and receives the jitter seed in its config. Every value here comes
//! straight from the operating system's cryptographic generator; there is no fallback to a
//! weaker source (an old reference build derived secrets from the time and they were
//! guessable, PROTOCOL.md §8).

use studio_core::wire::hex;

use crate::error::ShellError;

fn fill(buf: &mut [u8]) -> Result<(), ShellError> {
    getrandom::fill(buf).map_err(|e| ShellError::Entropy(e.to_string()))
}

/// A random install id shaped like a UUIDv4 (`xxxxxxxx-xxxx-4xxx-Yxxx-xxxxxxxxxxxx`,
/// lowercase, `Y` one of `8 9 a b`): 122 random bits.
pub fn install_id() -> Result<String, ShellError> {
    let mut b = [0u8; 16];
    fill(&mut b)?;
    b[6] = (b[6] & 0x0f) | 0x40; // version 4
    b[8] = (b[8] & 0x3f) | 0x80; // RFC 4122 variant
    let h = hex(&b);
    Ok(format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    ))
}

/// A registration secret: 256 random bits as 64 lowercase hex characters. Only its
/// SHA-256 leaves the machine in the register request; the raw value is the poll bearer.
pub fn registration_secret() -> Result<String, ShellError> {
    let mut b = [0u8; 32];
    fill(&mut b)?;
    Ok(hex(&b))
}

/// A random 64-bit seed (the core's reconnect jitter seed).
pub fn seed() -> Result<u64, ShellError> {
    getrandom::u64().map_err(|e| ShellError::Entropy(e.to_string()))
}

/// `n` random bytes as `2n` lowercase hex characters (multipart boundaries, tokens).
pub fn random_hex(n: usize) -> Result<String, ShellError> {
    let mut b = vec![0u8; n];
    fill(&mut b)?;
    Ok(hex(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn install_id_is_uuid_v4_shaped() {
        for _ in 0..64 {
            let id = install_id().unwrap();
            assert_eq!(id.len(), 36);
            let groups: Vec<&str> = id.split('-').collect();
            assert_eq!(
                groups.iter().map(|g| g.len()).collect::<Vec<_>>(),
                [8, 4, 4, 4, 12]
            );
            assert!(id
                .chars()
                .all(|c| c == '-' || c.is_ascii_digit() || ('a'..='f').contains(&c)));
            assert!(groups[2].starts_with('4'));
            assert!(matches!(
                groups[3].chars().next(),
                Some('8' | '9' | 'a' | 'b')
            ));
        }
        assert_ne!(install_id().unwrap(), install_id().unwrap());
    }

    #[test]
    fn registration_secret_is_64_lowercase_hex() {
        let s = registration_secret().unwrap();
        assert_eq!(s.len(), 64);
        assert!(s
            .chars()
            .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c)));
        assert_ne!(s, registration_secret().unwrap());
    }

    #[test]
    fn seeds_and_hex_differ_between_draws() {
        // 2^-64 chance of a false failure.
        assert_ne!(seed().unwrap(), seed().unwrap());
        assert_eq!(random_hex(16).unwrap().len(), 32);
    }

    #[test]
    fn hex_encodes_known_bytes() {
        assert_eq!(hex(&[0x00, 0x0f, 0xa5, 0xff]), "000fa5ff");
    }
}
