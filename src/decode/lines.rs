//! JSON Lines read with a bound, for `replay`, `evaluate` and `produce`: a line ends at
//! LF, CRLF or a lone CR (JSON strings cannot hold a raw CR or LF, so no event is cut),
//! and no more than `max_bytes + 1` bytes of a line are ever held: the rest of a longer
//! line is read past, not buffered, and the line is marked oversized with its length.
//! Bytes are returned as they are (invalid UTF-8 is the decoder's to reject, with the
//! line's number).

use std::io::{self, BufRead};

use super::{decode_json, DecodeError, Limits, Reason};
use crate::event::Event;

/// One line of input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    /// 1-based line number.
    pub number: u64,
    /// The line without its end; at most `max_bytes + 1` bytes of an oversized one.
    pub bytes: Vec<u8>,
    /// The line's full length in bytes.
    pub len: usize,
}

impl Line {
    /// Longer than the bound: [`Line::bytes`] holds only its start.
    pub fn oversized(&self, max_bytes: usize) -> bool {
        self.len > max_bytes
    }

    /// The line as a JSON event: [`Reason::Oversized`] with its real length when it is
    /// longer than the limit (only its start is held), else [`decode_json`]'s answer.
    pub fn decode(&self, limits: &Limits) -> Result<Event<'_>, DecodeError> {
        if self.oversized(limits.max_event_bytes) {
            return Err(DecodeError::new(
                Reason::Oversized,
                format!(
                    "{} bytes, more than the limit of {}",
                    self.len, limits.max_event_bytes
                ),
            ));
        }
        decode_json(&self.bytes, limits)
    }

    /// Nothing but whitespace (skipped by readers of events).
    pub fn is_blank(&self) -> bool {
        self.bytes.iter().all(u8::is_ascii_whitespace)
    }
}

/// The lines of `input`, each held to `max_bytes + 1` bytes.
pub struct Lines<R> {
    input: R,
    max_bytes: usize,
    number: u64,
    /// The previous line ended with CR: a LF right after it belongs to that end.
    after_cr: bool,
    done: bool,
}

impl<R: BufRead> Lines<R> {
    /// Reads `input`, keeping at most `max_bytes + 1` bytes of any line.
    pub fn new(input: R, max_bytes: usize) -> Lines<R> {
        Lines {
            input,
            max_bytes,
            number: 0,
            after_cr: false,
            done: false,
        }
    }

    fn read_line(&mut self) -> io::Result<Option<Line>> {
        let keep = self.max_bytes.saturating_add(1);
        let mut bytes = Vec::new();
        let mut len = 0usize;
        let mut any = false;
        loop {
            let buf = match self.input.fill_buf() {
                Ok(b) => b,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            if buf.is_empty() {
                self.done = true;
                return Ok(any.then(|| self.line(bytes, len)));
            }
            if self.after_cr {
                self.after_cr = false;
                if buf[0] == b'\n' {
                    self.input.consume(1);
                    continue;
                }
            }
            any = true;
            let end = buf.iter().position(|b| *b == b'\n' || *b == b'\r');
            let take = end.unwrap_or(buf.len());
            let room = keep.saturating_sub(bytes.len()).min(take);
            bytes.extend_from_slice(&buf[..room]);
            len += take;
            match end {
                Some(i) => {
                    self.after_cr = buf[i] == b'\r';
                    self.input.consume(i + 1);
                    return Ok(Some(self.line(bytes, len)));
                }
                None => {
                    let n = buf.len();
                    self.input.consume(n);
                }
            }
        }
    }

    fn line(&mut self, bytes: Vec<u8>, len: usize) -> Line {
        self.number += 1;
        Line {
            number: self.number,
            bytes,
            len,
        }
    }
}

impl<R: BufRead> Iterator for Lines<R> {
    type Item = io::Result<Line>;

    fn next(&mut self) -> Option<io::Result<Line>> {
        if self.done {
            return None;
        }
        match self.read_line() {
            Ok(line) => line.map(Ok),
            Err(e) => {
                self.done = true;
                Some(Err(e))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(input: &[u8], max: usize) -> Vec<(u64, String, usize)> {
        // A tiny buffer, so that line ends and CRLF pairs straddle refills.
        Lines::new(io::BufReader::with_capacity(3, input), max)
            .map(|l| {
                let l = l.unwrap();
                (
                    l.number,
                    String::from_utf8_lossy(&l.bytes).into_owned(),
                    l.len,
                )
            })
            .collect()
    }

    #[test]
    fn lf_crlf_and_lone_cr_all_end_a_line() {
        assert_eq!(
            read(b"a\nbb\r\nccc\rd", 100),
            vec![
                (1, "a".into(), 1),
                (2, "bb".into(), 2),
                (3, "ccc".into(), 3),
                (4, "d".into(), 1)
            ]
        );
        // a CR-only file is many lines, not one
        assert_eq!(read(b"x\ry\rz\r", 100).len(), 3);
        // empty lines are lines (numbers stay those of the file)
        assert_eq!(
            read(b"\n\r\nq\n", 100),
            vec![(1, "".into(), 0), (2, "".into(), 0), (3, "q".into(), 1)]
        );
    }

    #[test]
    fn a_line_longer_than_the_bound_is_read_past_not_held() {
        let mut input = vec![b'x'; 10_000];
        input.extend_from_slice(b"\nok\n");
        let lines: Vec<Line> = Lines::new(io::BufReader::with_capacity(64, &input[..]), 100)
            .map(Result::unwrap)
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0].len, 10_000);
        assert!(lines[0].oversized(100));
        assert_eq!(
            lines[0].bytes.len(),
            101,
            "only the bound and one byte are kept"
        );
        assert_eq!((lines[1].number, &lines[1].bytes[..]), (2, &b"ok"[..]));
        assert!(!lines[1].oversized(100));
    }

    #[test]
    fn invalid_utf8_is_passed_on_as_bytes() {
        let lines: Vec<Line> = Lines::new(&b"{\"a\":\xff}\nz"[..], 100)
            .map(Result::unwrap)
            .collect();
        assert_eq!(lines[0].bytes, b"{\"a\":\xff}");
        assert_eq!(lines[1].number, 2);
    }

    #[test]
    fn a_read_error_ends_the_lines_after_reporting_it() {
        struct Failing(bool);
        impl io::Read for Failing {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                if std::mem::replace(&mut self.0, true) {
                    Err(io::Error::other("disk gone"))
                } else {
                    buf[..2].copy_from_slice(b"a\n");
                    Ok(2)
                }
            }
        }
        let mut lines = Lines::new(io::BufReader::new(Failing(false)), 100);
        assert_eq!(lines.next().unwrap().unwrap().bytes, b"a");
        assert!(lines.next().unwrap().is_err());
        assert!(lines.next().is_none());
    }
}
