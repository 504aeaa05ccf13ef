//! Certificate credentials: a client assertion (a JWT signed with the application's
//! private key) instead of a client secret.
//!
//! The key is held in memory that is wiped on drop and parsed by `ring` only for the
//! moment of signing; `Debug` never shows it.

use super::error::Error;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::rand::SecureRandom as _;
use ring::signature::RsaKeyPair;
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use zeroize::Zeroizing;

/// How long a client assertion is valid.
const ASSERTION_LIFETIME: Duration = Duration::from_secs(300);

/// `client_assertion_type` of a JWT client assertion.
pub(crate) const ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// The signature of the client assertion.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SignatureAlgorithm {
    /// RSASSA-PSS with SHA-256, header `x5t#S256` (the SHA-256 thumbprint). The default.
    #[default]
    Ps256,
    /// RSASSA-PKCS1-v1_5 with SHA-256, header `x5t` (the SHA-1 thumbprint), for older
    /// identity platforms.
    Rs256,
}

/// The kind of DER the key is kept in.
#[derive(Clone, Copy)]
enum KeyFormat {
    Pkcs8,
    Pkcs1,
}

/// An application's certificate and RSA private key, for certificate credentials.
///
/// Load it from PEM (certificate and PKCS#8 or PKCS#1 key, in one file or two) or, with
/// a password, from a PKCS#12/PFX file. Cloning shares the key. The key never appears in
/// `Debug` output and is wiped from memory when the last clone is dropped.
#[derive(Clone)]
pub struct CertificateCredential {
    certificate: Arc<Vec<u8>>,
    key: Arc<Zeroizing<Vec<u8>>>,
    format: KeyFormat,
    algorithm: SignatureAlgorithm,
    x5t: String,
    x5t_s256: String,
}

impl std::fmt::Debug for CertificateCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertificateCredential")
            .field("x5t#S256", &self.x5t_s256)
            .field("algorithm", &self.algorithm)
            .field("key", &"***")
            .finish()
    }
}

fn bad(m: impl Into<String>) -> Error {
    Error::InvalidArgument(m.into())
}

impl CertificateCredential {
    /// From a DER certificate and a DER private key (PKCS#8 or PKCS#1 RSA). Fails when
    /// the key is no RSA key this library can sign with (2048 bits or more) or does not
    /// belong to the certificate.
    pub fn from_der(certificate: &[u8], key: &[u8]) -> Result<Self, Error> {
        let (format, pair) = match RsaKeyPair::from_pkcs8(key) {
            Ok(p) => (KeyFormat::Pkcs8, p),
            Err(_) => match RsaKeyPair::from_der(key) {
                Ok(p) => (KeyFormat::Pkcs1, p),
                Err(e) => {
                    return Err(bad(format!(
                        "the private key is no usable RSA key (PKCS#8 or PKCS#1, 2048 bits or more): {e}"
                    )));
                }
            },
        };
        // The certificate's SubjectPublicKeyInfo holds the RSAPublicKey DER as is.
        let public = pair.public().as_ref();
        if !certificate.windows(public.len()).any(|w| w == public) {
            return Err(bad("the private key does not belong to the certificate"));
        }
        let sha256 = ring::digest::digest(&ring::digest::SHA256, certificate);
        let sha1 = ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, certificate);
        Ok(Self {
            certificate: Arc::new(certificate.to_vec()),
            key: Arc::new(Zeroizing::new(key.to_vec())),
            format,
            algorithm: SignatureAlgorithm::default(),
            x5t: URL_SAFE_NO_PAD.encode(sha1),
            x5t_s256: URL_SAFE_NO_PAD.encode(sha256),
        })
    }

    /// From PEM text: the first `CERTIFICATE` of `certificate_pem` and the first private
    /// key (`PRIVATE KEY` or `RSA PRIVATE KEY`) of `key_pem`. Pass the same text twice
    /// when one file holds both.
    pub fn from_pem(certificate_pem: &[u8], key_pem: &[u8]) -> Result<Self, Error> {
        let cert = CertificateDer::pem_slice_iter(certificate_pem)
            .next()
            .ok_or_else(|| bad("no CERTIFICATE found in the PEM text"))?
            .map_err(|e| bad(format!("the certificate's PEM text is invalid: {e}")))?;
        let key = PrivateKeyDer::from_pem_slice(key_pem)
            .map_err(|e| bad(format!("no private key found in the PEM text: {e}")))?;
        Self::from_key_der(&cert, key)
    }

    fn from_key_der(cert: &[u8], key: PrivateKeyDer<'_>) -> Result<Self, Error> {
        match &key {
            PrivateKeyDer::Pkcs8(k) => Self::from_der(cert, k.secret_pkcs8_der()),
            PrivateKeyDer::Pkcs1(k) => Self::from_der(cert, k.secret_pkcs1_der()),
            _ => Err(bad(
                "the private key is not an RSA key: Entra ID certificate credentials need RSA",
            )),
        }
    }

    /// From PEM files: `certificate_path` holds the certificate, `key_path` the private
    /// key (`None`: the same file holds both). Warns when the key file can be read by
    /// group or others.
    pub fn from_pem_files(certificate_path: &Path, key_path: Option<&Path>) -> Result<Self, Error> {
        let read = |p: &Path| {
            std::fs::read(p)
                .map(Zeroizing::new)
                .map_err(|e| bad(format!("cannot read {}: {e}", p.display())))
        };
        let cert = read(certificate_path)?;
        let key_path = key_path.unwrap_or(certificate_path);
        warn_if_exposed(key_path);
        if key_path == certificate_path {
            return Self::from_pem(&cert, &cert);
        }
        Self::from_pem(&cert, &read(key_path)?)
    }

    /// From PKCS#12/PFX data (as Windows, Azure Key Vault and `openssl pkcs12 -export`
    /// write it) and its password: the first private key with its certificate. Modern
    /// (PBES2, AES) and Windows' 3DES/SHA-1 encryptions are read. Needs the `pfx` feature
    /// (on by default); without it this fails with [`Error::InvalidArgument`].
    ///
    /// The PKCS#12 reader keeps its decrypted copy of the key in ordinary memory until it
    /// returns; only the copy this credential keeps is wiped on drop.
    pub fn from_pkcs12(data: &[u8], password: &str) -> Result<Self, Error> {
        #[cfg(feature = "pfx")]
        {
            let store = p12_keystore::KeyStore::from_pkcs12(
                data,
                password,
                p12_keystore::Pkcs12ImportPolicy::Strict,
            )
            .map_err(|e| {
                bad(format!(
                    "the PFX data cannot be read (wrong password?): {e}"
                ))
            })?;
            let (_, chain) = store
                .private_key_chain()
                .ok_or_else(|| bad("the PFX data holds no private key with its certificate"))?;
            let cert = chain
                .certs()
                .first()
                .ok_or_else(|| bad("the PFX data holds no certificate for its key"))?;
            let key = Zeroizing::new(chain.key().as_der().to_vec());
            Self::from_der(cert.as_der(), &key)
        }
        #[cfg(not(feature = "pfx"))]
        {
            let _ = (data, password);
            Err(bad(
                "this build of quotagate reads no PFX files (feature \"pfx\"): convert it to PEM with `openssl pkcs12 -nodes`",
            ))
        }
    }

    /// From a PKCS#12/PFX file; see [`Self::from_pkcs12`]. Warns when the file can be read
    /// by group or others.
    pub fn from_pkcs12_file(path: &Path, password: &str) -> Result<Self, Error> {
        warn_if_exposed(path);
        let data = std::fs::read(path)
            .map(Zeroizing::new)
            .map_err(|e| bad(format!("cannot read {}: {e}", path.display())))?;
        Self::from_pkcs12(&data, password)
    }

    /// From a certificate file of either kind, told apart by its content rather than its
    /// name: PEM text (with `key_path`, or holding the key too; PEM keys are read
    /// unencrypted, so no `password`) or PKCS#12/PFX data (which holds its key, so no
    /// `key_path`; `password` `None` is the empty one).
    pub fn from_file(
        path: &Path,
        key_path: Option<&Path>,
        password: Option<&str>,
    ) -> Result<Self, Error> {
        let data = std::fs::read(path)
            .map(Zeroizing::new)
            .map_err(|e| bad(format!("cannot read {}: {e}", path.display())))?;
        if is_pem(&data) {
            if password.is_some() {
                return Err(bad(format!(
                    "{} is PEM, whose keys are read unencrypted: give no password (a password goes with a PFX file)",
                    path.display()
                )));
            }
            return Self::from_pem_files(path, key_path);
        }
        if key_path.is_some() {
            return Err(bad(format!(
                "{} is not PEM, so it is read as PFX, which holds its key: give no key path",
                path.display()
            )));
        }
        warn_if_exposed(path);
        Self::from_pkcs12(&data, password.unwrap_or(""))
    }

    /// Signs with `algorithm` (default PS256).
    pub fn with_algorithm(mut self, algorithm: SignatureAlgorithm) -> Self {
        self.algorithm = algorithm;
        self
    }

    /// The signature algorithm.
    pub fn algorithm(&self) -> SignatureAlgorithm {
        self.algorithm
    }

    /// The certificate, DER.
    pub fn certificate_der(&self) -> &[u8] {
        &self.certificate
    }

    /// The certificate's SHA-256 thumbprint, base64url (the `x5t#S256` header).
    pub fn thumbprint_sha256(&self) -> &str {
        &self.x5t_s256
    }

    /// A client assertion for `audience` (the token URL) and `client_id`, valid from now
    /// for five minutes, with a fresh random `jti`.
    pub fn assertion(&self, audience: &str, client_id: &str) -> Result<String, Error> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let rng = ring::rand::SystemRandom::new();
        let mut jti = [0u8; 16];
        rng.fill(&mut jti)
            .map_err(|_| bad("no randomness for the assertion's jti"))?;
        let jti: String = jti.iter().map(|b| format!("{b:02x}")).collect();
        let (alg, encoding, thumb) = match self.algorithm {
            SignatureAlgorithm::Ps256 => (
                "PS256",
                &ring::signature::RSA_PSS_SHA256 as &dyn ring::signature::RsaEncoding,
                ("x5t#S256", &self.x5t_s256),
            ),
            SignatureAlgorithm::Rs256 => (
                "RS256",
                &ring::signature::RSA_PKCS1_SHA256 as &dyn ring::signature::RsaEncoding,
                ("x5t", &self.x5t),
            ),
        };
        let mut header = serde_json::Map::new();
        header.insert("alg".into(), alg.into());
        header.insert("typ".into(), "JWT".into());
        header.insert(thumb.0.into(), thumb.1.as_str().into());
        let header = serde_json::Value::Object(header);
        let claims = serde_json::json!({
            "aud": audience,
            "iss": client_id,
            "sub": client_id,
            "jti": jti,
            "nbf": now,
            "iat": now,
            "exp": now + ASSERTION_LIFETIME.as_secs(),
        });
        let signed = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let pair = match self.format {
            KeyFormat::Pkcs8 => RsaKeyPair::from_pkcs8(&self.key),
            KeyFormat::Pkcs1 => RsaKeyPair::from_der(&self.key),
        }
        .map_err(|e| bad(format!("the private key cannot sign: {e}")))?;
        let mut signature = vec![0u8; pair.public().modulus_len()];
        pair.sign(encoding, &rng, signed.as_bytes(), &mut signature)
            .map_err(|_| bad("signing the client assertion failed"))?;
        Ok(format!("{signed}.{}", URL_SAFE_NO_PAD.encode(signature)))
    }
}

/// Warns when a key file can be read by its group or by others.
fn warn_if_exposed(path: &Path) {
    if let Some((who, mode)) = exposure(path) {
        log::warn!(
            "the private key file {} can be read by {who} (mode {mode:o}): restrict it to its owner (chmod 600)",
            path.display(),
        );
    }
}

/// Who besides the owner can read `path` ("anyone" or "its group"), and its mode.
fn exposure(path: &Path) -> Option<(&'static str, u32)> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(path).ok()?.permissions().mode() & 0o777;
        match mode {
            m if m & 0o004 != 0 => Some(("anyone", m)),
            m if m & 0o040 != 0 => Some(("its group", m)),
            _ => None,
        }
    }
    #[cfg(not(unix))]
    {
        let _ = path;
        None
    }
}

/// Whether `data` is PEM text: a `-----BEGIN ` line after optional UTF-8 BOM, blank
/// lines and explanatory text (as `openssl` writes before a certificate). PKCS#12 is DER,
/// which starts with a SEQUENCE byte (0x30) and holds no such line near its start.
fn is_pem(data: &[u8]) -> bool {
    let head = &data[..data.len().min(64 * 1024)];
    data.first() != Some(&0x30) && head.windows(11).any(|w| w == b"-----BEGIN ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(unix)]
    #[test]
    fn key_files_readable_by_others_are_noticed() {
        use std::os::unix::fs::PermissionsExt as _;
        let path = std::env::temp_dir().join(format!("quotagate-key-{}.pem", std::process::id()));
        std::fs::write(&path, "x").unwrap();
        for (mode, who) in [
            (0o600, None),
            (0o640, Some("its group")),
            (0o644, Some("anyone")),
        ] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            assert_eq!(exposure(&path).map(|e| e.0), who, "{mode:o}");
        }
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn a_certificate_file_is_read_as_pem_or_pfx_by_its_content() {
        let data = |name: &str| {
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/data")
                .join(name)
        };
        let pem = CertificateCredential::from_file(&data("app.pem"), None, None).unwrap();
        let split =
            CertificateCredential::from_file(&data("app.crt"), Some(&data("app.key")), None)
                .unwrap();
        assert_eq!(pem.thumbprint_sha256(), split.thumbprint_sha256());
        // A PFX file under a name that says nothing, and one that lies.
        let dir = std::env::temp_dir().join(format!("quotagate-certfile-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let odd = dir.join("app.pem");
        std::fs::copy(data("app.pfx"), &odd).unwrap();
        #[cfg(feature = "pfx")]
        {
            let pfx = CertificateCredential::from_file(&odd, None, Some("quotagate")).unwrap();
            assert_eq!(pfx.thumbprint_sha256(), pem.thumbprint_sha256());
        }
        let both =
            CertificateCredential::from_file(&odd, Some(&data("app.key")), None).unwrap_err();
        assert!(both.to_string().contains("give no key path"), "{both}");
        let locked =
            CertificateCredential::from_file(&data("app.pem"), None, Some("x")).unwrap_err();
        assert!(locked.to_string().contains("give no password"), "{locked}");
        let missing = CertificateCredential::from_file(&dir.join("none"), None, None).unwrap_err();
        assert!(missing.to_string().contains("cannot read"), "{missing}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn assertions_carry_the_documented_header_and_claims() {
        let cert = CertificateCredential::from_pem(
            include_bytes!("../../tests/data/app.crt"),
            include_bytes!("../../tests/data/app-pkcs1.key"),
        )
        .unwrap();
        let url = "https://login.example/t/oauth2/v2.0/token";
        let jwt = cert.assertion(url, "app").unwrap();
        let part = |i: usize| -> serde_json::Value {
            let bytes = URL_SAFE_NO_PAD
                .decode(jwt.split('.').nth(i).unwrap())
                .unwrap();
            serde_json::from_slice(&bytes).unwrap()
        };
        let (header, claims) = (part(0), part(1));
        assert_eq!(header["alg"], "PS256");
        assert_eq!(header["typ"], "JWT");
        assert_eq!(header["x5t#S256"], cert.thumbprint_sha256());
        assert_eq!(claims["aud"], url);
        assert_eq!(
            (&claims["iss"], &claims["sub"]),
            (&"app".into(), &"app".into())
        );
        assert_eq!(claims["jti"].as_str().unwrap().len(), 32);
        let (iat, exp) = (
            claims["iat"].as_u64().unwrap(),
            claims["exp"].as_u64().unwrap(),
        );
        assert_eq!(exp - iat, 300);
        assert_eq!(claims["nbf"], claims["iat"]);
        assert_ne!(
            jwt,
            cert.assertion(url, "app").unwrap(),
            "a fresh jti each time"
        );
        let shown = format!("{cert:?}");
        assert!(!shown.contains("MII") && shown.contains("***"), "{shown}");
    }
}
