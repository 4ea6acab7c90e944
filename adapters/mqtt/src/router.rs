//! Which bindings a message's topic reaches: exact topics by hash lookup, filters with
//! wildcards by matching level by level (MQTT 3.1.1 §4.7). A filter's `+` segments are
//! captured: in a discovering entry, the first names the device.

use std::collections::HashMap;
use std::sync::Arc;

/// Whether `filter` is a valid subscription filter (`+` and `#` only as whole levels,
/// `#` last), and how many `+` it has.
pub fn check_filter(filter: &str) -> Result<usize, String> {
    if filter.is_empty() {
        return Err("a topic is never empty".into());
    }
    if filter.contains('\0') {
        return Err("a topic holds no NUL character".into());
    }
    let levels: Vec<&str> = filter.split('/').collect();
    let mut plus = 0;
    for (i, l) in levels.iter().enumerate() {
        match *l {
            "+" => plus += 1,
            "#" if i + 1 == levels.len() => {}
            "#" => return Err("'#' may only be the last level".into()),
            l if l.contains('+') || l.contains('#') => {
                return Err(format!(
                    "wildcards fill whole levels: {l:?} mixes '+' or '#' with text"
                ))
            }
            _ => {}
        }
    }
    Ok(plus)
}

/// Whether `topic` matches `filter`; the text of the first `+` level if it has one.
pub fn matches<'t>(filter: &str, topic: &'t str) -> Option<Option<&'t str>> {
    // Topics starting with '$' are not matched by filters starting with a wildcard.
    if topic.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
        return None;
    }
    let mut captured = None;
    let mut t = topic.split('/');
    for f in filter.split('/') {
        match f {
            "#" => return Some(captured),
            "+" => {
                let level = t.next()?;
                captured.get_or_insert(level);
            }
            f => {
                if t.next()? != f {
                    return None;
                }
            }
        }
    }
    t.next().is_none().then_some(captured)
}

/// Bindings by the filter they listen on.
#[derive(Debug)]
pub struct Router<B> {
    exact: HashMap<String, Vec<Arc<B>>>,
    wild: Vec<(String, Vec<Arc<B>>)>,
}

impl<B> Default for Router<B> {
    fn default() -> Self {
        Router {
            exact: HashMap::new(),
            wild: Vec::new(),
        }
    }
}

impl<B> Router<B> {
    /// Adds `binding` on `filter`; true if the filter is new (to subscribe to).
    pub fn add(&mut self, filter: &str, binding: Arc<B>) -> bool {
        if filter.contains(['+', '#']) {
            match self.wild.iter_mut().find(|(f, _)| f == filter) {
                Some((_, v)) => {
                    v.push(binding);
                    false
                }
                None => {
                    self.wild.push((filter.to_owned(), vec![binding]));
                    true
                }
            }
        } else {
            let v = self.exact.entry(filter.to_owned()).or_default();
            v.push(binding);
            v.len() == 1
        }
    }

    /// Removes the bindings `gone` says; the filters left with none (to unsubscribe).
    pub fn remove(&mut self, gone: impl Fn(&B) -> bool) -> Vec<String> {
        let mut empty = Vec::new();
        self.exact.retain(|f, v| {
            v.retain(|b| !gone(b));
            if v.is_empty() {
                empty.push(f.clone());
            }
            !v.is_empty()
        });
        self.wild.retain_mut(|(f, v)| {
            v.retain(|b| !gone(b));
            if v.is_empty() {
                empty.push(f.clone());
            }
            !v.is_empty()
        });
        empty
    }

    /// Every filter listened on.
    pub fn filters(&self) -> Vec<String> {
        self.exact
            .keys()
            .cloned()
            .chain(self.wild.iter().map(|(f, _)| f.clone()))
            .collect()
    }

    /// The bindings `topic` reaches, each with the first `+` level its filter captured.
    pub fn route<'t>(&self, topic: &'t str, out: &mut Vec<(Arc<B>, Option<&'t str>)>) {
        if let Some(v) = self.exact.get(topic) {
            out.extend(v.iter().map(|b| (b.clone(), None)));
        }
        for (f, v) in &self.wild {
            if let Some(cap) = matches(f, topic) {
                out.extend(v.iter().map(|b| (b.clone(), cap)));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_match_level_by_level_and_capture_the_first_plus() {
        assert_eq!(matches("a/b", "a/b"), Some(None));
        assert_eq!(matches("a/b", "a/b/c"), None);
        assert_eq!(matches("a/+", "a/b"), Some(Some("b")));
        assert_eq!(matches("a/+", "a/b/c"), None);
        assert_eq!(matches("a/+/t", "a/x/t"), Some(Some("x")));
        assert_eq!(matches("a/+/t", "a/x/u"), None);
        assert_eq!(matches("a/#", "a"), Some(None));
        assert_eq!(matches("a/#", "a/b/c"), Some(None));
        assert_eq!(matches("+/#", "$SYS/x"), None);
        assert_eq!(matches("a/+", "a/"), Some(Some("")));
    }

    #[test]
    fn filters_are_checked() {
        assert_eq!(check_filter("zigbee2mqtt/+"), Ok(1));
        assert_eq!(check_filter("a/+/b/+"), Ok(2));
        assert!(check_filter("a/#/b").is_err());
        assert!(check_filter("a/b+").is_err());
        assert!(check_filter("").is_err());
    }

    #[test]
    fn bindings_are_routed_and_removed() {
        let mut r: Router<u32> = Router::default();
        assert!(r.add("a/b", Arc::new(1)));
        assert!(!r.add("a/b", Arc::new(2)));
        assert!(r.add("a/+", Arc::new(3)));
        let mut out = Vec::new();
        r.route("a/b", &mut out);
        let got: Vec<(u32, Option<&str>)> = out.iter().map(|(b, c)| (**b, *c)).collect();
        assert_eq!(got, [(1, None), (2, None), (3, Some("b"))]);
        assert_eq!(r.remove(|b| *b == 1), Vec::<String>::new());
        let mut gone = r.remove(|b| *b >= 2);
        gone.sort();
        assert_eq!(gone, ["a/+", "a/b"]);
        assert!(r.filters().is_empty());
    }
}
