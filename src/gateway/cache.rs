//! A device's last reading of each field, kept in catalogue order.
//!
//! A map keyed by field name costs a hash table entry per field (the name, the reading,
//! and the table's spare capacity): about 180 bytes for each of a large register map's
//! thousands of fields. A slot per catalogue position costs the reading alone, plus four
//! bytes of a name index for lookups by name.

use std::sync::Arc;

use fieldgate_api::{FieldSpec, Reading};

/// The last reading of each field of one device.
pub(super) struct Cache {
    /// The catalogue the slots follow.
    specs: Arc<[FieldSpec]>,
    /// Catalogue positions ordered by field name.
    by_name: Box<[u32]>,
    /// The last reading of the field at the same catalogue position.
    slots: Box<[Option<Reading>]>,
    /// Where the next reading is likely to go: adapters report a poll cycle's values in
    /// catalogue order, so most readings find their slot without a search.
    next: usize,
}

impl Cache {
    /// An empty cache for the fields of `specs`.
    pub(super) fn new(specs: Arc<[FieldSpec]>) -> Self {
        let mut by_name: Vec<u32> = (0..specs.len() as u32).collect();
        by_name.sort_unstable_by(|a, b| specs[*a as usize].name.cmp(&specs[*b as usize].name));
        let slots = std::iter::repeat_with(|| None).take(specs.len()).collect();
        Cache {
            specs,
            by_name: by_name.into(),
            slots,
            next: 0,
        }
    }

    /// The catalogue position of field `name`.
    fn position(&self, name: &str) -> Option<usize> {
        let spec = |i: &u32| &*self.specs[*i as usize].name;
        self.by_name
            .binary_search_by(|i| spec(i).cmp(name))
            .ok()
            .map(|k| self.by_name[k] as usize)
    }

    /// The last reading of field `name`.
    /// Whether the catalogue has a field `name` (whether or not it was read yet).
    pub(super) fn knows(&self, name: &str) -> bool {
        self.position(name).is_some()
    }

    pub(super) fn get(&self, name: &str) -> Option<&Reading> {
        self.slots[self.position(name)?].as_ref()
    }

    /// Forgets the last reading of field `name`.
    pub(super) fn remove(&mut self, name: &str) -> Option<Reading> {
        let i = self.position(name)?;
        self.slots[i].take()
    }

    /// Keeps `r` as its field's last reading; a field not in the catalogue is ignored
    /// (nothing could ask for it).
    pub(super) fn insert(&mut self, r: Reading) {
        let i = match self.specs.get(self.next) {
            Some(s) if *s.name == *r.field => self.next,
            _ => match self.position(&r.field) {
                Some(i) => i,
                None => return,
            },
        };
        self.next = i + 1;
        self.slots[i] = Some(r);
    }

    /// Every field of the catalogue with its last reading, in catalogue order.
    pub(super) fn iter(&self) -> impl Iterator<Item = (&FieldSpec, Option<&Reading>)> {
        self.specs.iter().zip(self.slots.iter().map(Option::as_ref))
    }
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use fieldgate_api::{FieldType, Value};

    use super::*;

    fn cache(names: &[&str]) -> Cache {
        let specs: Vec<FieldSpec> = names
            .iter()
            .map(|n| FieldSpec::new(*n, FieldType::Int))
            .collect();
        Cache::new(specs.into())
    }

    fn reading(name: &str, v: i32) -> Reading {
        Reading::new(name, Value::Int(v), SystemTime::now())
    }

    #[test]
    fn readings_are_found_by_name_in_any_order() {
        let mut c = cache(&["temp", "b", "a", "zeta", "pressure"]);
        assert!(c.get("temp").is_none());
        for (i, n) in ["temp", "b", "a", "zeta", "pressure"].iter().enumerate() {
            c.insert(reading(n, i as i32));
        }
        c.insert(reading("a", 10));
        c.insert(reading("pressure", 11));
        c.insert(reading("temp", 12));
        let v = |n: &str| c.get(n).map(|r| r.value.clone());
        assert_eq!(v("temp"), Some(Value::Int(12)));
        assert_eq!(v("b"), Some(Value::Int(1)));
        assert_eq!(v("a"), Some(Value::Int(10)));
        assert_eq!(v("zeta"), Some(Value::Int(3)));
        assert_eq!(v("pressure"), Some(Value::Int(11)));
        assert_eq!(v("nope"), None);
        assert_eq!(&*c.get("zeta").unwrap().field, "zeta");
    }

    #[test]
    fn unknown_fields_are_ignored_and_removal_forgets() {
        let mut c = cache(&["a", "b"]);
        c.insert(reading("x", 1));
        c.insert(reading("b", 2));
        assert!(c.get("x").is_none());
        assert_eq!(c.remove("b").map(|r| r.value), Some(Value::Int(2)));
        assert!(c.get("b").is_none());
        assert!(c.remove("b").is_none());
        assert!(c.remove("x").is_none());
        c.insert(reading("a", 3));
        let known: Vec<_> = c
            .iter()
            .map(|(s, r)| (&*s.name, r.map(|r| r.value.clone())))
            .collect();
        assert_eq!(known, [("a", Some(Value::Int(3))), ("b", None)]);
    }
}
