//! A streaming reader of layer tars: v7, ustar and GNU headers, GNU long names and
//! PAX extended headers.
//!
//! Written for layer unpack, because PAX records are framed by their length prefix
//! and their values are raw bytes: an xattr value may hold a newline (an ACL naming
//! uid 10, a file capability), which readers that split records at newlines reject
//! or misread. Input is untrusted: checksums are verified, numbers that overflow are
//! refused, metadata entries are capped at [`META_MAX`], and a stream that ends
//! inside a header or inside data is an error. At the end marker the rest of the
//! stream is read to EOF, uninterpreted, so a caller hashing the stream sees all of
//! it.

use std::collections::HashMap;
use std::io::{self, Read};

/// The size of a tar block: headers and data are padded to it.
const BLOCK: u64 = 512;
/// The largest GNU long name/link or PAX extended header entry we hold in memory.
pub const META_MAX: u64 = 1024 * 1024;
/// The most PAX global header records ('g') held at once. They apply to every later
/// entry, so each entry costs their size again: at META_MAX, 2 MB of headers took
/// 30 CPU s. The ones seen in practice are far smaller (`git archive` writes one
/// 52-byte comment).
pub const GLOBAL_MAX: u64 = 16 * 1024;

const SCHILY_XATTR: &[u8] = b"SCHILY.xattr.";

/// What an entry is, from its type flag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// '0', '7' (contiguous) and '\0' without a trailing '/' in its path.
    Regular,
    HardLink,
    Symlink,
    CharDevice,
    BlockDevice,
    /// '5', and the old '\0' form whose path ends in '/'.
    Directory,
    Fifo,
    /// Any other type flag; its data can be read or skipped.
    Other(u8),
}

impl Kind {
    fn from_flag(flag: u8, path: &[u8]) -> Kind {
        match flag {
            b'\0' if path.ends_with(b"/") => Kind::Directory,
            b'0' | b'\0' | b'7' => Kind::Regular,
            b'1' => Kind::HardLink,
            b'2' => Kind::Symlink,
            b'3' => Kind::CharDevice,
            b'4' => Kind::BlockDevice,
            b'5' => Kind::Directory,
            b'6' => Kind::Fifo,
            other => Kind::Other(other),
        }
    }
}

/// One entry's metadata, with GNU long names and PAX records already applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Byte offset of the entry's own header in the stream.
    pub offset: u64,
    pub path: Vec<u8>,
    /// The target of a symlink or hard link; empty when there is none.
    pub link: Vec<u8>,
    pub kind: Kind,
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    /// Whole seconds; a PAX fraction is dropped.
    pub mtime: i64,
    /// Bytes of data that follow the header.
    pub size: u64,
    pub dev_major: u32,
    pub dev_minor: u32,
    /// `SCHILY.xattr.NAME` records as (NAME, value), in archive order.
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

/// Reads entries one at a time with [`TarReader::next_entry`]; between two calls,
/// [`Read`] on the reader yields the current entry's data. Unread data is skipped.
pub struct TarReader<R> {
    inner: R,
    /// Bytes consumed from `inner`.
    pos: u64,
    /// Data of the current entry not read yet, then its block padding.
    left: u64,
    pad: u64,
    /// Records of PAX global headers ('g') seen so far.
    global: Vec<(Vec<u8>, Vec<u8>)>,
    ended: bool,
}

/// Metadata collected from 'L', 'K' and 'x' entries for the next real entry.
#[derive(Default)]
struct Pending {
    long_name: Option<Vec<u8>>,
    long_link: Option<Vec<u8>>,
    pax: Vec<(Vec<u8>, Vec<u8>)>,
    /// Offset of the first metadata entry, for errors.
    first: Option<u64>,
    /// Data bytes of those entries: together capped at META_MAX too, so a run of
    /// headers before one entry cannot grow without bound.
    bytes: u64,
}

impl<R: Read> TarReader<R> {
    pub fn new(inner: R) -> Self {
        TarReader {
            inner,
            pos: 0,
            left: 0,
            pad: 0,
            global: Vec::new(),
            ended: false,
        }
    }

    /// The next entry, or None at the end of the archive (after which the stream
    /// has been read to EOF).
    pub fn next_entry(&mut self) -> io::Result<Option<Entry>> {
        if self.ended {
            return Ok(None);
        }
        self.skip_rest()?;
        let mut pending = Pending::default();
        loop {
            let offset = self.pos;
            let mut block = [0u8; BLOCK as usize];
            let n = read_full(&mut self.inner, &mut block)?;
            self.pos += n as u64;
            if n > 0 && n < block.len() {
                return Err(truncated(format!("inside the header at offset {offset}")));
            }
            if n == 0 || block.iter().all(|&c| c == 0) {
                if let Some(at) = pending.first {
                    return Err(invalid(format!(
                        "the archive ends after the extended header at offset {at}, \
                         before the entry it describes"
                    )));
                }
                if n == 0 {
                    self.ended = true;
                    return Ok(None);
                }
                // The first zero block ends the archive, as for GNU tar; the second
                // one and any padding after it are not interpreted, only consumed.
                self.ended = true;
                let rest = io::copy(&mut self.inner, &mut io::sink())?;
                self.pos += rest;
                return Ok(None);
            }
            let h = Header::parse(&block, offset)?;
            match h.flag {
                b'L' | b'K' | b'x' | b'g' => {
                    if h.flag != b'g' {
                        pending.first.get_or_insert(offset);
                        pending.bytes += h.size;
                        if pending.bytes > META_MAX {
                            return Err(invalid(format!(
                                "the extended headers before offset {} are over the \
                                 {META_MAX} byte limit together",
                                offset + BLOCK
                            )));
                        }
                    }
                    let data = self.read_meta(&h)?;
                    match h.flag {
                        b'L' => pending.long_name = Some(until_nul(&data).to_vec()),
                        b'K' => pending.long_link = Some(until_nul(&data).to_vec()),
                        b'x' => {
                            let recs = parse_pax(&data, offset)?;
                            merge(&mut pending.pax, recs, false);
                        }
                        _ => {
                            let recs = parse_pax(&data, offset)?;
                            merge(&mut self.global, recs, true);
                            let held: usize =
                                self.global.iter().map(|(k, v)| k.len() + v.len()).sum();
                            if held as u64 > GLOBAL_MAX {
                                return Err(invalid(format!(
                                    "the global extended headers up to offset {offset} are \
                                     over the {GLOBAL_MAX} byte limit together"
                                )));
                            }
                        }
                    }
                }
                b'S' => {
                    return Err(invalid(format!(
                        "the entry at offset {offset} is a GNU sparse file, which is not \
                         supported"
                    )));
                }
                _ => return self.finish_entry(h, pending).map(Some),
            }
        }
    }

    /// Applies the pending metadata and the global PAX records to header `h`.
    fn finish_entry(&mut self, h: Header, pending: Pending) -> io::Result<Entry> {
        let mut e = Entry {
            offset: h.offset,
            path: pending.long_name.unwrap_or(h.name),
            link: pending.long_link.unwrap_or(h.link),
            kind: Kind::Other(h.flag),
            mode: h.mode,
            uid: h.uid,
            gid: h.gid,
            mtime: h.mtime,
            size: h.size,
            dev_major: h.dev_major,
            dev_minor: h.dev_minor,
            xattrs: Vec::new(),
        };
        let mut recs = self.global.clone();
        merge(&mut recs, pending.pax, false);
        let at = h.offset;
        for (key, value) in recs {
            if let Some(name) = key.strip_prefix(SCHILY_XATTR) {
                e.xattrs.push((name.to_vec(), value));
                continue;
            }
            // LIBARCHIVE.xattr.* (base64 of a URL-encoded name) is not read: no layer
            // writer we know of emits only that form.
            if key.starts_with(b"GNU.sparse.") {
                return Err(invalid(format!(
                    "the entry at offset {at} is a PAX sparse file, which is not supported"
                )));
            }
            if value.is_empty() {
                continue; // an empty value cancels the record: the header's field stands
            }
            match key.as_slice() {
                b"path" => e.path = value,
                b"linkpath" => e.link = value,
                b"size" => e.size = pax_decimal(&value, "size", at)?,
                b"uid" => e.uid = pax_decimal(&value, "uid", at)?,
                b"gid" => e.gid = pax_decimal(&value, "gid", at)?,
                b"mtime" => e.mtime = pax_time(&value, at)?,
                _ => {}
            }
        }
        e.kind = Kind::from_flag(h.flag, &e.path);
        self.left = e.size;
        self.pad = padding(e.size);
        Ok(e)
    }

    /// The data of metadata entry `h`, with its padding consumed.
    fn read_meta(&mut self, h: &Header) -> io::Result<Vec<u8>> {
        if h.size > META_MAX {
            return Err(invalid(format!(
                "the extended header at offset {} is {} bytes, over the {META_MAX} byte limit",
                h.offset, h.size
            )));
        }
        let mut data = vec![0u8; h.size as usize];
        let n = read_full(&mut self.inner, &mut data)?;
        self.pos += n as u64;
        if n < data.len() {
            return Err(truncated(format!(
                "inside the data of the entry at offset {}",
                h.offset
            )));
        }
        self.left = 0;
        self.pad = padding(h.size);
        self.skip_rest()?;
        Ok(data)
    }

    /// Skips what is left of the current entry's data and its padding.
    fn skip_rest(&mut self) -> io::Result<()> {
        let n = self.left + self.pad;
        if n == 0 {
            return Ok(());
        }
        let got = io::copy(&mut (&mut self.inner).take(n), &mut io::sink())?;
        self.pos += got;
        if got < n {
            return Err(truncated(format!(
                "inside entry data, {} bytes short at offset {}",
                n - got,
                self.pos
            )));
        }
        self.left = 0;
        self.pad = 0;
        Ok(())
    }

    pub fn into_inner(self) -> R {
        self.inner
    }
}

/// The current entry's data; 0 at its end. A stream ending early is an error.
impl<R: Read> Read for TarReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.left == 0 || buf.is_empty() {
            return Ok(0);
        }
        let want = buf
            .len()
            .min(usize::try_from(self.left).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..want])?;
        if n == 0 {
            return Err(truncated(format!(
                "inside entry data, {} bytes short at offset {}",
                self.left, self.pos
            )));
        }
        self.left -= n as u64;
        self.pos += n as u64;
        Ok(n)
    }
}

/// The fields of one 512-byte header block.
struct Header {
    offset: u64,
    flag: u8,
    name: Vec<u8>,
    link: Vec<u8>,
    mode: u32,
    uid: u64,
    gid: u64,
    mtime: i64,
    size: u64,
    dev_major: u32,
    dev_minor: u32,
}

impl Header {
    fn parse(b: &[u8; BLOCK as usize], offset: u64) -> io::Result<Header> {
        verify_checksum(b, offset)?;
        let field = |name: &'static str, r: std::ops::Range<usize>| number(&b[r], name, offset);
        let gnu = &b[257..265] == b"ustar  \0";
        let ustar = &b[257..263] == b"ustar\0";
        let mut name = until_nul(&b[0..100]).to_vec();
        if ustar {
            let prefix = until_nul(&b[345..500]);
            if !prefix.is_empty() {
                name = [prefix, b"/", &name].concat();
            }
        }
        let (dev_major, dev_minor) = if gnu || ustar {
            (
                small(field("devmajor", 329..337)?, "devmajor", offset)?,
                small(field("devminor", 337..345)?, "devminor", offset)?,
            )
        } else {
            (0, 0)
        };
        let mtime = field("mtime", 136..148)?;
        Ok(Header {
            offset,
            flag: b[156],
            name,
            link: until_nul(&b[157..257]).to_vec(),
            mode: small(field("mode", 100..108)?, "mode", offset)?,
            uid: field("uid", 108..116)?,
            gid: field("gid", 116..124)?,
            // number() never returns more than i64::MAX.
            mtime: mtime as i64,
            size: field("size", 124..136)?,
            dev_major,
            dev_minor,
        })
    }
}

/// The stored checksum must equal the sum of the header's bytes with the checksum
/// field counted as spaces: as unsigned bytes, or as signed ones (old writers).
fn verify_checksum(b: &[u8; BLOCK as usize], offset: u64) -> io::Result<()> {
    let stored = number(&b[148..156], "checksum", offset)?;
    let (mut unsigned, mut signed) = (0u64, 0i64);
    for (i, &c) in b.iter().enumerate() {
        let c = if (148..156).contains(&i) { b' ' } else { c };
        unsigned += u64::from(c);
        signed += i64::from(c as i8);
    }
    if stored == unsigned || i64::try_from(stored).is_ok_and(|s| s == signed) {
        Ok(())
    } else {
        Err(invalid(format!(
            "the header at offset {offset} has a bad checksum \
             ({stored} stored, {unsigned} computed)"
        )))
    }
}

/// A numeric header field: octal text (leading spaces, ended by NUL or space) or
/// GNU base-256 (high bit of the first byte set). At most i64::MAX.
fn number(f: &[u8], name: &str, offset: u64) -> io::Result<u64> {
    let bad = |why: &str| {
        invalid(format!(
            "the {name} field of the header at offset {offset} {why}"
        ))
    };
    if f[0] & 0x80 != 0 {
        if f[0] & 0x40 != 0 {
            return Err(bad("is a negative base-256 number"));
        }
        let mut v = u64::from(f[0] & 0x3f);
        for &c in &f[1..] {
            if v > (i64::MAX as u64) >> 8 {
                return Err(bad("overflows"));
            }
            v = v << 8 | u64::from(c);
        }
        return Ok(v);
    }
    let start = f.iter().position(|&c| c != b' ').unwrap_or(f.len());
    let mut v = 0u64;
    for &c in &f[start..] {
        match c {
            b'0'..=b'7' => {
                v = v
                    .checked_mul(8)
                    .map(|v| v + u64::from(c - b'0'))
                    .filter(|&v| v <= i64::MAX as u64)
                    .ok_or_else(|| bad("overflows"))?;
            }
            b'\0' | b' ' => break,
            _ => return Err(bad("is not an octal number")),
        }
    }
    Ok(v)
}

fn small(v: u64, name: &str, offset: u64) -> io::Result<u32> {
    u32::try_from(v).map_err(|_| {
        invalid(format!(
            "the {name} field of the header at offset {offset} is too large"
        ))
    })
}

/// PAX extended header data: records "<len> <key>=<value>\n", where len is the
/// decimal byte count of the whole record. Values are raw bytes, newlines included.
fn parse_pax(data: &[u8], offset: u64) -> io::Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let bad = |at: usize, why: &str| {
        invalid(format!(
            "PAX record at byte {at} of the extended header at offset {offset} {why}"
        ))
    };
    let mut out = Vec::new();
    let mut at = 0;
    while at < data.len() {
        let rest = &data[at..];
        // Some writers pad the record block with NULs.
        if rest.iter().all(|&c| c == 0) {
            break;
        }
        let digits = rest.iter().take_while(|c| c.is_ascii_digit()).count();
        if digits == 0 || digits > 20 || rest.get(digits) != Some(&b' ') {
            return Err(bad(at, "does not start with its length"));
        }
        let len: usize = std::str::from_utf8(&rest[..digits])
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| bad(at, "has a length that overflows"))?;
        if len <= digits + 1 || len > rest.len() {
            return Err(bad(at, "has a wrong length"));
        }
        let rec = &rest[digits + 1..len];
        let Some(body) = rec.strip_suffix(b"\n") else {
            return Err(bad(at, "does not end with a newline where its length says"));
        };
        let Some(eq) = body.iter().position(|&c| c == b'=') else {
            return Err(bad(at, "has no '='"));
        };
        if eq == 0 {
            return Err(bad(at, "has an empty key"));
        }
        out.push((body[..eq].to_vec(), body[eq + 1..].to_vec()));
        at += len;
    }
    Ok(out)
}

/// Adds `recs` to `into`, a later record replacing an earlier one of the same key in
/// place. In a global header an empty value deletes the key.
///
/// Keys are looked up in an index: a 1 MiB header holds some 80,000 records, and a
/// scan of `into` for each made one such header cost tens of CPU seconds.
fn merge(into: &mut Vec<(Vec<u8>, Vec<u8>)>, recs: Vec<(Vec<u8>, Vec<u8>)>, global: bool) {
    if recs.is_empty() {
        return;
    }
    let mut index: HashMap<Vec<u8>, usize> = into
        .iter()
        .enumerate()
        .map(|(i, (k, _))| (k.clone(), i))
        .collect();
    // Deleted records are dropped at the end, so the indices stay valid meanwhile.
    let mut deleted = vec![false; into.len()];
    for (k, v) in recs {
        let deletes = global && v.is_empty() && !k.starts_with(SCHILY_XATTR);
        match index.get(&k) {
            Some(&i) if deletes => {
                deleted[i] = true;
                index.remove(&k);
            }
            Some(&i) => into[i].1 = v,
            None if deletes => {}
            None => {
                index.insert(k.clone(), into.len());
                into.push((k, v));
                deleted.push(false);
            }
        }
    }
    if deleted.contains(&true) {
        let mut flags = deleted.into_iter();
        into.retain(|_| !flags.next().unwrap_or(false));
    }
}

fn pax_decimal(v: &[u8], key: &str, offset: u64) -> io::Result<u64> {
    let bad = || {
        invalid(format!(
            "the PAX {key} of the entry at offset {offset} is not a decimal number in range"
        ))
    };
    if !v.iter().all(u8::is_ascii_digit) {
        return Err(bad());
    }
    std::str::from_utf8(v)
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .filter(|&n| n <= i64::MAX as u64)
        .ok_or_else(bad)
}

/// A PAX time: optional '-', decimal seconds, optional '.' and fraction (dropped).
fn pax_time(v: &[u8], offset: u64) -> io::Result<i64> {
    let bad = || {
        invalid(format!(
            "the PAX mtime of the entry at offset {offset} is invalid"
        ))
    };
    let (neg, v) = match v.strip_prefix(b"-") {
        Some(rest) => (true, rest),
        None => (false, v),
    };
    let (secs, frac) = match v.iter().position(|&c| c == b'.') {
        Some(i) => (&v[..i], &v[i + 1..]),
        None => (v, &b""[..]),
    };
    if secs.is_empty() || !frac.iter().all(u8::is_ascii_digit) {
        return Err(bad());
    }
    let s = pax_decimal(secs, "mtime", offset)? as i64;
    Ok(if neg { -s } else { s })
}

fn until_nul(b: &[u8]) -> &[u8] {
    b.iter().position(|&c| c == 0).map_or(b, |i| &b[..i])
}

fn padding(size: u64) -> u64 {
    (BLOCK - size % BLOCK) % BLOCK
}

/// Reads until `buf` is full or EOF; the count tells which.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

fn truncated(where_: String) -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        format!("truncated tar: the stream ends {where_}"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every entry of `tar` with its data, read through our reader.
    fn read_all(tar: &[u8]) -> io::Result<Vec<(Entry, Vec<u8>)>> {
        let mut r = TarReader::new(tar);
        let mut out = Vec::new();
        while let Some(e) = r.next_entry()? {
            let mut data = Vec::new();
            r.read_to_end(&mut data)?;
            out.push((e, data));
        }
        Ok(out)
    }

    fn header(kind: tar::EntryType, size: u64) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_size(size);
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h
    }

    /// An 'x' entry holding exactly `data`, checksummed.
    fn pax_entry(data: &[u8]) -> Vec<u8> {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(tar::EntryType::XHeader);
        h.set_size(data.len() as u64);
        h.set_cksum();
        let mut out = h.as_bytes().to_vec();
        out.extend_from_slice(data);
        out.resize(out.len().div_ceil(512) * 512, 0);
        out
    }

    fn record(key: &str, value: &[u8]) -> Vec<u8> {
        // Length of "<len> key=value\n" including its own digits.
        let rest = key.len() + value.len() + 3;
        let mut len = rest + 1;
        while rest + len.to_string().len() != len {
            len = rest + len.to_string().len();
        }
        let mut r = format!("{len} {key}=").into_bytes();
        r.extend_from_slice(value);
        r.push(b'\n');
        assert_eq!(r.len(), len);
        r
    }

    fn raw_header(h: &tar::Header) -> Vec<u8> {
        h.as_bytes().to_vec()
    }

    #[test]
    fn reads_what_tar_builder_writes() {
        let mut b = tar::Builder::new(Vec::new());
        let mut dir = header(tar::EntryType::Directory, 0);
        dir.set_mode(0o750);
        dir.set_uid(1234);
        dir.set_gid(5678);
        dir.set_mtime(1_600_000_000);
        b.append_data(&mut dir, "d/", io::empty()).unwrap();
        let mut f = header(tar::EntryType::Regular, 5);
        f.set_mode(0o4755);
        b.append_data(&mut f, "d/file", &b"hello"[..]).unwrap();
        let mut l = header(tar::EntryType::Symlink, 0);
        b.append_link(&mut l, "d/link", "file").unwrap();
        let mut hl = header(tar::EntryType::Link, 0);
        b.append_link(&mut hl, "d/hard", "d/file").unwrap();
        let long = format!("d/{}", "n".repeat(150));
        let mut f2 = header(tar::EntryType::Regular, 1000);
        b.append_data(&mut f2, &long, &[7u8; 1000][..]).unwrap();
        let long_target = "t".repeat(300);
        let mut l2 = header(tar::EntryType::Symlink, 0);
        b.append_link(&mut l2, "d/longlink", &long_target).unwrap();
        let pax_path = format!("p/{}", "q".repeat(200));
        b.append_pax_extensions([("path", pax_path.as_bytes())])
            .unwrap();
        let mut f3 = header(tar::EntryType::Regular, 1);
        f3.as_gnu_mut().unwrap().name[..5].copy_from_slice(b"short");
        f3.set_cksum();
        b.append(&f3, &b"z"[..]).unwrap();
        let mut c = header(tar::EntryType::Char, 0);
        c.set_device_major(1).unwrap();
        c.set_device_minor(3).unwrap();
        b.append_data(&mut c, "dev/null", io::empty()).unwrap();
        let mut blk = header(tar::EntryType::Block, 0);
        blk.set_device_major(259).unwrap();
        blk.set_device_minor(70000).unwrap();
        b.append_data(&mut blk, "dev/blk", io::empty()).unwrap();
        let value = b"a\nb=c\0d\n".to_vec();
        b.append_pax_extensions([
            ("SCHILY.xattr.user.z", &value[..]),
            ("SCHILY.xattr.user.a", b""),
            ("SCHILY.xattr.security.capability", b"\x01\n"),
        ])
        .unwrap();
        let mut fifo = header(tar::EntryType::Fifo, 0);
        b.append_data(&mut fifo, "fifo", io::empty()).unwrap();
        let tar = b.into_inner().unwrap();

        let got = read_all(&tar).unwrap();
        let summary: Vec<_> = got
            .iter()
            .map(|(e, d)| (e.path.clone(), e.kind, e.link.clone(), d.clone()))
            .collect();
        let v = |s: &str| s.as_bytes().to_vec();
        assert_eq!(
            summary,
            vec![
                (v("d/"), Kind::Directory, vec![], vec![]),
                (v("d/file"), Kind::Regular, vec![], v("hello")),
                (v("d/link"), Kind::Symlink, v("file"), vec![]),
                (v("d/hard"), Kind::HardLink, v("d/file"), vec![]),
                (v(&long), Kind::Regular, vec![], vec![7; 1000]),
                (v("d/longlink"), Kind::Symlink, v(&long_target), vec![]),
                (v(&pax_path), Kind::Regular, vec![], v("z")),
                (v("dev/null"), Kind::CharDevice, vec![], vec![]),
                (v("dev/blk"), Kind::BlockDevice, vec![], vec![]),
                (v("fifo"), Kind::Fifo, vec![], vec![]),
            ]
        );
        let d = &got[0].0;
        assert_eq!(
            (d.mode, d.uid, d.gid, d.mtime, d.offset),
            (0o750, 1234, 5678, 1_600_000_000, 0)
        );
        assert_eq!(got[1].0.mode, 0o4755);
        assert_eq!((got[7].0.dev_major, got[7].0.dev_minor), (1, 3));
        assert_eq!((got[8].0.dev_major, got[8].0.dev_minor), (259, 70000));
        assert_eq!(
            got[9].0.xattrs,
            vec![
                (v("user.z"), value),
                (v("user.a"), vec![]),
                (v("security.capability"), b"\x01\n".to_vec()),
            ]
        );
        assert!(got[..9].iter().all(|(e, _)| e.xattrs.is_empty()));
    }

    #[test]
    fn ustar_prefix_is_joined_with_a_slash() {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_size(0);
        h.set_mode(0o644);
        h.as_ustar_mut().unwrap().prefix[..3].copy_from_slice(b"a/b");
        h.as_ustar_mut().unwrap().name[..4].copy_from_slice(b"file");
        h.set_cksum();
        let mut tar = raw_header(&h);
        tar.extend_from_slice(&[0; 1024]);
        assert_eq!(read_all(&tar).unwrap()[0].0.path, b"a/b/file");
    }

    #[test]
    fn pax_size_overrides_a_zero_header_size() {
        // Go's archive/tar for files over 8 GiB: size 0 in the header, the real
        // size in PAX.
        let data: Vec<u8> = (0..1300u32).map(|i| (i % 251) as u8).collect();
        let mut tar = pax_entry(&record("size", b"1300"));
        let mut h = header(tar::EntryType::Regular, 0);
        h.set_path("big").unwrap();
        h.set_cksum();
        tar.extend(raw_header(&h));
        tar.extend_from_slice(&data);
        tar.resize(tar.len().div_ceil(512) * 512, 0);
        let mut h2 = header(tar::EntryType::Regular, 2);
        h2.set_path("next").unwrap();
        h2.set_cksum();
        tar.extend(raw_header(&h2));
        tar.extend_from_slice(b"ok");
        tar.resize(tar.len().div_ceil(512) * 512 + 1024, 0);

        let got = read_all(&tar).unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(
            (got[0].0.path.as_slice(), got[0].0.size),
            (&b"big"[..], 1300)
        );
        assert_eq!(got[0].1, data);
        assert_eq!(got[1].0.path, b"next");
        assert_eq!(got[1].1, b"ok");
        assert!(
            got[1].0.xattrs.is_empty(),
            "PAX records leaked onto the next entry"
        );
    }

    #[test]
    fn global_pax_applies_to_later_entries_unless_overridden() {
        let mut g = tar::Header::new_ustar();
        let recs = [record("uid", b"77"), record("SCHILY.xattr.user.g", b"1")].concat();
        g.set_entry_type(tar::EntryType::XGlobalHeader);
        g.set_size(recs.len() as u64);
        g.set_cksum();
        let mut tar = raw_header(&g);
        tar.extend(&recs);
        tar.resize(1024, 0);
        let mut h = header(tar::EntryType::Regular, 0);
        h.set_path("a").unwrap();
        h.set_cksum();
        tar.extend(raw_header(&h));
        tar.extend(pax_entry(
            &[record("uid", b"88"), record("mtime", b"1700000000.25")].concat(),
        ));
        h.set_path("b").unwrap();
        h.set_cksum();
        tar.extend(raw_header(&h));
        let got = read_all(&tar).unwrap();
        let xg = vec![(b"user.g".to_vec(), b"1".to_vec())];
        assert_eq!(
            (got[0].0.uid, got[0].0.mtime, &got[0].0.xattrs),
            (77, 0, &xg)
        );
        assert_eq!(
            (got[1].0.uid, got[1].0.mtime, &got[1].0.xattrs),
            (88, 1_700_000_000, &xg)
        );
    }

    #[test]
    fn global_headers_are_capped() {
        let global = |recs: &[u8]| {
            let mut g = tar::Header::new_ustar();
            g.set_entry_type(tar::EntryType::XGlobalHeader);
            g.set_size(recs.len() as u64);
            g.set_cksum();
            let mut tar = raw_header(&g);
            tar.extend(recs);
            tar.resize(tar.len().div_ceil(512) * 512, 0);
            tar
        };
        let entry = || {
            let mut h = header(tar::EntryType::Regular, 0);
            h.set_path("f").unwrap();
            h.set_cksum();
            raw_header(&h)
        };
        let half = |k: &str| record(k, &vec![b'v'; GLOBAL_MAX as usize / 2 - 32]);
        // Two halves, the second replacing the first: held once.
        let mut tar = global(&half("SCHILY.xattr.user.a"));
        tar.extend(global(&half("SCHILY.xattr.user.a")));
        tar.extend(entry());
        tar.resize(tar.len() + 1024, 0);
        assert_eq!(read_all(&tar).unwrap()[0].0.xattrs.len(), 1);
        // Two different keys: over the limit together.
        let mut tar = global(&half("SCHILY.xattr.user.a"));
        tar.extend(global(&[half("SCHILY.xattr.user.b"), half("c")].concat()));
        tar.extend(entry());
        tar.resize(tar.len() + 1024, 0);
        let err = read_all(&tar).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(err.to_string().contains("global"), "{err}");
    }

    #[test]
    fn merge_keeps_order_replaces_in_place_and_deletes_globals() {
        let kv = |k: &str, v: &str| (k.as_bytes().to_vec(), v.as_bytes().to_vec());
        let mut into = vec![kv("a", "1"), kv("b", "2"), kv("c", "3")];
        merge(
            &mut into,
            vec![kv("b", "x"), kv("d", "4"), kv("b", "y"), kv("e", "")],
            false,
        );
        let want = vec![
            kv("a", "1"),
            kv("b", "y"),
            kv("c", "3"),
            kv("d", "4"),
            kv("e", ""),
        ];
        assert_eq!(into, want);
        // Global: an empty value deletes (but not an xattr), a deleted key added again
        // goes to the end.
        let mut into = vec![kv("a", "1"), kv("b", "2"), kv("SCHILY.xattr.u", "3")];
        let recs = vec![
            kv("a", ""),
            kv("SCHILY.xattr.u", ""),
            kv("z", ""),
            kv("c", "4"),
            kv("a", "5"),
        ];
        merge(&mut into, recs, true);
        let want = vec![
            kv("b", "2"),
            kv("SCHILY.xattr.u", ""),
            kv("c", "4"),
            kv("a", "5"),
        ];
        assert_eq!(into, want);
    }

    #[test]
    fn a_header_full_of_records_is_read_in_linear_time() {
        // ~80,000 records in one 'x' header just under META_MAX: merged record by
        // record with a scan each, this took tens of CPU seconds (release build).
        let mut recs = Vec::new();
        let mut n = 0;
        while recs.len() + 64 < META_MAX as usize {
            recs.extend(record(&format!("k{n:06}"), b"v"));
            n += 1;
        }
        recs.extend(record("SCHILY.xattr.user.last", b"1"));
        let mut tar = pax_entry(&recs);
        let mut h = header(tar::EntryType::Regular, 0);
        h.set_path("f").unwrap();
        h.set_cksum();
        tar.extend(raw_header(&h));
        tar.resize(tar.len() + 1024, 0);
        let got = read_all(&tar).unwrap();
        assert!(n > 70_000, "{n}");
        assert_eq!(got.len(), 1);
        assert_eq!(
            got[0].0.xattrs,
            vec![(b"user.last".to_vec(), b"1".to_vec())]
        );
    }

    #[test]
    fn base256_and_spaced_octal_numbers() {
        let mut h = header(tar::EntryType::Regular, 0);
        h.set_path("f").unwrap();
        // Base-256: 0x80 marker, then big-endian.
        let size = &mut h.as_old_mut().size;
        *size = [0; 12];
        size[0] = 0x80;
        size[10] = 0x02; // 512 + 3
        size[11] = 0x03;
        let uid = &mut h.as_old_mut().uid;
        *uid = [0x80, 0, 0, 0, 0x12, 0x34, 0x56, 0x78];
        // Octal with leading spaces and a space terminator.
        h.as_old_mut().gid = *b"  0017 \0";
        h.set_cksum();
        let mut tar = raw_header(&h);
        tar.extend(vec![9u8; 515]);
        tar.resize(512 + 1024, 0);
        let got = read_all(&tar).unwrap();
        assert_eq!(
            (got[0].0.size, got[0].0.uid, got[0].0.gid),
            (515, 0x1234_5678, 0o17)
        );
        assert_eq!(got[0].1, vec![9u8; 515]);

        assert!(number(&[0xff; 8], "uid", 0).is_err(), "negative");
        assert!(
            number(
                &[0x80, 0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff],
                "x",
                0
            )
            .is_ok()
        );
        let over = [0x80, 0, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        assert!(number(&over, "size", 0).is_err(), "over i64");
        assert!(number(b"77777777777777777777777\0", "size", 0).is_err());
        assert!(number(b"12a\0", "mode", 0).is_err());
        assert_eq!(number(b"\0\0\0\0", "mode", 0).unwrap(), 0);
    }

    #[test]
    fn bad_checksum_names_the_offset() {
        let mut b = tar::Builder::new(Vec::new());
        b.append_data(&mut header(tar::EntryType::Regular, 1), "a", &b"x"[..])
            .unwrap();
        b.append_data(&mut header(tar::EntryType::Regular, 1), "b", &b"y"[..])
            .unwrap();
        let mut tar = b.into_inner().unwrap();
        tar[1024] = b'c'; // second header's name
        let err = read_all(&tar).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(err.to_string().contains("checksum"), "{err}");
        assert!(err.to_string().contains("offset 1024"), "{err}");
    }

    #[test]
    fn signed_checksums_are_accepted() {
        let mut h = header(tar::EntryType::Regular, 0);
        h.set_path("f").unwrap();
        h.as_old_mut().pad[0] = 0xff; // counts as -1 signed, 255 unsigned
        let mut sum: i64 = 0;
        for (i, &c) in h.as_bytes().iter().enumerate() {
            sum += if (148..156).contains(&i) {
                32
            } else {
                i64::from(c as i8)
            };
        }
        h.as_old_mut().cksum = *format!("{sum:06o}\0 ").as_bytes().first_chunk().unwrap();
        let mut tar = raw_header(&h);
        tar.resize(1536, 0);
        assert_eq!(read_all(&tar).unwrap()[0].0.path, b"f");
    }

    #[test]
    fn truncation_is_an_error() {
        let mut b = tar::Builder::new(Vec::new());
        b.append_data(
            &mut header(tar::EntryType::Regular, 600),
            "a",
            &[1u8; 600][..],
        )
        .unwrap();
        let tar = b.into_inner().unwrap();
        for cut in [100, 512 + 300, 512 + 600 + 10] {
            let err = read_all(&tar[..cut]).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof, "cut {cut}: {err}");
            assert!(err.to_string().contains("truncated"), "{err}");
        }
        // Truncated inside unread data: skipped by next_entry.
        let mut r = TarReader::new(&tar[..700]);
        r.next_entry().unwrap().unwrap();
        assert_eq!(
            r.next_entry().unwrap_err().kind(),
            io::ErrorKind::UnexpectedEof
        );
        // A long name with no entry after it.
        let mut b = tar::Builder::new(Vec::new());
        b.append_data(
            &mut header(tar::EntryType::Regular, 0),
            "l".repeat(200),
            io::empty(),
        )
        .unwrap();
        let tar = b.into_inner().unwrap();
        assert!(read_all(&tar[..1024]).is_err());
    }

    #[test]
    fn malformed_pax_records_are_errors() {
        let entry = |pax: &[u8]| {
            let mut tar = pax_entry(pax);
            let mut h = header(tar::EntryType::Regular, 0);
            h.set_path("f").unwrap();
            h.set_cksum();
            tar.extend(raw_header(&h));
            tar.resize(tar.len() + 1024, 0);
            read_all(&tar)
        };
        assert!(entry(&record("path", b"ok")).is_ok());
        for bad in [
            &b"10 path=ab\n"[..], // length one short: no newline at its end
            b"12 path=ab\n",      // one long: beyond the data
            b"11 path=ab\nx",     // a record without a length after it
            b"9 pathab\n",        // no '='
            b"x path=ab\n",       // no length
            b"99999999999999999999999 a=b\n",
            b"6 =ab\n", // empty key
        ] {
            let err = entry(bad).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{bad:?}");
        }
        assert!(entry(&record("size", b"-1")).is_err());
        assert!(entry(&record("uid", b"99999999999999999999")).is_err());
        assert!(entry(&record("mtime", b"1.x")).is_err());
        assert!(entry(&record("GNU.sparse.major", b"1")).is_err());
    }

    #[test]
    fn oversized_metadata_entries_are_refused() {
        let big = vec![b'a'; META_MAX as usize + 1];
        let mut tar = pax_entry(&big);
        tar.resize(tar.len() + 1024, 0);
        let err = read_all(&tar).unwrap_err();
        assert!(err.to_string().contains("limit"), "{err}");
        // Exactly the limit is read (and here fails as PAX, not as too big).
        let err = read_all(&pax_entry(&big[1..])).unwrap_err();
        assert!(!err.to_string().contains("limit"), "{err}");
        // Many headers before one entry, each under the limit, are not.
        let half = record("SCHILY.xattr.user.a", &vec![b'v'; META_MAX as usize / 2]);
        let other = record("SCHILY.xattr.user.b", &vec![b'v'; META_MAX as usize / 2]);
        let mut tar = pax_entry(&half);
        tar.extend(pax_entry(&other));
        tar.resize(tar.len() + 1024, 0);
        let err = read_all(&tar).unwrap_err();
        assert!(err.to_string().contains("together"), "{err}");
    }

    #[test]
    fn sparse_entries_are_refused() {
        let mut h = header(tar::EntryType::GNUSparse, 0);
        h.set_path("s").unwrap();
        h.set_cksum();
        let mut tar = raw_header(&h);
        tar.resize(1536, 0);
        let err = read_all(&tar).unwrap_err();
        assert!(err.to_string().contains("sparse"), "{err}");
    }

    /// A reader that counts what was taken from it.
    struct Counting<'a>(&'a [u8], usize);
    impl Read for Counting<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = self.0.read(buf)?;
            self.1 += n;
            Ok(n)
        }
    }

    #[test]
    fn the_end_marker_and_what_follows_are_consumed() {
        let mut b = tar::Builder::new(Vec::new());
        b.append_data(&mut header(tar::EntryType::Regular, 3), "a", &b"abc"[..])
            .unwrap();
        let full = b.into_inner().unwrap();
        let body = &full[..1024];
        let mut with_garbage = full.clone();
        with_garbage.extend(b"trailing garbage that is not a header".repeat(40));
        let mut one_zero = body.to_vec();
        one_zero.extend([0u8; 512]);
        for (what, tar) in [
            ("two zero blocks", full.clone()),
            ("garbage after", with_garbage),
            ("one zero block", one_zero),
            ("plain EOF", body.to_vec()),
        ] {
            let mut src = Counting(&tar, 0);
            let mut r = TarReader::new(&mut src);
            let e = r.next_entry().unwrap().unwrap();
            assert_eq!(e.path, b"a", "{what}");
            assert!(r.next_entry().unwrap().is_none(), "{what}");
            assert!(r.next_entry().unwrap().is_none(), "{what}");
            assert_eq!(src.1, tar.len(), "{what}: not all consumed");
        }
        // A stream ending inside the first zero block is truncated.
        assert!(read_all(&full[..1024 + 100]).is_err());
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        #[derive(Debug, Clone)]
        enum Node {
            File(Vec<u8>),
            Dir,
            Symlink(String),
            HardLink,
        }

        fn name() -> impl Strategy<Value = String> {
            prop_oneof![
                "[a-z]{1,12}",
                // Past the 100-byte name field: GNU long names.
                "[a-z]{90,160}",
            ]
        }

        fn node() -> impl Strategy<Value = Node> {
            prop_oneof![
                proptest::collection::vec(any::<u8>(), 0..1500).prop_map(Node::File),
                Just(Node::Dir),
                "[a-z/.]{1,150}".prop_map(Node::Symlink),
                Just(Node::HardLink),
            ]
        }

        /// Distinct names: for a repeated key we keep the last record (POSIX), the
        /// tar crate lists both.
        fn xattrs() -> impl Strategy<Value = Vec<(String, Vec<u8>)>> {
            proptest::collection::btree_map(
                "user\\.[a-z]{1,10}",
                // The tar crate's reader cannot read newlines back.
                proptest::collection::vec(any::<u8>().prop_filter("nl", |c| *c != b'\n'), 0..40),
                0..3,
            )
            .prop_map(|m| m.into_iter().collect())
        }

        /// (name, node, xattrs, mode, mtime)
        type Spec = (String, Node, Vec<(String, Vec<u8>)>, u32, u64);

        fn build(entries: &[Spec]) -> Vec<u8> {
            let mut b = tar::Builder::new(Vec::new());
            for (i, (name, node, xattrs, mode, mtime)) in entries.iter().enumerate() {
                let path = format!("e{i}/{name}");
                if !xattrs.is_empty() {
                    let keys: Vec<String> = xattrs
                        .iter()
                        .map(|(k, _)| format!("SCHILY.xattr.{k}"))
                        .collect();
                    b.append_pax_extensions(
                        keys.iter()
                            .map(String::as_str)
                            .zip(xattrs.iter().map(|(_, v)| &v[..])),
                    )
                    .unwrap();
                }
                let mut h = tar::Header::new_gnu();
                h.set_mode(*mode);
                h.set_mtime(*mtime);
                h.set_uid(i as u64);
                h.set_gid(2 * i as u64);
                match node {
                    Node::File(data) => {
                        h.set_entry_type(tar::EntryType::Regular);
                        h.set_size(data.len() as u64);
                        b.append_data(&mut h, &path, &data[..]).unwrap();
                    }
                    Node::Dir => {
                        h.set_entry_type(tar::EntryType::Directory);
                        h.set_size(0);
                        b.append_data(&mut h, &path, io::empty()).unwrap();
                    }
                    Node::Symlink(t) => {
                        h.set_entry_type(tar::EntryType::Symlink);
                        h.set_size(0);
                        b.append_link(&mut h, &path, t).unwrap();
                    }
                    Node::HardLink => {
                        h.set_entry_type(tar::EntryType::Link);
                        h.set_size(0);
                        b.append_link(&mut h, &path, format!("e0/{name}")).unwrap();
                    }
                }
            }
            b.into_inner().unwrap()
        }

        type Seen = (
            Vec<u8>,
            Vec<u8>,
            u8,
            u64,
            u32,
            u64,
            u64,
            Vec<u8>,
            Vec<(Vec<u8>, Vec<u8>)>,
        );

        fn flag(k: Kind) -> u8 {
            match k {
                Kind::Regular => b'0',
                Kind::HardLink => b'1',
                Kind::Symlink => b'2',
                Kind::CharDevice => b'3',
                Kind::BlockDevice => b'4',
                Kind::Directory => b'5',
                Kind::Fifo => b'6',
                Kind::Other(c) => c,
            }
        }

        fn ours(tar: &[u8]) -> Vec<Seen> {
            read_all(tar)
                .unwrap()
                .into_iter()
                .map(|(e, d)| {
                    let kind = flag(e.kind);
                    (
                        e.path,
                        e.link,
                        kind,
                        e.size,
                        e.mode,
                        e.uid,
                        e.mtime as u64,
                        d,
                        e.xattrs,
                    )
                })
                .collect()
        }

        fn theirs(tar: &[u8]) -> Vec<Seen> {
            let mut a = tar::Archive::new(tar);
            let mut out = Vec::new();
            for e in a.entries().unwrap() {
                let mut e = e.unwrap();
                let xattrs = match e.pax_extensions().unwrap() {
                    Some(x) => x
                        .map(|x| x.unwrap())
                        .filter_map(|x| {
                            x.key_bytes()
                                .strip_prefix(b"SCHILY.xattr.")
                                .map(|k| (k.to_vec(), x.value_bytes().to_vec()))
                        })
                        .collect(),
                    None => vec![],
                };
                let h = e.header().clone();
                let path = e.path_bytes().into_owned();
                let link = e
                    .link_name_bytes()
                    .map(|l| l.into_owned())
                    .unwrap_or_default();
                let size = e.size();
                let mut data = Vec::new();
                e.read_to_end(&mut data).unwrap();
                out.push((
                    path,
                    link,
                    h.entry_type().as_byte(),
                    size,
                    h.mode().unwrap(),
                    h.uid().unwrap(),
                    h.mtime().unwrap(),
                    data,
                    xattrs,
                ));
            }
            out
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(64))]
            /// Damaged archives give entries or an error, never a panic, and a
            /// successful read consumed the whole stream.
            #[test]
            fn damaged_archives_never_panic(
                entries in proptest::collection::vec(
                    (name(), node(), xattrs(), 0u32..0o7777, 0u64..(1 << 33)),
                    1..6,
                ),
                flips in proptest::collection::vec((any::<proptest::sample::Index>(), any::<u8>()), 1..8),
                cut in any::<proptest::sample::Index>(),
            ) {
                let mut tar = build(&entries);
                for (i, c) in flips {
                    let i = i.index(tar.len());
                    tar[i] = c;
                }
                tar.truncate(cut.index(tar.len() + 1));
                let mut src = Counting(&tar, 0);
                let mut r = TarReader::new(&mut src);
                let mut ok = true;
                loop {
                    match r.next_entry() {
                        Ok(Some(_)) => {
                            if io::copy(&mut r, &mut io::sink()).is_err() {
                                ok = false;
                                break;
                            }
                        }
                        Ok(None) => break,
                        Err(_) => {
                            ok = false;
                            break;
                        }
                    }
                }
                if ok {
                    prop_assert_eq!(src.1, tar.len());
                }
            }

            #[test]
            fn matches_the_tar_crate(
                entries in proptest::collection::vec(
                    (name(), node(), xattrs(), 0u32..0o7777, 0u64..(1 << 33)),
                    1..12,
                )
            ) {
                let tar = build(&entries);
                prop_assert_eq!(ours(&tar), theirs(&tar));
            }
        }
    }
}
