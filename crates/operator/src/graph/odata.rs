//! Safe construction of Graph URLs: path segments from caller-supplied ids, OData string
//! literals in `$filter`, and percent-encoded query strings.

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use url::Url;

use super::error::GraphError;

/// Characters left as-is in a path segment: RFC 3986 unreserved plus `@` (UPNs are sent as
/// `/users/alice@contoso.com`, as every Graph SDK does). Everything else, notably `/`, `?`,
/// `#`, `%` and `'`, is escaped, so an id can never change the path or start a query.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~')
    .remove(b'@');

/// Characters left as-is in a query component (the `url` crate still escapes `'` in http(s)
/// queries, which servers decode). `$`, `(`, `)`, `,`, `/`, `'` and `:` are
/// structural OData characters that are legal in a query; `&`, `=`, `+`, `#`, `%` and space
/// are escaped so a value can never end its parameter or be misread as a space.
const QUERY: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~')
    .remove(b'$')
    .remove(b'(')
    .remove(b')')
    .remove(b',')
    .remove(b'/')
    .remove(b'\'')
    .remove(b':')
    .remove(b'@');

/// Encodes one caller-supplied id as a URL path segment. Empty, `.`/`..`, over-long and
/// control-character ids are refused: they would address a different resource.
pub fn segment(operation: &'static str, id: &str) -> Result<String, GraphError> {
    let invalid = |why: &str| GraphError::InvalidArgument {
        operation,
        message: format!("id {id:?} {why}"),
    };
    if id.is_empty() {
        return Err(invalid("is empty"));
    }
    if id == "." || id == ".." {
        return Err(invalid("is a relative path segment"));
    }
    if id.len() > 1024 {
        return Err(invalid("is longer than 1024 bytes"));
    }
    if id.chars().any(char::is_control) {
        return Err(invalid("contains control characters"));
    }
    Ok(utf8_percent_encode(id, SEGMENT).to_string())
}

/// An OData string literal: `'` doubled, the whole wrapped in quotes
/// (`O'Brien` → `'O''Brien'`).
pub fn string_literal(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

/// Appends `path` (already built from fixed text and [`segment`]s) and the query parameters
/// (raw; each is percent-encoded here) to `base` (e.g. `https://graph.microsoft.com/v1.0`).
pub fn build_url(
    operation: &'static str,
    base: &str,
    path: &str,
    query: &[(&str, &str)],
) -> Result<Url, GraphError> {
    let mut text = format!("{}{}", base.trim_end_matches('/'), path);
    for (i, (k, v)) in query.iter().enumerate() {
        text.push(if i == 0 { '?' } else { '&' });
        text.extend(utf8_percent_encode(k, QUERY));
        text.push('=');
        text.extend(utf8_percent_encode(v, QUERY));
    }
    Url::parse(&text).map_err(|e| GraphError::InvalidArgument {
        operation,
        message: format!("cannot build URL {text:?}: {e}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_escape_path_breakers() {
        assert_eq!(
            segment("t", "7deff43e-1f17-44ef-9e5f-d516b0ba11d4").unwrap(),
            "7deff43e-1f17-44ef-9e5f-d516b0ba11d4"
        );
        assert_eq!(
            segment("t", "alice@contoso.com").unwrap(),
            "alice@contoso.com"
        );
        assert_eq!(segment("t", "a/b?c#d").unwrap(), "a%2Fb%3Fc%23d");
        assert_eq!(segment("t", "o'brien%x").unwrap(), "o%27brien%25x");
        assert_eq!(segment("t", "x y").unwrap(), "x%20y");
        for bad in ["", ".", "..", "a\nb"] {
            let e = segment("get_user", bad).unwrap_err();
            assert_eq!(e.kind(), "invalid_argument", "{bad:?}");
        }
    }

    #[test]
    fn string_literals_double_quotes() {
        assert_eq!(string_literal("Finance"), "'Finance'");
        assert_eq!(string_literal("O'Brien's"), "'O''Brien''s'");
        assert_eq!(string_literal("' or 1 eq 1 or '"), "''' or 1 eq 1 or '''");
    }

    #[test]
    fn urls_encode_values_without_injection() {
        let filter = format!("displayName eq {}", string_literal("R&D = 100% #1 +x"));
        let url = build_url(
            "t",
            "https://graph.microsoft.com/v1.0/",
            "/identityGovernance/entitlementManagement/accessPackages",
            &[("$filter", &filter), ("$expand", "catalog")],
        )
        .unwrap();
        assert_eq!(
            url.as_str(),
            "https://graph.microsoft.com/v1.0/identityGovernance/entitlementManagement/accessPackages\
             ?$filter=displayName%20eq%20%27R%26D%20%3D%20100%25%20%231%20%2Bx%27&$expand=catalog"
        );
        // A standard query parser sees exactly two parameters with the original values.
        let pairs: Vec<(String, String)> = url.query_pairs().into_owned().collect();
        assert_eq!(pairs.len(), 2);
        assert_eq!(pairs[0].1, "displayName eq 'R&D = 100% #1 +x'");
    }

    #[test]
    fn nested_expand_is_kept_readable() {
        let url = build_url(
            "t",
            "http://127.0.0.1:1/v1.0",
            "/identityGovernance/entitlementManagement/accessPackages/p1",
            &[("$expand", "resourceRoleScopes($expand=role,scope)")],
        )
        .unwrap();
        assert_eq!(
            url.query(),
            Some("$expand=resourceRoleScopes($expand%3Drole,scope)")
        );
        let pairs: Vec<(String, String)> = url.query_pairs().into_owned().collect();
        assert_eq!(pairs[0].1, "resourceRoleScopes($expand=role,scope)");
    }
}
