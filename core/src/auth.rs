//! Bearer tokens: HS256 JWTs carrying the user id, an optional display name, a
//! role, an expiry and optionally a not-before time, signed with the configured
//! secret.
//!
//! Times are checked in one place, [`Claims::check_time`], with the same
//! [`LEEWAY_SECS`] on every path: [`TokenSigner::verify`] (HTTP, and the
//! WebSocket upgrade) calls it, and so does a WebSocket `send` on a connection
//! opened earlier (the token may have expired since). The scheme of
//! `Authorization: Bearer` is matched case-insensitively (RFC 7235).

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

/// What a token's holder may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Reads and sends plain comments.
    #[default]
    Viewer,
    /// The site's own backends: gifts, sessions, exempt from send limits.
    Service,
    /// Everything, including `/v1/admin/*`.
    Admin,
}

impl Role {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "viewer" => Some(Role::Viewer),
            "service" => Some(Role::Service),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }
    /// Service or admin.
    pub fn is_privileged(self) -> bool {
        matches!(self, Role::Service | Role::Admin)
    }
}

/// Clock skew tolerated on `exp` and `nbf`, seconds, on every path.
pub const LEEWAY_SECS: i64 = 5;

/// Token claims.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Claims {
    /// The user id (1 to 128 bytes).
    pub sub: String,
    /// Expiry, seconds since the Unix epoch.
    pub exp: i64,
    /// Not before, seconds since the Unix epoch (RFC 7519 4.1.5); any JSON
    /// number is taken, a fraction rounded down.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "numeric_date"
    )]
    pub nbf: Option<i64>,
    /// Display name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// What the holder may do.
    #[serde(default)]
    pub role: Role,
    /// Set on tokens minted by `POST /v1/auth/guest`: the client address they
    /// were minted for (an IPv4 address, or an IPv6 /64 prefix). Guests are
    /// limited per address, and a WebSocket `send` carries no address of its
    /// own, so the token carries the one it was minted for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guest: Option<String>,
}

fn numeric_date<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    let v = Option::<f64>::deserialize(d)?;
    match v {
        None => Ok(None),
        // `as` saturates, so a huge nbf stays huge (never valid) instead of wrapping.
        Some(f) if f.is_finite() => Ok(Some(f.floor() as i64)),
        Some(_) => Err(serde::de::Error::custom("nbf is not a finite number")),
    }
}

impl Claims {
    /// Valid at `now_secs`: not expired and not before `nbf`, each with
    /// [`LEEWAY_SECS`]. The one time check of every path (HTTP and WebSocket).
    pub fn check_time(&self, now_secs: i64) -> Result<(), crate::error::ApiError> {
        use crate::error::{ApiError, ErrorCode};
        if self.exp < now_secs.saturating_sub(LEEWAY_SECS) {
            return Err(ApiError::new(ErrorCode::Unauthorized, "the token expired"));
        }
        if self
            .nbf
            .is_some_and(|nbf| nbf > now_secs.saturating_add(LEEWAY_SECS))
        {
            return Err(ApiError::new(
                ErrorCode::Unauthorized,
                "the token is not valid yet (nbf)",
            ));
        }
        Ok(())
    }

    /// Minted by `POST /v1/auth/guest`.
    pub fn is_guest(&self) -> bool {
        self.guest.is_some()
    }
}

/// Signs and verifies tokens with one secret.
#[derive(Clone)]
pub struct TokenSigner {
    enc: EncodingKey,
    dec: DecodingKey,
    validation: Validation,
}

impl std::fmt::Debug for TokenSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenSigner(<secret>)")
    }
}

impl TokenSigner {
    pub fn new(secret: &[u8]) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        // Times are checked by `Claims::check_time`, the same on every path.
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.set_required_spec_claims(&["exp", "sub"]);
        Self {
            enc: EncodingKey::from_secret(secret),
            dec: DecodingKey::from_secret(secret),
            validation,
        }
    }

    /// A token for `user` valid for `ttl_secs` from `now_secs`.
    pub fn issue(
        &self,
        user: &str,
        name: Option<&str>,
        role: Role,
        now_secs: i64,
        ttl_secs: i64,
    ) -> String {
        self.sign(&Claims {
            sub: user.to_string(),
            exp: now_secs.saturating_add(ttl_secs),
            nbf: None,
            name: name.map(str::to_string),
            role,
            guest: None,
        })
    }

    /// A guest token for `user`, minted for the client address key `address`.
    pub fn issue_guest(&self, user: &str, address: &str, now_secs: i64, ttl_secs: i64) -> String {
        self.sign(&Claims {
            sub: user.to_string(),
            exp: now_secs.saturating_add(ttl_secs),
            nbf: None,
            name: None,
            role: Role::Viewer,
            guest: Some(address.to_string()),
        })
    }

    /// Signs `claims` as they are.
    pub fn sign(&self, claims: &Claims) -> String {
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &self.enc)
            .expect("HS256 signing cannot fail")
    }

    /// Verifies signature, algorithm, `exp` and `nbf` (now, by the server clock).
    pub fn verify(&self, token: &str) -> Option<Claims> {
        self.verify_at(token, crate::now_ms() / 1000).ok()
    }

    /// Verifies `token` at `now_secs`: `unauthorized` with the reason otherwise.
    pub fn verify_at(&self, token: &str, now_secs: i64) -> Result<Claims, crate::error::ApiError> {
        use crate::error::{ApiError, ErrorCode};
        let bad = || {
            ApiError::new(
                ErrorCode::Unauthorized,
                "the token is malformed or badly signed",
            )
        };
        let claims = jsonwebtoken::decode::<Claims>(token, &self.dec, &self.validation)
            .map_err(|_| bad())?
            .claims;
        if claims.sub.is_empty() || claims.sub.len() > 128 {
            return Err(bad());
        }
        claims.check_time(now_secs)?;
        Ok(claims)
    }
}

/// The token of an `Authorization` value whose scheme is `Bearer`, in any case
/// (auth schemes are case-insensitive, RFC 7235 section 2.1).
fn bearer_credentials(value: &str) -> Option<&str> {
    let (scheme, rest) = value.trim_start().split_once([' ', '\t'])?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| rest.trim())
        .filter(|t| !t.is_empty())
}

/// The bearer token of a request: `Authorization: Bearer <token>`, else the
/// `?token=` query value (browsers cannot set headers on a WebSocket).
pub fn bearer<'a>(
    headers: &'a axum::http::HeaderMap,
    query_token: Option<&'a str>,
) -> Option<&'a str> {
    let from_header = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(bearer_credentials);
    from_header.or(query_token).filter(|t| !t.is_empty())
}

/// Verifies the request's token: `unauthorized` when missing, malformed,
/// expired, not yet valid or badly signed.
pub fn authenticate(
    signer: &TokenSigner,
    headers: &axum::http::HeaderMap,
    query_token: Option<&str>,
) -> Result<Claims, crate::error::ApiError> {
    use crate::error::{ApiError, ErrorCode};
    let token = bearer(headers, query_token)
        .ok_or_else(|| ApiError::new(ErrorCode::Unauthorized, "a bearer token is required"))?;
    signer.verify_at(token, crate::now_ms() / 1000)
}

/// `authenticate`, then require role service or admin (`forbidden` otherwise).
pub fn require_privileged(
    signer: &TokenSigner,
    headers: &axum::http::HeaderMap,
) -> Result<Claims, crate::error::ApiError> {
    let claims = authenticate(signer, headers, None)?;
    if !claims.role.is_privileged() {
        return Err(crate::error::ApiError::new(
            crate::error::ErrorCode::Forbidden,
            "this needs a service or admin token",
        ));
    }
    Ok(claims)
}

/// Reading needs no token unless `auth.require_token_to_read` is set.
pub fn check_read_access(
    require: bool,
    signer: &TokenSigner,
    headers: &axum::http::HeaderMap,
    query_token: Option<&str>,
) -> Result<(), crate::error::ApiError> {
    if require {
        authenticate(signer, headers, query_token)?;
    }
    Ok(())
}

/// The configured secret, or the one generated once and kept in `<data dir>/secret`.
pub fn load_secret(configured: &str, data_dir: &std::path::Path) -> Result<String, String> {
    if !configured.is_empty() {
        return Ok(configured.to_string());
    }
    let path = data_dir.join("secret");
    if let Ok(s) = std::fs::read_to_string(&path) {
        let s = s.trim().to_string();
        if !s.is_empty() {
            return Ok(s);
        }
    }
    std::fs::create_dir_all(data_dir).map_err(|e| e.to_string())?;
    let secret: String = (0..32)
        .map(|_| format!("{:02x}", rand::random::<u8>()))
        .collect();
    let tmp = data_dir.join("secret.tmp");
    std::fs::write(&tmp, &secret).map_err(|e| e.to_string())?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600));
    }
    std::fs::rename(&tmp, &path).map_err(|e| e.to_string())?;
    Ok(secret)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> i64 {
        crate::now_ms() / 1000
    }

    #[test]
    fn issue_and_verify() {
        let s = TokenSigner::new(b"secret");
        let t = s.issue("alice", Some("Alice"), Role::Admin, now(), 60);
        let c = s.verify(&t).unwrap();
        assert_eq!(c.sub, "alice");
        assert_eq!(c.role, Role::Admin);
        assert_eq!(c.name.as_deref(), Some("Alice"));
    }

    #[test]
    fn forged_expired_and_garbage_are_rejected() {
        let s = TokenSigner::new(b"secret");
        let other = TokenSigner::new(b"other");
        assert!(s
            .verify(&other.issue("alice", None, Role::Admin, now(), 60))
            .is_none());
        assert!(s
            .verify(&s.issue("alice", None, Role::Viewer, now() - 1000, 60))
            .is_none());
        assert!(s.verify("not.a.token").is_none());
        assert!(s.verify("").is_none());
    }

    fn sign(body: serde_json::Value) -> String {
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &body,
            &EncodingKey::from_secret(b"k"),
        )
        .unwrap()
    }

    #[test]
    fn nbf_is_honoured_with_the_leeway() {
        let s = TokenSigner::new(b"k");
        let t = now();
        let at = |nbf: serde_json::Value| {
            sign(serde_json::json!({"sub": "bob", "exp": t + 600, "nbf": nbf}))
        };
        assert_eq!(
            s.verify_at(&at((t + 60).into()), t).unwrap_err().code,
            crate::error::ErrorCode::Unauthorized
        );
        assert!(s.verify(&at((t + 60).into())).is_none());
        // Within the leeway, in the past, fractional: valid.
        assert!(s.verify_at(&at((t + LEEWAY_SECS).into()), t).is_ok());
        assert!(s.verify_at(&at((t - 60).into()), t).is_ok());
        assert!(s.verify_at(&at((t as f64 - 0.5).into()), t).is_ok());
        // A huge nbf stays in the future instead of wrapping.
        assert!(s.verify_at(&at(1e300.into()), t).is_err());
        assert!(s.verify_at(&at("soon".into()), t).is_err());
    }

    #[test]
    fn exp_has_the_same_leeway_on_every_path() {
        let s = TokenSigner::new(b"k");
        let t = now();
        let token = sign(serde_json::json!({"sub": "bob", "exp": t}));
        // `verify_at` (HTTP, WebSocket upgrade) and `check_time` (a WebSocket
        // send later on the same connection) agree at every instant.
        for later in [0, LEEWAY_SECS, LEEWAY_SECS + 1, 3600] {
            let claims = s.verify_at(&token, t).unwrap();
            assert_eq!(
                s.verify_at(&token, t + later).is_ok(),
                claims.check_time(t + later).is_ok(),
                "{later} s after exp"
            );
            assert_eq!(claims.check_time(t + later).is_ok(), later <= LEEWAY_SECS);
        }
    }

    #[test]
    fn the_bearer_scheme_is_case_insensitive() {
        let mut h = axum::http::HeaderMap::new();
        for value in [
            "Bearer abc",
            "bearer abc",
            "BEARER abc",
            "bEaReR   abc ",
            "Bearer\tabc",
        ] {
            h.insert(axum::http::header::AUTHORIZATION, value.parse().unwrap());
            assert_eq!(bearer(&h, None), Some("abc"), "{value:?}");
        }
        for value in ["Basic abc", "Bearerabc", "Bearer ", "abc"] {
            h.insert(axum::http::header::AUTHORIZATION, value.parse().unwrap());
            assert_eq!(bearer(&h, Some("q")), Some("q"), "{value:?}");
        }
    }

    #[test]
    fn guest_tokens_carry_their_address() {
        let s = TokenSigner::new(b"k");
        let c = s
            .verify(&s.issue_guest("guest-1", "192.0.2.7", now(), 60))
            .unwrap();
        assert!(c.is_guest());
        assert_eq!(c.guest.as_deref(), Some("192.0.2.7"));
        assert_eq!(c.role, Role::Viewer);
        assert!(!s
            .verify(&s.issue("u", None, Role::Viewer, now(), 60))
            .unwrap()
            .is_guest());
        // A huge configured lifetime saturates instead of overflowing.
        assert!(s
            .verify(&s.issue("u", None, Role::Viewer, now(), i64::MAX))
            .is_some());
    }

    #[test]
    fn role_defaults_to_viewer() {
        let s = TokenSigner::new(b"k");
        let header = Header::new(Algorithm::HS256);
        let body = serde_json::json!({"sub": "bob", "exp": now() + 60});
        let t = jsonwebtoken::encode(&header, &body, &EncodingKey::from_secret(b"k")).unwrap();
        assert_eq!(s.verify(&t).unwrap().role, Role::Viewer);
    }
}
