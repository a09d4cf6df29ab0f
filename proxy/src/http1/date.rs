//! Dates as the proxy writes them, and the one cache that keeps formatting them off the hot path:
//! a text that changes once a second is formatted once per second per thread.

use std::cell::RefCell;
use std::thread::LocalKey;

use jiff::Timestamp;

/// One thread's copy of a text that changes once a second, with the second it is for.
pub type SecondCache = RefCell<(i64, String)>;

/// An empty [`SecondCache`], for `thread_local!` initializers.
pub const fn empty_cache() -> SecondCache {
    RefCell::new((i64::MIN, String::new()))
}

/// Appends the text of `second` kept in `cache`, formatted by `format` only when the second
/// changed since this thread last wrote it.
pub fn write_per_second(
    cache: &'static LocalKey<SecondCache>,
    second: i64,
    format: impl FnOnce(i64) -> String,
    out: &mut Vec<u8>,
) {
    cache.with_borrow_mut(|(cached, text)| {
        if *cached != second {
            *cached = second;
            *text = format(second);
        }
        out.extend_from_slice(text.as_bytes());
    });
}

/// `t` as an HTTP-date (RFC 9110 IMF-fixdate: `Sun, 06 Nov 1994 08:49:37 GMT`), as `Date` and
/// `Sunset` carry it.
pub fn http_date(t: Timestamp) -> String {
    t.strftime("%a, %d %b %Y %H:%M:%S GMT").to_string()
}

/// Appends the current time as an HTTP-date (the `Date` header).
pub fn write_http_date_now(out: &mut Vec<u8>) {
    thread_local! {
        static NOW: SecondCache = const { empty_cache() };
    }
    let second = Timestamp::now().as_second();
    write_per_second(
        &NOW,
        second,
        |s| http_date(Timestamp::from_second(s).unwrap_or(Timestamp::UNIX_EPOCH)),
        out,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_dates_are_imf_fixdate_in_gmt() {
        let t = Timestamp::from_second(784_111_777).expect("instant");
        assert_eq!(http_date(t), "Sun, 06 Nov 1994 08:49:37 GMT");
        let mut out = Vec::new();
        write_http_date_now(&mut out);
        let text = String::from_utf8(out).expect("ASCII");
        assert!(text.ends_with(" GMT") && text.len() == 29, "{text}");
    }

    #[test]
    fn a_second_is_formatted_once_per_thread() {
        thread_local! {
            static CACHE: SecondCache = const { empty_cache() };
        }
        let mut formatted = 0;
        let mut out = Vec::new();
        for second in [5, 5, 5, 6, 6] {
            write_per_second(
                &CACHE,
                second,
                |s| {
                    formatted += 1;
                    format!("<{s}>")
                },
                &mut out,
            );
        }
        assert_eq!(formatted, 2);
        assert_eq!(out, b"<5><5><5><6><6>");
    }
}
