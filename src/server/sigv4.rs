//! Verifying AWS Signature Version 4 on requests that reach the KMS server (header
//! authentication, `AWS4-HMAC-SHA256`), as the AWS documentation specifies it and checked
//! against the published AWS signing test suite.
//!
//! The verifier recomputes the signature from the request as received, with the headers
//! the client says it signed and the SHA-256 of the body actually received, and compares
//! in constant time. What it checks besides the signature: `host` and `x-amz-date` are
//! among the signed headers, the scope's date is the request's, the scope names the
//! service and ends in `aws4_request`, and the request time is within the allowed skew.

use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};

/// How far a request's time may be from the server's.
pub(crate) const MAX_SKEW_SECS: i64 = 5 * 60;

/// Why a request does not authenticate. Each maps to an AWS error code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum AuthError {
    /// No or malformed `Authorization` (`MissingAuthenticationToken` /
    /// `IncompleteSignature`).
    Malformed(String),
    /// The request time is too far from now (`InvalidSignatureException`).
    Skewed,
    /// The signature does not match (`InvalidSignatureException`).
    BadSignature,
}

/// The parts of an `Authorization: AWS4-HMAC-SHA256 ...` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Authorization {
    pub(crate) access_key_id: String,
    pub(crate) date: String,
    pub(crate) region: String,
    pub(crate) service: String,
    pub(crate) signed_headers: Vec<String>,
    pub(crate) signature: Vec<u8>,
}

/// A request as received: method, path and query as on the request line, headers (any
/// case, repeated names allowed), body.
pub(crate) struct Request<'a> {
    pub(crate) method: &'a str,
    pub(crate) path: &'a str,
    pub(crate) query: &'a str,
    pub(crate) headers: &'a [(String, String)],
    pub(crate) body: &'a [u8],
}

impl Request<'_> {
    /// Every value of header `name`, in order.
    fn values(&self, name: &str) -> impl Iterator<Item = &str> {
        self.headers
            .iter()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.values(name).next()
    }
}

fn malformed(why: &str) -> AuthError {
    AuthError::Malformed(why.to_owned())
}

/// Parses the `Authorization` header value.
pub(crate) fn parse_authorization(value: &str) -> Result<Authorization, AuthError> {
    let rest = value
        .strip_prefix("AWS4-HMAC-SHA256 ")
        .ok_or_else(|| malformed("the Authorization header is not AWS4-HMAC-SHA256"))?;
    let (mut credential, mut signed, mut signature) = (None, None, None);
    for part in rest.split(',').map(str::trim) {
        let (k, v) = part
            .split_once('=')
            .ok_or_else(|| malformed("malformed Authorization header"))?;
        match k {
            "Credential" => credential = Some(v),
            "SignedHeaders" => signed = Some(v),
            "Signature" => signature = Some(v),
            _ => return Err(malformed("unknown field in the Authorization header")),
        }
    }
    let credential = credential.ok_or_else(|| malformed("no Credential"))?;
    let parts: Vec<&str> = credential.split('/').collect();
    let [key, date, region, service, terminator] = parts[..] else {
        return Err(malformed(
            "Credential is not KEY/DATE/REGION/SERVICE/aws4_request",
        ));
    };
    if terminator != "aws4_request"
        || date.len() != 8
        || !date.bytes().all(|b| b.is_ascii_digit())
        || key.is_empty()
        || key.len() > 128
        || region.is_empty()
        || region.len() > 64
    {
        return Err(malformed("malformed Credential"));
    }
    let signed_headers: Vec<String> = signed
        .ok_or_else(|| malformed("no SignedHeaders"))?
        .split(';')
        .map(str::to_owned)
        .collect();
    let sorted = signed_headers.windows(2).all(|w| w[0] < w[1]);
    if signed_headers.len() > 64
        || !sorted
        || signed_headers
            .iter()
            .any(|h| h.is_empty() || h.bytes().any(|b| b.is_ascii_uppercase()))
    {
        return Err(malformed("SignedHeaders must be sorted, lower-case and distinct"));
    }
    let signature = signature.ok_or_else(|| malformed("no Signature"))?;
    let signature = crate::hex::decode(signature)
        .ok()
        .filter(|s| s.len() == 32)
        .ok_or_else(|| malformed("Signature is not 64 hex digits"))?;
    Ok(Authorization {
        access_key_id: key.to_owned(),
        date: date.to_owned(),
        region: region.to_owned(),
        service: service.to_owned(),
        signed_headers,
        signature,
    })
}

/// RFC 3986 encoding as SigV4 wants it: unreserved characters stay, everything else is
/// `%XX` (upper-case).
fn uri_encode(bytes: &[u8], keep_slash: bool) -> String {
    let mut out = String::with_capacity(bytes.len());
    for &b in bytes {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') || (keep_slash && b == b'/') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn percent_decode(s: &str) -> Vec<u8> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(b) = s.get(i + 1..i + 3).and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    out
}

/// The canonical URI: the path with dot segments and empty segments removed, each
/// segment encoded again (services other than S3 double-encode).
fn canonical_uri(path: &str) -> String {
    let mut segments: Vec<&str> = Vec::new();
    for seg in path.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            s => segments.push(s),
        }
    }
    let mut out = String::from("/");
    out.push_str(
        &segments
            .iter()
            .map(|s| uri_encode(s.as_bytes(), false))
            .collect::<Vec<_>>()
            .join("/"),
    );
    if path.ends_with('/') && !segments.is_empty() {
        out.push('/');
    }
    out
}

fn canonical_query(query: &str) -> String {
    let mut pairs: Vec<(String, String)> = query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (
                uri_encode(&percent_decode(k), false),
                uri_encode(&percent_decode(v), false),
            )
        })
        .collect();
    pairs.sort();
    pairs
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&")
}

/// A header value as SigV4 canonicalises it: trimmed, runs of spaces collapsed.
fn canonical_value(v: &str) -> String {
    v.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn canonical_request(req: &Request<'_>, signed: &[String]) -> String {
    let mut headers = String::new();
    for name in signed {
        let values: Vec<String> = req.values(name).map(canonical_value).collect();
        headers.push_str(&format!("{name}:{}\n", values.join(",")));
    }
    format!(
        "{}\n{}\n{}\n{}\n{}\n{}",
        req.method,
        canonical_uri(req.path),
        canonical_query(req.query),
        headers,
        signed.join(";"),
        crate::hex::encode(&Sha256::digest(req.body))
    )
}

fn mac(key: &[u8], data: &[u8]) -> Hmac<Sha256> {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(key).unwrap_or_else(|_| unreachable!());
    mac.update(data);
    mac
}

fn hmac(key: &[u8], data: &[u8]) -> [u8; 32] {
    mac(key, data).finalize().into_bytes().into()
}

/// Whether `auth.signature` is the signature of `req` under `secret` for `auth`'s scope
/// at `amz_date`, compared in constant time.
fn signature_matches(req: &Request<'_>, auth: &Authorization, amz_date: &str, secret: &[u8]) -> bool {
    let scope = format!("{}/{}/{}/aws4_request", auth.date, auth.region, auth.service);
    let string_to_sign = format!(
        "AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{}",
        crate::hex::encode(&Sha256::digest(canonical_request(req, &auth.signed_headers)))
    );
    let mut k_secret = b"AWS4".to_vec();
    k_secret.extend_from_slice(secret);
    let k_date = hmac(&k_secret, auth.date.as_bytes());
    zeroize::Zeroize::zeroize(&mut k_secret);
    let k_region = hmac(&k_date, auth.region.as_bytes());
    let k_service = hmac(&k_region, auth.service.as_bytes());
    let k_signing = hmac(&k_service, b"aws4_request");
    mac(&k_signing, string_to_sign.as_bytes())
        .verify_slice(&auth.signature)
        .is_ok()
}

/// Seconds since the epoch of an `X-Amz-Date` (`YYYYMMDDTHHMMSSZ`).
pub(crate) fn parse_amz_date(s: &str) -> Option<i64> {
    if s.len() != 16 || s.as_bytes()[8] != b'T' || !s.ends_with('Z') {
        return None;
    }
    let rfc3339 = format!(
        "{}-{}-{}T{}:{}:{}Z",
        &s[0..4],
        &s[4..6],
        &s[6..8],
        &s[9..11],
        &s[11..13],
        &s[13..15]
    );
    let t = humantime::parse_rfc3339(&rfc3339).ok()?;
    let secs = t.duration_since(std::time::UNIX_EPOCH).ok()?.as_secs();
    i64::try_from(secs).ok()
}

/// Checks `req`, signed as `auth` says, with the secret access key `secret`, at server
/// time `now` (seconds since the epoch).
pub(crate) fn verify(
    req: &Request<'_>,
    auth: &Authorization,
    secret: &[u8],
    now: i64,
) -> Result<(), AuthError> {
    for required in ["host", "x-amz-date"] {
        if !auth.signed_headers.iter().any(|h| h == required) {
            return Err(AuthError::Malformed(format!(
                "{required} must be a signed header"
            )));
        }
    }
    let amz_date = req
        .header("x-amz-date")
        .ok_or_else(|| malformed("no X-Amz-Date header"))?;
    let time = parse_amz_date(amz_date).ok_or_else(|| malformed("malformed X-Amz-Date"))?;
    if !amz_date.starts_with(&auth.date) {
        return Err(malformed("the credential scope's date is not the request's"));
    }
    if (time - now).abs() > MAX_SKEW_SECS {
        return Err(AuthError::Skewed);
    }
    if signature_matches(req, auth, amz_date, secret) {
        Ok(())
    } else {
        Err(AuthError::BadSignature)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";
    const NOW: i64 = 1_440_938_160; // 2015-08-30T12:36:00Z

    /// Parses a signed request of the AWS signing test suite (`header-signed-request.txt`).
    fn parse(text: &str) -> (String, String, String, Vec<(String, String)>, Vec<u8>) {
        let (head, body) = text.split_once("\n\n").unwrap_or((text, ""));
        let mut lines = head.lines();
        let request_line = lines.next().unwrap();
        let target = request_line.split(' ').nth(1).unwrap();
        let (path, query) = target.split_once('?').unwrap_or((target, ""));
        let headers = lines
            .map(|l| {
                let (n, v) = l.split_once(':').unwrap();
                (n.to_owned(), v.to_owned())
            })
            .collect();
        let method = request_line.split(' ').next().unwrap().to_owned();
        (
            method,
            path.to_owned(),
            query.to_owned(),
            headers,
            body.as_bytes().to_vec(),
        )
    }

    fn check(text: &str) -> Result<(), AuthError> {
        let (method, path, query, headers, body) = parse(text);
        let req = Request {
            method: &method,
            path: &path,
            query: &query,
            headers: &headers,
            body: &body,
        };
        let auth = parse_authorization(req.header("authorization").unwrap())?;
        assert_eq!(auth.access_key_id, "AKIDEXAMPLE");
        verify(&req, &auth, SECRET, NOW)
    }

    /// From the AWS signing test suite (v4): the signed requests, verified as a server
    /// would, pass; the same requests altered fail.
    const VECTORS: &[&str] = &[
        // post-vanilla
        "POST / HTTP/1.1\nHost:example.amazonaws.com\nX-Amz-Date:20150830T123600Z\nAuthorization:AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host;x-amz-date, Signature=5da7c1a2acd57cee7505fc6676e4e544621c30862966e37dddb68e92efbe5d6b",
        // get-header-value-trim
        "GET / HTTP/1.1\nHost:example.amazonaws.com\nMy-Header1: value1\nMy-Header2: \"a   b   c\"\nX-Amz-Date:20150830T123600Z\nAuthorization:AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host;my-header1;my-header2;x-amz-date, Signature=acc3ed3afb60bb290fc8d2dd0098b9911fcaa05412b367055dee359757a9c736",
        // post-x-www-form-urlencoded
        "POST / HTTP/1.1\nContent-Type:application/x-www-form-urlencoded\nHost:example.amazonaws.com\nContent-Length:13\nX-Amz-Date:20150830T123600Z\nx-amz-content-sha256:9095672bbd1f56dfc5b65f3e153adc8731a4a654192329106275f4c7b24d0b6e\nAuthorization:AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=content-length;content-type;host;x-amz-content-sha256;x-amz-date, Signature=d3875051da38690788ef43de4db0d8f280229d82040bfac253562e56c3f20e0b\n\nParam1=value1",
        // get-vanilla-query-order-key-case
        "GET /?Param2=value2&Param1=value1 HTTP/1.1\nHost:example.amazonaws.com\nX-Amz-Date:20150830T123600Z\nAuthorization:AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host;x-amz-date, Signature=b97d918cfa904a5beff61c982a1b6f458b799221646efd99d3219ec94cdf2500",
        // get-header-key-duplicate
        "GET / HTTP/1.1\nHost:example.amazonaws.com\nMy-Header1:value2\nMy-Header1:value2\nMy-Header1:value1\nX-Amz-Date:20150830T123600Z\nAuthorization:AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host;my-header1;x-amz-date, Signature=c9d5ea9f3f72853aea855b47ea873832890dbdd183b4468f858259531a5138ea",
        // get-vanilla-with-session-token
        "GET / HTTP/1.1\nHost:example.amazonaws.com\nX-Amz-Security-Token:6e86291e8372ff2a2260956d9b8aae1d763fbf315fa00fa31553b73ebf194267\nX-Amz-Date:20150830T123600Z\nAuthorization:AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host;x-amz-date;x-amz-security-token, Signature=07ec1639c89043aa0e3e2de82b96708f198cceab042d4a97044c66dd9f74e7f8",
    ];

    #[test]
    fn the_aws_signing_test_suite_verifies() {
        for v in VECTORS {
            assert_eq!(check(v), Ok(()), "{v}");
        }
    }

    #[test]
    fn altered_requests_are_refused() {
        let form = VECTORS[2];
        // The body, a signed header, the date, the secret.
        assert_eq!(
            check(&form.replace("Param1=value1", "Param1=value2")),
            Err(AuthError::BadSignature)
        );
        assert_eq!(
            check(&form.replace(
                "Content-Type:application/x-www-form-urlencoded",
                "Content-Type:text/plain"
            )),
            Err(AuthError::BadSignature)
        );
        let vanilla = VECTORS[0];
        assert_eq!(
            check(&vanilla.replace("X-Amz-Date:20150830T123600Z", "X-Amz-Date:20150830T123601Z")),
            Err(AuthError::BadSignature)
        );
        assert_eq!(
            check(&vanilla.replace("POST /", "POST /x")),
            Err(AuthError::BadSignature)
        );
        let (method, path, query, headers, body) = parse(vanilla);
        let req = Request {
            method: &method,
            path: &path,
            query: &query,
            headers: &headers,
            body: &body,
        };
        let auth = parse_authorization(req.header("authorization").unwrap()).unwrap();
        assert_eq!(
            verify(&req, &auth, b"another secret", NOW),
            Err(AuthError::BadSignature)
        );
        // Too old or too far ahead.
        assert_eq!(verify(&req, &auth, SECRET, NOW + 301), Err(AuthError::Skewed));
        assert_eq!(verify(&req, &auth, SECRET, NOW - 301), Err(AuthError::Skewed));
        assert_eq!(verify(&req, &auth, SECRET, NOW + 299), Ok(()));
    }

    #[test]
    fn malformed_authorization_is_refused() {
        for bad in [
            "",
            "AWS4-HMAC-SHA1 Credential=a/20150830/r/s/aws4_request, SignedHeaders=host, Signature=00",
            "AWS4-HMAC-SHA256 Credential=a/2015083/r/s/aws4_request, SignedHeaders=host;x-amz-date, Signature=5da7c1a2acd57cee7505fc6676e4e544621c30862966e37dddb68e92efbe5d6b",
            "AWS4-HMAC-SHA256 Credential=a/20150830/r/s/aws4_request, SignedHeaders=x-amz-date;host, Signature=5da7c1a2acd57cee7505fc6676e4e544621c30862966e37dddb68e92efbe5d6b",
            "AWS4-HMAC-SHA256 Credential=a/20150830/r/s/other, SignedHeaders=host;x-amz-date, Signature=5da7c1a2acd57cee7505fc6676e4e544621c30862966e37dddb68e92efbe5d6b",
            "AWS4-HMAC-SHA256 Credential=a/20150830/r/s/aws4_request, SignedHeaders=host;x-amz-date, Signature=zz",
        ] {
            assert!(parse_authorization(bad).is_err(), "{bad}");
        }
        // Date and host must be signed.
        let unsigned_date = VECTORS[0].replace("SignedHeaders=host;x-amz-date", "SignedHeaders=host");
        assert!(matches!(check(&unsigned_date), Err(AuthError::Malformed(_))));
    }

    #[test]
    fn paths_are_canonicalised_as_the_suite_says() {
        assert_eq!(canonical_uri("/"), "/");
        assert_eq!(canonical_uri("/example/.."), "/");
        assert_eq!(canonical_uri("//example//"), "/example/");
        assert_eq!(canonical_uri("/example space/"), "/example%20space/");
        assert_eq!(canonical_uri("/%20/"), "/%2520/");
        assert_eq!(
            canonical_query("Param1=value2&Param1=Value1"),
            "Param1=Value1&Param1=value2"
        );
    }
}
