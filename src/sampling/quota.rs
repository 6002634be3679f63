//! Exact tables: categories given out in proportion to their weights, ticket after ticket.
//!
//! A weighted draw gives a class configured at 3% anywhere from 3 to 11 of 200 tickets; an exact
//! table gives it 6. The order is Balinski and Young's quota method: ticket `n` goes to the
//! category with the largest `weight / (count + 1)` among those still under their quota
//! `weight / total * (n + 1)`. Every prefix of the dataset then has each category within one
//! ticket of its quota (floor or ceiling of `share * n`, what largest-remainder rounding gives
//! for the whole), and the method is house-monotone: ticket `n`'s category depends on tickets
//! before it only, so growing `rows` keeps the first tickets as they were. (Largest remainder
//! itself is not: adding a ticket can take one from a category, the Alabama paradox.)
//!
//! A ticket's category depends on how many earlier tickets of its group (all tickets; or those of
//! its language with `within = "language"`; or those with its parent category under `by`) hold
//! each category, so a sample needs the tickets before it. [`ExactCursor`] keeps those counts as it
//! walks forward (builds sample in ticket order: one step a ticket), with a copy every
//! [`CHECKPOINT`] tickets for the odd lookup behind it (`explain`, a retried ticket).

use std::collections::HashMap;

/// Tickets between two kept copies of the counts.
pub(super) const CHECKPOINT: u64 = 1024;

/// The category of the next ticket of a group whose categories hold `counts`, for `weights`.
pub(super) fn next_category(weights: &[f64], counts: &[u32]) -> usize {
    let total: f64 = weights.iter().sum();
    let next = f64::from(counts.iter().sum::<u32>()) + 1.0;
    let mut best: Option<(usize, f64)> = None;
    for (category, (&weight, &count)) in weights.iter().zip(counts).enumerate() {
        // Under its quota: count < weight / total * next, compared without a division.
        if weight <= 0.0 || f64::from(count) * total >= weight * next {
            continue;
        }
        let priority = weight / (f64::from(count) + 1.0);
        if best.is_none_or(|(_, p)| priority > p) {
            best = Some((category, priority));
        }
    }
    // Some category is always under quota (the counts sum to less than the quotas); rounding
    // could hide it, and then the one furthest below its share takes the ticket.
    best.map_or_else(
        || {
            (0..weights.len())
                .max_by(|&a, &b| {
                    let gap = |c: usize| weights[c] / total * next - f64::from(counts[c]);
                    gap(a).total_cmp(&gap(b)).then(b.cmp(&a))
                })
                .unwrap_or(0)
        },
        |(category, _)| category,
    )
}

/// Counts per (exact table, group): how many tickets so far hold each category.
#[derive(Debug, Clone, Default)]
pub(super) struct ExactCounts {
    counts: HashMap<(usize, u64), Vec<u32>>,
}

impl ExactCounts {
    /// Gives the next ticket of `group` in table `table` its category, and counts it.
    pub(super) fn take(&mut self, table: usize, group: u64, weights: &[f64]) -> usize {
        let counts = self
            .counts
            .entry((table, group))
            .or_insert_with(|| vec![0; weights.len()]);
        let category = next_category(weights, counts);
        counts[category] += 1;
        category
    }
}

/// The counts after the tickets walked so far, and copies of them every [`CHECKPOINT`] tickets.
#[derive(Debug, Default)]
pub(super) struct ExactCursor {
    /// The next ticket the counts do not include yet.
    pub(super) next: u64,
    pub(super) counts: ExactCounts,
    /// `checkpoints[k]`: the counts before ticket `k * CHECKPOINT`.
    pub(super) checkpoints: Vec<ExactCounts>,
}

impl ExactCursor {
    /// The counts before ticket `index`'s checkpoint, and that checkpoint's first ticket: where a
    /// walk to a ticket behind the cursor starts.
    pub(super) fn checkpoint_before(&self, index: u64) -> (u64, ExactCounts) {
        let k = (index / CHECKPOINT) as usize;
        match self.checkpoints.get(k) {
            Some(counts) => (k as u64 * CHECKPOINT, counts.clone()),
            None => self
                .checkpoints
                .last()
                .map_or((0, ExactCounts::default()), |c| {
                    ((self.checkpoints.len() as u64 - 1) * CHECKPOINT, c.clone())
                }),
        }
    }

    /// Keeps a copy of the counts when the cursor stands at a checkpoint.
    pub(super) fn mark(&mut self) {
        if self.next % CHECKPOINT == 0 && self.checkpoints.len() as u64 == self.next / CHECKPOINT {
            self.checkpoints.push(self.counts.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every prefix within one of its quota, for many weight sets.
    #[test]
    fn every_prefix_is_within_one_ticket_of_its_quota() {
        let sets: [&[f64]; 6] = [
            &[1.0, 1.0],
            &[4.0, 3.0, 2.0, 1.0],
            &[0.03, 0.97],
            &[4.0, 3.0, 3.0, 3.0, 3.0, 2.0, 2.0, 1.0, 1.0, 2.0],
            &[1.5, 1.5, 1.0, 3.0, 3.0],
            &[0.1, 0.2, 0.3, 0.4, 5.0, 7.5, 0.01, 2.2, 9.9, 1.1, 0.5, 3.3],
        ];
        for weights in sets {
            let total: f64 = weights.iter().sum();
            let mut counts = vec![0u32; weights.len()];
            for n in 1..=2000u32 {
                let next = next_category(weights, &counts);
                counts[next] += 1;
                for (c, &w) in weights.iter().enumerate() {
                    let quota = w / total * f64::from(n);
                    assert!(
                        (f64::from(counts[c]) - quota).abs() < 1.0,
                        "{weights:?} after {n}: {counts:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn a_zero_weight_never_gets_a_ticket() {
        let mut counts = vec![0u32; 3];
        for _ in 0..500 {
            let next = next_category(&[1.0, 0.0, 2.0], &counts);
            counts[next] += 1;
        }
        assert_eq!(counts[1], 0);
    }
}
