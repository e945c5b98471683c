//! CSV records as fields of bytes, untrimmed. Numeric tables are plain lines: no quotes,
//! fields split by commas, lines ended by `\n` or `\r\n`. Those are split here where they
//! lie, without the `csv` crate's copy into a record and its state machine (a third of the
//! reader's time on the 784-column benchmark file). From the first line that is not plain (a
//! quote or a lone carriage return anywhere in it, or a byte order mark opening the file), the
//! `csv` crate reads the rest of the file. Both give the records the `csv` crate gives for the
//! whole file (a test compares them over generated text), blank lines skipped.
//!
//! A record is held whole while it is read, so its length is bounded: a plain line over the
//! limit is an error of its own and is skipped; past a quote, a record over it makes the rest
//! of the file unreadable (where it ends cannot be known without reading it).

use std::cell::Cell;
use std::io::{self, BufRead, Read};
use std::rc::Rc;

use super::{read_line, Line};

/// The fields of one record, in order.
#[derive(Clone)]
pub enum Fields<'r> {
    /// What is left of a plain line; `None` after its last field.
    Plain(Option<&'r [u8]>),
    Csv(::csv::ByteRecordIter<'r>),
}

impl<'r> Iterator for Fields<'r> {
    type Item = &'r [u8];

    fn next(&mut self) -> Option<&'r [u8]> {
        match self {
            Fields::Plain(rest) => {
                let line = (*rest)?;
                match line.iter().position(|b| *b == b',') {
                    Some(comma) => {
                        *rest = Some(&line[comma + 1..]);
                        Some(&line[..comma])
                    }
                    None => rest.take(),
                }
            }
            Fields::Csv(fields) => fields.next(),
        }
    }
}

/// A record that could not be read.
#[derive(Debug)]
pub enum Malformed {
    /// A plain line of this many bytes (at least), over the limit; it was skipped.
    TooLong(u64),
    /// A record the `csv` crate refused.
    Csv(::csv::Error),
}

/// Calls `each` with every record of `reader` (or why one could not be read) until it
/// returns `false`; records hold at most `max_record` bytes. Fails when `reader` does, or
/// when a record past a quote is longer.
pub fn read(
    mut reader: impl BufRead,
    max_record: usize,
    each: &mut dyn FnMut(Result<Fields<'_>, Malformed>) -> bool,
) -> io::Result<()> {
    let mut line = Vec::new();
    let mut first = true;
    loop {
        match read_line(&mut reader, max_record, &mut line)? {
            Line::End => return Ok(()),
            Line::TooLong(size) => {
                first = false;
                if !each(Err(Malformed::TooLong(size))) {
                    return Ok(());
                }
                continue;
            }
            Line::Read => {}
        }
        let Some(record) = plain(&line, first) else {
            // A fresh `csv` reader would take a byte order mark opening what it is given for
            // the file's; after the first line, a blank line in front stops that.
            let before: &[u8] = if first { b"" } else { b"\n" };
            let rest = before.chain(line.as_slice()).chain(reader);
            return read_csv(rest, u64::try_from(max_record).unwrap_or(u64::MAX), each);
        };
        first = false;
        if !record.is_empty() && !each(Ok(Fields::Plain(Some(record)))) {
            return Ok(());
        }
    }
}

/// A line's record when the line is plain: no quote, no carriage return but one just before
/// its `\n`, and, on the first line, no byte order mark.
fn plain(line: &[u8], first: bool) -> Option<&[u8]> {
    let record = line.strip_suffix(b"\n").unwrap_or(line);
    let record = record.strip_suffix(b"\r").unwrap_or(record);
    let odd = memchr::memchr2(b'"', b'\r', record).is_some();
    let opens_with_mark = first && record.starts_with(b"\xef\xbb\xbf");
    (!odd && !opens_with_mark).then_some(record)
}

fn read_csv(
    reader: impl Read,
    max_record: u64,
    each: &mut dyn FnMut(Result<Fields<'_>, Malformed>) -> bool,
) -> io::Result<()> {
    let record_end = Rc::new(Cell::new(0));
    let bounded =
        Bounded { inner: reader, read: 0, max_record, record_end: Rc::clone(&record_end) };
    let mut records =
        ::csv::ReaderBuilder::new().has_headers(false).flexible(true).from_reader(bounded);
    let mut record = ::csv::ByteRecord::new();
    loop {
        let read = records.read_byte_record(&mut record);
        record_end.set(records.position().byte());
        let more = match read {
            Ok(more) => more,
            Err(e) if e.is_io_error() => return Err(io::Error::from(e)),
            Err(e) => {
                if !each(Err(Malformed::Csv(e))) {
                    return Ok(());
                }
                continue;
            }
        };
        if !more || !each(Ok(Fields::Csv(record.iter()))) {
            return Ok(());
        }
    }
}

/// A reader that fails once `max_record` bytes more than the end of the last record
/// (`record_end`, in the bytes it gave) have been read: the `csv` crate gathers a record
/// whole, and its read-ahead is small.
struct Bounded<R> {
    inner: R,
    read: u64,
    max_record: u64,
    record_end: Rc<Cell<u64>>,
}

impl<R: Read> Read for Bounded<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.read > self.record_end.get().saturating_add(self.max_record) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("a CSV record is longer than {} bytes", self.max_record),
            ));
        }
        let read = self.inner.read(buf)?;
        self.read += read as u64;
        Ok(read)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn records(text: &[u8], buffer: usize) -> Vec<Vec<Vec<u8>>> {
        let mut found = Vec::new();
        let reader = io::BufReader::with_capacity(buffer, text);
        read(reader, 1 << 20, &mut |fields| {
            let fields = fields.expect("no malformed records without a UTF-8 check");
            found.push(fields.map(<[u8]>::to_vec).collect());
            true
        })
        .unwrap();
        found
    }

    fn csv_records(text: &[u8]) -> Vec<Vec<Vec<u8>>> {
        let mut reader =
            ::csv::ReaderBuilder::new().has_headers(false).flexible(true).from_reader(text);
        reader.byte_records().map(|r| r.unwrap().iter().map(<[u8]>::to_vec).collect()).collect()
    }

    /// Generated text of every piece that changes how CSV splits (commas, both line ends and
    /// the lone carriage return, quotes, blank lines, byte order marks, spaces) gives the
    /// records the `csv` crate gives, through any buffer size.
    #[test]
    fn records_equal_the_csv_crates() {
        let pieces: [&[u8]; 12] = [
            b"1.5",
            b"-2",
            b",",
            b",",
            b"\n",
            b"\r\n",
            b"\r",
            b"\"",
            b" ",
            b"\xef\xbb\xbf",
            b"x",
            b"\n\n",
        ];
        let mut next = crate::test_random();
        let mut fell_back = 0;
        for case in 0..20_000 {
            let mut text = Vec::new();
            // Mostly plain lines, so that the fast path runs before anything odd comes.
            let odd_from = next(12);
            for i in 0..next(40) {
                let piece = pieces[next(12) as usize];
                let odd = matches!(piece, b"\r" | b"\"") || piece.starts_with(b"\xef");
                if !odd || i >= odd_from {
                    text.extend_from_slice(piece);
                }
            }
            fell_back += usize::from(text.iter().any(|b| matches!(b, b'"' | b'\r')));
            let buffer = [1, 2, 7, 64][case % 4];
            assert_eq!(records(&text, buffer), csv_records(&text), "{:?}", text.escape_ascii());
        }
        assert!(fell_back > 5_000, "{fell_back}");
    }

    #[test]
    fn plain_lines_split_at_commas() {
        let text = b"1,2,3\n\n4, 5 ,6\r\n7,,\n8";
        let expected: Vec<Vec<Vec<u8>>> =
            [&["1", "2", "3"][..], &["4", " 5 ", "6"], &["7", "", ""], &["8"]]
                .iter()
                .map(|r| r.iter().map(|f| f.as_bytes().to_vec()).collect())
                .collect();
        assert_eq!(records(text, 64), expected);
    }

    #[test]
    fn a_byte_order_mark_opens_a_file_only() {
        assert_eq!(records(b"\xef\xbb\xbf1,2\n", 64), [[b"1".to_vec(), b"2".to_vec()]]);
        let later = records(b"1\n\xef\xbb\xbf2,\"3\"\n", 64);
        assert_eq!(later[1], [b"\xef\xbb\xbf2".to_vec(), b"3".to_vec()]);
    }

    #[test]
    fn records_longer_than_the_limit_are_refused() {
        let long = format!("1,{}\n", "2".repeat(100));
        let text = format!("1,2\n{long}3,4\n");
        let mut seen = Vec::new();
        read(io::BufReader::with_capacity(7, text.as_bytes()), 50, &mut |fields| {
            seen.push(match fields {
                Ok(fields) => format!("{:?}", fields.map(<[u8]>::to_vec).collect::<Vec<_>>()),
                Err(Malformed::TooLong(size)) => format!("too long: {size}"),
                Err(other) => panic!("{other:?}"),
            });
            true
        })
        .unwrap();
        assert_eq!(seen, ["[[49], [50]]", "too long: 51", "[[51], [52]]"]);

        // Past a quote the record's end is unknown: the rest of the file is unreadable.
        let quoted = format!("1,2\n\"{}\",3\n4,5\n", "\n".repeat(100_000));
        let mut rows = 0;
        let failed = read(quoted.as_bytes(), 50_000, &mut |_| {
            rows += 1;
            true
        });
        assert_eq!(rows, 1);
        let message = failed.unwrap_err().to_string();
        assert!(message.contains("longer than 50000 bytes"), "{message}");
    }
}
