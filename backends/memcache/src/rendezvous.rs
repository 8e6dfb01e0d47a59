//! Rendezvous (highest-random-weight) hashing: which memcached server holds a key.
//!
//! Every node of a cluster must agree on where a key lives, whatever order its config
//! lists the servers in and whichever Rust version built it, so the hash here is
//! spelled out (FNV-1a folded through a 64-bit finalizer) rather than borrowed from
//! `std`, whose hasher may change between releases.

/// Picks, for each key, the server whose `(server, key)` score is highest.
///
/// The choice depends only on the set of server names, never on their order, and
/// adding a server moves only the keys the new server wins (about `1/n` of them);
/// removing one moves only the keys it held.
#[derive(Debug, Clone)]
pub(crate) struct Rendezvous {
    /// One seed per server, derived from its name, in the order given to [`Self::new`].
    seeds: Vec<u64>,
    /// The names, to break ties between equal seeds independently of order.
    names: Vec<String>,
}

impl Rendezvous {
    /// A selector over servers named `names` (e.g. "10.0.0.1:11211").
    pub(crate) fn new<'a>(names: impl IntoIterator<Item = &'a str>) -> Self {
        let names: Vec<String> = names.into_iter().map(str::to_owned).collect();
        let seeds = names
            .iter()
            .map(|name| fmix64(fnv1a(name.as_bytes())))
            .collect();
        Self { seeds, names }
    }

    /// The index (in the order given to [`Self::new`]) of the server holding `key`.
    /// There must be at least one server; with none, 0 is answered.
    pub(crate) fn pick(&self, key: &str) -> usize {
        let key_hash = fmix64(fnv1a(key.as_bytes()));
        let mut best: Option<(u64, usize)> = None;
        for (index, seed) in self.seeds.iter().enumerate() {
            let score = fmix64(seed ^ key_hash);
            let better = match best {
                None => true,
                Some((best_score, best_index)) => {
                    score > best_score
                        || (score == best_score && self.names[index] > self.names[best_index])
                }
            };
            if better {
                best = Some((score, index));
            }
        }
        best.map_or(0, |(_, index)| index)
    }
}

/// 64-bit FNV-1a: a fixed, portable hash of bytes.
fn fnv1a(bytes: &[u8]) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    bytes.iter().fold(OFFSET, |hash, &byte| {
        (hash ^ u64::from(byte)).wrapping_mul(PRIME)
    })
}

/// MurmurHash3's 64-bit finalizer: a bijection that spreads every input bit over the
/// whole output, so nearby inputs get unrelated scores.
fn fmix64(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^= h >> 33;
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEYS: usize = 20_000;

    fn keys() -> impl Iterator<Item = String> {
        (0..KEYS).map(|i| format!("sp1:d:{i:032x}"))
    }

    fn owner<'a>(ring: &'a Rendezvous, key: &str) -> &'a str {
        &ring.names[ring.pick(key)]
    }

    #[test]
    fn fnv1a_matches_the_published_vectors() {
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a(b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn owner_does_not_depend_on_server_order() {
        let forward = Rendezvous::new(["a:11211", "b:11211", "c:11211"]);
        let shuffled = Rendezvous::new(["c:11211", "a:11211", "b:11211"]);
        for key in keys() {
            assert_eq!(owner(&forward, &key), owner(&shuffled, &key), "key {key}");
        }
    }

    #[test]
    fn keys_spread_evenly_over_servers() {
        let names = ["10.0.0.1:11211", "10.0.0.2:11211", "10.0.0.3:11211"];
        let ring = Rendezvous::new(names);
        let mut counts = [0usize; 3];
        for key in keys() {
            counts[ring.pick(&key)] += 1;
        }
        for count in counts {
            // A fair share is a third; allow a few percent of noise.
            assert!(
                (KEYS * 30 / 100..=KEYS * 37 / 100).contains(&count),
                "uneven spread {counts:?}"
            );
        }
    }

    #[test]
    fn adding_a_server_moves_only_its_share_of_keys_and_only_to_it() {
        let before = Rendezvous::new(["10.0.0.1:11211", "10.0.0.2:11211", "10.0.0.3:11211"]);
        let after = Rendezvous::new([
            "10.0.0.1:11211",
            "10.0.0.4:11211",
            "10.0.0.2:11211",
            "10.0.0.3:11211",
        ]);
        let mut moved = 0;
        for key in keys() {
            let (old, new) = (owner(&before, &key), owner(&after, &key));
            if old != new {
                assert_eq!(new, "10.0.0.4:11211", "key {key} moved between old servers");
                moved += 1;
            }
        }
        // The new server takes about a quarter; plain modulo hashing would move ~75%.
        assert!(
            (KEYS * 20 / 100..=KEYS * 30 / 100).contains(&moved),
            "{moved} of {KEYS} keys moved"
        );
    }

    #[test]
    fn removing_a_server_moves_only_its_keys() {
        let before = Rendezvous::new(["a:1", "b:1", "c:1", "d:1"]);
        let after = Rendezvous::new(["a:1", "b:1", "d:1"]);
        for key in keys() {
            let old = owner(&before, &key);
            if old != "c:1" {
                assert_eq!(owner(&after, &key), old, "key {key}");
            }
        }
    }

    #[test]
    fn a_single_server_owns_every_key() {
        let ring = Rendezvous::new(["only:11211"]);
        assert!(keys().all(|key| ring.pick(&key) == 0));
    }
}
