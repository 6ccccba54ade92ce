//! Rule sources: what one policy rule allows, kept current by delta.
//!
//! A source is a (peers, ports) definition: the peers of a policy rule, as registered
//! selectors and ipBlocks, crossed with its ports (resolved against the selected pod for
//! ingress named ports; kept by name for egress named ports, which resolve against each
//! destination pod). Policies whose rules have the same definition share one source, such as
//! every namespace's "backends everywhere" egress rule. Its rules are the static ones (blocks,
//! or everything) plus each pod's *contribution*: the pod's addresses if a selector peer
//! selects it, and its named ports if it is covered. A pod change patches only the sources
//! whose selectors it joined or left (or whose selectors hold it, when its addresses or named
//! ports changed), by taking its old contribution out and its new one in. Counts per rule keep
//! overlapping contributions (two pods on one address, a pod inside a block) right.
//!
//! Each content gets a fresh [`RuleSet`] with a new id; ACLs hold the set, so a patched source
//! tells its users (the local pods whose ACLs name it) to take the new one.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use ipnet::IpNet;

use super::selectors::{SelectorId, Selectors};
use super::world::World;
use crate::acl::{PortRange, RuleSet, RuleSpec};
use crate::model::{Pod, PodKey, Protocol};

/// Identity of a source; never reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(super) struct SourceId(u32);

/// One entry of a rule's peer list.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(super) enum PeerDef {
    /// The pods a registered selector selects.
    Pods(SelectorId),
    /// An ipBlock, exceptions already subtracted.
    Block(Vec<IpNet>),
}

/// An egress named port: resolved against each destination pod's container ports.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(super) struct NamedPortDef {
    pub(super) protocol: Protocol,
    pub(super) number: u8,
    pub(super) name: String,
}

/// What a source is. Equal definitions are one source.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) struct SourceDef {
    /// `None`: every peer. Sorted, without duplicates; invalid peers left out (they match
    /// nothing, and an empty list stays a list: no peer).
    pub(super) peers: Option<Vec<PeerDef>>,
    /// (protocol, ports) pairs every peer address gets, sorted, without duplicates.
    pub(super) ports: Vec<(Option<u8>, PortRange)>,
    /// Named ports resolved per destination pod (egress), sorted, without duplicates.
    pub(super) named: Vec<NamedPortDef>,
}

impl SourceDef {
    /// Whether any pod might be covered through an ipBlock or "every peer" and contribute its
    /// named ports: such sources depend on every pod that declares one of those names.
    fn is_wide(&self) -> bool {
        !self.named.is_empty()
            && self
                .peers
                .as_ref()
                .is_none_or(|ps| ps.iter().any(|p| matches!(p, PeerDef::Block(_))))
    }

    fn selectors(&self) -> impl Iterator<Item = SelectorId> + '_ {
        self.peers.iter().flatten().filter_map(|p| match p {
            PeerDef::Pods(id) => Some(*id),
            PeerDef::Block(_) => None,
        })
    }

    /// Rules that come from no pod: the blocks (or everything) crossed with the ports.
    fn static_rules(&self, out: &mut Vec<RuleSpec>) {
        let everything = [IpNet::V4(Default::default()), IpNet::V6(Default::default())];
        let prefixes: Vec<IpNet> = match &self.peers {
            None => everything.to_vec(),
            Some(peers) => peers
                .iter()
                .flat_map(|p| match p {
                    PeerDef::Block(parts) => parts.as_slice(),
                    PeerDef::Pods(_) => &[],
                })
                .copied()
                .collect(),
        };
        cross(&prefixes, &self.ports, out);
    }

    /// The rules pod `pod` brings when it is a member of the selectors in `member`: its
    /// addresses crossed with the ports if a selector peer selects it, and for each named port
    /// it declares, each of its addresses the peers cover. Sorted, without duplicates.
    fn contribution(&self, pod: &Pod, member: &BTreeSet<SelectorId>, out: &mut Vec<RuleSpec>) {
        out.clear();
        let selected = self.selectors().any(|id| member.contains(&id));
        if selected {
            for ip in &pod.ips {
                cross(&[IpNet::from(*ip)], &self.ports, out);
            }
        }
        for named in &self.named {
            let numbers = pod
                .named_ports
                .iter()
                .filter(|np| np.name == named.name && np.protocol == named.protocol)
                .map(|np| np.port);
            for port in numbers {
                for ip in &pod.ips {
                    let covered = match &self.peers {
                        None => true,
                        Some(peers) => {
                            selected
                                || peers.iter().any(|p| match p {
                                    PeerDef::Block(parts) => parts.iter().any(|b| b.contains(ip)),
                                    PeerDef::Pods(_) => false,
                                })
                        }
                    };
                    if covered {
                        out.push(RuleSpec {
                            peer: IpNet::from(*ip),
                            protocol: Some(named.number),
                            ports: PortRange::single(port),
                        });
                    }
                }
            }
        }
        out.sort_unstable();
        out.dedup();
    }

    /// Whether `pod` declares a port by one of this source's names.
    fn names_port_of(&self, pod: &Pod) -> bool {
        self.named
            .iter()
            .any(|n| pod.named_ports.iter().any(|np| np.name == n.name))
    }
}

fn cross(prefixes: &[IpNet], ports: &[(Option<u8>, PortRange)], out: &mut Vec<RuleSpec>) {
    for peer in prefixes {
        out.extend(ports.iter().map(|(protocol, ports)| RuleSpec {
            peer: *peer,
            protocol: *protocol,
            ports: *ports,
        }));
    }
}

#[derive(Debug)]
struct Source {
    def: SourceDef,
    /// Local pods whose ACLs name this source, with how many times.
    users: BTreeMap<PodKey, usize>,
    /// How many contributions (the static rules count as one) bring each rule.
    counts: HashMap<RuleSpec, u32>,
    rules: Arc<RuleSet>,
}

/// Rules that appeared and vanished in one source since the last [`Sources::commit`].
#[derive(Debug, Default)]
struct Delta {
    appeared: BTreeSet<RuleSpec>,
    vanished: BTreeSet<RuleSpec>,
}

#[derive(Debug, Default)]
pub(super) struct Sources {
    by_id: BTreeMap<SourceId, Source>,
    by_def: HashMap<SourceDef, SourceId>,
    /// Sources whose named ports may resolve against any pod ([`SourceDef::is_wide`]).
    wide: BTreeSet<SourceId>,
    pending: BTreeMap<SourceId, Delta>,
    next: u32,
    /// Scratch space for contributions.
    scratch: (Vec<RuleSpec>, Vec<RuleSpec>),
}

impl Sources {
    /// The source for `def`, with `user` counted as one more user; built from `world` and the
    /// selectors' members if it is new.
    pub(super) fn acquire(
        &mut self,
        def: &SourceDef,
        user: &PodKey,
        world: &World,
        selectors: &mut Selectors,
    ) -> SourceId {
        if let Some(id) = self.by_def.get(def).copied() {
            if let Some(s) = self.by_id.get_mut(&id) {
                *s.users.entry(user.clone()).or_default() += 1;
            }
            return id;
        }
        let id = SourceId(self.next);
        self.next = self.next.wrapping_add(1);

        let mut candidates: Vec<&PodKey> = def
            .selectors()
            .flat_map(|sel| selectors.members(sel))
            .collect();
        if def.is_wide() {
            for named in &def.named {
                candidates.extend(world.pods_with_port_name(&named.name));
            }
        }
        candidates.sort_unstable();
        candidates.dedup();
        let mut counts: HashMap<RuleSpec, u32> = HashMap::new();
        let mut fixed = Vec::new();
        def.static_rules(&mut fixed);
        fixed.sort_unstable();
        fixed.dedup();
        let mut contribution = Vec::new();
        let no_memberships = BTreeSet::new();
        for key in candidates {
            let Some(pod) = world.pods.get(key) else {
                continue;
            };
            let member = selectors.of_pod(key).unwrap_or(&no_memberships);
            def.contribution(pod, member, &mut contribution);
            for rule in &contribution {
                *counts.entry(*rule).or_default() += 1;
            }
        }
        for rule in fixed {
            *counts.entry(rule).or_default() += 1;
        }
        let mut rules: Vec<RuleSpec> = counts.keys().copied().collect();
        rules.sort_unstable();

        for sel in def.selectors() {
            selectors.link_source(sel, id);
        }
        if def.is_wide() {
            self.wide.insert(id);
        }
        let rules = Arc::new(RuleSet::new(rules));
        self.by_def.insert(def.clone(), id);
        self.by_id.insert(
            id,
            Source {
                def: def.clone(),
                users: BTreeMap::from([(user.clone(), 1)]),
                counts,
                rules,
            },
        );
        id
    }

    /// Lets go of one use by `user`; the source goes when its last user does.
    pub(super) fn release(&mut self, id: SourceId, user: &PodKey, selectors: &mut Selectors) {
        let Some(s) = self.by_id.get_mut(&id) else {
            return;
        };
        if let Some(n) = s.users.get_mut(user) {
            *n -= 1;
            if *n == 0 {
                s.users.remove(user);
            }
        }
        if !s.users.is_empty() {
            return;
        }
        if let Some(s) = self.by_id.remove(&id) {
            self.by_def.remove(&s.def);
            self.wide.remove(&id);
            self.pending.remove(&id);
            for sel in s.def.selectors() {
                selectors.unlink_source(sel, id);
            }
        }
    }

    /// The current rules of source `id`.
    pub(super) fn rules(&self, id: SourceId) -> Option<&Arc<RuleSet>> {
        self.by_id.get(&id).map(|s| &s.rules)
    }

    /// Local pods whose ACLs name source `id`.
    pub(super) fn users(&self, id: SourceId) -> impl Iterator<Item = &PodKey> {
        self.by_id.get(&id).into_iter().flat_map(|s| s.users.keys())
    }

    /// Takes a pod change into the sources it can affect: its contribution as `old` (members
    /// of `before`) comes out, as `new` (members of `after`) goes in. `data_changed` says
    /// whether its addresses or named ports changed (or it came or went); if not, only the
    /// sources of selectors it joined or left can differ. Call [`Self::commit`] after the
    /// last change of an update.
    pub(super) fn pod_changed(
        &mut self,
        old: Option<&Pod>,
        new: Option<&Pod>,
        before: &BTreeSet<SelectorId>,
        after: &BTreeSet<SelectorId>,
        data_changed: bool,
        selectors: &Selectors,
    ) {
        let mut ids: BTreeSet<SourceId> = before
            .symmetric_difference(after)
            .flat_map(|sel| selectors.sources(*sel))
            .collect();
        if data_changed {
            ids.extend(before.union(after).flat_map(|sel| selectors.sources(*sel)));
            for id in &self.wide {
                let names = |p: Option<&Pod>| {
                    p.is_some_and(|p| self.by_id.get(id).is_some_and(|s| s.def.names_port_of(p)))
                };
                if names(old) || names(new) {
                    ids.insert(*id);
                }
            }
        }
        let (mut gone, mut come) = std::mem::take(&mut self.scratch);
        for id in ids {
            let Some(s) = self.by_id.get_mut(&id) else {
                continue;
            };
            gone.clear();
            come.clear();
            if let Some(old) = old {
                s.def.contribution(old, before, &mut gone);
            }
            if let Some(new) = new {
                s.def.contribution(new, after, &mut come);
            }
            if gone == come {
                continue;
            }
            let delta = self.pending.entry(id).or_default();
            for rule in &gone {
                let count = s.counts.entry(*rule).or_default();
                *count = count.saturating_sub(1);
                if *count == 0 {
                    s.counts.remove(rule);
                    if !delta.appeared.remove(rule) {
                        delta.vanished.insert(*rule);
                    }
                }
            }
            for rule in &come {
                let count = s.counts.entry(*rule).or_default();
                *count += 1;
                if *count == 1 && !delta.vanished.remove(rule) {
                    delta.appeared.insert(*rule);
                }
            }
        }
        self.scratch = (gone, come);
    }

    /// Gives every source patched since the last commit a rule set with its new content, and
    /// returns those whose content changed.
    pub(super) fn commit(&mut self) -> Vec<SourceId> {
        let pending = std::mem::take(&mut self.pending);
        let mut changed = Vec::new();
        for (id, delta) in pending {
            if delta.appeared.is_empty() && delta.vanished.is_empty() {
                continue;
            }
            let Some(old) = self.by_id.get(&id).map(|s| Arc::clone(&s.rules)) else {
                continue;
            };
            let rules = merge(old.rules(), &delta.appeared, &delta.vanished);
            let set = Arc::new(RuleSet::new(rules));
            if let Some(s) = self.by_id.get_mut(&id) {
                s.rules = set;
                changed.push(id);
            }
        }
        changed
    }

    /// Checks every source's rules and counts against a recomputation from `world`, for the
    /// tests.
    pub(super) fn check(&self, world: &World, selectors: &Selectors) -> Result<(), String> {
        let none = BTreeSet::new();
        for (id, s) in &self.by_id {
            let mut counts: HashMap<RuleSpec, u32> = HashMap::new();
            let mut rules = Vec::new();
            s.def.static_rules(&mut rules);
            rules.sort_unstable();
            rules.dedup();
            for rule in rules {
                *counts.entry(rule).or_default() += 1;
            }
            let mut contribution = Vec::new();
            for (key, pod) in &world.pods {
                let member: BTreeSet<SelectorId> = s
                    .def
                    .selectors()
                    .filter(|sel| selectors.has_member(*sel, key))
                    .collect();
                let recorded = selectors.of_pod(key).unwrap_or(&none);
                if !member.is_subset(recorded) {
                    return Err(format!("{key}: memberships {recorded:?} miss {member:?}"));
                }
                s.def.contribution(pod, &member, &mut contribution);
                for rule in &contribution {
                    *counts.entry(*rule).or_default() += 1;
                }
            }
            if counts != s.counts {
                return Err(format!("source {id:?} ({:?}): counts differ", s.def));
            }
            let mut want: Vec<RuleSpec> = counts.into_keys().collect();
            want.sort_unstable();
            if want != s.rules.rules() {
                return Err(format!("source {id:?} ({:?}): rules differ", s.def));
            }
            if s.users.is_empty() {
                return Err(format!("source {id:?} kept without users"));
            }
        }
        if !self.pending.is_empty() {
            return Err("uncommitted source changes".into());
        }
        Ok(())
    }
}

/// `old` without `vanished`, plus `appeared`, sorted.
fn merge(
    old: &[RuleSpec],
    appeared: &BTreeSet<RuleSpec>,
    vanished: &BTreeSet<RuleSpec>,
) -> Vec<RuleSpec> {
    let mut out = Vec::with_capacity(old.len() + appeared.len());
    let mut add = appeared.iter().peekable();
    for rule in old.iter().filter(|r| !vanished.contains(r)) {
        while let Some(a) = add.next_if(|a| *a < rule) {
            out.push(*a);
        }
        out.push(*rule);
    }
    out.extend(add);
    out
}
