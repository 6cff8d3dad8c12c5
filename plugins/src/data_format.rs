//! The little language of the data plugin's `data=` parameter, as nbdkit 1.46 defines it: bytes
//! (`0 1 0x55 0377`), offsets (`@512`, `@+8`, `@-2`, `@^4096`), strings with C escapes,
//! little and big-endian words (`le32:0x1234`), files (`<disk.img`), the output of shell
//! scripts (`<(seq 1 10)`), groups (`( ... )`), repeats (`*N`), slices (`[N:M]`), names
//! (`-> \sector`, `\sector`), variables (`$pattern`, from other parameters or the environment)
//! and comments (`# ...`).
//!
//! [`parse`] turns the text into a tree; [`evaluate`] runs it into an [`Image`], a sparse map of
//! the bytes written, and returns the image's size: the furthest the offset ever went. Groups,
//! repeats, slices and names are evaluated in a scope of their own, starting at offset 0, and
//! copied into the outer image: offsets and names inside them do not leak out.

use std::collections::BTreeMap;
use std::io::Read;
use std::process::{Command, Stdio};
use std::rc::Rc;

use nbdforge_api::{parse_int, Error, Result};

/// One expression of the language.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Expr {
    /// A group, `( ... )`, a `$VAR`, or the whole text: evaluated in a scope of its own (except
    /// the whole text, which is the outermost scope).
    List(Vec<Expr>),
    /// Bytes written at the offset: a byte, a string, a word.
    Bytes(Vec<u8>),
    /// `@N`
    AbsoluteOffset(u64),
    /// `@+N` and `@-N`
    RelativeOffset(i64),
    /// `@^N`, N a power of two.
    Align(u64),
    /// `<FILE`
    File(String),
    /// `<(SCRIPT)`
    Script(String),
    /// `\NAME`
    Name(String),
    /// `EXPR -> \NAME`
    Assign(String, Box<Expr>),
    /// `EXPR * N`
    Repeat(Box<Expr>, u64),
    /// `EXPR[N:M]`; `None` is the end.
    Slice(Box<Expr>, u64, Option<u64>),
}

impl Expr {
    /// Whether the expression stands for data, which `*N`, `[N:M]` and `->` apply to (an offset
    /// does not).
    fn is_data(&self) -> bool {
        !matches!(self, Expr::AbsoluteOffset(_) | Expr::RelativeOffset(_) | Expr::Align(_))
    }
}

/// Deeper nesting of groups and variables than this is refused (`$a` defined as `$a` would
/// otherwise recurse until the stack overflows).
const MAX_DEPTH: usize = 200;

/// An error in the text, with where it happened.
fn syntax(text: &str, at: usize, why: &str) -> Error {
    let near: String = text.get(at..).unwrap_or("").chars().take(20).collect();
    if near.is_empty() {
        Error::invalid(format!("{why} (at offset {at}, the end of the text)"))
    } else {
        Error::invalid(format!("{why} (at offset {at}, near '{near}')"))
    }
}

/// Whitespace as C's `isspace` sees it.
fn is_space(c: u8) -> bool {
    matches!(c, b' ' | b'\t' | b'\n' | b'\x0b' | b'\x0c' | b'\r')
}

/// Reads an integer at the start of `s` as C's `scanf("%i")` does: leading whitespace, an
/// optional sign, then `0x` hexadecimal, `0` octal or decimal digits, as many as there are.
/// Returns the number (saturated, as `strtoll` does) and the bytes used.
fn scan_int(s: &[u8]) -> Option<(i64, usize)> {
    let mut i = s.iter().take_while(|&&c| is_space(c)).count();
    let negative = match s.get(i) {
        Some(b'-') => {
            i += 1;
            true
        }
        Some(b'+') => {
            i += 1;
            false
        }
        _ => false,
    };
    let hex = s.get(i) == Some(&b'0')
        && matches!(s.get(i + 1), Some(b'x' | b'X'))
        && s.get(i + 2).is_some_and(|c| c.is_ascii_hexdigit());
    let (radix, start) = if hex {
        (16, i + 2)
    } else if s.get(i) == Some(&b'0') {
        (8, i)
    } else {
        (10, i)
    };
    let digits = s[start..].iter().take_while(|c| (**c as char).is_digit(radix)).count();
    if digits == 0 {
        return None;
    }
    let mut value: i64 = 0;
    for &c in &s[start..start + digits] {
        let d = (c as char).to_digit(radix).unwrap_or(0) as i64;
        value = value.saturating_mul(radix as i64).saturating_add(d);
    }
    Some((if negative { -value } else { value }, start + digits))
}

/// Where variables (`$NAME`) get their text: the plugin's extra parameters, then the environment.
pub(crate) type Variables<'v> = &'v dyn Fn(&str) -> Option<String>;

/// Parses the whole text of a `data=` parameter.
pub(crate) fn parse(text: &str, vars: Variables<'_>) -> Result<Expr> {
    let mut parser = Parser { text, bytes: text.as_bytes(), at: 0, vars, nesting: 0 };
    parser.list(0).map(Expr::List)
}

struct Parser<'t, 'v> {
    text: &'t str,
    bytes: &'t [u8],
    at: usize,
    vars: Variables<'v>,
    /// How many groups and variables enclose the current position, across variables.
    nesting: usize,
}

impl Parser<'_, '_> {
    fn error(&self, at: usize, why: &str) -> Error {
        syntax(self.text, at, why)
    }

    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.at).copied()
    }

    /// An integer as `scanf("%i")` reads it, from the current position.
    fn int(&mut self, what: &str) -> Result<i64> {
        let (n, used) = scan_int(&self.bytes[self.at..]).ok_or_else(|| self.error(self.at, what))?;
        self.at += used;
        Ok(n)
    }

    /// A count that must not be negative (`@+N`, `*N`, ...).
    fn count(&mut self, what: &str) -> Result<u64> {
        let start = self.at;
        let n = self.int(what)?;
        u64::try_from(n).map_err(|_| self.error(start, &format!("{what}: {n} is negative")))
    }

    /// The expressions up to the end of the text (depth 0) or the `)` closing a group.
    fn list(&mut self, depth: usize) -> Result<Vec<Expr>> {
        if self.nesting > MAX_DEPTH {
            return Err(self.error(self.at, "groups and variables are nested too deeply"));
        }
        let mut list: Vec<Expr> = Vec::new();
        while let Some(c) = self.peek() {
            let start = self.at;
            match c {
                b'#' => {
                    while self.peek().is_some_and(|c| c != b'\n') {
                        self.at += 1;
                    }
                }
                c if is_space(c) => self.at += 1,
                b'@' => {
                    self.at += 1;
                    let expr = match self.peek() {
                        Some(b'+') => {
                            self.at += 1;
                            Expr::RelativeOffset(self.count("@+N needs a number")? as i64)
                        }
                        Some(b'-') => {
                            self.at += 1;
                            Expr::RelativeOffset(-(self.count("@-N needs a number")? as i64))
                        }
                        Some(b'^') => {
                            self.at += 1;
                            let n = self.count("@^ALIGNMENT needs a number")?;
                            if !n.is_power_of_two() {
                                return Err(self.error(start, &format!("@^{n}: the alignment must be a power of 2")));
                            }
                            Expr::Align(n)
                        }
                        Some(c) if c.is_ascii_digit() => Expr::AbsoluteOffset(self.count("@OFFSET needs a number")?),
                        _ => return Err(self.error(start, "parsing error: @ must be followed by OFFSET, +N, -N or ^N")),
                    };
                    list.push(expr);
                }
                b'(' => {
                    self.at += 1;
                    self.nesting += 1;
                    let group = self.list(depth + 1)?;
                    self.nesting -= 1;
                    list.push(Expr::List(group));
                }
                b')' => {
                    if depth == 0 {
                        return Err(self.error(start, "unmatched ')'"));
                    }
                    self.at += 1;
                    return Ok(list);
                }
                b'*' => {
                    self.at += 1;
                    let inner = self.last_data(&mut list, start, "*N")?;
                    let n = self.count("*N needs a number")?;
                    list.push(Expr::Repeat(Box::new(inner), n));
                }
                b'[' => {
                    self.at += 1;
                    let inner = self.last_data(&mut list, start, "[N:M]")?;
                    let (n, m) = self.slice_bounds(start)?;
                    list.push(Expr::Slice(Box::new(inner), n, m));
                }
                b'<' if self.bytes.get(start + 1) == Some(&b'(') => {
                    self.at += 2;
                    list.push(Expr::Script(self.script(start)?));
                }
                b'<' => {
                    self.at += 1;
                    let len = self.bytes[self.at..].iter().take_while(|c| !b"*[) \t\n".contains(c)).count();
                    if len == 0 {
                        return Err(self.error(start, "<FILE needs a file name"));
                    }
                    list.push(Expr::File(self.text[self.at..self.at + len].to_string()));
                    self.at += len;
                }
                b'"' => {
                    self.at += 1;
                    list.push(Expr::Bytes(self.string(start)?));
                }
                b'\\' => {
                    let name = self.name(start)?;
                    list.push(Expr::Name(name));
                }
                b'-' => {
                    if self.bytes.get(start + 1) != Some(&b'>') {
                        return Err(self.error(start, "parsing error: '-' must be part of '-> \\NAME'"));
                    }
                    self.at += 2;
                    let inner = self.last_data(&mut list, start, "->")?;
                    let name = self.name(start)?;
                    list.push(Expr::Assign(name, Box::new(inner)));
                }
                b'$' => list.push(self.variable(start)?),
                c if c.is_ascii_digit() => {
                    let n = self.int("a byte")?;
                    let byte = u8::try_from(n)
                        .map_err(|_| self.error(start, &format!("the byte {n} is not in the range 0..255")))?;
                    list.push(Expr::Bytes(vec![byte]));
                }
                b'l' | b'b' => list.push(Expr::Bytes(self.word(start)?)),
                _ => return Err(self.error(start, "parsing error")),
            }
        }
        if depth > 0 {
            return Err(self.error(self.at, "unmatched '('"));
        }
        Ok(list)
    }

    /// Takes the expression an operator at `at` applies to: the last one, which must be data.
    fn last_data(&self, list: &mut Vec<Expr>, at: usize, operator: &str) -> Result<Expr> {
        match list.pop() {
            None => Err(self.error(at, &format!("{operator} must follow an expression"))),
            Some(e) if !e.is_data() => Err(self.error(at, &format!("{operator} cannot be applied to an offset"))),
            Some(e) => Ok(e),
        }
    }

    /// `N:M]`, `:M]`, `N:]` or `:]`, just after the `[`.
    fn slice_bounds(&mut self, start: usize) -> Result<(u64, Option<u64>)> {
        let fail = |p: &Self| p.error(start, "[N:M] is not a slice (use [N:M], [:M], [N:] or [:])");
        let n = if self.peek() == Some(b':') { 0 } else { self.int("[N:M]").map_err(|_| fail(self))? };
        if self.peek() != Some(b':') {
            return Err(fail(self));
        }
        self.at += 1;
        let m = if self.peek() == Some(b']') { -1 } else { self.int("[N:M]").map_err(|_| fail(self))? };
        if self.peek() != Some(b']') {
            return Err(fail(self));
        }
        self.at += 1;
        let n = u64::try_from(n).map_err(|_| self.error(start, "[N:M]: N must not be negative"))?;
        // A negative end means the end of the expression, as in nbdkit.
        Ok((n, u64::try_from(m).ok()))
    }

    /// The text of `<(SCRIPT)` up to its closing parenthesis; parentheses inside must pair up.
    fn script(&mut self, start: usize) -> Result<String> {
        let mut level = 0usize;
        for (i, &c) in self.bytes[self.at..].iter().enumerate() {
            match c {
                b'(' => level += 1,
                b')' if level > 0 => level -= 1,
                b')' => {
                    let script = self.text[self.at..self.at + i].to_string();
                    self.at += i + 1;
                    return Ok(script);
                }
                _ => {}
            }
        }
        Err(self.error(start, "<(SCRIPT) has no closing ')'"))
    }

    /// A string with C escapes, just after its opening quote.
    fn string(&mut self, start: usize) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        let unterminated = |p: &Self| p.error(start, "unterminated string");
        loop {
            let c = self.peek().ok_or_else(|| unterminated(self))?;
            self.at += 1;
            match c {
                b'"' => return Ok(out),
                b'\\' => {
                    let e = self.peek().ok_or_else(|| unterminated(self))?;
                    self.at += 1;
                    out.push(match e {
                        b'a' => 0x07,
                        b'b' => 0x08,
                        b'f' => 0x0c,
                        b'n' => b'\n',
                        b'r' => b'\r',
                        b't' => b'\t',
                        b'v' => 0x0b,
                        b'x' => {
                            let hex = self.bytes.get(self.at..self.at + 2).ok_or_else(|| unterminated(self))?;
                            let value = std::str::from_utf8(hex)
                                .ok()
                                .filter(|h| h.bytes().all(|c| c.is_ascii_hexdigit()))
                                .and_then(|h| u8::from_str_radix(h, 16).ok())
                                .ok_or_else(|| self.error(self.at - 2, "\\xNN needs exactly two hexadecimal digits"))?;
                            self.at += 2;
                            value
                        }
                        b'0'..=b'9' | b'u' => {
                            return Err(self.error(
                                self.at - 2,
                                "numeric and unicode escapes in strings are not implemented (use \\xNN)",
                            ))
                        }
                        // Any other escaped character stands for itself: \\ and \" included.
                        other => other,
                    });
                }
                other => out.push(other),
            }
        }
    }

    /// `\NAME`, after optional whitespace: letters, digits, `_` and `-`.
    fn name(&mut self, start: usize) -> Result<String> {
        self.at += self.bytes[self.at..].iter().take_while(|&&c| is_space(c)).count();
        if self.peek() != Some(b'\\') {
            return Err(self.error(start, "expected \\NAME"));
        }
        self.at += 1;
        let len = self.bytes[self.at..]
            .iter()
            .take_while(|c| c.is_ascii_alphanumeric() || **c == b'_' || **c == b'-')
            .count();
        if len == 0 {
            return Err(self.error(start, "expected \\NAME (letters, digits, '_' and '-')"));
        }
        let name = self.text[self.at..self.at + len].to_string();
        self.at += len;
        Ok(name)
    }

    /// `$NAME`: the variable's text, parsed as a group of its own.
    fn variable(&mut self, start: usize) -> Result<Expr> {
        self.at += 1;
        let rest = &self.bytes[self.at..];
        let len = if rest.first().is_some_and(|c| c.is_ascii_alphabetic() || *c == b'_') {
            rest.iter().take_while(|c| c.is_ascii_alphanumeric() || **c == b'_').count()
        } else {
            0
        };
        if len == 0 {
            return Err(self.error(start, "expected $VARIABLE (a letter or '_', then letters, digits and '_')"));
        }
        let name = &self.text[self.at..self.at + len];
        self.at += len;
        let content = (self.vars)(name).ok_or_else(|| self.error(start, &format!("${name}: variable not found")))?;
        let mut inner =
            Parser { text: &content, bytes: content.as_bytes(), at: 0, vars: self.vars, nesting: self.nesting + 1 };
        let list = inner.list(0).map_err(|e| Error::invalid(format!("in ${name}: {}", e.message)))?;
        Ok(Expr::List(list))
    }

    /// `le16:N`, `be32:N`, ...: the word up to the next whitespace, as bytes.
    fn word(&mut self, start: usize) -> Result<Vec<u8>> {
        let len = self.bytes[self.at..].iter().take_while(|&&c| !is_space(c)).count();
        let token = &self.text[self.at..self.at + len];
        self.at += len;
        let fail = |why: &str| self.error(start, why);
        let (kind, number) = token
            .split_once(':')
            .ok_or_else(|| fail("expected le16:, le32:, le64:, be16:, be32: or be64: and a number"))?;
        let bytes = match kind {
            "le16" => parse_int::<u16>(kind, number)?.to_le_bytes().to_vec(),
            "be16" => parse_int::<u16>(kind, number)?.to_be_bytes().to_vec(),
            "le32" => parse_int::<u32>(kind, number)?.to_le_bytes().to_vec(),
            "be32" => parse_int::<u32>(kind, number)?.to_be_bytes().to_vec(),
            "le64" => parse_int::<u64>(kind, number)?.to_le_bytes().to_vec(),
            "be64" => parse_int::<u64>(kind, number)?.to_be_bytes().to_vec(),
            _ => return Err(fail("expected le16:, le32:, le64:, be16:, be32: or be64: and a number")),
        };
        Ok(bytes)
    }
}

/// Bytes written at offsets, sparse: what was never written reads as zero. Chunks do not
/// overlap, and a chunk that ends where another begins is merged with it.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Image {
    chunks: BTreeMap<u64, Vec<u8>>,
}

fn too_large(what: &str) -> Error {
    Error::new(libc::ENOMEM, format!("{what}: cannot allocate that much memory"))
}

impl Image {
    /// `bytes` at offset 0.
    pub(crate) fn from_bytes(bytes: Vec<u8>) -> Self {
        let mut image = Image::default();
        if !bytes.is_empty() {
            image.chunks.insert(0, bytes);
        }
        image
    }

    /// The chunks, in order: (offset, bytes).
    pub(crate) fn chunks(&self) -> impl Iterator<Item = (u64, &[u8])> {
        self.chunks.iter().map(|(&o, v)| (o, v.as_slice()))
    }

    /// Makes `[offset, offset + len)` read as zeroes.
    fn zero(&mut self, offset: u64, len: u64) {
        if len == 0 {
            return;
        }
        let end = offset.saturating_add(len);
        // A chunk starting before the range and reaching into it keeps its head, and its tail
        // too if it reaches past the range.
        let mut tail = Vec::new();
        if let Some((&start, data)) = self.chunks.range_mut(..offset).next_back() {
            let chunk_end = start + data.len() as u64;
            if chunk_end > end {
                tail = data.split_off((end - start) as usize);
            }
            if chunk_end > offset {
                data.truncate((offset - start) as usize);
            }
        }
        let inside: Vec<u64> = self.chunks.range(offset..end).map(|(&o, _)| o).collect();
        for start in inside {
            let mut data = self.chunks.remove(&start).unwrap_or_default();
            if start + data.len() as u64 > end {
                tail = data.split_off((end - start) as usize);
            }
        }
        if !tail.is_empty() {
            self.chunks.insert(end, tail);
        }
    }

    /// Writes `bytes` at `offset`, over whatever was there.
    fn write(&mut self, offset: u64, bytes: &[u8]) -> Result<()> {
        if bytes.is_empty() {
            return Ok(());
        }
        let end = offset.checked_add(bytes.len() as u64).ok_or_else(|| too_large("offset"))?;
        self.zero(offset, bytes.len() as u64);
        // Merged with the chunks just before and just after, if they touch.
        let following = self.chunks.remove(&end).unwrap_or_default();
        let previous = self
            .chunks
            .range_mut(..offset)
            .next_back()
            .and_then(|(&start, data)| (start + data.len() as u64 == offset).then_some(data));
        if let Some(data) = previous {
            data.try_reserve(bytes.len() + following.len()).map_err(|_| too_large("data"))?;
            data.extend_from_slice(bytes);
            data.extend_from_slice(&following);
            return Ok(());
        }
        let mut data = Vec::new();
        data.try_reserve_exact(bytes.len() + following.len()).map_err(|_| too_large("data"))?;
        data.extend_from_slice(bytes);
        data.extend_from_slice(&following);
        self.chunks.insert(offset, data);
        Ok(())
    }

    /// Writes `count` copies of `byte` at `offset`.
    fn fill(&mut self, offset: u64, byte: u8, count: u64) -> Result<()> {
        if byte == 0 {
            self.zero(offset, count);
            return Ok(());
        }
        let len = usize::try_from(count).map_err(|_| too_large("fill"))?;
        let mut data = Vec::new();
        data.try_reserve_exact(len).map_err(|_| too_large("fill"))?;
        data.resize(len, byte);
        self.write(offset, &data)
    }

    /// Copies `[from, from + len)` of `source` to `offset`, zeroes included.
    fn blit(&mut self, source: &Image, from: u64, len: u64, offset: u64) -> Result<()> {
        self.zero(offset, len);
        let end = from + len;
        let first = source.chunks.range(..from).next_back().map_or(from, |(&o, _)| o);
        for (&start, data) in source.chunks.range(first..end) {
            let lo = start.max(from);
            let hi = (start + data.len() as u64).min(end);
            if lo < hi {
                self.write(offset + (lo - from), &data[(lo - start) as usize..(hi - start) as usize])?;
            }
        }
        Ok(())
    }

    /// The one byte that `[0, len)` of the image holds everywhere, if it is uniform.
    fn uniform_byte(&self, len: u64) -> Option<u8> {
        let mut seen: Option<u8> = None;
        let mut same = |b: u8| *seen.get_or_insert(b) == b;
        let mut covered = 0u64;
        for (&start, data) in self.chunks.range(..len) {
            let data = &data[..(len - start).min(data.len() as u64) as usize];
            // A gap before the chunk reads as zeroes.
            if start > covered && !same(0) {
                return None;
            }
            if !data.iter().all(|&b| same(b)) {
                return None;
            }
            covered = start + data.len() as u64;
        }
        if covered < len && !same(0) {
            return None;
        }
        Some(seen.unwrap_or(0))
    }
}

/// The names in scope: each assignment points to those made before it, so a named expression is
/// evaluated with the names that existed when it was named, as in nbdkit.
struct Scope<'a> {
    name: &'a str,
    expr: &'a Expr,
    outer: Option<Rc<Scope<'a>>>,
}

/// Runs a parsed text into `image`; returns its size, the furthest offset reached.
pub(crate) fn evaluate(root: &Expr, image: &mut Image) -> Result<u64> {
    let mut offset = 0;
    let mut size = 0;
    let items = match root {
        Expr::List(items) => items.as_slice(),
        other => std::slice::from_ref(other),
    };
    run_list(&None, items, image, &mut offset, &mut size)?;
    Ok(size)
}

/// Evaluates `expr` in a scope of its own, starting at offset 0: its image and size.
fn run_nested<'a>(scope: &Option<Rc<Scope<'a>>>, expr: &'a Expr) -> Result<(Image, u64)> {
    let mut image = Image::default();
    let size = {
        let (mut offset, mut size) = (0, 0);
        let items = match expr {
            Expr::List(items) => items.as_slice(),
            other => std::slice::from_ref(other),
        };
        run_list(scope, items, &mut image, &mut offset, &mut size)?;
        size
    };
    Ok((image, size))
}

fn advance(offset: &mut u64, by: u64) -> Result<()> {
    *offset = offset
        .checked_add(by)
        .filter(|&o| o <= nbdforge_api::MAX_SIZE)
        .ok_or_else(|| Error::invalid("the offset goes past 2^63-1"))?;
    Ok(())
}

fn run_list<'a>(
    outer: &Option<Rc<Scope<'a>>>,
    items: &'a [Expr],
    image: &mut Image,
    offset: &mut u64,
    size: &mut u64,
) -> Result<()> {
    let mut scope = outer.clone();
    for expr in items {
        match expr {
            Expr::Bytes(bytes) => {
                image.write(*offset, bytes)?;
                advance(offset, bytes.len() as u64)?;
            }
            Expr::AbsoluteOffset(n) => {
                *offset = 0;
                advance(offset, *n)?;
            }
            Expr::RelativeOffset(n) if *n < 0 => {
                *offset = offset.checked_sub(n.unsigned_abs()).ok_or_else(|| {
                    Error::invalid(format!("@-{} is larger than the current offset {offset}", n.unsigned_abs()))
                })?;
            }
            Expr::RelativeOffset(n) => advance(offset, *n as u64)?,
            Expr::Align(n) => {
                let aligned = offset.div_ceil(*n).saturating_mul(*n);
                let by = aligned.saturating_sub(*offset);
                advance(offset, by)?;
            }
            Expr::File(name) => {
                let data = std::fs::read(name).map_err(|e| Error::from_io(format!("<{name}"), &e))?;
                image.write(*offset, &data)?;
                advance(offset, data.len() as u64)?;
            }
            Expr::Script(script) => {
                let data = run_script(script, None)?;
                image.write(*offset, &data)?;
                advance(offset, data.len() as u64)?;
            }
            Expr::Assign(name, inner) => {
                scope = Some(Rc::new(Scope { name, expr: inner, outer: scope }));
            }
            Expr::Name(name) => {
                let mut at = scope.as_ref();
                let found = loop {
                    match at {
                        None => return Err(Error::invalid(format!("\\{name} is not defined"))),
                        Some(s) if s.name == name.as_str() => break s,
                        Some(s) => at = s.outer.as_ref(),
                    }
                };
                let (inner, len) = run_nested(&found.outer, found.expr)?;
                image.blit(&inner, 0, len, *offset)?;
                advance(offset, len)?;
            }
            Expr::List(_) => {
                let (inner, len) = run_nested(&scope, expr)?;
                image.blit(&inner, 0, len, *offset)?;
                advance(offset, len)?;
            }
            // Repeating nothing evaluates nothing, as nbdkit optimizes it away.
            Expr::Repeat(_, 0) => {}
            Expr::Repeat(inner, n) => {
                let (inner, len) = run_nested(&scope, inner)?;
                let total = len.checked_mul(*n).ok_or_else(|| Error::invalid("*N: the result is too large"))?;
                // A uniform pattern (a byte, zeroes) is one fill, not N copies.
                if let Some(byte) = inner.uniform_byte(len) {
                    image.fill(*offset, byte, total)?;
                    advance(offset, total)?;
                } else {
                    for _ in 0..*n {
                        image.blit(&inner, 0, len, *offset)?;
                        advance(offset, len)?;
                    }
                }
            }
            Expr::Slice(inner, n, m) => run_slice(&scope, inner, *n, *m, image, offset)?,
        }
        *size = (*size).max(*offset);
    }
    Ok(())
}

fn run_slice<'a>(
    scope: &Option<Rc<Scope<'a>>>,
    inner: &'a Expr,
    n: u64,
    m: Option<u64>,
    image: &mut Image,
    offset: &mut u64,
) -> Result<()> {
    if Some(n) == m {
        return Ok(());
    }
    if m.is_some_and(|m| n > m) {
        return Err(Error::invalid(format!("[{n}:{}] does not describe a valid slice", m.unwrap_or(0))));
    }
    let data = match inner {
        // Only the part asked for is read, so that endless files (/dev/urandom) can be sliced.
        Expr::File(name) => {
            let file = std::fs::File::open(name).map_err(|e| Error::from_io(format!("<{name}"), &e))?;
            let mut data = Vec::new();
            let mut reader = std::io::BufReader::new(file);
            std::io::copy(&mut (&mut reader).take(n), &mut std::io::sink())
                .map_err(|e| Error::from_io(format!("<{name}"), &e))?;
            let limit = m.map_or(u64::MAX, |m| m - n);
            reader.take(limit).read_to_end(&mut data).map_err(|e| Error::from_io(format!("<{name}"), &e))?;
            Some(data)
        }
        // A script's output is cut off after the part asked for (it may never end).
        Expr::Script(script) if n == 0 => Some(run_script(script, m)?),
        _ => None,
    };
    if let Some(data) = data {
        image.write(*offset, &data)?;
        return advance(offset, data.len() as u64);
    }
    let (source, len) = run_nested(scope, inner)?;
    let end = m.unwrap_or(len);
    if n > len || end > len {
        let shown = m.map_or(String::new(), |m| m.to_string());
        return Err(Error::invalid(format!(
            "[{n}:{shown}] does not describe a valid slice of an expression of {len} bytes"
        )));
    }
    image.blit(&source, n, end - n, *offset)?;
    advance(offset, end - n)
}

/// Runs `script` with `/bin/sh` and returns what it writes to standard output, or only its first
/// `limit` bytes (the script then gets `SIGPIPE` when it writes more).
fn run_script(script: &str, limit: Option<u64>) -> Result<Vec<u8>> {
    let fail = |e: std::io::Error| Error::from_io(format!("<({script})"), &e);
    let mut child = Command::new("/bin/sh")
        .arg("-c")
        .arg(script)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(fail)?;
    let mut data = Vec::new();
    let read = match (child.stdout.take(), limit) {
        (Some(out), Some(limit)) => out.take(limit).read_to_end(&mut data),
        (Some(mut out), None) => out.read_to_end(&mut data),
        (None, _) => Ok(0),
    };
    // The pipe is closed by now, so a script that would write forever stops.
    let waited = child.wait();
    read.map_err(fail)?;
    waited.map_err(fail)?;
    Ok(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_vars(_: &str) -> Option<String> {
        None
    }

    /// The disk a text makes: its bytes, up to its size.
    fn disk_with(text: &str, vars: Variables<'_>) -> Result<Vec<u8>> {
        let expr = parse(text, vars)?;
        let mut image = Image::default();
        let size = evaluate(&expr, &mut image)?;
        let mut out = vec![0u8; size as usize];
        for (offset, bytes) in image.chunks() {
            let end = (offset as usize + bytes.len()).min(out.len());
            if (offset as usize) < end {
                out[offset as usize..end].copy_from_slice(&bytes[..end - offset as usize]);
            }
        }
        Ok(out)
    }

    fn disk(text: &str) -> Vec<u8> {
        disk_with(text, &no_vars).unwrap_or_else(|e| panic!("{text:?}: {}", e.message))
    }

    fn error(text: &str) -> String {
        disk_with(text, &no_vars).err().unwrap_or_else(|| panic!("{text:?} should fail")).message
    }

    #[test]
    fn bytes_in_every_base_and_offsets() {
        assert_eq!(disk("0 1 2 3"), [0, 1, 2, 3]);
        assert_eq!(disk("0x55 0xAA 0377 010 255"), [0x55, 0xaa, 0o377, 8, 255]);
        let sector = disk("0 1 2 3 @0x1fe 0x55 0xaa");
        assert_eq!(sector.len(), 512);
        assert_eq!(&sector[..4], &[0, 1, 2, 3]);
        assert_eq!(&sector[510..], &[0x55, 0xaa]);
        assert_eq!(disk("0 1 2 3 @^0x200 @-2 le16:0xaa55"), sector);
        assert_eq!(disk("@+3 1 @-2 2"), [0, 0, 2, 1]);
        assert_eq!(disk("@4"), [0; 4], "moving the offset makes the disk larger");
        assert_eq!(disk("1 @^1 2 @^4 3"), [1, 2, 0, 0, 3]);
        assert_eq!(disk("1 2 3 @0 9"), [9, 2, 3], "later bytes overwrite earlier ones");
        // "08" is the octal 0 followed by the byte 8, as scanf reads it.
        assert_eq!(disk("08"), [0, 8]);
    }

    #[test]
    fn strings_and_words() {
        assert_eq!(disk(r#""Hello" " " "\x41\t\"\\\n\q""#), b"Hello A\t\"\\\nq");
        assert_eq!(disk("be32:0x1 le16:258 be16:258 le64:1 be64:0x0102030405060708"), {
            let mut v = vec![0, 0, 0, 1, 2, 1, 1, 2, 1, 0, 0, 0, 0, 0, 0, 0];
            v.extend([1, 2, 3, 4, 5, 6, 7, 8]);
            v
        });
        assert!(error(r#""abc"#).contains("unterminated string"));
        assert!(error(r#""\x4""#).contains("\\xNN"));
        assert!(error(r#""\101""#).contains("not implemented"));
        assert!(error("le16:65536").contains("le16=65536"));
        assert!(error("le17:1").contains("le16:"));
    }

    #[test]
    fn groups_repeats_and_slices() {
        assert_eq!(disk("( 0x55 0xAA )*3"), [0x55, 0xaa, 0x55, 0xaa, 0x55, 0xaa]);
        assert_eq!(disk("( 0x55 0xAA ) * 2"), [0x55, 0xaa, 0x55, 0xaa]);
        assert_eq!(disk("0xff*4 1*0 2"), [0xff, 0xff, 0xff, 0xff, 2]);
        assert_eq!(disk(r#"( "Hello" )*2[3:7]"#), b"loHe");
        assert_eq!(disk(r#""Hello"[:2] "Hello"[3:] "Hello"[:] "Hello"[1:1]"#), b"HeloHello");
        assert_eq!(disk("( 1 ( 2 @4 ) 3 )*2"), [1, 2, 0, 0, 0, 3, 1, 2, 0, 0, 0, 3]);
        assert_eq!(disk("( @2 1 )"), [0, 0, 1], "offsets inside a group are relative to it");
        assert_eq!(disk("1 2 3 4 @1 ( @2 )"), [1, 0, 0, 4], "a group overwrites with its zeroes too");
        assert_eq!(disk("(((((1)))))*2"), [1, 1]);
        assert_eq!(disk("( 0 )*1000000").len(), 1_000_000);
        assert!(error("( 1 2 )[0:3]").contains("valid slice"));
        assert!(error("( 1 2 )[2:1]").contains("valid slice"));
        assert!(error("@4*2").contains("offset"));
        assert!(error("*2").contains("must follow"));
        assert!(error("1[x]").contains("not a slice"));
        assert!(error("( 1").contains("unmatched '('"));
        assert!(error("1 )").contains("unmatched ')'"));
    }

    #[test]
    fn huge_sparse_repeats_cost_nothing() {
        // "1T" is not a number in this language: the 1 is a byte, then "T" is an error.
        assert!(parse("( @1T )*1000", &no_vars).unwrap_err().message.contains("parsing error"));
        let mut image = Image::default();
        let expr = parse("( @0x10000000000 )*1000 1 0*0x4000000000000", &no_vars).unwrap();
        let size = evaluate(&expr, &mut image).unwrap();
        assert_eq!(size, 1000 * (1 << 40) + 1 + (1 << 50));
        assert_eq!(image.chunks().collect::<Vec<_>>(), [(1000 * (1 << 40), &[1u8][..])]);
    }

    #[test]
    fn names_and_scopes() {
        let text = r"( 0x55 0xAA ) -> \boot-signature
                     ( @0x1fe \boot-signature ) -> \sector
                     \sector \sector";
        let d = disk(text);
        assert_eq!(d.len(), 1024);
        assert_eq!(&d[510..512], &[0x55, 0xaa]);
        assert_eq!(&d[1022..], &[0x55, 0xaa]);
        assert!(error(r"\nothing").contains("\\nothing is not defined"));
        assert!(error(r"( 1 -> \a ) \a").contains("not defined"), "names end with their group");
        assert_eq!(disk(r"1 -> \a 2 -> \a \a"), [2], "the latest assignment wins");
        assert_eq!(disk(r"1 -> \a ( \a 2 ) -> \b 3 -> \a \b"), [1, 2], "names are bound when named");
        assert!(error("@1 -> \\a").contains("offset"));
    }

    #[test]
    fn variables_comments_files_and_scripts() {
        let vars = |name: &str| (name == "pattern").then(|| "0x55 0xAA".to_string());
        assert_eq!(disk_with("$pattern*2 # a comment\n 1", &vars).unwrap(), [0x55, 0xaa, 0x55, 0xaa, 1]);
        assert!(disk_with("$nothing_like_it", &vars)
            .unwrap_err()
            .message
            .contains("$nothing_like_it: variable not found"));
        let looping = |_: &str| Some("$again".to_string());
        assert!(disk_with("$again", &looping).unwrap_err().message.contains("nested too deeply"));

        let path = std::env::temp_dir().join(format!("nbdforge-data-format-{}", std::process::id()));
        std::fs::write(&path, b"0123456789").unwrap();
        let p = path.display();
        assert_eq!(disk(&format!("<{p} <{p}[2:4] <{p}[8:]")), b"01234567892389" as &[u8]);
        std::fs::remove_file(&path).unwrap();
        assert!(error("</nonexistent/file").contains("</nonexistent/file"));

        assert_eq!(disk("<(printf 'a(b)c')"), b"a(b)c");
        assert_eq!(disk("<( while :; do printf x; done )[:5]"), b"xxxxx");
        assert_eq!(disk("<(printf abc)*2"), b"abcabc");
        assert!(error("<(printf x").contains("closing"));
    }

    #[test]
    fn scanf_integers() {
        assert_eq!(scan_int(b"  0x1fz"), Some((0x1f, 6)));
        assert_eq!(scan_int(b"0x"), Some((0, 1)));
        assert_eq!(scan_int(b"-12"), Some((-12, 3)));
        assert_eq!(scan_int(b"0777"), Some((0o777, 4)));
        assert_eq!(scan_int(b"99999999999999999999999"), Some((i64::MAX, 23)));
        assert_eq!(scan_int(b"x"), None);
    }

    #[test]
    fn image_overwrites_and_merges() {
        let mut image = Image::default();
        image.write(10, b"abcdef").unwrap();
        image.write(12, b"XY").unwrap();
        image.write(16, b"gh").unwrap();
        assert_eq!(image.chunks().collect::<Vec<_>>(), [(10, &b"abXYefgh"[..])]);
        image.zero(11, 2);
        assert_eq!(image.chunks().collect::<Vec<_>>(), [(10, &b"a"[..]), (13, &b"Yefgh"[..])]);
        assert_eq!(image.uniform_byte(10), Some(0));
        assert_eq!(image.uniform_byte(11), None);
        let mut ones = Image::default();
        ones.fill(0, 1, 3).unwrap();
        assert_eq!(ones.uniform_byte(3), Some(1));
        assert_eq!(ones.uniform_byte(4), None);
    }
}
