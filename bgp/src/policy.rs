//! Import and export policy: ordered rules of match conditions and
//! attribute changes, first match wins.

use crate::attrs::PathAttrs;
use ipnet::IpNet;

/// A prefix-list entry: `prefix` covers the route and its length is in
/// `ge..=le` (both default to the entry's own length, i.e. exact match).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrefixEntry {
    pub prefix: IpNet,
    pub ge: Option<u8>,
    pub le: Option<u8>,
}

impl PrefixEntry {
    pub fn matches(&self, p: IpNet) -> bool {
        let len = p.prefix_len();
        let ge = self.ge.unwrap_or(self.prefix.prefix_len());
        let le = self.le.unwrap_or(if self.ge.is_some() {
            p.max_prefix_len()
        } else {
            self.prefix.prefix_len()
        });
        self.prefix.contains(&p) && (ge..=le).contains(&len)
    }
}

/// All conditions set must hold.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Match {
    /// Route matches any entry.
    pub prefix_list: Option<Vec<PrefixEntry>>,
    pub community: Option<u32>,
    pub large_community: Option<[u32; 3]>,
}

impl Match {
    fn matches(&self, p: IpNet, a: &PathAttrs) -> bool {
        self.prefix_list
            .as_ref()
            .is_none_or(|l| l.iter().any(|e| e.matches(p)))
            && self.community.is_none_or(|c| a.communities.contains(&c))
            && self
                .large_community
                .is_none_or(|c| a.large_communities.contains(&c))
    }
}

/// Attribute changes applied on accept.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Set {
    pub local_pref: Option<u32>,
    pub med: Option<u32>,
    /// (AS, times).
    pub prepend: Option<(u32, u8)>,
    pub add_communities: Vec<u32>,
    pub remove_communities: Vec<u32>,
    pub add_large_communities: Vec<[u32; 3]>,
    pub remove_large_communities: Vec<[u32; 3]>,
}

impl Set {
    fn is_empty(&self) -> bool {
        *self == Set::default()
    }

    fn apply(&self, a: &mut PathAttrs) {
        if let Some(lp) = self.local_pref {
            a.local_pref = Some(lp);
        }
        if let Some(m) = self.med {
            a.med = Some(m);
        }
        if let Some((asn, n)) = self.prepend {
            a.as_path.prepend(asn, n.into());
        }
        a.communities
            .retain(|c| !self.remove_communities.contains(c));
        for c in &self.add_communities {
            if !a.communities.contains(c) {
                a.communities.push(*c);
            }
        }
        a.large_communities
            .retain(|c| !self.remove_large_communities.contains(c));
        for c in &self.add_large_communities {
            if !a.large_communities.contains(c) {
                a.large_communities.push(*c);
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Accept(Set),
    Reject,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub when: Match,
    pub then: Verdict,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub rules: Vec<Rule>,
    /// What happens when no rule matches.
    pub default_accept: bool,
}

/// The result of applying a policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Reject,
    /// Accepted as is (lets the caller keep the shared attribute set).
    Unchanged,
    Changed(Box<PathAttrs>),
}

impl Policy {
    pub fn accept_all() -> Self {
        Self {
            rules: Vec::new(),
            default_accept: true,
        }
    }

    pub fn apply(&self, prefix: IpNet, attrs: &PathAttrs) -> Outcome {
        for r in &self.rules {
            if r.when.matches(prefix, attrs) {
                return match &r.then {
                    Verdict::Reject => Outcome::Reject,
                    Verdict::Accept(s) if s.is_empty() => Outcome::Unchanged,
                    Verdict::Accept(s) => {
                        let mut a = attrs.clone();
                        s.apply(&mut a);
                        Outcome::Changed(Box::new(a))
                    }
                };
            }
        }
        if self.default_accept {
            Outcome::Unchanged
        } else {
            Outcome::Reject
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attrs::{AsPath, Origin};

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    #[test]
    fn prefix_list_ge_le() {
        let e = PrefixEntry {
            prefix: net("198.51.100.0/24"),
            ge: Some(25),
            le: Some(32),
        };
        assert!(e.matches(net("198.51.100.7/32")));
        assert!(!e.matches(net("198.51.100.0/24")));
        assert!(!e.matches(net("203.0.113.0/25")));
        let exact = PrefixEntry {
            prefix: net("198.51.100.0/24"),
            ge: None,
            le: None,
        };
        assert!(exact.matches(net("198.51.100.0/24")));
        assert!(!exact.matches(net("198.51.100.0/25")));
    }

    #[test]
    fn first_match_sets_attributes() {
        let mut a = PathAttrs::new(Origin::Igp, AsPath::from_sequence(vec![65001]), None);
        a.communities = vec![1, 2];
        let p = Policy {
            rules: vec![
                Rule {
                    when: Match {
                        community: Some(9),
                        ..Default::default()
                    },
                    then: Verdict::Reject,
                },
                Rule {
                    when: Match {
                        community: Some(2),
                        ..Default::default()
                    },
                    then: Verdict::Accept(Set {
                        local_pref: Some(200),
                        med: Some(7),
                        prepend: Some((65000, 2)),
                        add_communities: vec![3],
                        remove_communities: vec![1],
                        add_large_communities: vec![[1, 2, 3]],
                        ..Default::default()
                    }),
                },
            ],
            default_accept: false,
        };
        let Outcome::Changed(b) = p.apply(net("198.51.100.0/24"), &a) else {
            panic!("not changed")
        };
        assert_eq!(b.local_pref, Some(200));
        assert_eq!(b.med, Some(7));
        assert_eq!(b.as_path.path_len(), 3);
        assert_eq!(b.communities, vec![2, 3]);
        assert_eq!(b.large_communities, vec![[1, 2, 3]]);
        a.communities = vec![5];
        assert_eq!(p.apply(net("198.51.100.0/24"), &a), Outcome::Reject);
    }
}
