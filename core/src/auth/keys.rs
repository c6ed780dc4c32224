//! The keys tokens are checked with: an HMAC secret (HS256) and public keys given as PEM
//! `PUBLIC KEY` blocks (SubjectPublicKeyInfo, as `openssl pkey -pubout` writes them) for RSA
//! (RS256), P-256 (ES256) and Ed25519 (EdDSA). The shell reads the files; the core gets their
//! text. Only the few DER shapes of a SubjectPublicKeyInfo are read, by hand, so no ASN.1 crate
//! comes in.

use std::fmt;

use ring::{hmac, signature};

use super::base64::{Alphabet, decode};

/// A token's signing algorithm, as its header's `alg` names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Algorithm {
    /// HMAC-SHA256 with the shared secret.
    Hs256,
    /// RSASSA-PKCS1-v1_5 with SHA-256 (2048 to 8192-bit keys).
    Rs256,
    /// ECDSA on P-256 with SHA-256, the signature as `r || s`.
    Es256,
    /// Ed25519.
    EdDsa,
}

impl Algorithm {
    /// The algorithm `alg` names; `None` for any other (`none` included).
    pub(crate) fn from_name(alg: &str) -> Option<Self> {
        match alg {
            "HS256" => Some(Self::Hs256),
            "RS256" => Some(Self::Rs256),
            "ES256" => Some(Self::Es256),
            "EdDSA" => Some(Self::EdDsa),
            _ => None,
        }
    }
}

/// One public key, with the algorithm it verifies.
#[derive(Clone)]
struct PublicKey {
    algorithm: Algorithm,
    /// What ring takes: a PKCS#1 `RSAPublicKey`, an uncompressed P-256 point, or 32 bytes.
    bytes: Vec<u8>,
}

/// Every key a token may be signed with.
#[derive(Clone, Default)]
pub(crate) struct KeySet {
    hmac: Option<hmac::Key>,
    public: Vec<PublicKey>,
}

impl fmt::Debug for KeySet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the secret.
        let public: Vec<Algorithm> = self.public.iter().map(|k| k.algorithm).collect();
        f.debug_struct("KeySet").field("hmac", &self.hmac.is_some()).field("public", &public).finish()
    }
}

/// Why a PEM key was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum KeyError {
    /// No `-----BEGIN PUBLIC KEY-----` block.
    NotPem,
    /// The block's base64 or DER is malformed.
    Malformed(&'static str),
    /// A key of a kind no supported algorithm uses (e.g. an EC key on another curve).
    Unsupported(&'static str),
}

impl fmt::Display for KeyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotPem => f.write_str("no \"-----BEGIN PUBLIC KEY-----\" block (a SubjectPublicKeyInfo in PEM)"),
            Self::Malformed(what) => write!(f, "malformed key: {what}"),
            Self::Unsupported(what) => write!(f, "unsupported key: {what} (RSA, P-256 and Ed25519 are)"),
        }
    }
}

impl std::error::Error for KeyError {}

impl KeySet {
    /// Keys from an HMAC secret (empty: none) and the text of PEM files (each may hold
    /// several `PUBLIC KEY` blocks).
    pub(crate) fn new(hmac_secret: &str, pems: &[&str]) -> Result<Self, KeyError> {
        let hmac = (!hmac_secret.is_empty()).then(|| hmac::Key::new(hmac::HMAC_SHA256, hmac_secret.as_bytes()));
        let mut public = Vec::new();
        for pem in pems {
            let blocks = pem_blocks(pem)?;
            for der in blocks {
                public.push(parse_spki(&der)?);
            }
        }
        Ok(Self { hmac, public })
    }

    /// Whether some key verifies `alg`.
    pub(crate) fn supports(&self, algorithm: Algorithm) -> bool {
        match algorithm {
            Algorithm::Hs256 => self.hmac.is_some(),
            _ => self.public.iter().any(|k| k.algorithm == algorithm),
        }
    }

    /// True when a key of `algorithm` verifies `signature` over `message` (HMAC in constant time).
    pub(crate) fn verify(&self, algorithm: Algorithm, message: &[u8], signature: &[u8]) -> bool {
        if algorithm == Algorithm::Hs256 {
            return self.hmac.as_ref().is_some_and(|key| hmac::verify(key, message, signature).is_ok());
        }
        self.public.iter().filter(|k| k.algorithm == algorithm).any(|key| {
            let scheme: &dyn signature::VerificationAlgorithm = match algorithm {
                Algorithm::Rs256 => &signature::RSA_PKCS1_2048_8192_SHA256,
                Algorithm::Es256 => &signature::ECDSA_P256_SHA256_FIXED,
                Algorithm::EdDsa => &signature::ED25519,
                Algorithm::Hs256 => return false,
            };
            signature::UnparsedPublicKey::new(scheme, &key.bytes).verify(message, signature).is_ok()
        })
    }
}

/// The DER of every `PUBLIC KEY` block in `pem`.
fn pem_blocks(pem: &str) -> Result<Vec<Vec<u8>>, KeyError> {
    const BEGIN: &str = "-----BEGIN PUBLIC KEY-----";
    const END: &str = "-----END PUBLIC KEY-----";
    let mut blocks = Vec::new();
    let mut rest = pem;
    while let Some(start) = rest.find(BEGIN) {
        let after = &rest[start + BEGIN.len()..];
        let end = after.find(END).ok_or(KeyError::Malformed("a block without its END line"))?;
        let der = decode(&after[..end], Alphabet::Standard).ok_or(KeyError::Malformed("bad base64"))?;
        blocks.push(der);
        rest = &after[end + END.len()..];
    }
    if blocks.is_empty() {
        return Err(KeyError::NotPem);
    }
    Ok(blocks)
}

/// A DER element: its tag and contents, and what follows it.
fn element(der: &[u8]) -> Result<(u8, &[u8], &[u8]), KeyError> {
    let bad = KeyError::Malformed("bad DER");
    let (&tag, rest) = der.split_first().ok_or(bad.clone())?;
    let (&first, rest) = rest.split_first().ok_or(bad.clone())?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let count = usize::from(first & 0x7f);
        if count == 0 || count > 4 || rest.len() < count {
            return Err(bad);
        }
        let len = rest[..count].iter().fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
        (len, &rest[count..])
    };
    if rest.len() < len {
        return Err(bad);
    }
    Ok((tag, &rest[..len], &rest[len..]))
}

const SEQUENCE: u8 = 0x30;
const OID: u8 = 0x06;
const BIT_STRING: u8 = 0x03;
const RSA_ENCRYPTION: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];
const EC_PUBLIC_KEY: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
const P256: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
const ED25519: &[u8] = &[0x2b, 0x65, 0x70];

/// `SEQUENCE { SEQUENCE { algorithm OID, parameters }, BIT STRING key }`.
fn parse_spki(der: &[u8]) -> Result<PublicKey, KeyError> {
    let (tag, spki, _) = element(der)?;
    if tag != SEQUENCE {
        return Err(KeyError::Malformed("not a SubjectPublicKeyInfo"));
    }
    let (tag, algorithm, rest) = element(spki)?;
    let (bit_tag, bits, _) = element(rest)?;
    if tag != SEQUENCE || bit_tag != BIT_STRING {
        return Err(KeyError::Malformed("not a SubjectPublicKeyInfo"));
    }
    let (&unused, key) = bits.split_first().ok_or(KeyError::Malformed("empty key"))?;
    if unused != 0 {
        return Err(KeyError::Malformed("key bits not whole bytes"));
    }
    let (oid_tag, oid, parameters) = element(algorithm)?;
    if oid_tag != OID {
        return Err(KeyError::Malformed("no algorithm identifier"));
    }
    let algorithm = match oid {
        RSA_ENCRYPTION => Algorithm::Rs256,
        EC_PUBLIC_KEY => {
            let (curve_tag, curve, _) = element(parameters)?;
            if curve_tag != OID || curve != P256 {
                return Err(KeyError::Unsupported("an EC key not on P-256"));
            }
            Algorithm::Es256
        }
        ED25519 => Algorithm::EdDsa,
        _ => return Err(KeyError::Unsupported("an unknown key algorithm")),
    };
    Ok(PublicKey { algorithm, bytes: key.to_vec() })
}
