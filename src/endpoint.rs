//! The token endpoint and the filter's client authentication there (RFC 6749 §2.3, RFC 7523
//! §2.2): where every request goes, with which headers, and how its form is finished.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use sha2::Sha256;

use crate::assertion::{AssertionSigner, SigningKey, ASSERTION_TYPE};
use crate::config::{ClientAuthConfig, ConfigError};
use crate::host::HttpCall;

/// How the filter authenticates to the STS (RFC 6749 §2.3). Credentials go in one place only.
#[derive(Clone, PartialEq, Eq)]
pub enum ClientAuth {
    /// `client_secret_basic`: the ready `Authorization` header value.
    Basic {
        /// `Basic base64(urlenc(id) ":" urlenc(secret))`.
        header: String,
    },
    /// `client_secret_post`: id and secret in the form.
    Post {
        /// Client id.
        id: String,
        /// Client secret.
        secret: String,
    },
    /// `private_key_jwt`: a fresh signed assertion in the form of every call.
    PrivateKeyJwt(Box<AssertionSigner>),
    /// `tls_client_auth` / `self_signed_tls_client_auth` (RFC 8705 §2): the id in the form,
    /// nothing secret; the STS cluster's client certificate proves it.
    Certificate {
        /// `self_signed_tls_client_auth`.
        self_signed: bool,
    },
    /// No client authentication (a public client; its id, if any, goes in the form).
    None,
}

impl std::fmt::Debug for ClientAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl ClientAuth {
    /// `client_secret_basic` with id and secret each form-urlencoded before base64
    /// (RFC 6749 §2.3.1).
    pub fn basic(id: &str, secret: &str) -> Self {
        let pair = format!("{}:{}", urlencode(id), urlencode(secret));
        ClientAuth::Basic {
            header: format!("Basic {}", STANDARD.encode(pair)),
        }
    }

    /// The method `config` names, ready to use; a private key that does not load is refused
    /// under `key`.
    pub fn compile(config: &ClientAuthConfig, key: &str) -> Result<Self, ConfigError> {
        Ok(match config {
            ClientAuthConfig::Basic { id, secret } => ClientAuth::basic(id, secret),
            ClientAuthConfig::Post { id, secret } => ClientAuth::Post {
                id: id.clone(),
                secret: secret.clone(),
            },
            ClientAuthConfig::PrivateKeyJwt { id, key: k } => {
                let signing = SigningKey::from_pem(&k.alg, &k.pem)
                    .map_err(|why| ConfigError::new(key, why))?;
                ClientAuth::PrivateKeyJwt(Box::new(AssertionSigner {
                    client_id: id.clone(),
                    audience: k.audience.clone(),
                    kid: k.kid.clone(),
                    key: signing,
                }))
            }
            ClientAuthConfig::Certificate { self_signed, .. } => ClientAuth::Certificate {
                self_signed: *self_signed,
            },
            ClientAuthConfig::None => ClientAuth::None,
        })
    }

    /// The method's name as the configuration spells it.
    pub fn name(&self) -> &'static str {
        match self {
            ClientAuth::Basic { .. } => "client_secret_basic",
            ClientAuth::Post { .. } => "client_secret_post",
            ClientAuth::PrivateKeyJwt(_) => "private_key_jwt",
            ClientAuth::Certificate { self_signed: false } => "tls_client_auth",
            ClientAuth::Certificate { self_signed: true } => "self_signed_tls_client_auth",
            ClientAuth::None => "none",
        }
    }
}

fn urlencode(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// The token endpoint and how to authenticate there, shared by every request the filter makes.
#[derive(Clone)]
pub struct Endpoint {
    cluster: String,
    headers: Vec<(String, String)>,
    timeout_ms: u64,
    auth: ClientAuth,
    client_id: Option<String>,
    authority: String,
    token_path: String,
}

/// Shows where and how, never the credentials (the headers hold the Basic secret).
impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("cluster", &self.cluster)
            .field("authority", &self.authority)
            .field("token_path", &self.token_path)
            .field("auth", &self.auth)
            .finish_non_exhaustive()
    }
}

/// A request could not be built: the host gave no randomness for the assertion's `jti`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoRandomness;

impl Endpoint {
    /// The token endpoint at `authority` + `token_path` through `cluster`.
    pub fn new(
        cluster: &str,
        authority: &str,
        token_path: &str,
        timeout_ms: u64,
        client_id: Option<String>,
        auth: ClientAuth,
    ) -> Self {
        let mut headers = vec![
            (":method".to_string(), "POST".to_string()),
            (":path".to_string(), token_path.to_string()),
            (":authority".to_string(), authority.to_string()),
            (
                "content-type".to_string(),
                "application/x-www-form-urlencoded".to_string(),
            ),
            ("accept".to_string(), "application/json".to_string()),
        ];
        if let ClientAuth::Basic { header } = &auth {
            headers.push(("authorization".to_string(), header.clone()));
        }
        Endpoint {
            cluster: cluster.to_string(),
            headers,
            timeout_ms,
            auth,
            client_id,
            authority: authority.to_string(),
            token_path: token_path.to_string(),
        }
    }

    /// The client authentication in use.
    #[cfg(test)]
    pub fn auth(&self) -> &ClientAuth {
        &self.auth
    }

    /// The filter's client id.
    pub fn client_id(&self) -> Option<&str> {
        self.client_id.as_deref()
    }

    /// Adds the client's credentials where the method puts them in the body.
    pub fn append_credentials(&self, form: &mut form_urlencoded::Serializer<'static, String>) {
        match (&self.auth, &self.client_id) {
            (ClientAuth::Post { id, secret }, _) => {
                form.append_pair("client_id", id);
                form.append_pair("client_secret", secret);
            }
            (ClientAuth::None | ClientAuth::Certificate { .. }, Some(id)) => {
                form.append_pair("client_id", id);
            }
            _ => {}
        }
    }

    /// Feeds who asks, and where, into a cache key: they shape the minted token too.
    pub fn feed_identity(&self, key: &mut Sha256) {
        feed(key, "client");
        feed(key, self.client_id.as_deref().unwrap_or(""));
        // Two token services behind one authority are still two services.
        feed(key, &self.cluster);
        feed(key, &self.authority);
        feed(key, &self.token_path);
    }

    /// The call of a finished form body to another endpoint of the STS (`path`).
    pub fn call_to(&self, path: &str, body: String, now_s: u64) -> Result<HttpCall, NoRandomness> {
        let mut call = self.call(body, now_s)?;
        for (name, value) in &mut call.headers {
            if name == ":path" {
                *value = path.to_string();
            }
        }
        Ok(call)
    }

    /// The call for a finished form body, with a fresh client assertion for `private_key_jwt`.
    pub fn call(&self, mut body: String, now_s: u64) -> Result<HttpCall, NoRandomness> {
        if let ClientAuth::PrivateKeyJwt(signer) = &self.auth {
            let assertion = signer.assertion(now_s).map_err(|_| NoRandomness)?;
            body = form_urlencoded::Serializer::for_suffix(body, 0)
                .append_pair("client_assertion_type", ASSERTION_TYPE)
                .append_pair("client_assertion", &assertion)
                .finish();
        }
        Ok(HttpCall {
            cluster: self.cluster.clone(),
            headers: self.headers.clone(),
            body,
            timeout_ms: self.timeout_ms,
        })
    }
}

/// Feeds one field into a key hash, length-prefixed so that no two field lists collide.
pub fn feed(h: &mut Sha256, field: &str) {
    use sha2::Digest;
    h.update((field.len() as u64).to_be_bytes());
    h.update(field.as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn form(body: &str) -> Vec<(String, String)> {
        form_urlencoded::parse(body.as_bytes())
            .into_owned()
            .collect()
    }

    #[test]
    fn basic_auth_form_encodes_before_base64() {
        // RFC 6749 §2.3.1: "a:b+c%d é" must reach the server intact after form decoding.
        let ClientAuth::Basic { header } = ClientAuth::basic("id:x", "a:b+c%d é") else {
            unreachable!()
        };
        let b64 = header.strip_prefix("Basic ").unwrap();
        let raw = String::from_utf8(STANDARD.decode(b64).unwrap()).unwrap();
        assert_eq!(raw, "id%3Ax:a%3Ab%2Bc%25d+%C3%A9");
        let (id, secret) = raw.split_once(':').unwrap();
        let dec = |s: &str| form(&format!("v={s}")).remove(0).1;
        assert_eq!(dec(id), "id:x");
        assert_eq!(dec(secret), "a:b+c%d é");
    }
}
