//! A rollout's reboot slots: a counting semaphore kept in the realm's
//! bucket [`crate::rollout::BUCKET`] under `slots.<group>` (a rollout's
//! group is its id, so a new rollout starts with every slot free), the nodes that
//! hold one listed by name. A node takes a slot before it reboots into a
//! new version and gives it back once that version runs well (the
//! rollout's `max_unavailable` is the number of slots). Taken and given
//! back by compare-and-set on the key's revision, checked by JetStream: two
//! nodes reading the last free slot at once cannot both take it — the
//! second write fails, reads again, and finds none. The same slots answer
//! the FleetLock protocol's `pre-reboot` and `steady-state`.

use serde::{Deserialize, Serialize};

/// The group a rollout's nodes share (FleetLock's default group name).
pub const DEFAULT_GROUP: &str = "default";
/// How many times a write that lost a race is tried again before giving up
/// (each try reads anew; losing this often means many writers at once).
const TRIES: usize = 20;

/// The key of `group`'s slots.
pub fn key(group: &str) -> String {
    format!("slots.{group}")
}

/// Who holds the slots of a group.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Slots {
    /// How many there were at the last change (for reading; each taker
    /// says how many there are).
    pub max: u32,
    pub holders: Vec<String>,
}

/// What asking for a slot gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Taken {
    /// `id` holds one (it may have held it already).
    Yes,
    /// All are taken, by these.
    Full(Vec<String>),
}

/// The slots after `id` asks for one of `max`: `Ok(None)` when it holds one
/// already (nothing to write), `Err(holders)` when none is free.
fn take(slots: &Slots, id: &str, max: u32) -> Result<Option<Slots>, Vec<String>> {
    if slots.holders.iter().any(|h| h == id) {
        return Ok(None);
    }
    if slots.holders.len() >= usize::try_from(max.max(1)).unwrap_or(usize::MAX) {
        return Err(slots.holders.clone());
    }
    let mut holders = slots.holders.clone();
    holders.push(id.to_string());
    Ok(Some(Slots {
        max: max.max(1),
        holders,
    }))
}

/// The slots after `id` gives its back (`None`: it held none).
fn give_back(slots: &Slots, id: &str) -> Option<Slots> {
    slots.holders.iter().any(|h| h == id).then(|| Slots {
        max: slots.max,
        holders: slots.holders.iter().filter(|h| *h != id).cloned().collect(),
    })
}

/// A key read and written by compare-and-set (the realm's bucket; a map in
/// tests).
pub trait Store {
    /// The value and its revision (`None` and 0 when it has none).
    fn read(&self) -> Result<(Option<Vec<u8>>, u64), String>;
    /// Write `value` if the revision is still `revision`; `Ok(false)` when
    /// another writer came first.
    fn swap(&self, value: &[u8], revision: u64) -> Result<bool, String>;
}

/// The realm bucket's key `key`, through a mesh client.
pub struct InBucket<'a> {
    pub client: &'a maculaos_mesh::client::Client,
    pub realm: &'a str,
    pub bucket: &'a str,
    pub key: String,
}

impl Store for InBucket<'_> {
    fn read(&self) -> Result<(Option<Vec<u8>>, u64), String> {
        let v = self
            .client
            .kv_get(self.realm, self.bucket, &self.key)
            .map_err(|e| e.to_string())?;
        Ok(match v {
            Some(v) if !v.value.is_empty() => (Some(v.value.into_bytes()), v.revision),
            Some(v) => (None, v.revision),
            None => (None, 0),
        })
    }

    fn swap(&self, value: &[u8], revision: u64) -> Result<bool, String> {
        self.client
            .kv_swap(self.realm, self.bucket, &self.key, value, revision)
            .map(|r| r.is_some())
            .map_err(|e| e.to_string())
    }
}

/// Read the slots; an unreadable value is an error naming the key.
pub fn read(store: &dyn Store) -> Result<(Slots, u64), String> {
    let (value, revision) = store.read()?;
    let slots = match value {
        Some(v) => serde_json::from_slice(&v)
            .map_err(|e| {
            format!("the rollout's slots are unreadable ({e}): start a new rollout, which has slots of its own")
        })?,
        None => Slots::default(),
    };
    Ok((slots, revision))
}

/// Read, change with `f` (`None`: nothing to write), write back if nobody
/// wrote in between, else again. Returns the slots as they are then.
fn change(store: &dyn Store, mut f: impl FnMut(&Slots) -> Option<Slots>) -> Result<Slots, String> {
    for _ in 0..TRIES {
        let (slots, revision) = read(store)?;
        let Some(new) = f(&slots) else {
            return Ok(slots);
        };
        let text = serde_json::to_vec(&new).map_err(|e| e.to_string())?;
        if store.swap(&text, revision)? {
            return Ok(new);
        }
    }
    Err(format!(
        "the rollout's slots changed {TRIES} times while this node tried to change them: try again"
    ))
}

/// Ask for one of `max` slots for `id` (FleetLock's `pre-reboot`).
pub fn acquire(store: &dyn Store, id: &str, max: u32) -> Result<Taken, String> {
    let mut full = None;
    let slots = change(store, |s| match take(s, id, max) {
        Ok(new) => new,
        Err(holders) => {
            full = Some(holders);
            None
        }
    })?;
    Ok(match full {
        Some(holders) if !slots.holders.iter().any(|h| h == id) => Taken::Full(holders),
        _ => Taken::Yes,
    })
}

/// Give `id`'s slot back (FleetLock's `steady-state`); fine when it held none.
pub fn release(store: &dyn Store, id: &str) -> Result<(), String> {
    change(store, |s| give_back(s, id)).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::{Cell, RefCell};

    /// A key in memory; `race` writers slip in before the next swaps.
    #[derive(Default)]
    struct Mem {
        value: RefCell<(Option<Vec<u8>>, u64)>,
        race: RefCell<Vec<Slots>>,
        swaps: Cell<usize>,
    }

    impl Store for Mem {
        fn read(&self) -> Result<(Option<Vec<u8>>, u64), String> {
            Ok(self.value.borrow().clone())
        }
        fn swap(&self, value: &[u8], revision: u64) -> Result<bool, String> {
            self.swaps.set(self.swaps.get() + 1);
            if let Some(other) = self.race.borrow_mut().pop() {
                let mut v = self.value.borrow_mut();
                *v = (Some(serde_json::to_vec(&other).unwrap()), v.1 + 1);
            }
            let mut v = self.value.borrow_mut();
            if v.1 != revision {
                return Ok(false);
            }
            *v = (Some(value.to_vec()), v.1 + 1);
            Ok(true)
        }
    }

    fn holders(m: &Mem) -> Vec<String> {
        read(m).unwrap().0.holders
    }

    #[test]
    fn one_slot_goes_to_one_node_at_a_time() {
        let m = Mem::default();
        assert_eq!(acquire(&m, "n1", 1).unwrap(), Taken::Yes);
        // Asking again while holding it is fine, and writes nothing.
        let swaps = m.swaps.get();
        assert_eq!(acquire(&m, "n1", 1).unwrap(), Taken::Yes);
        assert_eq!(m.swaps.get(), swaps);
        assert_eq!(
            acquire(&m, "n2", 1).unwrap(),
            Taken::Full(vec!["n1".into()])
        );
        release(&m, "n1").unwrap();
        assert_eq!(acquire(&m, "n2", 1).unwrap(), Taken::Yes);
        assert_eq!(holders(&m), ["n2"]);
        // Giving back a slot it does not hold changes nothing.
        release(&m, "n1").unwrap();
        assert_eq!(holders(&m), ["n2"]);
        assert_eq!(acquire(&m, "n3", 2).unwrap(), Taken::Yes);
        assert_eq!(holders(&m), ["n2", "n3"]);
    }

    #[test]
    fn a_node_that_loses_the_race_for_the_last_slot_does_not_get_it() {
        let m = Mem::default();
        // n2 takes the only slot between n1's read and n1's write.
        m.race.borrow_mut().push(Slots {
            max: 1,
            holders: vec!["n2".into()],
        });
        assert_eq!(
            acquire(&m, "n1", 1).unwrap(),
            Taken::Full(vec!["n2".into()])
        );
        assert_eq!(holders(&m), ["n2"]);
        // With two slots, n1 reads again and takes the other one.
        m.race.borrow_mut().push(Slots {
            max: 2,
            holders: vec!["n2".into(), "n3".into()],
        });
        release(&m, "n2").unwrap();
        assert_eq!(holders(&m), ["n3"]);
        assert_eq!(acquire(&m, "n1", 2).unwrap(), Taken::Yes);
        assert_eq!(holders(&m), ["n3", "n1"]);
    }

    #[test]
    fn unreadable_slots_are_an_error_that_says_what_to_do() {
        let m = Mem::default();
        *m.value.borrow_mut() = (Some(b"{not json".to_vec()), 4);
        let e = acquire(&m, "n1", 1).unwrap_err();
        assert!(e.contains("start a new rollout"), "{e}");
    }

    #[test]
    fn a_node_that_always_loses_the_race_gives_up_and_says_so() {
        let m = Mem::default();
        m.race.borrow_mut().extend((0..TRIES).map(|i| Slots {
            max: 9,
            holders: vec![format!("other{i}")],
        }));
        let e = acquire(&m, "n1", 9).unwrap_err();
        assert!(
            e.contains("changed 20 times") && e.contains("try again"),
            "{e}"
        );
        assert_eq!(m.swaps.get(), TRIES);
    }
}
