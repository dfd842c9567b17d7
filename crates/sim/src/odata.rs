//! OData plumbing for the simulator: query options, the small `$filter` grammar Graph
//! documents for our paths, `$select`/`$expand`, paging, and Graph error responses.

use percent_encoding::{AsciiSet, CONTROLS, utf8_percent_encode};
use serde_json::{Map, Value, json};

/// Characters escaped in query values we write into `@odata.nextLink`.
const QUERY_VALUE: &AsciiSet = &CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'#')
    .add(b'%')
    .add(b'&')
    .add(b'+')
    .add(b'<')
    .add(b'>');

/// The largest `$top` accepted on collections.
pub(crate) const MAX_TOP: usize = 999;
/// Page size when the client gives no `$top`.
pub(crate) const DEFAULT_PAGE: usize = 100;

/// A handler's answer before transport concerns (ids, RU headers) are added.
#[derive(Debug, Clone)]
pub(crate) struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Option<Value>,
}

impl Reply {
    pub fn json(status: u16, body: Value) -> Reply {
        Reply {
            status,
            headers: Vec::new(),
            body: Some(body),
        }
    }

    pub fn ok(body: Value) -> Reply {
        Self::json(200, body)
    }

    pub fn empty(status: u16) -> Reply {
        Reply {
            status,
            headers: Vec::new(),
            body: None,
        }
    }

    pub fn header(mut self, name: &str, value: impl Into<String>) -> Reply {
        self.headers.push((name.to_string(), value.into()));
        self
    }
}

/// A Graph error: rendered as `{"error": {"code", "message", "innerError"}}` once the
/// request id is known.
#[derive(Debug, Clone)]
pub(crate) struct GraphError {
    pub status: u16,
    pub code: String,
    pub message: String,
    pub headers: Vec<(String, String)>,
}

impl GraphError {
    pub fn new(status: u16, code: &str, message: impl Into<String>) -> GraphError {
        GraphError {
            status,
            code: code.into(),
            message: message.into(),
            headers: Vec::new(),
        }
    }

    pub fn bad_request(code: &str, message: impl Into<String>) -> GraphError {
        Self::new(400, code, message)
    }

    pub fn not_found(code: &str, message: impl Into<String>) -> GraphError {
        Self::new(404, code, message)
    }

    pub fn header(mut self, name: &str, value: impl Into<String>) -> GraphError {
        self.headers.push((name.to_string(), value.into()));
        self
    }

    /// Renders the error body (docs/graph.md "Errors") with the correlation ids of this request.
    pub fn into_reply(self, request_id: &str, client_request_id: &str, date: &str) -> Reply {
        let mut inner = json!({
            "date": date,
            "request-id": request_id,
            "client-request-id": client_request_id,
        });
        if self.code == "TooManyRequests" {
            inner["code"] = json!("429");
            inner["message"] = json!("Please retry after");
            inner["status"] = json!("429");
        }
        Reply {
            status: self.status,
            headers: self.headers,
            body: Some(json!({"error": {
                "code": self.code,
                "message": self.message,
                "details": [],
                "innerError": inner,
            }})),
        }
    }
}

pub(crate) type GResult = Result<Reply, GraphError>;

/// Parsed query string. Keys are matched case-insensitively, with or without `$`.
#[derive(Debug, Clone, Default)]
pub(crate) struct Query {
    pairs: Vec<(String, String)>,
}

impl Query {
    pub fn parse(raw: Option<&str>) -> Query {
        let pairs = raw
            .map(|q| {
                url::form_urlencoded::parse(q.as_bytes())
                    .map(|(k, v)| (k.into_owned(), v.into_owned()))
                    .collect()
            })
            .unwrap_or_default();
        Query { pairs }
    }

    fn norm(k: &str) -> String {
        k.trim_start_matches('$').to_ascii_lowercase()
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        let want = Self::norm(name);
        self.pairs
            .iter()
            .find(|(k, _)| Self::norm(k) == want)
            .map(|(_, v)| v.as_str())
    }

    pub fn has(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    /// The query again, without the named options, in the order given.
    pub fn encode_without(&self, drop: &[&str]) -> Vec<String> {
        let drop: Vec<String> = drop.iter().map(|d| Self::norm(d)).collect();
        self.pairs
            .iter()
            .filter(|(k, _)| !drop.contains(&Self::norm(k)))
            .map(|(k, v)| format!("{k}={}", utf8_percent_encode(v, QUERY_VALUE)))
            .collect()
    }

    /// `$top` if given, validated against `1..=MAX_TOP`.
    pub fn top(&self, bad_code: &str) -> Result<Option<usize>, GraphError> {
        match self.get("top") {
            None => Ok(None),
            Some(t) => match t.trim().parse::<usize>() {
                Ok(n) if (1..=MAX_TOP).contains(&n) => Ok(Some(n)),
                _ => Err(GraphError::bad_request(
                    bad_code,
                    format!("Invalid page size specified: '{t}'. Must be between 1 and {MAX_TOP}."),
                )),
            },
        }
    }

    /// `$select` as lower-cased property names.
    pub fn select(&self) -> Option<Vec<String>> {
        self.get("select").map(|s| {
            s.split(',')
                .map(|p| p.trim().to_ascii_lowercase())
                .filter(|p| !p.is_empty())
                .collect()
        })
    }

    /// `$expand` as `(name, nested options)` pairs.
    pub fn expand(&self) -> Vec<Expand> {
        self.get("expand").map(parse_expand).unwrap_or_default()
    }
}

/// One `$expand` item, e.g. `resourceRoleScopes($expand=role,scope)`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Expand {
    pub name: String,
    pub nested: Vec<Expand>,
    /// A nested `$select`, lower-cased.
    pub select: Option<Vec<String>>,
}

pub(crate) fn has_expand(list: &[Expand], name: &str) -> bool {
    list.iter().any(|e| e.name.eq_ignore_ascii_case(name))
}

pub(crate) fn nested_expand<'a>(list: &'a [Expand], name: &str) -> &'a [Expand] {
    list.iter()
        .find(|e| e.name.eq_ignore_ascii_case(name))
        .map(|e| e.nested.as_slice())
        .unwrap_or(&[])
}

fn split_top_level(s: &str, sep: char) -> Vec<String> {
    let mut out = Vec::new();
    let mut depth = 0i32;
    let mut cur = String::new();
    for c in s.chars() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            _ => {}
        }
        if c == sep && depth == 0 {
            out.push(std::mem::take(&mut cur));
        } else {
            cur.push(c);
        }
    }
    out.push(cur);
    out.into_iter()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect()
}

pub(crate) fn parse_expand(s: &str) -> Vec<Expand> {
    split_top_level(s, ',')
        .into_iter()
        .map(|item| match item.find('(') {
            None => Expand {
                name: item,
                nested: Vec::new(),
                select: None,
            },
            Some(i) => {
                let name = item[..i].trim().to_string();
                let inner = item[i + 1..].strip_suffix(')').unwrap_or(&item[i + 1..]);
                let mut nested = Vec::new();
                let mut select = None;
                for opt in split_top_level(inner, ';') {
                    let Some((k, v)) = opt.split_once('=') else {
                        continue;
                    };
                    let k = k.trim().trim_start_matches('$');
                    if k.eq_ignore_ascii_case("expand") {
                        nested.extend(parse_expand(v));
                    } else if k.eq_ignore_ascii_case("select") {
                        select = Some(
                            v.split(',')
                                .map(|p| p.trim().to_ascii_lowercase())
                                .filter(|p| !p.is_empty())
                                .collect(),
                        );
                    }
                }
                Expand {
                    name,
                    nested,
                    select,
                }
            }
        })
        .collect()
}

/// Applies `$select`: keeps selected properties, OData annotations and the named
/// navigation properties (already expanded by the caller).
pub(crate) fn apply_select(v: Value, select: Option<&[String]>, keep: &[&str]) -> Value {
    let Some(sel) = select else { return v };
    let Value::Object(map) = v else { return v };
    let out: Map<String, Value> = map
        .into_iter()
        .filter(|(k, _)| {
            k.starts_with('@')
                || sel.iter().any(|s| s.eq_ignore_ascii_case(k))
                || keep.iter().any(|n| n.eq_ignore_ascii_case(k))
        })
        .collect();
    Value::Object(out)
}

/// A `$filter` expression tree (the small subset Graph documents for our paths).
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Filter {
    And(Vec<Filter>),
    Or(Vec<Filter>),
    /// `path eq 'value'` (path lower-cased).
    Eq(String, String),
    /// `contains(path,'value')` / `startswith(path,'value')`.
    Func(String, String, String),
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Word(String),
    Str(String),
    Open,
    Close,
    Comma,
}

fn tokenize(s: &str) -> Result<Vec<Tok>, String> {
    let mut out = Vec::new();
    let cs: Vec<char> = s.chars().collect();
    let mut i = 0;
    while i < cs.len() {
        let c = cs[i];
        match c {
            ' ' | '\t' => i += 1,
            '(' => {
                out.push(Tok::Open);
                i += 1;
            }
            ')' => {
                out.push(Tok::Close);
                i += 1;
            }
            ',' => {
                out.push(Tok::Comma);
                i += 1;
            }
            '\'' => {
                let mut v = String::new();
                i += 1;
                loop {
                    match cs.get(i) {
                        None => return Err("unterminated string literal".into()),
                        Some('\'') if cs.get(i + 1) == Some(&'\'') => {
                            v.push('\'');
                            i += 2;
                        }
                        Some('\'') => {
                            i += 1;
                            break;
                        }
                        Some(ch) => {
                            v.push(*ch);
                            i += 1;
                        }
                    }
                }
                out.push(Tok::Str(v));
            }
            _ => {
                let start = i;
                while i < cs.len() && !matches!(cs[i], ' ' | '\t' | '(' | ')' | ',' | '\'') {
                    i += 1;
                }
                out.push(Tok::Word(cs[start..i].iter().collect()));
            }
        }
    }
    Ok(out)
}

struct Parser {
    toks: Vec<Tok>,
    pos: usize,
}

impl Parser {
    fn peek_word(&self, w: &str) -> bool {
        matches!(self.toks.get(self.pos), Some(Tok::Word(x)) if x.eq_ignore_ascii_case(w))
    }

    fn next(&mut self) -> Option<Tok> {
        let t = self.toks.get(self.pos).cloned();
        self.pos += 1;
        t
    }

    fn expr(&mut self) -> Result<Filter, String> {
        let mut ors = vec![self.conj()?];
        while self.peek_word("or") {
            self.pos += 1;
            ors.push(self.conj()?);
        }
        Ok(if ors.len() == 1 {
            ors.remove(0)
        } else {
            Filter::Or(ors)
        })
    }

    fn conj(&mut self) -> Result<Filter, String> {
        let mut ands = vec![self.term()?];
        while self.peek_word("and") {
            self.pos += 1;
            ands.push(self.term()?);
        }
        Ok(if ands.len() == 1 {
            ands.remove(0)
        } else {
            Filter::And(ands)
        })
    }

    fn term(&mut self) -> Result<Filter, String> {
        match self.next() {
            Some(Tok::Open) => {
                let e = self.expr()?;
                match self.next() {
                    Some(Tok::Close) => Ok(e),
                    _ => Err("missing ')'".into()),
                }
            }
            Some(Tok::Word(w)) => {
                if matches!(self.toks.get(self.pos), Some(Tok::Open)) {
                    self.pos += 1;
                    let path = match self.next() {
                        Some(Tok::Word(p)) => p.to_ascii_lowercase(),
                        _ => return Err(format!("{w}() needs a property path")),
                    };
                    if self.next() != Some(Tok::Comma) {
                        return Err(format!("{w}() needs two arguments"));
                    }
                    let lit = match self.next() {
                        Some(Tok::Str(s)) => s,
                        _ => return Err(format!("{w}() needs a quoted string")),
                    };
                    if self.next() != Some(Tok::Close) {
                        return Err(format!("missing ')' after {w}()"));
                    }
                    return Ok(Filter::Func(w.to_ascii_lowercase(), path, lit));
                }
                let op = match self.next() {
                    Some(Tok::Word(op)) => op,
                    _ => return Err(format!("expected an operator after {w}")),
                };
                if !op.eq_ignore_ascii_case("eq") {
                    return Err(format!("operator '{op}' is not supported"));
                }
                match self.next() {
                    Some(Tok::Str(s)) => Ok(Filter::Eq(w.to_ascii_lowercase(), s)),
                    // Graph accepts unquoted GUIDs/booleans in some places; keep them as text.
                    Some(Tok::Word(s)) => Ok(Filter::Eq(w.to_ascii_lowercase(), s)),
                    _ => Err(format!("expected a value after '{w} eq'")),
                }
            }
            other => Err(format!("unexpected token {other:?}")),
        }
    }
}

/// Parses a `$filter` value.
pub(crate) fn parse_filter(s: &str) -> Result<Filter, String> {
    let toks = tokenize(s)?;
    let mut p = Parser { toks, pos: 0 };
    let f = p.expr()?;
    if p.pos < p.toks.len() {
        return Err("unexpected text after the expression".into());
    }
    Ok(f)
}

impl Filter {
    /// Checks every leaf against the supported `eq` paths and functions; returns the
    /// first unsupported leaf as text.
    pub fn check(
        &self,
        eq_paths: &[&str],
        funcs: &[(&str, &str)],
        allow_or: bool,
    ) -> Result<(), String> {
        match self {
            Filter::And(v) => v
                .iter()
                .try_for_each(|f| f.check(eq_paths, funcs, allow_or)),
            Filter::Or(v) => {
                if !allow_or {
                    return Err("'or' is not supported here".into());
                }
                v.iter()
                    .try_for_each(|f| f.check(eq_paths, funcs, allow_or))
            }
            Filter::Eq(p, _) => {
                if eq_paths.iter().any(|e| e.eq_ignore_ascii_case(p)) {
                    Ok(())
                } else {
                    Err(format!("{p} eq"))
                }
            }
            Filter::Func(f, p, _) => {
                if funcs
                    .iter()
                    .any(|(ff, pp)| ff.eq_ignore_ascii_case(f) && pp.eq_ignore_ascii_case(p))
                {
                    Ok(())
                } else {
                    Err(format!("{f}({p})"))
                }
            }
        }
    }

    /// Evaluates the filter; `field` returns the candidate's value for a (lower-case) path.
    pub fn eval(&self, field: &dyn Fn(&str) -> Option<String>) -> bool {
        match self {
            Filter::And(v) => v.iter().all(|f| f.eval(field)),
            Filter::Or(v) => v.iter().any(|f| f.eval(field)),
            Filter::Eq(p, lit) => field(p).is_some_and(|v| v.eq_ignore_ascii_case(lit)),
            Filter::Func(f, p, lit) => field(p).is_some_and(|v| {
                let v = v.to_lowercase();
                let lit = lit.to_lowercase();
                match f.as_str() {
                    "contains" => v.contains(&lit),
                    "startswith" => v.starts_with(&lit),
                    _ => false,
                }
            }),
        }
    }

    /// Every `eq` literal for a path (used by delta's `id eq ... or id eq ...`).
    pub fn eq_values(&self, path: &str, out: &mut Vec<String>) {
        match self {
            Filter::And(v) | Filter::Or(v) => v.iter().for_each(|f| f.eq_values(path, out)),
            Filter::Eq(p, lit) if p.eq_ignore_ascii_case(path) => out.push(lit.clone()),
            _ => {}
        }
    }
}

/// How the service owning a collection answers `$filter` misuse: `400` with `code`, and
/// the message `unparsable(raw, why)` or `unsupported(leaf)` builds.
struct FilterErrors {
    code: &'static str,
    unparsable: fn(&str, &str) -> String,
    unsupported: fn(&str) -> String,
}

const EM_FILTER: FilterErrors = FilterErrors {
    code: "InvalidFilter",
    unparsable: |raw, e| {
        format!("OData query is invalid: Filter '{raw}' could not be parsed: {e}.")
    },
    unsupported: |leaf| format!("OData query is invalid: Filter '{leaf}' is not supported."),
};

const DIRECTORY_FILTER: FilterErrors = FilterErrors {
    code: "Request_UnsupportedQuery",
    unparsable: |_, e| format!("Invalid filter clause: {e}"),
    unsupported: |leaf| format!("Unsupported query: {leaf}"),
};

/// Parses `$filter` and checks it against what a collection supports (`eq` on `eq_paths`,
/// the listed functions, `and`/`or`).
fn checked_filter(
    q: &Query,
    eq_paths: &[&str],
    funcs: &[(&str, &str)],
    errors: &FilterErrors,
) -> Result<Option<Filter>, GraphError> {
    let Some(raw) = q.get("filter") else {
        return Ok(None);
    };
    let f = parse_filter(raw)
        .map_err(|e| GraphError::bad_request(errors.code, (errors.unparsable)(raw, &e)))?;
    f.check(eq_paths, funcs, true)
        .map_err(|leaf| GraphError::bad_request(errors.code, (errors.unsupported)(&leaf)))?;
    Ok(Some(f))
}

/// Parses and checks `$filter` for an entitlement-management collection.
pub(crate) fn em_filter(
    q: &Query,
    eq_paths: &[&str],
    funcs: &[(&str, &str)],
) -> Result<Option<Filter>, GraphError> {
    checked_filter(q, eq_paths, funcs, &EM_FILTER)
}

/// Parses and checks `$filter` for a directory (or Identity Protection) collection.
pub(crate) fn directory_filter(
    q: &Query,
    eq_paths: &[&str],
    funcs: &[(&str, &str)],
) -> Result<Option<Filter>, GraphError> {
    checked_filter(q, eq_paths, funcs, &DIRECTORY_FILTER)
}

/// Encodes a page offset as an opaque `$skiptoken`.
pub(crate) fn encode_skiptoken(offset: usize) -> String {
    // Not a secret, just opaque-looking so clients are not tempted to build it themselves.
    format!("RFNwdAIAAQAA{:x}", offset ^ 0x5a5a)
}

pub(crate) fn decode_skiptoken(tok: &str) -> Option<usize> {
    let hex = tok.strip_prefix("RFNwdAIAAQAA")?;
    usize::from_str_radix(hex, 16).ok().map(|v| v ^ 0x5a5a)
}

/// Builds one page of a collection with an absolute `@odata.nextLink` when more remain.
pub(crate) fn page(
    items: Vec<Value>,
    q: &Query,
    base: &str,
    path: &str,
    context: &str,
    bad_code: &str,
) -> GResult {
    page_lazy(items, |v| v, q, base, path, context, bad_code)
}

/// Like [`page`], rendering only the items of the requested page (large collections).
pub(crate) fn page_lazy<T>(
    items: Vec<T>,
    render: impl FnMut(T) -> Value,
    q: &Query,
    base: &str,
    path: &str,
    context: &str,
    bad_code: &str,
) -> GResult {
    let size = q.top(bad_code)?.unwrap_or(DEFAULT_PAGE);
    let offset = match q.get("skiptoken") {
        None => 0,
        Some(t) => decode_skiptoken(t).ok_or_else(|| {
            GraphError::bad_request(bad_code, "The $skiptoken is not valid for this collection.")
        })?,
    };
    let total = items.len();
    let value: Vec<Value> = items
        .into_iter()
        .skip(offset)
        .take(size)
        .map(render)
        .collect();
    let mut body = json!({
        "@odata.context": format!("{base}/v1.0/$metadata#{context}"),
        "value": value,
    });
    if offset + size < total {
        let mut params = q.encode_without(&["skiptoken"]);
        params.push(format!("$skiptoken={}", encode_skiptoken(offset + size)));
        body["@odata.nextLink"] = json!(format!("{base}{path}?{}", params.join("&")));
    }
    Ok(Reply::ok(body))
}

/// One page of a filtered scan over an append-only list (assignments, requests), whose
/// `$skiptoken` is the position in the *whole* list where the next page starts. So each
/// page costs the items it covers rather than a filter over the whole list: without it a
/// 300,000-assignment tenant made the simulator, not the client, the benchmark's
/// bottleneck. `items` are (position, item) pairs that passed the filter, in order.
pub(crate) fn page_scan<'a, T: 'a>(
    items: impl Iterator<Item = (usize, &'a T)>,
    mut render: impl FnMut(&'a T) -> Value,
    q: &Query,
    base: &str,
    path: &str,
    context: &str,
    bad_code: &str,
) -> GResult {
    let size = q.top(bad_code)?.unwrap_or(DEFAULT_PAGE);
    let start = match q.get("skiptoken") {
        None => 0,
        Some(t) => decode_skiptoken(t).ok_or_else(|| {
            GraphError::bad_request(bad_code, "The $skiptoken is not valid for this collection.")
        })?,
    };
    let mut value = Vec::with_capacity(size.min(DEFAULT_PAGE));
    let mut next = None;
    for (at, item) in items.skip_while(|(at, _)| *at < start) {
        if value.len() == size {
            next = Some(at);
            break;
        }
        value.push(render(item));
    }
    let mut body = json!({
        "@odata.context": format!("{base}/v1.0/$metadata#{context}"),
        "value": value,
    });
    if let Some(at) = next {
        let mut params = q.encode_without(&["skiptoken"]);
        params.push(format!("$skiptoken={}", encode_skiptoken(at)));
        body["@odata.nextLink"] = json!(format!("{base}{path}?{}", params.join("&")));
    }
    Ok(Reply::ok(body))
}

/// Whether `s` parses as a GUID.
pub(crate) fn is_guid(s: &str) -> bool {
    uuid::Uuid::parse_str(s).is_ok()
}

/// Graph's answer to a method a route does not serve.
pub(crate) fn method_not_allowed(method: &axum::http::Method, path: &str) -> GraphError {
    GraphError::new(
        405,
        "Request_BadRequest",
        format!("The HTTP method '{method}' is not supported on '{path}'."),
    )
}

/// A time as Graph writes it: RFC 3339, to the second, UTC.
pub(crate) fn ts(t: jiff::Timestamp) -> String {
    t.round(jiff::Unit::Second).unwrap_or(t).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_documented_assignment_filters() {
        let f = parse_filter("accessPackage/id eq 'p1' and target/objectid eq 'u1'").unwrap();
        assert_eq!(
            f,
            Filter::And(vec![
                Filter::Eq("accesspackage/id".into(), "p1".into()),
                Filter::Eq("target/objectid".into(), "u1".into()),
            ])
        );
        let f = parse_filter("id eq 'a' or id eq 'b'").unwrap();
        let mut ids = Vec::new();
        f.eq_values("id", &mut ids);
        assert_eq!(ids, vec!["a", "b"]);
        let f = parse_filter("contains(displayName,'Fin')").unwrap();
        assert!(f.eval(&|_| Some("Finance Analysts".into())));
        assert!(parse_filter("state ne 'x'").is_err());
        assert!(parse_filter("displayName eq 'O''Brien'").is_ok());
    }

    #[test]
    fn expand_parses_nested_options() {
        let e = parse_expand("resourceRoleScopes($expand=role,scope),catalog");
        assert_eq!(e.len(), 2);
        assert_eq!(e[0].name, "resourceRoleScopes");
        assert!(has_expand(&e[0].nested, "role") && has_expand(&e[0].nested, "scope"));
        assert!(has_expand(&e, "catalog"));
        let e =
            parse_expand("assignment($expand=target($expand=x)),members($select=id,displayName)");
        assert_eq!(e[0].nested[0].name, "target");
        assert_eq!(e[0].nested[0].nested[0].name, "x");
        assert_eq!(
            e[1].select,
            Some(vec!["id".to_string(), "displayname".to_string()])
        );
    }

    #[test]
    fn skiptoken_round_trips() {
        for n in [0, 1, 100, 12345] {
            assert_eq!(decode_skiptoken(&encode_skiptoken(n)), Some(n));
        }
        assert_eq!(decode_skiptoken("nonsense"), None);
    }
}
