use syn::LitStr;

/// Parses "500ms", "30s", "2m", "1h" (or a sum such as "1m30s") into milliseconds.
pub(crate) fn parse_millis(lit: &LitStr) -> syn::Result<u64> {
    let text = lit.value();
    let invalid = || {
        syn::Error::new(
            lit.span(),
            format!(
                "invalid duration {text:?}: write a number and a unit, such as \"500ms\", \"30s\", \"2m\" or \"1h\""
            ),
        )
    };
    let mut total: u64 = 0;
    let mut rest = text.trim();
    if rest.is_empty() {
        return Err(invalid());
    }
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
        if digits == 0 {
            return Err(invalid());
        }
        let value: u64 = rest[..digits].parse().map_err(|_| invalid())?;
        rest = &rest[digits..];
        let unit_len = rest.find(|c: char| c.is_ascii_digit()).unwrap_or(rest.len());
        let factor = match &rest[..unit_len] {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            _ => return Err(invalid()),
        };
        rest = &rest[unit_len..];
        total = value.checked_mul(factor).and_then(|v| total.checked_add(v)).ok_or_else(invalid)?;
    }
    Ok(total)
}

/// A timeout: a duration longer than zero.
pub(crate) fn parse_timeout(lit: &LitStr) -> syn::Result<u64> {
    match parse_millis(lit)? {
        0 => Err(syn::Error::new(lit.span(), "a timeout must be longer than zero: leave it out to wait forever")),
        ms => Ok(ms),
    }
}
