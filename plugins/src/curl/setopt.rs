//! The few libcurl options the `curl` crate has no safe setter for (`protocols=`,
//! `tls13-ciphers=`, no range, HTTP versions newer than its enum), set through the raw handle. Kept apart because it is the plugin's only
//! `unsafe` code.

use std::ffi::CString;

use curl::easy::Easy;

// From curl/curl.h: string options are CURLOPTTYPE_STRINGPOINT (10000) plus their number.
const CURLOPT_TLS13_CIPHERS: curl_sys::CURLoption = 10000 + 276;
const CURLOPT_PROTOCOLS_STR: curl_sys::CURLoption = 10000 + 318;
const CURLOPT_REDIR_PROTOCOLS_STR: curl_sys::CURLoption = 10000 + 319;

/// Sets one string option, returning libcurl's complaint if it refuses the value.
fn set_string(easy: &Easy, option: curl_sys::CURLoption, value: &str) -> Result<(), curl::Error> {
    let value = CString::new(value).map_err(|_| curl::Error::new(curl_sys::CURLE_BAD_FUNCTION_ARGUMENT))?;
    // SAFETY: `easy.raw()` is a live easy handle owned by `easy`; the option takes a
    // NUL-terminated string, which libcurl copies before returning (CURLOPT string options are
    // copied since 7.17), so `value` may be dropped afterwards.
    let rc = unsafe { curl_sys::curl_easy_setopt(easy.raw(), option, value.as_ptr()) };
    if rc == curl_sys::CURLE_OK {
        Ok(())
    } else {
        Err(curl::Error::new(rc))
    }
}

/// Limits the protocols of the URL and of any redirect to the comma-separated list.
pub fn protocols(easy: &Easy, list: &str) -> Result<(), curl::Error> {
    set_string(easy, CURLOPT_PROTOCOLS_STR, list)?;
    set_string(easy, CURLOPT_REDIR_PROTOCOLS_STR, list)
}

/// The TLS 1.3 cipher suites to offer.
pub fn tls13_ciphers(easy: &Easy, list: &str) -> Result<(), curl::Error> {
    set_string(easy, CURLOPT_TLS13_CIPHERS, list)
}

/// Forgets the range of an earlier read: a `HEAD` or `PUT` on the same handle must not carry it.
pub fn no_range(easy: &Easy) -> Result<(), curl::Error> {
    // SAFETY: a live handle; CURLOPT_RANGE accepts NULL, which turns ranges off.
    let rc =
        unsafe { curl_sys::curl_easy_setopt(easy.raw(), curl_sys::CURLOPT_RANGE, std::ptr::null::<libc::c_char>()) };
    if rc == curl_sys::CURLE_OK {
        Ok(())
    } else {
        Err(curl::Error::new(rc))
    }
}

/// CURLOPT_HTTP_VERSION by number, so that `3only` (31), which the crate's enum lacks, works.
pub fn http_version(easy: &Easy, version: libc::c_long) -> Result<(), curl::Error> {
    // SAFETY: a live handle; CURLOPT_HTTP_VERSION takes a long.
    let rc = unsafe { curl_sys::curl_easy_setopt(easy.raw(), curl_sys::CURLOPT_HTTP_VERSION, version) };
    if rc == curl_sys::CURLE_OK {
        Ok(())
    } else {
        Err(curl::Error::new(rc))
    }
}
