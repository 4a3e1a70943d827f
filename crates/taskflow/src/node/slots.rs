//! Concurrency slots of one node: global, per user, per task name.

use std::collections::HashMap;
use std::sync::Mutex;

use crate::handler::lock;
use crate::store::{ClaimBudget, ClaimedTask};

/// The node's slots, shared by the submit path, the executor and runners.
#[derive(Debug)]
pub(crate) struct Slots {
    counts: Mutex<SlotCounts>,
}

impl Slots {
    pub(crate) fn new(global_limit: usize, per_user_limit: usize) -> Self {
        Self {
            counts: Mutex::new(SlotCounts::new(global_limit, per_user_limit)),
        }
    }

    pub(crate) fn set_name_limit(&self, name: &str, limit: usize) {
        lock(&self.counts).set_name_limit(name, limit);
    }

    /// Tasks running on this node.
    pub(crate) fn running(&self) -> usize {
        lock(&self.counts).running()
    }

    /// Takes a slot for an immediate claim at submit if every limit allows it.
    pub(crate) fn try_take(&self, user: Option<&str>, name: &str) -> bool {
        lock(&self.counts).try_take(user, name)
    }

    /// Frees the slot of a finished (or never started) task.
    pub(crate) fn release(&self, user: Option<&str>, name: &str) {
        lock(&self.counts).release(user, name);
    }

    /// Marks a claim through the store in flight when a slot is free; `false` when none is.
    pub(crate) fn begin_claim(&self) -> bool {
        let mut counts = lock(&self.counts);
        if counts.running >= counts.global_limit {
            return false;
        }
        counts.claiming = true;
        true
    }

    /// The budget of the claim in flight, taken as late as its batch allows. While a claim
    /// is in flight only releases change the counts (immediate claims at submit wait), so
    /// this budget is never smaller than the one [`begin_claim`](Self::begin_claim) saw.
    pub(crate) fn claim_budget(&self) -> ClaimBudget {
        lock(&self.counts).budget()
    }

    /// Ends the claim in flight, taking a slot for each claimed task.
    pub(crate) fn end_claim(&self, claimed: &[ClaimedTask]) {
        let mut counts = lock(&self.counts);
        counts.claiming = false;
        for t in claimed {
            counts.take(t.task.user_id.as_deref(), &t.task.name);
        }
    }
}

/// Running counts on this node.
#[derive(Debug, Default)]
struct SlotCounts {
    global_limit: usize,
    per_user_limit: usize,
    running: usize,
    per_user: HashMap<String, usize>,
    per_name: HashMap<String, usize>,
    name_limits: HashMap<String, usize>,
    /// A claim is in flight with a budget computed from these counts; immediate claims at
    /// submit wait (go through the store) until it lands, so the budget is never overdrawn.
    claiming: bool,
}

impl SlotCounts {
    fn new(global_limit: usize, per_user_limit: usize) -> Self {
        Self {
            global_limit: global_limit.max(1),
            per_user_limit: per_user_limit.max(1),
            ..Self::default()
        }
    }

    fn set_name_limit(&mut self, name: &str, limit: usize) {
        self.name_limits.insert(name.to_owned(), limit);
    }

    fn running(&self) -> usize {
        self.running
    }

    /// The budget for a claim.
    fn budget(&self) -> ClaimBudget {
        ClaimBudget {
            global: self.global_limit.saturating_sub(self.running),
            per_user: self.per_user_limit,
            user_running: self.per_user.clone(),
            name_limits: self.name_limits.clone(),
            name_running: self.per_name.clone(),
        }
    }

    /// Takes a slot for an immediate claim if every limit allows it.
    fn try_take(&mut self, user: Option<&str>, name: &str) -> bool {
        if self.claiming || self.running >= self.global_limit {
            return false;
        }
        if user.is_some_and(|u| self.per_user.get(u).copied().unwrap_or(0) >= self.per_user_limit) {
            return false;
        }
        if let Some(&limit) = self.name_limits.get(name)
            && self.per_name.get(name).copied().unwrap_or(0) >= limit
        {
            return false;
        }
        self.take(user, name);
        true
    }

    /// Records a running task (claimed within budget).
    fn take(&mut self, user: Option<&str>, name: &str) {
        self.running += 1;
        if let Some(user) = user {
            *self.per_user.entry(user.to_owned()).or_default() += 1;
        }
        if self.name_limits.contains_key(name) {
            *self.per_name.entry(name.to_owned()).or_default() += 1;
        }
    }

    /// Frees the slot of a finished task.
    fn release(&mut self, user: Option<&str>, name: &str) {
        self.running = self.running.saturating_sub(1);
        if let Some(user) = user {
            decrement(&mut self.per_user, user);
        }
        decrement(&mut self.per_name, name);
    }
}

fn decrement(map: &mut HashMap<String, usize>, key: &str) {
    if let Some(n) = map.get_mut(key) {
        *n -= 1;
        if *n == 0 {
            map.remove(key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_apply_globally_per_user_and_per_name() {
        let mut s = SlotCounts::new(3, 2);
        s.set_name_limit("heavy", 1);
        assert!(s.try_take(Some("a"), "t"));
        assert!(s.try_take(Some("a"), "t"));
        assert!(!s.try_take(Some("a"), "t"), "per-user limit");
        assert!(s.try_take(Some("b"), "heavy"));
        assert!(!s.try_take(Some("c"), "t"), "global limit");
        s.release(Some("b"), "heavy");
        assert!(!s.try_take(Some("a"), "t"));
        assert!(s.try_take(None, "heavy"));
        s.release(None, "heavy");
        s.claiming = true;
        assert!(
            !s.try_take(None, "t"),
            "no immediate claim while a claim is in flight"
        );
    }

    #[test]
    fn a_claim_in_flight_sees_slots_freed_after_it_began() {
        let slots = Slots::new(2, 8);
        assert!(slots.try_take(None, "t"));
        assert!(slots.try_take(None, "t"));
        assert!(!slots.begin_claim(), "no claim without a free slot");
        slots.release(None, "t");
        assert!(slots.begin_claim());
        assert_eq!(slots.claim_budget().global, 1);
        slots.release(None, "t");
        assert!(
            !slots.try_take(None, "t"),
            "no immediate claim while a claim is in flight"
        );
        assert_eq!(slots.claim_budget().global, 2);
        slots.end_claim(&[]);
        assert!(slots.try_take(None, "t"));
    }

    #[test]
    fn budget_admits_what_the_slots_allow() {
        let mut s = SlotCounts::new(4, 1);
        s.take(Some("a"), "t");
        let mut b = s.budget();
        assert_eq!(b.global, 3);
        assert!(!b.admit(Some("a"), "t"));
        assert!(b.admit(Some("b"), "t"));
        assert!(!b.admit(Some("b"), "t"));
        assert!(b.admit(None, "t"));
        assert!(b.admit(None, "t"));
        assert!(!b.admit(None, "t"));
    }
}
