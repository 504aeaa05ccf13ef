//! Checks client assertions (certificate credentials) the way the identity platform does:
//! the signature against the registered certificate's public key, the thumbprint header,
//! `aud`, `iss`, `sub`, `nbf`, `exp`, the certificate's validity period, and a `jti` that
//! must never come twice.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject as _;
use serde_json::Value;
use std::collections::HashMap;

/// Why an assertion was refused: the AADSTS code and its text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Refusal {
    pub code: u32,
    pub text: String,
}

fn refuse(code: u32, text: impl Into<String>) -> Refusal {
    Refusal {
        code,
        text: text.into(),
    }
}

/// A certificate registered for an application.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Registered {
    der: Vec<u8>,
    x5t: String,
    x5t_s256: String,
    /// Validity, in seconds since the Unix epoch.
    not_before: i64,
    not_after: i64,
}

impl Registered {
    /// Reads a certificate given as DER or PEM.
    pub fn parse(cert: &[u8]) -> Result<Registered, String> {
        let der = if cert.starts_with(b"-----") {
            CertificateDer::from_pem_slice(cert)
                .map_err(|e| format!("no certificate in the PEM text: {e}"))?
                .to_vec()
        } else {
            cert.to_vec()
        };
        webpki::EndEntityCert::try_from(&CertificateDer::from(der.as_slice()))
            .map_err(|e| format!("the certificate cannot be parsed: {e}"))?;
        let (not_before, not_after) =
            validity(&der).ok_or("the certificate's validity cannot be read")?;
        let digest = |alg| URL_SAFE_NO_PAD.encode(ring::digest::digest(alg, &der));
        Ok(Registered {
            x5t: digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY),
            x5t_s256: digest(&ring::digest::SHA256),
            der,
            not_before,
            not_after,
        })
    }
}

/// Checks `assertion` for `client_id` (from the form; empty: take it from the assertion)
/// at the token URL `audience`, at `now` (Unix seconds). Records the `jti` in `seen`
/// (jti -> exp). Returns the client id.
pub(crate) fn verify(
    assertion: &str,
    client_id: &str,
    audience: &str,
    certificates: &dyn Fn(&str) -> Vec<Registered>,
    seen: &mut HashMap<String, i64>,
    now: i64,
) -> Result<String, Refusal> {
    let jwt = Jwt::parse(assertion)?;
    let iss = jwt.claim("iss").unwrap_or_default();
    let client_id = if client_id.is_empty() {
        iss.clone()
    } else {
        client_id.to_owned()
    };
    if iss != client_id || jwt.claim("sub").as_deref() != Some(client_id.as_str()) {
        return Err(refuse(
            700021,
            "Client assertion application identifier doesn't match 'client_id' parameter.",
        ));
    }
    let registered = certificates(&client_id);
    if registered.is_empty() {
        return Err(refuse(
            700027,
            format!(
                "Client assertion failed signature validation: no certificate is registered for the application '{client_id}'."
            ),
        ));
    }
    let cert = jwt.signer(&registered)?;
    if now < cert.not_before || now >= cert.not_after {
        return Err(refuse(
            700027,
            "Client assertion contains an invalid signature. [Reason - The key used is expired.]",
        ));
    }
    jwt.check_claims(audience, seen, now)?;
    Ok(client_id)
}

/// A client assertion's parts, decoded.
struct Jwt<'a> {
    header: Value,
    claims: Value,
    signature: Vec<u8>,
    /// The signed text: header and claims as sent.
    signed: &'a str,
}

fn malformed() -> Refusal {
    refuse(50027, "JWT token is invalid or malformed.")
}

impl<'a> Jwt<'a> {
    fn parse(assertion: &'a str) -> Result<Self, Refusal> {
        let mut parts = assertion.split('.');
        let (Some(h), Some(c), Some(s), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(malformed());
        };
        let decode = |p: &str| URL_SAFE_NO_PAD.decode(p).map_err(|_| malformed());
        let json = |p: &str| -> Result<Value, Refusal> {
            serde_json::from_slice(&decode(p)?).map_err(|_| malformed())
        };
        Ok(Self {
            header: json(h)?,
            claims: json(c)?,
            signature: decode(s)?,
            signed: &assertion[..h.len() + 1 + c.len()],
        })
    }

    fn header(&self, name: &str) -> Option<String> {
        self.header
            .get(name)
            .and_then(Value::as_str)
            .map(str::to_owned)
    }

    fn claim(&self, name: &str) -> Option<String> {
        self.claims
            .get(name)
            .and_then(Value::as_str)
            .map(str::to_owned)
    }

    /// The registered certificate whose key signed the assertion.
    fn signer<'r>(&self, registered: &'r [Registered]) -> Result<&'r Registered, Refusal> {
        let (alg, thumb_name): (&dyn rustls_pki_types::SignatureVerificationAlgorithm, _) =
            match self.header("alg").as_deref() {
                Some("PS256") => (
                    webpki::ring::RSA_PSS_2048_8192_SHA256_LEGACY_KEY,
                    "x5t#S256",
                ),
                Some("RS256") => (webpki::ring::RSA_PKCS1_2048_8192_SHA256, "x5t"),
                other => {
                    return Err(refuse(
                        700027,
                        format!("Client assertion uses an unsupported algorithm {other:?}."),
                    ));
                }
            };
        let thumb = self
            .header(thumb_name)
            .or_else(|| self.header("x5t#S256"))
            .or_else(|| self.header("x5t"))
            .unwrap_or_default();
        let Some(cert) = registered
            .iter()
            .find(|r| r.x5t_s256 == thumb || r.x5t == thumb)
        else {
            return Err(refuse(
                700027,
                format!(
                    "Client assertion contains an invalid signature. [Reason - The key was not found., Thumbprint of key used by client: '{thumb}']"
                ),
            ));
        };
        let der = CertificateDer::from(cert.der.as_slice());
        let ee = webpki::EndEntityCert::try_from(&der).map_err(|_| malformed())?;
        if ee
            .verify_signature(alg, self.signed.as_bytes(), &self.signature)
            .is_err()
        {
            return Err(refuse(
                700027,
                "Client assertion contains an invalid signature. [Reason - The signature does not match the registered certificate.]",
            ));
        }
        Ok(cert)
    }

    /// Checks the audience, the time range and that the `jti` is new (recording it).
    fn check_claims(
        &self,
        audience: &str,
        seen: &mut HashMap<String, i64>,
        now: i64,
    ) -> Result<(), Refusal> {
        if self.claim("aud").as_deref() != Some(audience) {
            return Err(refuse(
                700023,
                format!(
                    "Client assertion audience claim does not match the token endpoint '{audience}'."
                ),
            ));
        }
        let number = |k: &str| self.claims.get(k).and_then(Value::as_i64);
        let (Some(exp), Some(nbf)) = (number("exp"), number("nbf")) else {
            return Err(refuse(700024, "Client assertion has no exp or nbf claim."));
        };
        if now >= exp || now < nbf {
            return Err(refuse(
                700024,
                "Client assertion is not within its valid time range.",
            ));
        }
        let Some(jti) = self.claim("jti").filter(|j| !j.is_empty()) else {
            return Err(refuse(50027, "Client assertion has no jti claim."));
        };
        seen.retain(|_, &mut e| e > now);
        if seen.insert(jti, exp).is_some() {
            return Err(refuse(
                50027,
                "The client assertion was already used: its jti was seen before.",
            ));
        }
        Ok(())
    }
}

/// `notBefore` and `notAfter` of a DER certificate, as Unix seconds.
fn validity(der: &[u8]) -> Option<(i64, i64)> {
    // Certificate ::= SEQUENCE { tbsCertificate SEQUENCE { [0] version OPTIONAL,
    //   serialNumber, signature, issuer, validity SEQUENCE { notBefore, notAfter }, ...
    let (_, cert, _) = tlv(der)?;
    let (_, mut tbs, _) = tlv(cert)?;
    if tbs.first() == Some(&0xa0) {
        tbs = tlv(tbs)?.2;
    }
    for _ in 0..3 {
        tbs = tlv(tbs)?.2; // serialNumber, signature, issuer
    }
    let (_, validity, _) = tlv(tbs)?;
    let (t1, v1, rest) = tlv(validity)?;
    let (t2, v2, _) = tlv(rest)?;
    Some((time(t1, v1)?, time(t2, v2)?))
}

/// One DER element: (tag, contents, the bytes after it).
fn tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let tag = *input.first()?;
    let first = *input.get(1)?;
    let (len, start) = if first < 0x80 {
        (usize::from(first), 2)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 {
            return None;
        }
        let len = input
            .get(2..2 + n)?
            .iter()
            .fold(0usize, |a, &b| (a << 8) | usize::from(b));
        (len, 2 + n)
    };
    let end = start.checked_add(len)?;
    Some((tag, input.get(start..end)?, input.get(end..)?))
}

/// A UTCTime (tag 0x17, `YYMMDDHHMMSSZ`) or GeneralizedTime (0x18, `YYYYMMDDHHMMSSZ`).
fn time(tag: u8, v: &[u8]) -> Option<i64> {
    let s = std::str::from_utf8(v).ok()?.strip_suffix('Z')?;
    let n = |r: std::ops::Range<usize>| s.get(r)?.parse::<i64>().ok();
    let (year, rest) = match tag {
        0x17 if s.len() == 12 => {
            let yy = n(0..2)?;
            (if yy >= 50 { 1900 + yy } else { 2000 + yy }, 2)
        }
        0x18 if s.len() == 14 => (n(0..4)?, 4),
        _ => return None,
    };
    let (month, day) = (n(rest..rest + 2)?, n(rest + 2..rest + 4)?);
    let (h, m, sec) = (
        n(rest + 4..rest + 6)?,
        n(rest + 6..rest + 8)?,
        n(rest + 8..rest + 10)?,
    );
    Some(days_from_civil(year, month, day) * 86_400 + h * 3600 + m * 60 + sec)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certificate_validity_is_read() {
        let expired =
            Registered::parse(include_bytes!("../../tests/data/app-expired.crt")).unwrap();
        assert_eq!(expired.not_before, 1_577_836_800); // 2020-01-01
        assert_eq!(expired.not_after, 1_609_459_200); // 2021-01-01
        let valid = Registered::parse(include_bytes!("../../tests/data/app.crt")).unwrap();
        assert!(valid.not_after > 4_000_000_000);
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
        assert!(Registered::parse(b"not a certificate").is_err());
    }
}
