//! Flash messages: one line of feedback ("Room created.", "No user named x.") carried
//! across a redirect in a short-lived signed cookie and shown once by the next page. The
//! MAC keeps other sites (and other cookie writers) from putting words on our pages; the
//! text is rendered escaped like everything else.

use axum::http::HeaderMap;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::super::cookies::{cookie, secure_suffix};

const FLASH_COOKIE: &str = "districhat_flash";
/// Flash texts longer than this are cut (cookies are small).
const MAX_CHARS: usize = 300;

/// A message for the next page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Flash {
    /// `error` or `notice`: the CSS class and the ARIA role depend on it.
    pub kind: &'static str,
    pub message: String,
}

impl Flash {
    pub fn error(message: impl Into<String>) -> Self {
        Self { kind: "error", message: message.into() }
    }

    pub fn notice(message: impl Into<String>) -> Self {
        Self { kind: "notice", message: message.into() }
    }

    pub fn is_error(&self) -> bool {
        self.kind == "error"
    }
}

/// The `Set-Cookie` value carrying `flash` (for one minute).
pub fn cookie_value(flash: &Flash, key: &[u8]) -> String {
    let message: String = flash.message.chars().take(MAX_CHARS).collect();
    let payload = format!("{}.{}", flash.kind, URL_SAFE_NO_PAD.encode(message.as_bytes()));
    format!("{payload}.{}", URL_SAFE_NO_PAD.encode(mac(key, &payload).finalize().into_bytes()))
}

pub fn set_cookie(flash: &Flash, key: &[u8], secure: bool) -> String {
    secure_suffix(
        format!("{FLASH_COOKIE}={}; Path=/; HttpOnly; SameSite=Lax; Max-Age=60", cookie_value(flash, key)),
        secure,
    )
}

/// The `Set-Cookie` value that removes a shown flash.
pub fn clear_cookie(secure: bool) -> String {
    secure_suffix(format!("{FLASH_COOKIE}=; Path=/; HttpOnly; SameSite=Lax; Max-Age=0"), secure)
}

/// The flash of a request, if it carries a valid one.
pub fn read(headers: &HeaderMap, key: &[u8]) -> Option<Flash> {
    parse(cookie(headers, FLASH_COOKIE)?, key)
}

fn parse(value: &str, key: &[u8]) -> Option<Flash> {
    let (payload, signature) = value.rsplit_once('.')?;
    let signature = URL_SAFE_NO_PAD.decode(signature).ok()?;
    mac(key, payload).verify_slice(&signature).ok()?;
    let (kind, message) = payload.split_once('.')?;
    let kind = match kind {
        "error" => "error",
        "notice" => "notice",
        _ => return None,
    };
    let message = String::from_utf8(URL_SAFE_NO_PAD.decode(message).ok()?).ok()?;
    Some(Flash { kind, message })
}

fn mac(key: &[u8], payload: &str) -> Hmac<Sha256> {
    // HMAC takes keys of any length, so this cannot fail.
    let mut mac = Hmac::<Sha256>::new_from_slice(key).unwrap_or_else(|_| unreachable!("hmac takes any key length"));
    mac.update(b"districhat-flash\0");
    mac.update(payload.as_bytes());
    mac
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flashes_round_trip_only_with_the_key() {
        let flash = Flash::error("No user named <b>x</b>.");
        let value = cookie_value(&flash, b"key");
        assert_eq!(parse(&value, b"key"), Some(flash));
        assert_eq!(parse(&value, b"other"), None);
        let forged = value.replacen("error", "notice", 1);
        assert_eq!(parse(&forged, b"key"), None);
        assert_eq!(parse("garbage", b"key"), None);
    }
}
