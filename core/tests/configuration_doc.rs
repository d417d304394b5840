//! docs/CONFIGURATION.md documents every key of [`Settings`]: a key added to a
//! settings struct without a row in that file fails here, by name.
//!
//! The keys come from serde itself, not from a list kept by hand: a probe
//! deserializer walks `Settings`' `Deserialize` impl, which names every field of
//! every section (the same names `Settings::load` accepts, since unknown keys are
//! rejected), including `Option` fields that `Settings::to_toml()` leaves out while
//! unset. The defaults come from `Settings::default().to_toml()`, the text
//! `danmaku config` prints: every key it prints must show that value in the
//! default column of its row, so the documented defaults cannot drift either.
//! Rows naming a key the struct no longer has fail too.

use danmaku_core::config::Settings;
use serde::de::{self, DeserializeSeed, IntoDeserializer, MapAccess, Visitor};
use serde::Deserialize;
use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::rc::Rc;

type ProbeError = de::value::Error;

/// A deserializer that produces the smallest value of whatever type asks, and
/// records the dotted path of every leaf (a value that is not a struct) it hands
/// out. Structs are walked field by field, in the order serde lists them.
struct Probe {
    path: Vec<&'static str>,
    leaves: Rc<RefCell<BTreeSet<String>>>,
}

impl Probe {
    fn leaf(&self) {
        self.leaves.borrow_mut().insert(self.path.join("."));
    }
}

macro_rules! leaf_with {
    ($($method:ident => |$v:ident| $body:expr;)*) => {
        $(
            fn $method<V: Visitor<'de>>(self, $v: V) -> Result<V::Value, ProbeError> {
                self.leaf();
                $body
            }
        )*
    };
}

impl<'de> de::Deserializer<'de> for Probe {
    type Error = ProbeError;

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, ProbeError> {
        visitor.visit_map(StructFields {
            probe: self,
            fields: fields.iter(),
            current: None,
        })
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ProbeError> {
        // Look inside: an optional section would be walked like any other.
        visitor.visit_some(self)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, ProbeError> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, ProbeError> {
        self.leaf();
        let first = variants.first().copied().unwrap_or_default();
        visitor.visit_enum(IntoDeserializer::<ProbeError>::into_deserializer(first))
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, ProbeError> {
        self.leaf();
        visitor.visit_unit()
    }

    fn deserialize_tuple<V: Visitor<'de>>(
        self,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, ProbeError> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, ProbeError> {
        self.deserialize_seq(visitor)
    }

    leaf_with! {
        deserialize_any => |v| v.visit_unit();
        deserialize_bool => |v| v.visit_bool(false);
        deserialize_i8 => |v| v.visit_u64(0);
        deserialize_i16 => |v| v.visit_u64(0);
        deserialize_i32 => |v| v.visit_u64(0);
        deserialize_i64 => |v| v.visit_u64(0);
        deserialize_u8 => |v| v.visit_u64(0);
        deserialize_u16 => |v| v.visit_u64(0);
        deserialize_u32 => |v| v.visit_u64(0);
        deserialize_u64 => |v| v.visit_u64(0);
        deserialize_f32 => |v| v.visit_f64(0.0);
        deserialize_f64 => |v| v.visit_f64(0.0);
        deserialize_char => |v| v.visit_char('x');
        deserialize_str => |v| v.visit_str("");
        deserialize_string => |v| v.visit_str("");
        deserialize_bytes => |v| v.visit_bytes(b"");
        deserialize_byte_buf => |v| v.visit_bytes(b"");
        deserialize_unit => |v| v.visit_unit();
        deserialize_identifier => |v| v.visit_str("");
        deserialize_ignored_any => |v| v.visit_unit();
        deserialize_seq => |v| v.visit_seq(de::value::SeqDeserializer::<_, ProbeError>::new(
            std::iter::empty::<()>(),
        ));
        deserialize_map => |v| v.visit_map(de::value::MapDeserializer::<_, ProbeError>::new(
            std::iter::empty::<(String, String)>(),
        ));
    }
}

/// The fields of one struct as a map: each field name, then a probe one level down.
struct StructFields {
    probe: Probe,
    fields: std::slice::Iter<'static, &'static str>,
    current: Option<&'static str>,
}

impl<'de> MapAccess<'de> for StructFields {
    type Error = ProbeError;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, ProbeError> {
        let Some(&field) = self.fields.next() else {
            return Ok(None);
        };
        self.current = Some(field);
        seed.deserialize(IntoDeserializer::<ProbeError>::into_deserializer(field))
            .map(Some)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(
        &mut self,
        seed: V,
    ) -> Result<V::Value, ProbeError> {
        let mut path = self.probe.path.clone();
        path.push(self.current.expect("a value follows its key"));
        seed.deserialize(Probe {
            path,
            leaves: self.probe.leaves.clone(),
        })
    }
}

/// Every key `Settings` accepts, as `section.key`.
fn settings_keys() -> BTreeSet<String> {
    let leaves = Rc::new(RefCell::new(BTreeSet::new()));
    Settings::deserialize(Probe {
        path: Vec::new(),
        leaves: leaves.clone(),
    })
    .expect("the probe walks Settings");
    let keys = leaves.borrow().clone();
    keys
}

/// The defaults as `danmaku config` prints them: `section.key` → TOML value.
fn default_values() -> BTreeMap<String, String> {
    let text = Settings::default().to_toml();
    let root: toml::Table = text.parse().expect("to_toml() is TOML");
    let mut out = BTreeMap::new();
    for (section, table) in &root {
        let table = table
            .as_table()
            .unwrap_or_else(|| panic!("top-level {section} of to_toml() is a section"));
        for (key, value) in table {
            out.insert(format!("{section}.{key}"), value.to_string());
        }
    }
    out
}

/// The documented rows: `section.key` → the default cell, from table rows that
/// begin with a `section.key` in backticks.
fn documented_rows(doc: &str) -> BTreeMap<String, String> {
    let mut rows = BTreeMap::new();
    for line in doc.lines() {
        let Some(rest) = line.strip_prefix("| `") else {
            continue;
        };
        let Some((key, rest)) = rest.split_once('`') else {
            continue;
        };
        if !key.contains('.') || key.contains(' ') {
            continue;
        }
        // | `key` | type | default | meaning |
        let cells: Vec<&str> = rest.splitn(4, '|').collect();
        let default = cells.get(2).map(|c| c.trim()).unwrap_or_default();
        let previous = rows.insert(key.to_string(), default.to_string());
        assert!(previous.is_none(), "{key} has two rows in CONFIGURATION.md");
    }
    rows
}

fn configuration_doc() -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/CONFIGURATION.md");
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {path}: {e}"))
}

#[test]
fn the_probe_sees_every_key_to_toml_prints() {
    // A guard on the probe itself: whatever serialization prints, deserialization
    // must have named (else the probe missed a kind of field).
    let keys = settings_keys();
    let printed: Vec<String> = default_values()
        .into_keys()
        .filter(|k| !keys.contains(k))
        .collect();
    assert!(printed.is_empty(), "keys the probe missed: {printed:?}");
    // Sections are what DANMAKU_<SECTION>__<KEY> can address: two levels only.
    let deep: Vec<&String> = keys.iter().filter(|k| k.split('.').count() != 2).collect();
    assert!(
        deep.is_empty(),
        "keys that are not section.key (the environment cannot set them): {deep:?}"
    );
}

#[test]
fn every_settings_key_is_documented() {
    let doc = configuration_doc();
    let rows = documented_rows(&doc);
    let missing: Vec<String> = settings_keys()
        .into_iter()
        .filter(|k| !rows.contains_key(k))
        .collect();
    assert!(
        missing.is_empty(),
        "docs/CONFIGURATION.md has no row for these keys of Settings (core/src/config.rs); \
         add a row `| \\`section.key\\` | type | default | meaning |` for each: {missing:#?}"
    );
}

#[test]
fn every_documented_default_is_the_real_one() {
    let doc = configuration_doc();
    let rows = documented_rows(&doc);
    let mut wrong = Vec::new();
    for (key, value) in default_values() {
        let Some(cell) = rows.get(&key) else {
            continue; // every_settings_key_is_documented names it
        };
        if !cell.contains(&format!("`{value}`")) {
            wrong.push(format!("{key}: default `{value}`, row says {cell:?}"));
        }
    }
    assert!(
        wrong.is_empty(),
        "docs/CONFIGURATION.md shows defaults other than Settings::default().to_toml() \
         (the default column must contain the TOML value in backticks): {wrong:#?}"
    );
}

#[test]
fn no_documented_key_is_stale() {
    let doc = configuration_doc();
    let keys = settings_keys();
    let stale: Vec<String> = documented_rows(&doc)
        .into_keys()
        .filter(|k| !keys.contains(k))
        .collect();
    assert!(
        stale.is_empty(),
        "docs/CONFIGURATION.md documents keys Settings does not have: {stale:#?}"
    );
}
