//! Service account tokens: ES256 JWTs signed by a node-local key, with the claims the
//! Kubernetes TokenRequest API issues (k8s-semantics §2.5), and the public key published as a JWKS so
//! clients (`volctl token verify`) can check them.
//!
//! Token text is secret: it is never logged and [`IssuedToken`]'s Debug hides it.

use std::io::{Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use p256::ecdsa::signature::{Signer, Verifier};
use p256::ecdsa::{Signature, SigningKey, VerifyingKey};
use p256::pkcs8::{DecodePrivateKey, EncodePrivateKey, LineEnding};
use serde::{Deserialize, Serialize};
use sha2::Digest;

use crate::error::{Context, Error, Result};

/// The private key, PEM (PKCS#8), mode 0600, in the state dir.
pub const KEY_FILE: &str = "sa-signing-key.pem";
/// The public key set (RFC 7517), mode 0644, in the state dir.
pub const JWKS_FILE: &str = "sa-jwks.json";
/// The issuer Kubernetes clusters use by default.
pub const DEFAULT_ISSUER: &str = "https://kubernetes.default.svc.cluster.local";

/// What a TokenRequest names: the service account, the pod it is bound to, the node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRequest {
    pub namespace: String,
    pub service_account_name: String,
    pub service_account_uid: String,
    pub pod_name: String,
    pub pod_uid: String,
    pub node_name: String,
    pub node_uid: Option<String>,
    /// Empty: the issuer's own audience.
    pub audiences: Vec<String>,
    pub expiration_seconds: i64,
}

#[derive(Clone)]
pub struct IssuedToken {
    pub token: String,
    pub issued_at: u64,
    pub expires_at: u64,
    pub expiration_seconds: i64,
}

impl std::fmt::Debug for IssuedToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedToken")
            .field("issued_at", &self.issued_at)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectRef {
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub uid: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KubernetesClaims {
    pub namespace: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<ObjectRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<ObjectRef>,
    pub serviceaccount: ObjectRef,
}

/// The claims of a bound service account token, as the API server sets them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub aud: Vec<String>,
    pub exp: u64,
    pub iat: u64,
    pub iss: String,
    pub jti: String,
    #[serde(rename = "kubernetes.io")]
    pub kubernetes: KubernetesClaims,
    pub nbf: u64,
    pub sub: String,
}

#[derive(Serialize, Deserialize)]
struct Header {
    alg: String,
    kid: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    typ: Option<String>,
}

/// Signs tokens with the node's key.
pub struct TokenIssuer {
    key: SigningKey,
    kid: String,
    issuer: String,
    jwks_path: PathBuf,
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn random_bytes<const N: usize>() -> Result<[u8; N]> {
    let mut buf = [0u8; N];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .at("read", "/dev/urandom")?;
    Ok(buf)
}

fn key_id(key: &VerifyingKey) -> String {
    let point = key.to_encoded_point(false);
    B64.encode(sha2::Sha256::digest(point.as_bytes()))
}

impl TokenIssuer {
    /// Loads the key from `state_dir`, creating it (mode 0600) on first start, and
    /// (re)publishes the JWKS next to it.
    pub fn open(state_dir: &Path, issuer: &str) -> Result<Self> {
        let key_path = state_dir.join(KEY_FILE);
        let key = match std::fs::read_to_string(&key_path) {
            Ok(pem) => {
                let meta = std::fs::metadata(&key_path).at("stat", &key_path)?;
                if meta.permissions().mode() & 0o077 != 0 {
                    tracing::warn!(path = %key_path.display(), "signing key was readable by others; setting 0600");
                    std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o600))
                        .at("chmod", &key_path)?;
                }
                SigningKey::from_pkcs8_pem(&pem).map_err(|e| Error::CorruptVolume {
                    path: key_path.clone(),
                    reason: format!("signing key: {e}"),
                })?
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Self::create_key(&key_path)?,
            Err(e) => return Err(e).at("read", &key_path),
        };
        let kid = key_id(key.verifying_key());
        let issuer = Self {
            key,
            kid,
            issuer: issuer.to_owned(),
            jwks_path: state_dir.join(JWKS_FILE),
        };
        issuer.publish()?;
        Ok(issuer)
    }

    fn create_key(path: &Path) -> Result<SigningKey> {
        let key = loop {
            // Almost every 32-byte string is a valid scalar; retry the rare one that is not.
            if let Ok(k) = SigningKey::from_slice(&random_bytes::<32>()?) {
                break k;
            }
        };
        let pem = key
            .to_pkcs8_pem(LineEnding::LF)
            .map_err(|e| Error::Token(format!("encoding key: {e}")))?;
        // create_new + 0600: the key is never readable by others, not even for a moment,
        // and two starting processes cannot both write one.
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .at("create", path)?;
        f.write_all(pem.as_bytes()).at("write", path)?;
        f.sync_all().at("fsync", path)?;
        tracing::info!(path = %path.display(), "created service account signing key");
        Ok(key)
    }

    /// The public key set.
    pub fn jwks(&self) -> serde_json::Value {
        let point = self.key.verifying_key().to_encoded_point(false);
        serde_json::json!({
            "keys": [{
                "kty": "EC",
                "crv": "P-256",
                "alg": "ES256",
                "use": "sig",
                "kid": self.kid,
                "x": B64.encode(point.x().expect("uncompressed point")),
                "y": B64.encode(point.y().expect("uncompressed point")),
            }]
        })
    }

    pub fn jwks_path(&self) -> &Path {
        &self.jwks_path
    }

    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    fn publish(&self) -> Result<()> {
        let tmp = self.jwks_path.with_extension("json.tmp");
        let body = serde_json::to_vec_pretty(&self.jwks()).expect("json");
        std::fs::write(&tmp, body).at("write", &tmp)?;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o644)).at("chmod", &tmp)?;
        std::fs::rename(&tmp, &self.jwks_path).at("rename", &tmp)
    }

    /// Issues a token bound to the pod, like TokenRequest with a Pod boundObjectRef.
    pub fn issue(&self, req: &TokenRequest, now: SystemTime) -> Result<IssuedToken> {
        if !(crate::projection::TOKEN_MIN_EXPIRATION..=crate::projection::TOKEN_MAX_EXPIRATION)
            .contains(&req.expiration_seconds)
        {
            return Err(Error::InvalidArgument {
                field: "expirationSeconds",
                reason: format!("{} is outside 600..=4294967296", req.expiration_seconds),
            });
        }
        let iat = unix(now);
        let exp = iat + req.expiration_seconds as u64;
        let aud = if req.audiences.is_empty() {
            vec![self.issuer.clone()]
        } else {
            req.audiences.clone()
        };
        let jti = random_bytes::<16>()?;
        let claims = Claims {
            aud,
            exp,
            iat,
            iss: self.issuer.clone(),
            jti: format!(
                "{}-{}-{}-{}-{}",
                hex(&jti[..4]),
                hex(&jti[4..6]),
                hex(&jti[6..8]),
                hex(&jti[8..10]),
                hex(&jti[10..])
            ),
            kubernetes: KubernetesClaims {
                namespace: req.namespace.clone(),
                node: (!req.node_name.is_empty()).then(|| ObjectRef {
                    name: req.node_name.clone(),
                    uid: req.node_uid.clone().unwrap_or_default(),
                }),
                pod: Some(ObjectRef {
                    name: req.pod_name.clone(),
                    uid: req.pod_uid.clone(),
                }),
                serviceaccount: ObjectRef {
                    name: req.service_account_name.clone(),
                    uid: req.service_account_uid.clone(),
                },
            },
            nbf: iat,
            sub: format!(
                "system:serviceaccount:{}:{}",
                req.namespace, req.service_account_name
            ),
        };
        let header = Header {
            alg: "ES256".into(),
            kid: self.kid.clone(),
            typ: None,
        };
        let signing_input = format!(
            "{}.{}",
            B64.encode(serde_json::to_vec(&header).expect("json")),
            B64.encode(serde_json::to_vec(&claims).expect("json"))
        );
        let sig: Signature = self.key.sign(signing_input.as_bytes());
        Ok(IssuedToken {
            token: format!("{signing_input}.{}", B64.encode(sig.to_bytes())),
            issued_at: iat,
            expires_at: exp,
            expiration_seconds: req.expiration_seconds,
        })
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Checks a token against a published JWKS: signature, `nbf`/`exp` at `now`, and, when
/// given, that `audience` is among `aud`.
pub fn verify(
    jwks: &serde_json::Value,
    token: &str,
    audience: Option<&str>,
    now: SystemTime,
) -> Result<Claims> {
    let bad = |why: &str| Error::Token(why.to_owned());
    let mut parts = token.split('.');
    let (Some(h), Some(c), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(bad("is not a compact JWS"));
    };
    let header: Header = B64
        .decode(h)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or_else(|| bad("has an unreadable header"))?;
    if header.alg != "ES256" {
        return Err(bad("uses an unsupported algorithm"));
    }
    let jwk = jwks["keys"]
        .as_array()
        .and_then(|keys| keys.iter().find(|k| k["kid"] == header.kid.as_str()))
        .ok_or_else(|| bad("is signed by an unknown key"))?;
    let coord = |name: &str| {
        jwk[name]
            .as_str()
            .and_then(|v| B64.decode(v).ok())
            .filter(|v| v.len() == 32)
            .ok_or_else(|| bad("key set holds a malformed key"))
    };
    let mut sec1 = vec![4u8];
    sec1.extend(coord("x")?);
    sec1.extend(coord("y")?);
    let key =
        VerifyingKey::from_sec1_bytes(&sec1).map_err(|_| bad("key set holds a malformed key"))?;
    let sig = B64
        .decode(s)
        .ok()
        .and_then(|b| Signature::from_slice(&b).ok())
        .ok_or_else(|| bad("has a malformed signature"))?;
    key.verify(format!("{h}.{c}").as_bytes(), &sig)
        .map_err(|_| bad("signature does not verify"))?;
    let claims: Claims = B64
        .decode(c)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or_else(|| bad("has unreadable claims"))?;
    let now = unix(now);
    if now < claims.nbf {
        return Err(bad("is not valid yet"));
    }
    if now >= claims.exp {
        return Err(bad("has expired"));
    }
    if let Some(aud) = audience
        && !claims.aud.iter().any(|a| a == aud)
    {
        return Err(bad("is not for this audience"));
    }
    Ok(claims)
}

/// The token manager's `requiresRefresh` (k8s-semantics §2.5): older than 24 h, past 80 % of its
/// lifetime, or issued in the future (the clock went back). `jitter_secs` is drawn
/// from `0..10` by the caller.
pub fn requires_refresh(tok: &IssuedToken, now: SystemTime, jitter_secs: u64) -> bool {
    let now = unix(now) as i128;
    let exp = tok.expires_at as i128;
    let ttl = tok.expiration_seconds as i128;
    let iat = exp - ttl;
    let jitter = jitter_secs as i128;
    now > iat + 24 * 3600 - jitter || now > exp - ttl / 5 - jitter || now < iat
}

/// Seconds from `0..10` for the refresh jitter.
pub fn jitter_secs() -> u64 {
    random_bytes::<1>()
        .map(|b| u64::from(b[0] % 10))
        .unwrap_or(0)
}

/// The first instant at which [`requires_refresh`] turns true for zero jitter.
pub fn refresh_at(tok: &IssuedToken) -> SystemTime {
    let iat = tok.expires_at.saturating_sub(tok.expiration_seconds as u64);
    let by_age = iat + 24 * 3600;
    let by_ttl = tok.expires_at - (tok.expiration_seconds as u64) / 5;
    UNIX_EPOCH + std::time::Duration::from_secs(by_age.min(by_ttl) + 1)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn req() -> TokenRequest {
        TokenRequest {
            namespace: "prod".into(),
            service_account_name: "builder".into(),
            service_account_uid: "sa-uid".into(),
            pod_name: "web-0".into(),
            pod_uid: "pod-uid".into(),
            node_name: "node-a".into(),
            node_uid: None,
            audiences: vec!["vault".into()],
            expiration_seconds: 3600,
        }
    }

    #[test]
    fn key_is_created_0600_and_reused() {
        let tmp = tempfile::tempdir().unwrap();
        let a = TokenIssuer::open(tmp.path(), DEFAULT_ISSUER).unwrap();
        let mode = std::fs::metadata(tmp.path().join(KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let jwks_mode = std::fs::metadata(tmp.path().join(JWKS_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(jwks_mode & 0o777, 0o644);
        let b = TokenIssuer::open(tmp.path(), DEFAULT_ISSUER).unwrap();
        assert_eq!(a.jwks(), b.jwks(), "the second start reuses the key");
        let published: serde_json::Value =
            serde_json::from_slice(&std::fs::read(tmp.path().join(JWKS_FILE)).unwrap()).unwrap();
        assert_eq!(published, a.jwks());
        assert!(
            !published.to_string().contains("\"d\""),
            "no private part published"
        );
    }

    #[test]
    fn issued_tokens_verify_with_the_published_key() {
        let tmp = tempfile::tempdir().unwrap();
        let issuer = TokenIssuer::open(tmp.path(), DEFAULT_ISSUER).unwrap();
        let now = SystemTime::now();
        let tok = issuer.issue(&req(), now).unwrap();
        let jwks: serde_json::Value =
            serde_json::from_slice(&std::fs::read(tmp.path().join(JWKS_FILE)).unwrap()).unwrap();
        let claims = verify(&jwks, &tok.token, Some("vault"), now).unwrap();
        assert_eq!(claims.sub, "system:serviceaccount:prod:builder");
        assert_eq!(claims.iss, DEFAULT_ISSUER);
        assert_eq!(claims.aud, vec!["vault"]);
        assert_eq!(claims.exp - claims.iat, 3600);
        assert_eq!(claims.nbf, claims.iat);
        assert_eq!(claims.kubernetes.pod.as_ref().unwrap().uid, "pod-uid");
        assert_eq!(claims.kubernetes.serviceaccount.uid, "sa-uid");
        assert_eq!(claims.kubernetes.node.as_ref().unwrap().name, "node-a");
        // The JSON uses the exact claim names Kubernetes uses.
        let body = tok.token.split('.').nth(1).unwrap();
        let raw: serde_json::Value = serde_json::from_slice(&B64.decode(body).unwrap()).unwrap();
        assert_eq!(raw["kubernetes.io"]["serviceaccount"]["name"], "builder");
        assert_eq!(raw["kubernetes.io"]["namespace"], "prod");

        assert!(
            verify(&jwks, &tok.token, Some("other"), now).is_err(),
            "audience"
        );
        assert!(
            verify(&jwks, &tok.token, None, now + Duration::from_secs(3600)).is_err(),
            "expired"
        );
        assert!(
            verify(&jwks, &tok.token, None, now - Duration::from_secs(10)).is_err(),
            "not yet valid"
        );
        // Any change to the signed part breaks the signature.
        let mut forged: Vec<char> = tok.token.chars().collect();
        let i = tok.token.find('.').unwrap() + 5;
        forged[i] = if forged[i] == 'A' { 'B' } else { 'A' };
        let forged: String = forged.into_iter().collect();
        assert!(verify(&jwks, &forged, None, now).is_err());
        // A different node key does not verify it.
        let other = tempfile::tempdir().unwrap();
        let other = TokenIssuer::open(other.path(), DEFAULT_ISSUER).unwrap();
        let mut other_jwks = other.jwks();
        other_jwks["keys"][0]["kid"] = jwks["keys"][0]["kid"].clone();
        assert!(verify(&other_jwks, &tok.token, None, now).is_err());
        assert!(verify(&jwks, "a.b", None, now).is_err());
    }

    #[test]
    fn default_audience_and_expiration_bounds() {
        let tmp = tempfile::tempdir().unwrap();
        let issuer = TokenIssuer::open(tmp.path(), "https://issuer.example").unwrap();
        let mut r = req();
        r.audiences.clear();
        let now = SystemTime::now();
        let tok = issuer.issue(&r, now).unwrap();
        let claims = verify(
            &issuer.jwks(),
            &tok.token,
            Some("https://issuer.example"),
            now,
        )
        .unwrap();
        assert_eq!(claims.aud, vec!["https://issuer.example"]);
        for bad in [599, 1 + (1 << 32), -1] {
            r.expiration_seconds = bad;
            assert!(issuer.issue(&r, now).is_err(), "{bad}");
        }
        r.expiration_seconds = 600;
        assert!(issuer.issue(&r, now).is_ok());
    }

    #[test]
    fn refresh_rule() {
        let t0 = UNIX_EPOCH + Duration::from_secs(1_000_000);
        let tok = |ttl: i64| IssuedToken {
            token: String::new(),
            issued_at: 1_000_000,
            expires_at: 1_000_000 + ttl as u64,
            expiration_seconds: ttl,
        };
        let at = |s: u64| t0 + Duration::from_secs(s);
        let hour = tok(3600);
        assert!(!requires_refresh(&hour, at(0), 0));
        assert!(!requires_refresh(&hour, at(2880), 0), "exactly 80 %");
        assert!(requires_refresh(&hour, at(2881), 0));
        assert!(
            requires_refresh(&hour, at(2875), 9),
            "jitter brings it forward"
        );
        assert!(
            requires_refresh(&hour, t0 - Duration::from_secs(1), 0),
            "clock went back"
        );
        // A week-long token is refreshed after 24 h, not at 80 %.
        let week = tok(7 * 24 * 3600);
        assert!(!requires_refresh(&week, at(24 * 3600), 0));
        assert!(requires_refresh(&week, at(24 * 3600 + 1), 0));
        assert_eq!(refresh_at(&hour), at(2881));
        assert_eq!(refresh_at(&week), at(24 * 3600 + 1));
        assert!(jitter_secs() < 10);
    }
}
