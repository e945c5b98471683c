//! Request bodies sent with a `Content-Encoding`: Triton's clients compress requests with gzip
//! or deflate when asked (`request_compression_algorithm`), and so may any HTTP client. Both
//! are inflated before a codec reads the body, never past the request body limit, so a small
//! compressed body cannot become a large one in memory. Responses are not compressed.

use std::borrow::Cow;
use std::io::Read;

use flate2::read::{GzDecoder, ZlibDecoder};
use lambda_http::http::{header, HeaderMap};

use crate::error::Error;

/// `body` as the codecs read it: inflated when its `Content-Encoding` is `gzip` or `deflate`
/// (zlib, as HTTP defines it), as it is when there is none or `identity`. A body that inflates
/// past `limit` bytes is a 413, a corrupt one a 400, another encoding a 415.
pub fn decode<'b>(
    headers: &HeaderMap,
    body: &'b [u8],
    limit: usize,
) -> Result<Cow<'b, [u8]>, Error> {
    let Some(value) = headers.get(header::CONTENT_ENCODING) else {
        return Ok(Cow::Borrowed(body));
    };
    let encoding = String::from_utf8_lossy(value.as_bytes()).trim().to_ascii_lowercase();
    match encoding.as_str() {
        "" | "identity" => Ok(Cow::Borrowed(body)),
        "gzip" | "x-gzip" => inflate(GzDecoder::new(body), "gzip", limit),
        "deflate" => inflate(ZlibDecoder::new(body), "deflate", limit),
        _ => Err(Error::UnsupportedEncoding { encoding }),
    }
}

fn inflate(reader: impl Read, encoding: &str, limit: usize) -> Result<Cow<'static, [u8]>, Error> {
    let limit = limit as u64;
    let mut inflated = Vec::new();
    let read = reader.take(limit.saturating_add(1)).read_to_end(&mut inflated).map_err(|err| {
        Error::invalid_request(format!("the request body is not valid {encoding} data: {err}"))
    })?;
    if read as u64 > limit {
        return Err(Error::InflatesTooLarge { limit });
    }
    Ok(Cow::Owned(inflated))
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use flate2::write::{GzEncoder, ZlibEncoder};
    use flate2::Compression;
    use lambda_http::http::HeaderValue;

    use super::*;

    fn encoded(encoding: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_ENCODING, HeaderValue::from_str(encoding).unwrap());
        headers
    }

    fn gzip(bytes: &[u8]) -> Vec<u8> {
        let mut encoder = GzEncoder::new(Vec::new(), Compression::default());
        encoder.write_all(bytes).unwrap();
        encoder.finish().unwrap()
    }

    fn zlib(bytes: &[u8]) -> Vec<u8> {
        let mut encoder = ZlibEncoder::new(Vec::new(), Compression::default());
        encoder.write_all(bytes).unwrap();
        encoder.finish().unwrap()
    }

    #[test]
    fn gzip_and_deflate_bodies_are_inflated_and_others_pass_as_they_are() {
        let body = br#"{"inputs": []}"#;
        assert_eq!(decode(&encoded("gzip"), &gzip(body), 100).unwrap().as_ref(), body);
        assert_eq!(decode(&encoded(" GZIP "), &gzip(body), 100).unwrap().as_ref(), body);
        assert_eq!(decode(&encoded("deflate"), &zlib(body), 100).unwrap().as_ref(), body);
        assert_eq!(decode(&encoded("identity"), body, 100).unwrap().as_ref(), body);
        assert_eq!(decode(&HeaderMap::new(), body, 100).unwrap().as_ref(), body);
    }

    #[test]
    fn a_body_inflating_past_the_limit_is_413() {
        let bomb = gzip(&vec![b' '; 1 << 20]);
        assert!(bomb.len() < 2000);
        let err = decode(&encoded("gzip"), &bomb, 1000).unwrap_err();
        assert!(matches!(err, Error::InflatesTooLarge { limit: 1000 }), "{err:?}");
        assert_eq!(err.status(), 413);
        // Exactly at the limit is fine.
        assert_eq!(decode(&encoded("gzip"), &gzip(&[b'x'; 1000]), 1000).unwrap().len(), 1000);
    }

    #[test]
    fn corrupt_and_unknown_encodings_are_refused_by_name() {
        let err = decode(&encoded("gzip"), b"{\"inputs\": []}", 100).unwrap_err();
        assert_eq!(err.status(), 400);
        assert!(err.to_string().contains("not valid gzip"), "{err}");
        let truncated = gzip(b"some body that is long enough to cut");
        let err = decode(&encoded("gzip"), &truncated[..truncated.len() - 6], 100).unwrap_err();
        assert_eq!(err.status(), 400, "{err}");
        let err = decode(&encoded("br"), b"...", 100).unwrap_err();
        assert_eq!(err.status(), 415);
        assert!(err.to_string().contains("`br`"), "{err}");
    }
}
