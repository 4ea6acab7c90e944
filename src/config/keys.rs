//! The keys the core does not read itself: an adapter's parts (its top-level section, a
//! device's `[device.<kind>]`, a field's `<kind> = { ... }`), which go to the kind named
//! by the device's `adapter`, and anything else, which is a mistake.
//!
//! serde cannot refuse unknown keys in the tables that also hold adapters' parts (it
//! does not know the registry), so this walk does, with the same `FILE:LINE:COL: key`
//! errors.

use fieldgate_api::config::{keys_of, ConfigNode};
use toml_edit::{ImDocument, Item, TableLike};

use super::location::Ctx;
use super::schema::{RawConfig, RawDevice, RawField};
use super::ConfigError;
use crate::adapters;

/// Refuses every key of the top level, a device or a field that is neither the core's nor
/// an adapter part the device may have.
pub(super) fn check(ctx: &Ctx, doc: &ImDocument<&str>, raw: &RawConfig) -> Result<(), ConfigError> {
    let top = keys_of::<RawConfig>();
    for (key, _) in doc.as_table().iter() {
        if !top.contains(&key) {
            match adapters::find(key) {
                Some(r) if r.kind.is_some() => {}
                Some(r) => {
                    return Err(ctx.at_key(
                        key,
                        format!(
                            "[{key}] configures the {key} adapter, which this build does not \
                             include (rebuild with the Cargo feature \"{}\")",
                            r.feature
                        ),
                    ))
                }
                None => return Err(unknown(ctx, doc.as_table(), key, key, top)),
            }
        }
    }
    let devices = doc.get("device").map(entries).unwrap_or_default();
    for (i, (table, dev)) in devices.iter().zip(&raw.devices).enumerate() {
        let adapter = dev.get_ref().adapter.get_ref().as_str();
        if adapters::find(adapter).and_then(|r| r.kind).is_none() {
            // An adapter this build lacks is reported as such by validation; whatever
            // belongs to it cannot be told from mistakes.
            continue;
        }
        let path = format!("device[{i}]");
        foreign(ctx, *table, &path, adapter, keys_of::<RawDevice>(), "a")?;
        let fields = table.get("field").map(entries).unwrap_or_default();
        for (j, field) in fields.iter().enumerate() {
            let path = format!("{path}.field[{j}]");
            foreign(
                ctx,
                *field,
                &path,
                adapter,
                keys_of::<RawField>(),
                "a field of a",
            )?;
        }
    }
    Ok(())
}

/// Checks one device or field table of a device whose adapter is `adapter`.
fn foreign(
    ctx: &Ctx,
    table: &dyn TableLike,
    path: &str,
    adapter: &str,
    known: &[&str],
    what: &str,
) -> Result<(), ConfigError> {
    for (key, _) in table.iter() {
        if known.contains(&key) || key == adapter {
            continue;
        }
        if adapters::find(key).is_some() {
            // One rule for every pair of buses.
            return Err(ctx.at_key(
                &format!("{path}.{key}"),
                format!("{key} options on {what} {adapter} device"),
            ));
        }
        return Err(unknown(ctx, table, key, &format!("{path}.{key}"), known));
    }
    Ok(())
}

fn unknown(ctx: &Ctx, table: &dyn TableLike, key: &str, path: &str, known: &[&str]) -> ConfigError {
    let message = format!(
        "unknown key `{key}`, expected one of {}, or the table of the device's adapter ({})",
        known
            .iter()
            .map(|k| format!("`{k}`"))
            .collect::<Vec<_>>()
            .join(", "),
        adapters::compiled_names().join(", ")
    );
    // Point at the key as written.
    match table.key(key).and_then(|k| k.span()) {
        Some(span) => ctx.error(span, Some(path.to_owned()), message),
        None => ctx.at_key(path, message),
    }
}

/// The tables of an array of tables (`[[device]]`) or of an inline array of tables.
pub(super) fn entries(item: &Item) -> Vec<&dyn TableLike> {
    match item {
        Item::ArrayOfTables(a) => a.iter().map(|t| t as &dyn TableLike).collect(),
        Item::Value(toml_edit::Value::Array(a)) => a
            .iter()
            .filter_map(|v| v.as_inline_table().map(|t| t as &dyn TableLike))
            .collect(),
        _ => Vec::new(),
    }
}

/// The `kind` part of a device or field table, if written.
pub(super) fn kind_part<'a>(
    table: Option<&'a dyn TableLike>,
    kind: &str,
    path: &str,
) -> Option<ConfigNode<'a>> {
    table?
        .get(kind)
        .map(|item| ConfigNode::new(item, format!("{path}.{kind}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_keys_of_a_struct_come_from_serde() {
        let device = keys_of::<RawDevice>();
        assert!(device.contains(&"id") && device.contains(&"adapter") && device.contains(&"field"));
        assert!(!device.contains(&"fields"), "renames apply");
        let field = keys_of::<RawField>();
        assert!(field.contains(&"type") && field.contains(&"count") && field.contains(&"stride"));
        assert!(keys_of::<RawConfig>().contains(&"device"));
    }
}
